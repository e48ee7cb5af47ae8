"""The paper's table from the released data and checkpoint: ``egoexor reproduce --out DIR``.

One command, seven stages, every output under ``--out``:

=============  ==========================  =========================================================
stage          output                      what runs
=============  ==========================  =========================================================
download       ``data/``                   :func:`egoexor.download.download`: the dataset files into
                                           the hub cache, a link per file in ``data/``
merge          ``egoexor.h5``              :func:`egoexor.data.merge_h5.merge_files`
samples        ``samples/test_...json``    :func:`egoexor.data.make_samples.write_samples`, test split
checkpoint     ``checkpoint/``             the released folder (``--checkpoint``, else fetched from the
                                           hub model ``--checkpoint_repo`` into the hub cache) imported by
                                           :func:`egoexor.convert_reference.convert`
infer          ``predictions/``            :func:`egoexor.infer.infer` with the reference's inference
                                           settings (:data:`REFERENCE_INFERENCE`, 16-bit LLM)
evaluate       ``evaluation/{paper,gt}/``  :func:`egoexor.evaluate.evaluate_files` under both protocols
report         ``report.md``               the macro F1 beside the paper's (:data:`PAPER_MACRO_F1`)
=============  ==========================  =========================================================

Resumable: a stage is finished when its output is complete and its record (``.stages/<stage>.json``, written
atomically once the output is) says so, with the settings it ran with. The next run reuses a finished stage and
says so; it runs the first unfinished stage (``infer`` continues from the answers a stopped run logged) and every
stage after it. A finished stage whose settings differ from the flags given is refused unless ``--overwrite``,
which runs it again with the stages after it. Whether a CUDA GPU is there is checked before anything else: without
one the command stops in one line unless ``--allow-cpu``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from egoexor import cli, cpus, download, evaluate, infer
from egoexor.atomic import write_json, write_text
from egoexor.convert_reference import DEFAULT_BASE, REFERENCE_FILES, check_reference_folder, convert
from egoexor.data.make_samples import samples_file_name, write_samples
from egoexor.data.merge_h5 import merge_files
from egoexor.metrics import PROTOCOLS

COMMAND = "egoexor.reproduce"
#: The paper's macro F1 of the EgoExOR dual-branch model (the HF model card ardamamur/EgoExOR).
PAPER_MACRO_F1 = {"overall": 0.79, "Ultrasound": 0.86, "MISS": 0.70}
#: The reference's own inference settings (README, "The released checkpoint"): infer's data overrides.
REFERENCE_INFERENCE = {
    "flip_rule": "all",
    "prompt_roles": "reference_inference",
    "row_matching": "reference",
    "camera_selection": "reference",
    "rescale_dark_frames": True,
}
#: The hub model repository of the released checkpoint (its files: :data:`REFERENCE_FILES`).
CHECKPOINT_REPO = "ardamamur/EgoExOR"
#: Where each stage's record is kept, in ``--out``.
RECORDS = ".stages"
SPLIT = "test"


@dataclass(frozen=True)
class Stage:
    name: str
    output: Path  # under --out
    settings: dict[str, Any]  # what the output depends on besides the earlier stages
    #: (afresh: an earlier stage ran again, or --overwrite) -> what it wrote, one line. A stage replaces what a
    #: stopped run left of its output (never a finished output: that has a record); infer continues it unless afresh.
    run: Callable[[bool], str]


@dataclass
class Reproduction:
    """What :func:`reproduce` did: each stage ``"ran"`` or ``"reused"``, and the report's table."""

    out: Path
    stages: dict[str, str]
    table: str


def check_gpu(allow_cpu: bool) -> str:
    """The device inference will run on; without CUDA, a :class:`cli.CommandError` unless ``allow_cpu``."""
    import torch

    if torch.cuda.is_available():
        return f"CUDA GPU ({torch.cuda.get_device_name(0)})"
    if not allow_cpu:
        raise cli.CommandError(
            "no CUDA GPU: the released 7B model runs on one (16-bit weights, about 16 GB); "
            "pass --allow-cpu to run on the CPU anyway (days for the whole test split)"
        )
    return "CPU (--allow-cpu)"


def _fetch_checkpoint(repo_id: str, token: str | None, cache_dir: str | os.PathLike | None) -> Path:
    """The released checkpoint's files in the hub cache (fetched once); its snapshot folder."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        return Path(
            huggingface_hub.snapshot_download(
                repo_id, token=token, cache_dir=cache_dir, allow_patterns=list(REFERENCE_FILES)
            )
        )
    except (HFValidationError, LocalEntryNotFoundError, HfHubHTTPError) as error:
        raise cli.CommandError(f"--checkpoint_repo {repo_id}: {' '.join(str(error).split())}") from None


def _record(out: Path, stage: Stage) -> dict | None:
    """The stage's record where its output is there too: the stage finished."""
    path = out / RECORDS / f"{stage.name}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if (out / stage.output).exists() else None


def _stages(out: Path, settings: Mapping[str, Any]) -> list[Stage]:
    """The stages of a run into ``out``; ``settings``: :func:`reproduce`'s arguments."""
    data, hdf5 = out / "data", out / "egoexor.h5"
    samples = out / "samples" / samples_file_name(SPLIT, 1, 0.0)
    checkpoint, predictions, evaluation = out / "checkpoint", out / "predictions", out / "evaluation"
    generation = {k: settings[k] for k in ("bits", "batch_size", "max_new_tokens")}
    model = {k: settings[k] for k in ("checkpoint", "checkpoint_repo", "base", "vision_tower", "bits")}
    model["model_overrides"] = settings["model_overrides"]
    hub = {k: settings[k] for k in ("token", "cache_dir")}

    def fetched(afresh: bool) -> str:
        snapshot, names, verified = download.download(
            data, repo_id=settings["data_repo"], revision=settings["revision"], overwrite=True, **hub
        )
        checked = "sizes match the hub" if verified else "offline: sizes not re-checked against the hub"
        return f"{len(names)} files of {settings['data_repo']} at commit {snapshot.name[:12]} in {data} ({checked})"

    def merged(afresh: bool) -> str:
        names = sorted(
            path.name for path in data.iterdir() if path.suffix == ".h5" and path.name != download.SPLITS_FILE
        )
        summary = merge_files([data / name for name in names], data / download.SPLITS_FILE, hdf5, overwrite=True)
        for warning in summary.warnings():
            cli.warn(COMMAND, warning)
        return f"{hdf5}: {len(names)} files merged"

    def sampled(afresh: bool) -> str:
        summary = write_samples(hdf5, SPLIT, samples.parent, tokenizer=None, overwrite=True)
        for warning in summary.warnings():
            cli.warn(COMMAND, warning)
        return f"{samples}: {len(summary.samples)} samples"

    def imported(afresh: bool) -> str:
        if settings["checkpoint"] is not None:
            released = Path(settings["checkpoint"])
        else:
            released = _fetch_checkpoint(settings["checkpoint_repo"], **hub)
        model_settings = {"bits": settings["bits"], **settings["model_overrides"]}
        report = convert(released, checkpoint, settings["base"], settings["vision_tower"], True, **model_settings)
        return f"{checkpoint}: {len(report['mapped'])} tensors and {len(report['adapter'])} LoRA tensors of {released}"

    def inferred(afresh: bool) -> str:
        infer.infer(
            checkpoint,
            hdf5,
            samples,
            predictions,
            protocol="paper",
            overrides=settings["overrides"],
            audio_cache=settings["audio_cache"],
            num_workers=settings["num_workers"],
            overwrite=afresh,
            **generation,
        )
        return f"{predictions}: the answers of the released model"

    def evaluated(afresh: bool) -> str:
        for protocol in PROTOCOLS:
            evaluate.evaluate_files(
                predictions / "raw_predictions.json", samples, evaluation / protocol, protocol=protocol, overwrite=True
            )
        return f"{evaluation}: {', '.join(PROTOCOLS)}"

    def reported(afresh: bool) -> str:
        write_text(out / "report.md", format_report(evaluation, settings))
        return f"{out / 'report.md'}"

    return [
        Stage("download", data, {"data_repo": settings["data_repo"], "revision": settings["revision"]}, fetched),
        Stage("merge", hdf5, {}, merged),
        Stage("samples", samples, {"split": SPLIT}, sampled),
        Stage("checkpoint", checkpoint, model, imported),
        Stage("infer", predictions, {**generation, "overrides": settings["overrides"]}, inferred),
        Stage("evaluate", evaluation, {"protocols": list(PROTOCOLS)}, evaluated),
        Stage("report", out / "report.md", {}, reported),
    ]


def macro_f1_table(evaluation: Path) -> str:
    """Markdown: per group, the paper's macro F1 beside this run's under each protocol, with its 95% interval
    (the cells of the evaluation's own headline, :func:`egoexor.evaluate.headline_rows`; "-" for a group the
    test split lacks)."""
    columns = [evaluate.HEADLINE_HEADER.index(name) for name in ("macro F1", "95% CI")]
    rows = {}
    for protocol in PROTOCOLS:
        result = cli.read_json(evaluation / protocol / "metrics.json")
        rows[protocol] = {row[0]: [row[i] for i in columns] for row in evaluate.headline_rows(result)}
    header = "| group | paper | " + " | ".join(f"`{p}` protocol | 95% CI" for p in PROTOCOLS) + " |"
    lines = [header, "|---|---:|" + "---:|---|" * len(PROTOCOLS)]
    for group, reported in PAPER_MACRO_F1.items():
        cells = [group, f"{reported:.2f}"] + [cell for p in PROTOCOLS for cell in rows[p].get(group, ["-", "-"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_report(evaluation: Path, settings: Mapping[str, Any]) -> str:
    """``report.md``: the table, then what ran."""
    released = settings["checkpoint"] or f"{settings['checkpoint_repo']} (hub)"
    inference = ", ".join(f"{k} {v}" for k, v in REFERENCE_INFERENCE.items())
    return "\n".join(
        [
            "# EgoExOR: the released checkpoint on the test split",
            "",
            macro_f1_table(evaluation),
            "",
            "Macro F1 over the relation labels with support (`none` included), per surgery type and overall. "
            "`paper`: the published evaluator (entity set from the predictions), the protocol of the paper's "
            "numbers; `gt`: the ground-truth entity set (MM-OR/4D-OR). Paper: the model card of ardamamur/EgoExOR.",
            "",
            f"- data: {settings['data_repo']}, split `{SPLIT}`",
            f"- checkpoint: {released}, base LLM {settings['base']}, LLM weights in {settings['bits']} bits",
            f"- inference: the reference's settings ({inference}), batch {settings['batch_size']}, "
            f"at most {settings['max_new_tokens']} new tokens",
            "- details: `evaluation/paper/report.md`, `evaluation/gt/report.md`, `predictions/`",
            "",
        ]
    )


def reproduce(
    out: str | os.PathLike,
    *,
    allow_cpu: bool = False,
    data_repo: str = download.REPO_ID,
    revision: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_repo: str = CHECKPOINT_REPO,
    base: str = DEFAULT_BASE,
    vision_tower: str | None = None,
    audio_encoder: str | None = None,
    audio_cache: str | os.PathLike | None = None,
    bits: int = 16,
    batch_size: int = 16,
    max_new_tokens: int = infer.MAX_NEW_TOKENS,
    num_workers: int | None = None,
    token: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    model_overrides: Mapping[str, Any] | None = None,
) -> Reproduction:
    """The command as a function (see the module docstring). ``model_overrides``: :class:`ModelConfig` fields the
    import passes on (a smaller model than the released one: tests). User mistakes raise :class:`cli.CommandError`
    (or one of :data:`egoexor.infer.ERRORS`) before the stage they concern runs."""
    cli.check_range("--batch_size", batch_size, 1)
    cli.check_range("--max_new_tokens", max_new_tokens, 1)
    device = check_gpu(allow_cpu)
    out = cli.check_output(out, overwrite=True, owner=COMMAND, flag="--out")  # ours, or empty: resumable
    if checkpoint is not None:
        check_reference_folder(Path(checkpoint), "--checkpoint")
    settings = {
        "data_repo": data_repo,
        "revision": revision,
        "checkpoint": None if checkpoint is None else str(Path(checkpoint).resolve()),
        "checkpoint_repo": checkpoint_repo,
        "base": base,
        "vision_tower": vision_tower,
        "overrides": {**REFERENCE_INFERENCE, **({} if audio_encoder is None else {"audio_encoder": audio_encoder})},
        "audio_cache": audio_cache,
        "bits": bits,
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "num_workers": cpus.default_workers() if num_workers is None else num_workers,
        "token": token,
        "cache_dir": cache_dir,
        "model_overrides": dict(model_overrides or {}),
    }
    stages = _stages(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / cli.marker(COMMAND)).is_file():  # what lets the next run resume in it
        (out / cli.marker(COMMAND)).write_text(f"written by python -m {COMMAND}\n")
    print(f"{COMMAND}: {len(stages)} stages into {out}, inference on {device}")
    done, rerun = {}, False
    for number, stage in enumerate(stages, 1):
        where = f"[{number}/{len(stages)}] {stage.name}"
        record = _record(out, stage)
        if record is not None and not rerun:
            if record["settings"] == _jsonable(stage.settings):
                print(f"{where}: reused {out / stage.output} (finished {record['finished']})", flush=True)
                done[stage.name] = "reused"
                continue
            if not overwrite:
                raise cli.CommandError(
                    f"--out {out}: stage {stage.name} finished with other settings "
                    f"({out / RECORDS / stage.name}.json); pass --overwrite to run it and the stages after it "
                    "again, or choose another --out"
                )
        print(f"{where}: running", flush=True)
        start = time.perf_counter()
        what = stage.run(overwrite or rerun)
        seconds = time.perf_counter() - start
        finished = time.strftime("%Y-%m-%d %H:%M:%S")
        record = {"stage": stage.name, "settings": _jsonable(stage.settings), "finished": finished, "seconds": seconds}
        write_json(out / RECORDS / f"{stage.name}.json", record)
        print(f"{where}: wrote {what} ({seconds:.1f} s)", flush=True)
        done[stage.name], rerun = "ran", True
    table = macro_f1_table(out / "evaluation")
    print(table)
    print(f"wrote {out / 'report.md'}")
    return Reproduction(out, done, table)


def _jsonable(value: Any) -> Any:
    """``value`` as its JSON record reads back (paths as text, tuples as lists)."""
    return json.loads(json.dumps(value, default=str))


def _parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog=f"python -m {COMMAND}", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder of every stage's output (resumable)")
    parser.add_argument(
        "--allow-cpu", action="store_true", help="run without a CUDA GPU (inference of the 7B model takes days)"
    )
    parser.add_argument("--data_repo", default=download.REPO_ID, help="hub dataset repository of the release")
    parser.add_argument("--revision", default=None, help="branch, tag or commit of --data_repo (default: main)")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="the released checkpoint folder (" + ", ".join(REFERENCE_FILES) + "); default: fetched from "
        "--checkpoint_repo",
    )
    parser.add_argument("--checkpoint_repo", default=CHECKPOINT_REPO, help="hub model repository of the checkpoint")
    parser.add_argument("--base", default=DEFAULT_BASE, help="base LLM the adapter belongs to (hub name or folder)")
    parser.add_argument("--vision_tower", default=None, help="CLIP tower (default: the one the checkpoint names)")
    parser.add_argument(
        "--audio_encoder", default=None, help="CLAP model: hub name or folder (default: the checkpoint's)"
    )
    infer.add_generation_flags(parser)
    parser.add_argument("--token", default=None, help="Hugging Face token (default: HF_TOKEN, or the saved login)")
    parser.add_argument("--cache_dir", default=None, help="hub cache folder (default: HF_HUB_CACHE)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="run a stage that finished with other settings again, and the stages after it",
    )
    return parser


def _run(args) -> int:
    reproduce(**vars(args))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for bad input, 130 after Ctrl-C)."""
    return cli.run(COMMAND, lambda: _run(_parser().parse_args(argv)), errors=infer.ERRORS)


if __name__ == "__main__":
    sys.exit(main())

"""The whole pipeline on a laptop: ``python -m egoexor.demo [--out DIR] [--overwrite]``.

Synthetic EgoExOR-format data (``tiny`` profile) -> ``egoexor-merge-h5`` -> training/test samples ->
training of the tiny model on the CPU (``configs/tiny.yaml``) -> ``egoexor.infer`` on the held-out
test split -> evaluation, each stage through the Python API of its command (``merge_files``,
``write_samples``, ``train``, ``infer``). Prints each stage with its time, the Trainer's progress bar and a
loss line every 50 steps while it trains, the final metrics table, and last the folder it leaves (not the
temporary one the stages' own lines name); a few minutes on 2 CPU cores, no GPU, no download.

``--out`` (default ``outputs/demo``) follows the overwrite rule of :mod:`egoexor.cli`: a folder holding
an earlier demo is refused unless ``--overwrite``. Everything is written into a temporary folder beside
it that replaces ``--out`` only when the demo is complete, so an interrupted demo leaves the old one.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from egoexor import cli

COMMAND = "egoexor.demo"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
#: Seed of the sample lists (make_samples' default), apart from ``--seed``: the demo's data stay those it
#: has always trained on.
SAMPLES_SEED = 42


def _stage(name: str, run: Callable[[], object]) -> object:
    print(f"== {name} ...", flush=True)
    start = time.perf_counter()
    result = run()
    print(f"== {name}: done in {time.perf_counter() - start:.1f} s", flush=True)
    return result


def _write_samples(merged: Path, folder: Path) -> dict[str, Path]:
    """One sample file per split, as ``python -m egoexor.data.make_samples --no-token-freqs`` writes it."""
    from egoexor.data.make_samples import write_samples

    return {
        split: write_samples(
            merged, split, folder, name=f"{split}.json", seed=SAMPLES_SEED, tokenizer=None
        ).samples_file
        for split in ("train", "validation", "test")
    }


def _pipeline(work: Path, seed: int, epochs: int | None, config: Path, frames: int) -> None:
    """Every stage, writing into ``work``; the paths are those :func:`run` returns, relative to it."""
    from egoexor.config import parse_train_args
    from egoexor.data.merge_h5 import merge_files
    from egoexor.data.synthetic import generate
    from egoexor.infer import infer
    from egoexor.train import train

    dataset = _stage(
        f"synthetic data (tiny profile, {frames} frames per take)",
        lambda: generate(work / "data", "tiny", seed=seed, n_frames=frames),
    )
    merged = work / "egoexor.h5"
    _stage("merge", lambda: merge_files(dataset.files, dataset.splits_file, merged))
    files = _stage("samples", lambda: _write_samples(merged, work / "samples"))
    options = {"--config": config, "--data_path": files["train"], "--hdf5_path": merged, "--output_dir": work / "run"}
    # the Trainer's progress bar shows the steps; a loss line every 50 of them (about 10 s on 2 cores)
    options |= {"--seed": seed, "--disable_tqdm": False, "--logging_steps": 50}
    if epochs is not None:
        options["--num_train_epochs"] = epochs
    flags = [str(token) for option in options.items() for token in option]
    _stage("training (tiny model, CPU)", lambda: train(parse_train_args(flags)))
    _stage(
        "inference + evaluation (held-out test split)",
        lambda: infer(work / "run", merged, files["test"], work / "evaluation", protocol="gt", max_new_tokens=64),
    )


def run(
    out: Path,
    seed: int = 0,
    epochs: int | None = None,
    config: Path = CONFIG,
    frames: int = 120,
    overwrite: bool = False,
) -> dict:
    """Run every stage into ``out``; returns the paths it wrote and the metrics.

    ``out`` must be absent or empty, or an earlier demo with ``overwrite``; it is replaced only when every
    stage is done.
    ``frames`` per take (the tiny profile's own are few): a few hundred training frames let the tiny
    model learn the scene graphs from the images instead of memorising single frames.
    """
    out = cli.check_output(out, overwrite=overwrite, owner=COMMAND, flag="--out")
    if not config.is_file():
        raise cli.CommandError(f"{config}: missing; the demo reads it from the source checkout (pip install -e .)")
    with cli.output_folder(out, COMMAND) as work:
        print(f"== writing into {work}, which becomes {out} when every stage is done", flush=True)
        _pipeline(work, seed, epochs, config, frames)
    evaluation = out / "evaluation"
    return {
        "checkpoint": out / "run",
        "hdf5": out / "egoexor.h5",
        "evaluation": evaluation,
        "samples": {split: out / "samples" / f"{split}.json" for split in ("train", "validation", "test")},
        "metrics": cli.read_json(evaluation / "metrics.json"),
    }


def _parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog=f"python -m {COMMAND}", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/demo"), help="folder for everything it writes (default: %(default)s)"
    )
    parser.add_argument("--seed", type=cli.int_flag(0), default=0, help="seed of the data and of training")
    parser.add_argument(
        "--epochs", type=cli.int_flag(1), default=None, help="training epochs (default: configs/tiny.yaml's)"
    )
    cli.add_overwrite_flag(parser)
    return parser


def _run(args) -> int:
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    result = run(args.out, args.seed, args.epochs, overwrite=args.overwrite)
    overall = result["metrics"]["overall"]
    sys.stderr.flush()  # the stages' warnings name the temporary folder: they come before the last line
    print(
        f"\ndemo finished in {time.perf_counter() - start:.0f} s; held-out macro F1 (gt protocol) "
        f"{overall['macro']['f1-score']:.3f}, triplet F1 {overall['triplet']['f1-score']:.3f}\n"
        f"everything is in {args.out}; report: {result['evaluation'] / 'report.md'}",
        flush=True,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for bad input, 130 after Ctrl-C)."""
    from egoexor import infer

    return cli.run(COMMAND, lambda: _run(_parser().parse_args(argv)), errors=infer.ERRORS)


if __name__ == "__main__":
    sys.exit(main())

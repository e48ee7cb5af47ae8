"""Modality ablation: ``python -m egoexor.ablate --checkpoint DIR --hdf5 F --samples S --out DIR``.

Loads the model once, then measures it with nothing removed and with each input (or branch) removed in turn
(``--metric``): ``f1`` generates answers and scores them with :mod:`egoexor.evaluate`; ``choice`` asks, under
teacher forcing, whether the model finds each true predicate likelier than the others of its group
(:func:`choice`), which reads what the model knows even where greedy decoding does not write it. Removing an input is
``DataConfig.drop_modalities`` (``python -m egoexor.infer --drop_modalities``): a token input (gaze, hands,
audio, point cloud) is left out as training-time modality dropout leaves it out; a view input (ego frames,
exo frames, the ultrasound screen) keeps its views, which carry the branch's extra tokens, but shows
nothing in them; a branch (``ego``, ``exo``) goes with all its views and tokens. Writes into ``--out``:

* ``ablation.md``: the table, one row per removed input (``none``: the full model), columns macro F1
  overall, exact-triplet F1 and the macro F1 of each predicate group (``f1``), and the choice accuracy of
  each group with its standard error (``choice``);
* ``ablation.json``: the same numbers, the groups and the settings;
* ``ablation.png``: the change of each score against the full model, and of the macro F1 with bootstrap
  intervals (:func:`figure`; ``f1``);
* ``predictions/<removed>.jsonl``: every generated answer of each run (``f1``).

Predicate groups (``--groups``): ``parts``, the groups of the synthetic modality benchmark
(``python -m egoexor.data.synthetic --profile parts``, :data:`egoexor.data.synthetic.PARTS`), each named
after the only input that shows it, so that the diagonal of the table shows each input's own part; ``none``:
overall scores only (by default ``parts`` where every answer triplet is one of the benchmark's, else
``none``). A group's score is the mean F1 of its predicates that have ground-truth support, as
the headline macro F1 (which also counts ``none``). A guess that ignores the input scores at most 1/K on a
group of K equally frequent predicates (1/3 for the ``parts`` groups): that is chance.

Inputs are checked as ``egoexor.infer`` checks them, before the model loads; ``--out`` follows the
overwrite rule of :mod:`egoexor.cli` and appears, complete, only at the end. Errors are one line (exit 2),
Ctrl-C one line (exit 130).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from egoexor import cli, evaluate, infer, metrics, modalities, scene_graph
from egoexor.atomic import write_json, write_text
from egoexor.config import DataConfig
from egoexor.data.samples import Sample
from egoexor.data.synthetic import PARTS
from egoexor.prompt import IGNORE_INDEX
from egoexor.scene_graph import Triplet

COMMAND = "egoexor.ablate"
#: The row of the run with every input.
NOTHING_REMOVED = "none"
#: What ``--metric`` can measure per removed input.
METRICS = ("f1", "choice")
#: Predicate groups by ``--groups`` name.
GROUPS: dict[str, dict[str, tuple[str, ...]]] = {
    "parts": {part.modality: part.predicates for part in PARTS},
    "none": {},
}


def scores(result: dict[str, Any], groups: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """Macro F1 overall (with its bootstrap interval), exact-triplet F1 and each group's macro F1 (None: no
    predicate of it in the ground truth)."""
    overall = result["overall"]
    report = overall["relation_report"]
    per_group = {}
    for name, predicates in groups.items():
        macro = metrics.macro_over_supported(report, predicates) if report else None
        per_group[name] = None if macro is None else macro["f1-score"]
    return {
        "macro_f1": overall["macro"]["f1-score"] if overall["macro"] else None,
        "macro_f1_interval": overall["macro_f1_interval"],
        "triplet_f1": overall["triplet"]["f1-score"],
        "groups": per_group,
    }


def ablate(model, tokenizer, data_config: DataConfig, samples: list[Sample], args, folder: Path) -> list[dict]:
    """One generation and evaluation per removed input; each run's answers go to ``folder/<removed>.jsonl``."""
    from egoexor.data.dataset import EgoExorDataset

    device = next(model.parameters()).device
    records = [sample.to_record() for sample in samples]
    rows = []
    for removed in (NOTHING_REMOVED, *args.modalities):
        drop = data_config.drop_modalities + (() if removed == NOTHING_REMOVED else (removed,))
        dataset = EgoExorDataset(samples, args.hdf5, tokenizer, replace(data_config, drop_modalities=drop), "generate")
        print(f"== removed: {removed}", flush=True)
        texts = infer.generate_shard(
            model, dataset, folder / f"{removed}.jsonl", args.batch_size, args.max_new_tokens, device, args.num_workers
        )
        result = evaluate.evaluate(texts, records, args.protocol)
        rows.append({"removed": removed, **scores(result, GROUPS[args.groups])})
    return rows


def groups_of(samples: Sequence[Sample]) -> str:
    """``parts`` for samples of the synthetic modality benchmark (every triplet one of :data:`PARTS`), else ``none``."""
    pairs = {(part.subject, part.object): part.predicates for part in PARTS}

    def is_part(triplet: Triplet) -> bool:
        return triplet.predicate in pairs.get((triplet.subject, triplet.object), ())

    benchmark = all(is_part(t) for sample in samples for t in scene_graph.parse(sample.answer, "robust"))
    return "parts" if samples and benchmark else "none"


def choice_candidates(sample: Sample, groups: dict[str, tuple[str, ...]]) -> list[tuple[str, int, list[str]]]:
    """For each triplet of the sample's answer whose predicate is in a group: (group, index of the true
    candidate, the answer text with each of the group's predicates in its place)."""
    triplets = scene_graph.parse(sample.answer, "robust")
    if scene_graph.serialize(triplets) != sample.answer:
        raise cli.CommandError(f"sample {sample.id}: its answer is not in the written form, so it cannot be varied")
    out = []
    for index, triplet in enumerate(triplets):
        for group, predicates in groups.items():
            if triplet.predicate in predicates:
                texts = [
                    scene_graph.serialize([*triplets[:index], triplet._replace(predicate=p), *triplets[index + 1 :]])
                    for p in predicates
                ]
                out.append((group, predicates.index(triplet.predicate), texts))
    return out


def answer_losses(model, dataset, batch_size: int) -> list[float]:
    """The summed negative log-likelihood of each sample's answer + EOS under teacher forcing (``dataset``: an
    ``EgoExorDataset`` in ``eval`` mode)."""
    losses = []
    for logits, target in infer.teacher_forced(model, dataset, batch_size):
        supervised = target != IGNORE_INDEX
        picked = logits.float().log_softmax(-1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
        losses += (-(picked * supervised).sum(1)).tolist()
    return losses


def choice(model, tokenizer, data_config: DataConfig, samples: list[Sample], args) -> list[dict]:
    """Teacher-forced predicate choice: for each triplet of a group, the candidate answer (the true graph with
    each of the group's predicates in that triplet's place) the model finds likeliest; per removed input, the
    share of triplets where that is the true one, per group, with its binomial standard error."""
    from egoexor.data.dataset import EgoExorDataset

    groups = GROUPS[args.groups]
    cases = [(sample, *case) for sample in samples for case in choice_candidates(sample, groups)]
    variants = [replace(sample, answer=text) for sample, _, _, texts in cases for text in texts]
    rows = []
    for removed in (NOTHING_REMOVED, *args.modalities):
        drop = data_config.drop_modalities + (() if removed == NOTHING_REMOVED else (removed,))
        config = replace(data_config, drop_modalities=drop)
        print(f"== removed: {removed} (teacher-forced choice, {len(variants)} answers)", flush=True)
        losses = iter(
            answer_losses(model, EgoExorDataset(variants, args.hdf5, tokenizer, config, "eval"), args.batch_size)
        )
        hits: dict[str, list[bool]] = {group: [] for group in groups}
        for _, group, truth, texts in cases:
            scored = [next(losses) for _ in texts]
            hits[group].append(int(np.argmin(scored)) == truth)
        rows.append({"removed": removed, "choice": {g: _share(h) for g, h in hits.items()}})
    return rows


def _share(hits: list[bool]) -> dict[str, float | int] | None:
    if not hits:
        return None
    p = sum(hits) / len(hits)
    return {"accuracy": p, "se": math.sqrt(p * (1 - p) / len(hits)), "n": len(hits)}


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _columns(rows: list[dict]) -> list[str]:
    return ["macro F1", "triplet F1", *rows[0]["groups"]]


def _values(row: dict) -> list[float | None]:
    return [row["macro_f1"], row["triplet_f1"], *row["groups"].values()]


def format_table(rows: list[dict], protocol: str, n_samples: int) -> str:
    """``ablation.md``: the generated scores' table and the figure (``f1``), the choice table (``choice``)."""
    lines = [f"# Modality ablation (protocol `{protocol}`, {n_samples} samples)", ""]
    if "macro_f1" in rows[0]:
        lines += [
            "One row per removed input (`none`: every input); generated answers: macro F1 overall, exact-triplet "
            "F1, and the macro F1 of each predicate group (the mean F1 of its predicates with ground-truth "
            "support; chance is at most 1/K for K equally frequent predicates). `-`: nothing of it in the "
            "ground truth.",
            "",
            "| removed | " + " | ".join(_columns(rows)) + " |",
            "|---" * (len(_columns(rows)) + 1) + "|",
            *("| " + " | ".join([row["removed"], *map(_cell, _values(row))]) + " |" for row in rows),
            "",
            "![change against the full model](ablation.png)",
            "",
        ]
    if "choice" in rows[0]:
        groups = list(rows[0]["choice"])
        lines += [
            "Teacher-forced predicate choice: for each triplet of a group, the share where the model finds the "
            "true graph likelier than the same graph with another predicate of the group in that triplet "
            "(chance 1/K), ± its binomial standard error.",
            "",
            "| removed | " + " | ".join(groups) + " |",
            "|---" * (len(groups) + 1) + "|",
            *("| " + " | ".join([row["removed"], *map(_share_cell, row["choice"].values())]) + " |" for row in rows),
            "",
        ]
    return "\n".join(lines)


def _share_cell(share: dict | None) -> str:
    return "-" if share is None else f"{share['accuracy']:.2f} ± {share['se']:.2f}"


def figure(rows: list[dict]) -> Any:
    """``ablation.png``: what removing each input changes against the full model (the first row).

    Left, a heat map of the change of every score (red: worse, blue: better), the full model's own scores
    in the title. Right, the change of the macro F1 as bars, each with the removed run's 95% bootstrap
    interval (takes resampled, :func:`egoexor.metrics.macro_f1_interval`) shifted by the full model's
    score, and the full model's interval as a grey band around 0: a bar whose interval lies inside the
    band is no change the test set can show. A run without an interval (one take) has no error bar.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = _columns(rows)
    table = np.array([[math.nan if v is None else v for v in _values(row)] for row in rows], dtype=np.float64)
    base, removed = rows[0], rows[1:]
    change = table[1:] - table[0]
    plot = Figure(figsize=(1.2 * len(columns) + 7, 0.45 * len(removed) + 2.2), layout="constrained")
    FigureCanvasAgg(plot)
    heat, bars = plot.subplots(1, 2, width_ratios=[1.2 * len(columns) + 1, 4])
    if not removed:
        heat.text(0.5, 0.5, "no input removed", ha="center", va="center", transform=heat.transAxes)
    image = heat.imshow(change.reshape(len(removed), len(columns)), cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    plot.colorbar(image, ax=heat, label="change against the full model")
    for (row, column), value in np.ndenumerate(change):
        if not math.isnan(value):
            heat.text(column, row, f"{value:+.2f}", ha="center", va="center", fontsize=8)
    heat.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    heat.set_yticks(range(len(removed)), [row["removed"] for row in removed])
    heat.set_ylabel("removed input")
    full = ", ".join(f"{name} {_cell(value)}" for name, value in zip(columns, _values(base), strict=True))
    heat.set_title(f"Change against the full model ({full})", fontsize=9)
    if base["macro_f1"] is not None:
        _macro_change_bars(bars, base, removed)
    bars.set_title("macro F1 change, 95% bootstrap intervals", fontsize=9)
    return plot


def _macro_change_bars(axes: Any, base: dict, removed: list[dict]) -> None:
    """Horizontal bars of each run's macro F1 minus the full model's, with intervals (see :func:`figure`)."""
    reference = base["macro_f1"]
    interval = base.get("macro_f1_interval")
    if interval is not None:
        axes.axvspan(interval["low"] - reference, interval["high"] - reference, color="#cccccc", label="full model")
    for position, row in enumerate(removed):
        if row["macro_f1"] is None:
            continue
        change = row["macro_f1"] - reference
        axes.barh(position, change, color="#d62728" if change < 0 else "#1f77b4", height=0.6)
        own = row.get("macro_f1_interval")
        if own is not None:
            spread = [[row["macro_f1"] - own["low"]], [own["high"] - row["macro_f1"]]]
            axes.errorbar(change, position, xerr=spread, color="black", capsize=3)
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_yticks(range(len(removed)), [row["removed"] for row in removed])
    axes.invert_yaxis()
    axes.set_xlabel("macro F1 - full model's")


def _parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog=f"python -m {COMMAND}", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint folder (ours or the released one)")
    parser.add_argument("--hdf5", required=True, type=Path, help="merged EgoExOR file")
    parser.add_argument("--samples", required=True, type=Path, help="sample JSON of the split to evaluate")
    parser.add_argument("--out", required=True, type=Path, help="output folder (ablation.json, .md, .png)")
    parser.add_argument(
        "--modalities",
        type=cli.names_flag(modalities.droppable()),
        default=modalities.droppable(),
        help="comma-separated inputs and branches to remove, each in turn (default: all of "
        f"{', '.join(modalities.droppable())})",
    )
    parser.add_argument(
        "--groups",
        choices=tuple(GROUPS),
        default=None,
        help="parts: the predicate groups of the synthetic modality benchmark (--profile parts); none: overall "
        "scores only (default: parts where every answer triplet is a part of the benchmark, else none)",
    )
    parser.add_argument(
        "--metric",
        type=cli.names_flag(METRICS),
        default=("f1",),
        help="comma-separated: f1 (generated answers, scored; the figure), choice (teacher-forced predicate "
        "choice per group, needs --groups parts)",
    )
    parser.add_argument(
        "--protocol",
        choices=metrics.PROTOCOLS,
        default="gt",
        help="gt: ground-truth entity set (MM-OR/4D-OR); paper: the published evaluator",
    )
    infer.add_generation_flags(parser)
    cli.add_overwrite_flag(parser)
    return parser


def run(argv: Sequence[str] | None = None) -> list[dict]:
    """The command as a function: the table's rows (see :func:`scores`); user mistakes raise
    :class:`cli.CommandError` or one of ``egoexor.infer.ERRORS``."""
    args = _parser().parse_args(argv)
    inputs = [args.checkpoint, args.hdf5, args.samples, args.audio_cache]
    out = cli.check_output(args.out, inputs=inputs, overwrite=args.overwrite, owner=COMMAND, flag="--out")
    samples = infer.check_model_inputs(args)
    args.groups = args.groups or groups_of(samples)
    if "choice" in args.metric and args.groups == "none":
        raise cli.CommandError("--metric choice needs predicate groups: --groups parts (the modality benchmark's data)")
    import torch  # once the flags and inputs are checked: --help and a user mistake do without it

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    with cli.output_folder(out, COMMAND) as folder:
        model, tokenizer, data_config = infer.load_model(args.checkpoint, args.bits, device, folder / "converted")
        cli.checks_done()
        if args.audio_cache is not None:
            data_config = replace(data_config, audio_cache=str(args.audio_cache))
        rows = [{"removed": removed} for removed in (NOTHING_REMOVED, *args.modalities)]
        if "f1" in args.metric:
            (folder / "predictions").mkdir()
            for row, scored in zip(
                rows, ablate(model, tokenizer, data_config, samples, args, folder / "predictions"), strict=True
            ):
                row.update(scored)
        if "choice" in args.metric:
            for row, chosen in zip(rows, choice(model, tokenizer, data_config, samples, args), strict=True):
                row.update(chosen)
        settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
        write_json(folder / "ablation.json", {"rows": rows, "groups": GROUPS[args.groups], "settings": settings})
        write_text(folder / "ablation.md", format_table(rows, args.protocol, len(samples)))
        if "f1" in args.metric:
            figure(rows).savefig(folder / "ablation.png", format="png", dpi=100)
    print(format_table(rows, args.protocol, len(samples)))
    written = "ablation.json, ablation.md" + (", ablation.png, predictions/" if "f1" in args.metric else "")
    print(f"wrote {out}: {written}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for bad input, 130 after Ctrl-C)."""

    def body() -> None:
        run(argv)

    return cli.run(COMMAND, body, errors=infer.ERRORS)


if __name__ == "__main__":
    sys.exit(main())

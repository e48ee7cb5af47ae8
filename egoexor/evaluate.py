"""Evaluate scene-graph predictions against LLaVA-format samples: metrics.json, report.md and plots.

``python -m egoexor.evaluate --predictions P.json --samples S.json [--protocol paper|gt] --out DIR``

**Inputs.** ``--samples`` is the JSON list written by the sample generator (one record per frame,
ground truth = the ``gpt`` answer, take = ``hdf5_indices``). ``--predictions`` is a JSON object keyed
by sample id, in either of two forms, which may be mixed:

* the reference's ``infer`` output, ``{id: [[subject, predicate, object], ...]}`` of raw strings
  (note the order; each triplet is resolved like the reference resolves parsed fields);
* raw generated text, ``{id: "<SG> head surgeon,patient,holding; ... </SG>"}``, parsed like the
  reference parses model output.

**Mismatched ids are reported, not hidden.** A sample without a prediction is scored as an empty
prediction (under ``paper`` it then has no entity set and contributes no pairs, but its ground truth
counts against triplet recall; under ``gt`` all its pairs are predicted ``none``). Predictions for
ids that are not in the samples are ignored. Both are counted, with examples, on stdout and in
``metrics.json`` (``missing_predictions`` / ``unmatched_predictions``).

**Outputs** (each written to a temporary file, then renamed): ``metrics.json`` (everything
:func:`egoexor.metrics.compute_metrics` returns, plus the id bookkeeping), ``report.md`` (the tables),
``f1_per_predicate.png`` (per-label F1, overall and per surgery type; labels without ground truth
marked, not drawn as 0) and ``confusion_matrix.png`` (the overall matrix over the labels that occur).
The macro F1, overall and per surgery type, comes with a 95 % bootstrap
confidence interval over takes (``macro_f1_interval``; ``--bootstrap`` resamples, ``--seed``), so two
runs can be compared honestly. See :mod:`egoexor.metrics` for what the numbers mean and how the
``paper`` and ``gt`` protocols differ. The command writes them into a temporary folder that replaces
``--out`` when complete; an existing ``--out`` needs ``--overwrite``, and one holding an input is refused.

**What the parser drops is counted, not hidden.** Predictions with text but no well-formed
``subject,object,predicate`` chunk (``unparsable_predictions``) and names the protocol's parse mode
cannot resolve (``unknown_names``, per slot, with the most frequent ones; the triplet is dropped) go
into ``metrics.json`` and ``report.md`` and make a one-line warning on stderr.

A missing, unreadable or malformed input file, an empty sample list, or predictions none of which has
a sample's id, is reported in one line on stderr naming the file (:mod:`egoexor.cli`), exit status 2.

The Python API: :func:`evaluate_files` is the command (files in, ``--out`` written); :func:`evaluate` scores
predictions and sample records in memory (what ``egoexor.infer`` calls).
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from egoexor import cli, metrics, scene_graph, vocab
from egoexor.atomic import atomic_output, write_json, write_text
from egoexor.data.samples import Sample, SampleError, check_unique_ids, sample_from_record
from egoexor.metrics import Protocol
from egoexor.scene_graph import ParseMode, Triplet

COMMAND = "egoexor.evaluate"

#: A prediction as stored in a predictions file: generated text, or raw [subject, predicate, object] lists.
Prediction = str | Sequence[Sequence[str]]

_EXAMPLES = 5
_AVERAGES = ("micro avg", "macro avg", "weighted avg")
#: Id bookkeeping keys of the result and how to describe them to a reader.
_ID_PROBLEMS = (
    ("missing_predictions", "samples without a prediction (scored as an empty prediction)"),
    ("unmatched_predictions", "predictions whose id is not a sample (ignored)"),
)
_PROGRESS_MIN_SAMPLES = 10_000
#: Names every parse mode resolves: stand-ins for the other two fields when testing one field.
_KNOWN_ENTITY, _KNOWN_PREDICATE = "patient", "holding"
#: What is left of a prediction without content: tags, end-of-sequence marks, separators.
_NO_CONTENT = re.compile(r"</?sg>|</?s>|[\s;,.]", flags=re.IGNORECASE)
#: The plots :func:`write_outputs` draws, as ``report.md`` shows them: (title, file).
_PLOTS = (("per-label F1", "f1_per_predicate.png"), ("confusion matrix", "confusion_matrix.png"))
_PLOT_GROUP_COLOURS = ("#333333", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")


class InputError(cli.CommandError):
    """Input that is not what the evaluator reads: a user mistake, reported in one line."""


def read_samples(records: Any) -> list[Sample]:
    """Check the LLaVA-format sample list (:mod:`egoexor.data.samples`); ground truth is each gpt answer."""
    if not isinstance(records, list):
        raise InputError(f"expected a JSON list of sample records, got {type(records).__name__}")
    if not records:
        raise InputError("the sample list is empty: nothing to evaluate")
    try:
        samples = [sample_from_record(record, f"record {position}") for position, record in enumerate(records)]
        check_unique_ids(samples, "the samples")
    except SampleError as error:
        raise InputError(str(error)) from None
    return samples


def read_predictions(predictions: Any) -> dict[str, Prediction]:
    """Check a predictions object: sample id -> text, or -> list of [subject, predicate, object] strings."""
    if not isinstance(predictions, Mapping):
        raise InputError(f"expected a JSON object mapping sample ids to predictions, got {type(predictions).__name__}")
    for sample_id, value in predictions.items():
        if isinstance(value, str):
            continue
        if not isinstance(value, list | tuple) or not all(
            isinstance(triplet, list | tuple) and len(triplet) == 3 and all(isinstance(name, str) for name in triplet)
            for triplet in value
        ):
            raise InputError(
                f"prediction for {sample_id!r}: expected generated text or a list of "
                "[subject, predicate, object] strings"
            )
    return dict(predictions)


def prediction_triplets(prediction: Prediction, mode: ParseMode) -> list[Triplet]:
    """Triplets of one prediction in text order; names the parse mode cannot resolve are dropped."""
    if isinstance(prediction, str):
        return scene_graph.parse(prediction, mode)
    resolved = (scene_graph.resolve(subject, obj, predicate, mode) for subject, predicate, obj in prediction)
    return [triplet for triplet in resolved if triplet is not None]


def dropped_fields(prediction: Prediction, mode: ParseMode) -> tuple[bool, list[tuple[str, str, str]]]:
    """What parsing drops from one prediction: whether it is unparsable (text with content but no
    ``subject,object,predicate`` chunk), and its ``(subject, object, predicate)`` fields that hold a name
    the parse mode cannot resolve (those triplets are dropped)."""
    if isinstance(prediction, str):
        fields = scene_graph.split_fields(prediction, mode)
        unparsable = not fields and bool(_NO_CONTENT.sub("", prediction))
    else:
        fields = [(subject, obj, predicate) for subject, predicate, obj in prediction]
        unparsable = False
    return unparsable, [field for field in fields if scene_graph.resolve(*field, mode) is None]


class _Dropped:
    """What parsing dropped from the predictions: unparsable predictions and unknown names."""

    def __init__(self, mode: ParseMode) -> None:
        self.mode = mode
        self.unparsable: list[str] = []
        self.names = {"entity": Counter[str](), "predicate": Counter[str]()}
        self.triplets = 0

    def add(self, sample_id: str, prediction: Prediction) -> None:
        unparsable, unknown = dropped_fields(prediction, self.mode)
        if unparsable:
            self.unparsable.append(sample_id)
        for subject, obj, predicate in unknown:
            self.triplets += 1
            # resolve() fails when any field is unknown: ask about each with known names in the other slots
            for slot, name, probe in (
                ("entity", subject, (subject, _KNOWN_ENTITY, _KNOWN_PREDICATE)),
                ("entity", obj, (_KNOWN_ENTITY, obj, _KNOWN_PREDICATE)),
                ("predicate", predicate, (_KNOWN_ENTITY, _KNOWN_ENTITY, predicate)),
            ):
                if scene_graph.resolve(*probe, self.mode) is None:
                    self.names[slot][name] += 1

    def result(self) -> dict[str, Any]:
        return {
            "unparsable_predictions": _id_summary(sorted(self.unparsable)),
            "unknown_names": {
                "count": sum(sum(names.values()) for names in self.names.values()),
                "dropped_triplets": self.triplets,
                "examples": {
                    slot: [name for name, _ in names.most_common(_EXAMPLES)] for slot, names in self.names.items()
                },
            },
        }


def _id_summary(ids: list[str]) -> dict[str, Any]:
    """Count and the first few (sorted) ids, for the reader to recognise the problem."""
    return {"count": len(ids), "examples": list(ids[:_EXAMPLES])}


def evaluate(
    predictions: Mapping[str, Prediction],
    samples: Sequence[Mapping[str, Any]],
    protocol: Protocol = "paper",
    *,
    progress: bool = False,
    bootstrap: int = metrics.BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """All metrics of ``predictions`` against the sample records (see the module docstring); ``bootstrap``
    resamples from ``seed`` give the macro F1's confidence interval (:func:`egoexor.metrics.macro_f1_interval`).

    Raises :class:`InputError` for malformed inputs, an empty sample list or predictions none of
    which has a sample's id, and ``ValueError`` for an unknown protocol. Prediction text itself is
    never an error: what does not parse is dropped, as the reference does, and counted.
    """
    return _score(read_predictions(predictions), read_samples(samples), protocol, progress, bootstrap, seed)


def _score(
    predictions: dict[str, Prediction],
    samples: list[Sample],
    protocol: Protocol,
    progress: bool,
    bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    metrics.check_protocol(protocol)
    mode = metrics.PARSE_MODE[protocol]
    missing = sorted({sample.id for sample in samples if sample.id not in predictions})
    unmatched = sorted(set(predictions) - {sample.id for sample in samples})
    if not any(sample.id in predictions for sample in samples):
        raise InputError(
            f"no prediction has the id of a sample ({len(predictions)} predictions, e.g. "
            f"{', '.join(unmatched[:3]) or 'none'}; {len(samples)} samples, e.g. {', '.join(missing[:3])}): "
            "are they of the same split?"
        )
    dropped = _Dropped(mode)
    for sample in samples:
        if sample.id in predictions:
            dropped.add(sample.id, predictions[sample.id])
    frames = (
        (
            sample.take.name,
            scene_graph.parse(sample.answer, mode),
            prediction_triplets(predictions.get(sample.id, ""), mode),
        )
        for sample in tqdm(samples, desc="scoring", unit="frame", disable=not progress, file=sys.stderr)
    )
    result = metrics.compute_metrics(frames, protocol, bootstrap=bootstrap, seed=seed)
    return {
        **result,
        "samples": len(samples),
        "predictions": len(predictions),
        "missing_predictions": {**_id_summary(missing), "scored_as": "empty prediction"},
        "unmatched_predictions": {**_id_summary(unmatched), "scored_as": "ignored"},
        **dropped.result(),
    }


def dropped_summary(result: Mapping[str, Any]) -> str | None:
    """One line on what parsing dropped (unparsable predictions, unknown names), or ``None``."""
    parts = []
    unparsable = result["unparsable_predictions"]
    if unparsable["count"]:
        parts.append(
            f"{unparsable['count']} of {result['predictions']} predictions unparsable "
            f"(no subject,object,predicate chunk; e.g. {', '.join(unparsable['examples'])})"
        )
    unknown = result["unknown_names"]
    if unknown["count"]:
        examples = "; ".join(
            f"{slot} {', '.join(repr(name) for name in names)}" for slot, names in unknown["examples"].items() if names
        )
        parts.append(
            f"{unknown['count']} unknown names in the parse mode {result['parse_mode']!r} dropped "
            f"{unknown['dropped_triplets']} triplets (e.g. {examples})"
        )
    return "; ".join(parts) or None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _interval(interval: Mapping[str, Any] | None) -> str:
    return "-" if interval is None else f"{interval['low']:.4f}-{interval['high']:.4f}"


def headline_rows(result: Mapping[str, Any]) -> list[list[str]]:
    """Per surgery type and overall, the cells of :data:`HEADLINE_HEADER` (console, report.md, error page)."""
    groups = {**result["surgery_types"], "overall": result["overall"]}
    rows = []
    for name, group in groups.items():
        macro = group["macro"] or {}
        triplet = group["triplet"]
        rows.append(
            [name, str(group["frames"]), str(group["scored_frames"]), str(group["pairs"])]
            + [_fmt(macro.get(key)) for key in ("precision", "recall", "f1-score")]
            + [_interval(group.get("macro_f1_interval"))]
            + [_fmt(triplet[key]) for key in ("precision", "recall", "f1-score")]
        )
    return rows


HEADLINE_HEADER = [
    "group",
    "frames",
    "scored",
    "pairs",
    "macro P",
    "macro R",
    "macro F1",
    "95% CI",
    "trip P",
    "trip R",
    "trip F1",
]


def format_headline(result: Mapping[str, Any]) -> str:
    """The console summary: per surgery type and overall, paper-style macro and exact-triplet scores."""
    rows = [HEADLINE_HEADER, *headline_rows(result)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADLINE_HEADER))]
    lines = [
        f"protocol {result['protocol']}: parse mode {result['parse_mode']}, entity set from {result['entity_set']}",
        *(
            "  ".join(
                cell.rjust(width) if i else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            )
            for row in rows
        ),
    ]
    for key, what in _ID_PROBLEMS:
        if result[key]["count"]:
            lines.append(f"{result[key]['count']} {what}, e.g. {', '.join(result[key]['examples'])}")
    return "\n".join(lines)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]


def _score_row(name: str, scores: Mapping[str, Any]) -> list[str]:
    return [name, *(_fmt(scores[key]) for key in ("precision", "recall", "f1-score")), str(scores["support"])]


def _report_rows(report: Mapping[str, Any], labels: Sequence[str], only_supported: bool = False) -> list[list[str]]:
    rows = [_score_row(label, report[label]) for label in labels if report[label]["support"] or not only_supported]
    rows += [_score_row(f"*{average}*", report[average]) for average in _AVERAGES if average in report]
    if "accuracy" in report:
        rows.append(["*accuracy*", "", "", _fmt(report["accuracy"]), str(report["macro avg"]["support"])])
    return rows


def format_report(result: Mapping[str, Any]) -> str:
    """``report.md``: the headline, per-take scores and the overall per-label reports."""
    lines = _report_intro(result)
    lines += ["", *_section("Headline", HEADLINE_HEADER, headline_rows(result))]
    lines += _section("Per take", ["take", "scored frames", "pairs", "macro F1", "triplet F1"], _take_rows(result))
    lines += _label_reports(result["overall"])
    lines += ["## Plots", "", *(f"![{title}]({file})\n" for title, file in _PLOTS)]
    return "\n".join(lines)


def _section(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [f"## {title}", "", *_markdown_table(header, rows)]


def _report_intro(result: Mapping[str, Any]) -> list[str]:
    """What the numbers mean, and what is missing or was dropped."""
    lines = [
        f"# Scene-graph evaluation (protocol `{result['protocol']}`)",
        "",
        f"Parse mode `{result['parse_mode']}`; entity set from the {result['entity_set'].replace('_', ' ')} triplets. "
        "Macro P/R/F1 = mean over the labels with ground-truth support (`none` included), the paper's headline. "
        f"95% CI = {_interval_method(result)}. "
        "Triplet P/R/F1 = exact (subject, object, predicate) set match, summed over all frames.",
        "",
        f"{result['samples']} samples, {result['predictions']} predictions.",
    ]
    for key, what in _ID_PROBLEMS:
        if result[key]["count"]:
            examples = ", ".join(f"`{example}`" for example in result[key]["examples"])
            lines.append(f"{result[key]['count']} {what}, e.g. {examples}.")
    dropped = dropped_summary(result)
    lines.append(f"Dropped by the parser: {dropped}." if dropped else "Every prediction parsed; every name is known.")
    return lines


def _interval_method(result: Mapping[str, Any]) -> str:
    interval = result["overall"].get("macro_f1_interval")
    if interval is None:
        return "none (fewer than two takes to resample, or no bootstrap)"
    return (
        f"percentile bootstrap interval of the macro F1: {interval['samples']} resamples (seed {interval['seed']}) "
        f"of the {interval['takes']} takes, each with all its frames, within each surgery type"
    )


def _take_rows(result: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for take, group in result["takes"].items():
        macro = group["macro"] or {}
        f1 = (macro.get("f1-score"), group["triplet"]["f1-score"])
        rows.append([take, str(group["scored_frames"]), str(group["pairs"]), *map(_fmt, f1)])
    return rows


def _label_reports(overall: Mapping[str, Any]) -> list[str]:
    """The overall per-label tables: relations, binary interaction and entities, where scored."""
    header = ["label", "precision", "recall", "F1", "support"]
    lines = []
    if overall["relation_report"] is not None:
        relations = _report_rows(overall["relation_report"], vocab.RELATION_LABELS)
        lines += _section("Relations (overall)", header, relations)
        binary = _report_rows(overall["binary_report"], metrics.BINARY_LABELS)
        lines += _section("Binary interaction (overall)", header, binary)
    if overall["entity_report"] is not None:
        entities = _report_rows(overall["entity_report"], vocab.ENTITY_LABELS, True)
        lines += _section("Entities (overall, labels with support)", header, entities)
    if overall["non_entity_names"]:
        lines.append(
            f"{overall['non_entity_names']} entity-set members were predicate words (left out of the entity report)."
        )
    return lines


def _save_figure(figure: Any, path: Path) -> None:
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)


def f1_figure(result: Mapping[str, Any]) -> Any:
    """Per-label F1, overall and per surgery type. A label without ground truth in a group has no bar there
    (its F1 is undefined, not 0); one without ground truth anywhere is marked "no support"; an F1 of 0 is
    written as "0" beside its (empty) bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = {"overall": result["overall"], **result["surgery_types"]}
    groups = {name: group["relation_report"] for name, group in groups.items() if group["relation_report"]}
    labels = vocab.RELATION_LABELS
    figure = Figure(figsize=(8, 9), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    height = 0.8 / max(len(groups), 1)
    for i, (name, report) in enumerate(groups.items()):
        supported = [j for j, label in enumerate(labels) if report[label]["support"]]
        scores = [report[labels[j]]["f1-score"] for j in supported]
        colour = _PLOT_GROUP_COLOURS[i % len(_PLOT_GROUP_COLOURS)]
        axes.barh(np.array(supported) + i * height, scores, height=height, label=name, color=colour)
        for j, score in zip(supported, scores, strict=True):
            if score == 0:  # a bar of no width: say it, so it is not taken for a missing label
                axes.text(0.005, j + i * height, "0", va="center", fontsize=7, color=colour)
    support = result["overall"]["relation_report"] or {label: {"support": 0} for label in labels}
    middle = height * (len(groups) - 1) / 2
    tick_labels = []
    for j, label in enumerate(labels):
        n = support[label]["support"]
        tick_labels.append(f"{label} (n={n})")
        if not n:
            axes.text(0.01, j + middle, "no support", va="center", fontsize=8, color="#888888", style="italic")
    axes.set_yticks(np.arange(len(labels)) + middle, tick_labels)
    for tick, label in zip(axes.get_yticklabels(), labels, strict=True):
        if not support[label]["support"]:
            tick.set_color("#888888")
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    axes.set_xlabel("F1")
    axes.set_title(
        f"Per-label F1 (protocol {result['protocol']}; n = overall ground-truth support;\n"
        "no bar: no ground truth of the label in that group)"
    )
    if groups:
        figure.legend(loc="outside lower center", ncols=len(groups))
    return figure


def occurring_labels(confusion: np.ndarray) -> list[int]:
    """Indices of the labels with a ground-truth or a predicted pair (a non-empty row or column)."""
    return [i for i in range(len(confusion)) if confusion[i].any() or confusion[:, i].any()]


def confusion_figure(result: Mapping[str, Any]) -> Any:
    """The overall confusion matrix over the labels that occur, counts written in each non-empty cell."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    full = np.asarray(result["overall"]["confusion_matrix"], dtype=np.float64)
    keep = occurring_labels(full) or [vocab.RELATION_LABELS.index(vocab.NONE)]
    confusion = full[np.ix_(keep, keep)]
    labels = [vocab.RELATION_LABELS[i] for i in keep]
    totals = confusion.sum(axis=1, keepdims=True)
    row_share = np.divide(confusion, totals, out=np.zeros_like(confusion), where=totals > 0)
    side = 0.55 * len(labels) + 3.5
    fontsize = float(np.clip(180 / len(labels), 8, 14))
    figure = Figure(figsize=(side + 1.5, side), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(row_share, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, label="share of the ground-truth row")
    for row, column in zip(*np.nonzero(confusion), strict=True):
        colour = "white" if row_share[row, column] > 0.5 else "black"
        text = f"{int(confusion[row, column])}"
        axes.text(column, row, text, ha="center", va="center", fontsize=fontsize, color=colour)
    axes.set_xticks(range(len(labels)), labels, rotation=90)
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("ground truth")
    left_out = len(vocab.RELATION_LABELS) - len(labels)
    axes.set_title(
        f"Overall confusion matrix (protocol {result['protocol']}; counts, colour = row share;\n"
        f"{left_out} labels that occur nowhere left out)"
    )
    return figure


def write_outputs(result: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write metrics.json, report.md and the two plots into ``out_dir`` (created if needed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "metrics.json", out / "report.md", out / "f1_per_predicate.png", out / "confusion_matrix.png"]
    write_json(paths[0], result)
    write_text(paths[1], format_report(result))
    _save_figure(f1_figure(result), paths[2])
    _save_figure(confusion_figure(result), paths[3])
    return paths


def _read_file(path: str, check: Callable[[Any], Any], flag: str) -> Any:
    """Load a JSON file and check its layout; every failure becomes one :class:`InputError` naming the file."""
    content = cli.read_json(path, flag)
    try:
        return check(content)
    except InputError as error:
        raise InputError(f"{flag} {path}: {error}") from None


def _parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(
        prog=f"python -m {COMMAND}",
        description="Score scene-graph predictions with the EgoExOR per-pair relation metric "
        "(macro P/R/F1 per take, per surgery type and overall) and exact-triplet P/R/F1.",
    )
    parser.add_argument(
        "--predictions",
        required=True,
        metavar="FILE",
        help="JSON object sample id -> generated text ('<SG> s,o,p; ... </SG>') or -> [[subject, predicate, object], "
        "...] (the reference's infer output). Samples without a prediction are scored as empty predictions.",
    )
    parser.add_argument(
        "--samples",
        required=True,
        metavar="FILE",
        help="LLaVA-format sample JSON list (the test split); ground truth is each record's gpt answer.",
    )
    parser.add_argument(
        "--protocol",
        choices=metrics.PROTOCOLS,
        default="paper",
        help="paper: the published EgoExOR evaluator, bit for bit (reference parsing, entity set from the "
        "predictions); gt: the MM-OR/4D-OR protocol (robust parsing, entity set from the ground truth). "
        "Default: %(default)s.",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder for metrics.json, report.md and the PNG plots (replaced as a whole when complete).",
    )
    parser.add_argument(
        "--bootstrap",
        type=cli.int_flag(0),
        default=metrics.BOOTSTRAP_SAMPLES,
        help="bootstrap resamples of the takes for the macro F1's 95%% confidence interval (0: no interval). "
        "Default: %(default)s.",
    )
    parser.add_argument("--seed", type=cli.int_flag(0), default=0, help="seed of the bootstrap (default 0)")
    parser.add_argument(
        "--min_coverage",
        type=cli.float_flag(0, 1),
        default=0.0,
        help="share of the samples that must have a prediction (e.g. 1.0: all of them), else an error before "
        "scoring; below 1, a report that covers fewer is written with a warning. Default: %(default)s.",
    )
    cli.add_overwrite_flag(parser)
    return parser


def evaluate_files(
    predictions: str | os.PathLike,
    samples: str | os.PathLike,
    out: str | os.PathLike,
    *,
    protocol: Protocol = "paper",
    overwrite: bool = False,
    bootstrap: int = metrics.BOOTSTRAP_SAMPLES,
    seed: int = 0,
    min_coverage: float = 0.0,
) -> dict[str, Any]:
    """The command as a function: score the predictions file against the samples file, write ``out`` (replaced
    as a whole when complete); returns the evaluation. User mistakes raise :class:`cli.CommandError`, among them
    predictions for fewer than ``min_coverage`` of the samples."""
    cli.check_range("--min_coverage", min_coverage, 0, 1)
    out = cli.check_output(out, inputs=[predictions, samples], overwrite=overwrite, owner=COMMAND, flag="--out")
    checked_predictions = _read_file(predictions, read_predictions, "--predictions")
    checked_samples = _read_file(samples, read_samples, "--samples")
    covered = sum(sample.id in checked_predictions for sample in checked_samples)
    if covered < min_coverage * len(checked_samples):
        raise InputError(
            f"--predictions {predictions}: {_coverage(covered, len(checked_samples))}, "
            f"below --min_coverage {min_coverage}"
        )
    progress = len(checked_samples) >= _PROGRESS_MIN_SAMPLES
    result = _score(checked_predictions, checked_samples, protocol, progress, bootstrap, seed)
    with cli.output_folder(out, COMMAND) as temporary:
        write_outputs(result, temporary)
    return result


def _coverage(covered: int, samples: int) -> str:
    return f"predictions for only {covered} of {samples} samples ({100 * covered / samples:.1f}%)"


def report(result: Mapping[str, Any], out: Path, command: str, wrote: str) -> None:
    """The headline and the ``wrote`` line on stdout; what parsing dropped and samples without a prediction, if
    any, as warnings (a report over a part of the split must not pass for one over all of it)."""
    print(format_headline(result))
    print(wrote)
    missing = result["missing_predictions"]["count"]
    if missing:
        covered = _coverage(result["samples"] - missing, result["samples"])
        cli.warn(command, f"{covered}: the other {missing} are scored as empty predictions")
    dropped = dropped_summary(result)
    if dropped:
        cli.warn(command, f"{dropped} (see {out / 'report.md'})")


def _run(args) -> int:
    result = evaluate_files(**vars(args))
    out = Path(args.out)
    report(result, out, COMMAND, f"wrote {out}/metrics.json, report.md, f1_per_predicate.png, confusion_matrix.png")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for bad input, 130 after Ctrl-C)."""
    return cli.run(COMMAND, lambda: _run(_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())

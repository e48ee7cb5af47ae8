"""An evaluation as one static HTML page: why the model is wrong, in the order a researcher acts on it.

Reads a results folder of ``python -m egoexor.infer`` (or ``egoexor.evaluate`` beside a predictions
file): ``raw_predictions.json`` (the generated text, what was scored; else ``predictions.json``),
``metrics.json`` and ``f1_per_predicate.png``. Each predicted sample is a frame
(``<surgery_type>_<procedure>_<take>_<frame>_<permutation>``; the first permutation of a frame stands
for it), compared with the frame's annotation in the HDF5 file.

The page, top to bottom:

* the headline table of ``metrics.json`` as :func:`egoexor.evaluate.headline_rows` writes it for the
  console and ``report.md`` (macro P/R/F1 over the labels with support, exact-triplet scores, per surgery
  type and overall), so the page and the evaluation never disagree, and the per-label F1 plot;
* **answers the parser could not read**: frames whose text has no ``subject,object,predicate`` chunk,
  or with names the protocol's parse mode does not know (those triplets were dropped before scoring);
* **recurring confusions**: an annotated relation the model replaced by another, counted over frames,
  each with links to its frames on the page. A frame's confusions are, first, the ordered entity pairs
  whose first annotated and first predicted predicates differ (the pair metric's rule), then its other
  missed and spurious relations paired in text order (the model wrote ``head_surgeon,ultrasound_machine,
  anaesthetising`` where ``anesthetist,scissors,removing`` was annotated);
* with a second run (``compare``), its headline and the frames that one run gets right (every relation,
  nothing dropped) and the other does not, both ways;
* **the wrongest frames** (missed + spurious relations, ties broken by fewer correct ones).

The listed frames can be limited to one take, one surgery type or the frames with one predicate in their
ground truth or prediction (:func:`select`); the headline stays the whole evaluation's.

Each listed frame shows its picture (:mod:`egoexor.viz.timepoint`, with what the parser could not read
written on it), for a run with memory (``infer --temporal``, its ``memory.json``) the memory text its
prompt held, the model's raw output, the parsed triplets (correct / spurious) and the ground truth
(correct / missed).

Pictures are inlined (``data:`` URIs: the page opens from disk, sent by mail, with no server) while the
page stays under ``inline_limit`` bytes (:data:`INLINE_LIMIT_MB` by default); beyond it they are PNG
files in a folder beside the page (``<page>_files/``), referenced relatively, so a 30-frame page stays
small and loads fast. A few lines of script count the pictures that decoded and report one that did not
on the console, so a broken page is visible (the browser test reads both).
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import textwrap
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from egoexor import cli, evaluate, metrics, vocab
from egoexor.data.layout import TakeKey
from egoexor.data.reader import EgoExorReader
from egoexor.scene_graph import Triplet
from egoexor.viz import graph

PREDICTION_FILES = ("raw_predictions.json", "predictions.json")
METRICS_FILE = "metrics.json"
MEMORY_FILE = "memory.json"
F1_PLOT = "f1_per_predicate.png"
#: Pictures are inlined while the page stays under this size (MB); beyond it they go into a folder.
INLINE_LIMIT_MB = 2.0
#: Rows of the recurring-confusions table, and frame links per row.
CONFUSION_ROWS, CONFUSION_LINKS = 20, 8
#: Rows of each table of the comparison with another run.
COMPARISON_ROWS = 50
_SAMPLE_ID = re.compile(r"(?P<surgery_type>.+)_(?P<procedure>\d+)_(?P<take>\d+)_(?P<frame>\d+)_(?P<permutation>\d+)")


class Confusion(NamedTuple):
    """An annotated relation the model replaced by another (same entity pair, or another)."""

    truth: Triplet
    predicted: Triplet


@dataclass
class FrameResult:
    sample_id: str
    take: TakeKey
    frame: int
    edges: list[tuple[Triplet, graph.Status]]
    prediction: evaluate.Prediction
    note: str | None  # what the parser could not read (:func:`dropped_note`)
    confusions: list[Confusion]
    #: The memory text of the sample's prompt (runs with memory only: ``infer --temporal``).
    memory: str | None = None

    def count(self, status: graph.Status) -> int:
        return sum(s == status for _, s in self.edges)

    @property
    def wrongness(self) -> int:
        return self.count("missed") + self.count("spurious")

    @property
    def unreadable(self) -> bool:
        return self.note is not None


def frame_of(sample_id: str) -> tuple[TakeKey, int, int]:
    """(take, frame, permutation) of a sample id, else :class:`cli.CommandError`."""
    match = _SAMPLE_ID.fullmatch(sample_id)
    if match is None:
        raise cli.CommandError(
            f"prediction id {sample_id!r}: expected <surgery_type>_<procedure>_<take>_<frame>_<permutation>"
        )
    take = TakeKey(match["surgery_type"], int(match["procedure"]), int(match["take"]))
    return take, int(match["frame"]), int(match["permutation"])


def read_results(
    folder: Path, flag: str = "--results"
) -> tuple[dict[str, evaluate.Prediction], dict[str, Any], bytes, dict[str, str]]:
    """Predictions, metrics, the F1 plot and the memory texts (empty for a run without memory) of a results
    folder; a missing piece names the file."""
    if not folder.is_dir():
        raise cli.CommandError(f"{flag} {folder}: no such folder")
    found = next((folder / name for name in PREDICTION_FILES if (folder / name).is_file()), None)
    if found is None:
        raise cli.CommandError(f"{flag} {folder}: no {' or '.join(PREDICTION_FILES)} (written by egoexor.infer)")
    predictions = evaluate.read_predictions(cli.read_json(found, flag))
    result = cli.read_json(folder / METRICS_FILE, flag)
    if not isinstance(result, dict) or not {"parse_mode", "overall", "surgery_types"} <= result.keys():
        raise cli.CommandError(f"{flag} {folder / METRICS_FILE}: not written by egoexor.evaluate (no parse_mode)")
    plot = cli.input_file(folder / F1_PLOT, flag).read_bytes()
    memories = cli.read_json(folder / MEMORY_FILE, flag) if (folder / MEMORY_FILE).is_file() else {}
    if not isinstance(memories, dict) or not all(isinstance(m, str) for m in memories.values()):
        raise cli.CommandError(f"{flag} {folder / MEMORY_FILE}: expected {{sample id: memory text}}")
    return predictions, result, plot, memories


def dropped_note(prediction: evaluate.Prediction, parse_mode: str) -> str | None:
    """What the parser could not read of a prediction, in one line (the page and the picture show it)."""
    unparsable, unknown = evaluate.dropped_fields(prediction, parse_mode)
    if unparsable:
        return f"unparsable: no subject,object,predicate chunk in {textwrap.shorten(str(prediction), 100)!r}"
    if unknown:
        return "dropped for an unknown name: " + "; ".join(",".join(field) for field in unknown)
    return None


def confusions(truth: Sequence[Triplet], predicted: Sequence[Triplet]) -> list[Confusion]:
    """The annotated relations a prediction replaced by others: same ordered pair with another predicate
    (each pair's first triplet, as the pair metric reads them), then the remaining missed and spurious
    relations paired in text order."""
    annotated, guessed = metrics.first_predicates(truth), metrics.first_predicates(predicted)
    same_pair = [
        Confusion(Triplet(*pair, annotated[pair]), Triplet(*pair, guessed[pair]))
        for pair in annotated
        if pair in guessed and guessed[pair] != annotated[pair] and guessed[pair] in vocab.PREDICATES
    ]
    used = {c.truth for c in same_pair} | {c.predicted for c in same_pair}
    missed = [t for t in dict.fromkeys(truth) if t not in predicted and t not in used]
    spurious = [t for t in dict.fromkeys(predicted) if t not in truth and t not in used]
    return same_pair + [Confusion(a, b) for a, b in zip(missed, spurious, strict=False)]


def score_frames(
    predictions: Mapping[str, evaluate.Prediction],
    reader: EgoExorReader,
    parse_mode: str,
    memories: Mapping[str, str] | None = None,
) -> tuple[list[FrameResult], int]:
    """Every predicted, annotated frame with its relations' statuses (and its prompt's memory from
    ``memories``), wrongest first; and the number of predicted frames without an annotation."""
    first: dict[tuple[TakeKey, int], tuple[int, str]] = {}
    for sample_id in predictions:
        take, frame, permutation = frame_of(sample_id)
        if (take, frame) not in first or permutation < first[take, frame][0]:
            first[take, frame] = (permutation, sample_id)
    results, unannotated = [], 0
    for (take, frame), (_, sample_id) in sorted(first.items()):
        truth = reader.read(take, frame, fields=("annotations",)).annotations
        if truth is None:
            unannotated += 1
            continue
        prediction = predictions[sample_id]
        predicted = evaluate.prediction_triplets(prediction, parse_mode)
        note = dropped_note(prediction, parse_mode)
        edges = graph.compare(truth, predicted)
        memory = (memories or {}).get(sample_id)
        found = confusions(truth, predicted)
        results.append(FrameResult(sample_id, take, frame, edges, prediction, note, found, memory))
    results.sort(key=lambda r: (-r.wrongness, r.count("correct"), r.take, r.frame))
    return results, unannotated


def select(
    results: Sequence[FrameResult],
    *,
    take: TakeKey | None = None,
    surgery_type: str | None = None,
    predicate: str | None = None,
) -> list[FrameResult]:
    """The frames of one take, of one surgery type, and with ``predicate`` in their ground truth or prediction."""
    return [
        r
        for r in results
        if (take is None or r.take == take)
        and (surgery_type is None or r.take.surgery_type == surgery_type)
        and (predicate is None or any(t.predicate == predicate for t, _ in r.edges))
    ]


@dataclass
class Comparison:
    """Another run on the same frames: the frames one run gets right and the other does not."""

    name: str
    evaluation: Mapping[str, Any]
    right_here: list[tuple[FrameResult, FrameResult]]  # (this run's frame, the other's): right here only
    right_there: list[tuple[FrameResult, FrameResult]]  # right in the other run only


def _right(result: FrameResult) -> bool:
    """Every relation correct and nothing dropped by the parser."""
    return result.wrongness == 0 and not result.unreadable


def compare(
    results: Sequence[FrameResult], other: Sequence[FrameResult], name: str, evaluation: Mapping[str, Any]
) -> Comparison:
    """Match ``other``'s frames to ``results`` (by take and frame); frames only one of them has are left out."""
    theirs = {(r.take, r.frame): r for r in other}
    pairs = [(r, theirs[r.take, r.frame]) for r in results if (r.take, r.frame) in theirs]
    return Comparison(
        name,
        evaluation,
        [(a, b) for a, b in pairs if _right(a) and not _right(b)],
        [(a, b) for a, b in pairs if _right(b) and not _right(a)],
    )


def recurring_confusions(results: Sequence[FrameResult]) -> list[tuple[Confusion, list[str]]]:
    """Each confusion that occurs in more than one frame, with those frames' sample ids, most frequent first."""
    frames: dict[Confusion, list[str]] = defaultdict(list)
    for result in results:
        for confusion in dict.fromkeys(result.confusions):
            frames[confusion].append(result.sample_id)
    recurring = [(confusion, ids) for confusion, ids in frames.items() if len(ids) > 1]
    return sorted(recurring, key=lambda item: (-len(item[1]), item[0]))


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1400px; color: #222; }
section.frame { border-top: 2px solid #ccc; padding-top: 1rem; margin-top: 2rem; }
img { max-width: 100%; height: auto; }
table { border-collapse: collapse; margin: 0.5rem 0; }
td, th { padding: 0.15rem 0.8rem; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
pre.raw { background: #f4f4f4; padding: 0.5rem; white-space: pre-wrap; overflow-wrap: anywhere; }
p.memory { font-family: monospace; font-size: 0.85rem; }
.relations { display: flex; gap: 3rem; flex-wrap: wrap; }
.correct { color: #2ca02c; } .missed { color: #ff7f0e; } .spurious { color: #d62728; } .dropped { color: #9467bd; }
"""
_SCRIPT = """
window.addEventListener("load", () => {
  let decoded = 0;
  for (const image of document.images) {
    if (image.complete && image.naturalWidth > 0) decoded += 1;
    else console.error("picture did not decode: " + image.alt);
  }
  document.body.dataset.decoded = String(decoded);
});
"""


def _anchor(sample_id: str) -> str:
    return "frame-" + re.sub(r"[^A-Za-z0-9_-]", "-", sample_id)


def _triplet_table(title: str, kind: str, rows: Sequence[tuple[Triplet, str]]) -> str:
    body = (
        "".join(
            f'<tr class="{status}"><td>{html.escape(t.subject)}</td><td>{html.escape(t.predicate)}</td>'
            f"<td>{html.escape(t.object)}</td><td>{status}</td></tr>"
            for t, status in rows
        )
        or '<tr><td colspan="4">(none)</td></tr>'
    )
    return (
        f'<table class="{kind}"><caption>{title}</caption>'
        f"<tr><th>subject</th><th>predicate</th><th>object</th><th></th></tr>{body}</table>"
    )


def _raw_text(prediction: evaluate.Prediction) -> str:
    return prediction if isinstance(prediction, str) else json.dumps(prediction)


def _frame_section(result: FrameResult, title: str, src: str) -> str:
    dropped = f'<p class="dropped">{html.escape(result.note)}</p>' if result.note else ""
    memory = "" if result.memory is None else f'<p class="memory">memory: {html.escape(result.memory)}</p>'
    truth = [(t, s) for t, s in result.edges if s in ("correct", "missed")]
    parsed = [(t, s) for t, s in result.edges if s in ("correct", "spurious")]
    return (
        f'<section class="frame" id="{_anchor(result.sample_id)}" data-sample="{html.escape(result.sample_id)}" '
        f'data-wrongness="{result.wrongness}"><h3>{html.escape(title)}</h3>'
        f'<img src="{src}" alt="{html.escape(result.sample_id)}">'
        f"{memory}"
        f'<p>raw output:</p><pre class="raw">{html.escape(_raw_text(result.prediction))}</pre>{dropped}'
        f'<div class="relations">{_triplet_table("parsed prediction", "parsed", parsed)}'
        f"{_triplet_table('ground truth', 'truth', truth)}</div></section>"
    )


def _frame_title(result: FrameResult) -> str:
    key = result.take
    return (
        f"{key.surgery_type} procedure {key.procedure_id} take {key.take_id}, frame {result.frame}: "
        f"{result.count('missed')} missed, {result.count('spurious')} spurious, {result.count('correct')} correct"
    )


def _headline(result: Mapping[str, Any], table_id: str = "headline") -> str:
    """The evaluation's headline table, cell for cell as ``report.md`` has it."""
    groups = [*result["surgery_types"], "overall"]
    header = "".join(f"<th>{html.escape(name)}</th>" for name in evaluate.HEADLINE_HEADER)
    rows = []
    for group, cells in zip(groups, evaluate.headline_rows(result), strict=True):
        macro = (result["overall"] if group == "overall" else result["surgery_types"][group])["macro"] or {}
        kinds = ["", *([' class="number"'] * (len(cells) - 1))]  # the group's name, then numbers
        tds = "".join(f"<td{kind}>{html.escape(cell)}</td>" for kind, cell in zip(kinds, cells, strict=True))
        rows.append(f'<tr data-group="{html.escape(group)}" data-macro-f1="{macro.get("f1-score", "")}">{tds}</tr>')
    return f'<table id="{table_id}"><tr>{header}</tr>{"".join(rows)}</table>'


def _pair(triplet: Triplet) -> str:
    return f"{html.escape(triplet.subject)} &rarr; {html.escape(triplet.object)}"


def _confusion_table(recurring: list[tuple[Confusion, list[str]]], shown: set[str]) -> str:
    if not recurring:
        return "<p>No confusion occurs in more than one frame.</p>"
    rows = []
    for confusion, ids in recurring[:CONFUSION_ROWS]:
        links = ", ".join(_frame_link(i, shown) for i in ids[:CONFUSION_LINKS])
        more = f" and {len(ids) - CONFUSION_LINKS} more" if len(ids) > CONFUSION_LINKS else ""
        truth, predicted = confusion
        same = (truth.subject, truth.object) == (predicted.subject, predicted.object)
        rows.append(
            f"<tr><td>{html.escape(truth.predicate)}</td><td>{html.escape(predicted.predicate)}</td>"
            f"<td>{_pair(truth)}</td><td>{'same' if same else _pair(predicted)}</td>"
            f'<td class="number">{len(ids)}</td><td>{links}{more}</td></tr>'
        )
    return (
        '<table id="confusions"><tr><th>annotated</th><th>predicted</th><th>annotated pair</th>'
        "<th>predicted pair</th><th>frames</th><th>frames (linked where shown below)</th></tr>"
        f"{''.join(rows)}</table>"
    )


def _frame_link(sample_id: str, shown: set[str]) -> str:
    """A sample id, linked to its section where the page shows that frame."""
    text = html.escape(sample_id)
    return f'<a href="#{_anchor(sample_id)}">{text}</a>' if sample_id in shown else text


def _errors_cell(result: FrameResult) -> str:
    dropped = ", answer not fully read" if result.unreadable else ""
    return f"{result.count('missed')} missed, {result.count('spurious')} spurious{dropped}"


def _comparison_section(comparison: Comparison, shown: set[str]) -> str:
    name = html.escape(comparison.name)
    parts = [
        f'<h2 id="comparison">Compared with {name}</h2><p>Its headline ({METRICS_FILE} of {name}):</p>',
        _headline(comparison.evaluation, "headline-other"),
    ]
    for kind, title, pairs in (
        ("right-here", f"right here, wrong in {name}", comparison.right_here),
        ("right-there", f"wrong here, right in {name}", comparison.right_there),
    ):
        rows = "".join(
            f"<tr><td>{_frame_link(here.sample_id, shown)}</td>"
            f"<td>{_errors_cell(here)}</td><td>{_errors_cell(there)}</td></tr>"
            for here, there in pairs[:COMPARISON_ROWS]
        )
        more = f"<p>and {len(pairs) - COMPARISON_ROWS} more</p>" if len(pairs) > COMPARISON_ROWS else ""
        parts.append(
            f"<h3>{len(pairs)} frames {title}</h3>"
            f'<table class="comparison" id="{kind}"><tr><th>frame</th><th>here</th><th>{name}</th></tr>{rows}</table>'
            f"{more}"
        )
    return "".join(parts)


@dataclass
class Page:
    """The HTML and, when pictures are not inlined, the PNG files of the folder beside it (name -> bytes)."""

    text: str
    files: dict[str, bytes]


def page(
    results: list[FrameResult],
    evaluation: Mapping[str, Any],
    f1_plot: bytes,
    picture: Callable[[FrameResult], np.ndarray],
    *,
    limit: int,
    unannotated: int,
    folder_name: str,
    inline_limit: float = INLINE_LIMIT_MB * 1e6,
    scope: str | None = None,
    comparison: Comparison | None = None,
) -> Page:
    """The page; ``picture`` renders one frame (called for the listed frames only). Pictures go into
    ``folder_name/`` (relative to the page) when inlining them would make the page exceed ``inline_limit``
    bytes. ``scope`` says which frames ``results`` holds when a filter chose them (the headline is always
    the whole evaluation's); ``comparison`` adds the frames another run gets right and this one not, and
    the other way round."""
    unreadable = [r for r in results if r.unreadable]
    wrongest = [r for r in results if not r.unreadable]
    groups = (("unreadable", unreadable[:limit]), ("wrongest", wrongest[:limit]))
    pictures = {"f1_per_predicate.png": f1_plot}
    for _, listed in groups:
        for result in listed:
            pictures[f"{_anchor(result.sample_id)}.png"] = png_bytes(picture(result))
    inline = sum(len(data) for data in pictures.values()) * 4 / 3 <= inline_limit
    sources = {
        name: _data_uri(data) if inline else f"{html.escape(folder_name)}/{name}" for name, data in pictures.items()
    }
    shown = {r.sample_id for _, listed in groups for r in listed}
    sections = {
        kind: "".join(
            _frame_section(r, f"#{rank} {_frame_title(r)}", sources[f"{_anchor(r.sample_id)}.png"])
            for rank, r in enumerate(listed, start=1)
        )
        for kind, listed in groups
    }
    dropped = evaluate.dropped_summary(evaluation)
    note = f", {unannotated} predicted frame(s) without an annotation left out" if unannotated else ""
    only = f'<p id="scope">Frames below: only {html.escape(scope)} ({len(results)} frames).</p>' if scope else ""
    text = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>egoexor: evaluation errors</title>'
        f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>"
        f"<h1>Evaluation errors</h1>"
        f"<p>protocol {html.escape(str(evaluation.get('protocol')))}, parse mode "
        f"{html.escape(evaluation['parse_mode'])}: the numbers of {METRICS_FILE} (the whole evaluation). "
        f"{html.escape(dropped) + '.' if dropped else 'Every prediction parsed; every name is known.'}</p>"
        f"{_headline(evaluation)}"
        f'<h2>Per-predicate F1</h2><img src="{sources["f1_per_predicate.png"]}" alt="per-predicate F1">{only}'
        f'<h2 id="unreadable">Answers the parser could not read ({len(unreadable)} frames'
        f"{f', {len(groups[0][1])} shown' if len(unreadable) > limit else ''})</h2>"
        "<p>Unparsable text, or names the parse mode does not know: these triplets never reached the metric.</p>"
        f"{sections['unreadable']}"
        "<h2>Recurring confusions</h2><p>An annotated relation the model replaced by another, in more than one "
        "frame: same entity pair with another predicate (each pair's first triplet), else the frame's other "
        "missed and spurious relations paired in text order.</p>"
        f"{_confusion_table(recurring_confusions(results), shown)}"
        f"{_comparison_section(comparison, shown) if comparison else ''}"
        f'<h2 id="wrongest">The {len(groups[1][1])} wrongest frames</h2><p>{len(results)} annotated frames '
        f"scored{note}; wrongness = missed + spurious relations, ties: fewer correct first.</p>"
        f"{sections['wrongest']}</body></html>\n"
    )
    return Page(text, {} if inline else pictures)

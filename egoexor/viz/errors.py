"""An evaluation as one static HTML page: where the model is wrong, worst frames first.

Reads a results folder of ``python -m egoexor.infer`` (or ``egoexor.evaluate`` beside a predictions
file): ``predictions.json`` (else ``raw_predictions.json``), ``metrics.json`` for the protocol's parse
mode and the headline numbers, and ``f1_per_predicate.png``. Each predicted sample is a frame
(``<surgery_type>_<procedure>_<take>_<frame>_<permutation>``; the first permutation of a frame stands
for it), scored against the frame's annotation in the HDF5 file: wrongness = missed + spurious
relations. The page lists the ``limit`` wrongest frames, each with its picture
(:mod:`egoexor.viz.timepoint`), its annotated vs predicted relations and, for a run with memory
(``infer --temporal``, its ``memory.json``), the memory text its prompt held.

Everything, pictures included, is inside the one file (``data:`` URIs): it opens from disk, sent by
mail or copied anywhere, with no server. A few lines of script count the pictures that decoded and
report one that did not on the console, so a broken page is visible (the browser test reads both).
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from egoexor import cli, evaluate
from egoexor.data.layout import TakeKey
from egoexor.data.reader import EgoExorReader
from egoexor.scene_graph import Triplet
from egoexor.viz import graph

PREDICTION_FILES = ("predictions.json", "raw_predictions.json")
METRICS_FILE = "metrics.json"
MEMORY_FILE = "memory.json"
F1_PLOT = "f1_per_predicate.png"
_SAMPLE_ID = re.compile(r"(?P<surgery_type>.+)_(?P<procedure>\d+)_(?P<take>\d+)_(?P<frame>\d+)_(?P<permutation>\d+)")


@dataclass
class FrameResult:
    sample_id: str
    take: TakeKey
    frame: int
    edges: list[tuple[Triplet, graph.Status]]
    #: The memory text of the sample's prompt (runs with memory only).
    memory: str | None = None

    def count(self, status: graph.Status) -> int:
        return sum(s == status for _, s in self.edges)

    @property
    def wrongness(self) -> int:
        return self.count("missed") + self.count("spurious")


def frame_of(sample_id: str) -> tuple[TakeKey, int, int]:
    """(take, frame, permutation) of a sample id, else :class:`cli.CommandError`."""
    match = _SAMPLE_ID.fullmatch(sample_id)
    if match is None:
        raise cli.CommandError(
            f"prediction id {sample_id!r}: expected <surgery_type>_<procedure>_<take>_<frame>_<permutation>"
        )
    take = TakeKey(match["surgery_type"], int(match["procedure"]), int(match["take"]))
    return take, int(match["frame"]), int(match["permutation"])


def read_results(folder: Path) -> tuple[dict[str, evaluate.Prediction], dict[str, Any], bytes, dict[str, str]]:
    """Predictions, metrics, the F1 plot and the memory texts (empty for a run without memory) of a results
    folder; a missing piece names the file."""
    if not folder.is_dir():
        raise cli.CommandError(f"--results {folder}: no such folder")
    found = next((folder / name for name in PREDICTION_FILES if (folder / name).is_file()), None)
    if found is None:
        raise cli.CommandError(f"--results {folder}: no {' or '.join(PREDICTION_FILES)} (written by egoexor.infer)")
    predictions = evaluate.read_predictions(cli.read_json(found, "--results"))
    result = cli.read_json(folder / METRICS_FILE, "--results")
    if not isinstance(result, dict) or "parse_mode" not in result:
        raise cli.CommandError(f"--results {folder / METRICS_FILE}: not written by egoexor.evaluate (no parse_mode)")
    plot = cli.input_file(folder / F1_PLOT, "--results").read_bytes()
    memories = cli.read_json(folder / MEMORY_FILE, "--results") if (folder / MEMORY_FILE).is_file() else {}
    if not isinstance(memories, dict) or not all(isinstance(m, str) for m in memories.values()):
        raise cli.CommandError(f"--results {folder / MEMORY_FILE}: expected {{sample id: memory text}}")
    return predictions, result, plot, memories


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
        predicted = evaluate.prediction_triplets(predictions[sample_id], parse_mode)
        memory = (memories or {}).get(sample_id)
        results.append(FrameResult(sample_id, take, frame, graph.compare(truth, predicted), memory))
    results.sort(key=lambda r: (-r.wrongness, r.count("correct"), r.take, r.frame))
    return results, unannotated


def png_uri(data: bytes | np.ndarray) -> str:
    if isinstance(data, np.ndarray):
        buffer = io.BytesIO()
        Image.fromarray(data).save(buffer, format="PNG", optimize=True)
        data = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1400px; color: #222; }
section.frame { border-top: 2px solid #ccc; padding-top: 1rem; margin-top: 2rem; }
img { max-width: 100%; height: auto; }
table { border-collapse: collapse; margin: 0.5rem 0; }
td, th { padding: 0.15rem 0.8rem; text-align: left; }
p.memory { font-family: monospace; font-size: 0.85rem; }
.correct { color: #2ca02c; } .missed { color: #ff7f0e; } .spurious { color: #d62728; }
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


def _relations_table(result: FrameResult) -> str:
    rows = "".join(
        f'<tr class="{status}"><td>{html.escape(t.subject)}</td><td>{html.escape(t.predicate)}</td>'
        f"<td>{html.escape(t.object)}</td><td>{status}</td></tr>"
        for t, status in result.edges
    )
    return f"<table><tr><th>subject</th><th>predicate</th><th>object</th><th>status</th></tr>{rows}</table>"


def page(
    results: list[FrameResult],
    metrics: Mapping[str, Any],
    f1_plot: bytes,
    picture: Callable[[FrameResult], np.ndarray],
    *,
    limit: int,
    unannotated: int,
) -> str:
    """The HTML of the page; ``picture`` renders one frame (called for the listed frames only)."""
    overall = metrics.get("overall", {})
    macro = (overall.get("relation_report") or {}).get("macro avg", {}).get("f1-score")
    headline = f"protocol {html.escape(str(metrics.get('protocol')))}, parse mode {html.escape(metrics['parse_mode'])}"
    if macro is not None:
        headline += f", macro F1 {macro:.3f}"
    shown = results[:limit]
    sections = []
    for rank, result in enumerate(shown, start=1):
        key = result.take
        title = (
            f"#{rank} {key.surgery_type} procedure {key.procedure_id} take {key.take_id}, frame {result.frame}: "
            f"{result.count('missed')} missed, {result.count('spurious')} spurious, "
            f"{result.count('correct')} correct"
        )
        sections.append(
            f'<section class="frame" id="rank-{rank}" data-sample="{html.escape(result.sample_id)}" '
            f'data-wrongness="{result.wrongness}"><h2>{html.escape(title)}</h2>'
            f'<img src="{png_uri(picture(result))}" alt="{html.escape(result.sample_id)}">'
            + ("" if result.memory is None else f'<p class="memory">memory: {html.escape(result.memory)}</p>')
            + f"{_relations_table(result)}</section>"
        )
    note = f", {unannotated} predicted frame(s) without an annotation left out" if unannotated else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>egoexor: evaluation errors</title>'
        f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>"
        f"<h1>Evaluation errors</h1><p>{headline}. {len(results)} annotated frames scored{note}; "
        f"the {len(shown)} wrongest below (wrongness = missed + spurious relations).</p>"
        f'<h2>Per-predicate F1</h2><img src="{png_uri(f1_plot)}" alt="per-predicate F1">'
        + "".join(sections)
        + "</body></html>\n"
    )

"""A frame's scene graph drawn as a graph, each edge coloured by how a prediction got it.

Entities sit on a circle with their names outside it, so names never cover edges or each other (for a
take, at places fixed by the take's entities, so the graph can be followed over time);
an edge is an arc from subject to object labelled with its predicate at the arc's middle. Two
relations between the same two entities (the annotated one and a wrong prediction, say) bend by
different amounts, so their labels stay apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.patches import FancyArrowPatch

from egoexor.scene_graph import Triplet

Status = Literal["annotated", "correct", "missed", "spurious"]
#: Edge colour and line style per status; the styles differ too, for readers who cannot tell the colours apart.
STYLES: dict[Status, tuple[str, str]] = {
    "annotated": ("#333333", "-"),
    "correct": ("#2ca02c", "-"),
    "missed": ("#ff7f0e", "--"),
    "spurious": ("#d62728", ":"),
}
_RADIUS = 1.0
_BEND, _BEND_STEP = 0.12, 0.3


def compare(annotated: Sequence[Triplet], predicted: Sequence[Triplet] | None) -> list[tuple[Triplet, Status]]:
    """Every relation with its status: ``annotated`` without a prediction, else correct / missed / spurious."""
    truth = list(dict.fromkeys(annotated))
    if predicted is None:
        return [(triplet, "annotated") for triplet in truth]
    guessed = list(dict.fromkeys(predicted))
    return (
        [(t, "correct") for t in truth if t in guessed]
        + [(t, "missed") for t in truth if t not in guessed]
        + [(t, "spurious") for t in guessed if t not in truth]
    )


def _positions(entities: list[str]) -> dict[str, np.ndarray]:
    angles = np.pi / 2 - 2 * np.pi * np.arange(len(entities)) / max(len(entities), 1)
    return {name: _RADIUS * np.array([np.cos(a), np.sin(a)]) for name, a in zip(entities, angles, strict=True)}


def draw(
    axes: Axes, edges: list[tuple[Triplet, Status]], fontsize: float = 10, entities: Sequence[str] | None = None
) -> None:
    """Draw ``edges`` (from :func:`compare`) into ``axes``, with a legend of the statuses present.

    Nodes sit on the circle at the places of ``entities`` (fixed for a take, so an entity keeps its place
    from frame to frame; only those in ``edges`` are drawn), else at places shared out among the entities
    of ``edges``."""
    axes.set_aspect("equal")
    axes.set_xlim(-2.1, 2.1)
    axes.set_ylim(-1.85, 1.4)  # the band below the circle holds the legend
    axes.axis("off")
    if not edges:
        axes.text(0, 0, "no relations", ha="center", va="center", fontsize=fontsize, color="#777777")
        return
    present = list(dict.fromkeys(name for triplet, _ in edges for name in (triplet.subject, triplet.object)))
    where = _positions([*dict.fromkeys([*(entities or ()), *present])])
    for name in present:
        x, y = where[name]
        axes.plot([x], [y], "o", color="#1f4e79", markersize=7, zorder=3)
        axes.text(
            1.12 * x,
            1.12 * y,
            name.replace("_", " "),
            fontsize=fontsize,
            zorder=4,
            ha="left" if x > 0.05 else "right" if x < -0.05 else "center",
            va="bottom" if y > 0.05 else "top" if y < -0.05 else "center",
        )
    drawn_per_pair: dict[frozenset[str], int] = {}
    for triplet, status in edges:
        pair = frozenset((triplet.subject, triplet.object))
        bend = _BEND + _BEND_STEP * drawn_per_pair.get(pair, 0)
        drawn_per_pair[pair] = drawn_per_pair.get(pair, 0) + 1
        start, end = where[triplet.subject], where[triplet.object]
        colour, style = STYLES[status]
        axes.add_patch(
            FancyArrowPatch(
                start,
                end,
                connectionstyle=f"arc3,rad={bend}",
                arrowstyle="-|>",
                mutation_scale=14,
                color=colour,
                linestyle=style,
                linewidth=1.8,
                shrinkA=6,
                shrinkB=6,
                zorder=2,
            )
        )
        dx, dy = end - start  # arc3's curve passes through the chord's middle + bend/2 * (dy, -dx)
        middle = (start + end) / 2 + bend / 2 * np.array([dy, -dx])
        box = {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.85}
        axes.text(
            *middle,
            triplet.predicate,
            fontsize=fontsize - 1,
            color=colour,
            ha="center",
            va="center",
            zorder=5,
            bbox=box,
        )
    present = list(dict.fromkeys(status for _, status in edges))
    if present != ["annotated"]:
        handles = [axes.plot([], [], color=STYLES[s][0], linestyle=STYLES[s][1], label=s)[0] for s in present]
        axes.legend(handles=handles, loc="lower center", ncols=len(handles), fontsize=fontsize - 1, frameon=False)

"""One picture of one timepoint: what the model sees, in one image a person can read.

Every camera of the take (ego views first, then the room cameras and screens), each titled with its
source name; on ego views each ego input's marks (``view_marks`` of ``egoexor.modalities``: the wearer's
gaze point and, drawn above it, the 8 hand keypoints per hand), explained by a legend at the top right.
Below: each input's own panel (``panel``: the audio snippet's spectrogram, a top view of the point
cloud), and the scene graph (:mod:`egoexor.viz.graph`), its edges coloured against a prediction when one
is given, with what the parser could not read written under it. For a take, the graph's entity
positions can be fixed (``entities``), so an entity keeps its place from frame to frame.

Frames are stored in the channel order the recording tools wrote (the reference's visualiser swaps
every camera's channels before showing it, treating them as BGR); ``swap_channels`` does the same.
Gaze gets the reference's calibration offset on the takes it lists (``egoexor.modalities.gaze.GAZE_FIXATION_TAKES``),
as the model sees it.

:func:`render` returns the pixels and where each panel landed (:class:`Panel`), so tests and tools
can check a mark at the exact pixel it should be.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from egoexor import modalities, vocab
from egoexor.data.reader import Timepoint
from egoexor.scene_graph import Triplet
from egoexor.viz import graph

#: Colour of the note on what the parser could not read.
NOTE_COLOUR = "#9467bd"
_COLUMNS = 4
_WIDTH_INCHES = 16.0
_TITLE_INCHES = 0.45
_BOTTOM_INCHES = 6.0
FONT = 12


@dataclass(frozen=True)
class Panel:
    """Where one panel landed in the picture; camera panels also map image pixels to picture pixels."""

    name: str
    kind: str  # "ego", "exo", "point cloud", "audio" or "scene graph"
    box: tuple[int, int, int, int]  # left, top, right, bottom, in picture pixels (top-left origin)
    matrix: np.ndarray | None = None  # 3x3: (x, y, 1) in the camera image -> (column, row, 1) in the picture

    def to_picture(self, x: float, y: float) -> tuple[float, float]:
        """Picture pixel (column, row) of a camera image's pixel (x, y)."""
        if self.matrix is None:
            raise ValueError(f"panel {self.name!r} shows no camera image")
        column, row, _ = self.matrix @ np.array([x, y, 1.0])
        return float(column), float(row)


@dataclass
class Picture:
    image: np.ndarray  # uint8 [H, W, 3]
    panels: list[Panel]


def cameras(point: Timepoint) -> list[tuple[int, str]]:
    """(camera index, source name) of every real camera, ego views first (``blank`` slots are no camera)."""
    named = [(i, name) for i, name in enumerate(point.sources) if name != vocab.BLANK_SOURCE]
    return [c for c in named if c[1] in vocab.EGO_SOURCES] + [c for c in named if c[1] not in vocab.EGO_SOURCES]


class _Camera:
    """One camera panel: its image, and (ego views) each ego input's marks on top (``view_marks``)."""

    def __init__(self, axes: Axes, camera: int, source: str, shape: tuple[int, ...]) -> None:
        self.axes, self.camera, self.source = axes, camera, source
        height, width = shape[:2]
        self.image = axes.imshow(np.zeros(shape, np.uint8), interpolation="nearest")
        axes.axis("off")
        axes.set_xlim(-0.5, width - 0.5)
        axes.set_ylim(height - 0.5, -0.5)
        self.title = axes.set_title(source, fontsize=FONT, pad=4)
        ego = source in vocab.EGO_SOURCES
        marks = (m.view_marks(axes) for m in modalities.modalities() if ego and m.branch == "ego")
        self.marks = [mark for mark in marks if mark is not None]

    def update(self, point: Timepoint, swap_channels: bool) -> None:
        frame = point.rgb[self.camera]
        self.image.set_data(frame[..., ::-1] if swap_channels else frame)
        self.title.set_text(self.source + ("" if frame.any() else " (black frame)"))
        for mark in self.marks:
            mark.update(point, self.source)


def message(axes: Axes, text: str) -> None:
    """A grey note in the middle of an empty panel."""
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, fontsize=FONT, color="#777777")
    axes.axis("off")


def _graph_title(edges: list[tuple[Triplet, graph.Status]], annotated: bool, predicted: bool) -> str:
    if not annotated:
        return "scene graph: frame not annotated" + (" (prediction only)" if predicted else "")
    if not predicted:
        return f"scene graph: {len(edges)} relations"
    counts = {status: sum(s == status for _, s in edges) for status in ("correct", "missed", "spurious")}
    return "scene graph: " + ", ".join(f"{n} {status}" for status, n in counts.items())


def _box(axes: Axes, height: int) -> tuple[int, int, int, int]:
    extent = axes.get_window_extent()
    return round(extent.x0), round(height - extent.y1), round(extent.x1), round(height - extent.y0)


class TimepointFigure:
    """The figure for the timepoints of one take, built once and redrawn per frame (a video's frames reuse it).

    The layout depends on the take only (its cameras, frame size, which modalities it has), so every
    picture of one take has the same size and panel positions. ``entities`` (say, every entity the take's
    annotations name) fixes the scene graph's node positions for all its frames; without it each frame
    places its own entities.
    """

    def __init__(
        self,
        point: Timepoint,
        *,
        dpi: int = 100,
        swap_channels: bool = True,
        entities: Sequence[str] | None = None,
    ) -> None:
        self.swap_channels = swap_channels
        self.entities = entities
        views = cameras(point) if point.rgb is not None else []
        rows = max(1, math.ceil(len(views) / _COLUMNS))
        aspect = point.rgb.shape[1] / point.rgb.shape[2] if point.rgb is not None else 0.75
        heights = [_WIDTH_INCHES / _COLUMNS * aspect + _TITLE_INCHES] * rows + [_BOTTOM_INCHES]
        # Even pixel sizes: H.264 (4:2:0) needs them.
        width_px, self.height_px = 2 * round(_WIDTH_INCHES * dpi / 2), 2 * round((sum(heights) + 0.8) * dpi / 2)
        inches = self.height_px / dpi
        self.figure = Figure(figsize=(width_px / dpi, inches), dpi=dpi)
        self.canvas = FigureCanvasAgg(self.figure)
        grid = self.figure.add_gridspec(
            rows + 1,
            _COLUMNS,
            height_ratios=heights,
            left=0.045,
            right=0.985,
            top=1 - 0.5 / inches,
            bottom=0.55 / inches,
            hspace=0.25,
            wspace=0.12,
        )
        self.title = self.figure.suptitle("", fontsize=FONT + 3, y=1 - 0.12 / inches, va="top")
        shape = point.rgb.shape[1:] if point.rgb is not None else (1, 1, 3)
        self.cameras = [
            _Camera(self.figure.add_subplot(grid[slot // _COLUMNS, slot % _COLUMNS]), camera, source, shape)
            for slot, (camera, source) in enumerate(views)
        ]
        if not views:
            message(self.figure.add_subplot(grid[0, :]), "no camera frames in this take")
        if any(source in vocab.EGO_SOURCES for _, source in views):
            self._legend(inches)
        # each input with a panel of its own, in registry order, then the scene graph over the rest of the row
        with_panel = [m for m in modalities.modalities() if m.has_panel]
        self.panels = {
            m.name.replace("_", " "): m.panel(
                self.figure.add_subplot(grid[rows, column]),
                any(d.field in point.arrays for d in m.datasets if d.field is not None),
            )
            for column, m in enumerate(with_panel)
        }
        self.scene = self.figure.add_subplot(grid[rows, len(with_panel) :])

    def _legend(self, inches: float) -> None:
        """What the marks on the ego views are, in the title band at the right."""
        marks = next((camera.marks for camera in self.cameras if camera.marks), [])
        handles = [handle for mark in marks for handle in mark.legend()]
        self.figure.legend(
            handles=handles,
            loc="upper right",
            bbox_to_anchor=(0.985, 1 - 0.04 / inches),
            ncols=3,
            frameon=False,
            fontsize=FONT,
        )

    def draw(self, point: Timepoint, predicted: Sequence[Triplet] | None = None, note: str | None = None) -> Picture:
        """The picture of ``point`` (a timepoint of the take this figure was built for); ``note``: what the
        parser could not read of the prediction, written under the scene graph."""
        key = point.take
        self.title.set_text(f"{key.surgery_type} procedure {key.procedure_id}, take {key.take_id}, frame {point.frame}")
        for camera in self.cameras:
            camera.update(point, self.swap_channels)
        for panel in self.panels.values():
            panel.update(point)
        self.scene.clear()
        edges = graph.compare(point.annotations or [], predicted)
        self.scene.set_title(_graph_title(edges, point.annotations is not None, predicted is not None), fontsize=FONT)
        graph.draw(self.scene, edges, fontsize=FONT, entities=self.entities)
        if note:
            self.scene.text(
                0.5,
                -0.02,
                note,
                transform=self.scene.transAxes,
                ha="center",
                va="top",
                fontsize=FONT - 1,
                color=NOTE_COLOUR,
                wrap=True,
            )
        self.canvas.draw()
        image = np.asarray(self.canvas.buffer_rgba())[..., :3].copy()
        flip = np.array([[1.0, 0, 0], [0, -1.0, self.height_px], [0, 0, 1.0]])  # display (y up) -> rows (down)
        panels = [
            Panel(
                c.source,
                "ego" if c.source in vocab.EGO_SOURCES else "exo",
                _box(c.axes, self.height_px),
                flip @ c.axes.transData.get_matrix(),
            )
            for c in self.cameras
        ]
        others = [*((name, panel.axes) for name, panel in self.panels.items()), ("scene graph", self.scene)]
        panels += [Panel(name, name, _box(axes, self.height_px)) for name, axes in others]
        return Picture(image, panels)


def render(
    point: Timepoint,
    predicted: Sequence[Triplet] | None = None,
    *,
    note: str | None = None,
    dpi: int = 100,
    swap_channels: bool = True,
) -> Picture:
    """Draw ``point`` (with its ``predicted`` scene graph and the ``note`` on what did not parse, if any)."""
    return TimepointFigure(point, dpi=dpi, swap_channels=swap_channels).draw(point, predicted, note)

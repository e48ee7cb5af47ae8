"""One picture of one timepoint: what the model sees, in one image a person can read.

Every camera of the take (ego views first, then the room cameras and screens), each titled with its
source name; on ego views the wearer's gaze point and, drawn above it, the 8 hand keypoints per hand
(wrist and palm of each hand, and the tips of their normals, joined to them), explained by a legend at
the top right. Below: a top view of the point cloud in its own colours, the audio snippet as a
spectrogram with the frame's own 1/15 s marked (a snippet starts at its frame and holds the sound of the
next second), and the scene graph (:mod:`egoexor.viz.graph`), its edges coloured against a prediction
when one is given, with what the parser could not read written under it. For a take, the graph's entity
positions can be fixed (``entities``), so an entity keeps its place from frame to frame.

Frames are stored in the channel order the recording tools wrote (the reference's visualiser swaps
every camera's channels before showing it, treating them as BGR); ``swap_channels`` does the same.
Gaze gets the reference's calibration offset on the takes it lists (``transforms.GAZE_FIXATION_TAKES``),
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
from matplotlib.lines import Line2D

from egoexor import vocab
from egoexor.data import layout
from egoexor.data.reader import Timepoint
from egoexor.data.transforms import GAZE_FIXATION_OFFSET, GAZE_FIXATION_TAKES
from egoexor.scene_graph import Triplet
from egoexor.viz import graph

#: Gaze marker colour: pure magenta appears nowhere else in the picture.
GAZE_COLOUR = "#ff00ff"
#: Left and right hand keypoint colours.
HAND_COLOURS = ("#00b0ff", "#39ff14")
#: Outline of the frame's own span on the audio spectrogram: pure cyan is not in its colour map.
FRAME_MARK_COLOUR = "#00ffff"
#: Colour of the note on what the parser could not read.
NOTE_COLOUR = "#9467bd"
_COLUMNS = 4
_WIDTH_INCHES = 16.0
_TITLE_INCHES = 0.45
_BOTTOM_INCHES = 6.0
_FONT = 12


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


def _row_of(rows: np.ndarray | None, source: str) -> np.ndarray | None:
    if rows is None or source not in vocab.SOURCES:
        return None
    matches = rows[rows[:, 0] == vocab.SOURCES[source]]
    return matches[0] if len(matches) else None


def gaze_point(point: Timepoint, source: str) -> np.ndarray | None:
    """The wearer's gaze (x, y) in image pixels, offset as the model sees it; ``None`` if invalid or absent."""
    row = _row_of(point.arrays.get("gaze"), source)
    if row is None or not np.isfinite(row[1:3]).all() or (row[1:3] == -1).all():
        return None
    xy = row[1:3].astype(np.float64)
    return xy + GAZE_FIXATION_OFFSET if point.take in GAZE_FIXATION_TAKES.get(source, ()) else xy


class _Camera:
    """One camera panel: its image, and (ego views) the wearer's hand keypoints and gaze point on top."""

    def __init__(self, axes: Axes, camera: int, source: str, shape: tuple[int, ...]) -> None:
        self.axes, self.camera, self.source = axes, camera, source
        height, width = shape[:2]
        self.image = axes.imshow(np.zeros(shape, np.uint8), interpolation="nearest")
        axes.axis("off")
        axes.set_xlim(-0.5, width - 0.5)
        axes.set_ylim(height - 0.5, -0.5)
        self.title = axes.set_title(source, fontsize=_FONT, pad=4)
        # the hands' few pixels are drawn above the large gaze marker, which would otherwise hide them
        self.gaze = axes.plot(
            [], [], "o", color=GAZE_COLOUR, markersize=13, markeredgecolor="white", markeredgewidth=1.5, zorder=3
        )[0]
        self.hands = [
            (
                axes.plot([], [], color=colour, linewidth=2, zorder=4)[0],
                axes.plot(
                    [], [], "o", color=colour, markersize=6, markeredgecolor="black", markeredgewidth=0.5, zorder=5
                )[0],
            )
            for colour in HAND_COLOURS
        ]

    def update(self, point: Timepoint, swap_channels: bool) -> None:
        frame = point.rgb[self.camera]
        self.image.set_data(frame[..., ::-1] if swap_channels else frame)
        self.title.set_text(self.source + ("" if frame.any() else " (black frame)"))
        ego = self.source in vocab.EGO_SOURCES
        row = _row_of(point.arrays.get("hands"), self.source) if ego else None
        for hand, (segments, bases) in enumerate(self.hands):
            if row is None:
                segments.set_data([], [])
                bases.set_data([], [])
                continue
            points = row[1:17].reshape(8, 2)  # LW, LP, RW, RP, then the tips of their normals
            base, tip = points[2 * hand : 2 * hand + 2], points[4 + 2 * hand : 6 + 2 * hand]
            gap = np.full(2, np.nan)  # breaks the line between the two segments
            segments.set_data(
                np.column_stack([base[:, 0], tip[:, 0], gap]).ravel(),
                np.column_stack([base[:, 1], tip[:, 1], gap]).ravel(),
            )
            bases.set_data(base[:, 0], base[:, 1])
        gaze = gaze_point(point, self.source) if ego else None
        self.gaze.set_data(*([gaze[0]], [gaze[1]]) if gaze is not None else ([], []))


def _message(axes: Axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, fontsize=_FONT, color="#777777")
    axes.axis("off")


def _limits(values: np.ndarray, margin: float = 0.05) -> tuple[float, float]:
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    pad = margin * (high - low) or 0.5
    return low - pad, high + pad


class _PointCloud:
    def __init__(self, axes: Axes, present: bool) -> None:
        self.axes = axes
        axes.set_title("point cloud, top view", fontsize=_FONT)
        self.points = axes.scatter([], [], s=4, linewidths=0) if present else None
        if present:
            axes.set_aspect("equal", adjustable="box")
            axes.set_xlabel("x (m)")
            axes.set_ylabel("y (m)")
            axes.set_facecolor("#f0f0f0")
        else:
            _message(axes, "no point cloud")

    def update(self, point: Timepoint) -> None:
        if self.points is None or point.arrays.get("point_coordinates") is None:
            return
        xyz, rgb = point.arrays.get("point_coordinates"), point.arrays.get("point_colors")
        keep = np.isfinite(xyz).all(axis=1)
        self.points.set_offsets(xyz[keep, :2])
        self.points.set_facecolor(np.clip(np.nan_to_num(rgb[keep]), 0, 1) if rgb is not None else "#555555")
        self.axes.set_xlim(*_limits(xyz[keep, 0]))
        self.axes.set_ylim(*_limits(xyz[keep, 1]))


def spectrogram(audio: np.ndarray) -> np.ndarray:
    """Power (dB) of the channels' mean over [frequency, time]: Hann windows of about sqrt(2 x samples)
    samples (a power of two), half overlapping, so time and frequency get similar resolution."""
    signal = np.nan_to_num(np.asarray(audio, dtype=np.float64)).mean(axis=1)
    window = int(2 ** np.clip(round(math.log2(math.sqrt(2 * max(len(signal), 1)))), 4, 12))
    signal = np.pad(signal, (0, max(window - len(signal), 0)))
    frames = np.lib.stride_tricks.sliding_window_view(signal, window)[:: window // 2] * np.hanning(window)
    return 10 * np.log10(np.abs(np.fft.rfft(frames, axis=1)).T ** 2 + 1e-12)


class _Audio:
    """The snippet's spectrogram, the frame's own 1/15 s outlined (a snippet starts at its frame)."""

    def __init__(self, axes: Axes, present: bool) -> None:
        self.axes = axes
        self.image = None
        if not present:
            axes.set_title("audio", fontsize=_FONT)
            _message(axes, "no audio")
            return
        axes.set_title("audio snippet: spectrogram, outlined: this frame", fontsize=_FONT)
        self.image = axes.imshow(np.zeros((2, 2)), origin="lower", aspect="auto", cmap="magma")
        axes.axvspan(0, 1 / layout.FPS, facecolor="none", edgecolor=FRAME_MARK_COLOUR, linewidth=2.5, zorder=3)
        axes.set_xlabel("time from the frame (s)")
        axes.set_ylabel("kHz")

    def update(self, point: Timepoint) -> None:
        if self.image is None or point.arrays.get("audio") is None:
            return
        power = spectrogram(point.arrays.get("audio"))
        seconds = len(point.arrays.get("audio")) / layout.AUDIO_SAMPLE_RATE
        self.image.set_data(power)
        self.image.set_extent((0, seconds, 0, layout.AUDIO_SAMPLE_RATE / 2000))
        self.image.set_clim(power.max() - 80, power.max())
        self.axes.set_xlim(0, seconds)


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
        self.title = self.figure.suptitle("", fontsize=_FONT + 3, y=1 - 0.12 / inches, va="top")
        shape = point.rgb.shape[1:] if point.rgb is not None else (1, 1, 3)
        self.cameras = [
            _Camera(self.figure.add_subplot(grid[slot // _COLUMNS, slot % _COLUMNS]), camera, source, shape)
            for slot, (camera, source) in enumerate(views)
        ]
        if not views:
            _message(self.figure.add_subplot(grid[0, :]), "no camera frames in this take")
        if any(source in vocab.EGO_SOURCES for _, source in views):
            self._legend(inches)
        self.cloud = _PointCloud(
            self.figure.add_subplot(grid[rows, 0]), point.arrays.get("point_coordinates") is not None
        )
        self.audio = _Audio(self.figure.add_subplot(grid[rows, 1]), point.arrays.get("audio") is not None)
        self.scene = self.figure.add_subplot(grid[rows, 2:])

    def _legend(self, inches: float) -> None:
        """What the marks on the ego views are, in the title band at the right."""
        handles = [
            Line2D([], [], marker="o", linestyle="", color=GAZE_COLOUR, markersize=11, label="gaze"),
            *(
                Line2D([], [], marker="o", color=colour, linewidth=2, markersize=6, label=f"{side} hand")
                for colour, side in zip(HAND_COLOURS, ("left", "right"), strict=True)
            ),
        ]
        self.figure.legend(
            handles=handles,
            loc="upper right",
            bbox_to_anchor=(0.985, 1 - 0.04 / inches),
            ncols=3,
            frameon=False,
            fontsize=_FONT,
        )

    def draw(self, point: Timepoint, predicted: Sequence[Triplet] | None = None, note: str | None = None) -> Picture:
        """The picture of ``point`` (a timepoint of the take this figure was built for); ``note``: what the
        parser could not read of the prediction, written under the scene graph."""
        key = point.take
        self.title.set_text(f"{key.surgery_type} procedure {key.procedure_id}, take {key.take_id}, frame {point.frame}")
        for camera in self.cameras:
            camera.update(point, self.swap_channels)
        self.cloud.update(point)
        self.audio.update(point)
        self.scene.clear()
        edges = graph.compare(point.annotations or [], predicted)
        self.scene.set_title(_graph_title(edges, point.annotations is not None, predicted is not None), fontsize=_FONT)
        graph.draw(self.scene, edges, fontsize=_FONT, entities=self.entities)
        if note:
            self.scene.text(
                0.5,
                -0.02,
                note,
                transform=self.scene.transAxes,
                ha="center",
                va="top",
                fontsize=_FONT - 1,
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
        others = (("point cloud", self.cloud.axes), ("audio", self.audio.axes), ("scene graph", self.scene))
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

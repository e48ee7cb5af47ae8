"""Eye gaze: one token per ego view from the device's gaze point (x, y) and its depth.

Datasets ``eye_gaze/coordinates`` [F, G, 3] (source id, x px, y px; invalid = (-1, -1)) and
``eye_gaze_depth/values`` [F, G] (metres). A view takes the gaze row with its device's id; the depth row
is the gaze row's (``row_matching: source_id``) or, as the reference did, the view's position
(``row_matching: reference``, ``egoexor.data.views``). Scaling: :func:`gaze_rows` (the fixation
offset, NaN -> 0, / ``gaze_scale``) and :func:`gaze_depth` (/ ``depth_scale``). Modality dropout
removes gaze and depth together; a sample needs both for the token. Encoder ``gaze_encoder``: an MLP
3 -> ``encoder_hidden`` -> D, the reference's ``GazeEncoder``.
"""

from __future__ import annotations

import numpy as np

from egoexor import vocab
from egoexor.data import layout, transforms, views
from egoexor.data.layout import TakeKey
from egoexor.modalities import register_modality
from egoexor.modalities.base import PerViewInput, TakeDataset, row_by_source

#: Gaze recordings with a calibration offset, and the offset in pixels (reference
#: ``GAZE_FIXATION_TO_TAKE``): a row whose source id names a device listed for its take is moved.
GAZE_FIXATION_OFFSET = np.array([-9.0, -4.0], np.float32)
GAZE_FIXATION_TAKES: dict[str, frozenset[TakeKey]] = {
    "assistant": frozenset([TakeKey("Ultrasound", 1, 1)] + [TakeKey("Ultrasound", 2, t) for t in range(1, 7)]),
    "head_surgeon": frozenset(
        [TakeKey("Ultrasound", 3, t) for t in range(1, 5)] + [TakeKey("Ultrasound", 4, t) for t in range(1, 7)]
    ),
    "anesthetist": frozenset(
        [TakeKey("MISS", 1, t) for t in range(1, 4)]
        + [TakeKey("MISS", 2, t) for t in range(1, 5)]
        + [TakeKey("MISS", 3, t) for t in range(1, 4)]
    ),
    "circulator": frozenset(
        [TakeKey("MISS", 1, 4)] + [TakeKey("MISS", 3, t) for t in range(4, 7)] + [TakeKey("MISS", 4, t) for t in (1, 2)]
    ),
}


def gaze_rows(rows: np.ndarray, take: TakeKey, scale: float, fixation: bool = True) -> np.ndarray:
    """[G, 3] (source id, x px, y px) -> [G, 2] in [0, 1]: fixation offset, NaN/inf rule, /scale, clamp.

    Invalid gaze (-1, -1) ends at (0, 0), as in the reference (the offset applies to it too).
    """
    xy = rows[:, 1:3].astype(np.float32).copy()
    if fixation:
        for i, source_id in enumerate(rows[:, 0]):
            name = vocab.SOURCE_NAMES.get(int(source_id)) if np.isfinite(source_id) else None
            if take in GAZE_FIXATION_TAKES.get(name, ()):
                xy[i] += GAZE_FIXATION_OFFSET
    return np.clip(transforms.clean(xy) / scale, 0.0, 1.0)


def gaze_depth(values: np.ndarray, scale: float) -> np.ndarray:
    """[G] metres -> [G] in [0, 1]: NaN/inf rule, /scale (reference 1 m), clamp."""
    return np.clip(transforms.clean(values) / scale, 0.0, 1.0)


class Gaze(PerViewInput):
    name, feature, parameter, builtin = "gaze", "gaze", "gaze_encoder", True
    groups = ("eye_gaze", "eye_gaze_depth")
    datasets = (
        TakeDataset(layout.GAZE, "gaze", 3, 3, "[F, G, 3]", finite_or_nan=True),
        TakeDataset(layout.GAZE_DEPTH, "gaze_depth", 2, None, "[F, G]"),
    )
    dropout_rank = 0
    width, key, mask_key = 3, "gaze", "gaze_mask"

    def rows(self, point, ego, config):
        """(x, y, depth) of each view; None where its gaze or depth row is missing."""
        raw, depth = point.arrays.get("gaze"), point.arrays.get("gaze_depth")
        if raw is None or depth is None:
            return [None] * len(ego)
        gaze = gaze_rows(raw, point.take, config.gaze_scale, config.gaze_fixation)
        depth = gaze_depth(depth, config.depth_scale)
        out: list[np.ndarray | None] = []
        for view in ego:
            gaze_row = row_by_source(raw, view.source_id)
            if config.row_matching == "reference":
                depth_row = views.row_at_position(view, len(depth))
            else:
                depth_row = gaze_row if gaze_row is not None and gaze_row < len(depth) else None
            both = gaze_row is not None and depth_row is not None
            out.append(np.append(gaze[gaze_row], depth[depth_row]) if both else None)
        return out

    def view_marks(self, axes):
        return GazeMark(axes)


#: Gaze marker colour in ``viz frame``: pure magenta appears nowhere else in the picture.
GAZE_COLOUR = "#ff00ff"


def gaze_point(point, source: str) -> np.ndarray | None:
    """The wearer's gaze (x, y) in image pixels, offset as the model sees it; ``None`` if invalid or absent."""
    rows = point.arrays.get("gaze")
    row = row_by_source(rows, vocab.SOURCES.get(source))
    if row is None or not np.isfinite(rows[row, 1:3]).all() or (rows[row, 1:3] == -1).all():
        return None
    xy = rows[row, 1:3].astype(np.float64)
    return xy + GAZE_FIXATION_OFFSET if point.take in GAZE_FIXATION_TAKES.get(source, ()) else xy


class GazeMark:
    """The gaze point on an ego view of ``viz frame``; the hands' few pixels are drawn above this large marker."""

    def __init__(self, axes) -> None:
        style = {"color": GAZE_COLOUR, "markersize": 13, "markeredgecolor": "white", "markeredgewidth": 1.5}
        self.marker = axes.plot([], [], "o", zorder=3, **style)[0]

    def update(self, point, source: str) -> None:
        gaze = gaze_point(point, source)
        self.marker.set_data(*([gaze[0]], [gaze[1]]) if gaze is not None else ([], []))

    def legend(self) -> list:
        from matplotlib.lines import Line2D

        return [Line2D([], [], marker="o", linestyle="", color=GAZE_COLOUR, markersize=11, label="gaze")]


register_modality(Gaze())

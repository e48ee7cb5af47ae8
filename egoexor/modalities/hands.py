"""Hand tracking: one token per ego view from the device's 8 hand points.

Dataset ``hand_tracking/positions`` [F, G, 17] (source id + 8 (x, y) points; missing = NaN). A view takes
the row with its device's id (``row_matching: source_id``) or, as the reference did, the row at the view's
position (``row_matching: reference``). Scaling: :func:`hand_rows` (NaN -> 0, / ``hand_scale``); a
row with no tracked point counts as absent. Encoder ``hand_encoder``: an MLP 16 -> ``encoder_hidden`` -> D,
the reference's ``HandEncoder``; its feature name is ``hand`` (the reference's).
"""

from __future__ import annotations

import numpy as np

from egoexor import vocab
from egoexor.data import layout, transforms, views
from egoexor.modalities import register_modality
from egoexor.modalities.base import PerViewInput, TakeDataset, row_by_source


def hand_rows(rows: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """[G, 17] (source id + 8 points) -> ([G, 16] in [0, 1], [G] tracked).

    Untracked points (NaN) become 0; ``tracked`` is False for a row with no tracked point at all
    (the reference's own mask, "any point NaN", was computed and never used).
    """
    points = rows[:, 1:17].astype(np.float32)
    tracked = ~np.isnan(points).all(axis=1)
    return np.clip(transforms.clean(points) / scale, 0.0, 1.0), tracked


class Hands(PerViewInput):
    name, feature, parameter, builtin = "hands", "hand", "hand_encoder", True
    groups = ("hand_tracking",)
    datasets = (TakeDataset(layout.HANDS, "hands", 3, 17, "[F, G, 17]", finite_or_nan=True),)
    dropout_rank = 1
    width, key, mask_key = 16, "hands", "hand_mask"

    def rows(self, point, ego, config):
        """The 8 hand points of each view; None where the row is missing or tracks no point."""
        raw = point.arrays.get("hands")
        if raw is None:
            return [None] * len(ego)
        hands, tracked = hand_rows(raw, config.hand_scale)
        out = []
        for view in ego:
            if config.row_matching == "reference":
                row = views.row_at_position(view, len(raw))
            else:
                row = row_by_source(raw, view.source_id)
            out.append(hands[row] if row is not None and tracked[row] else None)
        return out

    def view_marks(self, axes):
        return HandMarks(axes)


#: Left and right hand keypoint colours in ``viz frame``.
HAND_COLOURS = ("#00b0ff", "#39ff14")


class HandMarks:
    """The 8 hand keypoints of an ego view's device in ``viz frame``: wrist and palm of each hand and the tips of
    their normals, joined to them."""

    def __init__(self, axes) -> None:
        self.hands = [
            (
                axes.plot([], [], color=colour, linewidth=2, zorder=4)[0],
                axes.plot(
                    [], [], "o", color=colour, markersize=6, markeredgecolor="black", markeredgewidth=0.5, zorder=5
                )[0],
            )
            for colour in HAND_COLOURS
        ]

    def update(self, point, source: str) -> None:
        rows = point.arrays.get("hands")
        row = row_by_source(rows, vocab.SOURCES.get(source))
        for hand, (segments, bases) in enumerate(self.hands):
            if row is None:
                segments.set_data([], [])
                bases.set_data([], [])
                continue
            points = rows[row, 1:17].reshape(8, 2)  # LW, LP, RW, RP, then the tips of their normals
            base, tip = points[2 * hand : 2 * hand + 2], points[4 + 2 * hand : 6 + 2 * hand]
            gap = np.full(2, np.nan)  # breaks the line between the two segments
            segments.set_data(
                np.column_stack([base[:, 0], tip[:, 0], gap]).ravel(),
                np.column_stack([base[:, 1], tip[:, 1], gap]).ravel(),
            )
            bases.set_data(base[:, 0], base[:, 1])

    def legend(self) -> list:
        from matplotlib.lines import Line2D

        return [
            Line2D([], [], marker="o", color=colour, linewidth=2, markersize=6, label=f"{side} hand")
            for colour, side in zip(HAND_COLOURS, ("left", "right"), strict=True)
        ]


register_modality(Hands())

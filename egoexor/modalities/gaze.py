"""Eye gaze: one token per ego view from the device's gaze point (x, y) and its depth.

Datasets ``eye_gaze/coordinates`` [F, G, 3] (source id, x px, y px; invalid = (-1, -1)) and
``eye_gaze_depth/values`` [F, G] (metres). A view takes the gaze row with its device's id; the depth row
is the gaze row's (``row_matching: source_id``) or, as the reference did, the view's position
(``row_matching: reference``, ``egoexor.data.views``). Scaling: ``transforms.gaze_rows`` (the fixation
offset, NaN -> 0, / ``gaze_scale``) and ``transforms.gaze_depth`` (/ ``depth_scale``). Modality dropout
removes gaze and depth together; a sample needs both for the token. Encoder ``gaze_encoder``: an MLP
3 -> ``encoder_hidden`` -> D, the reference's ``GazeEncoder``.
"""

from __future__ import annotations

import numpy as np

from egoexor.data import layout, transforms, views
from egoexor.modalities import register_modality
from egoexor.modalities.base import PerViewInput, TakeDataset, row_by_source


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
        gaze = transforms.gaze_rows(raw, point.take, config.gaze_scale, config.gaze_fixation)
        depth = transforms.gaze_depth(depth, config.depth_scale)
        out: list[np.ndarray | None] = []
        for view in ego:
            gaze_row = row_by_source(raw, view)
            if config.row_matching == "reference":
                depth_row = views.row_at_position(view, len(depth))
            else:
                depth_row = gaze_row if gaze_row is not None and gaze_row < len(depth) else None
            both = gaze_row is not None and depth_row is not None
            out.append(np.append(gaze[gaze_row], depth[depth_row]) if both else None)
        return out


register_modality(Gaze())

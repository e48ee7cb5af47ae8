"""Hand tracking: one token per ego view from the device's 8 hand points.

Dataset ``hand_tracking/positions`` [F, G, 17] (source id + 8 (x, y) points; missing = NaN). A view takes
the row with its device's id (``row_matching: source_id``) or, as the reference did, the row at the view's
position (``row_matching: reference``). Scaling: ``transforms.hand_rows`` (NaN -> 0, / ``hand_scale``); a
row with no tracked point counts as absent. Encoder ``hand_encoder``: an MLP 16 -> ``encoder_hidden`` -> D,
the reference's ``HandEncoder``; its feature name is ``hand`` (the reference's).
"""

from __future__ import annotations

from egoexor.data import layout, transforms, views
from egoexor.modalities import register_modality
from egoexor.modalities.base import PerViewInput, TakeDataset, row_by_source


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
        hands, tracked = transforms.hand_rows(raw, config.hand_scale)
        out = []
        for view in ego:
            if config.row_matching == "reference":
                row = views.row_at_position(view, len(raw))
            else:
                row = row_by_source(raw, view)
            out.append(hands[row] if row is not None and tracked[row] else None)
        return out


register_modality(Hands())

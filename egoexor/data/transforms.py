"""Camera frames as CLIP reads them (numpy only), and the reference's NaN rule every input shares.

Each extra input's own numbers (gaze, hands, audio, point cloud) are in its module under
``egoexor.modalities``. Each function states the reference behaviour it reproduces; where the reference has a
known bug, the switch that keeps it is named in ``egoexor.config.DataConfig``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: CLIP ViT-L/14-336 preprocessing constants (``CLIPImageProcessor``).
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
#: The padding colour, ``int(mean * 255)`` as the reference's ``expand2square`` computes it.
PAD_COLOUR = tuple(int(m * 255) for m in CLIP_MEAN)

#: Exo-branch sources whose frames the reference's training code reverses (BGR<->RGB); it reversed
#: every ego-branch view too (``train.py:1217``, ``1249-1250``). Its inference code reversed every view.
FLIPPED_EXO_SOURCES: frozenset[str] = frozenset(("ultrasound", "simstation"))


def is_flipped(source: str, ego: bool, flip_rule: str) -> bool:
    """Whether a view's channels are reversed: ``train`` (the reference's training rule) or ``all``.

    The training rule goes by branch (``ego``) and not by name, as the reference's: the two differ
    only when ``camera_selection: reference`` puts a camera of one kind into the other branch.
    """
    return flip_rule == "all" or ego or source in FLIPPED_EXO_SOURCES


def image(
    frame: np.ndarray, size: int, flip: bool, rescale_dark: bool = False, out: np.ndarray | None = None
) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, size, size]: the reference's ``FrameTransform``.

    ``rescale_dark``: first multiply a frame whose brightest value is 1 by 255, as the reference did
    to every frame it read (``train.py:1213-1214``, ``1245-1246``; inference
    ``scene_graph_prediction_model.py:121``), meant for frames in [0, 1] but applied to uint8 ones.
    Then channel reversal (if ``flip``), centred pad to a square with the CLIP mean colour, bicubic
    resize (PIL, as ``CLIPImageProcessor``; skipped when the size already matches), /255, CLIP
    mean/std. The resized image is still uint8, so the last two steps are one table lookup,
    written into ``out`` when given (the batch's own memory: no further copy).
    """
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] frame, got {frame.dtype} {frame.shape}")
    if rescale_dark and frame.max() <= 1:
        frame = frame * np.uint8(255)
    if flip:
        frame = frame[..., ::-1]
    height, width = frame.shape[:2]
    if height != width:
        side = max(height, width)
        square = np.empty((side, side, 3), np.uint8)
        square[...] = PAD_COLOUR
        top, left = (side - height) // 2, (side - width) // 2
        square[top : top + height, left : left + width] = frame
        frame = square
    if frame.shape[0] != size:
        frame = np.asarray(Image.fromarray(np.ascontiguousarray(frame)).resize((size, size), Image.Resampling.BICUBIC))
    out = np.empty((3, size, size), np.float32) if out is None else out
    for channel in range(3):
        np.take(_NORMALISED[channel], frame[..., channel], out=out[channel])
    return out


#: (uint8 value / 255 - mean) / std for each channel and value.
_NORMALISED = ((np.arange(256, dtype=np.float32)[None, :] / 255.0 - CLIP_MEAN[:, None]) / CLIP_STD[:, None]).astype(
    np.float32
)


def clean(values: np.ndarray) -> np.ndarray:
    """The reference's NaN/inf rule: NaN -> 0, +inf -> 1, -inf -> 0."""
    return np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)

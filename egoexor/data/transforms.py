"""Per-modality value transforms: from the file's units to what the encoders read (numpy only).

Each function states the reference behaviour it reproduces; where the reference has a known bug,
the switch that keeps it is named in ``egoexor.config.DataConfig``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from egoexor import vocab
from egoexor.config import DataConfig
from egoexor.data.layout import TakeKey

#: CLIP ViT-L/14-336 preprocessing constants (``CLIPImageProcessor``).
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
#: The padding colour, ``int(mean * 255)`` as the reference's ``expand2square`` computes it.
PAD_COLOUR = tuple(int(m * 255) for m in CLIP_MEAN)

#: Exo-branch sources whose frames the reference's training code reverses (BGR<->RGB); it reversed
#: every ego-branch view too (``train.py:1217``, ``1249-1250``). Its inference code reversed every view.
FLIPPED_EXO_SOURCES: frozenset[str] = frozenset(("ultrasound", "simstation"))

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


def _clean(values: np.ndarray) -> np.ndarray:
    """The reference's NaN/inf rule: NaN -> 0, +inf -> 1, -inf -> 0."""
    return np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)


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
    return np.clip(_clean(xy) / scale, 0.0, 1.0)


def gaze_depth(values: np.ndarray, scale: float) -> np.ndarray:
    """[G] metres -> [G] in [0, 1]: NaN/inf rule, /scale (reference 1 m), clamp."""
    return np.clip(_clean(values) / scale, 0.0, 1.0)


def hand_rows(rows: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """[G, 17] (source id + 8 points) -> ([G, 16] in [0, 1], [G] tracked).

    Untracked points (NaN) become 0; ``tracked`` is False for a row with no tracked point at all
    (the reference's own mask, "any point NaN", was computed and never used).
    """
    points = rows[:, 1:17].astype(np.float32)
    tracked = ~np.isnan(points).all(axis=1)
    return np.clip(_clean(points) / scale, 0.0, 1.0), tracked


def audio_snippet(snippet: np.ndarray, norm: str) -> np.ndarray:
    """[S, 2] stereo -> [S] mono float32, normalised as CLAP is fed.

    ``reference``: bit for bit the reference's ``AudioTransform`` and ``AudioProcessor`` on a 2-D
    snippet (``train.py:884-911``, ``1401-1404``; inference alike): each time sample divided in
    float32 by its own max(|L|, |R|) + 1e-6 (dim 1 of a [S, 2] tensor is the channel axis: this
    erases amplitude, but the released model was trained on it), rounded to bfloat16, averaged to
    mono in bfloat16 (float32 sum, halved, rounded), then float32 again. ``per_snippet``: divided by
    the snippet's peak, then mono in float32.
    """
    audio = np.asarray(snippet, np.float32)
    if audio.ndim != 2 or audio.shape[1] != 2:
        raise ValueError(f"expected a [samples, 2] stereo snippet, got {audio.shape}")
    if norm == "reference":
        peak = np.abs(audio).max(axis=1, keepdims=True)
        audio = _round_to_bfloat16(audio / (peak + np.float32(1e-6)))
        return _round_to_bfloat16((audio[:, 0] + audio[:, 1]) * np.float32(0.5))
    if norm != "per_snippet":
        raise ValueError(f"unknown audio_norm {norm!r}; choose one of {', '.join(DataConfig.choices('audio_norm'))}")
    peak = float(np.abs(audio).max())
    audio = audio / peak if peak > 0 else audio
    return audio.mean(axis=1, dtype=np.float32)


def _round_to_bfloat16(values: np.ndarray) -> np.ndarray:
    """Round float32 to the nearest bfloat16 (ties to even), returned as float32."""
    bits = values.astype(np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def point_cloud(coordinates: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """[N, 3] + [N, 3] -> [N, 6] xyz (metres) + rgb (0-1), as stored: PTv3 voxelises it itself."""
    return np.concatenate([coordinates, colors], axis=1).astype(np.float32)

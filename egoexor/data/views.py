"""Which cameras form the ego and exo branches of a sample, and which gaze/depth/hand rows go with them.

Ego views are the sample's non-black ego cameras, in camera order. Exo views are its room cameras
(and the ultrasound screen when that modality is available), black ones kept, as the reference
does; in training the reference keeps a random 2-5 of them in random order. Cameras are chosen by
name, not by the reference's contiguous index range (which swallowed blank or excluded cameras
lying inside the range; on well-ordered takes both give the same views).

Gaze rows are found by their source id. Depth rows are row-aligned with gaze; hand rows carry their
own source id. ``row_matching="reference"`` instead takes depth and hand row ``p`` for the camera
at position ``first_ego_camera + p``, the reference's rule, which misaligns when an ego frame is
black or rows come in another order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from egoexor import vocab


@dataclass(frozen=True)
class EgoView:
    """One ego camera and the row of each per-device array that belongs to it (None: no row)."""

    camera: int
    source: str
    gaze_row: int | None
    depth_row: int | None
    hand_row: int | None


def _row_with_id(rows: np.ndarray | None, source_id: int) -> int | None:
    if rows is None:
        return None
    matches = np.flatnonzero(rows[:, 0] == source_id)
    return int(matches[0]) if len(matches) else None


def ego_views(
    sources: list[str], rgb: np.ndarray | None, gaze: np.ndarray | None, n_depth: int, hands: np.ndarray | None,
    row_matching: str,
) -> list[EgoView]:  # fmt: skip
    """The non-black ego cameras with their rows; ``n_depth`` is the number of depth rows (0: none)."""
    if rgb is None:
        return []
    ego_cameras = [i for i, name in enumerate(sources) if name in vocab.EGO_SOURCES]
    views = []
    for camera in ego_cameras:
        if not rgb[camera].any():
            continue
        source = sources[camera]
        gaze_row = _row_with_id(gaze, vocab.SOURCES[source])
        if row_matching == "reference":
            position = camera - ego_cameras[0]
            depth_row = position if position < n_depth else None
            hand_row = position if hands is not None and position < len(hands) else None
        else:
            depth_row = gaze_row if gaze_row is not None and gaze_row < n_depth else None
            hand_row = _row_with_id(hands, vocab.SOURCES[source])
        views.append(EgoView(camera, source, gaze_row, depth_row, hand_row))
    return views


def exo_cameras(
    sources: list[str], with_room: bool, with_ultrasound: bool, sample_views: bool, max_views: int,
    rng: random.Random,
) -> list[int]:  # fmt: skip
    """Exo camera indices: room cameras (``with_room``) and the ultrasound screen (``with_ultrasound``).

    All of them in camera order, or (``sample_views``) a random 2-5 of them in random order.
    """
    def wanted(name: str) -> bool:
        if name == vocab.ULTRASOUND_SOURCE:
            return with_ultrasound
        return with_room and name in vocab.EXO_SOURCES

    cameras = [i for i, name in enumerate(sources) if wanted(name)]
    if sample_views and len(cameras) > 2:
        cameras = rng.sample(cameras, rng.randint(2, min(5, len(cameras))))
    return cameras[:max_views]

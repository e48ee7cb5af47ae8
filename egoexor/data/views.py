"""Which cameras form the ego and exo branches of a sample, and where a per-device row finds its view.

Ego views are the sample's non-black ego cameras, in camera order. Exo views are its room cameras
(and the ultrasound screen when that modality is available), black ones kept, as the reference
does; in training the reference keeps a random 2-5 of them in random order.

``camera_selection``: ``name`` picks the cameras by name. ``reference`` reproduces the reference,
which read the contiguous index range from the first to the last camera of a branch
(``train.py:1155-1184``, ``1194``, ``1230``; ``or_dataset.py:84-142`` at inference): any camera inside
the range joins the branch, so a blank camera between two room cameras becomes a black exo view and
an ultrasound screen inside the range is read even when that modality is unavailable. On
well-ordered takes both rules give the same views.

``row_matching`` (applied by each per-device input, ``egoexor.modalities``): ``source_id`` finds gaze
rows by their source id, depth rows row-aligned with gaze, and hand rows by their own source id.
``reference`` keeps gaze by id (the reference did that too) but takes depth and hand rows by position
(:attr:`EgoView.position`, :func:`row_at_position`), with a different rule in each of its code paths:

* training (``train.py:1322-1368``): the k-th kept ego view takes row ``e[k] - e[0]``, ``e`` being
  every ego-named camera, black ones included; a black ego frame shifts the later views' rows;
* inference (``scene_graph_prediction_model.py:199-233``): the view of camera ``c`` takes row
  ``c - c0``, ``c0`` the first kept (non-black) ego camera; a black first ego frame shifts all rows.

A row index past the end of the rows (or a k with no ``e[k]``) gives no row. The reference's row
list then came out shorter than its view list, and its model failed splitting the rows per view.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from egoexor import vocab

#: The ranges the reference used for a take with no camera of a branch (``train.py:1176-1184``).
_DEFAULT_EGO_RANGE, _DEFAULT_EXO_RANGE = (0, 4), (4, 9)


@dataclass(frozen=True)
class EgoView:
    """One ego camera: its device's source id (None: not in the source table) and its row position under the
    reference's positional rule (None: no row), for the inputs with one row per device."""

    camera: int
    source: str
    source_id: int | None
    position: int | None


def row_at_position(view: EgoView, n_rows: int) -> int | None:
    """The reference's positional row of a view, where the rows reach it."""
    return view.position if view.position is not None and view.position < n_rows else None


def _index_range(cameras: list[int], default: tuple[int, int], n_cameras: int) -> list[int]:
    """Every camera from the first to the last of ``cameras`` (the reference's slice ``rgb[first:last + 1]``)."""
    start, stop = (cameras[0], cameras[-1] + 1) if cameras else default
    return list(range(start, min(stop, n_cameras)))


def ego_views(sources: list[str], rgb: np.ndarray | None, generating: bool, selection: str) -> list[EgoView]:
    """The non-black ego cameras; ``generating`` picks the reference's inference row rule over its training rule."""
    if rgb is None:
        return []
    named = [i for i, name in enumerate(sources) if name in vocab.EGO_SOURCES]
    candidates = named if selection == "name" else _index_range(named, _DEFAULT_EGO_RANGE, len(sources))
    kept = [camera for camera in candidates if rgb[camera].any()]
    views = []
    for k, camera in enumerate(kept):
        if generating:
            position = camera - kept[0]
        else:
            position = named[k] - named[0] if k < len(named) else None
        source = sources[camera]
        views.append(EgoView(camera, source, vocab.SOURCES.get(source), position))
    return views


def exo_cameras(
    sources: list[str],
    with_room: bool,
    with_ultrasound: bool,
    selection: str,
    sample_views: bool,
    max_views: int,
    rng: random.Random,
) -> list[int]:
    """Exo camera indices: room cameras (``with_room``) and the ultrasound screen (``with_ultrasound``).

    All of them in camera order, or (``sample_views``) a random 2-5 of them in random order. With
    ``selection`` ``reference``, the index range of room cameras and (if available) the ultrasound
    screen, and only when room cameras are available, as the reference read exo frames only then.
    """

    def configured(name: str) -> bool:
        return with_ultrasound if name == vocab.ULTRASOUND_SOURCE else name in vocab.EXO_SOURCES

    if selection == "name":
        cameras = [
            i for i, name in enumerate(sources) if configured(name) and (with_room or name == vocab.ULTRASOUND_SOURCE)
        ]
    elif with_room:
        cameras = _index_range(
            [i for i, name in enumerate(sources) if configured(name)], _DEFAULT_EXO_RANGE, len(sources)
        )
    else:
        cameras = []
    if sample_views and len(cameras) > 2:
        cameras = rng.sample(cameras, rng.randint(2, min(5, len(cameras))))
    return cameras[:max_views]

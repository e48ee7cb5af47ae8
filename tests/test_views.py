import random

import numpy as np

from egoexor import vocab
from egoexor.config import DataConfig
from egoexor.data import views
from egoexor.data.layout import TakeKey
from egoexor.data.reader import Timepoint
from egoexor.modalities import modality

SOURCES = [
    "head_surgeon",
    "assistant",
    "circulator",
    "anesthetist",
    "or_light",
    "external_1",
    "ultrasound",
    "external_2",
    "blank",
]


def rgb_with_black(black=()):
    rgb = np.ones((len(SOURCES), 4, 4, 3), np.uint8)
    for camera in black:
        rgb[camera] = 0
    return rgb


def rows(order, width=3):
    """Per-device rows (source id first) for devices in the given order; each row's values encode its index + 1."""
    out = np.full((len(order), width), np.nan, np.float32)
    for index, name in enumerate(order):
        out[index, :2] = vocab.SOURCES[name], index + 1
    return out


def picked(ego, row_matching, gaze=None, n_depth=0, hands=None):
    """The gaze, depth and hand row each view took through the gaze and hands inputs (None: no row)."""
    arrays = {"gaze": gaze, "gaze_depth": np.arange(1, n_depth + 1, dtype=np.float32), "hands": hands}
    point = Timepoint(TakeKey("MISS", 9, 9), 0, SOURCES, None, {k: v for k, v in arrays.items() if v is not None}, None)
    config = DataConfig(row_matching=row_matching, gaze_scale=1e3, depth_scale=1e3, hand_scale=1e3, gaze_fixation=False)
    if gaze is not None:
        gaze = gaze.copy()
        gaze[:, 2] = 0
        point.arrays["gaze"] = gaze
    found = {}
    for name in ("gaze", "hands"):
        found[name] = [None if row is None else row * 1e3 for row in modality(name).rows(point, ego, config)]
    # a gaze token needs gaze and depth: rows of one without the other are tested through the token's values
    gaze_rows = [None if r is None else round(r[0]) - 1 for r in found["gaze"]]
    depth_rows = [None if r is None else round(r[2]) - 1 for r in found["gaze"]]
    hand_rows = [None if r is None else round(r[0]) - 1 for r in found["hands"]]
    return gaze_rows, depth_rows, hand_rows


def test_ego_views_skip_black_frames_and_match_rows_by_id():
    gaze = rows(["anesthetist", "head_surgeon", "circulator", "assistant"])
    hands = rows(["assistant", "anesthetist", "head_surgeon", "circulator"], 17)
    result = views.ego_views(SOURCES, rgb_with_black([1]), False, "name")
    assert [v.source for v in result] == ["head_surgeon", "circulator", "anesthetist"]
    gaze_rows, depth_rows, hand_rows = picked(result, "source_id", gaze, 4, hands)
    assert gaze_rows == [1, 2, 0]
    assert depth_rows == [1, 2, 0]  # depth is row-aligned with gaze
    assert hand_rows == [2, 3, 1]


def test_reference_rows_with_a_black_ego_frame_in_the_middle_train_vs_generate():
    gaze = rows(["anesthetist", "head_surgeon", "circulator", "assistant"])
    hands = rows(["assistant", "anesthetist", "head_surgeon", "circulator"], 17)
    black_assistant = rgb_with_black([1])  # views: head_surgeon (0), circulator (2), anesthetist (3)
    train = picked(views.ego_views(SOURCES, black_assistant, False, "name"), "reference", gaze, 4, hands)
    assert train[0] == [1, 2, 0]  # gaze used ids in the reference too
    # training: the k-th kept view takes row k (ego cameras 0-3 all named, black one included)
    assert train[1] == [0, 1, 2] and train[2] == [0, 1, 2]
    generate = picked(views.ego_views(SOURCES, black_assistant, True, "name"), "reference", gaze, 4, hands)
    # inference: camera minus the first kept camera (0)
    assert generate[1] == [0, 2, 3] and generate[2] == [0, 2, 3]
    assert generate[0] == [1, 2, 0]


def test_reference_rows_with_the_first_ego_frame_black():
    black_head_surgeon = rgb_with_black([0])  # views: assistant (1), circulator (2), anesthetist (3)
    hands = rows(["head_surgeon", "assistant", "circulator", "anesthetist"], 17)
    for generating in (False, True):  # both rules count from the first kept view here
        ego = views.ego_views(SOURCES, black_head_surgeon, generating, "name")
        assert [view.position for view in ego] == [0, 1, 2] and picked(ego, "reference", hands=hands)[2] == [0, 1, 2]
    # ... so the assistant's view gets the head surgeon's row, where source ids give the right one
    by_id = picked(views.ego_views(SOURCES, black_head_surgeon, False, "name"), "source_id", hands=hands)
    assert by_id[2] == [1, 2, 3]


def test_reference_row_past_the_last_row_is_no_row():
    hands = rows(["head_surgeon", "assistant"], 17)  # 2 hand rows, 3 depth rows
    gaze = rows(["head_surgeon", "circulator", "anesthetist"])
    generate = picked(views.ego_views(SOURCES, rgb_with_black([1]), True, "name"), "reference", gaze, 3, hands)
    assert generate[1] == [0, 2, None]  # anesthetist: row 3 of 3
    assert generate[2] == [0, None, None]
    train = picked(views.ego_views(SOURCES, rgb_with_black([1]), False, "name"), "reference", gaze, 3, hands)
    assert train[1] == [0, 1, 2] and train[2] == [0, 1, None]
    assert [views.row_at_position(view, 2) for view in views.ego_views(SOURCES, rgb_with_black([1]), True, "name")] == [
        0,
        None,
        None,
    ]


def test_missing_rows_and_groups():
    gaze = rows(["head_surgeon"])
    result = views.ego_views(SOURCES, rgb_with_black(), False, "name")
    assert picked(result, "source_id", gaze, 1) == ([0, None, None, None], [0, None, None, None], [None] * 4)
    assert views.ego_views(SOURCES, None, False, "name") == []


def test_reference_ego_range_takes_a_lit_camera_inside_it():
    sources = ["head_surgeon", "blank", "assistant", "external_1"]
    rgb = np.ones((4, 4, 4, 3), np.uint8)  # the blank camera is not black
    by_range = views.ego_views(sources, rgb, False, "reference")
    assert [v.camera for v in by_range] == [0, 1, 2]  # cameras 0..2, external_1 after the range
    # training rule: ego-named cameras are 0 and 2, so views 0 and 1 take rows 0 and 2, view 2 none
    assert [views.row_at_position(v, 3) for v in by_range] == [0, 2, None]
    assert [views.row_at_position(v, 3) for v in views.ego_views(sources, rgb, True, "reference")] == [0, 1, 2]
    assert [v.camera for v in views.ego_views(sources, rgb, False, "name")] == [0, 2]
    rgb[1] = 0  # black, as blank cameras are: skipped either way
    assert [v.camera for v in views.ego_views(sources, rgb, False, "reference")] == [0, 2]


def test_exo_cameras_in_order_with_ultrasound_only_when_available():
    rng = random.Random(0)
    assert views.exo_cameras(SOURCES, True, True, "name", False, 8, rng) == [4, 5, 6, 7]
    assert views.exo_cameras(SOURCES, True, False, "name", False, 8, rng) == [4, 5, 7]
    assert views.exo_cameras(SOURCES, False, True, "name", False, 8, rng) == [6]
    assert views.exo_cameras(SOURCES, True, True, "name", False, 2, rng) == [4, 5]


def test_reference_exo_index_range():
    rng = random.Random(0)
    # the blank camera 8 lies after the last exo camera: outside the range
    assert views.exo_cameras(SOURCES, True, True, "reference", False, 8, rng) == [4, 5, 6, 7]
    # an unavailable ultrasound screen inside the range is read all the same
    assert views.exo_cameras(SOURCES, True, False, "reference", False, 8, rng) == [4, 5, 6, 7]
    # an available ultrasound screen widens the range; no room cameras available: no exo views
    last = ["or_light", "external_1", "blank", "ultrasound"]
    assert views.exo_cameras(last, True, True, "reference", False, 8, rng) == [0, 1, 2, 3]
    assert views.exo_cameras(last, True, False, "reference", False, 8, rng) == [0, 1]
    assert views.exo_cameras(last, False, True, "reference", False, 8, rng) == []
    # a blank camera inside the range, and an ego camera: both become exo views
    inside = ["head_surgeon", "or_light", "blank", "assistant", "external_1", "blank"]
    assert views.exo_cameras(inside, True, False, "reference", False, 8, rng) == [1, 2, 3, 4]
    assert views.exo_cameras(inside, True, False, "name", False, 8, rng) == [1, 4]
    # no exo-named camera at all: the reference's fixed range 4..8, cut to the cameras there are
    assert views.exo_cameras(["head_surgeon"] * 6, True, False, "reference", False, 8, rng) == [4, 5]


def test_training_keeps_a_random_two_to_five_in_random_order():
    sources = [f"external_{i}" for i in range(1, 6)] + ["or_light", "microscope", "simstation"]
    rng = random.Random(0)
    seen_sizes, seen_orders = set(), set()
    for _ in range(300):
        cameras = views.exo_cameras(sources, True, False, "name", True, 8, rng)
        assert 2 <= len(cameras) <= 5 and len(set(cameras)) == len(cameras)
        seen_sizes.add(len(cameras))
        seen_orders.add(cameras == sorted(cameras))
    assert seen_sizes == {2, 3, 4, 5} and seen_orders == {True, False}
    assert views.exo_cameras(["or_light", "external_1"], True, False, "name", True, 8, rng) == [0, 1]

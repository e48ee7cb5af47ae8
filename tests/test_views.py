import random

import numpy as np

from egoexor import vocab
from egoexor.data import views

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


def rows(order):
    """Gaze-like rows (source id first) for devices in the given order."""
    return np.array([[vocab.SOURCES[name], 0, 0] for name in order], np.float32)


def hand_rows(order):
    return np.concatenate([rows(order), np.zeros((len(order), 14), np.float32)], axis=1)


def test_ego_views_skip_black_frames_and_match_rows_by_id():
    gaze = rows(["anesthetist", "head_surgeon", "circulator", "assistant"])
    hands = hand_rows(["assistant", "anesthetist", "head_surgeon", "circulator"])
    result = views.ego_views(SOURCES, rgb_with_black([1]), gaze, 4, hands, "source_id", False, "name")
    assert [v.source for v in result] == ["head_surgeon", "circulator", "anesthetist"]
    assert [v.gaze_row for v in result] == [1, 2, 0]
    assert [v.depth_row for v in result] == [1, 2, 0]  # depth is row-aligned with gaze
    assert [v.hand_row for v in result] == [2, 3, 1]


def test_reference_rows_with_a_black_ego_frame_in_the_middle_train_vs_generate():
    gaze = rows(["anesthetist", "head_surgeon", "circulator", "assistant"])
    hands = hand_rows(["assistant", "anesthetist", "head_surgeon", "circulator"])
    black_assistant = rgb_with_black([1])  # views: head_surgeon (0), circulator (2), anesthetist (3)
    train = views.ego_views(SOURCES, black_assistant, gaze, 4, hands, "reference", False, "name")
    assert [v.gaze_row for v in train] == [1, 2, 0]  # gaze used ids in the reference too
    # training: the k-th kept view takes row k (ego cameras 0-3 all named, black one included)
    assert [v.depth_row for v in train] == [0, 1, 2] and [v.hand_row for v in train] == [0, 1, 2]
    generate = views.ego_views(SOURCES, black_assistant, gaze, 4, hands, "reference", True, "name")
    # inference: camera minus the first kept camera (0)
    assert [v.depth_row for v in generate] == [0, 2, 3] and [v.hand_row for v in generate] == [0, 2, 3]
    assert [v.gaze_row for v in generate] == [1, 2, 0]


def test_reference_rows_with_the_first_ego_frame_black():
    black_head_surgeon = rgb_with_black([0])  # views: assistant (1), circulator (2), anesthetist (3)
    hands = hand_rows(["head_surgeon", "assistant", "circulator", "anesthetist"])
    for generating in (False, True):  # both rules count from the first kept view here
        result = views.ego_views(SOURCES, black_head_surgeon, None, 4, hands, "reference", generating, "name")
        assert [v.depth_row for v in result] == [0, 1, 2] and [v.hand_row for v in result] == [0, 1, 2]
    # ... so the assistant's view gets the head surgeon's row, where source ids give the right one
    by_id = views.ego_views(SOURCES, black_head_surgeon, None, 4, hands, "source_id", False, "name")
    assert [v.hand_row for v in by_id] == [1, 2, 3]


def test_reference_row_past_the_last_row_is_no_row():
    hands = hand_rows(["head_surgeon", "assistant"])  # 2 hand rows, 3 depth rows
    generate = views.ego_views(SOURCES, rgb_with_black([1]), None, 3, hands, "reference", True, "name")
    assert [v.depth_row for v in generate] == [0, 2, None]  # anesthetist: row 3 of 3
    assert [v.hand_row for v in generate] == [0, None, None]
    train = views.ego_views(SOURCES, rgb_with_black([1]), None, 3, hands, "reference", False, "name")
    assert [v.depth_row for v in train] == [0, 1, 2] and [v.hand_row for v in train] == [0, 1, None]


def test_missing_rows_and_groups():
    gaze = rows(["head_surgeon"])
    result = views.ego_views(SOURCES, rgb_with_black(), gaze, 1, None, "source_id", False, "name")
    assert [(v.gaze_row, v.depth_row, v.hand_row) for v in result] == [(0, 0, None)] + [(None, None, None)] * 3
    assert views.ego_views(SOURCES, None, gaze, 1, None, "source_id", False, "name") == []


def test_reference_ego_range_takes_a_lit_camera_inside_it():
    sources = ["head_surgeon", "blank", "assistant", "external_1"]
    rgb = np.ones((4, 4, 4, 3), np.uint8)  # the blank camera is not black
    hands = hand_rows(["head_surgeon", "assistant", "circulator"])
    by_range = views.ego_views(sources, rgb, None, 3, hands, "reference", False, "reference")
    assert [v.camera for v in by_range] == [0, 1, 2]  # cameras 0..2, external_1 after the range
    # training rule: ego-named cameras are 0 and 2, so views 0 and 1 take rows 0 and 2, view 2 none
    assert [v.hand_row for v in by_range] == [0, 2, None]
    assert [v.hand_row for v in views.ego_views(sources, rgb, None, 3, hands, "reference", True, "reference")] == [
        0,
        1,
        2,
    ]
    assert [v.camera for v in views.ego_views(sources, rgb, None, 3, hands, "reference", False, "name")] == [0, 2]
    rgb[1] = 0  # black, as blank cameras are: skipped either way
    assert [v.camera for v in views.ego_views(sources, rgb, None, 3, hands, "source_id", False, "reference")] == [0, 2]


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

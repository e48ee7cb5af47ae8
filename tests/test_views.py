import random

import numpy as np

from egoexor import vocab
from egoexor.data import views

SOURCES = ["head_surgeon", "assistant", "circulator", "anesthetist", "or_light", "external_1", "ultrasound",
           "external_2", "blank"]  # fmt: skip


def rgb_with_black(black=()):
    rgb = np.ones((len(SOURCES), 4, 4, 3), np.uint8)
    for camera in black:
        rgb[camera] = 0
    return rgb


def rows(order):
    """Gaze-like rows (source id first) for devices in the given order."""
    return np.array([[vocab.SOURCES[name], 0, 0] for name in order], np.float32)


def test_ego_views_skip_black_frames_and_match_rows_by_id():
    gaze = rows(["anesthetist", "head_surgeon", "circulator", "assistant"])
    hands = np.concatenate([rows(["assistant", "anesthetist", "head_surgeon", "circulator"]),
                            np.zeros((4, 14), np.float32)], axis=1)  # fmt: skip
    result = views.ego_views(SOURCES, rgb_with_black([1]), gaze, 4, hands, "source_id")
    assert [v.source for v in result] == ["head_surgeon", "circulator", "anesthetist"]
    assert [v.gaze_row for v in result] == [1, 2, 0]
    assert [v.depth_row for v in result] == [1, 2, 0]  # depth is row-aligned with gaze
    assert [v.hand_row for v in result] == [2, 3, 1]


def test_reference_row_matching_is_positional():
    gaze = rows(["anesthetist", "head_surgeon", "circulator", "assistant"])
    hands = np.concatenate([rows(["assistant", "anesthetist", "head_surgeon", "circulator"]),
                            np.zeros((4, 14), np.float32)], axis=1)  # fmt: skip
    result = views.ego_views(SOURCES, rgb_with_black([1]), gaze, 4, hands, "reference")
    assert [v.gaze_row for v in result] == [1, 2, 0]  # gaze used ids in the reference too
    assert [v.depth_row for v in result] == [0, 2, 3]  # camera position: misaligned
    assert [v.hand_row for v in result] == [0, 2, 3]


def test_missing_rows_and_groups():
    gaze = rows(["head_surgeon"])
    result = views.ego_views(SOURCES, rgb_with_black(), gaze, 1, None, "source_id")
    assert [(v.gaze_row, v.depth_row, v.hand_row) for v in result] == [(0, 0, None)] + [(None, None, None)] * 3
    assert views.ego_views(SOURCES, None, gaze, 1, None, "source_id") == []


def test_exo_cameras_in_order_with_ultrasound_only_when_available():
    rng = random.Random(0)
    assert views.exo_cameras(SOURCES, True, True, False, 8, rng) == [4, 5, 6, 7]
    assert views.exo_cameras(SOURCES, True, False, False, 8, rng) == [4, 5, 7]
    assert views.exo_cameras(SOURCES, False, True, False, 8, rng) == [6]
    assert views.exo_cameras(SOURCES, True, True, False, 2, rng) == [4, 5]


def test_training_keeps_a_random_two_to_five_in_random_order():
    sources = [f"external_{i}" for i in range(1, 6)] + ["or_light", "microscope", "simstation"]
    rng = random.Random(0)
    seen_sizes, seen_orders = set(), set()
    for _ in range(300):
        cameras = views.exo_cameras(sources, True, False, True, 8, rng)
        assert 2 <= len(cameras) <= 5 and len(set(cameras)) == len(cameras)
        seen_sizes.add(len(cameras))
        seen_orders.add(cameras == sorted(cameras))
    assert seen_sizes == {2, 3, 4, 5} and seen_orders == {True, False}
    assert views.exo_cameras(["or_light", "external_1"], True, False, True, 8, rng) == [0, 1]

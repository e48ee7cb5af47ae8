"""The timepoint reader: raw values, None for absent groups, clear errors for bad addresses."""

import multiprocessing
import pickle

import h5py
import numpy as np
import pytest

from egoexor.data import layout
from egoexor.data.layout import TakeKey
from egoexor.data.reader import EgoExorReader, ReadError
from egoexor.scene_graph import triplets_from_annotation

MISS_FULL = TakeKey("MISS", 1, 1)


def test_reads_every_modality_as_stored(merged_file):
    with EgoExorReader(merged_file) as reader, h5py.File(merged_file, "r") as h5:
        take = h5[MISS_FULL.path]
        point = reader.read(MISS_FULL, 3)
        assert point.sources == layout.take_sources(take)
        assert np.array_equal(point.rgb, take[layout.RGB][3])
        assert np.array_equal(point.arrays.get("gaze"), take[layout.GAZE][3])
        assert np.array_equal(point.arrays.get("gaze_depth"), take[layout.GAZE_DEPTH][3], equal_nan=True)
        assert np.array_equal(point.arrays.get("hands"), take[layout.HANDS][3], equal_nan=True)
        assert np.array_equal(point.arrays.get("audio"), take[layout.AUDIO_SNIPPETS][3])
        assert np.array_equal(point.arrays.get("point_coordinates"), take[layout.POINT_COORDINATES][3])
        assert np.array_equal(point.arrays.get("point_colors"), take[layout.POINT_COLORS][3])
        assert point.annotations == triplets_from_annotation(take["annotations/frame_3/rel_annotations"][()])
        assert np.array_equal(point.image("assistant"), take[layout.RGB][3, 1])
        assert point.image("ultrasound") is None


def test_annotations_are_normalised_to_canonical_names(tiny_dataset, merged_file):
    with EgoExorReader(merged_file) as reader:
        for key, templates in tiny_dataset.frame_templates.items():
            for frame in (0, 1, 3):
                assert reader.read(key, frame).annotations == tiny_dataset.templates[templates[frame]]


def test_absent_groups_are_none(merged_file):
    with EgoExorReader(merged_file) as reader:
        exo_only = reader.read(TakeKey("MISS", 1, 2), 0)
        assert not {"gaze", "gaze_depth", "hands"} & set(exo_only.arrays)
        assert exo_only.gaze_by_source() == {}
        ultrasound = reader.read(TakeKey("Ultrasound", 1, 1), 0)
        assert "audio" not in ultrasound.arrays and ultrasound.arrays["point_coordinates"] is not None
        assert reader.read(MISS_FULL, 2).annotations is None  # a frame with no annotation group


def test_gaze_by_source_uses_the_row_ids(merged_file):
    with EgoExorReader(merged_file) as reader:
        point = reader.read(MISS_FULL, 5)
    by_source = point.gaze_by_source()
    assert list(by_source) == ["anesthetist", "head_surgeon", "circulator", "assistant"]
    assert np.array_equal(by_source["head_surgeon"], point.arrays.get("gaze")[1, 1:])


def test_bad_addresses_name_file_take_and_frame(merged_file, tmp_path):
    with EgoExorReader(merged_file) as reader:
        with pytest.raises(ReadError, match=r"egoexor\.h5: no take data/MISS/7/take/1"):
            reader.read(TakeKey("MISS", 7, 1), 0)
        with pytest.raises(ReadError, match=r"egoexor\.h5: data/MISS/1/take/1: frame 48 out of range"):
            reader.read(MISS_FULL, 48)
        with pytest.raises(ReadError, match="frame -1 out of range"):
            reader.read(MISS_FULL, -1)
    with pytest.raises(ReadError, match="no such file"):
        EgoExorReader(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(ReadError, match="not an HDF5 file"):
        EgoExorReader(tmp_path / "text.h5")


def test_takes_and_frame_counts(tiny_dataset, merged_file):
    with EgoExorReader(merged_file) as reader:
        assert reader.takes() == sorted(t.key for t in tiny_dataset.profile.takes)
        assert reader.frame_count(MISS_FULL) == 48


def _read_in_child(reader, queue):
    queue.put(reader.read(MISS_FULL, 4).rgb.sum())


def test_reader_survives_pickling_and_fork(merged_file):
    reader = EgoExorReader(merged_file)
    expected = reader.read(MISS_FULL, 4).rgb.sum()  # opens the file in the parent first
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.read(MISS_FULL, 4).rgb.sum() == expected
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(reader, queue))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0 and queue.get(timeout=5) == expected
    reader.close()

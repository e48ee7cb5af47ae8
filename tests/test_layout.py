import h5py
import numpy as np
import pytest

from egoexor.data import layout
from egoexor.data.layout import LayoutError, TakeKey


def test_take_key_paths():
    key = TakeKey("MISS", 3, 2)
    assert key.path == "data/MISS/3/take/2"  # "take", not the README's "takes"
    assert key.name == "MISS_3_2"
    assert layout.annotation_path(17) == "annotations/frame_17"


def test_split_dtype_fields():
    assert layout.SPLIT_DTYPE.names == ("surgery_type", "procedure_id", "take_id", "frame_id")
    assert all(layout.SPLIT_DTYPE[f] == np.int32 for f in ("procedure_id", "take_id", "frame_id"))
    assert h5py.check_string_dtype(layout.SPLIT_DTYPE["surgery_type"]) is not None
    assert layout.SPLIT_NAMES == ("train", "validation", "test")


def test_read_split_decodes_surgery_type(merged_file):
    with h5py.File(merged_file, "r") as h5:
        rows = layout.read_split(h5, "validation")
        assert all(isinstance(v, str) for v in rows["surgery_type"])
        with pytest.raises(LayoutError, match="unknown split 'val'"):
            layout.read_split(h5, "val")


def test_read_split_missing(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as h5:
        with pytest.raises(LayoutError, match=r"a\.h5: missing 'splits/train'"):
            layout.read_split(h5, "train")


def _minimal(path, rgb=None, sources=("or_light",), take="1"):
    with h5py.File(path, "w") as h5:
        for table in (layout.ENTITY_VOCAB, layout.RELATION_VOCAB, layout.SOURCE_TABLE):
            h5[table] = np.zeros(1)
        group = h5.create_group(f"data/MISS/1/take/{take}")
        group.create_group("sources").attrs["source_count"] = len(sources)
        for i, name in enumerate(sources):
            group["sources"].attrs[f"source_{i}"] = name
        group["frames/rgb"] = rgb if rgb is not None else np.zeros((2, 1, 4, 4, 3), np.uint8)
    return h5py.File(path, "r")


def test_check_layout_accepts_a_minimal_file(tmp_path):
    with _minimal(tmp_path / "ok.h5") as h5:
        assert layout.check_layout(h5) == 1
        assert layout.take_frame_count(h5["data/MISS/1/take/1"]) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rgb": np.zeros((2, 1, 4, 4), np.uint8)}, "must be uint8"),
        ({"sources": ("or_light", "external_1")}, "names 2 cameras"),
        ({"take": "one"}, "ids must be decimal"),
    ],
)
def test_check_layout_errors_name_the_file_and_path(tmp_path, kwargs, message):
    with _minimal(tmp_path / "bad.h5", **kwargs) as h5:
        with pytest.raises(LayoutError, match=message) as error:
            layout.check_layout(h5)
    assert "bad.h5" in str(error.value)


def test_check_layout_needs_metadata_and_data(tmp_path):
    with h5py.File(tmp_path / "empty.h5", "w"):
        pass
    with h5py.File(tmp_path / "empty.h5", "r") as h5, pytest.raises(LayoutError, match="missing 'metadata"):
        layout.check_layout(h5)

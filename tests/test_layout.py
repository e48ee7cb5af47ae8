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


def _minimal(path, rgb=None, sources=("or_light",), take="1", source_count=None, table=None, **datasets):
    """A file with the EgoExOR layout and one take; ``datasets`` (``eye_gaze__coordinates=...``) adds to the take."""
    with h5py.File(path, "w") as h5:
        for name in (layout.ENTITY_VOCAB, layout.RELATION_VOCAB, layout.SOURCE_TABLE):
            h5[name] = np.array([("x", 0)], dtype=layout.VOCAB_DTYPE) if table is None else table
        group = h5.create_group(f"data/MISS/1/take/{take}")
        group.create_group("sources").attrs["source_count"] = len(sources) if source_count is None else source_count
        for i, name in enumerate(sources):
            group["sources"].attrs[f"source_{i}"] = name
        group["frames/rgb"] = rgb if rgb is not None else np.zeros((2, 1, 4, 4, 3), np.uint8)
        for name, values in datasets.items():
            group[name.replace("__", "/")] = values
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
        ({"rgb": np.zeros((2, 1, 4, 4, 3), np.float32)}, "frames/rgb must be uint8"),
        ({"source_count": 2}, "sources lacks the attribute source_1"),
        ({"table": np.zeros(1)}, "'metadata/vocabulary/entity' must be a table with a 'name' field"),
        ({"eye_gaze__coordinates": np.zeros((2, 1, 2), np.float32)}, r"coordinates must be float \[F, G, 3\]"),
        ({"eye_gaze__coordinates": np.zeros((2, 3), np.float32)}, r"got float32 \[2, 3\]"),
        ({"hand_tracking__positions": np.zeros((2, 1, 17), np.int64)}, "positions must be float"),
        ({"point_cloud__coordinates": np.zeros((2, 5, 4), np.float32)}, r"coordinates must be float \[F, N, 3\]"),
        ({"audio__snippets": np.zeros((2, 48), np.float32)}, r"snippets must be float \[F, S, 2\]"),
        (
            {"eye_gaze__coordinates": np.array([[[13, 1, 1]], [[13, np.inf, 2]]], np.float32)},
            "infinite value at frame 1",
        ),
        ({"hand_tracking__positions": np.full((2, 1, 17), -np.inf, np.float32)}, "infinite value at frame 0"),
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


def test_check_layout_lets_nan_gaps_and_absent_datasets_through(tmp_path):
    """NaN marks a missing gaze point or hand in the released files; every per-frame dataset but rgb is optional."""
    hands = np.full((2, 1, 17), np.nan, np.float32)
    gaze = np.array([[[13, np.nan, np.nan]], [[13, 5, 6]]], np.float32)
    with _minimal(tmp_path / "ok.h5", hand_tracking__positions=hands, eye_gaze__coordinates=gaze) as h5:
        assert layout.check_layout(h5) == 1


def _annotated(path, rows):
    with h5py.File(path, "w") as h5:
        h5[layout.ENTITY_VOCAB] = np.array([("head_surgeon", 0), ("patient", 1)], dtype=layout.VOCAB_DTYPE)
        h5[layout.RELATION_VOCAB] = np.array([("touching", 0), ("close to", 1)], dtype=layout.VOCAB_DTYPE)
        h5["rel"] = rows
    return h5py.File(path, "r")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (np.zeros((2, 3), np.float32), "must hold text rows .subject, predicate, object., got float32 .2, 3."),
        (
            np.array([[b"head_surgeon", b"touching", b"patiant"]], dtype=layout.REL_ANNOTATION_DTYPE),
            "row 0: 'patiant' is not in",
        ),
        (
            np.array(
                [[b"patient", b"close", b"to", b"head_surgeon"], [b"patient", b"hugging", b"you", b"patient"]],
                dtype=layout.REL_ANNOTATION_DTYPE,
            ),
            "row 1: 'hugging you' is not in metadata/vocabulary/relation",
        ),
    ],
    ids=["numbers", "misspelt entity", "unknown relation"],
)
def test_an_annotation_of_numbers_or_unknown_names_is_refused(tmp_path, rows, message):
    with _annotated(tmp_path / "a.h5", rows) as h5:
        names = layout.vocabulary(h5)
        with pytest.raises(LayoutError, match=message):
            layout.check_annotation(h5, h5["rel"], names)


def test_an_annotation_of_known_names_passes(tmp_path):
    """A row of four parts joins the middle two into the predicate, as the reference's generator does."""
    rows = np.array([[b"patient", b"close", b"to", b"head_surgeon"]], dtype=layout.REL_ANNOTATION_DTYPE)
    with _annotated(tmp_path / "a.h5", rows) as h5:
        layout.check_annotation(h5, h5["rel"], layout.vocabulary(h5))

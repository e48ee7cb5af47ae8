"""egoexor-merge-h5: the reference's result, plus validation and atomic output."""

import subprocess
import sys

import h5py
import numpy as np
import pytest

from egoexor.cli import CommandError
from egoexor.data import layout, merge_h5
from egoexor.data.layout import TakeKey
from egoexor.data.merge_h5 import main, merge_files
from egoexor.data.synthetic import Profile, TakeSpec, generate, write_splits


@pytest.fixture(scope="module")
def second_file(tiny_dataset, tmp_path_factory):
    """miss_1b.h5: a duplicate MISS/1/take/2 with other pixels, and take 3 with H=8, W=6."""
    profile = Profile(
        name="dup",
        takes=(
            TakeSpec(TakeKey("MISS", 1, 2), ("or_light", "external_1", "blank"), n_frames=5, height=24, width=32),
            TakeSpec(
                TakeKey("MISS", 1, 3),
                ("head_surgeon", "or_light"),
                n_frames=4,
                height=8,
                width=6,
                gaze_sources=("head_surgeon",),
            ),
        ),
        snippet_samples=64,
        n_templates=2,
        noise_sigma=3.0,
    )
    directory = tmp_path_factory.mktemp("second")
    dataset = generate(directory, profile, seed=7)
    path = directory / "miss_1b.h5"
    dataset.files[0].rename(path)
    with h5py.File(path, "r+") as h5:
        h5[layout.DATASET_INFO].attrs["version"] = "other"
    return path


def all_datasets(group):
    out = {}
    group.visititems(lambda name, obj: out.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_merge_copies_every_take_byte_for_byte(tiny_dataset, merged_file):
    with h5py.File(merged_file, "r") as merged:
        assert [k for k, _ in layout.iter_takes(merged)] == [
            TakeKey("MISS", 1, 1),
            TakeKey("MISS", 1, 2),
            TakeKey("MISS", 2, 1),
            TakeKey("Ultrasound", 1, 1),
        ]
        for path in tiny_dataset.files:
            with h5py.File(path, "r") as source:
                for key, take in layout.iter_takes(source):
                    copied = merged[key.path]
                    assert dict(copied["sources"].attrs) == dict(take["sources"].attrs)
                    for name, dataset in all_datasets(take).items():
                        other = copied[name]
                        assert other.dtype == dataset.dtype and other.shape == dataset.shape
                        assert other.chunks == dataset.chunks
                        assert (other.compression, other.compression_opts) == (
                            dataset.compression,
                            dataset.compression_opts,
                        )
                        assert np.array_equal(other[()], dataset[()], equal_nan=dataset.dtype.kind == "f")
        with h5py.File(tiny_dataset.splits_file, "r") as splits:
            for name in layout.SPLIT_NAMES:
                assert np.array_equal(merged["splits"][name][()], splits["splits"][name][()])
        assert merged[layout.ENTITY_VOCAB].shape == (37,)


def test_first_file_wins_on_duplicate_take_and_metadata(tiny_dataset, second_file, tmp_path, capsys):
    output = tmp_path / "m.h5"
    code = main(
        [
            "--data_dir",
            str(tiny_dataset.directory),
            "--input_files",
            "miss_1.h5",
            str(second_file),
            "--output_file",
            str(output),
            "--quiet",
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "skipped duplicate take /data/MISS/1/take/2" in err
    with h5py.File(output, "r") as merged, h5py.File(tiny_dataset.files[0], "r") as first:
        path = "data/MISS/1/take/2/frames/rgb"
        assert np.array_equal(merged[path][()], first[path][()])
        assert merged["data/MISS/1/take/3/frames/rgb"].shape[2:4] == (8, 6)
        assert merged[layout.DATASET_INFO].attrs["version"] == "synthetic-1.0"
        assert isinstance(merged["splits"], h5py.Group) and len(merged["splits"]) == 0


def test_dangling_split_rows_are_reported_or_an_error_with_strict(tiny_dataset, tmp_path, capsys):
    with h5py.File(tiny_dataset.splits_file, "r") as h5:
        rows = {name: h5["splits"][name][()] for name in layout.SPLIT_NAMES}
    extra = np.array([("MISS", 9, 1, 0), ("MISS", 1, 1, 999)], dtype=layout.SPLIT_DTYPE)
    rows["test"] = np.concatenate([rows["test"], extra])
    splits = tmp_path / "splits_dangling.h5"
    write_splits(splits, rows)
    output = tmp_path / "m.h5"
    summary = merge_files(tiny_dataset.files, splits, output)
    assert summary.dangling_rows == {"test": 2}
    assert summary.split_sizes["test"] == len(rows["test"])
    code = main(
        [
            "--data_dir",
            str(tiny_dataset.directory),
            "--input_files",
            *[p.name for p in tiny_dataset.files],
            "--splits_file",
            str(splits),
            "--output_file",
            str(tmp_path / "strict.h5"),
            "--strict",
        ]
    )
    assert code == 2
    assert "2 in test" in capsys.readouterr().err
    assert not (tmp_path / "strict.h5").exists()


@pytest.mark.parametrize("problem", ["missing", "not_hdf5", "wrong_layout", "splits_without_group"])
def test_bad_input_is_a_one_line_error_before_anything_is_written(tiny_dataset, tmp_path, capsys, problem):
    inputs = [str(p) for p in tiny_dataset.files]
    splits = str(tiny_dataset.splits_file)
    if problem == "missing":
        inputs.append(str(tmp_path / "miss_9.h5"))
    elif problem == "not_hdf5":
        (tmp_path / "junk.h5").write_text("not hdf5")
        inputs.append(str(tmp_path / "junk.h5"))
    elif problem == "wrong_layout":
        with h5py.File(tmp_path / "other.h5", "w") as h5:
            h5["something"] = np.zeros(3)
        inputs.insert(1, str(tmp_path / "other.h5"))
    else:
        with h5py.File(tmp_path / "nosplits.h5", "w") as h5:
            h5["train"] = np.zeros(3)
        splits = str(tmp_path / "nosplits.h5")
    output = tmp_path / "out" / "merged.h5"
    code = main(
        ["--data_dir", str(tmp_path), "--input_files", *inputs, "--splits_file", splits, "--output_file", str(output)]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("egoexor-merge-h5: error:")
    assert not output.exists()
    assert not output.parent.exists() or not list(output.parent.iterdir())


def test_wrong_layout_message_names_the_file_and_field(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as h5:
        for table in (layout.ENTITY_VOCAB, layout.RELATION_VOCAB, layout.SOURCE_TABLE):
            h5[table] = np.array([("x", 0)], dtype=layout.VOCAB_DTYPE)
        h5.create_dataset("data/MISS/1/take/1/frames/rgb", data=np.zeros((2, 1, 4, 4, 3), np.float32))
    with pytest.raises(CommandError, match=r"bad\.h5.*frames/rgb must be uint8"):
        merge_files([path], None, tmp_path / "out.h5")


def test_existing_output_needs_overwrite(tiny_dataset, tmp_path):
    output = tmp_path / "merged.h5"
    output.write_text("precious")
    with pytest.raises(CommandError, match="already exists"):
        merge_files(tiny_dataset.files, None, output)
    assert output.read_text() == "precious"
    merge_files(tiny_dataset.files, None, output, overwrite=True)
    assert h5py.is_hdf5(output)


def test_interrupted_merge_leaves_nothing(tiny_dataset, tmp_path, monkeypatch):
    original = merge_h5._merge_group
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        original(*args)

    monkeypatch.setattr(merge_h5, "_merge_group", failing)
    with pytest.raises(KeyboardInterrupt):
        merge_files(tiny_dataset.files, tiny_dataset.splits_file, tmp_path / "merged.h5")
    assert list(tmp_path.iterdir()) == []


def test_an_input_truncated_while_it_is_merged_is_one_error_naming_it(tiny_dataset, tmp_path, monkeypatch):
    """The inputs pass their checks, then one is cut short (a download or copy still running) before it is read."""
    inputs = [tmp_path / path.name for path in tiny_dataset.files]
    for source, copy in zip(tiny_dataset.files, inputs, strict=True):
        copy.write_bytes(source.read_bytes())
    original = merge_h5._write

    def truncate_then_write(*args):
        with open(inputs[1], "r+b") as handle:
            handle.truncate(inputs[1].stat().st_size // 2)
        original(*args)

    monkeypatch.setattr(merge_h5, "_write", truncate_then_write)
    output = tmp_path / "out" / "merged.h5"
    with pytest.raises(CommandError, match=f"^{inputs[1]}: changed while it was merged .*nothing was written"):
        merge_files(inputs, tiny_dataset.splits_file, output)
    assert not output.parent.exists() or list(output.parent.iterdir()) == []


def test_paths_join_data_dir_unless_absolute(tiny_dataset, tmp_path):
    code = main(
        [
            "--data_dir",
            str(tiny_dataset.directory),
            "--input_files",
            "miss_1.h5",
            str(tiny_dataset.files[2]),
            "--splits_file",
            "splits.h5",
            "--output_file",
            str(tmp_path / "m.h5"),
            "--quiet",
        ]
    )
    assert code == 0
    with h5py.File(tmp_path / "m.h5", "r") as h5:
        assert "Ultrasound" in h5["data"] and "train" in h5["splits"]


def test_summary_and_module_entry_point(tiny_dataset, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "egoexor.data.merge_h5",
            "--data_dir",
            str(tiny_dataset.directory),
            "--input_files",
            "miss_1.h5",
            "miss_2.h5",
            "ultrasound_1.h5",
            "--splits_file",
            "splits.h5",
            "--output_file",
            str(tmp_path / "m.h5"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    frames = sum(t.n_frames for t in tiny_dataset.profile.takes)
    assert f"4 takes, {frames} frames" in result.stdout
    assert "splits: train" in result.stdout

"""egoexor-download served by huggingface_hub's own cache resolution: a cache in the hub layout, HF_HUB_OFFLINE=1."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from egoexor import cli
from egoexor.download import check_sizes

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_cache(root: Path, files: list[Path], repo: str = "datasets--ardamamur--EgoExOR") -> Path:
    """A hub cache holding ``files`` as ``repo`` (the dataset ardamamur/EgoExOR) at COMMIT, laid out as
    huggingface_hub writes it."""
    repo = root / repo
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for path in files:
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, blob)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    return root


def _download(cache: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent / "home")}
    return subprocess.run([sys.executable, "-m", "egoexor.download", *argv], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def cache(tiny_dataset, tmp_path_factory) -> Path:
    return _hub_cache(tmp_path_factory.mktemp("hub"), [*tiny_dataset.files, tiny_dataset.splits_file])


def test_selected_files_are_linked_from_the_cache_and_merged(cache, tmp_path):
    out, merged = tmp_path / "dl", tmp_path / "egoexor.h5"
    result = _download(cache, "--out", str(out), "--files", "miss_1.h5", "--merge", str(merged))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["miss_1.h5", "splits.h5"]
    blob = (cache / "datasets--ardamamur--EgoExOR" / "snapshots" / COMMIT / "miss_1.h5").resolve()
    assert os.path.samefile(out / "miss_1.h5", blob)  # a link, not a second copy
    assert f"at commit {COMMIT[:12]}" in result.stdout and "offline" in result.stdout
    with h5py.File(merged) as h5:
        assert sorted(h5["data/MISS/1/take"]) == ["1", "2"] and "Ultrasound" not in h5["data"]
        assert len(h5["splits/train"]) > 0
    again = _download(cache, "--out", str(out), "--files", "miss_1.h5")  # already there: nothing refused
    assert again.returncode == 0, again.stderr


def test_all_files_by_default(cache, tiny_dataset, tmp_path):
    result = _download(cache, "--out", str(tmp_path / "dl"))
    assert result.returncode == 0, result.stderr
    expected = sorted(p.name for p in [*tiny_dataset.files, tiny_dataset.splits_file])
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == expected


def test_a_file_missing_from_the_cache_is_one_line_and_nothing_is_written(cache, tmp_path):
    result = _download(cache, "--out", str(tmp_path / "dl"), "--files", "miss_9.h5")
    assert result.returncode == cli.EXIT_ERROR
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("egoexor-download: error: miss_9.h5: not in the hub cache (offline)")
    assert not (tmp_path / "dl").exists()


def test_an_empty_cache_offline_is_one_line(tmp_path):
    (tmp_path / "hub").mkdir()
    result = _download(tmp_path / "hub", "--out", str(tmp_path / "dl"))
    assert result.returncode == cli.EXIT_ERROR
    assert result.stderr.startswith("egoexor-download: error: ardamamur/EgoExOR: ") and "Traceback" not in result.stderr


def test_an_existing_different_file_needs_overwrite(cache, tmp_path):
    out = tmp_path / "dl"
    out.mkdir()
    (out / "miss_1.h5").write_bytes(b"old")
    refused = _download(cache, "--out", str(out), "--files", "miss_1.h5")
    assert refused.returncode == cli.EXIT_ERROR and "--overwrite" in refused.stderr
    assert (out / "miss_1.h5").read_bytes() == b"old" and not (out / "splits.h5").exists()
    assert _download(cache, "--out", str(out), "--files", "miss_1.h5", "--overwrite").returncode == 0
    assert h5py.is_hdf5(out / "miss_1.h5")


def test_size_check_names_every_wrong_file(tmp_path):
    (tmp_path / "a.h5").write_bytes(b"x" * 10)
    (tmp_path / "b.h5").write_bytes(b"x" * 5)
    check_sizes(tmp_path, {"a.h5": 10, "b.h5": 5})
    with pytest.raises(cli.CommandError, match=r"b\.h5 is 5 bytes, the hub lists 7"):
        check_sizes(tmp_path, {"a.h5": 10, "b.h5": 7})


def test_a_repo_id_that_is_no_repository_name_is_one_line(tmp_path):
    """'../../etc' is refused by huggingface_hub's name check, before anything is asked of the hub or written."""
    (tmp_path / "hub").mkdir()
    result = _download(tmp_path / "hub", "--out", str(tmp_path / "dl"), "--repo_id", "../../etc")
    assert result.returncode == cli.EXIT_ERROR
    assert result.stderr.startswith("egoexor-download: error: --repo_id ../../etc: Repo id must be in the form")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "dl").exists()

"""Every command that writes, on a real full filesystem (a small tmpfs mounted for the test).

Each case asserts: exit status 2, one line ``<command>: error: <output>: cannot write: No space left on
device`` naming the output the user asked for (not a temporary, not a library's dump), no traceback, no
crash, and nothing left on the disk but what was there before (an earlier output replaced with
``--overwrite`` stays intact). Mounting needs root in a sandbox that allows it; elsewhere the cases skip
and say why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli_safety import snapshot
from test_infer import checkpoint, few_samples, infer_args, reference_run  # noqa: F401  (fixtures)

from egoexor import evaluate, infer, train
from egoexor.data import make_samples, merge_h5

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
FULL = "cannot write: No space left on device"


@pytest.fixture
def disk(tmp_path):
    """A 4 MiB tmpfs, unmounted after the test."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs for a real full disk (needs root and a sandbox that allows mounts): "
            f"{result.stderr.strip()}"
        )
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def fill(disk: Path, leave: int = 0) -> None:
    """Fill the disk to the last byte with one file, ``disk/filler``, then give back ``leave`` bytes."""
    with open(disk / "filler", "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    assert shutil.disk_usage(disk).free < 65536
    os.truncate(disk / "filler", (disk / "filler").stat().st_size - leave)


def one_line(err: str, command: str, output: Path) -> None:
    said = [line for line in err.splitlines() if line.startswith(f"{command}:")]
    assert said == [f"{command}: error: {output}: {FULL}"], err[-2000:]
    assert "Traceback" not in err


def test_synthetic_is_one_line_and_no_crash(disk):
    """h5py on a full disk used to print HDF5's dump and then crash the interpreter at exit (rc -11)."""
    fill(disk, leave=2**21)  # room for the first file (1.6 MB), not the second
    result = subprocess.run(
        [sys.executable, "-m", "egoexor.data.synthetic", "--out", str(disk / "data")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    one_line(result.stderr, "egoexor.data.synthetic", disk / "data" / "miss_2.h5")
    assert sorted(p.name for p in disk.rglob("*")) == ["data", "filler", "miss_1.h5"]  # the file that fitted


def test_merge_is_one_line_and_leaves_nothing(disk, tiny_dataset, capsys):
    fill(disk)
    before = snapshot(disk)
    files = [p.name for p in tiny_dataset.files]
    argv = ["--data_dir", str(tiny_dataset.splits_file.parent), "--input_files", *files, "--splits_file", "splits.h5"]
    assert merge_h5.main([*argv, "--output_file", str(disk / "m.h5"), "--quiet"]) == 2
    one_line(capsys.readouterr().err, "egoexor-merge-h5", disk / "m.h5")
    assert snapshot(disk) == before


def test_make_samples_and_evaluate_are_one_line_and_leave_nothing(disk, merged_file, sample_files, capsys):
    fill(disk)
    argv = ["--hdf5", str(merged_file), "--split", "test", "--out", str(disk / "s"), "--no-token-freqs"]
    assert make_samples.main(argv) == 2
    one_line(capsys.readouterr().err, "egoexor.data.make_samples", disk / "s" / sample_files["test"].name)
    records = json.loads(sample_files["test"].read_text())
    predictions = disk.parent / "predictions.json"
    predictions.write_text(json.dumps({r["id"]: r["conversations"][1]["value"] for r in records}))
    argv = ["--predictions", str(predictions), "--samples", str(sample_files["test"]), "--out", str(disk / "eval")]
    assert evaluate.main(argv) == 2
    one_line(capsys.readouterr().err, "egoexor.evaluate", disk / "eval")
    assert not [p for p in disk.rglob("*") if p.is_file() and p.name != "filler"]


def test_train_checkpoint_save_is_one_line_and_leaves_no_partial(disk, sample_files, merged_file, capsys):
    fill(disk)
    output = disk / "run"
    argv = ["--config", TINY, "--data_path", str(sample_files["train"]), "--hdf5_path", str(merged_file)]
    argv += ["--output_dir", str(output), "--max_steps", "1", "--save_strategy", "steps", "--save_steps", "1"]
    assert train.main([*argv, "--disable_tqdm", "True"]) == 2
    one_line(capsys.readouterr().err, "egoexor.train", output / "checkpoint-1")
    assert sorted(str(p.relative_to(disk)) for p in disk.rglob("*")) == ["filler", "run"]  # no .partial


def test_infer_overwrite_on_a_full_disk_keeps_the_earlier_results(
    disk, checkpoint, merged_file, few_samples, reference_run, capsys
):
    """The earlier run's deletion no longer frees the room the new one needs: it is replaced only at the end."""
    out = disk / "out"
    shutil.copytree(reference_run, out)
    fill(disk)
    before = snapshot(disk)
    assert infer.main(infer_args(checkpoint, merged_file, few_samples, out, "--overwrite", "--num_workers", "0")) == 2
    one_line(capsys.readouterr().err, "egoexor.infer", out)
    assert snapshot(disk) == before

"""Benchmark the up-front checks every command runs on its inputs before heavy work.

On the ``realistic`` synthetic profile (generated, or ``--data DIR`` with its files), merged and turned
into training samples (``--permutations``), it times, each as the median of ``--runs``:

* ``check_layout``: the HDF5 schema check (metadata tables, every per-frame dataset's dtype, rank and
  width, the sources attributes, and the gaze and hand values: infinities);
* ``load_samples``: reading the sample JSON with every record validated (pydantic, strict types);
  ``json.loads`` alone is shown beside it, so the difference is what the validation costs;
* ``check_in_hdf5``: every sample's take and frame in the HDF5 file (older than the two above).

    python scripts/bench_checks.py [--data DIR] [--runs 7] [--permutations 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py

from egoexor.data import layout, make_samples
from egoexor.data.merge_h5 import merge_files
from egoexor.data.samples import check_in_hdf5, load_samples
from egoexor.data.synthetic import generate


def prepare(work: Path, data: Path | None, permutations: int) -> tuple[Path, Path]:
    """The merged file and the training samples of the realistic profile."""
    if data is None:
        dataset = generate(work / "data", "realistic", seed=0, progress=True)
        files, splits = dataset.files, dataset.splits_file
    else:
        splits = data / "splits.h5"
        files = sorted(p for p in data.glob("*.h5") if p != splits)
    merged = work / "egoexor.h5"
    merge_files(files, splits, merged)
    argv = ["--hdf5", str(merged), "--split", "train", "--n-permutations", str(permutations), "--out", str(work)]
    assert make_samples.main([*argv, "--no-token-freqs"]) == 0
    return merged, next(work.glob("train_*.json"))


def median_seconds(run: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def check_layout(merged: Path) -> int:
    with h5py.File(merged, "r") as h5:
        return layout.check_layout(h5)


def check_samples_in_file(merged: Path, samples_file: Path) -> None:
    samples = load_samples(samples_file)
    with h5py.File(merged, "r") as h5:
        check_in_hdf5(samples, h5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="folder of a realistic synthetic dataset")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--permutations", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        merged, samples_file = prepare(Path(folder), args.data, args.permutations)
        n_samples = len(json.loads(samples_file.read_text()))
        with h5py.File(merged, "r") as h5:
            n_frames = sum(layout.take_frame_count(take) for _, take in layout.iter_takes(h5))
        rows = [
            ("check_layout (HDF5 schema)", median_seconds(lambda: check_layout(merged), args.runs)),
            ("json.loads of the samples", median_seconds(lambda: json.loads(samples_file.read_text()), args.runs)),
            ("load_samples (validated)", median_seconds(lambda: load_samples(samples_file), args.runs)),
            ("check_in_hdf5", median_seconds(lambda: check_samples_in_file(merged, samples_file), args.runs)),
        ]
        size = merged.stat().st_size / 1e9
    print(f"realistic profile: {size:.2f} GB merged, {n_frames} frames, {n_samples} training samples")
    print(f"median of {args.runs} runs")
    print("| check | seconds |\n|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.4f} |")


if __name__ == "__main__":
    main()

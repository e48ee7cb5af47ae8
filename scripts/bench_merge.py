"""Benchmark egoexor-merge-h5 against the disk floor: copying the same input bytes.

Generates the ``realistic`` synthetic profile (or uses ``--data DIR`` holding one), then times, in
alternation so both see the same page-cache state, (a) ``shutil.copyfile`` of every input file and
(b) ``merge_files`` of the same inputs + ``splits.h5``. Prints the median of ``--runs`` runs and the
ratio merge / copy. Target: merge <= 1.3x the copy floor.

    python scripts/bench_merge.py [--data DIR] [--runs 3] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from egoexor.data.merge_h5 import merge_files
from egoexor.data.synthetic import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="folder with a realistic synthetic dataset")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each method (median reported)")
    parser.add_argument("--keep", action="store_true", help="keep the generated dataset")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench_merge_"))
    data = args.data
    if data is None:
        data = scratch / "data"
        start = time.perf_counter()
        generate(data, "realistic", seed=0, progress=True)
        print(f"generated realistic profile in {time.perf_counter() - start:.1f} s")
    inputs = sorted(p for p in data.glob("*.h5") if p.name != "splits.h5")
    input_bytes = sum(p.stat().st_size for p in inputs)
    out = scratch / "out"
    out.mkdir()

    copy_times, merge_times = [], []
    for _ in range(args.runs):
        start = time.perf_counter()
        for path in inputs:
            shutil.copyfile(path, out / path.name)
        copy_times.append(time.perf_counter() - start)
        for path in inputs:
            (out / path.name).unlink()

        start = time.perf_counter()
        merge_files(inputs, data / "splits.h5", out / "merged.h5", overwrite=True)
        merge_times.append(time.perf_counter() - start)
        (out / "merged.h5").unlink()

    copy, merge = statistics.median(copy_times), statistics.median(merge_times)
    print(f"\n{len(inputs)} input files, {input_bytes / 1e9:.2f} GB, median of {args.runs} runs\n")
    print("| method                     | seconds | GB/s | ratio vs copy |")
    print("|----------------------------|--------:|-----:|--------------:|")
    for name, seconds in (("shutil.copyfile (floor)", copy), ("egoexor-merge-h5", merge)):
        print(f"| {name:<26} | {seconds:7.2f} | {input_bytes / seconds / 1e9:4.2f} | {seconds / copy:13.2f} |")
    if not args.keep and args.data is None:
        shutil.rmtree(scratch)
    else:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()

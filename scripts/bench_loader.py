"""Benchmark the data path (Dataset + collator) against the floor of raw h5py reads.

On the ``realistic`` synthetic profile (generated, or ``--data DIR`` with its files), merged and
turned into test-split samples, it measures in separate processes (for a clean peak RSS):

* ``raw h5py reads``: the same datasets the loader reads for the same samples (frames, gaze, depth,
  hands, point cloud, cached audio embedding), nothing else: the floor;
* ``loader, num_workers=N``: ``EgoExorDataset`` (eval mode: every view, CLIP-size images) +
  ``Collator`` through a torch DataLoader, batch size 2.

Prints samples/s and per-sample cost (median of ``--runs``), the ratio to the floor, and peak RSS.
Target: per-sample cost <= 2x the raw-read floor.

    python scripts/bench_loader.py [--data DIR] [--runs 3] [--samples 64]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024


def measure_raw(work: Path, n: int) -> dict:
    from egoexor.data import layout
    from egoexor.data.samples import load_samples

    samples = load_samples(work / "samples.json")[:n]
    start = time.perf_counter()
    with h5py.File(work / "egoexor.h5", "r") as h5, h5py.File(work / "audio.h5", "r") as audio:
        for s in samples:
            take = h5[s.take.path]
            for path in (
                layout.RGB,
                layout.GAZE,
                layout.GAZE_DEPTH,
                layout.HANDS,
                layout.POINT_COORDINATES,
                layout.POINT_COLORS,
            ):
                if path in take:
                    take[path][s.frame]
            if f"{s.take.path}/audio/clap" in audio:
                audio[f"{s.take.path}/audio/clap"][s.frame]
    return {"seconds": time.perf_counter() - start, "samples": len(samples), "rss_mb": _peak_rss_mb()}


def measure_loader(work: Path, n: int, workers: int) -> dict:
    from torch.utils.data import DataLoader

    from egoexor.config import DataConfig
    from egoexor.data.dataset import EgoExorDataset
    from egoexor.data.processor import Collator
    from egoexor.data.samples import load_samples
    from egoexor.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(work / "tokenizer")
    config = DataConfig(audio_cache=str(work / "audio.h5"), audio_encoder=None)
    dataset = EgoExorDataset(load_samples(work / "samples.json")[:n], work / "egoexor.h5", tokenizer, config, "eval")
    loader = DataLoader(
        dataset,
        batch_size=2,
        num_workers=workers,
        collate_fn=Collator(tokenizer.pad_token_id),
        multiprocessing_context="fork" if workers else None,
    )
    start = time.perf_counter()
    for _ in loader:
        pass
    return {"seconds": time.perf_counter() - start, "samples": len(dataset), "rss_mb": _peak_rss_mb()}


def prepare(work: Path, data: Path | None) -> None:
    from egoexor.data.audio import ClapAudioEmbedder, save_tiny_clap
    from egoexor.data.make_samples import make_samples
    from egoexor.data.merge_h5 import merge_files
    from egoexor.data.precompute_audio import precompute
    from egoexor.data.synthetic import generate
    from egoexor.data.tokenizer import save_tiny_tokenizer

    if data is None:
        data = work / "data"
        generate(data, "realistic", seed=0, progress=True)
    inputs = sorted(p for p in data.glob("*.h5") if p.name != "splits.h5")
    merge_files(inputs, data / "splits.h5", work / "egoexor.h5", overwrite=True)
    with h5py.File(work / "egoexor.h5", "r") as h5:
        samples, _ = make_samples(h5, "test", random.Random(42))
    (work / "samples.json").write_text(json.dumps([s.to_record() for s in samples]))
    save_tiny_tokenizer(work / "tokenizer")
    precompute(work / "egoexor.h5", work / "audio.h5", ClapAudioEmbedder(save_tiny_clap(work / "clap")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="folder with a realistic synthetic dataset")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # internal: one measurement
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure is not None:
        result = (
            measure_raw(args.work, args.samples)
            if args.measure == "raw"
            else measure_loader(args.work, args.samples, int(args.measure))
        )
        print(json.dumps(result))
        return

    work = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        prepare(work, args.data)
        rows = {}
        for _ in range(args.runs):
            for name in ("raw", "0", "2"):
                out = subprocess.run(
                    [sys.executable, __file__, "--measure", name, "--work", str(work), "--samples", str(args.samples)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                rows.setdefault(name, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        shutil.rmtree(work)
    floor = statistics.median(r["seconds"] / r["samples"] for r in rows["raw"])
    n = rows["raw"][0]["samples"]
    print(f"\n{n} test-split samples (realistic profile), batch 2, median of {args.runs} runs\n")
    print("| method                    | samples/s | ms/sample | ratio vs floor | peak RSS MB |")
    print("|---------------------------|----------:|----------:|---------------:|------------:|")
    labels = {"raw": "raw h5py reads (floor)", "0": "loader, num_workers=0", "2": "loader, num_workers=2"}
    for name, label in labels.items():
        per_sample = statistics.median(r["seconds"] / r["samples"] for r in rows[name])
        rss = statistics.median(r["rss_mb"] for r in rows[name])
        print(
            f"| {label:<25} | {1 / per_sample:9.1f} | {per_sample * 1e3:9.1f} | {per_sample / floor:14.2f} |"
            f" {rss:11.0f} |"
        )


if __name__ == "__main__":
    main()

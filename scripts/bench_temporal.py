"""Throughput of inference with memory: takes side by side (batch 8) against one sample at a time (batch 1).

``python scripts/bench_temporal.py [--runs 3] [--frames 12] [--max-new-tokens 20]``

On the ``tiny`` synthetic profile (4 takes, the first ``--frames`` test samples of each) and the tiny
model with random weights (``configs/tiny.yaml``), it times the generation of every sample
(``egoexor.infer.generate_takes`` / ``generate_shard``, model loaded once, no evaluation) for: no memory
(the plain loop), oracle and online memory, each at batch 1 and batch 8. The table shows the median and
minimum of ``--runs`` runs, samples/s, and the ratio of batch 8's throughput to batch 1's of the same mode,
measured in the same process; it also says whether batch 8 gave the same answers as batch 1.
With 4 takes, a batch of the walk holds at most 4 samples (one per take).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]

from egoexor import infer  # noqa: E402
from egoexor.config import DataConfig, ModelConfig, data_for_model  # noqa: E402
from egoexor.data.dataset import EgoExorDataset  # noqa: E402
from egoexor.data.make_samples import make_samples  # noqa: E402
from egoexor.data.merge_h5 import merge_files  # noqa: E402
from egoexor.data.synthetic import generate  # noqa: E402
from egoexor.data.tokenizer import build_tiny_tokenizer  # noqa: E402
from egoexor.model.build import build_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per configuration (default 3)")
    parser.add_argument("--frames", type=int, default=12, help="test samples per take (default 12)")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="answer length (default 20)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="bench_temporal_") as work:
        work = Path(work)
        dataset = generate(work / "data", "tiny", seed=0)
        merge_files(dataset.files, dataset.splits_file, work / "egoexor.h5")
        with h5py.File(work / "egoexor.h5", "r") as h5:
            samples, _ = make_samples(h5, "test", random.Random(42))
        samples = [
            s
            for take in sorted({s.take for s in samples}, key=lambda t: t.name)
            for s in [x for x in samples if x.take == take][: args.frames]
        ]
        tiny = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
        model_config = ModelConfig(**tiny["model"])
        tokenizer = build_tiny_tokenizer()
        tokenizer.pad_token = tokenizer.unk_token
        torch.manual_seed(0)
        model = build_model(model_config).eval()
        data = data_for_model(
            DataConfig(audio_encoder=None), model_config, tiny["model"]["vision_config"]["image_size"]
        )
        device = torch.device("cpu")

        def timed(mode: str, batch: int, run: int) -> tuple[float, dict[str, str]]:
            log = work / f"{mode}_{batch}_{run}.jsonl"
            ds = EgoExorDataset(list(samples), work / "egoexor.h5", tokenizer, data, "generate")
            start = time.perf_counter()
            if mode == "none":
                texts = infer.generate_shard(model, ds, log, batch, args.max_new_tokens, device, 0, progress=False)
            else:
                texts = infer.generate_takes(model, ds, log, batch, args.max_new_tokens, device, mode, progress=False)
            return time.perf_counter() - start, texts

        rows = []
        for mode in ("none", "oracle", "online"):
            seconds, answers = {}, {}
            for batch in (1, 8):
                for run in range(args.runs):
                    elapsed, answers[batch] = timed(mode, batch, run)
                    seconds.setdefault(batch, []).append(elapsed)
            rates = {b: len(samples) / statistics.median(s) for b, s in seconds.items()}
            for batch in (1, 8):
                same = "-" if batch == 1 else ("yes" if answers[8] == answers[1] else "NO")
                rows.append(
                    (
                        mode,
                        batch,
                        statistics.median(seconds[batch]),
                        min(seconds[batch]),
                        rates[batch],
                        rates[batch] / rates[1],
                        same,
                    )
                )

    print(
        f"{len(samples)} samples (4 takes), tiny model on CPU (1 thread), {args.max_new_tokens} new tokens, "
        f"{args.runs} runs\n"
    )
    header = f"{'memory':<8}{'batch':>6}{'median s':>10}{'min s':>8}{'samples/s':>11}{'x batch 1':>11}{'= batch 1':>11}"
    print(header)
    print("-" * len(header))
    for mode, batch, median, least, rate, ratio, same in rows:
        print(f"{mode:<8}{batch:>6}{median:>10.2f}{least:>8.2f}{rate:>11.2f}{ratio:>11.2f}{same:>11}")


if __name__ == "__main__":
    main()

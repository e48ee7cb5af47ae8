"""Prompt lengths with scene-graph memory, in tokens, against ``model_max_length``.

``python scripts/memory_prompt_lengths.py [--data DIR] [--split S] [--visual-tokens 1152] [--model-max-length 2048]``

On the ``realistic`` synthetic profile (generated, or ``--data DIR`` with its files), merged, the samples
of ``--split`` are made without memory and with each ``make_samples --temporal`` setting; each sample is
tokenised as training reads it (``EgoExorProcessor.tokens``: BOS, the vicuna prompt with ``--visual-tokens``
placeholders, the answer and EOS) with the llava-v1.5-7b tokenizer rebuilt from ``tests/data/llama-vocab``.
Prints, per setting, the p50 / p99 / max sequence length before the memory budget, the share of samples
over ``--model-max-length``, and p50 / p99 of the memory entries the budget drops.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from llama_tokenizer import write_tokenizer_folder  # noqa: E402

from egoexor import memory  # noqa: E402
from egoexor.config import DataConfig  # noqa: E402
from egoexor.data.make_samples import make_samples, with_memory  # noqa: E402
from egoexor.data.merge_h5 import merge_files  # noqa: E402
from egoexor.data.processor import EgoExorProcessor  # noqa: E402
from egoexor.data.synthetic import generate  # noqa: E402
from egoexor.data.tokenizer import load_tokenizer  # noqa: E402

SETTINGS = (("none", 0.0), ("short", 0.0), ("long", 0.0), ("longshort", 0.0), ("aug", 0.5))


def entries(question: str) -> int:
    if memory.MEMORY_START not in question:
        return 0
    text = question.split(memory.MEMORY_START)[1].split(memory.MEMORY_END)[0]
    return sum(len(part) for _, part in memory.parse_sections(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="folder with a realistic synthetic dataset")
    parser.add_argument("--split", default="train")
    parser.add_argument("--visual-tokens", type=int, default=1152, help="paper preset: 2 branches x 576")
    parser.add_argument("--model-max-length", type=int, default=2048)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="memory_lengths_") as work:
        work = Path(work)
        data = args.data
        if data is None:
            data = work / "data"
            generate(data, "realistic", seed=0, progress=True)
        inputs = sorted(p for p in data.glob("*.h5") if p.name != "splits.h5")
        merge_files(inputs, data / "splits.h5", work / "egoexor.h5", overwrite=True)
        tokenizer = load_tokenizer(write_tokenizer_folder(work / "tokenizer"))
        unbounded = EgoExorProcessor(tokenizer, DataConfig(audio_encoder=None, model_max_length=10**6))
        print(f"{'setting':<16}{'samples':>8}{'p50':>7}{'p99':>7}{'max':>7}{'over':>8}{'dropped p50':>13}{'p99':>6}")
        for temporal, drop in SETTINGS:
            rng = random.Random(42)
            with h5py.File(work / "egoexor.h5", "r") as h5:
                samples, _ = make_samples(h5, args.split, rng)
            rng.shuffle(samples)
            samples = with_memory(samples, temporal, drop, rng)
            lengths, dropped = [], []
            for sample in samples:
                lengths.append(len(unbounded.tokens(sample, args.visual_tokens, generating=False)["input_ids"]))
                if lengths[-1] > args.model_max_length:

                    def fits(question: str, sample=sample) -> bool:  # the processor's rule: answer included
                        item = unbounded.tokens(replace(sample, question=question), args.visual_tokens, False)
                        return len(item["input_ids"]) <= args.model_max_length

                    question = memory.fit_memory(sample.question, fits)
                    dropped.append(entries(sample.question) - entries(question))
                else:
                    dropped.append(0)
            lengths, dropped = np.array(lengths), np.array(dropped)
            name = f"{temporal}{f' drop {drop}' if drop else ''}"
            over = f"{(lengths > args.model_max_length).mean():.1%}"
            p50, p99 = np.percentile(lengths, [50, 99]).round().astype(int)
            d50, d99 = np.percentile(dropped, [50, 99]).round().astype(int)
            print(f"{name:<16}{len(lengths):>8}{p50:>7}{p99:>7}{lengths.max():>7}{over:>8}{d50:>13}{d99:>6}")


if __name__ == "__main__":
    main()

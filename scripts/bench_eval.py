"""Time ``egoexor.evaluate.evaluate`` on synthetic frames: parsing + per-pair scoring + reports, no file I/O.

``python scripts/bench_eval.py [--frames 100000] [--repeats 3] [--seed 0]``

Samples and predictions are generated in memory from the vocabulary with a seeded RNG, sized like
EgoExOR (about 6.7 triplets per frame, ~8 entities in play, a fifth of the frames without ground
truth); predictions drop, change and add triplets. Each protocol is timed on text predictions and
on the reference's list format, with the default bootstrap confidence interval (1000 resamples of
the takes) and, for text, without it (``bootstrap 0``: the difference is the interval's cost); the
table shows the median (and minimum) of the repeats. A last line times the interval alone (the resamples
of the per-take confusion matrices of the 100k-frame result), which the end-to-end rows cannot resolve
on a busy machine.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np

from egoexor import scene_graph, vocab
from egoexor.evaluate import evaluate
from egoexor.metrics import BOOTSTRAP_SAMPLES, PROTOCOLS, Counts, macro_f1_interval, surgery_type

_TAKES = [("MISS", procedure, take) for procedure in range(1, 5) for take in range(1, 5)] + [
    ("Ultrasound", procedure, take) for procedure in range(1, 6) for take in range(1, 5)
]


def synthetic(frames: int, seed: int) -> tuple[list[dict], dict[str, str], dict[str, list[list[str]]]]:
    """Samples, text predictions and the same predictions as [subject, predicate, object] lists."""
    rng = random.Random(seed)
    samples, texts, lists = [], {}, {}
    for frame in range(frames):
        surgery_type, procedure_id, take_id = rng.choice(_TAKES)
        pool = rng.sample(vocab.ENTITIES, 8)
        count = 0 if rng.random() < 0.2 else rng.randint(1, 16)
        gt = [(*rng.sample(pool, 2), rng.choice(vocab.PREDICATES)) for _ in range(count)]
        pred = [
            t if rng.random() < 0.8 else (t[0], t[1], rng.choice(vocab.PREDICATES)) for t in gt if rng.random() < 0.9
        ]
        pred += [(*rng.sample(pool, 2), rng.choice(vocab.PREDICATES)) for _ in range(rng.randint(0, 2))]
        sample_id = f"{surgery_type}_{procedure_id}_{take_id}_{frame}_0"
        indices = {"surgery_type": surgery_type, "procedure_id": procedure_id, "take_id": take_id, "frame_idx": frame}
        conversations = [{"from": "human", "value": "<image>\n"}, {"from": "gpt", "value": scene_graph.serialize(gt)}]
        samples.append({"id": sample_id, "timepoint": frame, "hdf5_indices": indices, "conversations": conversations})
        texts[sample_id] = scene_graph.serialize(pred)
        lists[sample_id] = [[vocab.answer_form(s), vocab.answer_form(p), vocab.answer_form(o)] for s, o, p in pred]
    return samples, texts, lists


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100_000, help="number of synthetic frames (default 100000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="RNG seed of the synthetic data (default 0)")
    args = parser.parse_args()

    samples, texts, lists = synthetic(args.frames, args.seed)
    header = "protocol  predictions  bootstrap   frames      pairs  median s   min s  frames/s"
    print(header)
    print("-" * len(header))
    for protocol in PROTOCOLS:
        for name, predictions, bootstrap in (
            ("text", texts, BOOTSTRAP_SAMPLES),
            ("text", texts, 0),
            ("lists", lists, BOOTSTRAP_SAMPLES),
        ):
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                result = evaluate(predictions, samples, protocol, bootstrap=bootstrap)
                times.append(time.perf_counter() - start)
            median = statistics.median(times)
            print(
                f"{protocol:8}  {name:11}  {bootstrap:>9}  {args.frames:>7}  {result['overall']['pairs']:>9}  "
                f"{median:>8.2f}  "
                f"{min(times):>6.2f}  {args.frames / median:>8.0f}"
            )

    strata: dict[str, list[Counts]] = {}
    for take, group in result["takes"].items():
        strata.setdefault(surgery_type(take), []).append(Counts(relation=np.array(group["confusion_matrix"])))
    times = []
    for _ in range(max(args.repeats, 5)):
        start = time.perf_counter()
        interval = macro_f1_interval(list(strata.values()))
        times.append(time.perf_counter() - start)
    print(
        f"\nbootstrap alone ({BOOTSTRAP_SAMPLES} resamples of {interval['takes']} takes): "
        f"median {statistics.median(times) * 1000:.1f} ms, min {min(times) * 1000:.1f} ms; "
        f"{protocol} macro F1 {result['overall']['macro']['f1-score']:.4f}, "
        f"95% CI {interval['low']:.4f}-{interval['high']:.4f}"
    )


if __name__ == "__main__":
    main()

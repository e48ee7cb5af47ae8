"""Does memory help where history matters? ``python -m egoexor.memory_benchmark [--out DIR] [--epochs N] [--overwrite]``

The ``history`` synthetic profile (:mod:`egoexor.data.synthetic`: a scalpel held out of view between the frame
it is picked up and the frame it is put down) -> ``egoexor-merge-h5`` -> samples (train with memory in
MM-OR's mix, ``make_samples --temporal aug``, half of them without; test without) -> the tiny model trained
on the CPU (``configs/tiny.yaml``) -> ``egoexor.infer`` on the test split three times, without memory, with the
ground truth's (``--temporal oracle``) and with the model's own earlier answers (``--temporal online``) -> one
table, the runs side by side: the held scalpel's accuracy on the frames where it follows from earlier frames
alone (:func:`egoexor.data.synthetic.held_accuracy`), the evaluation's macro F1 and triplet F1 over every
relation, and two bounds of the held accuracy: the majority class (the best a model without memory can
expect, the frame's inputs telling nothing) and the previous test frame's state (what the oracle memory's
last change says, the best a model with it can expect).

``--out`` (default ``outputs/memory_benchmark``) follows the overwrite rule of :mod:`egoexor.cli` and appears
only when every stage is done, as the demo's. About two to three minutes on 2 CPU cores.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from egoexor import cli

COMMAND = "egoexor.memory_benchmark"
#: Epochs of the tiny model: the oracle run reaches the memory's bound at 10 (at 6 it does not).
EPOCHS = 10
MODES = ("none", "oracle", "online")


def _bounds(dataset, samples) -> tuple[float, float]:
    """The majority class of the held state on the history-dependent test frames, and how often the take's
    previous test frame (the oracle memory's last change) has the same state."""
    from egoexor.data.synthetic import HOLDING, history_dependent

    previous: dict = {}
    held_now, copied = [], []
    for sample in sorted(samples, key=lambda s: (s.take.name, s.frame)):
        state = dataset.held_states[sample.take][sample.frame]
        held = state in HOLDING
        if history_dependent(state):
            held_now.append(held)
            copied.append(previous.get(sample.take, False) == held)
        previous[sample.take] = held
    share = float(np.mean(held_now))
    return max(share, 1 - share), float(np.mean(copied))


def _pipeline(work: Path, seed: int, epochs: int) -> dict:
    from egoexor.config import parse_train_args
    from egoexor.data import synthetic
    from egoexor.data.make_samples import write_samples
    from egoexor.data.merge_h5 import merge_files
    from egoexor.demo import CONFIG
    from egoexor.infer import infer
    from egoexor.train import train

    dataset = synthetic.generate(work / "data", "history", seed=seed)
    merged = work / "egoexor.h5"
    merge_files(dataset.files, dataset.splits_file, merged)
    samples = work / "samples"
    train_file = write_samples(merged, "train", samples, name="train.json", temporal="aug", tokenizer=None)
    test = write_samples(merged, "test", samples, name="test.json", tokenizer=None)
    flags = ["--config", CONFIG, "--data_path", train_file.samples_file, "--hdf5_path", merged, "--seed", seed]
    flags += ["--output_dir", work / "run", "--num_train_epochs", epochs, "--disable_tqdm", True, "--logging_steps", 50]
    start = time.perf_counter()
    train(parse_train_args([str(flag) for flag in flags]))
    result = {"training_s": time.perf_counter() - start, "n_train": len(train_file.samples), "epochs": epochs}
    for mode in MODES:
        inference = infer(
            work / "run", merged, test.samples_file, work / mode, protocol="gt", max_new_tokens=48, temporal=mode
        )
        right, total = synthetic.held_accuracy(dataset, test.samples, inference.texts)
        overall = inference.metrics["overall"]
        result[mode] = {
            "held_accuracy": right / total,
            "n_history_dependent": total,
            "macro_f1": overall["macro"]["f1-score"],
            "triplet_f1": overall["triplet"]["f1-score"],
        }
    result["majority"], result["memory_bound"] = _bounds(dataset, test.samples)
    return result


def run(out: Path, seed: int = 0, epochs: int = EPOCHS, overwrite: bool = False) -> dict:
    """Every stage into ``out`` (absent, empty, or an earlier benchmark with ``overwrite``); returns the scores:
    per mode of :data:`MODES` the held accuracy and the F1s, the two bounds, the training time."""
    out = cli.check_output(out, overwrite=overwrite, owner=COMMAND, flag="--out")
    with cli.output_folder(out, COMMAND) as work:
        return _pipeline(work, seed, epochs)


def table(result: dict) -> str:
    """The runs side by side, as Markdown."""
    rows = [
        "| memory | held scalpel, history-dependent frames | macro F1 (gt) | triplet F1 |",
        "|---|---|---|---|",
    ]
    for mode in MODES:
        r = result[mode]
        rows.append(f"| {mode} | {r['held_accuracy']:.3f} | {r['macro_f1']:.3f} | {r['triplet_f1']:.3f} |")
    n = result["none"]["n_history_dependent"]
    rows.append(
        f"\n{n} history-dependent test frames; majority class {result['majority']:.3f} (bound without memory), "
        f"previous test frame's state {result['memory_bound']:.3f} (bound with oracle memory); training "
        f"{result['training_s']:.0f} s, {result['n_train']} samples x {result['epochs']} epochs"
    )
    return "\n".join(rows)


def _parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(
        prog=f"python -m {COMMAND}",
        description="Train the tiny model on the history synthetic profile and score the held-out split without "
        "memory, with the ground truth's (infer --temporal oracle) and with its own (--temporal online), side by side.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("outputs/memory_benchmark"),
        help="folder for everything it writes (default: %(default)s)",
    )
    parser.add_argument("--seed", type=cli.int_flag(0), default=0, help="seed of the data and of training")
    parser.add_argument("--epochs", type=cli.int_flag(1), default=EPOCHS, help="training epochs (default: %(default)s)")
    cli.add_overwrite_flag(parser)
    return parser


def _run(args) -> int:
    print(table(run(args.out, args.seed, args.epochs, args.overwrite)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for bad input, 130 after Ctrl-C)."""
    from egoexor import infer

    return cli.run(COMMAND, lambda: _run(_parser().parse_args(argv)), errors=infer.ERRORS)


if __name__ == "__main__":
    sys.exit(main())

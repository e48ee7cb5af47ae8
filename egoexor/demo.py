"""The whole pipeline on a laptop: ``python -m egoexor.demo [--out DIR]``.

Synthetic EgoExOR-format data (``tiny`` profile) -> ``egoexor-merge-h5`` -> training/test samples ->
training of the tiny model on the CPU (``configs/tiny.yaml``) -> ``egoexor.infer`` on the held-out
test split -> evaluation. Prints each stage with its time and the final metrics table; about five to
ten minutes on 2 CPU cores, no GPU, no download.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def _stage(name: str, run: Callable[[], object]) -> object:
    print(f"== {name} ...", flush=True)
    start = time.perf_counter()
    result = run()
    print(f"== {name}: done in {time.perf_counter() - start:.1f} s", flush=True)
    return result


def run(out: Path, seed: int = 0, epochs: int | None = None, config: Path = CONFIG, frames: int = 120) -> dict:
    """Run every stage into ``out``; returns the paths it wrote and the metrics.

    ``frames`` per take (the tiny profile's own are few): a few hundred training frames let the tiny
    model learn the scene graphs from the images instead of memorising single frames.
    """
    from egoexor import infer, train
    from egoexor.config import parse_train_args
    from egoexor.data import make_samples
    from egoexor.data.merge_h5 import merge_files
    from egoexor.data.synthetic import generate

    if not config.is_file():
        raise FileNotFoundError(f"{config}: missing; the demo reads it from the source checkout (pip install -e .)")
    out.mkdir(parents=True, exist_ok=True)
    dataset = _stage(f"synthetic data (tiny profile, {frames} frames per take)",
                     lambda: generate(out / "data", "tiny", seed=seed, n_frames=frames))
    merged = out / "egoexor.h5"
    _stage("merge", lambda: merge_files(dataset.files, dataset.splits_file, merged, overwrite=True))

    def samples() -> dict[str, Path]:
        files = {split: out / "samples" / f"{split}.json" for split in ("train", "validation", "test")}
        for split, path in files.items():
            argv = ["--hdf5", str(merged), "--split", split, "--n-permutations", "1", "--out",
                    str(path.parent), "--name", path.name, "--no-token-freqs"]  # fmt: skip
            if make_samples.main(argv) != 0:
                raise RuntimeError(f"sample generation failed for the {split} split")
        return files

    files = _stage("samples", samples)
    run_dir = out / "run"
    flags = ["--config", str(config), "--data_path", str(files["train"]), "--hdf5_path", str(merged),
             "--output_dir", str(run_dir), "--seed", str(seed), "--disable_tqdm", "True", "--logging_steps", "50"]
    if epochs is not None:
        flags += ["--num_train_epochs", str(epochs)]

    def training() -> None:
        trainer = train.build_training(parse_train_args(flags))
        trainer.train()
        trainer.save_model()
        trainer.save_state()

    _stage("training (tiny model, CPU)", training)
    evaluation = out / "evaluation"
    code = _stage("inference + evaluation (held-out test split)", lambda: infer.main([
        "--checkpoint", str(run_dir), "--hdf5", str(merged), "--samples", str(files["test"]), "--out",
        str(evaluation), "--protocol", "gt", "--max_new_tokens", "64", "--overwrite",
    ]))  # fmt: skip
    if code != 0:
        raise RuntimeError(f"inference failed with exit code {code}")
    metrics = json.loads((evaluation / "metrics.json").read_text())
    return {"checkpoint": run_dir, "samples": files, "hdf5": merged, "evaluation": evaluation, "metrics": metrics}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m egoexor.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="folder for everything it writes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of training")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: configs/tiny.yaml's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    result = run(args.out, args.seed, args.epochs)
    overall = result["metrics"]["overall"]
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; held-out macro F1 (gt protocol) "
          f"{overall['macro']['f1-score']:.3f}, triplet F1 {overall['triplet']['f1-score']:.3f}; "
          f"report: {result['evaluation'] / 'report.md'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

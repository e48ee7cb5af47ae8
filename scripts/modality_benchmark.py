"""The modality benchmark of docs/modality_benchmark.md: which inputs reach the LLM, per ``fusion_output``.

    python scripts/modality_benchmark.py --out bench/ [--outputs first_view,append,summary] [--seeds 0,1,2]
                                         [--choice_outputs first_view,summary] [--epochs 10] [--frames 40]
                                         [--learning_rate R]

On the synthetic ``parts`` profile (seed 0; each input alone sets one triplet's predicate), it trains the tiny
model (``configs/tiny.yaml``, gaze and hands read at scale 32, the tiny random CLAP for audio) once per fusion
output and seed, then measures each trained model on the first ``--frames`` held-out frames (validation then
test):

* the probe (``python -m egoexor.probe``): a linear probe per input on the LLM-input tokens, on every
  held-out frame;
* the teacher-forced predicate choice (``python -m egoexor.ablate --metric choice``) with each input removed
  in turn, for the fusion outputs in ``--choice_outputs``.

Every stage's output stays under ``--out`` and a finished one is reused, so a second run only prints the
tables again. The tables: probe accuracy per input and fusion output (mean over seeds ± the standard error
over seeds, or the probe's own over folds for one seed), and per fusion output the 7 x 7 choice table (row:
the input removed; column: the input's own predicate group), mean ± standard error over seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ("ego_frames", "gaze", "hands", "exo_frames", "ultrasound", "audio", "point_cloud")


def egoexor(*argv: str) -> None:
    """One egoexor command in its own process (as a user runs it); stops the benchmark if it fails."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "egoexor", *argv], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"egoexor {' '.join(argv)} failed:\n{result.stderr[-3000:]}")
    print(f"  egoexor {argv[0]}: {time.perf_counter() - started:.0f} s", flush=True)


def prepare(out: Path, frames: int) -> tuple[Path, Path, Path, Path]:
    """The parts data, merged; train samples; the first ``frames`` held-out samples; the tiny CLAP."""
    data = out / "data"
    merged, held_out = data / "parts.h5", data / "held_out.json"
    if not held_out.is_file():
        from egoexor.data.audio import save_tiny_clap
        from egoexor.data.make_samples import write_samples
        from egoexor.data.merge_h5 import merge_files
        from egoexor.data.synthetic import generate

        dataset = generate(data / "raw", "parts", seed=0, overwrite=True)
        merge_files(dataset.files, dataset.splits_file, merged, overwrite=True)
        save_tiny_clap(data / "clap")
        records = []
        for split in ("train", "validation", "test"):
            summary = write_samples(merged, split, data / "samples", tokenizer=None, overwrite=True)
            if split != "train":
                records += json.loads(summary.samples_file.read_text())
        held_out.with_name("held_out_all.json").write_text(json.dumps(records))
        held_out.write_text(json.dumps(records[:frames]))
    train = next((data / "samples").glob("train_*.json"))
    return merged, train, held_out, data / "clap"


def trained(
    out: Path, output: str, seed: int, epochs: int, rate: float | None, merged: Path, train: Path, clap: Path
) -> Path:
    """The run of one fusion output and seed (``rate``: the learning rate, None for the config's)."""
    run = out / "runs" / (f"{output}-seed{seed}" + (f"-lr{rate:g}" if rate is not None else ""))
    if not (run / "egoexor_config.json").is_file():
        print(f"training {run.name}", flush=True)
        egoexor(
            "train", "--config", str(ROOT / "configs" / "tiny.yaml"), "--data_path", str(train),
            "--hdf5_path", str(merged), "--output_dir", str(run), "--overwrite_output_dir",
            "--fusion_output", output, "--seed", str(seed), "--init_seed", str(seed),
            "--gaze_scale", "32", "--hand_scale", "32", "--audio_encoder", str(clap),
            "--num_train_epochs", str(epochs), "--logging_steps", "50",
            *(["--learning_rate", str(rate)] if rate is not None else []),
        )  # fmt: skip
    return run


def measured(run: Path, what: str, merged: Path, held_out: Path) -> dict:
    folder = run.parent.parent / what / run.name
    if what == "probe":
        result = folder / "probe.json"
        if not result.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            every = str(held_out.with_name("held_out_all.json"))
            egoexor("probe", "--checkpoint", str(run), "--hdf5", str(merged), "--samples", every, "--json", str(result))
    else:
        result = folder / "ablation.json"
        if not result.is_file():
            egoexor(
                "ablate", "--checkpoint", str(run), "--hdf5", str(merged), "--samples", str(held_out),
                "--out", str(folder), "--metric", "choice", "--modalities", ",".join(INPUTS), "--num_workers", "0",
            )  # fmt: skip
    return json.loads(result.read_text())


def mean_se(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def cell(values: list[float], own_se: float | None = None) -> str:
    mean, se = mean_se(values)
    se = own_se if math.isnan(se) and own_se is not None else se
    return f"{mean:.2f}" + ("" if se is None or math.isnan(se) else f" ± {se:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--outputs", default="first_view,append,summary")
    parser.add_argument("--choice_outputs", default="first_view,summary")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--learning_rate", type=float, default=None, help="default: configs/tiny.yaml's")
    parser.add_argument("--frames", type=int, default=40)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    outputs, seeds = args.outputs.split(","), [int(s) for s in args.seeds.split(",")]
    merged, train, held_out, clap = prepare(args.out, args.frames)
    probes: dict[str, list[dict]] = {}
    choices: dict[str, list[dict]] = {}
    for output in outputs:
        for seed in seeds:
            run = trained(args.out, output, seed, args.epochs, args.learning_rate, merged, train, clap)
            probes.setdefault(output, []).append(measured(run, "probe", merged, held_out))
            if output in args.choice_outputs.split(","):
                choices.setdefault(output, []).append(measured(run, "choice", merged, held_out))

    print(f"\nProbe accuracy on the LLM-input tokens ({len(seeds)} seed(s); ± standard error)\n")
    print("| input | " + " | ".join(outputs) + " |\n|---" + "|---" * len(outputs) + "|")
    for name in INPUTS:
        cells = []
        for output in outputs:
            rows = [next(r for r in p["rows"] if r["input"] == name) for p in probes[output]]
            cells.append(cell([r["accuracy"] for r in rows], rows[0]["se"] if len(rows) == 1 else None))
        print(f"| {name} | " + " | ".join(cells) + " |")
    for output, runs in choices.items():
        print(f"\nTeacher-forced choice, {output} ({len(runs)} seed(s)): row = input removed, column = its part\n")
        print("| removed | " + " | ".join(INPUTS) + " |\n|---" + "|---" * len(INPUTS) + "|")
        for index, removed in enumerate(("none", *INPUTS)):
            cells = []
            for name in INPUTS:
                shares = [run["rows"][index]["choice"][name] for run in runs]
                shares = [s for s in shares if s is not None]
                cells.append(
                    cell([s["accuracy"] for s in shares], shares[0]["se"] if len(shares) == 1 else None)
                    if shares
                    else "-"
                )
            print(f"| {removed} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

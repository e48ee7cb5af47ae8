"""What the configured model holds and how much GPU memory training and inference need:
``python -m egoexor.inspect_model --config configs/egoexor.yaml --meta [training flags]``.

Prints, in Markdown:

1. a table per part of the model: parameters, trainable parameters, dtype and bytes as trained. With
   ``--meta`` the model is built on the meta device from known architectures (no weights, no download, no
   GPU; bytes of 4/8-bit weights calculated, :mod:`egoexor.model.footprint`); without it the model is
   built for real as training would build it and the bytes are measured from its tensors;
2. the memory plan of one GPU for training (per-device batch and ``model_max_length`` of the
   configuration) for the ``paper`` and ``reference`` presets, on one GPU or DDP and under ZeRO-2 over
   ``--gpus`` GPUs, and which of 24, 40 and 80 GiB it fits;
3. the plan for ``egoexor.infer`` (``--inference_batch_size``, ``--max_new_tokens``) with 16-bit and
   4-bit LLM weights;
4. the FLOPs of one training sample.

Every number of 2-4 is calculated (:mod:`egoexor.memory_plan` states the formulas and assumptions); none
is measured on a GPU. Any flag of ``python -m egoexor.train`` changes the configuration inspected, e.g.
``--trainable_dtype bfloat16`` or ``--per_device_train_batch_size 1``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import replace

from egoexor import cli
from egoexor.config import ConfigError, ModelConfig, parse_train_args
from egoexor.memory_plan import (
    GIB,
    GPU_SIZES,
    InferenceWorkload,
    Shapes,
    Term,
    TrainingWorkload,
    inference_terms,
    peak,
    training_flops_per_sample,
    training_terms,
)
from egoexor.model.footprint import (
    PartFootprint,
    UnknownArchitecture,
    build_on_meta,
    footprint,
    footprint_table,
    full_size_config,
    gib,
)
from egoexor.model.known_configs import KNOWN_AUDIO_ENCODERS

COMMAND = "egoexor.inspect_model"
PRESETS = ("paper", "reference")


def _parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(
        prog=f"python -m {COMMAND}",
        description=__doc__.splitlines()[0],
        epilog="Other flags are those of python -m egoexor.train (--config, --trainable_dtype, ...).",
    )
    parser.add_argument(
        "--meta",
        action="store_true",
        help="build on the meta device from known architectures (no weights, no download)",
    )
    parser.add_argument("--gpus", type=cli.int_flag(1), default=8, help="GPUs of the ZeRO-2 plan (default 8)")
    parser.add_argument(
        "--inference_batch_size",
        type=cli.int_flag(1),
        default=16,
        help="batch of the inference plan (egoexor.infer's default 16)",
    )
    parser.add_argument(
        "--max_new_tokens",
        type=cli.int_flag(1),
        default=300,
        help="new tokens of the inference plan (egoexor.infer's default 300)",
    )
    return parser


def deepspeed_weight_bytes(parts: dict[str, PartFootprint]) -> float:
    """Weights as DeepSpeed bf16 holds them: the module cast to bf16, 4/8-bit weights unchanged."""
    return sum(row.bytes if row.dtypes <= {"nf4", "int8"} else 2 * row.parameters for row in parts.values())


def _plan_table(columns: dict[str, list[Term]]) -> str:
    """Terms as rows, one column per plan, then the peak and the GPU sizes it fits."""
    names = list(dict.fromkeys(t.name for terms in columns.values() for t in terms))
    lines = ["| calculated | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name in names:
        cells = [next((gib(t.bytes) for t in terms if t.name == name), "") for terms in columns.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    peaks = [peak(terms) for terms in columns.values()]
    lines.append("| **peak** | " + " | ".join(f"**{gib(p)}**" for p in peaks) + " |")
    fits = [", ".join(f"{size}" for size in GPU_SIZES if p <= size * GIB) or "none" for p in peaks]
    lines.append("| fits GPUs of (GiB) | " + " | ".join(fits) + " |")
    return "\n".join(lines)


def _flops_table(shapes: Shapes, seq: int, workload: TrainingWorkload) -> str:
    flops = training_flops_per_sample(shapes, seq, workload.ego_views, workload.exo_views)
    lines = ["| calculated, per sample | TFLOPs |", "|---|---:|"]
    forward = [(f"{name} forward", value) for name, value in flops.items() if name not in ("forward", "training")]
    lines += [f"| {name} | {value / 1e12:.2f} |" for name, value in forward]
    lines.append(f"| total forward | {flops['forward'] / 1e12:.2f} |")
    lines.append(f"| training (forward + backward + recomputation) | {flops['training'] / 1e12:.2f} |")
    return "\n".join(lines)


def _plans(config: ModelConfig, work: TrainingWorkload, gpus: int, inference: InferenceWorkload) -> tuple[dict, dict]:
    """Training and inference plans of both presets (meta builds of ``config``), keyed by column title."""
    training, infer = {}, {}
    for preset in PRESETS:
        model, full = build_on_meta(replace(config, preset=preset)), full_size_config(replace(config, preset=preset))
        parts = footprint(model, full)
        shapes, trainable = Shapes.from_config(full), sum(r.trainable for r in parts.values())
        weights = sum(r.bytes for r in parts.values())
        training[f"{preset}, 1 GPU / DDP"] = training_terms(shapes, weights, trainable, work)
        zero2 = replace(work, zero2_gpus=gpus)
        training[f"{preset}, ZeRO-2 x {gpus}"] = training_terms(shapes, deepspeed_weight_bytes(parts), trainable, zero2)
        for bits in (16, 4):
            bits_config = replace(full, bits=bits)
            weights = sum(r.bytes for r in footprint(model, bits_config).values())
            infer[f"{preset}, {bits}-bit LLM"] = inference_terms(Shapes.from_config(bits_config), weights, inference)
    return training, infer


def report(config: ModelConfig, work: TrainingWorkload, gpus: int, inference: InferenceWorkload, meta: bool) -> str:
    """The four sections of the module docstring as one Markdown text."""
    from egoexor.model.build import build_model

    if meta:
        parts, how = footprint(build_on_meta(config), full_size_config(config)), "calculated on the meta device"
    else:
        parts, how = footprint(build_model(config), config), "measured on the built model"
    training, infer = _plans(config, work, gpus, inference)
    views = f"{work.ego_views} ego + {work.exo_views} exo views"
    inference_views = f"{inference.ego_views} ego + {inference.exo_views} exo views"
    sections = [
        f"## Parameters and bytes as trained ({config.preset} preset, {how})",
        footprint_table(parts),
        f"## Training memory per GPU (batch {work.batch}, sequence {work.seq}, {views}, bf16 autocast, "
        "gradient checkpointing, AdamW)",
        _plan_table(training),
        f"## Inference memory (batch {inference.batch}, prompt <= {inference.prompt} + {inference.new_tokens} "
        f"new tokens, {inference_views})",
        _plan_table(infer),
        "## Compute",
        _flops_table(Shapes.from_config(full_size_config(config)), work.seq, work),
        "All plan numbers are calculated (egoexor/memory_plan.py states formulas and assumptions); "
        "no GPU has measured them.",
    ]
    return "\n\n".join(sections) + "\n"


def _run(argv: list[str]) -> int:
    args, rest = _parser().parse_known_args(argv)
    setup = parse_train_args(rest)
    audio = setup.data.audio_encoder
    if audio in KNOWN_AUDIO_ENCODERS and KNOWN_AUDIO_ENCODERS[audio] != setup.model.audio_dim:
        raise ConfigError(f"audio_dim {setup.model.audio_dim}: {audio} embeds audio in {KNOWN_AUDIO_ENCODERS[audio]}")
    inference = InferenceWorkload(
        batch=args.inference_batch_size, new_tokens=args.max_new_tokens, prompt=setup.data.model_max_length
    )
    work = TrainingWorkload(batch=setup.trainer.per_device_train_batch_size, seq=setup.data.model_max_length)
    text = report(setup.model, work, args.gpus, inference, args.meta)
    print(text, end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return cli.run(COMMAND, lambda: _run(argv), errors=(ConfigError, UnknownArchitecture))


if __name__ == "__main__":
    sys.exit(main())

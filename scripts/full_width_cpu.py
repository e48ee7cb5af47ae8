"""The model at full width on a CPU: one training step and one generation step, with every modality.

    python scripts/full_width_cpu.py [--json report.json]

CLIP ViT-L/14-336 at full width and depth, the fusion encoders, encoders and projector at full width,
PTv3 at the reference's size, and the LLM at LLaMA-7B width (4096 wide, 32 heads, 11008 MLP, vocabulary
32000) with 2 of its 32 layers, in 4-bit NF4 (bitsandbytes' CPU kernels), LoRA r 128 on every projection:
all with random weights, as ``egoexor.model.build`` builds them from configs. One sample of the synthetic
dataset (tiny profile) with one ego view, one exo view, gaze, hands, audio (through a small random CLAP
giving the 512-number embedding) and a point cloud goes through the data pipeline at CLIP's 336 px and
576 tokens per branch, then one AdamW step of the recipe's training forward (bf16 autocast, as
``--bf16 True``; gradient checkpointing) and a greedy generation of two tokens (a prefill and one cached
step).

It proves that the real shapes and dtypes flow, and measures what a CPU can: time, peak RSS, the bytes
of the NF4 weights against :mod:`egoexor.model.footprint`'s formula, the activations kept for backward
against :mod:`egoexor.memory_plan`'s formulas, and the residual-stream dtype of the LLM. The FLOPs per
sample of the full model are calculated. ``tests/test_full_width.py`` runs it and checks the report.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from egoexor.config import DataConfig, ModelConfig
from egoexor.memory_plan import Shapes, training_flops_per_sample
from egoexor.model.footprint import build_on_meta, footprint, full_size_config
from egoexor.model.known_configs import CLIP_VIT_L_14_336, LLAVA_V15_7B_LLM

#: The LLM at full width, 2 of its 32 layers.
LLM_LAYERS = 2
CONFIG = ModelConfig(
    model_name_or_path=None,
    llm_config={**LLAVA_V15_7B_LLM, "num_hidden_layers": LLM_LAYERS},
    vision_tower=None,
    vision_config=CLIP_VIT_L_14_336,
    bits=4,
)


def synthetic_batches(work: Path) -> tuple[dict, dict]:
    """A training batch and a generation batch of one full-modality sample, one ego and one exo view."""
    import h5py

    from egoexor.data.audio import save_tiny_clap
    from egoexor.data.dataset import EgoExorDataset
    from egoexor.data.layout import TakeKey
    from egoexor.data.make_samples import make_samples
    from egoexor.data.merge_h5 import merge_files
    from egoexor.data.processor import Collator
    from egoexor.data.synthetic import generate
    from egoexor.data.tokenizer import build_tiny_tokenizer

    dataset = generate(work / "data", "tiny", seed=0, n_frames=12)
    merged = work / "egoexor.h5"
    merge_files(dataset.files, dataset.splits_file, merged)
    with h5py.File(merged) as h5:
        samples, _ = make_samples(h5, "train", random.Random(0))
    sample = next(s for s in samples if s.take == TakeKey("MISS", 1, 1) and {"audio", "point_cloud"} <= s.modalities)
    tokenizer = build_tiny_tokenizer()
    tokenizer.pad_token = tokenizer.unk_token
    clap = save_tiny_clap(work / "clap")
    data = DataConfig(image_size=336, tokens_per_branch=576, audio_encoder=str(clap), max_exo_views=1)
    batches = []
    for mode, side in (("train", "right"), ("generate", "left")):
        items = EgoExorDataset([sample], merged, tokenizer, data, mode)
        batch = Collator(tokenizer.pad_token_id, side)([items[0]])
        for key in ("ego_images", "ego_view_mask", "gaze", "gaze_mask", "hands", "hand_mask"):
            batch[key] = batch[key][:, :1]  # the first ego view (and its gaze and hand rows) only
        batches.append(batch)
    return batches[0], batches[1]


class SavedTensorMeter:
    """Bytes of the tensors autograd keeps for backward while given modules run, by name (weights
    excluded, each storage once; bf16 copies of trainable weights included). Checkpointed LLM layers keep
    none: they are measured alone (:func:`llm_layer_bytes`)."""

    def __init__(self, model: nn.Module, parts: dict[str, list[nn.Module]]) -> None:
        self.parts = parts
        self.bytes = dict.fromkeys(parts, 0)
        self._current: list[str] = []
        self._seen: set[int] = set()
        self._weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        pointer = tensor.untyped_storage().data_ptr()
        if self._current and pointer not in self._weights and pointer not in self._seen:
            self._seen.add(pointer)
            self.bytes[self._current[-1]] += tensor.untyped_storage().nbytes()
        return tensor

    def _leave(self) -> None:
        self._current.pop()

    @contextmanager
    def measuring(self):
        handles = []
        for part, modules in self.parts.items():
            for module in modules:
                handles.append(module.register_forward_pre_hook(lambda *_, p=part: self._current.append(p)))
                handles.append(module.register_forward_hook(lambda *_: self._leave()))
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor):
                yield self
        finally:
            for handle in handles:
                handle.remove()


def _measured_parts(model: nn.Module) -> dict[str, list[nn.Module]]:
    from transformers import BertModel

    fusion = [module for module in model.image_pooler.children() if isinstance(module, BertModel)]
    return {"CLIP": [model.vision_tower], "fusion": fusion, "projector": [model.mm_projector]}


def _weight_copies(modules: list[nn.Module]) -> int:
    """Bytes of the bf16 copies autocast makes of float32 trainable matrices (and keeps for backward)."""
    return sum(2 * p.numel() for m in modules for p in m.parameters() if p.requires_grad and p.dim() == 2)


def train_step(model: nn.Module, batch: dict) -> dict:
    """One AdamW step as the Trainer runs it with the recipe's flags (bf16 autocast, gradient
    checkpointing); what it measured."""
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    before = {name: p.detach().clone() for name, p in trainable.items() if p.numel() <= 2**22}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-4, foreach=False)
    model.train()
    model.activation_checkpointing_enable()
    meter = SavedTensorMeter(model, _measured_parts(model))
    residual = []
    first_layer = model.language_model.get_base_model().model.layers[0]
    hook = first_layer.register_forward_pre_hook(
        lambda _, args, kwargs: residual.append(kwargs.get("hidden_states", args[0] if args else None).dtype),
        with_kwargs=True,
    )
    start = time.perf_counter()
    with meter.measuring(), torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(**batch)
    hook.remove()
    output["loss"].backward()
    no_gradient = [name for name, p in trainable.items() if p.grad is None]
    zero_gradient = [name for name, p in trainable.items() if p.grad is not None and not p.grad.any()]
    optimizer.step()
    seconds = time.perf_counter() - start
    unchanged = [name for name, p in before.items() if torch.equal(p, trainable[name].detach())]
    return {
        "train_step_s": seconds,
        "loss": float(output["loss"].detach()),
        "logits_shape": list(output["logits"].shape),
        "logits_dtype": str(output["logits"].dtype).removeprefix("torch."),
        "residual_stream_dtype": str(residual[0]).removeprefix("torch."),
        "sequence_length": int(batch["input_ids"].shape[1]),
        "saved_bytes": meter.bytes,
        "no_gradient": no_gradient,
        "zero_gradient": zero_gradient,
        "unchanged_after_step": unchanged,
        "trainable_tensors": len(trainable),
    }


def llm_layer_bytes(model: nn.Module, tokens: int = 256) -> float:
    """Bytes one LLM layer keeps for backward per token, measured without checkpointing (LoRA weight copies
    excluded), under bf16 autocast, on float32 hidden states as the model feeds them."""
    model.language_model.gradient_checkpointing_disable()  # checkpointed, a layer keeps nothing to measure
    base = model.language_model.get_base_model().model
    layer = base.layers[0]
    meter = SavedTensorMeter(model, {"layer": [layer]})
    hidden = torch.randn(1, tokens, base.config.hidden_size, requires_grad=True)
    positions = torch.arange(tokens)[None]
    layer.train()
    with meter.measuring(), torch.autocast("cpu", dtype=torch.bfloat16):
        layer(
            hidden, attention_mask=None, position_ids=positions, position_embeddings=base.rotary_emb(hidden, positions)
        )
    return (meter.bytes["layer"] - _weight_copies([layer])) / tokens


def planned_cpu_bytes(model: nn.Module) -> dict[str, float]:
    """The plan's formulas for what was measured, with the CPU's kernels: float32 dropout masks, the math
    attention path in the masked fusion encoders, and every trainable CLIP layer keeping its tensors
    during the forward (the one after the selected layer frees them when CLIP returns)."""
    from egoexor.memory_plan import (
        attention_fallback_bytes,
        clip_activations,
        fusion_activations,
        fusion_lengths,
        llama_layer_bytes,
        projector_activations,
    )

    shapes = replace(Shapes.from_config(CONFIG), dropout_mask_bytes=4)
    shapes = replace(shapes, vision_stored_layers=min(CONFIG.unfreeze_n_vision_tower_layers, shapes.vision_layers))
    parts = _measured_parts(model)
    lengths = fusion_lengths(shapes, 1, 1)
    fallback = sum(shapes.fusion_layers * attention_fallback_bytes(shapes.fusion_heads, n, 1) for n in lengths)
    return {
        "CLIP": clip_activations(shapes, 2) + _weight_copies(parts["CLIP"]),
        "fusion": fusion_activations(shapes, 1, lengths) + fallback + _weight_copies(parts["fusion"]),
        "projector": projector_activations(shapes, 1) + _weight_copies(parts["projector"]),
        "LLM layer per token": llama_layer_bytes(shapes),
    }


def quantised_bytes(model: nn.Module) -> dict[str, float]:
    """NF4 bytes of the LLM's linear layers: measured on the built model, calculated on the meta one."""
    measured = footprint(model, CONFIG)["LLM linear layers"]
    calculated = footprint(build_on_meta(CONFIG), CONFIG)["LLM linear layers"]
    return {
        "parameters": measured.parameters,
        "measured": measured.bytes,
        "calculated": calculated.bytes,
        "dtypes": sorted(measured.dtypes),
    }


def run() -> dict:
    from egoexor.model.build import build_model

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        train_batch, generate_batch = synthetic_batches(Path(folder))
    report = {"data_s": time.perf_counter() - start, "torch_threads": torch.get_num_threads()}
    start = time.perf_counter()
    model = build_model(CONFIG)
    report["build_s"] = time.perf_counter() - start
    report["nf4_bytes"] = quantised_bytes(model)
    report["lm_head_dtype"] = str(model.language_model.get_output_embeddings().weight.dtype).removeprefix("torch.")
    report.update(train_step(model, train_batch))
    report["saved_bytes"]["LLM layer per token"] = llm_layer_bytes(model)
    report["planned_bytes"] = planned_cpu_bytes(model)
    model.eval()
    start = time.perf_counter()
    generated = model.generate(**generate_batch, max_new_tokens=2, eos_token_id=-1)
    report.update(generate_s=time.perf_counter() - start, generated_shape=list(generated.shape))
    report["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    full = Shapes.from_config(full_size_config(ModelConfig()))
    flops = training_flops_per_sample(full, 2048, 4, 5)
    report["full_model_tflops_per_sample"] = {name: value / 1e12 for name, value in flops.items()}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    report = run()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

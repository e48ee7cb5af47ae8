"""What each part of the model holds in memory as trained: parameters, trainable ones, dtype and bytes.

The full-size model is built on the meta device (:func:`build_on_meta`): shapes without weights, no
download, the hub names of the configuration replaced by the architectures in
:mod:`egoexor.model.known_configs`. 4-bit NF4 weights cannot exist on the meta device (bitsandbytes
quantises real tensors while loading), so the meta build keeps the LLM in ``dtype`` and the bytes as
trained are calculated from the configured ``bits`` by the rule of :func:`bytes_as_trained`; for a model
built for real they are measured from its tensors (quantisation state included).

The rule, as ``egoexor.model.build`` builds the model:

* ``bits 4``: every ``nn.Linear`` weight of the LLM but ``lm_head`` (which transformers leaves
  unquantised) is NF4 with double quantisation: 4 bits per weight, one 8-bit absmax per block of
  :data:`NF4_BLOCK` weights, one float32 absmax per :data:`NF4_NESTED_BLOCK` of those, and per tensor a
  16-entry NF4 code, a 256-entry float32 absmax code and a float32 offset: :data:`NF4_BITS_PER_WEIGHT`.
* ``bits 8``: LLM.int8, one byte per weight and a float32 scale per output row.
* With 4 or 8 bits and LoRA, peft's ``prepare_model_for_kbit_training`` casts every other LLM weight
  (embeddings, norms, ``lm_head``) to float32; without LoRA they stay in ``dtype``.
* Everything else has the dtype the meta build gives it (``trainable_dtype`` for LoRA, CLIP, the
  pooler and the projector; float32 for PTv3).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from egoexor.config import ModelConfig
from egoexor.model.known_configs import KNOWN_LLMS, KNOWN_VISION_TOWERS

if TYPE_CHECKING:  # torch loads with the model it measures: inspect_model --help does not load it
    from torch import nn

#: bitsandbytes' NF4 block sizes with double quantisation (``Params4bit`` defaults).
NF4_BLOCK = 64
NF4_NESTED_BLOCK = 256
#: 4 bits, one uint8 absmax per block, one float32 absmax per block of absmax values.
NF4_BITS_PER_WEIGHT = 4 + 8 / NF4_BLOCK + 32 / (NF4_BLOCK * NF4_NESTED_BLOCK)
#: Per quantised tensor: NF4 code (16 float32), nested absmax code (256 float32), nested offset (float32).
NF4_BYTES_PER_TENSOR = 4 * (16 + 256 + 1)

#: The rows of the footprint table, in the order the data flows.
PARTS = (
    "CLIP, frozen",
    "CLIP, trainable",
    "gaze/hand/audio encoders",
    "point transformer",
    "point-cloud projection",
    "fusion encoders",
    "projector",
    "LLM linear layers",
    "LLM embeddings, norms, lm_head",
    "LoRA adapters",
)


class UnknownArchitecture(ValueError):
    """A hub name without a known architecture: the meta build needs its config as a dict."""


def full_size_config(config: ModelConfig) -> ModelConfig:
    """``config`` with its LLM and CLIP names replaced by their known architectures (dicts)."""
    if config.llm_config is None and config.model_name_or_path not in KNOWN_LLMS:
        raise UnknownArchitecture(
            f"model_name_or_path {config.model_name_or_path}: no known architecture; give llm_config instead "
            f"(known: {', '.join(KNOWN_LLMS)})"
        )
    if config.vision_config is None and config.vision_tower not in KNOWN_VISION_TOWERS:
        raise UnknownArchitecture(
            f"vision_tower {config.vision_tower}: no known architecture; give vision_config instead "
            f"(known: {', '.join(KNOWN_VISION_TOWERS)})"
        )
    llm = config.llm_config or KNOWN_LLMS[config.model_name_or_path]
    vision = config.vision_config or KNOWN_VISION_TOWERS[config.vision_tower]
    return replace(config, model_name_or_path=None, llm_config=llm, vision_tower=None, vision_config=vision)


def build_on_meta(config: ModelConfig) -> nn.Module:
    """The model of ``config`` with every parameter on the meta device (no memory, no download).

    Built in 16 bits (``bits`` only changes how weights are stored, which :func:`bytes_as_trained`
    accounts for); buffers stay real, as code run at construction reads some of them.
    """
    from accelerate import init_empty_weights

    from egoexor.model.build import build_model

    with init_empty_weights(include_buffers=False):
        return build_model(replace(full_size_config(config), bits=16))


def _quantisable(name: str, module: nn.Module) -> bool:
    """A weight bitsandbytes stores in 4 or 8 bits: an LLM ``nn.Linear`` other than ``lm_head`` or LoRA."""
    from torch import nn

    in_llm = name.startswith("language_model.") and "lora_" not in name
    return in_llm and isinstance(module, nn.Linear) and not name.endswith("lm_head")


def part_of(name: str, module: nn.Module, parameter: nn.Parameter) -> str:
    """The row of :data:`PARTS` a parameter (of module ``name``) belongs to."""
    if name.startswith("language_model."):
        if "lora_" in name:
            return "LoRA adapters"
        quantised = _quantisable(name, module) or type(module).__name__ in ("Linear4bit", "Linear8bitLt")
        return "LLM linear layers" if quantised else "LLM embeddings, norms, lm_head"
    if name.startswith("vision_tower."):
        return "CLIP, trainable" if parameter.requires_grad else "CLIP, frozen"
    if name.startswith("image_pooler.point_transformer."):
        return "point-cloud projection" if ".project_pc" in f".{name}" else "point transformer"
    if name.startswith("image_pooler.") and "bert" in name:
        return "fusion encoders"
    if name.startswith("image_pooler."):
        return "gaze/hand/audio encoders"
    return "projector"


def _measured(parameter: nn.Parameter) -> tuple[str, int]:
    """Dtype and stored bytes of a real parameter, bitsandbytes' quantisation state included."""
    kind = type(parameter).__name__
    stored = parameter.untyped_storage().nbytes()
    if kind == "Params4bit":
        state = parameter.quant_state
        nested = [state.offset, state.state2.absmax, state.state2.code] if state.nested else []
        extra = [state.absmax, state.code, *nested]
        return state.quant_type, stored + sum(t.numel() * t.element_size() for t in extra)
    if kind == "Int8Params":
        scale = getattr(parameter, "SCB", None)
        return "int8", stored + (0 if scale is None else scale.numel() * scale.element_size())
    return str(parameter.dtype).removeprefix("torch."), stored


def bytes_as_trained(name: str, module: nn.Module, parameter: nn.Parameter, config: ModelConfig) -> tuple[str, float]:
    """Dtype and bytes of one parameter as training holds it: measured if real, by the module rule if meta."""
    if not parameter.is_meta:
        return _measured(parameter)
    n = parameter.numel()
    if config.bits == 4 and _quantisable(name, module):
        return "nf4", n * NF4_BITS_PER_WEIGHT / 8 + NF4_BYTES_PER_TENSOR
    if config.bits == 8 and _quantisable(name, module):
        return "int8", n + 4 * parameter.shape[0]
    base_llm = name.startswith("language_model.") and "lora_" not in name
    if config.bits in (4, 8) and config.lora_enable and base_llm:
        return "float32", 4 * n  # prepare_model_for_kbit_training upcasts the unquantised LLM weights
    return str(parameter.dtype).removeprefix("torch."), n * parameter.element_size()


@dataclass
class PartFootprint:
    parameters: int = 0
    trainable: int = 0
    dtypes: frozenset[str] = frozenset()
    bytes: float = 0.0


def footprint(model: nn.Module, config: ModelConfig) -> dict[str, PartFootprint]:
    """Per part of :data:`PARTS` (those the model has): counts, dtypes and bytes as trained.

    Parameters count logical weights (a 4-bit weight matrix counts its full size, not its packed bytes).
    """
    parts: dict[str, PartFootprint] = {}
    for module_name, module in model.named_modules():
        for parameter in module.parameters(recurse=False):
            part = parts.setdefault(part_of(module_name, module, parameter), PartFootprint())
            dtype, size = bytes_as_trained(module_name, module, parameter, config)
            count = _logical_numel(parameter)
            part.parameters += count
            part.trainable += count if parameter.requires_grad else 0
            part.dtypes |= {dtype}
            part.bytes += size
    return {part: parts[part] for part in PARTS if part in parts}


def _logical_numel(parameter: nn.Parameter) -> int:
    import torch

    state = getattr(parameter, "quant_state", None)
    return int(torch.Size(state.shape).numel()) if state is not None else parameter.numel()


def footprint_table(parts: dict[str, PartFootprint]) -> str:
    """The footprint as a Markdown table with a total row."""
    lines = ["| part | parameters | trainable | dtype as trained | bytes as trained |", "|---|---:|---:|---|---:|"]
    for part, row in parts.items():
        dtypes = ", ".join(sorted(row.dtypes))
        lines.append(f"| {part} | {row.parameters:,} | {row.trainable:,} | {dtypes} | {gib(row.bytes)} |")
    parameters, trainable = sum(r.parameters for r in parts.values()), sum(r.trainable for r in parts.values())
    total = gib(sum(r.bytes for r in parts.values()))
    lines.append(f"| **total** | {parameters:,} | {trainable:,} | | {total} |")
    return "\n".join(lines)


def gib(size: float) -> str:
    """Bytes as GiB with two decimals; MiB below 0.1 GiB and KiB below 0.1 MiB, so no part reads as zero."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if size >= 0.1 * scale:
            return f"{size / scale:.2f} GiB" if unit == "GiB" else f"{size / scale:.1f} MiB"
    return f"{size / 2**10:.1f} KiB"

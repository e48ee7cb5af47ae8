"""egoexor's half of the parity check, shared with the golden-figure tests.

The *parity model* is egoexor's ``reference`` preset at the reference's hard-coded widths (CLIP
and fusion width 1024, 16 fusion heads, 5184 positions, 576 tokens per branch, the full PTv3)
with a small LLM (LLaMA vocabulary, 2 layers of width 64) and a 3-layer CLIP at ViT-L/14-336's
width and input size, all randomly initialised from fixed seeds, LoRA ``B`` matrices included
(peft starts them at zero, which would hide the adapters). The same weights, renamed to the
reference's parameter names by :func:`reference_state_dict`, are loaded into the reference's own
``LlavaLlamaForCausalLM``; both must then compute the same logits.
"""

from __future__ import annotations

import re
from pathlib import Path

import audio_stand_in
import init_stats
import numpy as np
import torch

from egoexor.config import DataConfig, ModelConfig

LLM_CONFIG = {
    "vocab_size": 32000,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
}
CLIP_CONFIG = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 3,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
}
UNFREEZE = 2
LORA_R, LORA_ALPHA = 8, 16


#: What the reference side needs to build the same model and read the same samples.
REFERENCE_JOB = {
    "llm_config": LLM_CONFIG,
    "clip_layers": CLIP_CONFIG["num_hidden_layers"],
    "unfreeze": UNFREEZE,
    "lora_r": LORA_R,
    "lora_alpha": LORA_ALPHA,
    "ego_sources": ["head_surgeon", "assistant", "circulator", "anesthetist"],
    "exo_sources": [
        "or_light",
        "microscope",
        "external_1",
        "external_2",
        "external_3",
        "external_4",
        "external_5",
        "simstation",
        "ultrasound",
    ],
}


def model_config() -> ModelConfig:
    return ModelConfig(
        preset="reference",
        mask_extras=False,
        model_name_or_path=None,
        llm_config=LLM_CONFIG,
        vision_tower=None,
        vision_config=CLIP_CONFIG,
        unfreeze_n_vision_tower_layers=UNFREEZE,
        bits=16,
        dtype="float32",
        lora_r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.0,
        init_seed=0,
    )


def data_config(audio_cache: Path | None = None) -> DataConfig:
    """The reference's data settings (row matching, camera range, dark frames, inference roles), no
    dropout, every exo view (the checks pick the reference's seeded draw by name), and audio from
    ``audio_cache`` (see :func:`write_audio_cache`) or none."""
    return DataConfig(
        row_matching="reference",
        camera_selection="reference",
        rescale_dark_frames=True,
        prompt_roles="reference_inference",
        exo_views="all",
        audio_encoder=None,
        audio_cache=None if audio_cache is None else str(audio_cache),
        modality_dropout=0.0,
    )


class StandInEmbedder:
    """``audio_stand_in.embed`` of egoexor's audio input, in place of CLAP."""

    name = "parity stand-in"
    audio_norm = "reference"
    dim = audio_stand_in.DIM

    def __call__(self, snippets) -> np.ndarray:
        from egoexor.modalities.audio import audio_snippet

        return np.stack([audio_stand_in.embed(audio_snippet(snippet, "reference")) for snippet in snippets])


def write_audio_cache(merged: Path, path: Path) -> Path:
    from egoexor.data.precompute_audio import precompute

    precompute(merged, path, StandInEmbedder())
    return path


def build_model():
    """The parity model with seeded non-zero LoRA ``B`` matrices, in eval mode."""
    from egoexor.model.build import build_model as build

    model = build(model_config())
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return model.eval()


_RULES = (
    (re.compile(r"^mm_projector\.(.+)$"), r"base_model.model.model.mm_projector.\1"),
    (re.compile(r"^image_pooler\.(.+)$"), r"base_model.model.model.image_pooler.\1"),
    (
        re.compile(r"^vision_tower\.vision_tower\.(.+)$"),
        r"base_model.model.model.vision_tower.vision_tower.vision_model.\1",
    ),
    (re.compile(r"^language_model\.base_model\.model\.(.+)$"), r"base_model.model.\1"),
)


def reference_name(name: str) -> str:
    """egoexor's parameter name -> the reference model's (peft 0.4 wraps no ``base_layer``)."""
    for pattern, replacement in _RULES:
        if pattern.match(name):
            return pattern.sub(replacement, name).replace(".base_layer.", ".")
    raise KeyError(f"no reference name for {name!r}")


def reference_state_dict(model) -> dict[str, torch.Tensor]:
    return {reference_name(name): tensor.detach().clone() for name, tensor in model.state_dict().items()}


#: The parameters the ``init`` check compares (egoexor's names): every pooler and projector tensor.
INIT_PREFIXES = ("image_pooler.", "mm_projector.")


def init_statistics(model=None) -> dict[str, dict]:
    """:func:`init_stats.statistics` of the parity model's pooler and projector as built (``model``, or a new
    build), under the reference's parameter names."""
    if model is None:
        from egoexor.model.build import build_model as build

        model = build(model_config())
    named = [(reference_name(name), p) for name, p in model.named_parameters() if name.startswith(INIT_PREFIXES)]
    return init_stats.statistics(named)

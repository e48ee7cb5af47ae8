"""The full-size model on the meta device: parameter counts against independently computed ones, bytes as
trained, and the memory plan's formulas; ``python -m egoexor.inspect_model`` end to end."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from egoexor import inspect_model
from egoexor.config import ModelConfig
from egoexor.memory_plan import (
    InferenceWorkload,
    Shapes,
    TrainingWorkload,
    inference_terms,
    kv_cache_bytes,
    peak,
    training_terms,
)
from egoexor.model.footprint import NF4_BITS_PER_WEIGHT, build_on_meta, footprint, full_size_config

RECIPE = str(Path(__file__).resolve().parents[1] / "configs" / "egoexor.yaml")
# Independent arithmetic from the published architectures (no egoexor code): LLaMA-7B as in llava-v1.5-7b,
# CLIP ViT-L/14 at 336 px, BERT-style fusion layers of width 1024.
H, FF, LAYERS, VOCAB = 4096, 11008, 32, 32000
LLAMA_LINEAR = LAYERS * (4 * H * H + 3 * H * FF)  # q, k, v, o; gate, up, down; no biases
LLAMA_TOTAL = LLAMA_LINEAR + 2 * VOCAB * H + (2 * LAYERS + 1) * H  # + embeddings, lm_head, RMSNorms
LORA_R128 = LAYERS * 128 * (4 * (H + H) + 3 * (H + FF))  # r x (in + out) per projection
D, M = 1024, 4096
VIT_LAYER = 4 * (D * D + D) + (D * M + M) + (M * D + D) + 2 * 2 * D  # attention, MLP, two LayerNorms
CLIP_VISION = 3 * 14 * 14 * D + D + 577 * D + 2 * D + 24 * VIT_LAYER + 2 * D  # patch conv, CLS, positions, LNs
BERT_EMBEDDINGS = (1 + 5184 + 2) * D + 2 * D  # word (1), positions, token types, LayerNorm


@pytest.fixture(scope="module")
def meta_models():
    return {preset: build_on_meta(ModelConfig(preset=preset)) for preset in ("paper", "reference")}


def _count(model, prefix: str = "", trainable: bool | None = None) -> int:
    return sum(
        p.numel()
        for n, p in model.named_parameters()
        if n.startswith(prefix) and (trainable is None or p.requires_grad == trainable)
    )


def test_the_meta_model_has_the_published_sizes(meta_models):
    model = meta_models["paper"]
    assert all(p.is_meta for p in model.parameters())
    assert LLAMA_TOTAL == 6_738_415_616  # LLaMA-7B's well-known count
    assert _count(model, "language_model", trainable=False) == LLAMA_TOTAL
    assert CLIP_VISION == 303_507_456  # CLIP ViT-L/14-336's vision tower
    assert _count(model, "vision_tower") == CLIP_VISION
    assert _count(model, "vision_tower", trainable=True) == 12 * VIT_LAYER  # the last 12 layers
    assert _count(model, "mm_projector") == (D * H + H) + (H * H + H)


def test_lora_is_the_references_r128_on_seven_projections_of_32_layers(meta_models):
    for model in meta_models.values():
        lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
        assert lora == LORA_R128 == 319_815_680
        targets = {n.split(".")[-4] for n, _ in model.named_parameters() if "lora_A" in n}
        assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_fusion_encoders_of_both_presets(meta_models):
    paper, reference = meta_models["paper"], meta_models["reference"]
    assert (
        _count(paper, "image_pooler.ego_bert")
        == _count(paper, "image_pooler.exo_bert")
        == (BERT_EMBEDDINGS + 2 * VIT_LAYER)
    )
    pooler = D * D + D  # BERT's pooling head, kept for the released checkpoint's keys
    assert _count(reference, "image_pooler.bert") == BERT_EMBEDDINGS + 3 * VIT_LAYER + pooler
    ptv3 = _count(paper, "image_pooler.point_transformer")
    assert 39_000_000 < ptv3 < 39_300_000  # the reference's PTv3 (~39M) with project_pc 512 -> 1024


def test_bytes_as_trained_follow_the_bitsandbytes_and_peft_rules(meta_models):
    config = ModelConfig()
    parts = footprint(meta_models["paper"], config)
    linear = parts["LLM linear layers"]
    assert linear.parameters == LLAMA_LINEAR and linear.dtypes == {"nf4"}
    assert linear.bytes == pytest.approx(LLAMA_LINEAR * NF4_BITS_PER_WEIGHT / 8, rel=1e-4)
    assert NF4_BITS_PER_WEIGHT == pytest.approx(4.127, abs=1e-3)
    others = parts["LLM embeddings, norms, lm_head"]  # upcast by prepare_model_for_kbit_training
    assert (others.dtypes, others.bytes) == ({"float32"}, 4 * (LLAMA_TOTAL - LLAMA_LINEAR))
    assert parts["LoRA adapters"].bytes == 4 * LORA_R128  # trainable_dtype float32
    sixteen = footprint(meta_models["paper"], replace(config, bits=16))
    assert sixteen["LLM linear layers"].bytes == 2 * LLAMA_LINEAR
    assert sixteen["LLM embeddings, norms, lm_head"].bytes == 2 * (LLAMA_TOTAL - LLAMA_LINEAR)
    bf16_config = replace(config, trainable_dtype="bfloat16")
    bf16 = footprint(build_on_meta(bf16_config), bf16_config)
    assert bf16["LoRA adapters"].bytes == 2 * LORA_R128 and bf16["CLIP, trainable"].dtypes == {"bfloat16"}


def test_footprint_of_a_real_model_is_measured(tiny_model_config):
    """Without the meta device the bytes are the tensors' own; they equal the rule's for 16-bit weights."""
    from egoexor.model.build import build_model

    real = footprint(build_model(tiny_model_config), tiny_model_config)
    calculated = footprint(build_on_meta(tiny_model_config), tiny_model_config)
    assert {part: row.bytes for part, row in real.items()} == {part: row.bytes for part, row in calculated.items()}


def test_kv_cache_is_half_a_mebibyte_per_token_of_llama_7b():
    shapes = Shapes.from_config(full_size_config(ModelConfig()))
    assert kv_cache_bytes(shapes, batch=1, positions=1) == 2 * LAYERS * H * 2 == 2**19
    assert kv_cache_bytes(shapes, batch=16, positions=2348) == 16 * 2348 * 2**19


def test_plan_terms_scale_with_the_workload():
    shapes = Shapes.from_config(full_size_config(ModelConfig()))
    one, two = (training_terms(shapes, 0.0, 100, TrainingWorkload(batch=b)) for b in (1, 2))
    for a, b in zip(one, two, strict=True):
        if a.kind != "persistent" and "copies" not in a.name:  # weight copies do not depend on the batch
            assert b.bytes == pytest.approx(2 * a.bytes, rel=0.02), a.name  # activations are per sample
    checkpointed = next(t for t in two if t.name.startswith("LLM layer inputs"))
    assert checkpointed.bytes == 33 * 2 * 2048 * H * 4  # 32 layer inputs + the final norm's, float32
    assert peak(two) > peak(one)
    zero2 = training_terms(shapes, 0.0, 800, TrainingWorkload(zero2_gpus=8))
    assert next(t for t in zero2 if "ZeRO-2" in t.name).bytes == 800 * 16 / 8
    inference = inference_terms(shapes, 0.0, InferenceWorkload())
    assert any(t.bytes >= kv_cache_bytes(shapes, 16, 2348) for t in inference)


def test_inspect_model_prints_the_table_and_both_plans(capsys):
    assert inspect_model.main(["--config", RECIPE, "--meta"]) == 0
    out = capsys.readouterr().out
    assert f"| LoRA adapters | {LORA_R128:,} | {LORA_R128:,} | float32 |" in out
    assert f"| LLM linear layers | {LLAMA_LINEAR:,} | 0 | nf4 |" in out
    headers = [line for line in out.splitlines() if line.startswith("| calculated |")]
    assert headers[0].count("paper") == 2 and headers[0].count("reference") == 2 and "ZeRO-2 x 8" in headers[0]
    assert "16-bit LLM" in headers[1] and "4-bit LLM" in headers[1]
    fits = [line for line in out.splitlines() if line.startswith("| fits GPUs of (GiB) |")]
    assert len(fits) == 2 and all(re.fullmatch(r"\| fits GPUs of \(GiB\) \|( [0-9, ]+|none) \|.*", f) for f in fits)
    assert "no GPU has measured them" in out


def test_unknown_hub_model_is_a_one_line_error(capsys):
    code = inspect_model.main(["--config", RECIPE, "--meta", "--model_name_or_path", "acme/llm-9b"])
    assert code == 2
    assert "model_name_or_path acme/llm-9b: no known architecture" in capsys.readouterr().err

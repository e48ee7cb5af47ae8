"""Inference: resumable, shardable over processes, and the released-checkpoint import."""

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import CLIPVisionModel

from egoexor import infer
from egoexor.config import checkpoint_config
from egoexor.convert_reference import REFERENCE_ADAPTER, REFERENCE_NON_LORA, ConversionError, convert
from egoexor.data.dataset import EgoExorDataset
from egoexor.data.processor import Collator
from egoexor.data.samples import load_samples
from egoexor.model.build import build_model, load_trained, save_checkpoint
from egoexor.model.egoexor_llava import EgoExorLlava

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tiny_model_config, tiny_data_config, tokenizer, tmp_path_factory):
    """An (untrained) tiny checkpoint in the format training writes."""
    folder = tmp_path_factory.mktemp("checkpoint")
    torch.manual_seed(0)
    model = build_model(tiny_model_config)
    data = replace(tiny_data_config, audio_encoder=None)
    save_checkpoint(model, folder, checkpoint_config(tiny_model_config, data))
    tokenizer.save_pretrained(folder)
    return folder


def infer_args(checkpoint, merged_file, samples, out, *extra):
    return [
        "--checkpoint",
        str(checkpoint),
        "--hdf5",
        str(merged_file),
        "--samples",
        str(samples),
        "--out",
        str(out),
        "--max_new_tokens",
        "5",
        "--batch_size",
        "1",
        *extra,
    ]


@pytest.fixture(scope="module")
def few_samples(sample_files, tmp_path_factory):
    path = tmp_path_factory.mktemp("few") / "test.json"
    path.write_text(json.dumps(json.loads(sample_files["test"].read_text())[:6]))
    return path


@pytest.fixture(scope="module")
def reference_run(checkpoint, merged_file, few_samples, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    assert infer.main(infer_args(checkpoint, merged_file, few_samples, out)) == 0
    return out


def test_outputs_and_reference_format(reference_run, few_samples):
    texts = json.loads((reference_run / "raw_predictions.json").read_text())
    predictions = json.loads((reference_run / "predictions.json").read_text())
    ids = [s.id for s in load_samples(few_samples)]
    assert sorted(texts) == sorted(predictions) == sorted(ids)
    assert all(isinstance(triplets, list) for triplets in predictions.values())
    for name in ("metrics.json", "report.md", "f1_per_predicate.png", "confusion_matrix.png"):
        assert (reference_run / name).is_file()


@pytest.mark.slow
def test_two_sharded_processes_equal_one(checkpoint, merged_file, few_samples, reference_run, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29563",
            "-m",
            "egoexor.infer",
            *infer_args(checkpoint, merged_file, few_samples, tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "raw_predictions.rank1.jsonl").is_file()
    # each rank generated a share of its own (accelerate's split_between_processes), together every sample once
    logs = [tmp_path / f"raw_predictions.rank{rank}.jsonl" for rank in (0, 1)]
    shares = [[json.loads(line)["id"] for line in log.read_text().splitlines()] for log in logs]
    assert all(shares) and sorted(shares[0] + shares[1]) == sorted(s.id for s in load_samples(few_samples))
    assert json.loads((tmp_path / "raw_predictions.json").read_text()) == json.loads(
        (reference_run / "raw_predictions.json").read_text()
    )


#: The reference's key prefix: peft's ``base_model.model.`` + ``LlavaLlamaForCausalLM.model.``
PREFIX = "base_model.model.model."


def _rotary_buffers(llm_config: dict) -> dict[str, torch.Tensor]:
    """transformers 4.31's ``LlamaRotaryEmbedding`` buffers of every LLaMA layer (``self_attn.rotary_emb``)."""
    head_dim = llm_config["hidden_size"] // llm_config["num_attention_heads"]
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(llm_config["max_position_embeddings"]).float(), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)[None, None]
    buffers = {}
    for layer in range(llm_config["num_hidden_layers"]):
        key = f"{PREFIX}layers.{layer}.self_attn.rotary_emb."
        buffers.update({key + "inv_freq": inv_freq, key + "cos_cached": angles.cos(), key + "sin_cached": angles.sin()})
    return buffers


def reference_non_lora_trainables(native: EgoExorLlava, llm_config: dict, unfrozen: int) -> dict[str, torch.Tensor]:
    """``non_lora_trainables.bin`` as the reference writes it, from a native model's weights.

    ``get_peft_state_non_lora_maybe_zero_3_extended`` (train.py:189-199) over the peft-wrapped model:
    every parameter without ``lora_`` that requires grad -- ``mm_projector``, the whole ``image_pooler``
    (all of it unfrozen, llava_arch.py:82-84), CLIP ``encoder.layers[-N:]`` (train.py:1777-1781) -- and
    *every* buffer: PTv3's BatchNorm statistics, BERT's ``position_ids``/``token_type_ids``, CLIP's
    ``position_ids`` and the rotary caches of each LLaMA layer. CLIP keys keep 4.31's ``vision_model.``.
    """
    n_layers = len(native.vision_tower.vision_tower.encoder.layers)
    clip_layers = tuple(f"vision_tower.vision_tower.encoder.layers.{i}." for i in range(n_layers - unfrozen, n_layers))
    state = {}
    for name, tensor in native.state_dict().items():
        if name.startswith(("mm_projector.", "image_pooler.")):
            state[PREFIX + name] = tensor
        elif name.startswith(clip_layers):
            clip_name = name.removeprefix("vision_tower.vision_tower.")
            state[f"{PREFIX}vision_tower.vision_tower.vision_model.{clip_name}"] = tensor
    positions = native.image_pooler.bert.config.max_position_embeddings
    state[PREFIX + "image_pooler.bert.embeddings.position_ids"] = torch.arange(positions)[None]
    state[PREFIX + "image_pooler.bert.embeddings.token_type_ids"] = torch.zeros(1, positions, dtype=torch.long)
    patches = native.vision_tower.num_patches
    state[PREFIX + "vision_tower.vision_tower.vision_model.embeddings.position_ids"] = torch.arange(patches + 1)[None]
    return {**state, **_rotary_buffers(llm_config)}


@pytest.fixture(scope="module")
def released(tmp_path_factory, tokenizer, tiny_model_config):
    """A tiny folder in the released checkpoint's layout, and the native model whose weights it holds.

    Every tensor written is first moved away from its initial value, so that only a real import restores it.
    """
    from conftest import TINY_LLM, TINY_VISION
    from peft import get_peft_model_state_dict
    from test_model import _save_tiny_llava_v15
    from transformers import CLIPVisionConfig

    root = tmp_path_factory.mktemp("released")
    base, clip, folder = root / "base", root / "clip", root / "released"
    for path in (base, clip, folder):
        path.mkdir()
    _save_tiny_llava_v15(base, tokenizer)
    tokenizer.save_pretrained(base)  # llava-v1.5-7b ships its tokenizer
    CLIPVisionModel(CLIPVisionConfig(**TINY_VISION)).save_pretrained(clip)
    config = replace(
        tiny_model_config,
        preset="reference",
        mask_extras=False,
        model_name_or_path=str(base),
        llm_config=None,
        vision_tower=str(clip),
        vision_config=None,
        unfreeze_n_vision_tower_layers=2,
    )
    native = build_model(config)
    state = reference_non_lora_trainables(native, {**TINY_LLM, "vocab_size": len(tokenizer)}, unfrozen=2)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # the model's tensors in state share storage with it; LoRA B starts at zero
        lora_b = [p for n, p in native.named_parameters() if "lora_B" in n]
        for tensor in [t for t in state.values() if t.is_floating_point()] + lora_b:
            tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.05)
    torch.save(state, folder / REFERENCE_NON_LORA)
    torch.save(get_peft_model_state_dict(native.language_model), folder / REFERENCE_ADAPTER)
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": config.lora_r, "lora_alpha": config.lora_alpha, "lora_dropout": 0.05})
    )
    (folder / "config.json").write_text(
        json.dumps({"model_type": "llava", "mm_vision_tower": str(clip), "mm_vision_select_layer": -2})
    )
    overrides = {
        k: getattr(config, k)
        for k in (
            "tokens_per_branch",
            "fusion_heads",
            "fusion_max_positions",
            "encoder_hidden",
            "point_transformer",
            "bits",
            "dtype",
            "unfreeze_n_vision_tower_layers",
        )
    }
    return folder, base, native, overrides


def test_released_checkpoint_imports_with_every_tensor_accounted_for(released, tmp_path, validation_batch):
    folder, base, native, overrides = released
    report = convert(folder, tmp_path, base=str(base), **overrides)
    written = torch.load(folder / REFERENCE_NON_LORA, weights_only=True)
    rotary = {k for k in written if ".rotary_emb." in k}
    assert len(rotary) == 3 * native.language_model.config.num_hidden_layers
    assert set(report["recomputed_buffers"]) == rotary | {
        PREFIX + "image_pooler.bert.embeddings.position_ids",
        PREFIX + "image_pooler.bert.embeddings.token_type_ids",
        PREFIX + "vision_tower.vision_tower.vision_model.embeddings.position_ids",
    }
    assert len(report["mapped"]) + len(report["recomputed_buffers"]) == len(written)
    loaded, _ = load_trained(tmp_path)
    native_state, loaded_state = native.state_dict(), loaded.state_dict()
    assert native_state.keys() == loaded_state.keys()
    for name in native_state:
        assert torch.equal(native_state[name], loaded_state[name]), name
    native.eval()
    loaded.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        expected = native(**validation_batch)["logits"]
        torch.manual_seed(0)
        assert torch.equal(loaded(**validation_batch)["logits"], expected)


def test_converted_released_checkpoint_runs_inference(released, tmp_path, merged_file, few_samples, clap_dir):
    folder, base, _, overrides = released
    convert(folder, tmp_path / "converted", base=str(base), **overrides)
    config_file = tmp_path / "converted" / "egoexor_config.json"
    saved = json.loads(config_file.read_text())
    assert (saved["data"]["image_size"], saved["data"]["tokens_per_branch"]) == (32, 16)  # from the model
    saved["data"]["audio_encoder"] = str(clap_dir)  # the tiny CLAP stands in for laion/larger_clap_general
    config_file.write_text(json.dumps(saved))
    assert (
        infer.main(infer_args(tmp_path / "converted", merged_file, few_samples, tmp_path / "out", "--num_workers", "0"))
        == 0
    )
    assert len(json.loads((tmp_path / "out" / "predictions.json").read_text())) == 6


def test_the_trained_clip_window_is_read_from_the_saved_keys(released, tmp_path):
    """A run with another --unfreeze_n_vision_tower_layers than 12 imports without being told (here: 2)."""
    folder, base, native, overrides = released
    unstated = {k: v for k, v in overrides.items() if k != "unfreeze_n_vision_tower_layers"}
    convert(folder, tmp_path / "converted", base=str(base), **unstated)
    saved = json.loads((tmp_path / "converted" / "egoexor_config.json").read_text())
    assert saved["model"]["unfreeze_n_vision_tower_layers"] == 2
    loaded, _ = load_trained(tmp_path / "converted")
    trained = {n for n, p in loaded.named_parameters() if p.requires_grad and ".vision_tower." in n}
    assert trained == {n for n, p in native.named_parameters() if p.requires_grad and ".vision_tower." in n} != set()
    with pytest.raises(ConversionError, match="holds the last 2 CLIP layers.*unfreeze_n_vision_tower_layers=1"):
        convert(folder, tmp_path / "again", base=str(base), **{**unstated, "unfreeze_n_vision_tower_layers": 1})


def test_released_checkpoint_errors_name_the_key(released, tmp_path):
    folder, base, _, overrides = released
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "adapter_config.json", REFERENCE_ADAPTER):
        (broken / name).write_bytes((folder / name).read_bytes())
    state = torch.load(folder / REFERENCE_NON_LORA, weights_only=True)
    state["base_model.model.model.mm_projector.0.weight"] = torch.zeros(3, 3)
    torch.save(state, broken / REFERENCE_NON_LORA)
    with pytest.raises(ConversionError, match=r"mm_projector\.0\.weight' has shape \(3, 3\)"):
        convert(broken, tmp_path / "out", base=str(base), **overrides)
    state["base_model.model.model.mm_projector.0.weight"] = torch.zeros(1)
    state["base_model.model.model.something_else.weight"] = torch.zeros(1)
    del state["base_model.model.model.mm_projector.0.weight"]
    torch.save(state, broken / REFERENCE_NON_LORA)
    with pytest.raises(ConversionError, match="no place for key 'base_model.model.model.something_else.weight'"):
        convert(broken, tmp_path / "out", base=str(base), **overrides)


@pytest.fixture(scope="module")
def validation_batch(sample_files, merged_file, tokenizer, tiny_data_config):
    samples = load_samples(sample_files["validation"])[:3]
    dataset = EgoExorDataset(samples, merged_file, tokenizer, tiny_data_config, "eval")
    return Collator(tokenizer.pad_token_id)([dataset[i] for i in range(3)])


def _pattern(key: str) -> str:
    """A key with its layer and block numbers blanked: the kinds of tensor a folder holds."""
    return re.sub(r"\d+", "N", key)


def test_released_fixture_has_the_layout_the_reference_writes(released):
    """The fixture holds exactly the kinds of keys the reference's own save code wrote for a small
    model (tests/data/reference/checkpoint_keys.json, by scripts/check_reference_parity.py): rotary
    and position buffers, CLIP layers [-N:], the whole pooler with PTv3 and its BatchNorm statistics."""
    golden = json.loads((Path(__file__).parent / "data" / "reference" / "checkpoint_keys.json").read_text())
    folder = released[0]
    written = torch.load(folder / REFERENCE_NON_LORA, map_location="cpu", weights_only=True)
    assert {_pattern(k) for k in written} == {_pattern(k) for k in golden["non_lora"]}
    adapter = torch.load(folder / REFERENCE_ADAPTER, map_location="cpu", weights_only=True)
    assert {_pattern(k) for k in adapter} == {_pattern(k) for k in golden["adapter"]}
    # and which CLIP layers: the last N of the encoder (the golden run: 3 layers, N = 2), not N before the
    # selected hidden state (which the digit-blind patterns above cannot tell apart)
    assert _clip_layers(golden["non_lora"]) == [1, 2]
    native = released[2]
    n_layers = len(native.vision_tower.vision_tower.encoder.layers)
    assert _clip_layers(written) == [n_layers - 2, n_layers - 1]


def _clip_layers(keys) -> list[int]:
    found = {re.search(r"vision_model\.encoder\.layers\.(\d+)\.", k) for k in keys}
    return sorted({int(m.group(1)) for m in found if m})

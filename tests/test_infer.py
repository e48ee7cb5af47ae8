"""Inference: resumable, shardable over processes, and the released-checkpoint import."""

import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from transformers import CLIPVisionModel

from egoexor import infer
from egoexor.config import DataConfig
from egoexor.convert_reference import REFERENCE_ADAPTER, REFERENCE_NON_LORA, ConversionError, convert
from egoexor.data.dataset import Collator, EgoExorDataset
from egoexor.data.samples import load_samples
from egoexor.model.build import build_model, load_trained, save_checkpoint
from egoexor.model.egoexor_llava import EgoExorLlava

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tiny_model_config, tokenizer, tmp_path_factory):
    """An (untrained) tiny checkpoint in the format training writes."""
    folder = tmp_path_factory.mktemp("checkpoint")
    torch.manual_seed(0)
    model = build_model(tiny_model_config)
    data = DataConfig(image_size=32, tokens_per_branch=16, audio_encoder=None)
    save_checkpoint(model, folder, {"model": asdict(tiny_model_config), "data": asdict(data)})
    tokenizer.save_pretrained(folder)
    return folder


def infer_args(checkpoint, merged_file, samples, out, *extra):
    return ["--checkpoint", str(checkpoint), "--hdf5", str(merged_file), "--samples", str(samples), "--out", str(out),
            "--max_new_tokens", "5", "--batch_size", "1", *extra]  # fmt: skip


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


def test_interrupted_inference_resumes_to_the_same_predictions(checkpoint, merged_file, few_samples, reference_run,
                                                               tmp_path, monkeypatch):  # fmt: skip
    generate = EgoExorLlava.generate
    calls = []

    def interrupted_after_three_batches(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(EgoExorLlava, "generate", interrupted_after_three_batches)
    with pytest.raises(KeyboardInterrupt):
        infer.main(infer_args(checkpoint, merged_file, few_samples, tmp_path))
    assert len((tmp_path / "raw_predictions.rank0.jsonl").read_text().splitlines()) == 3
    assert not (tmp_path / "raw_predictions.json").exists()
    monkeypatch.setattr(EgoExorLlava, "generate", generate)
    assert infer.main(infer_args(checkpoint, merged_file, few_samples, tmp_path)) == 0
    assert len((tmp_path / "raw_predictions.rank0.jsonl").read_text().splitlines()) == 6  # only the rest ran
    assert json.loads((tmp_path / "raw_predictions.json").read_text()) == json.loads(
        (reference_run / "raw_predictions.json").read_text()
    )


@pytest.mark.slow
def test_two_sharded_processes_equal_one(checkpoint, merged_file, few_samples, reference_run, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29563",
         "-m", "egoexor.infer", *infer_args(checkpoint, merged_file, few_samples, tmp_path)],
        capture_output=True, text=True, timeout=600, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "raw_predictions.rank1.jsonl").is_file()
    assert json.loads((tmp_path / "raw_predictions.json").read_text()) == json.loads(
        (reference_run / "raw_predictions.json").read_text()
    )


def test_bad_inputs(checkpoint, merged_file, few_samples, tmp_path, capsys):
    assert infer.main(infer_args(tmp_path / "nothing", merged_file, few_samples, tmp_path / "o")) == 2
    assert "neither an egoexor checkpoint" in capsys.readouterr().err
    assert infer.main(infer_args(checkpoint, tmp_path / "none.h5", few_samples, tmp_path / "o")) == 2
    assert "--hdf5" in capsys.readouterr().err


def _released_name(name: str) -> str:
    """Our parameter name -> the reference's non_lora_trainables key."""
    if name.startswith("vision_tower.vision_tower."):
        return "base_model.model.model.vision_tower.vision_tower.vision_model." + name.removeprefix(
            "vision_tower.vision_tower."
        )
    return "base_model.model.model." + name


@pytest.fixture(scope="module")
def released(tmp_path_factory, tokenizer, tiny_model_config):
    """A tiny checkpoint in the released folder's layout, and the native model it was written from."""
    from peft import get_peft_model_state_dict
    from test_model import _save_tiny_llava_v15
    from tiny_config import TINY_VISION
    from transformers import CLIPVisionConfig

    root = tmp_path_factory.mktemp("released")
    base, clip, folder = root / "base", root / "clip", root / "released"
    for path in (base, clip, folder):
        path.mkdir()
    _save_tiny_llava_v15(base, tokenizer)
    CLIPVisionModel(CLIPVisionConfig(**TINY_VISION)).save_pretrained(clip)
    config = replace(tiny_model_config, preset="reference", mask_extras=False, model_name_or_path=str(base),
                     llm_config=None, vision_tower=str(clip), vision_config=None)  # fmt: skip
    torch.manual_seed(3)
    native = build_model(config)
    with torch.no_grad():  # LoRA B starts at zero: move it so that the adapter matters
        for name, parameter in native.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    trained = {n for n, p in native.named_parameters() if p.requires_grad and "lora_" not in n}
    state = {_released_name(n): t for n, t in native.state_dict().items()
             if n in trained or n.startswith("image_pooler.point_transformer.")}  # fmt: skip
    state["base_model.model.model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    state["base_model.model.model.image_pooler.bert.embeddings.position_ids"] = torch.arange(160)[None]
    torch.save(state, folder / REFERENCE_NON_LORA)
    torch.save(get_peft_model_state_dict(native.language_model), folder / REFERENCE_ADAPTER)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": config.lora_r,
                                                            "lora_alpha": config.lora_alpha, "lora_dropout": 0.05}))
    (folder / "config.json").write_text(json.dumps({"model_type": "llava", "mm_vision_tower": str(clip),
                                                    "mm_vision_select_layer": -2}))  # fmt: skip
    overrides = {k: getattr(config, k) for k in ("tokens_per_branch", "fusion_heads", "fusion_max_positions",
                                                 "encoder_hidden", "point_transformer", "bits", "dtype",
                                                 "unfreeze_n_vision_tower_layers")}  # fmt: skip
    return folder, base, native, overrides


def test_released_checkpoint_imports_with_every_tensor_accounted_for(released, tmp_path, validation_batch):
    folder, base, native, overrides = released
    report = convert(folder, tmp_path, base=str(base), **overrides)
    assert len(report["recomputed_buffers"]) == 2
    loaded, _ = load_trained(tmp_path)
    native_state, loaded_state = native.state_dict(), loaded.state_dict()
    assert native_state.keys() == loaded_state.keys()
    for name in native_state:
        assert torch.equal(native_state[name], loaded_state[name]), name
    native.eval()
    loaded.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        expected = native(validation_batch)["logits"]
        torch.manual_seed(0)
        assert torch.equal(loaded(validation_batch)["logits"], expected)


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

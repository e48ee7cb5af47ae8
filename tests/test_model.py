"""The model on CPU with the tiny configuration: shapes, gradients, splicing, presets, loading, generation."""

import json
import warnings
from dataclasses import replace

import pytest
import torch
from conftest import TINY_LLM, TINY_TOKENS, TINY_VISION
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionConfig, LlamaConfig, LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration

from egoexor.data.dataset import EgoExorDataset
from egoexor.data.layout import TakeKey
from egoexor.data.processor import Collator
from egoexor.data.samples import load_samples
from egoexor.modalities.point_cloud import cloud_tokens
from egoexor.model.build import (
    build_model,
    checkpoint_layout,
    load_language_model,
    lora_target_modules,
    parameter_summary,
)
from egoexor.model.vision import CLIPVisionTower
from egoexor.prompt import IGNORE_INDEX, IMAGE_TOKEN_ID

MISS_FULL, EXO_ONLY, ULTRASOUND = TakeKey("MISS", 1, 1), TakeKey("MISS", 1, 2), TakeKey("Ultrasound", 1, 1)


@pytest.fixture(scope="module")
def validation(sample_files):
    return load_samples(sample_files["validation"])


def make_batch(samples, merged_file, tokenizer, data_config, mode="eval"):
    dataset = EgoExorDataset(samples, merged_file, tokenizer, data_config, mode)
    side = "left" if mode == "generate" else "right"
    return Collator(tokenizer.pad_token_id, side)([dataset[i] for i in range(len(samples))])


def visual_inputs(batch):
    """The batch's keyword arguments of ``EgoExorLlava.visual_features``."""
    return {key: value for key, value in batch.items() if key not in ("input_ids", "attention_mask", "labels")}


def point_cloud_inputs(batch):
    return batch["point_cloud"], batch["point_cloud_batch"], batch["point_cloud_mask"]


def mixed_samples(validation):
    """Full, exo-only, ultrasound (no audio), ego-only, no point cloud, and text only."""
    full = next(s for s in validation if s.take == MISS_FULL)
    exo_only = next(s for s in validation if s.take == EXO_ONLY)
    ultrasound = next(s for s in validation if s.take == ULTRASOUND)
    ego_only = replace(full, modalities=full.modalities - {"exo_frames", "point_cloud", "audio"})
    no_cloud = replace(full, modalities=full.modalities - {"point_cloud"})
    text_only = replace(full, modalities=frozenset())
    return [full, exo_only, ultrasound, ego_only, no_cloud, text_only]


@pytest.fixture(scope="module")
def model(tiny_model_config):
    torch.manual_seed(0)
    return build_model(tiny_model_config)


def test_mixed_modality_batch_forward(model, validation, merged_file, tokenizer, tiny_data_config):
    batch = make_batch(mixed_samples(validation), merged_file, tokenizer, tiny_data_config)
    assert batch["ego_view_mask"].any(1).tolist() == [True, False, True, True, True, False]
    assert batch["exo_view_mask"].any(1).tolist() == [True, True, True, False, True, False]
    output = model(**batch)
    assert output["logits"].shape == (*batch["input_ids"].shape, len(tokenizer))
    assert torch.isfinite(output["loss"])


def test_visual_tokens_land_exactly_on_the_placeholders(model, validation, merged_file, tokenizer, tiny_data_config):
    batch = make_batch(mixed_samples(validation), merged_file, tokenizer, tiny_data_config)
    model.eval()
    with torch.no_grad():  # same seed: PTv3 shuffles its serialisation orders even in eval mode (reference)
        torch.manual_seed(0)
        embeds = model.input_embeddings(batch["input_ids"], **visual_inputs(batch))
        torch.manual_seed(0)
        visual = model.visual_features(**visual_inputs(batch))
        text = model.language_model.get_input_embeddings()(batch["input_ids"].clamp(min=0))
    placeholders = batch["input_ids"] == IMAGE_TOKEN_ID
    assert torch.equal(embeds[placeholders], visual)
    assert torch.equal(embeds[~placeholders], text[~placeholders])
    assert (batch["labels"][placeholders] == IGNORE_INDEX).all()
    # per sample: ego tokens first, then exo; each branch contributes tokens_per_branch
    counts = placeholders.sum(1).tolist()
    assert counts == [2 * TINY_TOKENS, TINY_TOKENS, 2 * TINY_TOKENS, TINY_TOKENS, 2 * TINY_TOKENS, 0]
    model.train()


def test_placeholder_count_mismatch_is_a_clear_error(model, validation, merged_file, tokenizer, tiny_data_config):
    wrong = replace(tiny_data_config, tokens_per_branch=TINY_TOKENS + 1)
    batch = make_batch(mixed_samples(validation)[:1], merged_file, tokenizer, wrong)
    with pytest.raises(ValueError, match="tokens_per_branch of the data and the model differ"):
        model(**batch)


def _gradients_after_two_steps(model, batch):
    """Two SGD steps (LoRA A only gets gradients once B has moved from its zero init)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        model(**batch)["loss"].backward()
        optimizer.step()
    return {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("bits", [16, 4])
def test_gradients_reach_every_trainable_part_and_no_frozen_one(
    bits, tiny_model_config, validation, merged_file, tokenizer, tiny_data_config
):
    torch.manual_seed(0)
    model = build_model(replace(tiny_model_config, bits=bits, unfreeze_n_vision_tower_layers=2))
    batch = make_batch(mixed_samples(validation)[:3], merged_file, tokenizer, tiny_data_config, "train")
    grads = _gradients_after_two_steps(model, batch)
    # CLIP's last layer (2 of 0-2) is trainable, as in the reference, but features are the output of layer 1
    after_selected = "vision_tower.vision_tower.encoder.layers.2."
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith(after_selected))
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and not name.startswith(after_selected):
            assert grads[name] is not None and grads[name].abs().sum() > 0, name
        else:
            assert grads[name] is None, name
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"language_model", "vision_tower", "image_pooler", "mm_projector"}
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    assert any("lora_B" in n for n in names) and not any(
        n.startswith("language_model") and "lora_" not in n for n in names
    )
    assert any(".project_pc." in n for n in names)
    assert not any("point_transformer" in n and ".project_pc." not in n for n in names)  # PTv3 frozen
    if bits == 4:
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.language_model.modules())


@pytest.mark.parametrize(("unfreeze", "expected"), [(0, []), (1, [2]), (2, [1, 2]), (5, [0, 1, 2])])
def test_vision_tower_trains_the_last_layers_counted_from_the_last(unfreeze, expected):
    tower = CLIPVisionTower.from_name_or_config(TINY_VISION, select_layer=-2, unfreeze_layers=unfreeze)
    layers = tower.vision_tower.encoder.layers
    for index, layer in enumerate(layers):  # the reference's encoder.layers[-N:], whole layers
        assert {p.requires_grad for p in layer.parameters()} == {index in expected}, index
    assert not any(p.requires_grad for p in tower.vision_tower.embeddings.parameters())
    assert not any(p.requires_grad for p in tower.vision_tower.post_layernorm.parameters())


def test_reference_preset_names_match_the_released_checkpoint(
    tiny_model_config, validation, merged_file, tokenizer, tiny_data_config
):
    model = build_model(replace(tiny_model_config, preset="reference", mask_extras=False))
    names = set(model.state_dict())
    for key in (
        "image_pooler.bert.encoder.layer.2.attention.self.query.weight",
        "image_pooler.bert.embeddings.position_embeddings.weight",
        "image_pooler.bert.pooler.dense.weight",
        "image_pooler.gaze_encoder.mlp.0.weight",
        "image_pooler.hand_encoder.mlp.2.bias",
        "image_pooler.audio_projector.weight",
        "image_pooler.point_transformer.project_pc.weight",
        "mm_projector.0.weight",
        "mm_projector.2.bias",
    ):
        assert key in names, key
    assert not any("ego_bert" in n or "exo_bert" in n for n in names)
    assert model.image_pooler.bert.config.num_hidden_layers == 3
    batch = make_batch(mixed_samples(validation), merged_file, tokenizer, tiny_data_config)
    assert torch.isfinite(model(**batch)["loss"])


def test_paper_preset_has_two_separate_two_layer_branches(model):
    pooler = model.image_pooler
    assert pooler.ego_bert is not pooler.exo_bert
    assert pooler.ego_bert.config.num_hidden_layers == pooler.exo_bert.config.num_hidden_layers == 2


def test_point_clouds_of_different_sizes_in_one_batch(model, validation, merged_file, tokenizer, tiny_data_config):
    batch = make_batch(mixed_samples(validation)[:3], merged_file, tokenizer, tiny_data_config)
    big = torch.rand(1500, 6)
    batch["point_cloud"] = torch.cat([big, torch.rand(10, 6)])
    batch["point_cloud_batch"] = torch.cat([torch.zeros(1500, dtype=torch.long), torch.full((10,), 2)])
    batch["point_cloud_mask"] = torch.tensor([True, False, True])
    model.eval()
    with torch.no_grad():
        pooler = model.image_pooler
        tokens = cloud_tokens(pooler.point_transformer, *point_cloud_inputs(batch), pooler.config)
        assert tokens.shape == (3, TINY_VISION["hidden_size"]) and torch.isfinite(tokens).all()
        assert torch.isfinite(model(**batch)["loss"])
    model.train()


def _reference_visual_tokens(model, batch):
    """The reference's fused and projected tokens, one sample at a time from the model's encoders.

    The reference pooler (``builder.py`` ``ImageEmbeddingPooler.forward``, called per branch by
    ``llava_arch.py:185-242``): the sample's view tokens, zero-padded (and masked) to the batch's most
    views; then, ego, ``gaze_encoder`` of each real view's row and ``hand_encoder`` likewise, each
    zero-padded *after* encoding; exo, ``audio_projector`` of the sample's audio or of a zero row, then
    the point-cloud token or ``project_pc`` of a zero feature (its bias). Gaze, hand and audio tokens
    exist only if some sample of the batch has that input; the point-cloud token always does (the
    training Dataset gives every sample an entry), a zero vector if no sample has a cloud. Every extra
    is attended. Output: the BERT's first N positions.
    """
    pooler = model.image_pooler
    ptv3 = pooler.point_transformer
    torch.manual_seed(0)  # PTv3 shuffles its serialisation orders
    clouds = cloud_tokens(ptv3, *point_cloud_inputs(batch), pooler.config) if batch["point_cloud_mask"].any() else None
    fused = []
    for b in range(len(batch["input_ids"])):
        for branch in ("ego", "exo"):
            slots = batch[f"{branch}_view_mask"].shape[1]
            n_views = int(batch[f"{branch}_view_mask"][b].sum())
            if n_views == 0:
                continue
            features = model.vision_tower(batch[f"{branch}_images"][b, :n_views])
            patches, width = features.shape[1:]
            sequence = [features.reshape(-1, width), torch.zeros((slots - n_views) * patches, width)]
            attended = [torch.ones(n_views * patches), torch.zeros((slots - n_views) * patches)]
            extras = []
            if branch == "ego":
                for encoder, rows, present in (
                    (pooler.gaze_encoder, batch["gaze"], batch["gaze_mask"]),
                    (pooler.hand_encoder, batch["hands"], batch["hand_mask"]),
                ):
                    if present.any():
                        extras += [encoder(rows[b, :n_views]), torch.zeros(slots - n_views, width)]
            else:
                if batch["audio_mask"].any():
                    audio = batch["audio"][b] if batch["audio_mask"][b] else torch.zeros(batch["audio"].shape[1])
                    extras.append(pooler.audio_projector(audio)[None])
                if clouds is None:
                    extras.append(torch.zeros(1, width))
                else:
                    extras.append((clouds[b] if batch["point_cloud_mask"][b] else ptv3.project_pc.bias)[None])
            sequence += extras
            attended += [torch.ones(len(extra)) for extra in extras]
            output = pooler.encoder(branch)(
                inputs_embeds=torch.cat(sequence)[None], attention_mask=torch.cat(attended)[None].long()
            ).last_hidden_state
            fused.append(output[0, : pooler.tokens_per_branch])
    return model.mm_projector(torch.cat(fused))


def test_unmasked_extras_follow_the_reference_sequence(
    tiny_model_config, validation, merged_file, tokenizer, tiny_data_config
):
    model = build_model(replace(tiny_model_config, preset="reference", mask_extras=False)).eval()
    full, _, ultrasound, _, no_cloud, _ = mixed_samples(validation)
    no_gaze = replace(no_cloud, modalities=no_cloud.modalities - {"eye_gaze"})
    ragged = make_batch([full, ultrasound, no_gaze], merged_file, tokenizer, tiny_data_config)
    assert ragged["ego_view_mask"].sum(1).tolist() == [4, 2, 4]  # padded ego view slots in sample 1
    assert ragged["audio_mask"].tolist() == [True, False, True]
    assert ragged["point_cloud_mask"].tolist() == [True, True, False]
    assert ragged["gaze_mask"].any(1).tolist() == [True, True, False]
    cloudless = make_batch([no_cloud, no_gaze], merged_file, tokenizer, tiny_data_config)
    assert not cloudless["point_cloud_mask"].any()
    for batch in (ragged, cloudless):
        with torch.no_grad():
            expected = _reference_visual_tokens(model, batch)
            torch.manual_seed(0)
            actual = model.visual_features(**visual_inputs(batch))
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", [16, 4])
def test_trainable_dtype_bfloat16_includes_the_lora_adapters(
    bits, tiny_model_config, validation, merged_file, tokenizer, tiny_data_config
):
    model = build_model(replace(tiny_model_config, bits=bits, trainable_dtype="bfloat16"))
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    lora = [name for name in trainable if "lora_" in name]
    assert lora and all(trainable[name].dtype == torch.bfloat16 for name in lora)
    # PTv3, project_pc included, runs in float32 (the reference casts it on every call)
    assert {name for name, p in trainable.items() if p.dtype != torch.bfloat16} == {
        name for name in trainable if ".project_pc." in name
    }
    batch = make_batch(mixed_samples(validation)[:2], merged_file, tokenizer, tiny_data_config, "train")
    model(**batch)["loss"].backward()
    for name in lora:
        if "lora_B" in name:  # lora_A's gradient is zero while lora_B is at its zero init
            assert trainable[name].grad.dtype == torch.bfloat16 and trainable[name].grad.abs().sum() > 0, name


def test_quantised_llm_from_a_config_builds_on_ranks_that_do_not_save(tiny_model_config, monkeypatch):
    """Under torchrun, transformers' ``save_pretrained`` writes on rank 0 only: a config-built 4-bit LLM must
    not go through it, or every other rank reloads an empty folder."""
    from transformers import PreTrainedModel

    monkeypatch.setattr(PreTrainedModel, "should_save_on_this_rank", lambda self, is_main_process: False)
    torch.manual_seed(0)
    llm, _ = load_language_model(replace(tiny_model_config, bits=4))
    assert any(type(module).__name__ == "Linear4bit" for module in llm.modules())
    torch.manual_seed(0)  # the same random weights, written and read back
    expected = LlamaForCausalLM(LlamaConfig(**tiny_model_config.llm_config))
    torch.testing.assert_close(llm.get_input_embeddings().weight, expected.get_input_embeddings().weight)


def test_lora_targets_every_linear_layer_but_lm_head():
    llm = LlamaForCausalLM(LlamaConfig(**{**TINY_LLM, "vocab_size": 100}))
    assert lora_target_modules(llm) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_parameter_summary_lists_every_part(model):
    table = parameter_summary(model)
    for part in (
        "LoRA",
        "language model",
        "vision tower",
        "fusion encoders",
        "gaze/hand/audio encoders",
        "point transformer",
        "point cloud projection",
        "mm projector",
        "total",
    ):
        assert f"| {part} |" in table


def _save_tiny_llava_v15(folder, tokenizer):
    """A tiny checkpoint in liuhaotian/llava-v1.5's layout: LLaMA weights + model.mm_projector.* + llava config."""
    torch.manual_seed(1)
    llm = LlamaForCausalLM(LlamaConfig(**{**TINY_LLM, "vocab_size": len(tokenizer)}))
    llm.save_pretrained(folder)
    state = load_file(folder / "model.safetensors")
    hidden, width = TINY_VISION["hidden_size"], TINY_LLM["hidden_size"]
    projector = {
        "model.mm_projector.0.weight": torch.randn(width, hidden),
        "model.mm_projector.0.bias": torch.randn(width),
        "model.mm_projector.2.weight": torch.randn(width, width),
        "model.mm_projector.2.bias": torch.randn(width),
    }
    save_file({**state, **projector}, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="llava",
        architectures=["LlavaLlamaForCausalLM"],
        mm_projector_type="mlp2x_gelu",
        mm_hidden_size=hidden,
        mm_vision_select_layer=-2,
    )
    (folder / "config.json").write_text(json.dumps(config))
    return llm, projector


def test_llava_v15_checkpoint_loads_with_its_projector(tmp_path, tokenizer, tiny_model_config):
    llm, projector = _save_tiny_llava_v15(tmp_path, tokenizer)
    assert checkpoint_layout(json.loads((tmp_path / "config.json").read_text())) == "llava-v1.5"
    config = replace(tiny_model_config, model_name_or_path=str(tmp_path), llm_config=None, lora_enable=False)
    model = build_model(config)
    assert torch.equal(model.mm_projector[0].weight, projector["model.mm_projector.0.weight"])
    assert torch.equal(model.mm_projector[2].bias, projector["model.mm_projector.2.bias"])
    assert torch.equal(model.language_model.model.embed_tokens.weight, llm.model.embed_tokens.weight)


@pytest.mark.parametrize("preset", ["reference", "paper"])
def test_reference_preset_draws_the_extra_encoders_as_the_reference_and_keeps_a_loaded_projector(
    preset, tmp_path, tokenizer, tiny_model_config
):
    """``reference``: N(0, initializer_range) weights and zero biases (HF's init in the reference's
    ``from_pretrained``, see scripts/check_reference_parity.py ``init``); ``paper`` keeps PyTorch's default."""
    _, projector = _save_tiny_llava_v15(tmp_path, tokenizer)
    config = replace(
        tiny_model_config, preset=preset, model_name_or_path=str(tmp_path), llm_config=None, lora_enable=False
    )
    model = build_model(config)
    assert torch.equal(model.mm_projector[0].weight, projector["model.mm_projector.0.weight"])
    std = model.language_model.config.initializer_range
    pooler = model.image_pooler
    for linear in (*pooler.gaze_encoder.mlp[::2], *pooler.hand_encoder.mlp[::2], pooler.audio_projector):
        if preset == "reference":
            assert not linear.bias.any() and float(linear.weight.std()) == pytest.approx(std, rel=0.2)
        else:  # uniform in +-1/sqrt(fan_in), bias included
            assert linear.bias.any() and float(linear.weight.abs().max()) <= linear.in_features**-0.5


def test_llava_hf_checkpoint_loads_with_its_projector(tmp_path, tokenizer, tiny_model_config):
    torch.manual_seed(2)
    llava = LlavaForConditionalGeneration(
        LlavaConfig(
            text_config=LlamaConfig(**{**TINY_LLM, "vocab_size": len(tokenizer)}),
            vision_config=CLIPVisionConfig(**TINY_VISION),
        )
    )
    llava.save_pretrained(tmp_path)
    assert checkpoint_layout(json.loads((tmp_path / "config.json").read_text())) == "llava-hf"
    config = replace(tiny_model_config, model_name_or_path=str(tmp_path), llm_config=None, lora_enable=False)
    model = build_model(config)
    assert torch.equal(model.mm_projector[0].weight, llava.model.multi_modal_projector.linear_1.weight)
    assert torch.equal(
        model.language_model.model.layers[1].mlp.up_proj.weight, llava.model.language_model.layers[1].mlp.up_proj.weight
    )
    assert torch.equal(model.language_model.lm_head.weight, llava.lm_head.weight)


def test_greedy_generation_with_cache_equals_recomputation(model, validation, merged_file, tokenizer, tiny_data_config):
    samples = mixed_samples(validation)[:3]
    batch = make_batch(samples, merged_file, tokenizer, tiny_data_config, "generate")
    model.eval()
    generated = model.generate(**batch, max_new_tokens=6, eos_token_id=-1)
    assert generated.shape == (3, 6)
    with torch.no_grad():
        for b in range(3):  # each sample alone, no cache, full recomputation each step
            single = make_batch(samples[b : b + 1], merged_file, tokenizer, tiny_data_config, "generate")
            ids = single["input_ids"]
            for step in range(6):
                logits = model(**{**single, "input_ids": ids, "attention_mask": torch.ones_like(ids)})["logits"]
                token = logits[0, -1].argmax()
                assert token == generated[b, step], (b, step)
                ids = torch.cat([ids, token.view(1, 1)], dim=1)
    model.train()


def test_generation_stops_rows_at_eos(model, validation, merged_file, tokenizer, tiny_data_config):
    batch = make_batch(mixed_samples(validation)[:2], merged_file, tokenizer, tiny_data_config, "generate")
    model.eval()
    first = model.generate(**batch, max_new_tokens=1, eos_token_id=-1)[:, 0]
    # the pad is fed back to the LLM, so it must be a vocabulary id: one the model does not write there
    unstopped = model.generate(**batch, max_new_tokens=5, eos_token_id=-1)[0, 1:].tolist()
    pad = next(token for token in range(len(tokenizer)) if token not in unstopped)
    stopped = model.generate(**batch, max_new_tokens=5, eos_token_id=int(first[0]), pad_token_id=pad)
    assert stopped[0, 0] == first[0] and (stopped[0, 1:] == pad).all()
    model.train()


def _cached_greedy_loop(model, batch, max_new_tokens, eos_token_id, pad_token_id):
    """The oracle: the hand-written greedy decoding with a KV cache that ``EgoExorLlava.generate`` was before
    it called the library's ``generate``. Positions start at each sample's first real token; a row stops at
    EOS (later positions hold the pad), decoding stops when every row has."""
    mask = batch["attention_mask"]
    embeds = model.input_embeddings(batch["input_ids"], **visual_inputs(batch))
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    outputs = model.language_model(
        inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
    )
    finished = torch.zeros(len(mask), dtype=torch.bool)
    generated = []
    for _ in range(max_new_tokens):
        predicted = outputs.logits[:, -1].argmax(-1)
        generated.append(predicted.masked_fill(finished, pad_token_id))
        finished |= predicted == eos_token_id
        if finished.all():
            break
        mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
        positions = positions[:, -1:] + 1
        outputs = model.language_model(  # finished rows keep decoding; their tokens are discarded
            input_ids=predicted[:, None],
            attention_mask=mask,
            position_ids=positions,
            past_key_values=outputs.past_key_values,
            use_cache=True,
        )
    return torch.stack(generated, dim=1)


def _decode_with_llm_inputs(model, decode, *args, **kwargs):
    """``decode(*args, **kwargs)``'s token ids, and the position ids the LLM received at each step."""
    seen = []
    llm = model.language_model.get_base_model()
    hook = llm.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs["position_ids"]), with_kwargs=True)
    try:
        torch.manual_seed(0)  # PTv3 shuffles its serialisation orders
        with torch.no_grad():
            return decode(*args, **kwargs), seen
    finally:
        hook.remove()


def _first_steps(ids, token):
    """Per row, the first step that produced ``token`` (None: never)."""
    return [row.index(token) if token in row else None for row in ids.tolist()]


def test_library_generation_equals_the_cached_greedy_loop(model, validation, merged_file, tokenizer, tiny_data_config):
    full, exo_only, _, ego_only, _, text_only = mixed_samples(validation)
    batch = make_batch([full, exo_only, ego_only, text_only], merged_file, tokenizer, tiny_data_config, "generate")
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) == 3 and (batch["attention_mask"][:, -1] == 1).all()  # ragged, left-padded
    steps, pad = 40, tokenizer.pad_token_id
    model.eval()
    free, _ = _decode_with_llm_inputs(model, _cached_greedy_loop, model, batch, steps, -1, pad)
    # EOS ids that stop the rows at different steps: every row, or some rows with the others running to the limit
    tokens = sorted(set(free.flatten().tolist()) - {pad})
    everywhere = [t for t in tokens if None not in _first_steps(free, t) and len(set(_first_steps(free, t))) > 1]
    somewhere = [t for t in tokens if None in _first_steps(free, t) and len(set(_first_steps(free, t))) > 1]
    assert everywhere and somewhere, free.tolist()
    compared = 0
    for eos in (everywhere[0], somewhere[0]):
        ours, our_positions = _decode_with_llm_inputs(
            model, model.generate, **batch, max_new_tokens=steps, eos_token_id=eos, pad_token_id=pad
        )
        expected, positions = _decode_with_llm_inputs(model, _cached_greedy_loop, model, batch, steps, eos, pad)
        assert torch.equal(ours, expected), eos
        assert (ours == pad).any()  # rows padded after their EOS
        # one LLM call per new token (the loop made an unused last call when it ran to the limit)
        assert len(our_positions) == ours.shape[1] and len(positions) in (ours.shape[1], ours.shape[1] + 1)
        assert all(torch.equal(a, b) for a, b in zip(our_positions, positions[: len(our_positions)], strict=True))
        compared += ours.numel()
    assert expected.shape[1] == steps and compared > 4 * steps
    model.train()


def test_checkpoint_generation_config_leaves_decoding_greedy(
    tmp_path, validation, merged_file, tokenizer, tiny_model_config, tiny_data_config
):
    _save_tiny_llava_v15(tmp_path, tokenizer)
    settings = {"do_sample": True, "temperature": 0.9, "top_p": 0.6, "forced_bos_token_id": 5, "bos_token_id": 1}
    (tmp_path / "generation_config.json").write_text(json.dumps(settings))
    config = replace(tiny_model_config, model_name_or_path=str(tmp_path), llm_config=None, lora_enable=False)
    model = build_model(config).eval()
    batch = make_batch(mixed_samples(validation)[:2], merged_file, tokenizer, tiny_data_config, "generate")
    torch.manual_seed(0)
    ours = model.generate(**batch, max_new_tokens=3, eos_token_id=-1)
    torch.manual_seed(0)
    with torch.no_grad():
        expected = _cached_greedy_loop(model, batch, 3, -1, tokenizer.pad_token_id)
    assert torch.equal(ours, expected) and not (expected[:, 0] == 5).all()  # the file would force token 5 first


def test_activation_checkpointing_without_deprecation_warnings(tiny_model_config):
    model = build_model(tiny_model_config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.activation_checkpointing_enable()
    assert [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))] == []
    assert model.language_model.get_base_model().is_activation_checkpointing

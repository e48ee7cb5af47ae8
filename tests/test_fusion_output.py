"""``fusion_output``: what each branch passes to the LLM (first_view, append, summary), the placeholders that
follow it, and the checkpoints that record it."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from test_model import make_batch, mixed_samples, visual_inputs

from egoexor.config import ConfigError, ModelConfig, checkpoint_config, data_for_model, read_checkpoint_config
from egoexor.data.samples import load_samples
from egoexor.model.build import build_model, load_trained, save_checkpoint
from egoexor.prompt import IMAGE_TOKEN_ID

CLIP_SIDE = 32
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def validation(sample_files):
    return load_samples(sample_files["validation"])


def fitted(model_config, data_config):
    return data_for_model(replace(data_config, appended_tokens=(0, 0)), model_config, CLIP_SIDE)


@pytest.mark.parametrize("output", ["first_view", "append", "summary"])
def test_placeholders_follow_the_fusion_output(
    output, tiny_model_config, tiny_data_config, validation, merged_file, tokenizer
):
    config = replace(tiny_model_config, fusion_output=output)
    data = fitted(config, tiny_data_config)
    n = config.tokens_per_branch
    appended = {"first_view": (0, 0), "summary": (0, 0), "append": (2, 2)}[output]  # gaze, hands | audio, cloud
    assert data.appended_tokens == appended
    model = build_model(config).eval()
    samples = mixed_samples(validation)
    batch = make_batch(samples, merged_file, tokenizer, data)
    placeholders = (batch["input_ids"] == IMAGE_TOKEN_ID).sum(1).tolist()
    ego, exo = batch["ego_view_mask"].any(1).tolist(), batch["exo_view_mask"].any(1).tolist()
    branches = list(zip(ego, exo, strict=True))
    assert placeholders == [(n + appended[0]) * ego + (n + appended[1]) * exo for ego, exo in branches]
    with torch.no_grad():
        visual = model.visual_features(**visual_inputs(batch))
        assert len(visual) == sum(placeholders) and torch.isfinite(visual).all()
        assert torch.isfinite(model(**batch)["loss"])


def test_summary_slots_are_the_inputs_and_absent_is_the_learned_vector(
    tiny_model_config, tiny_data_config, validation, merged_file, tokenizer
):
    config = replace(tiny_model_config, fusion_output="summary")
    assert config.branch_inputs("ego") == ("ego_frames", "gaze", "hands")
    assert config.branch_inputs("exo") == ("audio", "exo_frames", "ultrasound", "point_cloud")
    model = build_model(config).eval()
    pooler, data = model.image_pooler, fitted(config, tiny_data_config)
    full, _, ultrasound, *_ = mixed_samples(validation)
    batch = make_batch([full, ultrasound], merged_file, tokenizer, data)
    inputs = {k: v for k, v in visual_inputs(batch).items() if not k.startswith(("exo_", "ego_"))}
    views = torch.randn(2, batch["exo_view_mask"].shape[1], 16, 32)  # tiny CLIP: 16 patches of width 32
    with torch.no_grad():
        out = pooler.branch("exo", views, batch["exo_view_mask"], inputs, batch["exo_view_kinds"])
    n, slots = config.tokens_per_branch, 4
    assert out.shape == (2, n, 32)
    absent, types = pooler.output_absent["exo"], pooler.output_types["exo"]
    # the MISS take has no ultrasound screen: its slot 2 is the absent vector (+ its type); the Ultrasound take
    # has no audio: slot 0 likewise; each present input's slot differs from it
    assert torch.allclose(out[0, n - slots + 2], absent[2] + types[2])
    assert torch.allclose(out[1, n - slots + 0], absent[0] + types[0])
    assert not torch.allclose(out[0, n - slots + 0], absent[0] + types[0])
    assert not torch.allclose(out[1, n - slots + 2], absent[2] + types[2])


@pytest.mark.parametrize("output", ["first_view", "append", "summary"])
def test_output_names_say_what_each_position_carries(output, tiny_model_config):
    pooler = build_model(replace(tiny_model_config, fusion_output=output)).image_pooler
    n, view = tiny_model_config.tokens_per_branch, ["view"]
    expected = {
        "first_view": (view * n, view * n),
        "append": (view * n + ["gaze", "hands"], view * n + ["audio", "point_cloud"]),
        "summary": (
            view * (n - 3) + ["ego_frames", "gaze", "hands"],
            view * (n - 4) + ["audio", "exo_frames", "ultrasound", "point_cloud"],
        ),
    }[output]
    assert (pooler.output_names("ego"), pooler.output_names("exo")) == expected


def test_summary_needs_room_for_its_slots(tiny_model_config):
    with pytest.raises(ConfigError, match="tokens_per_branch 4 must exceed the slots of a branch"):
        replace(tiny_model_config, fusion_output="summary", tokens_per_branch=4)


def test_checkpoints_record_it_and_old_ones_read_as_first_view(tiny_model_config, tiny_data_config, tmp_path):
    config = replace(tiny_model_config, fusion_output="append")
    data = fitted(config, tiny_data_config)
    model = build_model(config)
    save_checkpoint(model, tmp_path, checkpoint_config(config, data))
    saved_model, saved_data = read_checkpoint_config(tmp_path)
    assert saved_model.fusion_output == "append" and saved_data.appended_tokens == (2, 2)
    loaded, _ = load_trained(tmp_path)
    assert torch.equal(loaded.image_pooler.output_absent["ego"], model.image_pooler.output_absent["ego"])
    # a checkpoint written before the choice existed was a first_view model, whatever the default is now
    saved = json.loads((tmp_path / "egoexor_config.json").read_text())
    del saved["model"]["fusion_output"]
    (tmp_path / "egoexor_config.json").write_text(json.dumps(saved))
    assert read_checkpoint_config(tmp_path)[0].fusion_output == "first_view"


def test_a_checkpoint_whose_weights_do_not_match_its_fusion_output_is_one_clear_error(
    tiny_model_config, tiny_data_config, tmp_path
):
    config = replace(tiny_model_config, fusion_output="summary")
    save_checkpoint(
        build_model(tiny_model_config), tmp_path, checkpoint_config(config, fitted(config, tiny_data_config))
    )
    with pytest.raises(ValueError, match="output_absent"):
        load_trained(tmp_path)


def test_the_reference_preset_keeps_the_first_view():
    """The released checkpoint's configuration, and what convert_reference builds, pass the first view on."""
    from egoexor.convert_reference import model_config_from

    reference = yaml.safe_load((ROOT / "configs" / "reference.yaml").read_text())["model"]
    assert ModelConfig(**reference).fusion_output == "first_view"
    assert model_config_from({}, {}, "base", None).fusion_output == "first_view"


def test_infer_refuses_a_fusion_output_its_weights_were_not_trained_with(
    tiny_model_config, tiny_data_config, tmp_path, capsys, merged_file, sample_files, tokenizer
):
    from egoexor import infer

    config = replace(tiny_model_config, fusion_output="summary")
    save_checkpoint(
        build_model(tiny_model_config), tmp_path, checkpoint_config(config, fitted(config, tiny_data_config))
    )
    tokenizer.save_pretrained(tmp_path)
    argv = ["--checkpoint", str(tmp_path), "--hdf5", str(merged_file), "--samples", str(sample_files["test"])]
    assert infer.main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "says fusion_output summary, but its weights hold no fusion output" in err
    assert not (tmp_path / "out").exists()

"""The configuration a checkpoint holds: derived data fields, and what is saved is what is read back."""

import json
from dataclasses import replace

import pytest

from egoexor.config import (
    CONFIG_FILE,
    ConfigError,
    DataConfig,
    ModelConfig,
    checkpoint_config,
    data_for_model,
    read_checkpoint_config,
)


def test_data_fields_that_follow_the_model_are_derived_and_a_conflict_is_an_error():
    model = ModelConfig(tokens_per_branch=16)
    data = data_for_model(DataConfig(flip_rule="all"), model, image_size=32)
    assert (data.image_size, data.tokens_per_branch, data.flip_rule) == (32, 16, "all")
    assert data_for_model(data, model, image_size=32) == data
    with pytest.raises(ConfigError, match="data.image_size 224 differs from the model's 32"):
        data_for_model(DataConfig(image_size=224), model, image_size=32)
    with pytest.raises(ConfigError, match="data.tokens_per_branch 8 differs from the model's 16"):
        data_for_model(DataConfig(tokens_per_branch=8), model, image_size=32)


def test_the_saved_configuration_reads_back_with_overrides(tmp_path):
    model = ModelConfig(bits=4, lora_r=8, features=("gaze", "audio"))
    data = data_for_model(DataConfig(prompt_roles="reference_inference"), model, image_size=336)
    (tmp_path / CONFIG_FILE).write_text(json.dumps(checkpoint_config(model, data)))
    assert read_checkpoint_config(tmp_path) == (model, data)
    assert read_checkpoint_config(tmp_path, bits=16) == (replace(model, bits=16), data)
    with pytest.raises(FileNotFoundError, match=f"--checkpoint {tmp_path / 'none'}: no {CONFIG_FILE}"):
        read_checkpoint_config(tmp_path / "none", "--checkpoint")

"""Shared fixtures: a tiny synthetic dataset in the released layout, its merged file, and the tiny model's
configuration, read from ``configs/tiny.yaml`` (the model the demo trains): the one definition of it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from egoexor.data.merge_h5 import merge_files
from egoexor.data.synthetic import SyntheticDataset, generate

TINY_YAML = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
TINY = yaml.safe_load(TINY_YAML.read_text())
#: The ``model`` section of ``configs/tiny.yaml``: a complete model small enough to build, train and run on a
#: CPU in seconds. Its parts, for tests that build one of them alone:
TINY_MODEL = TINY["model"]
TINY_LLM, TINY_VISION = TINY_MODEL["llm_config"], TINY_MODEL["vision_config"]
TINY_TOKENS = TINY_MODEL["tokens_per_branch"]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return generate(tmp_path_factory.mktemp("tiny"), "tiny", seed=0)


@pytest.fixture(scope="session")
def merged_file(tiny_dataset: SyntheticDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("merged") / "egoexor.h5"
    merge_files(tiny_dataset.files, tiny_dataset.splits_file, output)
    return output


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from egoexor.data.tokenizer import save_tiny_tokenizer

    return save_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path):
    from egoexor.data.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def clap_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from egoexor.data.audio import save_tiny_clap

    return save_tiny_clap(tmp_path_factory.mktemp("clap"))


@pytest.fixture(scope="session")
def sample_files(merged_file: Path, tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Sample JSON files of every split (2 permutations for train), written by the CLI."""
    from egoexor.data.make_samples import main, samples_file_name

    out = tmp_path_factory.mktemp("samples")
    files = {}
    for split, n in (("train", 2), ("validation", 1), ("test", 1)):
        argv = [
            "--hdf5",
            str(merged_file),
            "--split",
            split,
            "--n-permutations",
            str(n),
            "--out",
            str(out),
            "--tokenizer",
            str(tokenizer_dir),
        ]
        assert main(argv) == 0
        files[split] = out / samples_file_name(split, n, 0.0)
    return files


@pytest.fixture(scope="session")
def tiny_model_config(tokenizer):
    from egoexor.config import ModelConfig

    assert TINY_LLM["vocab_size"] == len(tokenizer), f"{TINY_YAML}: vocab_size is not the tiny tokenizer's"
    return ModelConfig(**TINY_MODEL)


@pytest.fixture(scope="session")
def tiny_data_config(tiny_model_config, clap_dir):
    """The data configuration of ``configs/tiny.yaml`` fitted to its model, with the tiny CLAP for audio."""
    from egoexor.config import DataConfig, data_for_model

    data = DataConfig(**{**TINY["data"], "audio_encoder": str(clap_dir)})
    return data_for_model(data, tiny_model_config, TINY_VISION["image_size"])

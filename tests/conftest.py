"""Shared fixtures: a tiny synthetic dataset in the released layout and its merged file."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_config import TINY_LLM, TINY_PTV3, TINY_TOKENS, TINY_VISION

from egoexor.data.merge_h5 import merge_files
from egoexor.data.synthetic import SyntheticDataset, generate


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
        argv = ["--hdf5", str(merged_file), "--split", split, "--n-permutations", str(n), "--out", str(out),
                "--tokenizer", str(tokenizer_dir)]  # fmt: skip
        assert main(argv) == 0
        files[split] = out / samples_file_name(split, n, 0.0)
    return files


@pytest.fixture(scope="session")
def tiny_model_config(tokenizer):
    from egoexor.config import ModelConfig

    return ModelConfig(
        model_name_or_path=None, llm_config={**TINY_LLM, "vocab_size": len(tokenizer)}, vision_tower=None,
        vision_config=TINY_VISION, unfreeze_n_vision_tower_layers=2, tokens_per_branch=TINY_TOKENS,
        fusion_heads=2, fusion_max_positions=160, encoder_hidden=32, point_transformer=TINY_PTV3, bits=16,
        dtype="float32", lora_r=8, lora_alpha=16,
    )  # fmt: skip


@pytest.fixture(scope="session")
def tiny_data_config(clap_dir):
    from egoexor.config import DataConfig

    return DataConfig(image_size=TINY_VISION["image_size"], tokens_per_branch=TINY_TOKENS, audio_encoder=str(clap_dir))

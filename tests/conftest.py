"""Shared fixtures: a tiny synthetic dataset in the released layout and its merged file."""

from __future__ import annotations

from pathlib import Path

import pytest

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

"""Frozen CLAP audio embeddings, as the reference computes them inside its data pipeline.

``laion/larger_clap_general`` turns each frame's 1-s stereo snippet (normalised and mixed to mono
by :func:`egoexor.modalities.audio.audio_snippet`) into one L2-normalised 512-d vector. Computing it
in every data worker is slow; ``python -m egoexor.data.precompute_audio`` caches it once, and
:class:`AudioCache` reads the cached embeddings back.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from transformers import AutoFeatureExtractor, ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel

from egoexor.data.layout import AUDIO_SAMPLE_RATE, TakeKey
from egoexor.data.reader import EgoExorReader, ReadError
from egoexor.data.samples import Sample


class ClapAudioEmbedder:
    """Stereo snippets -> [n, D] CLAP audio embeddings (D = 512 for the reference model), no gradients."""

    def __init__(self, name_or_path: str | os.PathLike, audio_norm: str = "reference") -> None:
        try:
            self.model = ClapModel.from_pretrained(str(name_or_path)).eval().requires_grad_(False)
            self.features = AutoFeatureExtractor.from_pretrained(str(name_or_path))
        except OSError as error:
            raise OSError(f"cannot load the CLAP audio encoder {name_or_path!r}: {error}") from error
        self.name = str(name_or_path)
        self.audio_norm = audio_norm

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    @torch.no_grad()
    def __call__(self, snippets: Sequence[np.ndarray]) -> np.ndarray:
        from egoexor.modalities.audio import audio_snippet

        mono = [audio_snippet(s, self.audio_norm) for s in snippets]
        inputs = self.features(mono, sampling_rate=AUDIO_SAMPLE_RATE, return_tensors="pt")
        return self.model.get_audio_features(**inputs).pooler_output.float().numpy()


class AudioCache:
    """Per-frame audio embeddings written by ``python -m egoexor.data.precompute_audio``."""

    DATASET = "clap"

    def __init__(self, path: str | os.PathLike, audio_norm: str) -> None:
        self.path = Path(path)
        self._reader = EgoExorReader(self.path)  # checks that it is an HDF5 file
        with h5py.File(self.path, "r") as h5:
            if h5.attrs.get("audio_norm") != audio_norm:
                raise ValueError(
                    f"{self.path}: embeddings were computed with audio_norm={h5.attrs.get('audio_norm')!r}, "
                    f"the configuration asks for {audio_norm!r}"
                )

    @classmethod
    def dataset_path(cls, take: TakeKey) -> str:
        """Where the embeddings of a take's frames are, [F, D]: keyed like the main file."""
        return f"{take.path}/audio/{cls.DATASET}"

    def embedding(self, sample: Sample) -> np.ndarray:
        path = self.dataset_path(sample.take)
        if path not in self._reader.h5:
            raise ReadError(f"{self.path}: no embeddings for {sample.take.path}")
        return self._reader.h5[path][sample.frame]


def save_tiny_clap(directory: str | os.PathLike, projection_dim: int = 512) -> Path:
    """A randomly initialised, small CLAP in the released format (for tests and the CPU demo)."""
    audio = ClapAudioConfig(
        depths=[1, 1],
        num_attention_heads=[1, 1],
        hidden_size=32,
        patch_embeds_hidden_size=16,
        window_size=4,
        spec_size=256,
        patch_size=16,
        patch_stride=(16, 16),
        num_mel_bins=64,
        enable_fusion=False,
        projection_dim=32,
        projection_hidden_size=32,
    )
    text = {
        "vocab_size": 64,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
        "intermediate_size": 32,
        "projection_dim": 32,
        "projection_hidden_size": 32,
    }
    torch.manual_seed(0)
    model = ClapModel(ClapConfig(text_config=text, audio_config=audio.to_dict(), projection_dim=projection_dim))
    model.save_pretrained(directory)
    ClapFeatureExtractor(truncation="rand_trunc").save_pretrained(directory)
    return Path(directory)

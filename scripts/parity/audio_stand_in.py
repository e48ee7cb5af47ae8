"""A stand-in for CLAP in the parity check: a fixed random projection of the mono audio input.

Both sides embed the audio input they computed themselves with it (no CLAP weights can be
downloaded here), so the model check covers the audio token's path. Values are rounded to bfloat16
because the reference casts the embedding to bfloat16 before its ``audio_projector``; rounded
values pass that cast unchanged. Depends on numpy and torch only: it runs in both environments.
"""

from __future__ import annotations

import numpy as np
import torch

DIM = 512


def embed(mono: np.ndarray) -> np.ndarray:
    """[S] mono audio input -> [512] float32 embedding (bfloat16 values)."""
    mono = np.asarray(mono, np.float32)
    weights = np.random.default_rng(7).standard_normal((DIM, len(mono))).astype(np.float32)
    embedding = weights @ mono / np.float32(np.sqrt(len(mono)))
    return torch.from_numpy(embedding).to(torch.bfloat16).float().numpy()

"""Token encoders for the non-image inputs: gaze, hands, audio embedding, point cloud.

Shapes and names follow the reference (``GazeEncoder``/``HandEncoder`` MLPs with a ReLU after both
layers, ``audio_projector`` Linear 512 -> D, PTv3 + per-cloud mean + ``project_pc``), so that the
released weights map onto them. Each encoder turns its inputs into one token of the fusion width D
per view (gaze, hands) or per sample (audio, point cloud).
"""

from __future__ import annotations

import torch
from torch import nn


class MLPEncoder(nn.Module):
    """in -> hidden -> out with ReLU after both layers (the reference's gaze and hand encoders)."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 512) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)

"""Token encoders for the non-image inputs: gaze, hands, audio embedding, point cloud.

Shapes and names follow the reference (``GazeEncoder``/``HandEncoder`` MLPs with a ReLU after both
layers, ``audio_projector`` Linear 512 -> D, PTv3 + per-cloud mean + ``project_pc``), so that the
released weights map onto them. Each encoder turns its inputs into one token of the fusion width D
per view (gaze, hands) or per sample (audio, point cloud).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from egoexor.model.point_transformer import PointTransformerV3


class MLPEncoder(nn.Module):
    """in -> hidden -> out with ReLU after both layers (the reference's gaze and hand encoders)."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 512) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


def encode_point_clouds(
    ptv3: PointTransformerV3,
    clouds: Sequence[Tensor | None],
    grid_size: float = 0.01,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``[B, out_channels]``: per-cloud mean of final-stage features; zero rows for missing or empty clouds.

    The reference pooler's semantics (``builder.py`` ``_encode_pc``): each cloud is ``[N_b, in_channels]``
    with xyz first; the whole row (xyz + rgb as stored) is the input feature. All present clouds run as
    one batch, voxelised as ``trunc((xyz - min over the whole batch) / grid_size)`` without merging
    points that share a voxel, so a cloud's voxel grid depends on the other clouds in the batch. It runs
    in fp32 with autocast disabled; ``ptv3``'s encoder must therefore hold fp32 parameters (``project_pc``,
    which the caller applies, may have another dtype).

    Gradients are the caller's choice: the reference wraps this in ``torch.no_grad()`` (a frozen random
    encoder, although train mode still updates BatchNorm statistics and applies drop-path). It then
    applies ``ptv3.project_pc`` to all rows, so a missing cloud contributes ``project_pc.bias`` -- except
    when no cloud in the batch is present, where it returns zeros without projecting.

    Raises:
        ValueError: a cloud has the wrong shape or non-finite values (the message names its batch index),
            or ``ptv3`` is not fp32.
    """
    if grid_size <= 0:
        raise ValueError(f"grid_size must be positive, got {grid_size}")
    weight = ptv3.embedding.stem.conv.weight
    if weight.dtype != torch.float32:
        raise ValueError(f"PointTransformerV3 must stay in float32 (reference); its parameters are {weight.dtype}")
    out = torch.zeros(len(clouds), ptv3.out_channels, device=weight.device)
    present = _checked_clouds(clouds, ptv3.in_channels, weight.device)
    if not present:
        return out
    with torch.autocast(weight.device.type, enabled=False):
        parts = list(present.values())
        points = torch.cat(parts)
        sizes = torch.tensor([len(part) for part in parts], device=weight.device)
        batch = torch.repeat_interleave(torch.arange(len(parts), device=weight.device), sizes)
        feat, final = ptv3(points, _voxelise(points[:, :3], grid_size), batch, generator)
        sums = feat.new_zeros(len(parts), feat.shape[1]).index_add_(0, final.batch, feat)
        means = sums / torch.bincount(final.batch, minlength=len(parts))[:, None]
    return out.index_copy(0, torch.tensor(list(present), device=weight.device), means)


def _checked_clouds(clouds: Sequence[Tensor | None], channels: int, device: torch.device) -> dict[int, Tensor]:
    """Batch index -> fp32 cloud on ``device``, for the clouds that hold points; bad clouds raise."""
    present = {}
    for index, cloud in enumerate(clouds):
        if cloud is None:
            continue
        if cloud.ndim != 2 or cloud.shape[1] != channels:
            raise ValueError(
                f"point cloud {index}: expected shape [N, {channels}] (xyz + features), got {tuple(cloud.shape)}"
            )
        if cloud.shape[0] == 0:
            continue
        cloud = cloud.to(device=device, dtype=torch.float32)
        if not torch.isfinite(cloud).all():
            raise ValueError(f"point cloud {index} contains NaN or infinite values")
        present[index] = cloud
    return present


def _voxelise(xyz: Tensor, grid_size: float) -> Tensor:
    """Integer voxel coordinates from the batch-wide minimum; the division in fp32, as the reference."""
    cell = torch.tensor(grid_size, dtype=torch.float32, device=xyz.device)
    return torch.div(xyz - xyz.min(0).values, cell, rounding_mode="trunc").long()

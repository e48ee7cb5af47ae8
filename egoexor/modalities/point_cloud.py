"""Point cloud: one exo-branch token per sample from the frame's room point cloud.

Datasets ``point_cloud/coordinates`` and ``point_cloud/colors`` [F, N, 3] (metres, 0-1); a sample lists
``point_cloud`` only where its take has a numbered room camera (the reference's sample generator). Item:
xyz + rgb [N, 6] (:func:`point_cloud`), every sample's points concatenated in the batch. Encoder
``point_transformer``: PTv3 (pure torch, frozen unless ``train_point_transformer``, run in fp32 as the
reference), per-cloud mean, then ``project_pc`` (always trained). With ``mask_extras: false`` a batch
without any cloud still gets a zero token: the reference's training Dataset gave every sample a cloud
entry (``train.py:1136-1142``) and its pooler returned zeros when none held points (``builder.py:179-180``).
"""

from __future__ import annotations

import numpy as np

from egoexor.data import layout
from egoexor.modalities import register_modality
from egoexor.modalities.base import PointSets, TakeDataset, TokenInput
from egoexor.modalities.exo_frames import has_external_camera


def point_cloud(coordinates: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """[N, 3] + [N, 3] -> [N, 6] xyz (metres) + rgb (0-1), as stored: PTv3 voxelises it itself."""
    return np.concatenate([coordinates, colors], axis=1).astype(np.float32)


class PointCloud(TokenInput):
    name, branch, feature, parameter, builtin = "point_cloud", "exo", "point_cloud", "point_transformer", True
    groups = ("point_cloud",)
    datasets = (
        TakeDataset(layout.POINT_COORDINATES, "point_coordinates", 3, 3, "[F, N, 3]"),
        TakeDataset(layout.POINT_COLORS, "point_colors", 3, 3, "[F, N, 3]"),
    )
    dropout_rank = 2
    built_first = True  # PTv3 is frozen and not saved: a checkpoint rebuilds it from init_seed
    has_panel = True

    def available_groups(self, take, sources):
        return [group for group in self.groups if has_external_camera(sources) and group in take]

    def panel(self, axes, present):
        return PointCloudPanel(axes, present)

    def batching(self):
        return {"point_cloud": PointSets(mask="point_cloud_mask", index="point_cloud_batch", width=6)}

    def item(self, point, views, kept, context):
        coordinates = point.arrays.get("point_coordinates")
        if not kept or coordinates is None:
            return {"point_cloud": None}
        cloud = point_cloud(coordinates, point.arrays["point_colors"])
        if not np.isfinite(cloud).all():
            raise ValueError("point cloud has NaN or inf values")
        import torch

        return {"point_cloud": torch.from_numpy(cloud) if len(cloud) else None}

    def build_encoder(self, config, hidden):
        from egoexor.model.point_transformer import PointTransformerV3

        encoder = PointTransformerV3(project_pc_dim=hidden, **(config.point_transformer or {}))
        encoder.requires_grad_(config.train_point_transformer)
        encoder.project_pc.requires_grad_(True)
        return encoder

    def tokens(self, encoder, inputs, views, view_mask, config):
        present = inputs.get("point_cloud_mask")
        if present is not None and bool(present.any()):
            cloud = cloud_tokens(encoder, inputs["point_cloud"], inputs["point_cloud_batch"], present, config)
            return cloud[:, None], present[:, None]
        if config.mask_extras:
            return None
        absent = views.new_zeros(len(views), 1, dtype=bool)  # the reference's zero token when no sample has a cloud
        return views.new_zeros(len(views), 1, views.shape[-1]), absent


def cloud_tokens(ptv3, point_cloud, point_cloud_batch, point_cloud_mask, config):
    """[B, D] from every sample's points (``point_cloud_batch``: sample of each point): PTv3 (frozen: no
    gradient unless it has trainable parameters) -> per-cloud mean -> ``project_pc``."""
    import torch

    from egoexor.model.encoders import encode_point_clouds

    clouds = [
        point_cloud[point_cloud_batch == b] if present else None for b, present in enumerate(point_cloud_mask.tolist())
    ]
    encoder = [module for name, module in ptv3.named_children() if name != "project_pc"]
    if ptv3.embedding.stem.conv.weight.dtype != torch.float32:
        for module in encoder:  # DeepSpeed casts the whole model to bf16; PTv3 runs in fp32 (as the reference)
            module.float()
    trainable = any(p.requires_grad for module in encoder for p in module.parameters())
    with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
        means = encode_point_clouds(ptv3, clouds, config.point_cloud_grid_size)
    return ptv3.project_pc(means.to(ptv3.project_pc.weight.dtype))


class PointCloudPanel:
    """``viz frame``'s point-cloud panel: a top view in the cloud's own colours."""

    def __init__(self, axes, present: bool) -> None:
        from egoexor.viz.timepoint import FONT, message

        self.axes = axes
        axes.set_title("point cloud, top view", fontsize=FONT)
        self.points = axes.scatter([], [], s=4, linewidths=0) if present else None
        if present:
            axes.set_aspect("equal", adjustable="box")
            axes.set_xlabel("x (m)")
            axes.set_ylabel("y (m)")
            axes.set_facecolor("#f0f0f0")
        else:
            message(axes, "no point cloud")

    def update(self, point) -> None:
        xyz, rgb = point.arrays.get("point_coordinates"), point.arrays.get("point_colors")
        if self.points is None or xyz is None:
            return
        keep = np.isfinite(xyz).all(axis=1)
        self.points.set_offsets(xyz[keep, :2])
        self.points.set_facecolor(np.clip(np.nan_to_num(rgb[keep]), 0, 1) if rgb is not None else "#555555")
        self.axes.set_xlim(*_limits(xyz[keep, 0]))
        self.axes.set_ylim(*_limits(xyz[keep, 1]))


def _limits(values: np.ndarray, margin: float = 0.05) -> tuple[float, float]:
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    pad = margin * (high - low) or 0.5
    return low - pad, high + pad


register_modality(PointCloud())

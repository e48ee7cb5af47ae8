"""Point Transformer V3 (encoder only) as the EgoExOR reference configures it, in plain PyTorch.

The reference (``multimodal_projector/pointtransformerv3.py``, Pointcept's PTv3 with ``cls_mode=True``)
needs spconv, torch-scatter and flash-attn. This module needs none of them and runs the same computation
on CPU and CUDA, with gradients on both:

- **Submanifold convolutions** are computed here with sorted voxel keys, ``searchsorted`` and one
  gather + matmul + ``index_add_`` per kernel offset (:func:`submanifold_conv`). The weight layout is
  spconv 2.x's ``[C_out, k, k, k, C_in]`` and the neighbour rule is spconv's (its CPU build's, for
  points sharing a voxel), so released weights load unchanged and the output equals
  ``spconv.SubMConv3d`` (tested). spconv itself is not used: its CPU build has no backward (it calls
  ``torch.cuda.current_stream()``) and, measured with spconv 2.3.8, its CPU forward returns wrong,
  run-to-run different results when torch uses more than one thread; for a frozen encoder the CUDA
  speed-up is not worth a hard dependency that has no wheels for new GPUs.
- **Segment reductions** (pooling) use ``Tensor.scatter_reduce``.
- **Windowed attention** uses ``scaled_dot_product_attention`` with exactly the windows of the
  reference's flash-attn path (:func:`build_window_layout`).

Reproduced reference semantics worth knowing (see also ``reference/model.md`` §4):

- Points are ordered along four space-filling curves (z, z-trans, hilbert, hilbert-trans); the four
  orders are shuffled on every forward and again at every pooling, **also in eval mode**. Pass a
  ``generator`` to make the shuffle reproducible, or build with ``shuffle_orders=False`` (which, unlike
  the reference, also stops the shuffle inside pooling).
- Block ``i`` of a stage attends within windows of ``patch_size`` consecutive points along order ``i % 4``.
- Points sharing a voxel are not merged at the input; their neighbour relations follow spconv's rule
  (see :func:`build_kernel_map`).

Deliberate differences, none of which changes parameters or shapes:

- Attention runs in the input dtype (fp32); the reference casts q, k, v to fp16 for flash-attn.
- Codes are sorted with a stable sort, so ties (points in one voxel) keep their input order; the
  reference's unstable CUDA sort leaves them unspecified.
- Where the reference crashes, this module does not: a training-mode BatchNorm that sees a single
  point normalises with its running statistics, and a batch whose points all fall into one voxel
  (serialization depth 0) gets Hilbert code 0.
- Pooled point coordinates (``coord`` means) are not tracked: nothing in the encoder reads them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ORDERS = ("z", "z-trans", "hilbert", "hilbert-trans")
MAX_DEPTH = 16  # bits per axis; 2**16 cells of 1 cm = 655 m, the reference's limit


# ----------------------------------------------------------------------------------------------
# Serialization (space-filling-curve codes)


def _interleave(x: Tensor, y: Tensor, z: Tensor, depth: int) -> Tensor:
    """Morton interleave: bit ``b`` of x/y/z goes to bit ``3b+2``/``3b+1``/``3b`` of the code."""
    code = torch.zeros_like(x)
    for bit in range(depth):
        code |= ((x >> bit) & 1) << (3 * bit + 2)
        code |= ((y >> bit) & 1) << (3 * bit + 1)
        code |= ((z >> bit) & 1) << (3 * bit)
    return code


def z_order_encode(grid_coord: Tensor, depth: int) -> Tensor:
    """Z-order (Morton) code of non-negative integer coordinates ``[N, 3]`` below ``2**depth``."""
    grid = grid_coord.long()
    return _interleave(grid[:, 0], grid[:, 1], grid[:, 2], depth)


def hilbert_encode(grid_coord: Tensor, depth: int) -> Tensor:
    """Hilbert code of integer coordinates ``[N, 3]`` below ``2**depth`` (Skilling's algorithm).

    Same numbers as Pointcept's ``hilbert.encode(grid, num_dims=3, num_bits=depth)``: the curve's
    orientation depends on ``depth``, so ``depth`` must be the serialization depth, not an upper bound.
    """
    axes = [grid_coord[:, dim].long() for dim in range(3)]
    # Transform the coordinates into the "transposed" Hilbert index, from the top bit down.
    bit = 1 << (depth - 1) if depth > 0 else 0
    while bit > 1:
        low = bit - 1
        for dim in range(3):
            on = (axes[dim] & bit) != 0
            # Where the bit is set, invert the lower bits of axis 0; elsewhere swap them with this axis.
            swap = torch.where(on, 0, (axes[0] ^ axes[dim]) & low)
            axes[0] = torch.where(on, axes[0] ^ low, axes[0] ^ swap)
            axes[dim] = axes[dim] ^ swap
        bit >>= 1
    code = _interleave(axes[0], axes[1], axes[2], depth)
    # The interleaved bits are a Gray code; decoding makes every bit the XOR of itself and all above it.
    shift = 1
    while shift < 3 * depth:
        code ^= code >> shift
        shift <<= 1
    return code


def serialization_code(grid_coord: Tensor, batch: Tensor, depth: int, order: str) -> Tensor:
    """Code of each point along ``order``, with the cloud index in the bits above ``3 * depth``.

    The cloud bits make sorting group the points cloud by cloud, in cloud order.
    """
    if order not in ORDERS:
        raise ValueError(f"unknown serialization order {order!r}; expected one of {ORDERS}")
    grid = grid_coord[:, [1, 0, 2]] if order.endswith("-trans") else grid_coord
    encode = hilbert_encode if order.startswith("hilbert") else z_order_encode
    return batch.long() << (3 * depth) | encode(grid, depth)


def _sort_codes(code: Tensor, shuffle: bool, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-order sort permutation and its inverse, with the orders optionally shuffled (reference)."""
    order = torch.argsort(code, dim=1, stable=True)
    positions = torch.arange(code.shape[1], device=code.device).expand_as(order)
    inverse = torch.empty_like(order).scatter_(1, order, positions)
    if shuffle:
        perm = torch.randperm(code.shape[0], generator=generator).to(code.device)
        code, order, inverse = code[perm], order[perm], inverse[perm]
    return code, order, inverse


# ----------------------------------------------------------------------------------------------
# Submanifold convolution


@dataclass(frozen=True)
class KernelMap:
    """Pairs of a submanifold convolution: ``out[outputs[t]] += source[inputs[t]] @ W[kernel_index[t]]``.

    The source matrix is the features, followed by per-voxel feature sums when ``voxel`` (point -> voxel
    id) is given, i.e. when some voxel holds several points. The centre offset is not listed: it maps
    every point onto itself. Only offsets with at least one pair are listed.
    """

    kernel_index: list[int]
    inputs: list[Tensor]
    outputs: list[Tensor]
    voxel: Tensor | None
    num_voxels: int


def build_kernel_map(grid_coord: Tensor, batch: Tensor, kernel_size: int) -> KernelMap:
    """Neighbour pairs of a ``kernel_size**3`` submanifold convolution over voxelised points.

    Kernel index ``k = (a * K + b) * K + c`` is the offset ``(a, b, c) - K // 2`` along the three grid
    axes, as in spconv's weight ``[C_out, a, b, c, C_in]``; the output at ``p`` reads the input at
    ``p + offset`` (cross-correlation).

    Several points may share a voxel (the pooler does not de-duplicate), and spconv 2.x's rule for
    them is reproduced: the centre offset maps each point to itself only; for an offset in the upper
    half of the kernel a point reads the *first* point (lowest row) of the neighbouring voxel; for an
    offset in the lower half only the first point of a voxel reads, and it reads the sum of all points
    of the neighbouring voxel. (spconv finds pairs for the upper half and uses each pair both ways.)
    """
    volume = kernel_size**3
    num_points = grid_coord.shape[0]
    key, delta = _voxel_keys(grid_coord, batch, kernel_size // 2)
    sorted_key, first_row = torch.sort(key, stable=True)  # first_row[s]: lowest row among equal keys
    voxel_of_sorted = torch.cat([sorted_key.new_zeros(1), torch.cumsum(sorted_key[1:] != sorted_key[:-1], 0)])
    num_voxels = int(voxel_of_sorted[-1]) + 1

    query = key[:, None] + delta[None, :]  # [N, K**3]
    found_at = torch.searchsorted(sorted_key, query).clamp_(max=num_points - 1)
    hit = sorted_key[found_at] == query
    source = first_row[found_at]  # the first (lowest-row) point of each neighbouring voxel

    upper = torch.arange(volume, device=key.device) > volume // 2
    voxel = None
    if num_voxels < num_points:
        voxel = torch.empty_like(voxel_of_sorted)
        voxel[first_row] = voxel_of_sorted
        first_in_voxel = first_row[torch.searchsorted(sorted_key, key)] == torch.arange(num_points, device=key.device)
        source = torch.where(upper, source, num_points + voxel_of_sorted[found_at])
        hit &= upper | first_in_voxel[:, None]
    hit[:, volume // 2] = False

    kernel, row = hit.T.nonzero(as_tuple=True)  # grouped by kernel index
    counts = torch.bincount(kernel, minlength=volume).tolist()
    used = [k for k in range(volume) if counts[k]]
    outputs = [part for part in row.split(counts) if len(part)]
    inputs = [part for part in source[row, kernel].split(counts) if len(part)]
    return KernelMap(used, inputs, outputs, voxel, num_voxels)


def _voxel_keys(grid_coord: Tensor, batch: Tensor, radius: int) -> tuple[Tensor, Tensor]:
    """An int64 key per point (cloud, voxel), and per kernel index the key step to the neighbouring voxel.

    The grid is shifted by ``radius``, so every neighbour has non-negative coordinates, and each axis's
    extent leaves ``radius`` cells on both sides, so a key plus a step never wraps into another row or cloud.
    """
    grid = grid_coord.long() + radius
    extent_x, extent_y, extent_z = (grid.max(0).values + radius + 1).tolist()
    key = ((batch.long() * extent_x + grid[:, 0]) * extent_y + grid[:, 1]) * extent_z + grid[:, 2]
    steps = torch.arange(-radius, radius + 1, device=key.device)
    offsets = torch.cartesian_prod(steps, steps, steps)  # row k is kernel index k
    return key, (offsets[:, 0] * extent_y + offsets[:, 1]) * extent_z + offsets[:, 2]


def submanifold_conv(feat: Tensor, weight: Tensor, bias: Tensor | None, kernel_map: KernelMap) -> Tensor:
    """Submanifold 3-D convolution of ``feat [N, C_in]`` with a spconv-layout ``weight [C_out, k, k, k, C_in]``.

    One gather, matmul and ``index_add_`` per kernel offset over the existing pairs only: point clouds
    are sparse, so a dense ``[N, k**3 * C_in]`` neighbour matrix would multiply mostly zeros.
    """
    kernels = weight.permute(1, 2, 3, 4, 0).reshape(-1, weight.shape[-1], weight.shape[0])  # [k**3, C_in, C_out]
    source = feat
    if kernel_map.voxel is not None:
        sums = feat.new_zeros(kernel_map.num_voxels, feat.shape[1]).index_add_(0, kernel_map.voxel, feat)
        source = torch.cat([feat, sums])
    out = feat @ kernels[len(kernels) // 2]
    for k, inputs, outputs in zip(kernel_map.kernel_index, kernel_map.inputs, kernel_map.outputs, strict=True):
        out.index_add_(0, outputs, source[inputs] @ kernels[k])
    return out if bias is None else out + bias


class SubMConv3d(nn.Module):
    """Drop-in for ``spconv.SubMConv3d`` (same ``weight``/``bias`` names and shapes), computed in torch."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, kernel_size, kernel_size, kernel_size, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference's init (PT ``_init_weights``): Kaiming normal, fan_out, ReLU gain; zero bias.

        On the 5-D spconv layout torch's fan_out is ``C_out * k * k * C_in``, which is what the reference gets.
        """
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, feat: Tensor, points: SerializedPoints) -> Tensor:
        return submanifold_conv(feat, self.weight, self.bias, points.kernel_map(self.kernel_size))


# ----------------------------------------------------------------------------------------------
# Attention windows


@dataclass(frozen=True)
class WindowLayout:
    """Attention windows over the serialized sequence, grouped by length so each group is one SDPA call.

    ``groups[g]`` is ``[windows, length]`` sorted positions. A point can appear in two windows (the last
    window of a cloud is padded with the points before it); ``slot[s]`` is the row, in the concatenation
    of all groups' flattened outputs, where the point at sorted position ``s`` takes its own output.
    """

    groups: list[Tensor]
    slot: Tensor


def build_window_layout(counts: Sequence[int], patch_size: int, device: torch.device) -> WindowLayout:
    """Windows of the reference's flash-attention path for clouds of ``counts`` points (in cloud order).

    A cloud with ``n <= patch_size`` points is one window. A larger cloud is cut into ``ceil(n / P)``
    windows of ``P`` consecutive points; the last window, which would be short, instead ends at the
    cloud's last point and reaches back into the previous window for the missing ``P - n % P`` points.
    Those borrowed points serve as keys only: their outputs come from their own window. This is what the
    reference's ``pad``/``unpad``/``cu_seqlens`` arithmetic produces.
    """
    by_length: dict[int, list[tuple[Tensor, Tensor]]] = {}
    start = 0
    for n in counts:
        if n == 0:  # a cloud index without points
            continue
        if n <= patch_size:
            local = torch.arange(n)[None]
            own = torch.ones_like(local, dtype=torch.bool)
        else:
            window_start = torch.arange(math.ceil(n / patch_size)) * patch_size
            first = window_start.clamp(max=n - patch_size)
            local = first[:, None] + torch.arange(patch_size)
            own = local >= window_start[:, None]
        by_length.setdefault(local.shape[1], []).append((start + local, own))
        start += n
    groups = [torch.cat([positions for positions, _ in windows]) for windows in by_length.values()]
    own = torch.cat([torch.cat([own for _, own in windows]).flatten() for windows in by_length.values()])
    positions = torch.cat([group.flatten() for group in groups])
    slot = torch.empty(start, dtype=torch.long)
    slot[positions[own]] = torch.arange(positions.numel())[own]
    return WindowLayout([group.to(device) for group in groups], slot.to(device))


# ----------------------------------------------------------------------------------------------
# Point geometry


@dataclass
class SerializedPoints:
    """Geometry of one stage's points: voxel coordinates, cloud index and space-filling-curve orders.

    ``code``/``order``/``inverse`` are ``[num_orders, N]``: codes, the sort permutation (sorted position
    -> point row) and its inverse. Kernel maps and window layouts are computed once per stage and cached.
    """

    grid_coord: Tensor  # [N, 3] int64, >= 0
    batch: Tensor  # [N] int64 cloud index
    depth: int  # bits per axis used by the codes
    code: Tensor
    order: Tensor
    inverse: Tensor
    _kernel_maps: dict[int, KernelMap] = field(default_factory=dict, init=False, repr=False)
    _windows: dict[int, WindowLayout] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def from_grid(
        cls,
        grid_coord: Tensor,
        batch: Tensor,
        orders: Sequence[str],
        shuffle: bool,
        generator: torch.Generator | None = None,
    ) -> SerializedPoints:
        """Serialize voxelised points; the depth is the bit length of the largest coordinate (reference)."""
        grid_coord, batch = grid_coord.long(), batch.long()
        depth = int(grid_coord.max()).bit_length()
        num_clouds = int(batch.max()) + 1
        if depth > MAX_DEPTH:
            raise ValueError(
                f"point clouds span {int(grid_coord.max()) + 1} grid cells along one axis; at most "
                f"2**{MAX_DEPTH} are supported (655 m at the reference's 1 cm grid)"
            )
        if 3 * depth + num_clouds.bit_length() > 63:
            raise ValueError(f"{num_clouds} clouds do not fit into 64-bit serialization codes")
        code = torch.stack([serialization_code(grid_coord, batch, depth, order) for order in orders])
        code, order, inverse = _sort_codes(code, shuffle, generator)
        return cls(grid_coord, batch, depth, code, order, inverse)

    def kernel_map(self, kernel_size: int) -> KernelMap:
        if kernel_size not in self._kernel_maps:
            self._kernel_maps[kernel_size] = build_kernel_map(self.grid_coord, self.batch, kernel_size)
        return self._kernel_maps[kernel_size]

    def window_layout(self, patch_size: int) -> WindowLayout:
        if patch_size not in self._windows:
            counts = torch.bincount(self.batch).tolist()
            self._windows[patch_size] = build_window_layout(counts, patch_size, self.batch.device)
        return self._windows[patch_size]


# ----------------------------------------------------------------------------------------------
# Layers


class PointBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over points (eps 1e-3, momentum 0.01 as in the reference).

    A training batch of one point has no batch variance (``BatchNorm1d`` raises); that happens when a
    batch holds a single tiny cloud, so such a batch is normalised with the running statistics instead.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, eps=1e-3, momentum=0.01)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class DropPath(nn.Module):
    """Stochastic depth per point (timm's DropPath applied to ``[N, C]`` drops whole rows)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        return x * x.new_empty(x.shape[0], 1).bernoulli_(keep) / keep


class SerializedAttention(nn.Module):
    """Multi-head self-attention inside windows of ``patch_size`` consecutive points along one order."""

    def __init__(self, channels: int, num_heads: int, patch_size: int, qkv_bias: bool, order_index: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.order_index = order_index
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)

    def forward(self, feat: Tensor, points: SerializedPoints) -> Tensor:
        layout = points.window_layout(self.patch_size)
        order = points.order[self.order_index]
        channels = feat.shape[1]
        qkv = self.qkv(feat)
        outputs = []
        for positions in layout.groups:
            windows, length = positions.shape
            # The 3C qkv features split as [q | k | v], each as [head, head_dim] (flash-attn's packed layout).
            q, k, v = qkv[order[positions]].view(windows, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(q, k, v)  # scale head_dim ** -0.5, as the reference
            outputs.append(out.transpose(1, 2).reshape(windows * length, channels))
        return self.proj(torch.cat(outputs)[layout.slot[points.inverse[self.order_index]]])


class MLP(nn.Module):
    """Linear, GELU, Linear (names ``fc1``/``fc2`` as in the reference)."""

    def __init__(self, channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden_channels)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Conditional positional encoding, then pre-norm windowed attention and MLP, each residual."""

    def __init__(
        self,
        channels: int,
        num_heads: int,
        patch_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: float,
        order_index: int,
    ) -> None:
        super().__init__()
        # Containers reproduce Pointcept's PointSequential names: cpe.0/1/2, norm1.0, mlp.0.fc1, ...
        self.cpe = nn.ModuleList(
            [SubMConv3d(channels, channels, 3), nn.Linear(channels, channels), nn.LayerNorm(channels)]
        )
        self.norm1 = nn.Sequential(nn.LayerNorm(channels))
        self.attn = SerializedAttention(channels, num_heads, patch_size, qkv_bias, order_index)
        self.norm2 = nn.Sequential(nn.LayerNorm(channels))
        self.mlp = nn.Sequential(MLP(channels, int(channels * mlp_ratio)))
        self.drop_path = DropPath(drop_path)

    def forward(self, feat: Tensor, points: SerializedPoints) -> Tensor:
        conv, linear, norm = self.cpe
        feat = feat + norm(linear(conv(feat, points)))
        feat = feat + self.drop_path(self.attn(self.norm1(feat), points))
        return feat + self.drop_path(self.mlp(self.norm2(feat)))


class SerializedPooling(nn.Module):
    """Merge the points of each ``stride**3`` parent cell: Linear, max over the cell, BatchNorm, GELU.

    Cells are read off the first (possibly shuffled) order's codes shifted by ``3 * log2(stride)`` bits,
    and the children's codes are shifted rather than recomputed, as in the reference.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, shuffle_orders: bool) -> None:
        super().__init__()
        if stride < 2 or stride & (stride - 1):
            raise ValueError(f"pooling stride must be a power of two >= 2, got {stride}")
        self.pooling_depth = stride.bit_length() - 1
        self.shuffle_orders = shuffle_orders
        self.proj = nn.Linear(in_channels, out_channels)
        self.norm = nn.Sequential(PointBatchNorm(out_channels))
        self.act = nn.GELU()

    def forward(
        self, feat: Tensor, points: SerializedPoints, generator: torch.Generator | None
    ) -> tuple[Tensor, SerializedPoints]:
        shift = self.pooling_depth if self.pooling_depth <= points.depth else 0
        code = points.code >> (3 * shift)
        cells, cluster = torch.unique(code[0], sorted=True, return_inverse=True)
        feat = self.proj(feat)
        pooled = feat.new_empty(len(cells), feat.shape[1]).scatter_reduce(
            0, cluster[:, None].expand_as(feat), feat, "amax", include_self=False
        )
        # Any member represents its cell: members share the cloud, the parent voxel and every order's code.
        rows = torch.arange(len(cluster), device=cluster.device)
        head = torch.full((len(cells),), len(cluster), device=cluster.device).scatter_reduce(0, cluster, rows, "amin")
        code, order, inverse = _sort_codes(code[:, head], self.shuffle_orders, generator)
        pooled_points = SerializedPoints(
            points.grid_coord[head] >> shift, points.batch[head], points.depth - shift, code, order, inverse
        )
        return self.act(self.norm(pooled)), pooled_points


class Embedding(nn.Module):
    """Stem: SubMConv3d k5 without bias, BatchNorm, GELU (names ``stem.conv``/``stem.norm``)."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.stem = nn.ModuleDict(
            {
                "conv": SubMConv3d(in_channels, channels, 5, bias=False),
                "norm": PointBatchNorm(channels),
                "act": nn.GELU(),
            }
        )

    def forward(self, feat: Tensor, points: SerializedPoints) -> Tensor:
        return self.stem["act"](self.stem["norm"](self.stem["conv"](feat, points)))


class EncoderStage(nn.Module):
    """Optional pooling (``down``) followed by blocks ``block0..``."""

    def __init__(self, down: SerializedPooling | None, blocks: Sequence[Block]) -> None:
        super().__init__()
        self.down = down
        self.num_blocks = len(blocks)
        for index, block in enumerate(blocks):
            self.add_module(f"block{index}", block)

    def forward(
        self, feat: Tensor, points: SerializedPoints, generator: torch.Generator | None
    ) -> tuple[Tensor, SerializedPoints]:
        if self.down is not None:
            feat, points = self.down(feat, points, generator)
        for index in range(self.num_blocks):
            feat = self.get_submodule(f"block{index}")(feat, points)
        return feat, points


def _check_stage_lists(
    order: Sequence[str],
    stride: Sequence[int],
    enc_depths: Sequence[int],
    enc_channels: Sequence[int],
    enc_num_head: Sequence[int],
    enc_patch_size: Sequence[int],
) -> None:
    """One entry per stage in every per-stage list (``stride``: one per pooling, so one fewer), known orders."""
    num_stages = len(enc_depths)
    if not (len(stride) + 1 == len(enc_channels) == len(enc_num_head) == len(enc_patch_size) == num_stages):
        raise ValueError("stride needs one entry fewer than enc_depths/enc_channels/enc_num_head/enc_patch_size")
    for name in order:
        if name not in ORDERS:
            raise ValueError(f"unknown serialization order {name!r}; expected one of {ORDERS}")


def _encoder_stages(
    stride: Sequence[int],
    enc_depths: Sequence[int],
    enc_channels: Sequence[int],
    enc_num_head: Sequence[int],
    enc_patch_size: Sequence[int],
    mlp_ratio: float,
    qkv_bias: bool,
    drop_path: float,
    shuffle_orders: bool,
    num_orders: int,
) -> nn.ModuleDict:
    """``enc0..``: pooling (from the second stage on), then blocks.

    Drop-path rates rise linearly over all blocks of the encoder, and block ``i`` of a stage attends along
    order ``i % num_orders``, as in the reference.
    """
    drop_paths = torch.linspace(0, drop_path, sum(enc_depths)).tolist()
    stages = {}
    for s, depth in enumerate(enc_depths):
        down = None
        if s > 0:
            down = SerializedPooling(enc_channels[s - 1], enc_channels[s], stride[s - 1], shuffle_orders)
        first = sum(enc_depths[:s])
        channels, heads, patch_size = enc_channels[s], enc_num_head[s], enc_patch_size[s]
        blocks = [
            Block(channels, heads, patch_size, mlp_ratio, qkv_bias, drop_paths[first + i], order_index=i % num_orders)
            for i in range(depth)
        ]
        stages[f"enc{s}"] = EncoderStage(down, blocks)
    return nn.ModuleDict(stages)


class PointTransformerV3(nn.Module):
    """PTv3 encoder (``cls_mode=True``) with the reference's defaults; parameter names follow Pointcept.

    ``project_pc`` (Linear ``enc_channels[-1] -> project_pc_dim``) belongs to this module in the
    reference, so it lives here for checkpoint compatibility, but ``forward`` does not apply it: the
    pooler applies it to the per-cloud means (see :func:`egoexor.model.encoders.encode_point_clouds`).
    """

    def __init__(
        self,
        in_channels: int = 6,
        order: Sequence[str] = ORDERS,
        stride: Sequence[int] = (2, 2, 2, 2),
        enc_depths: Sequence[int] = (2, 2, 2, 6, 2),
        enc_channels: Sequence[int] = (32, 64, 128, 256, 512),
        enc_num_head: Sequence[int] = (2, 4, 8, 16, 32),
        enc_patch_size: Sequence[int] = (1024, 1024, 1024, 1024, 1024),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.3,
        shuffle_orders: bool = True,
        project_pc_dim: int = 1024,
    ) -> None:
        super().__init__()
        _check_stage_lists(order, stride, enc_depths, enc_channels, enc_num_head, enc_patch_size)
        self.in_channels = in_channels
        self.order = tuple(order)
        self.shuffle_orders = shuffle_orders
        self.out_channels = enc_channels[-1]

        self.embedding = Embedding(in_channels, enc_channels[0])
        self.enc = _encoder_stages(
            stride,
            enc_depths,
            enc_channels,
            enc_num_head,
            enc_patch_size,
            mlp_ratio,
            qkv_bias,
            drop_path,
            shuffle_orders,
            len(self.order),
        )
        self.project_pc = nn.Linear(enc_channels[-1], project_pc_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """The reference's random init: Linear Kaiming-normal (fan_out, ReLU) with zero bias.

        SubMConv3d initialises itself the same way and the norms start at weight 1, bias 0.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(
        self, feat: Tensor, grid_coord: Tensor, batch: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, SerializedPoints]:
        """Encode voxelised points.

        Args:
            feat: ``[N, in_channels]`` point features.
            grid_coord: ``[N, 3]`` non-negative integer voxel coordinates.
            batch: ``[N]`` cloud index of each point, ``0..B-1``.
            generator: CPU generator for the order shuffles; ``None`` uses torch's global RNG (reference).

        Returns:
            Final-stage features ``[M, out_channels]`` and the final stage's points (``batch`` says which
            cloud each row belongs to).
        """
        points = SerializedPoints.from_grid(grid_coord, batch, self.order, self.shuffle_orders, generator)
        feat = self.embedding(feat, points)
        for stage in self.enc.values():
            feat, points = stage(feat, points, generator)
        return feat, points

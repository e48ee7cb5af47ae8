"""PointTransformerV3: reference parameter layout, serialization, windows, convolution, pooler semantics."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from egoexor.model.encoders import encode_point_clouds
from egoexor.model.point_transformer import (
    ORDERS,
    PointTransformerV3,
    SerializedAttention,
    SerializedPoints,
    SerializedPooling,
    build_kernel_map,
    build_window_layout,
    hilbert_encode,
    serialization_code,
    submanifold_conv,
    z_order_encode,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """The model is compute-bound; one thread keeps timings stable on small shared CI machines."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference_model() -> PointTransformerV3:
    torch.manual_seed(0)
    return PointTransformerV3().eval()


def tiny_model(**overrides: object) -> PointTransformerV3:
    """Three stages with small windows, so several windows and poolings happen on a few hundred points."""
    config = dict(
        stride=(2, 2),
        enc_depths=(2, 1, 2),
        enc_channels=(8, 16, 32),
        enc_num_head=(2, 2, 4),
        enc_patch_size=(32, 16, 8),
        project_pc_dim=12,
    )
    config.update(overrides)
    return PointTransformerV3(**config)


def make_cloud(num_points: int, seed: int, extent: float = 0.3, origin: float = 0.0) -> torch.Tensor:
    """xyz uniform in a cube of ``extent`` metres at ``origin``, rgb in [0, 1]: ``[N, 6]``."""
    generator = torch.Generator().manual_seed(seed)
    xyz = torch.rand(num_points, 3, generator=generator) * extent + origin
    return torch.cat([xyz, torch.rand(num_points, 3, generator=generator)], 1)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Parameter layout of the reference (Pointcept PTv3, cls_mode=True, project_pc_dim=1024)

BLOCK_SUFFIXES = [
    "cpe.0.weight",
    "cpe.0.bias",
    "cpe.1.weight",
    "cpe.1.bias",
    "cpe.2.weight",
    "cpe.2.bias",
    "norm1.0.weight",
    "norm1.0.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "norm2.0.weight",
    "norm2.0.bias",
    "mlp.0.fc1.weight",
    "mlp.0.fc1.bias",
    "mlp.0.fc2.weight",
    "mlp.0.fc2.bias",
]
BN_SUFFIXES = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
REFERENCE_SHAPES = {
    "embedding.stem.conv.weight": (32, 5, 5, 5, 6),  # spconv 2.x layout [C_out, k, k, k, C_in], no bias
    "embedding.stem.norm.weight": (32,),
    "embedding.stem.norm.running_var": (32,),
    "embedding.stem.norm.num_batches_tracked": (),
    "enc.enc0.block0.cpe.0.weight": (32, 3, 3, 3, 32),
    "enc.enc0.block0.cpe.0.bias": (32,),
    "enc.enc0.block0.cpe.1.weight": (32, 32),
    "enc.enc0.block0.cpe.2.weight": (32,),
    "enc.enc0.block0.norm1.0.weight": (32,),
    "enc.enc0.block0.attn.qkv.weight": (96, 32),
    "enc.enc0.block0.attn.qkv.bias": (96,),
    "enc.enc0.block0.attn.proj.weight": (32, 32),
    "enc.enc0.block1.norm2.0.bias": (32,),
    "enc.enc0.block1.mlp.0.fc1.weight": (128, 32),
    "enc.enc0.block1.mlp.0.fc2.weight": (32, 128),
    "enc.enc1.down.proj.weight": (64, 32),
    "enc.enc1.down.proj.bias": (64,),
    "enc.enc1.down.norm.0.weight": (64,),
    "enc.enc1.down.norm.0.running_mean": (64,),
    "enc.enc2.block1.cpe.0.weight": (128, 3, 3, 3, 128),
    "enc.enc3.down.proj.weight": (256, 128),
    "enc.enc3.block5.attn.qkv.weight": (768, 256),
    "enc.enc4.down.norm.0.num_batches_tracked": (),
    "enc.enc4.block1.cpe.0.weight": (512, 3, 3, 3, 512),
    "enc.enc4.block1.mlp.0.fc2.weight": (512, 2048),
    "project_pc.weight": (1024, 512),
    "project_pc.bias": (1024,),
}
REFERENCE_PARAMETERS = 39_197_952


def test_state_dict_follows_the_reference_names_and_shapes(reference_model: PointTransformerV3) -> None:
    expected = {"embedding.stem.conv.weight"} | {f"embedding.stem.norm.{s}" for s in BN_SUFFIXES}
    for stage, depth in enumerate((2, 2, 2, 6, 2)):
        if stage:
            expected |= {f"enc.enc{stage}.down.proj.{s}" for s in ("weight", "bias")}
            expected |= {f"enc.enc{stage}.down.norm.0.{s}" for s in BN_SUFFIXES}
        expected |= {f"enc.enc{stage}.block{i}.{s}" for i in range(depth) for s in BLOCK_SUFFIXES}
    expected |= {"project_pc.weight", "project_pc.bias"}

    state = reference_model.state_dict()
    assert set(state) == expected
    assert len(state) == 288
    assert {key: tuple(state[key].shape) for key in REFERENCE_SHAPES} == REFERENCE_SHAPES
    assert sum(p.numel() for p in reference_model.parameters()) == REFERENCE_PARAMETERS


def test_init_is_the_reference_scheme_and_follows_the_global_seed() -> None:
    torch.manual_seed(3)
    first = tiny_model().state_dict()
    torch.manual_seed(3)
    second = tiny_model().state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)

    qkv = first["enc.enc2.block0.attn.qkv.weight"]  # Kaiming normal, fan_out = 96
    assert qkv.std().item() == pytest.approx(math.sqrt(2 / 96), rel=0.15)
    conv = first["enc.enc2.block0.cpe.0.weight"]  # fan_out on the 5-D layout = C_out * k * k * C_in
    assert conv.std().item() == pytest.approx(math.sqrt(2 / (32 * 3 * 3 * 32)), rel=0.1)
    assert torch.equal(first["enc.enc2.block0.attn.qkv.bias"], torch.zeros(96))
    assert torch.equal(first["enc.enc2.block0.norm1.0.weight"], torch.ones(32))
    assert torch.equal(first["enc.enc1.down.norm.0.bias"], torch.zeros(16))


# --------------------------------------------------------------------------------------------
# Serialization


def z_order_reference(point: list[int], depth: int) -> int:
    code = 0
    for bit in reversed(range(depth)):
        for axis in range(3):
            code = code << 1 | (point[axis] >> bit) & 1
    return code


def hilbert_reference(point: list[int], depth: int) -> int:
    """Skilling's transform on explicit bit lists (most significant first), as numpy-hilbert-curve does it."""
    bits = [[(point[axis] >> (depth - 1 - b)) & 1 for b in range(depth)] for axis in range(3)]
    for b in range(depth):
        for axis in range(3):
            for lower in range(b + 1, depth):
                if bits[axis][b]:
                    bits[0][lower] ^= 1
                elif bits[0][lower] != bits[axis][lower]:
                    bits[0][lower] ^= 1
                    bits[axis][lower] ^= 1
    code = running = 0
    for gray in (bits[axis][b] for b in range(depth) for axis in range(3)):
        running ^= gray
        code = code << 1 | running
    return code


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_codes_match_straightforward_implementations_and_are_permutations(depth: int) -> None:
    grid = torch.cartesian_prod(*[torch.arange(2**depth)] * 3)
    z_codes = z_order_encode(grid, depth)
    h_codes = hilbert_encode(grid, depth)
    assert z_codes.tolist() == [z_order_reference(p, depth) for p in grid.tolist()]
    assert h_codes.tolist() == [hilbert_reference(p, depth) for p in grid.tolist()]
    for codes in (z_codes, h_codes):
        assert torch.equal(codes.sort().values, torch.arange(8**depth))
    # A Hilbert curve moves to a face neighbour at every step.
    path = grid[h_codes.argsort()]
    assert torch.all((path[1:] - path[:-1]).abs().sum(1) == 1)


def test_hilbert_codes_equal_pointcept_values() -> None:
    """Values computed with Pointcept's ``serialization/hilbert.py`` encode for these coordinates."""
    grid = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [3, 2, 1], [2, 3, 1], [1, 2, 3]])
    assert hilbert_encode(grid, 2).tolist() == [0, 3, 1, 7, 5, 38, 36, 22]
    assert hilbert_encode(grid, 3).tolist() == [0, 1, 7, 3, 5, 20, 22, 48]


def test_serialization_code_puts_the_cloud_above_the_curve_and_trans_swaps_x_y() -> None:
    grid = torch.tensor([[1, 2, 3], [3, 0, 2]])
    batch = torch.tensor([0, 2])
    assert torch.equal(serialization_code(grid, batch, 2, "z"), batch << 6 | z_order_encode(grid, 2))
    swapped = grid[:, [1, 0, 2]]
    assert torch.equal(serialization_code(grid, batch, 2, "hilbert-trans"), batch << 6 | hilbert_encode(swapped, 2))
    with pytest.raises(ValueError, match="unknown serialization order"):
        serialization_code(grid, batch, 2, "peano")


# --------------------------------------------------------------------------------------------
# Submanifold convolution


def test_submanifold_conv_equals_spconv_including_shared_voxels() -> None:
    spconv = pytest.importorskip("spconv.pytorch")
    torch.manual_seed(0)
    grid = torch.randint(0, 6, (400, 3))  # ~2 points per voxel: exercises spconv's duplicate rule
    batch = torch.randint(0, 2, (400,))
    feat = torch.randn(400, 5)
    for kernel_size, bias in ((3, True), (5, False)):
        conv = spconv.SubMConv3d(5, 7, kernel_size=kernel_size, bias=bias)
        torch.nn.init.normal_(conv.weight)
        if bias:
            torch.nn.init.normal_(conv.bias)
        sparse = spconv.SparseConvTensor(feat, torch.cat([batch[:, None], grid], 1).int(), [10, 10, 10], 2)
        with torch.no_grad():  # the CPU build has no backward; with >1 thread its forward races
            expected = conv(sparse).features
        actual = submanifold_conv(feat, conv.weight, conv.bias, build_kernel_map(grid, batch, kernel_size))
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-4)


def test_submanifold_conv_equals_dense_conv_forward_and_backward() -> None:
    """Without shared voxels the submanifold conv is a dense conv read at the occupied voxels."""
    torch.manual_seed(0)
    occupied = torch.rand(2, 6, 6, 6) < 0.4
    batch, *axes = occupied.nonzero(as_tuple=True)
    grid = torch.stack(axes, 1)
    feat = torch.randn(len(grid), 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    out_grad = torch.randn(len(grid), 4, dtype=torch.float64)

    actual = submanifold_conv(feat, weight, None, build_kernel_map(grid, batch, 3))
    actual_grads = torch.autograd.grad((actual * out_grad).sum(), (feat, weight))

    dense = feat.new_zeros(2, 6, 6, 6, 3).index_put((batch, *axes), feat).permute(0, 4, 1, 2, 3)
    expected = F.conv3d(dense, weight.permute(0, 4, 1, 2, 3), padding=1).permute(0, 2, 3, 4, 1)[(batch, *axes)]
    expected_grads = torch.autograd.grad((expected * out_grad).sum(), (feat, weight))

    torch.testing.assert_close(actual, expected)
    for a, e in zip(actual_grads, expected_grads, strict=True):
        torch.testing.assert_close(a, e)


# --------------------------------------------------------------------------------------------
# Windowed attention


def reference_padding(counts: list[int], patch: int) -> tuple[list[int], list[int], list[int]]:
    """The reference's ``pad``/``unpad``/``cu_seqlens`` (flash path), restated.

    Every cloud with more than ``patch`` points is padded to a multiple of ``patch``; the padding slots
    repeat the ``patch - n % patch`` points just before the cloud's last partial window.
    """
    pad, unpad, cu_seqlens = [], [], []
    start = 0
    for n in counts:
        padded = n if n <= patch else -(-n // patch) * patch
        base = len(pad)
        unpad += range(base, base + n)
        pad += range(start, start + n)
        pad += range(start + n - patch, start + n - patch + padded - n)
        cu_seqlens += range(base, base + padded, patch)
        start += n
    return pad, unpad, [*cu_seqlens, len(pad)]


def naive_window_attention(attn: SerializedAttention, feat: torch.Tensor, order: torch.Tensor, counts: list[int]):
    pad, unpad, cu_seqlens = reference_padding(counts, attn.patch_size)
    heads = attn.num_heads
    qkv = attn.qkv(feat)[order[torch.tensor(pad)]]
    out = torch.empty(len(pad), feat.shape[1])
    for start, end in zip(cu_seqlens[:-1], cu_seqlens[1:], strict=True):
        q, k, v = qkv[start:end].view(end - start, 3, heads, -1).unbind(1)  # [L, H, D]
        weights = torch.softmax(torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1]), -1)
        out[start:end] = torch.einsum("hqk,khd->qhd", weights, v).reshape(end - start, -1)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    return attn.proj(out[torch.tensor(unpad)[inverse]])


def test_windowed_attention_equals_naive_per_window_attention() -> None:
    torch.manual_seed(0)
    counts = [3, 10, 8, 4, 1, 13]  # patch 4: shorter, longer with remainder, a multiple, equal, single
    batch = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    rows = torch.randperm(len(batch))
    batch = batch[rows]  # point rows are in any order; the serialized order groups them by cloud
    order = torch.cat([torch.nonzero(batch == b).squeeze(1)[torch.randperm(n)] for b, n in enumerate(counts)])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    points = SerializedPoints(
        torch.zeros(len(batch), 3, dtype=torch.long), batch, 0, order[None], order[None], inverse[None]
    )
    attn = SerializedAttention(channels=8, num_heads=2, patch_size=4, qkv_bias=True, order_index=0)
    feat = torch.randn(len(batch), 8)
    with torch.no_grad():
        torch.testing.assert_close(attn(feat, points), naive_window_attention(attn, feat, order, counts))


def test_window_layout_cuts_large_clouds_and_keeps_small_ones_whole() -> None:
    layout = build_window_layout([5, 1500, 1024, 2048], 1024, torch.device("cpu"))
    lengths = sorted((g.shape[1], g.shape[0]) for g in layout.groups)
    assert lengths == [(5, 1), (1024, 5)]  # 1500 -> 2 windows, 1024 -> 1, 2048 -> 2
    windows = torch.cat([g for g in layout.groups if g.shape[1] == 1024])
    assert windows[1].tolist() == list(range(5 + 1500 - 1024, 5 + 1500))  # last window ends at the last point
    # Every point takes its output from a window slot that holds it, once.
    flat = torch.cat([g.flatten() for g in layout.groups])
    assert torch.equal(flat[layout.slot], torch.arange(5 + 1500 + 1024 + 2048))


# --------------------------------------------------------------------------------------------
# Pooling


def test_serialized_pooling_halves_the_grid_and_takes_the_max() -> None:
    torch.manual_seed(0)
    grid = torch.randint(0, 16, (300, 3))
    batch = torch.randint(0, 2, (300,))
    points = SerializedPoints.from_grid(grid, batch, ORDERS, shuffle=False)
    pool = SerializedPooling(4, 6, stride=2, shuffle_orders=False).eval()
    feat = torch.randn(300, 4)
    with torch.no_grad():
        pooled, parents = pool(feat, points, None)
        projected = pool.proj(feat)

    cells = {}
    for b, cell, row in zip(batch.tolist(), (grid >> 1).tolist(), projected, strict=True):
        key = (b, *cell)
        cells[key] = torch.maximum(cells[key], row) if key in cells else row
    assert parents.depth == points.depth - 1
    assert len(parents.batch) == len(cells)
    assert int(parents.grid_coord.max()) == int(grid.max()) >> 1
    for b, cell, row in zip(parents.batch.tolist(), parents.grid_coord.tolist(), pooled, strict=True):
        torch.testing.assert_close(row, pool.act(pool.norm(cells[(b, *cell)][None]))[0])
    # Parent codes are the children's codes shifted by one level (exact for z-order).
    assert torch.equal(parents.code[0], serialization_code(parents.grid_coord, parents.batch, parents.depth, "z"))


# --------------------------------------------------------------------------------------------
# Pooler semantics on the reference configuration


def test_mixed_batch_gives_one_row_per_cloud_and_zero_rows_for_missing(reference_model: PointTransformerV3) -> None:
    clouds = [make_cloud(3000, 0), make_cloud(5, 1), None, torch.zeros(0, 6), make_cloud(200, 2, origin=0.5)]
    with torch.no_grad():
        out = encode_point_clouds(reference_model, clouds, generator=seeded())
    assert out.shape == (5, 512) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert torch.equal(out[2], torch.zeros(512)) and torch.equal(out[3], torch.zeros(512))
    assert all(out[i].abs().sum() > 0 for i in (0, 1, 4))
    assert torch.equal(encode_point_clouds(reference_model, [None, torch.zeros(0, 6)]), torch.zeros(2, 512))


def test_a_cloud_depends_on_the_batch_only_through_the_shared_voxel_grid(reference_model: PointTransformerV3) -> None:
    """Batch-wide min: another cloud that leaves the min and depth alone leaves the result alone."""
    cloud = make_cloud(3000, 0)  # over 1024 points: windows along the (shuffled) orders matter
    inside = make_cloud(400, 1, extent=0.2, origin=0.05)  # inside the first cloud's bounding box
    below = make_cloud(400, 1, extent=0.2, origin=-0.005)  # moves the batch minimum by half a voxel
    with torch.no_grad():
        alone = encode_point_clouds(reference_model, [cloud], generator=seeded())[0]
        shared_grid = encode_point_clouds(reference_model, [cloud, inside], generator=seeded())[0]
        shifted_grid = encode_point_clouds(reference_model, [cloud, below], generator=seeded())[0]
    torch.testing.assert_close(shared_grid, alone, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(shifted_grid, alone, rtol=1e-3, atol=1e-3)


def test_eval_is_deterministic_given_the_orders() -> None:
    torch.manual_seed(0)
    model = tiny_model().eval()
    clouds = [make_cloud(300, 0), make_cloud(120, 1)]
    with torch.no_grad():
        first = encode_point_clouds(model, clouds, generator=seeded(1))
        again = encode_point_clouds(model, clouds, generator=seeded(1))
        other = encode_point_clouds(model, clouds, generator=seeded(2))
        unshuffled = tiny_model(shuffle_orders=False).eval()
        fixed = [encode_point_clouds(unshuffled, clouds) for _ in range(2)]
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)  # the shuffle picks each block's order, also in eval (reference)
    assert torch.equal(fixed[0], fixed[1])


def test_training_backward_works_on_cpu() -> None:
    torch.manual_seed(0)
    model = tiny_model().train()
    out = model.project_pc(encode_point_clouds(model, [make_cloud(300, 0), None, make_cloud(90, 1)]))
    out.square().mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert model.embedding.stem["conv"].weight.grad.abs().sum() > 0
    assert model.enc["enc2"].get_submodule("block1").cpe[0].weight.grad.abs().sum() > 0
    # A batch with one tiny cloud reaches single-point BatchNorm batches in training mode.
    assert torch.isfinite(encode_point_clouds(model, [make_cloud(1, 3)])).all()


@pytest.mark.parametrize(
    ("clouds", "message"),
    [
        ([make_cloud(10, 0), make_cloud(10, 1).index_fill(0, torch.tensor([3]), math.nan)], "point cloud 1 contains"),
        ([make_cloud(10, 0).index_fill(0, torch.tensor([0]), math.inf)], "point cloud 0 contains"),
        ([None, torch.zeros(10, 3)], r"point cloud 1: expected shape \[N, 6\]"),
        ([torch.zeros(6)], "point cloud 0: expected shape"),
    ],
)
def test_bad_clouds_raise_a_clear_error(clouds: list[torch.Tensor | None], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_point_clouds(tiny_model(), clouds)


def test_non_fp32_model_is_refused() -> None:
    with pytest.raises(ValueError, match="float32"):
        encode_point_clouds(tiny_model().to(torch.bfloat16), [make_cloud(10, 0)])

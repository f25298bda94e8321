"""Serialized point transformer (PTv3-style) in pure PyTorch: point batches, submanifold sparse convolution,
serialized patch attention, global adaptive normalization and pre-norm blocks.

Runs on CPU and CUDA without spconv, flash-attn or torch-scatter. Every piece keeps objects apart: a batch of
objects gives exactly what separate calls give (per-object quantization anchor and curve depth, per-object patch
padding, per-object pooling).

Conventions
-----------
- `PointBatch.batch` is the object index of every point (int64, any order); `num_objects` may exceed the largest
  index (objects without points are allowed inside a batch).
- Sparse convolution weight layout is spconv's (C_out, 3, 3, 3, C_in). The output at cell g is
  ``Σ_d W[:, dx+1, dy+1, dz+1, :] · f(g + d)`` for d ∈ {-1, 0, 1}³ — cross-correlation, i.e. exactly
  ``F.conv3d(dense, W.permute(0, 4, 1, 2, 3), padding=1)`` on a dense grid indexed [x, y, z]. spconv's kernel
  index means the same +d (checked against spconv 2.3.8 on CPU through the official fixtures of
  `tests/test_official_scene.py`).
- Several points in one cell (possible because the grid is anchored at the per-object minimum and points move
  within a cell; `PointBatch.duplicates`):

  * ``"mean"`` (default): the cell's input feature is the **mean** of its points' features, the convolution runs
    once per occupied cell, and every point of the cell receives that cell's output. (spconv leaves this case
    undefined.)
  * ``"spconv_cpu"``: what spconv 2.3.8's CPU `SubMConv3d` computes with one thread (the released GD models
    evaluated on CPU). "First point" of a cell = the point with the lowest index among the cell's points. The
    centre tap gives every point W_c·(its own feature); for each kernel offset k < 13 (the first half in kernel
    order, offset d_k) only the first point of a cell receives W_k·(sum of the features of every point of the
    cell at +d_k); for each mirror offset k > 13 every point receives W_k·(feature of the first point of the cell
    at +d_k). With one point per cell both rules are the plain submanifold convolution. (spconv's GPU build
    uses a hash table whose "first" point is arbitrary; no rule reproduces it.)
- Patch attention follows the released flash-attention path: per object with n points in serialized order and
  patch size P, if n > P and n mod P ≠ 0 the sequence is padded to ceil(n/P)·P, the padding slots of the last
  patch holding the points at the same slot positions of the previous patch (n = 10, P = 4: slots
  [0..9, 6, 7], last patch {8, 9, 6, 7}); if n ≤ P the object is one short patch of n points (a per-patch key
  mask, never an N×N mask). Every real point keeps the output of its own (first) slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from . import serialization
from ._ops import counts_of, take

# ---------------------------------------------------------------------------------------------- point batch
_OFFSETS = [(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)]  # k = 9(dx+1)+3(dy+1)+dz+1
CENTER = 13
DUPLICATE_RULES = ("mean", "spconv_cpu")


@dataclass
class VoxelMap:
    """Occupied cells of a point batch and the 27 submanifold neighbour pairs between them."""

    point_to_voxel: Tensor  # (N,) cell of every point
    num_voxels: int
    voxel_counts: Tensor  # (V,) points per cell
    point_perm: Tensor  # (N,) points sorted by cell (stable)
    max_points_per_voxel: int
    pairs: list[tuple[Tensor, Tensor]]  # per kernel offset k: (out cell rows, input cell rows), rows unique
    neighbors: Tensor  # (V, 27) input cell at offset k of every cell, V where there is none
    dense: bool  # which convolution path to use (see `_SubmanifoldConvFunction`)

    @property
    def num_pairs(self) -> int:
        return sum(int(r.numel()) for r, _ in self.pairs)

    def pool(self, feat: Tensor) -> Tensor:
        """Per-cell mean of the points' features (V, C)."""
        if self.max_points_per_voxel == 1:
            return take(feat, self.point_perm)  # one point per cell, cells are sorted like point_perm
        total = torch.segment_reduce(take(feat, self.point_perm), "sum", lengths=self.voxel_counts, axis=0)
        return total / self.voxel_counts.to(total.dtype)[:, None]

    def unpool(self, voxel_feat: Tensor) -> Tensor:
        """Every point gets its cell's value (N, C)."""
        return take(voxel_feat, self.point_to_voxel)

    def first_points(self) -> Tensor:
        """(V,) the lowest point index of every cell."""
        return take(self.point_perm, torch.cumsum(self.voxel_counts, 0) - self.voxel_counts)


def build_voxel_map(grid: Int[Tensor, "N 3"], batch: Int[Tensor, " N"], num_objects: int) -> VoxelMap:
    """Occupied cells (unique (batch, x, y, z)) and, for every kernel offset, the pairs of cells at that offset.

    Keys pack (batch, x+1, y+1, z+1) into int64; neighbours are found with `torch.searchsorted` on the sorted keys."""
    n = grid.shape[0]
    device = grid.device
    g = grid.long() + 1  # neighbours of the border stay non-negative
    bits = max(int(g.max()) + 1, 1).bit_length() if n else 1
    batch_bits = max(int(num_objects - 1).bit_length(), 0)
    if 3 * bits + batch_bits > 62:
        raise ValueError(f"grid too large for sparse convolution keys ({bits} bits per axis)")
    key = (batch.long() << (3 * bits)) | (g[:, 0] << (2 * bits)) | (g[:, 1] << bits) | g[:, 2]
    vkeys, point_to_voxel, counts = torch.unique(key, sorted=True, return_inverse=True, return_counts=True)
    num_voxels = vkeys.numel()
    point_perm = torch.argsort(point_to_voxel, stable=True)
    pairs = []
    all_rows = torch.arange(num_voxels, device=device)
    for k, (dx, dy, dz) in enumerate(_OFFSETS):
        if k == CENTER:
            pairs.append((all_rows, all_rows))
            continue
        delta = (dx << (2 * bits)) + (dy << bits) + dz
        nk = vkeys + delta
        pos = torch.searchsorted(vkeys, nk).clamp_max(max(num_voxels - 1, 0))
        hit = vkeys[pos] == nk if num_voxels else torch.zeros(0, dtype=torch.bool, device=device)
        rows = torch.nonzero(hit, as_tuple=False).flatten()
        pairs.append((rows, pos[rows]))
    neighbors = torch.full((num_voxels, 27), num_voxels, dtype=torch.long, device=device)
    for k, (rows, src) in enumerate(pairs):
        neighbors[rows, k] = src
    num_pairs = sum(int(r.numel()) for r, _ in pairs)
    dense = num_pairs >= _DENSE_MIN_PAIRS * max(num_voxels, 1)
    return VoxelMap(point_to_voxel, num_voxels, counts, point_perm, int(counts.max()) if n else 0, pairs,
                    neighbors, dense)


@dataclass
class Patches:
    """Padded patches of one serialization order: `index` (nP, P) point indices, `valid` (nP, P) or None when
    every slot is valid, `slot_of_point` (N,) flat slot holding each point's own output."""

    index: Tensor
    valid: Tensor | None
    slot_of_point: Tensor


def build_patches(order: Int[Tensor, " N"], counts: Int[Tensor, " B"], patch_size: int) -> Patches:
    """Patches along one serialized order (grouped by object, objects in increasing index; see module doc)."""
    P = int(patch_size)
    device = order.device
    n_b = counts.long()
    num_patches = (n_b + P - 1) // P  # 0 for empty objects
    slots = num_patches * P
    slot_start = torch.cumsum(slots, 0) - slots
    serial_start = torch.cumsum(n_b, 0) - n_b
    total = int(slots.sum())
    obj = torch.repeat_interleave(torch.arange(len(n_b), device=device), slots, output_size=total)
    t = torch.arange(total, device=device) - take(slot_start, obj)
    n = take(n_b, obj)
    src_local = torch.where(t < n, t, t - P)
    valid = (t < n) | (n >= P)
    src = (take(serial_start, obj) + src_local.clamp_min(0)).clamp_max(max(order.numel() - 1, 0))
    index = take(order, src).view(-1, P) if total else order.new_zeros((0, P))
    valid_table = valid.view(-1, P)
    all_valid = bool(valid.all())
    # Slot of every point: serialized position j of object b sits at slot_start[b] + (j - serial_start[b]).
    pobj = torch.repeat_interleave(torch.arange(len(n_b), device=device), n_b, output_size=order.numel())
    j = torch.arange(order.numel(), device=device)
    slot_of_point = torch.empty_like(order)
    slot_of_point[order] = take(slot_start, pobj) + (j - take(serial_start, pobj))
    return Patches(index, None if all_valid else valid_table, slot_of_point)


@dataclass
class PointBatch:
    """A batch of point sets: coordinates, features, object index per point, and the current grid size.

    `serialize()` fills the grid coordinates and curve orders; the voxel map (sparse-conv neighbours) and the
    patch tables are computed on first use and cached, so the blocks of one layer share them."""

    coord: Float[Tensor, "N 3"]
    feat: Float[Tensor, "N C"]
    batch: Int[Tensor, " N"]
    num_objects: int
    grid_size: float
    global_feat: Tensor | None = None  # (B, C_global): per-object pooled feature for adaptive normalization
    duplicates: str = "mean"  # sparse-conv rule for several points in one cell: "mean" | "spconv_cpu" (module doc)
    ties: str = "stable"  # serialization order of points with equal codes: "stable" | "released"
    origin: Int[Tensor, " N"] | None = None  # payload: the densifier input row each point descends from
    attr: Float[Tensor, "N A"] | None = None  # payload: raw Gaussian attributes accumulated so far (residual sum)
    grid_coord: Tensor | None = None
    order_names: tuple[str, ...] = ()
    serialized_code: Tensor | None = None
    serialized_order: Tensor | None = None
    serialized_inverse: Tensor | None = None
    _voxel_map: VoxelMap | None = field(default=None, repr=False)
    _patches: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return self.coord.shape[0]

    def select(self, index: Int[Tensor, " M"], **changes) -> "PointBatch":
        """The points at `index`: every per-point tensor (coordinates, features, object index, payload) taken, the
        per-object ones and the rules kept, serialization and caches dropped; `changes` replace fields after."""
        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else take(t, index)

        fields_ = dict(coord=take(self.coord, index), feat=take(self.feat, index), batch=take(self.batch, index),
                       num_objects=self.num_objects, grid_size=self.grid_size, global_feat=self.global_feat,
                       duplicates=self.duplicates, ties=self.ties, origin=pick(self.origin), attr=pick(self.attr))
        return PointBatch(**{**fields_, **changes})

    @property
    def counts(self) -> Tensor:
        return counts_of(self.batch, self.num_objects)

    @property
    def offsets(self) -> Tensor:
        """Cumulative point counts (PTv3 `offset`), valid as segment ends when `batch` is sorted."""
        return torch.cumsum(self.counts, 0)

    def serialize(self, orders: Sequence[str] = serialization.ORDERS, shuffle: bool = False,
                  generator: torch.Generator | None = None) -> "PointBatch":
        """Quantize (per-object anchor) and compute the curve orders; with `shuffle` the list of orders is
        permuted with `torch.randperm(len(orders), generator=generator)`."""
        orders = tuple(orders)
        if shuffle and len(orders) > 1:
            device = generator.device if generator is not None else "cpu"
            perm = torch.randperm(len(orders), generator=generator, device=device).tolist()
            orders = tuple(orders[i] for i in perm)
        self.grid_coord = serialization.quantize(self.coord, self.batch, self.grid_size, self.num_objects)
        code, order, inverse = serialization.serialize(self.grid_coord, self.batch, self.num_objects, orders,
                                                       self.ties)
        self.order_names, self.serialized_code, self.serialized_order, self.serialized_inverse = \
            orders, code, order, inverse
        self._voxel_map, self._patches = None, {}
        return self

    def voxel_map(self) -> VoxelMap:
        if self.grid_coord is None:
            raise RuntimeError("PointBatch.serialize() must run before the sparse convolution")
        if self._voxel_map is None:
            self._voxel_map = build_voxel_map(self.grid_coord, self.batch, self.num_objects)
        return self._voxel_map

    def patches(self, order_index: int, patch_size: int) -> Patches:
        if self.serialized_order is None:
            raise RuntimeError("PointBatch.serialize() must run before serialized attention")
        i = order_index % self.serialized_order.shape[0]
        key = (i, int(patch_size))
        if key not in self._patches:
            self._patches[key] = build_patches(self.serialized_order[i], self.counts, patch_size)
        return self._patches[key]


# ---------------------------------------------------------------------------------------------- sparse conv
_DENSE_MIN_PAIRS = 9.0  # neighbour pairs per cell from which the gather-all-27 GEMM beats per-offset GEMMs
_DENSE_CHUNK_BYTES = 64 * 2**20  # bound on the transient (rows, 27·C) gather of the dense path


def _chunks(num_rows: int, row_bytes: int):
    step = max(1, _DENSE_CHUNK_BYTES // max(row_bytes, 1))
    for start in range(0, num_rows, step):
        yield start, min(num_rows, start + step)


def _dense_apply(x: Tensor, table: Tensor, w: Tensor) -> Tensor:
    """Σ_k x_pad[table[:, k]] @ w[k] as one (rows, 27·C_in) × (27·C_in, C_out) GEMM, in row chunks."""
    xp = torch.cat([x, x.new_zeros(1, x.shape[1])])
    w2 = w.reshape(-1, w.shape[-1])
    out = x.new_empty((table.shape[0], w.shape[-1]))
    for a, b in _chunks(table.shape[0], 27 * x.shape[1] * x.element_size()):
        out[a:b] = take(xp, table[a:b]).reshape(b - a, -1) @ w2
    return out


def _dense_weight_grad(x: Tensor, table: Tensor, grad_out: Tensor) -> Tensor:
    xp = torch.cat([x, x.new_zeros(1, x.shape[1])])
    gw = x.new_zeros((27 * x.shape[1], grad_out.shape[1]))
    for a, b in _chunks(table.shape[0], 27 * x.shape[1] * x.element_size()):
        gw += take(xp, table[a:b]).reshape(b - a, -1).T @ grad_out[a:b]
    return gw.reshape(27, x.shape[1], grad_out.shape[1])


class _SubmanifoldConvFunction(torch.autograd.Function):
    """out[v] = Σ_k W_k · f[nbr(v, k)]; saves only f and the neighbour tables (the gathers are recomputed).

    Dense cells (≥ 9 neighbour pairs per cell on average) use one GEMM over all 27 offsets (missing neighbours
    read a zero row); sparse ones use one GEMM per offset on the existing pairs. The input gradient uses the
    symmetry nbr(nbr(v, k), 26 − k) = v, so both directions are gathers: no colliding scatter, deterministic."""

    @staticmethod
    def forward(ctx, feat: Tensor, weight: Tensor, voxels: "VoxelMap") -> Tensor:
        # weight: (27, C_in, C_out)
        w = weight.to(feat.dtype)
        if voxels.dense:
            out = _dense_apply(feat, voxels.neighbors, w)
        else:
            out = feat @ w[CENTER]
            for k, (rows, src) in enumerate(voxels.pairs):
                if k != CENTER and rows.numel():
                    out.index_put_((rows,), take(out, rows) + take(feat, src) @ w[k])  # rows unique per offset
        ctx.save_for_backward(feat, weight)
        ctx.voxels = voxels
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        feat, weight = ctx.saved_tensors
        voxels: VoxelMap = ctx.voxels
        grad_out = grad_out.contiguous()
        g = grad_out.to(feat.dtype)
        w = weight.to(feat.dtype)
        grad_feat = grad_weight = None
        if ctx.needs_input_grad[0]:
            if voxels.dense:
                grad_feat = _dense_apply(g, voxels.neighbors.flip(1), w.transpose(1, 2))
            else:
                grad_feat = g @ w[CENTER].T
                for k, (rows, src) in enumerate(voxels.pairs):
                    if k != CENTER and rows.numel():
                        # src is unique per offset: a gather-add-scatter, no colliding writes
                        grad_feat.index_put_((src,), take(grad_feat, src) + take(g, rows) @ w[k].T)
        if ctx.needs_input_grad[1]:
            if voxels.dense:
                grad_weight = _dense_weight_grad(feat, voxels.neighbors, g)
            else:
                grad_weight = torch.zeros_like(w)
                for k, (rows, src) in enumerate(voxels.pairs):
                    if rows.numel():
                        grad_weight[k] = take(feat, src).T @ take(g, rows)
            grad_weight = grad_weight.to(weight.dtype)
        return grad_feat, grad_weight, None


class SubmanifoldConv3d(nn.Module):
    """3×3×3 submanifold sparse convolution (outputs only at occupied cells), spconv weight layout
    (C_out, 3, 3, 3, C_in). See the module doc for the offset convention and the several-points-per-cell rule."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.weight = nn.Parameter(torch.empty(out_channels, 3, 3, 3, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = 27 * self.in_channels
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)  # as torch's Conv3d default (kaiming_uniform a=√5)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, feat: Float[Tensor, "N C"], voxels: VoxelMap,
                duplicates: str = "mean") -> Float[Tensor, "N C_out"]:
        """`duplicates`: the several-points-per-cell rule, ``"mean"`` or ``"spconv_cpu"`` (module doc)."""
        if feat.shape[-1] != self.in_channels:
            raise ValueError(f"SubmanifoldConv3d expects {self.in_channels} channels, got {feat.shape[-1]}")
        if duplicates not in DUPLICATE_RULES:
            raise ValueError(f"sparse-conv duplicate rule must be one of {DUPLICATE_RULES}, got {duplicates!r}")
        w = self.weight.permute(1, 2, 3, 4, 0).reshape(27, self.in_channels, self.out_channels)
        if duplicates == "spconv_cpu" and voxels.max_points_per_voxel > 1:
            out = self._spconv_cpu(feat, w, voxels)
        else:
            out = voxels.unpool(_SubmanifoldConvFunction.apply(voxels.pool(feat), w, voxels))
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out

    @staticmethod
    def _spconv_cpu(feat: Tensor, w: Tensor, voxels: VoxelMap) -> Tensor:
        """The ``"spconv_cpu"`` rule as two cell-level convolutions with half kernels:
        out[p] = W_c·f[p] + Σ_{k>13} W_k·f[first(cell(p)+d_k)] + [p first]·Σ_{k<13} W_k·S[cell(p)+d_k],
        S[u] = Σ of the features of the points of cell u, [p first] = 1 for the first point of its cell.
        Differentiable."""
        k = torch.arange(27, device=w.device)[:, None, None]
        first = voxels.first_points()
        cell_sum = voxels.pool(feat) * voxels.voxel_counts.to(feat.dtype)[:, None]
        mirror = _SubmanifoldConvFunction.apply(take(feat, first), w * (k > CENTER).to(w.dtype), voxels)
        lower = _SubmanifoldConvFunction.apply(cell_sum, w * (k < CENTER).to(w.dtype), voxels)
        is_first = torch.zeros(feat.shape[0], dtype=feat.dtype, device=feat.device)
        is_first[first] = 1.0
        return feat @ w[CENTER].to(feat.dtype) + voxels.unpool(mirror) + is_first[:, None] * voxels.unpool(lower)


# ---------------------------------------------------------------------------------------------- norm, mlp, drop
class GlobalAdaptiveLayerNorm(nn.Module):
    """LayerNorm without affine parameters, optionally modulated per object by a global feature.

    With `global_dim` None: y = LN(x) (the released code's plain ``nn.LayerNorm(C, elementwise_affine=False)``).
    With `global_dim` = G ("global adaptive normalization"): y = LN(x) · (A·g_b + a) where g_b is the pooled
    feature of the point's object, the multiplicative form of the authors' `AdaLayerNorm`. A is initialised to
    0 and a to 1, so at initialisation it equals the plain LayerNorm."""

    def __init__(self, channels: int, global_dim: int | None = None, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels, self.eps = channels, eps
        self.affine = None
        if global_dim is not None:
            self.affine = nn.Linear(global_dim, channels)
            nn.init.zeros_(self.affine.weight)
            nn.init.ones_(self.affine.bias)

    def scale(self, global_feat: Tensor | None, dtype: torch.dtype) -> Tensor | None:
        """Per-object scale (B, C), or None for the plain LayerNorm."""
        if self.affine is None:
            return None
        if global_feat is None:
            raise ValueError("adaptive normalization needs the per-object global feature")
        return self.affine(global_feat.to(self.affine.weight.dtype)).to(dtype)

    def forward(self, x: Tensor, batch: Tensor | None = None, global_feat: Tensor | None = None) -> Tensor:
        y = F.layer_norm(x, (self.channels,), eps=self.eps)
        if self.affine is None:
            return y
        if global_feat is None or batch is None:
            raise ValueError("adaptive normalization needs the per-object global feature and batch index")
        scale = self.affine(global_feat.to(self.affine.weight.dtype)).to(y.dtype)
        return y * (scale if scale.shape[0] == 1 else take(scale, batch))


class MLP(nn.Module):
    def __init__(self, channels: int, hidden: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_channels or channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def drop_path(x: Tensor, p: float, training: bool, generator: torch.Generator | None = None) -> Tensor:
    """Stochastic depth per point (row): drop the residual branch of a row with probability p, rescale by 1/(1-p)."""
    if p <= 0.0 or not training:
        return x
    keep = 1.0 - p
    gdev = generator.device if generator is not None else x.device
    u = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), generator=generator, device=gdev).to(x.device)
    return x * ((u < keep).to(x.dtype) * (1.0 / keep))


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return drop_path(x, self.p, self.training, generator)

    def extra_repr(self) -> str:
        return f"p={self.p}"


# ---------------------------------------------------------------------------------------------- attention
class SerializedAttention(nn.Module):
    """Multi-head attention inside patches of `patch_size` consecutive points along a serialization order,
    computed with `F.scaled_dot_product_attention` on the padded (num_patches, heads, P, head_dim) tensors."""

    def __init__(self, channels: int, num_heads: int, patch_size: int = 48, qkv_bias: bool = True) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by {num_heads} heads")
        self.channels, self.num_heads, self.patch_size = channels, num_heads, int(patch_size)
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)

    def forward(self, feat: Float[Tensor, "N C"], point: PointBatch, order_index: int) -> Float[Tensor, "N C"]:
        patches = point.patches(order_index, self.patch_size)
        H, C = self.num_heads, self.channels
        D = C // H
        P = self.patch_size
        qkv = take(self.qkv(feat), patches.index)  # (nP, P, 3C)
        q, k, v = qkv.view(-1, P, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)  # (nP, H, P, D)
        mask = None if patches.valid is None else patches.valid[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = take(out.transpose(1, 2).reshape(-1, C), patches.slot_of_point)
        return self.proj(out)


# ---------------------------------------------------------------------------------------------- block
class Block(nn.Module):
    """Pre-norm serialized-attention block:
    f ← f + CPE(f);  f ← f + DropPath(Attn(N₁(f)));  f ← f + DropPath(MLP(N₂(f))),
    CPE = SubmanifoldConv3d → Linear → N (N: `GlobalAdaptiveLayerNorm`)."""

    def __init__(self, channels: int, num_heads: int, patch_size: int = 48, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0, global_dim: int | None = None, qkv_bias: bool = True) -> None:
        super().__init__()
        self.cpe = nn.ModuleList([SubmanifoldConv3d(channels, channels, bias=True), nn.Linear(channels, channels),
                                  GlobalAdaptiveLayerNorm(channels, global_dim)])
        self.norm1 = GlobalAdaptiveLayerNorm(channels, global_dim)
        self.attn = SerializedAttention(channels, num_heads, patch_size, qkv_bias)
        self.norm2 = GlobalAdaptiveLayerNorm(channels, global_dim)
        self.mlp = nn.Sequential(MLP(channels, int(channels * mlp_ratio)))
        self.drop_path = DropPath(drop_path)

    def forward(self, point: PointBatch, order_index: int, generator: torch.Generator | None = None) -> PointBatch:
        f, b, g = point.feat, point.batch, point.global_feat
        conv, lin, norm = self.cpe
        f = f + norm(lin(conv(f, point.voxel_map(), point.duplicates)), b, g)
        f = f + self.drop_path(self.attn(self.norm1(f, b, g), point, order_index), generator)
        f = f + self.drop_path(self.mlp(self.norm2(f, b, g)), generator)
        point.feat = f
        return point

"""Space-filling-curve serialization of point batches (Point Transformer V3 style, pure PyTorch).

Points are quantized to an integer grid, each cell gets a code on a space-filling curve, and sorting the codes
orders the points so that neighbours in space are (mostly) neighbours in the sequence. Four curves are available:

- ``"z"``: Morton order. Bit i of x goes to bit 3i+2 of the code, y to 3i+1, z to 3i (x most significant in every
  triple), as in PTv3/OCNN.
- ``"hilbert"``: Skilling's 3-D Hilbert transform ("Programming the Hilbert curve", 2004) with ``depth`` bits per
  axis, x as the first axis. Same codes as PTv3's port of ``numpy-hilbert-curve``.
- ``"z-trans"``, ``"hilbert-trans"``: the same curves on (y, x, z), so patch boundaries fall elsewhere.

Quantization (differs deliberately from a batch-global anchor): ``grid = trunc((coord - min_b) / grid_size)`` with
``min_b`` the minimum over the points of the *same object* b, and the curve depth (bits per axis) of object b is
``max(1, bit_length(max grid coordinate of b))``. The released GD code serializes one object at a time with
exactly this anchor and depth, so a batch of objects is ordered exactly as separate calls would order them.

Batch packing: ``code = batch << (3·D) | spatial_code`` with D the largest per-object depth, so sorting groups the
points by object first. Requires ``3·D + bit_length(num_objects - 1) <= 63``.

Orders (``ties``): ``"stable"`` (default) sorts every curve with ``argsort(code, stable=True)``, so ties (several
points in one cell) keep their input order; ``"released"`` reproduces the released PTv3/GD code, which sorts the
stacked codes of all curves at once with the default (unstable) ``torch.argsort(torch.stack(codes))``: the order
of tied points is then whatever that sort gives (reproducible for a given input on CPU; CUDA sorts may differ).
The released code serializes one object per call, so with several objects the unstable sort runs on each
object's points (in input order) separately, and a batch is ordered exactly as separate calls would order it.
``inverse`` is the inverse permutation (``order[inverse] == arange``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from ._ops import counts_of, take

ORDERS = ("z", "z-trans", "hilbert", "hilbert-trans")
TIES = ("stable", "released")
MAX_DEPTH = 16


# ---------------------------------------------------------------------------------------------- curves
def z_order_encode(grid: Int[Tensor, "N 3"], depth: int) -> Int[Tensor, " N"]:
    """Morton codes of non-negative integer cells with ``depth`` bits per axis (int64)."""
    _check_grid(grid, depth)
    x, y, z = grid.long().unbind(-1)
    code = torch.zeros_like(x)
    for i in range(depth):
        code |= ((x >> i) & 1) << (3 * i + 2)
        code |= ((y >> i) & 1) << (3 * i + 1)
        code |= ((z >> i) & 1) << (3 * i)
    return code


def z_order_decode(code: Int[Tensor, " N"], depth: int) -> Int[Tensor, "N 3"]:
    """Inverse of `z_order_encode`."""
    code = code.long()
    x, y, z = (torch.zeros_like(code) for _ in range(3))
    for i in range(depth):
        x |= ((code >> (3 * i + 2)) & 1) << i
        y |= ((code >> (3 * i + 1)) & 1) << i
        z |= ((code >> (3 * i)) & 1) << i
    return torch.stack([x, y, z], dim=-1)


def hilbert_encode(grid: Int[Tensor, "N 3"], depth: int) -> Int[Tensor, " N"]:
    """3-D Hilbert codes (Skilling's transform, vectorized) of non-negative cells with ``depth`` bits per axis.

    Axis 0 (x) is the most significant axis of every bit triple, as in ``numpy-hilbert-curve`` / PTv3."""
    _check_grid(grid, depth)
    X = [c.clone() for c in grid.long().unbind(-1)]
    n = 3
    # Inverse undo of the excess work (Skilling's AxestoTranspose, first loop).
    q = 1 << (depth - 1)
    while q > 1:
        p = q - 1
        for i in range(n):
            bit = (X[i] & q) != 0
            if i == 0:
                X[0] = torch.where(bit, X[0] ^ p, X[0])
                continue
            t = (X[0] ^ X[i]) & p
            X[0], X[i] = torch.where(bit, X[0] ^ p, X[0] ^ t), torch.where(bit, X[i], X[i] ^ t)
        q >>= 1
    # Gray encode (prefix XOR over the interleaved bit string, MSB first).
    for i in range(1, n):
        X[i] = X[i] ^ X[i - 1]
    t = torch.zeros_like(X[0])
    q = 1 << (depth - 1)
    while q > 1:
        t = torch.where((X[n - 1] & q) != 0, t ^ (q - 1), t)
        q >>= 1
    X = [xi ^ t for xi in X]
    # Interleave the transposed index: bit b of axis i -> bit 3b + (2 - i).
    code = torch.zeros_like(X[0])
    for b in range(depth):
        for i in range(n):
            code |= ((X[i] >> b) & 1) << (3 * b + (n - 1 - i))
    return code


def _check_grid(grid: Tensor, depth: int) -> None:
    if grid.ndim != 2 or grid.shape[1] != 3:
        raise ValueError(f"grid coordinates must have shape (N, 3), got {tuple(grid.shape)}")
    if grid.is_floating_point():
        raise ValueError("grid coordinates must be integers")
    if not 1 <= depth <= MAX_DEPTH:
        raise ValueError(f"curve depth must be in [1, {MAX_DEPTH}], got {depth}")
    if grid.numel() and (int(grid.min()) < 0 or int(grid.max()) >= (1 << depth)):
        raise ValueError(f"grid coordinates must lie in [0, 2^{depth}) for depth {depth}")


def encode_curve(grid: Int[Tensor, "N 3"], depth: int, order: str) -> Int[Tensor, " N"]:
    """Spatial code of one curve (``order`` in `ORDERS`)."""
    if order not in ORDERS:
        raise ValueError(f"unknown serialization order {order!r}; expected one of {ORDERS}")
    if order.endswith("-trans"):
        grid = grid[:, [1, 0, 2]]
    return z_order_encode(grid, depth) if order.startswith("z") else hilbert_encode(grid, depth)


# ---------------------------------------------------------------------------------------------- batches
def quantize(coord: Tensor, batch: Tensor, grid_size: float, num_objects: int) -> Tensor:
    """Integer cells ``trunc((coord - per-object min) / grid_size)`` (int64, >= 0)."""
    if not grid_size > 0:
        raise ValueError(f"grid_size must be positive, got {grid_size}")
    c = coord.detach()
    mins = c.new_full((num_objects, 3), float("inf")).scatter_reduce(
        0, batch[:, None].expand(-1, 3), c, "amin", include_self=True)
    return torch.div(c - take(mins, batch), grid_size, rounding_mode="trunc").long().clamp_min(0)


def object_depths(grid: Tensor, batch: Tensor, num_objects: int) -> Tensor:
    """Bits per axis of each object: max(1, bit_length(max cell coordinate of the object)) (int64, (B,))."""
    mx = torch.zeros(num_objects, dtype=torch.long, device=grid.device)
    if grid.numel():
        mx = mx.scatter_reduce(0, batch, grid.amax(dim=1), "amax", include_self=True)
    depth = torch.zeros_like(mx)
    while bool((mx >> depth).gt(0).any()):
        depth += (mx >> depth).gt(0).long()
    return depth.clamp_min(1)


def serialize(
    grid: Int[Tensor, "N 3"], batch: Int[Tensor, " N"], num_objects: int, orders: Sequence[str] = ORDERS,
    ties: str = "stable",
) -> tuple[Tensor, Tensor, Tensor]:
    """Packed codes, orders and inverse permutations, each (len(orders), N) int64.

    Objects are serialized independently (per-object depth, see module doc) and packed by batch index; `ties`
    (``"stable"`` | ``"released"``) orders points with equal codes (module doc)."""
    if ties not in TIES:
        raise ValueError(f"serialization ties must be one of {TIES}, got {ties!r}")
    depths = object_depths(grid, batch, num_objects)
    max_depth = int(depths.max()) if num_objects > 0 else 1
    if max_depth > MAX_DEPTH:
        raise ValueError(f"point set needs {max_depth} bits per axis (> {MAX_DEPTH}); use a larger grid size")
    batch_bits = max(int(num_objects - 1).bit_length(), 0)
    if 3 * max_depth + batch_bits > 63:
        raise ValueError(f"cannot pack {num_objects} objects above {3 * max_depth} spatial bits in int64")
    point_depth = take(depths, batch)
    unique_depths = torch.unique(point_depth).tolist() if grid.shape[0] else []
    codes = []
    for name in orders:
        spatial = torch.zeros(grid.shape[0], dtype=torch.long, device=grid.device)
        for d in unique_depths:  # at most MAX_DEPTH groups: one Hilbert/Morton depth per group
            sel = point_depth == d
            spatial[sel] = encode_curve(grid[sel], int(d), name)
        codes.append((batch.long() << (3 * max_depth)) | spatial)
    if not codes:
        empty = torch.zeros(0, grid.shape[0], dtype=torch.long, device=grid.device)
        return empty, empty.clone(), empty.clone()
    code = torch.stack(codes)
    if ties == "stable":
        order = torch.argsort(code, dim=-1, stable=True)
    else:
        order = _per_object_argsort(code, batch, num_objects)
    inverse = torch.empty_like(order)
    inverse.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order).contiguous())
    return code, order, inverse


def _per_object_argsort(code: Tensor, batch: Tensor, num_objects: int) -> Tensor:
    """Unstable `torch.argsort` of each object's (curves, n_b) codes on its own, placed where the object's points
    fall in the packed order (objects in increasing index)."""
    if num_objects <= 1 or bool((batch == batch[0]).all()):
        return torch.argsort(code)
    order = torch.empty_like(code)
    counts = counts_of(batch, num_objects).tolist()
    start = 0
    for b, n in enumerate(counts):
        if n == 0:
            continue
        rows = torch.nonzero(batch == b, as_tuple=False).flatten()
        order[:, start: start + n] = rows[torch.argsort(code[:, rows])]
        start += n
    return order

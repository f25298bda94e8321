"""Small segment operations over per-object batch indices (pure PyTorch, deterministic on CPU and CUDA).

No `index_add_` with colliding indices is used, so results do not depend on atomic-add order on CUDA.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def take(x: Tensor, index: Tensor) -> Tensor:
    """``x[index]`` along dim 0 for an integer index of any shape, via `index_select` (several times faster
    than advanced indexing on CPU); differentiable."""
    if index.dtype == torch.bool:
        index = torch.nonzero(index, as_tuple=False).flatten()
    flat = torch.index_select(x, 0, index.reshape(-1))
    return flat.reshape(*index.shape, *x.shape[1:])


def counts_of(batch: Tensor, num_objects: int) -> Tensor:
    """Points per object (int64, (B,))."""
    return torch.bincount(batch, minlength=num_objects)[:num_objects]


def _sorted(batch: Tensor) -> tuple[Tensor | None, Tensor]:
    """(permutation or None when `batch` is already non-decreasing, sorted batch)."""
    if batch.numel() < 2 or bool((batch[1:] >= batch[:-1]).all()):
        return None, batch
    perm = torch.argsort(batch, stable=True)
    return perm, take(batch, perm)


def segment_sum(x: Tensor, batch: Tensor, num_objects: int) -> Tensor:
    """Per-object sums (B, *x.shape[1:]); objects without points give zeros. Differentiable."""
    perm, _ = _sorted(batch)
    xs = x if perm is None else take(x, perm)
    lengths = counts_of(batch, num_objects)
    if xs.shape[0] == 0:
        return x.new_zeros((num_objects, *x.shape[1:]))
    return torch.segment_reduce(xs, "sum", lengths=lengths, axis=0)


def segment_mean(x: Tensor, batch: Tensor, num_objects: int) -> Tensor:
    """Per-object means (B, *x.shape[1:]); objects without points give zeros. Differentiable."""
    total = segment_sum(x, batch, num_objects)
    n = counts_of(batch, num_objects).clamp_min(1).to(total.dtype)
    return total / n.view(-1, *([1] * (x.ndim - 1)))


def segment_softmax(logits: Tensor, batch: Tensor, num_objects: int, temperature: float = 1.0) -> Tensor:
    """Softmax of a (N,) score over the points of each object (computed in float32 or better)."""
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    z = z / temperature
    mx = z.detach().new_full((num_objects,), -math.inf).scatter_reduce(0, batch, z.detach(), "amax")
    e = torch.exp(z - take(mx, batch))
    return e / take(segment_sum(e, batch, num_objects), batch)


def rank_within_segments(score: Tensor, batch: Tensor, num_objects: int) -> Tensor:
    """Rank (0 = largest score) of every point inside its object; ties broken by the lower point index.

    Vectorized: stable sort by descending score, then stable sort by object."""
    n = score.shape[0]
    by_score = torch.argsort(score.detach(), descending=True, stable=True)
    by_batch = take(by_score, torch.argsort(take(batch, by_score), stable=True))
    counts = counts_of(batch, num_objects)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.long, device=score.device)
    rank[by_batch] = torch.arange(n, device=score.device) - take(starts, take(batch, by_batch))
    return rank


def keep_counts(counts: Tensor, ratio: float) -> Tensor:
    """ceil(ratio · n) per object, robust to float noise (0.8 · 24000 -> 19200)."""
    k = torch.ceil(counts.double() * ratio - 1e-6).long()
    return torch.minimum(k.clamp_min(0), counts)


def top_ratio_mask(score: Tensor, batch: Tensor, num_objects: int, ratio: float) -> Tensor:
    """Boolean mask of the ceil(ratio · n_b) highest-scoring points of every object b (ties: lower index)."""
    counts = counts_of(batch, num_objects)
    k = keep_counts(counts, ratio)
    return rank_within_segments(score, batch, num_objects) < take(k, batch)

"""Depth metrics: absolute relative error (AbsRel) and threshold accuracy (δ < 1.25), per image.

Both compare a predicted depth map with a ground-truth one, shape (..., H, W) (a trailing singleton channel is
accepted), over the valid pixels: ground truth finite and > 0, prediction finite and > 0, and `mask` when given.
Images with no valid pixel give NaN. With `median_scale`, each prediction is first multiplied by
median(gt) / median(pred) over its valid pixels (for predictions known only up to scale).

    AbsRel = mean |pred − gt| / gt            δ<t = fraction of pixels with max(pred/gt, gt/pred) < t
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor

__all__ = ["abs_rel", "delta_accuracy", "depth_metrics"]


def _prepare(pred: Tensor, target: Tensor, mask: Tensor | None, median_scale: bool) -> tuple[Tensor, Tensor, Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"depth metrics: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.ndim >= 3 and pred.shape[-1] == 1:
        pred, target = pred[..., 0], target[..., 0]
        mask = mask[..., 0] if mask is not None and mask.ndim == pred.ndim + 1 else mask
    if pred.ndim < 2:
        raise ValueError(f"depth metrics: depth maps must be (..., H, W), got {tuple(pred.shape)}")
    pred, target = pred.double(), target.double()
    valid = torch.isfinite(target) & (target > 0) & torch.isfinite(pred) & (pred > 0)
    if mask is not None:
        if mask.shape != valid.shape:
            raise ValueError(f"depth metrics: mask {tuple(mask.shape)} does not match depth {tuple(valid.shape)}")
        valid = valid & mask.bool()
    pred = torch.where(valid, pred, torch.ones_like(pred))
    target = torch.where(valid, target, torch.ones_like(target))
    if median_scale:
        flat_p, flat_t, flat_v = pred.flatten(-2), target.flatten(-2), valid.flatten(-2)
        nan = torch.full_like(flat_p, float("nan"))
        ratio = torch.nanmedian(torch.where(flat_v, flat_t, nan), -1).values / \
            torch.nanmedian(torch.where(flat_v, flat_p, nan), -1).values
        pred = pred * torch.nan_to_num(ratio, nan=1.0)[..., None, None]
    return pred, target, valid


def _mean(values: Tensor, valid: Tensor) -> Tensor:
    count = valid.sum(dim=(-2, -1))
    total = torch.where(valid, values, torch.zeros_like(values)).sum(dim=(-2, -1))
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def abs_rel(pred: Float[Tensor, "*batch H W"], target: Float[Tensor, "*batch H W"],
            mask: Bool[Tensor, "*batch H W"] | None = None, median_scale: bool = False) -> Float[Tensor, "*batch"]:
    """Per-image mean of |pred − gt| / gt over valid pixels (float64)."""
    pred, target, valid = _prepare(pred, target, mask, median_scale)
    return _mean((pred - target).abs() / target, valid)


def delta_accuracy(pred: Float[Tensor, "*batch H W"], target: Float[Tensor, "*batch H W"],
                   mask: Bool[Tensor, "*batch H W"] | None = None, threshold: float = 1.25,
                   median_scale: bool = False) -> Float[Tensor, "*batch"]:
    """Per-image fraction of valid pixels with max(pred/gt, gt/pred) < `threshold` (float64)."""
    pred, target, valid = _prepare(pred, target, mask, median_scale)
    ratio = torch.maximum(pred / target, target / pred)
    return _mean((ratio < threshold).double(), valid)


def depth_metrics(pred: Float[Tensor, "*batch H W"], target: Float[Tensor, "*batch H W"],
                  mask: Bool[Tensor, "*batch H W"] | None = None, median_scale: bool = False) -> dict[str, Tensor]:
    """{"abs_rel": ..., "delta1": ...} per image (δ threshold 1.25)."""
    return {"abs_rel": abs_rel(pred, target, mask, median_scale),
            "delta1": delta_accuracy(pred, target, mask, 1.25, median_scale)}

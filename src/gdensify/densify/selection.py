"""Selection of the coarse Gaussians to densify, by their view-space positional gradients.

The score of Gaussian i is computed from renders of the coarse Gaussians into the **input** views against the
input images (target views are never used):

- ``reduction="mean"`` (the paper): m_i = (1/V) Σ_v ‖∇_{p(x_i, v)} L_MSE(I_v, Î_v)‖₂, the mean over the V
  input views of the per-view gradient norm (a view where i is not visible contributes 0);
- ``reduction="sum"`` (the released code): ‖Σ_v ∇_{p(x_i, v)} L‖₂, the norm of the view-summed gradient (the
  released code differentiates one MSE over all views concatenated, i.e. (1/V)·Σ_v L_v; the constant 1/V does
  not change the ranking and is not applied here).

``gradient="plain"`` uses dL/dmeans2d (the paper's equation, the released scene model); ``"absolute"`` uses the
AbsGS gradient (per-pixel terms summed in absolute value, the released object model). Units are pixels;
``units="ndc"`` multiplies x by W/2 and y by H/2 as the Inria rasterizer of the released code reports them.
Only Gaussians with opacity > ``min_opacity`` (0.005) are candidates.

The renders run under `torch.enable_grad()` on **detached** copies of the Gaussian parameters with the rasterizer's
``means2d_grad=True`` (a detached 2-D-mean leaf), so the function works under `torch.no_grad()` and
`torch.inference_mode()` and never sends a gradient into the network that produced the Gaussians.

Top-K: per object (objects) or per input view (scenes: pass ``groups`` = the view each pixel-aligned Gaussian came
from); K ≥ the number of candidates selects them all; ties go to the lower index. Vectorized (two stable sorts),
no Python loop over Gaussians; one render call per object with all its input cameras.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians
from ._ops import counts_of, rank_within_segments, take


@dataclass
class SelectionConfig:
    k: int = 12_000  # per object (or per group)
    method: Literal["gradient", "random"] = "gradient"  # "random": uniform scores among candidates (ablation)
    gradient: Literal["plain", "absolute"] = "plain"
    reduction: Literal["mean", "sum"] = "mean"
    units: Literal["pixels", "ndc"] = "pixels"
    min_opacity: float = 0.005

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ValueError(f"SelectionConfig.k must be >= 0, got {self.k}")
        if self.method not in ("gradient", "random"):
            raise ValueError(f"SelectionConfig.method must be 'gradient' or 'random', got {self.method!r}")
        if self.gradient not in ("plain", "absolute"):
            raise ValueError(f"SelectionConfig.gradient must be 'plain' or 'absolute', got {self.gradient!r}")
        if self.reduction not in ("mean", "sum"):
            raise ValueError(f"SelectionConfig.reduction must be 'mean' or 'sum', got {self.reduction!r}")
        if self.units not in ("pixels", "ndc"):
            raise ValueError(f"SelectionConfig.units must be 'pixels' or 'ndc', got {self.units!r}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "SelectionConfig":
        """``paper`` (plain gradient, mean of per-view norms), ``released_object`` (AbsGS, summed over views,
        NDC units, K = 12,000), ``released_scene`` (plain, summed, K = 30,000 per view)."""
        presets = {
            "paper": dict(),
            "released_object": dict(gradient="absolute", reduction="sum", units="ndc"),
            "released_scene": dict(k=30_000, gradient="plain", reduction="sum", units="ndc"),
        }
        if name not in presets:
            raise ValueError(f"unknown selection preset {name!r}; expected one of {sorted(presets)}")
        return cls(**{**presets[name], **overrides})


@dataclass
class Selection:
    """Selected Gaussians: `index` (S,) ascending indices into the scored Gaussians, `batch` (S,) their object,
    `scores` (N,) every score (−inf for non-candidates)."""

    index: Tensor
    batch: Tensor
    scores: Tensor

    def __len__(self) -> int:
        return self.index.numel()


# ---------------------------------------------------------------------------------------------- gradients
def _detached(g: Gaussians) -> Gaussians:
    return Gaussians(*(t.detach().clone() if t.is_inference() else t.detach()
                       for t in (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh)))


def view_space_gradients(
    gaussians: Gaussians, cameras: Cameras, images: Float[Tensor, "C H W 3"],
    background: Tensor | None = None, absolute: bool = False, backend: str = "auto",
    sh_degree: int | None = None, ndc: bool = False,
) -> Float[Tensor, "C N 2"]:
    """Per-view gradient of Σ_v MSE(render_v, image_v) w.r.t. the 2-D means (= ∇ of each view's own MSE), from
    detached copies of the Gaussians. (C, N, 2), zero where a Gaussian is not rendered."""
    from ..render import rasterize  # noqa: PLC0415  (render is only needed by the selection step)

    c = len(cameras)
    expected = (c, cameras.height, cameras.width, 3)
    if tuple(images.shape) != expected:
        raise ValueError(f"images must have shape {expected} for these cameras, got {tuple(images.shape)}")
    with torch.inference_mode(False), torch.enable_grad():
        g = _detached(gaussians)
        imgs = images.detach().clone() if images.is_inference() else images.detach()
        bg = None
        if background is not None:
            bg = background.detach().clone() if background.is_inference() else background.detach()
        out = rasterize(g, cameras, bg, backend=backend, sh_degree=sh_degree, means2d_grad=True)
        if not out.means2d.requires_grad:
            return torch.zeros(c, len(gaussians), 2, dtype=gaussians.dtype, device=gaussians.device)
        per_view = (out.image - imgs.to(out.image.dtype)).square().mean(dim=(1, 2, 3))
        loss = per_view.sum()
        if not loss.requires_grad:  # nothing visible
            return torch.zeros(c, len(gaussians), 2, dtype=gaussians.dtype, device=gaussians.device)
        loss.backward()
        grad = out.view_space_grad(absolute=absolute, ndc=ndc)
    return grad.detach()


def gradient_scores(grads: Float[Tensor, "C N 2"], reduction: str = "mean") -> Float[Tensor, " N"]:
    """"mean": mean over views of per-view norms (the paper); "sum": norm of the view-summed gradient."""
    if reduction == "mean":
        return grads.norm(dim=-1).mean(dim=0)
    if reduction == "sum":
        return grads.sum(dim=0).norm(dim=-1)
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def score_gaussians(
    gaussians: Gaussians, cameras: Cameras, images: Float[Tensor, "C H W 3"],
    config: SelectionConfig | None = None, background: Tensor | None = None, backend: str = "auto",
    sh_degree: int | None = None, generator: torch.Generator | None = None,
) -> Float[Tensor, " N"]:
    """Score of every Gaussian of ONE object/scene against its input views; −inf for non-candidates
    (opacity ≤ min_opacity)."""
    cfg = config or SelectionConfig()
    candidate = gaussians.opacities.detach() > cfg.min_opacity
    if cfg.method == "random":
        gdev = generator.device if generator is not None else gaussians.device
        scores = torch.rand(len(gaussians), generator=generator, device=gdev).to(gaussians.device,
                                                                                  gaussians.dtype)
    else:
        grads = view_space_gradients(gaussians, cameras, images, background, cfg.gradient == "absolute", backend,
                                     sh_degree, cfg.units == "ndc")
        scores = gradient_scores(grads, cfg.reduction)
    if torch.isnan(scores).any():
        raise ValueError("view-space gradient scores contain NaN (check the Gaussians, cameras and images)")
    return torch.where(candidate, scores, torch.full_like(scores, -float("inf")))


# ---------------------------------------------------------------------------------------------- top-K
def top_k_per_group(scores: Float[Tensor, " N"], groups: Int[Tensor, " N"], k: int,
                    num_groups: int | None = None) -> Int[Tensor, " S"]:
    """Ascending indices of the k highest finite scores of every group (all of them when fewer); ties → lower
    index. −inf marks non-candidates."""
    if scores.ndim != 1 or groups.shape != scores.shape:
        raise ValueError(f"scores and groups must be (N,) tensors of one length, got {tuple(scores.shape)} and "
                         f"{tuple(groups.shape)}")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    if scores.numel() == 0 or k <= 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    groups = groups.long()
    b = int(num_groups) if num_groups is not None else int(groups.max()) + 1
    rank = rank_within_segments(scores, groups, b)
    chosen = (rank < k) & torch.isfinite(scores)
    return torch.nonzero(chosen, as_tuple=False).flatten()


def select_gaussians(
    gaussians: Gaussians, batch: Int[Tensor, " N"], cameras: Cameras | Sequence[Cameras],
    images: Tensor | Sequence[Tensor], config: SelectionConfig | None = None,
    groups: Int[Tensor, " N"] | None = None, backgrounds: Tensor | Sequence[Tensor | None] | None = None,
    backend: str = "auto", sh_degree: int | None = None, generator: torch.Generator | None = None,
) -> Selection:
    """Score the Gaussians of every object b (``batch == b``) against its input views (``cameras[b]``,
    ``images[b]`` of shape (V, H, W, 3), ``backgrounds[b]`` (3,) or (V, 3)) and keep the top K per object, or per
    ``groups`` entry (e.g. per input view for pixel-aligned scene Gaussians).

    A single `Cameras`/(V, H, W, 3) image tensor is accepted when every Gaussian belongs to object 0."""
    cfg = config or SelectionConfig()
    n = len(gaussians)
    batch = batch.long()
    if batch.shape != (n,):
        raise ValueError(f"batch must have shape ({n},), got {tuple(batch.shape)}")
    if isinstance(cameras, Cameras):
        cameras = [cameras]
    if isinstance(images, Tensor) and images.ndim == 4:
        images = [images]
    num_objects = len(cameras)
    if len(images) != num_objects:
        raise ValueError(f"{num_objects} camera sets but {len(images)} image sets")
    if n and (int(batch.min()) < 0 or int(batch.max()) >= num_objects):
        raise ValueError(f"batch indices must lie in [0, {num_objects})")
    if backgrounds is None or isinstance(backgrounds, Tensor) and backgrounds.ndim == 1:
        backgrounds = [backgrounds] * num_objects
    if groups is None:
        groups = batch
    elif groups.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {tuple(groups.shape)}")
    scores = torch.full((n,), -float("inf"), dtype=gaussians.dtype, device=gaussians.device)
    counts = counts_of(batch, num_objects)
    for b in range(num_objects):  # one render per object, all its input views at once
        if int(counts[b]) == 0:
            continue
        idx = torch.nonzero(batch == b, as_tuple=False).flatten()
        scores[idx] = score_gaussians(gaussians[idx], cameras[b], images[b], cfg, backgrounds[b], backend,
                                      sh_degree, generator)
    index = top_k_per_group(scores, groups, cfg.k)
    return Selection(index, take(batch, index), scores)

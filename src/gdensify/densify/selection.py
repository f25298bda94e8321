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
from ..config import Presets
from ..gaussians import Gaussians
from ..render.rasterize import RenderOutput, means2d_grad_to_ndc
from ..render.rules import RasterRules
from ._ops import counts_of, rank_within_segments, take


@dataclass
class SelectionConfig(Presets):
    k: int = 12_000  # per object (or per group)
    method: Literal["gradient", "random"] = "gradient"  # "random": uniform scores among candidates (ablation)
    gradient: Literal["plain", "absolute"] = "plain"
    reduction: Literal["mean", "sum"] = "mean"
    units: Literal["pixels", "ndc"] = "pixels"
    min_opacity: float = 0.005
    # the loss differentiated: Σ_v MSE_v ("sum") or the released code's one MSE over all input views, (1/V)·Σ_v MSE_v
    # ("mean"); a constant factor V on every score, so the ranking is the same
    view_loss: Literal["sum", "mean"] = "sum"

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ValueError(f"SelectionConfig.k must be >= 0, got {self.k}")
        if self.method not in ("gradient", "random"):
            raise ValueError(f"SelectionConfig.method must be 'gradient' or 'random', got {self.method!r}")
        if self.gradient not in ("plain", "absolute"):
            raise ValueError(f"SelectionConfig.gradient must be 'plain' or 'absolute', got {self.gradient!r}")
        if self.reduction not in ("mean", "sum"):
            raise ValueError(f"SelectionConfig.reduction must be 'mean' or 'sum', got {self.reduction!r}")
        if self.view_loss not in ("sum", "mean"):
            raise ValueError(f"SelectionConfig.view_loss must be 'sum' or 'mean', got {self.view_loss!r}")
        if self.units not in ("pixels", "ndc"):
            raise ValueError(f"SelectionConfig.units must be 'pixels' or 'ndc', got {self.units!r}")

    PRESETS = {
        "paper": {},  # plain gradient, mean of per-view norms
        # AbsGS, summed over views, NDC units, one MSE over the input views, K = 12,000
        "released_object": dict(gradient="absolute", reduction="sum", units="ndc", view_loss="mean"),
        # plain, summed, NDC units, one MSE over the input views, K = 30,000 per view
        "released_scene": dict(k=30_000, gradient="plain", reduction="sum", units="ndc", view_loss="mean"),
    }


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
def _detached(t: Tensor) -> Tensor:
    return t.detach().clone() if t.is_inference() else t.detach()


def render_for_selection(
    gaussians: Gaussians, cameras: Cameras, background: Tensor | None = None, backend: str = "auto",
    sh_degree: int | None = None, rules: RasterRules | None = None,
) -> RenderOutput:
    """Render detached copies of `gaussians` with a differentiable 2-D-mean leaf (`means2d_grad=True`), so that
    `render_gradients` can read the view-space gradients; works under `torch.no_grad()` and
    `torch.inference_mode()`, and sends no gradient to whatever produced the Gaussians. `rules`: the renderer
    rules (`render.RasterRules`; default gdensify's own)."""
    from ..render import rasterize  # noqa: PLC0415  (render is only needed by the selection step)

    with torch.inference_mode(False), torch.enable_grad():
        g = Gaussians(*(_detached(t) for t in (gaussians.means, gaussians.quats, gaussians.log_scales,
                                               gaussians.opacity_logits, gaussians.sh)))
        bg = None if background is None else _detached(background)
        return rasterize(g, cameras, bg, backend=backend, sh_degree=sh_degree, means2d_grad=True, rules=rules)


def render_gradients(
    renders: Sequence[RenderOutput], images: Sequence[Float[Tensor, "C H W 3"]], absolute: bool = False,
    ndc: bool = False, view_mean: bool = False,
) -> list[Float[Tensor, "C N 2"]]:
    """For each render (one per object, C input views), the gradient of Σ_v MSE(render_v, image_v) (with
    `view_mean`, of their mean over the C views) w.r.t. its 2-D means (= ∇ of each view's own MSE, or 1/C of it),
    in pixels or NDC units; zero where a Gaussian is not rendered. One
    backward for all renders; `torch.autograd.grad` with the graph kept, so a render that is also part of a
    training graph (e.g. LaRa's refinement inputs) can be reused and no gradient reaches any parameter."""
    renders = list(renders)
    if len(images) != len(renders):
        raise ValueError(f"{len(renders)} renders but {len(images)} image sets")
    for out, imgs in zip(renders, images):
        if tuple(imgs.shape) != tuple(out.image.shape):
            raise ValueError(f"images must have shape {tuple(out.image.shape)} for these cameras, got "
                             f"{tuple(imgs.shape)}")
    with torch.inference_mode(False), torch.enable_grad():
        losses, leaves = [], []
        for out, imgs in zip(renders, images):
            if out.means2d.requires_grad and out.image.requires_grad:
                per_view = (out.image - _detached(imgs).to(out.image.dtype)).square().mean(dim=(1, 2, 3))
                losses.append(per_view.mean() if view_mean else per_view.sum())
                leaves.append(out.means2d)
        plain = torch.autograd.grad(sum(losses), leaves, retain_graph=True) if losses else []
    grads, used = [], iter(plain)
    for out in renders:
        if not (out.means2d.requires_grad and out.image.requires_grad):
            grads.append(torch.zeros_like(out.means2d.detach()))
            continue
        g = next(used)
        if absolute:
            g = getattr(out.means2d, "absgrad", None)
            if g is None:
                raise RuntimeError(f"the {out.backend} backend produced no absgrad")
        g = g.detach()
        if ndc:
            height, width = out.image.shape[1:3]
            g = means2d_grad_to_ndc(g, width, height)
        grads.append(g)
    return grads


def view_space_gradients(
    gaussians: Gaussians, cameras: Cameras, images: Float[Tensor, "C H W 3"],
    background: Tensor | None = None, absolute: bool = False, backend: str = "auto",
    sh_degree: int | None = None, ndc: bool = False, view_mean: bool = False,
) -> Float[Tensor, "C N 2"]:
    """Per-view gradient of Σ_v MSE(render_v, image_v) (or their mean) w.r.t. the 2-D means, from detached copies
    of the Gaussians. (C, N, 2), zero where a Gaussian is not rendered."""
    c = len(cameras)
    expected = (c, cameras.height, cameras.width, 3)
    if tuple(images.shape) != expected:
        raise ValueError(f"images must have shape {expected} for these cameras, got {tuple(images.shape)}")
    render = render_for_selection(gaussians, cameras, background, backend, sh_degree)
    return render_gradients([render], [images], absolute, ndc, view_mean)[0]


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
    grads = None
    if cfg.method == "gradient":
        grads = view_space_gradients(gaussians, cameras, images, background, cfg.gradient == "absolute", backend,
                                     sh_degree, cfg.units == "ndc", cfg.view_loss == "mean")
    return _scores(gaussians, grads, cfg, generator)


def _scores(gaussians: Gaussians, grads: Tensor | None, cfg: SelectionConfig,
            generator: torch.Generator | None) -> Float[Tensor, " N"]:
    """Scores from view-space gradients (or uniform random ones), −inf where opacity ≤ min_opacity."""
    candidate = gaussians.opacities.detach() > cfg.min_opacity
    if cfg.method == "random":
        gdev = generator.device if generator is not None else gaussians.device
        scores = torch.rand(len(gaussians), generator=generator, device=gdev).to(gaussians.device,
                                                                                  gaussians.dtype)
    else:
        scores = gradient_scores(grads, cfg.reduction).to(gaussians.dtype)
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


def select_from_renders(
    gaussians: Gaussians, batch: Int[Tensor, " N"], num_objects: int, renders: Sequence[RenderOutput] | None,
    images: Sequence[Float[Tensor, "C H W 3"]], config: SelectionConfig | None = None,
    groups: Int[Tensor, " N"] | None = None, num_groups: int | None = None,
    candidates: Tensor | None = None, generator: torch.Generator | None = None,
) -> Selection:
    """Top K per object (``batch``) or per ``groups`` entry, scored from renders someone else made:
    ``renders[b]`` is object b's Gaussians (``gaussians[batch == b]``, in order) rendered into its input views
    with differentiable 2-D means (`render_for_selection`, or a training render in the autograd graph).
    ``candidates`` (bool, N) further restricts which Gaussians may be selected (e.g. a visible set); the renders
    still hold every Gaussian, as the released code renders all and masks afterwards. Random selection
    (``method="random"``) reads no render (pass None)."""
    cfg = config or SelectionConfig()
    n = len(gaussians)
    batch = batch.long()
    if batch.shape != (n,):
        raise ValueError(f"batch must have shape ({n},), got {tuple(batch.shape)}")
    counts = counts_of(batch, num_objects).tolist()
    grads = [None] * num_objects
    if cfg.method == "gradient":
        if renders is None or len(renders) != num_objects \
                or any(out.means2d.shape[1] != c for out, c in zip(renders, counts)):
            held = None if renders is None else [out.means2d.shape[1] for out in renders]
            raise ValueError(f"gradient selection needs one render per object holding its Gaussians: renders hold "
                             f"{held}, the batch index {counts}")
        grads = render_gradients(renders, images, cfg.gradient == "absolute", cfg.units == "ndc",
                                 cfg.view_loss == "mean")
    scores = torch.full((n,), -float("inf"), dtype=gaussians.dtype, device=gaussians.device)
    for b, grad in enumerate(grads):
        if counts[b] == 0:
            continue
        idx = torch.nonzero(batch == b, as_tuple=False).flatten()
        scores[idx] = _scores(gaussians[idx], grad, cfg, generator)
    if candidates is not None:
        scores = torch.where(candidates, scores, torch.full_like(scores, -float("inf")))
    groups = batch if groups is None else groups
    if groups.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {tuple(groups.shape)}")
    index = top_k_per_group(scores, groups, cfg.k, num_groups)
    return Selection(index, take(batch, index), scores)


def select_gaussians(
    gaussians: Gaussians, batch: Int[Tensor, " N"], cameras: Cameras | Sequence[Cameras],
    images: Tensor | Sequence[Tensor], config: SelectionConfig | None = None,
    groups: Int[Tensor, " N"] | None = None, backgrounds: Tensor | Sequence[Tensor | None] | None = None,
    backend: str = "auto", sh_degree: int | None = None, generator: torch.Generator | None = None,
) -> Selection:
    """Score the Gaussians of every object b (``batch == b``) against its input views (``cameras[b]``,
    ``images[b]`` of shape (V, H, W, 3), ``backgrounds[b]`` (3,) or (V, 3)) and keep the top K per object, or per
    ``groups`` entry (e.g. per input view for pixel-aligned scene Gaussians). Renders each object once
    (`render_for_selection`), then `select_from_renders`.

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
    for b, (cams, imgs) in enumerate(zip(cameras, images)):
        expected = (len(cams), cams.height, cams.width, 3)
        if tuple(imgs.shape) != expected:
            raise ValueError(f"images must have shape {expected} for these cameras, got {tuple(imgs.shape)}")
    if backgrounds is None or isinstance(backgrounds, Tensor) and backgrounds.ndim == 1:
        backgrounds = [backgrounds] * num_objects
    renders = None
    if cfg.method == "gradient":
        renders = [render_for_selection(gaussians[batch == b], cameras[b], backgrounds[b], backend, sh_degree)
                   for b in range(num_objects)]
    return select_from_renders(gaussians, batch, num_objects, renders, images, cfg, groups, generator=generator)


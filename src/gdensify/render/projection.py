"""EWA projection of 3D Gaussians into C pinhole cameras (pure PyTorch, differentiable by autograd).

The `reference` backend's projection and the twin the C++ projection (`_cpu.project_cpu`, the `cpu` backend's
default) is tested against. The semantics are the classic 3DGS ones written down in the render contract, with the
choices of `RasterRules` (defaults shown; see `rules.py`):

- p = R·μ + t (world-to-camera); a Gaussian is culled (radius 0) unless near < p.z < far (no far test when
  `rules.far_cull` is False).
- J = [[fx/z, 0, −fx·x'/z²], [0, fy/z, −fy·y'/z²]] with x' = z·clamp(x/z, −lim_x, lim_x),
  lim_x = 1.3·max(cx, W − cx)/fx (y likewise). The clamp enters J only, never the projected mean.
- Σ₂D = J·R·Σ·Rᵀ·Jᵀ + 0.3·I (low-pass dilation); det Σ₂D ≤ 0 → culled; conic = Σ₂D⁻¹ stored as (a, b, c) of
  [[a, b], [b, c]].
- radius = ceil(3·sqrt(λ_max)) pixels with λ_max = mid + sqrt(max(rules.radius_floor, mid² − det)),
  mid = (a + c)/2 (floor 0: the largest eigenvalue of Σ₂D); mean2d = (fx·x/z + cx, fy·y/z + cy) pixels (pixel
  centres at +0.5).
- A Gaussian whose 16×16 tile rectangle (`tile_rect`, `rules.tile_rect`) is empty is culled too.
- colour = eval_sh(sh_degree, sh, normalize(μ − o)) (+0.5, clamped ≥ 0) with o the camera centre (or its negation,
  `rules.sh_view_origin`); opacity = sigmoid(logit).

Culled entries (radius 0) carry zeros in `means2d` and `conics` and receive no gradient; `depths`, `colors` and
`opacities` are defined for every entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians, quat_to_rotmat
from ..sh import eval_sh
from .rules import DEFAULT_RULES, RasterRules

TILE_SIZE = 16
EPS_2D = 0.3  # pixels², added to the diagonal of Σ₂D
FOV_CLAMP = 1.3  # the J clamp: 1.3 × the half field of view
MAX_RADIUS = 2**30  # pixels; far beyond any image, keeps radii representable in int32


@dataclass
class Projection:
    """Per-camera projected Gaussians; C cameras, N Gaussians."""

    means2d: Float[Tensor, "C N 2"]  # pixels
    conics: Float[Tensor, "C N 3"]  # (a, b, c) of the inverse 2D covariance, pixels⁻²
    depths: Float[Tensor, "C N"]  # camera-space z (world units)
    radii: Int[Tensor, "C N"]  # int32 pixels; 0 = culled
    colors: Float[Tensor, "C N 3"]  # SH colour seen from each camera
    opacities: Float[Tensor, "C N"]  # sigmoid(opacity_logits)

    @property
    def visible(self) -> Tensor:
        return self.radii > 0


def tile_rect(
    means2d: Float[Tensor, "*batch 2"], radii: Int[Tensor, "*batch"], width: int, height: int,
    tile_size: int = TILE_SIZE, rule: str = "mean",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The tile rectangle [x0, x1) × [y0, y1) (tile indices, int64, exclusive ends) each Gaussian covers.

    rule "mean": x0 = clamp(floor((u − r)/16), 0, tiles_x), x1 = clamp(floor((u + r + 15)/16), 0, tiles_x);
    rule "pixel" (CUDA `getRect`): the same from the integer-pixel mean u − 0.5 with truncation toward zero. y
    likewise. The rectangle is empty (x1 ≤ x0 or y1 ≤ y0) when the square of half-width r misses the tile grid."""
    tiles_x = (width + tile_size - 1) // tile_size
    tiles_y = (height + tile_size - 1) // tile_size
    u, v = means2d.detach().unbind(-1)
    r = radii.to(u.dtype)
    if rule == "mean":
        rnd = torch.floor
    elif rule == "pixel":
        rnd, u, v = torch.trunc, u - 0.5, v - 0.5
    else:
        raise ValueError(f"tile_rect: rule must be 'mean' or 'pixel', got {rule!r}")
    x0 = rnd((u - r) / tile_size).clamp(0, tiles_x).long()
    x1 = rnd((u + r + tile_size - 1) / tile_size).clamp(0, tiles_x).long()
    y0 = rnd((v - r) / tile_size).clamp(0, tiles_y).long()
    y1 = rnd((v + r + tile_size - 1) / tile_size).clamp(0, tiles_y).long()
    return x0, x1, y0, y1


def sh_view_origins(cameras: Cameras, rules: RasterRules, dtype: torch.dtype) -> Float[Tensor, "C 3"]:
    """Where each camera's SH view directions start: its centre, or minus it (`rules.sh_view_origin`)."""
    centers = cameras.centers.to(dtype)
    return centers if rules.sh_view_origin == "center" else -centers


def project(
    gaussians: Gaussians, cameras: Cameras, sh_degree: int | None = None, rules: RasterRules | None = None,
) -> Projection:
    """Project `gaussians` into every camera of `cameras` (same device and dtype expected).

    `sh_degree` defaults to the Gaussians' full degree; `rules` to `RasterRules()`. Differentiable w.r.t. every
    Gaussian parameter (not the cameras). Shapes: see `Projection`."""
    rules = DEFAULT_RULES if rules is None else rules
    sh_degree = gaussians.sh_degree if sh_degree is None else int(sh_degree)
    if not 0 <= sh_degree <= gaussians.sh_degree:
        raise ValueError(f"sh_degree must be in [0, {gaussians.sh_degree}] for these Gaussians, got {sh_degree}")
    dtype = gaussians.dtype
    w2c = cameras.world_to_camera.to(dtype)
    k = cameras.intrinsics.to(dtype)
    width, height = cameras.width, cameras.height
    num_cams, n = w2c.shape[0], len(gaussians)

    rot_wc, trans = w2c[:, :3, :3], w2c[:, :3, 3]  # C 3 3, C 3
    p = torch.einsum("cij,nj->cni", rot_wc, gaussians.means) + trans[:, None, :]  # C N 3
    x, y, z = p.unbind(-1)
    in_depth = z > cameras.near
    if rules.far_cull:
        in_depth = in_depth & (z < cameras.far)
    z_safe = torch.where(in_depth, z, torch.ones_like(z))  # no 1/0 in culled entries (keeps gradients finite)

    fx, fy = k[:, 0, 0, None], k[:, 1, 1, None]  # C 1
    cx, cy = k[:, 0, 2, None], k[:, 1, 2, None]
    lim_x = FOV_CLAMP * torch.maximum(cx, width - cx) / fx
    lim_y = FOV_CLAMP * torch.maximum(cy, height - cy) / fy
    tx = z_safe * torch.maximum(torch.minimum(x / z_safe, lim_x), -lim_x)
    ty = z_safe * torch.maximum(torch.minimum(y / z_safe, lim_y), -lim_y)

    zero = torch.zeros_like(z_safe)
    jac = torch.stack([
        fx / z_safe, zero, -fx * tx / z_safe**2,
        zero, fy / z_safe, -fy * ty / z_safe**2,
    ], dim=-1).reshape(num_cams, n, 2, 3)
    # Σ = M Mᵀ with M = R_q·diag(s); Σ₂D = (J R_wc M)(J R_wc M)ᵀ + 0.3 I is symmetric PSD by construction.
    m = quat_to_rotmat(gaussians.quats) * gaussians.scales[:, None, :]  # N 3 3
    tm = jac @ (rot_wc[:, None] @ m[None])  # C N 2 3
    cov2d = tm @ tm.transpose(-1, -2)
    a = cov2d[..., 0, 0] + EPS_2D
    b = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + EPS_2D
    det = a * c - b * b
    ok = in_depth & (det > 0) & torch.isfinite(det)  # non-finite (overflowing) footprints are culled too
    det_safe = torch.where(ok, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)

    u = fx * x / z_safe + cx
    v = fy * y / z_safe + cy
    means2d = torch.stack([u, v], dim=-1)

    with torch.no_grad():
        mid = 0.5 * (a + c)
        lam_max = mid + torch.sqrt((mid * mid - det).clamp_min(float(rules.radius_floor)))
        radii = torch.ceil(3.0 * torch.sqrt(lam_max.clamp_min(0.0))).clamp(max=MAX_RADIUS)  # no int32 overflow
        radii = torch.where(ok, radii, torch.zeros_like(radii)).to(torch.int32)
        x0, x1, y0, y1 = tile_rect(means2d, radii, width, height, rule=rules.tile_rect)
        radii = torch.where((x1 > x0) & (y1 > y0), radii, torch.zeros_like(radii))
        visible = radii > 0

    means2d = torch.where(visible[..., None], means2d, torch.zeros_like(means2d))
    conics = torch.where(visible[..., None], conics, torch.zeros_like(conics))

    origins = sh_view_origins(cameras, rules, dtype)
    dirs = torch.nn.functional.normalize(gaussians.means[None] - origins[:, None, :], dim=-1)
    colors = eval_sh(sh_degree, gaussians.sh[None].expand(num_cams, -1, -1, -1), dirs)
    opacities = gaussians.opacities[None].expand(num_cams, n)
    return Projection(means2d, conics, z, radii, colors, opacities)


def check_composite_inputs(caller: str, means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor,
                           depths: Tensor, radii: Tensor, background: Tensor | None) -> Tensor:
    """Shape checks shared by the compositing backends; returns the background as (C, 3) in means2d's dtype
    (`None` → black, (3,) → the same colour for every camera)."""
    num_cams, n = radii.shape
    for name, x, shape in (("means2d", means2d, (num_cams, n, 2)), ("conics", conics, (num_cams, n, 3)),
                           ("colors", colors, (num_cams, n, 3)), ("opacities", opacities, (num_cams, n)),
                           ("depths", depths, (num_cams, n))):
        if tuple(x.shape) != shape:
            raise ValueError(f"{caller}: {name} must have shape {shape}, got {tuple(x.shape)}")
    if background is None:
        return means2d.new_zeros(num_cams, 3)
    if tuple(background.shape) == (3,):
        background = background[None].expand(num_cams, 3)
    elif tuple(background.shape) != (num_cams, 3):
        raise ValueError(f"{caller}: background must be (3,) or ({num_cams}, 3), got {tuple(background.shape)}")
    return background.to(means2d.dtype)

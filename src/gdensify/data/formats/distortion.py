"""Lens distortion in normalised camera coordinates, and undistortion of images to a pinhole camera.

Models (the coefficients of nerfstudio / instant-ngp `transforms.json` and of COLMAP's camera models):
  * ``"opencv"`` (Brown–Conrady, OpenCV's default model, COLMAP's OPENCV / RADIAL / SIMPLE_RADIAL): with
    r² = x² + y², x_d = x·(1 + k1·r² + k2·r⁴ + k3·r⁶) + 2·p1·x·y + p2·(r² + 2x²) and
    y_d = y·(1 + k1·r² + k2·r⁴ + k3·r⁶) + p1·(r² + 2y²) + 2·p2·x·y;
  * ``"fisheye"`` (OpenCV's fisheye model, COLMAP's OPENCV_FISHEYE): θ = atan(r),
    θ_d = θ·(1 + k1·θ² + k2·θ⁴ + k3·θ⁶ + k4·θ⁸), (x_d, y_d) = (θ_d / r)·(x, y).
Pixels are u = fx·x_d + cx, v = fy·y_d + cy (pixel centres at integer + 0.5).

`undistort_image` resamples a distorted image into the pinhole camera with the *same* intrinsics and size (what
OpenCV's `undistort` does with its default new camera matrix): each output pixel's ray is pushed through the
closed-form forward model to find where it landed in the distorted image, then sampled bilinearly
(`grid_sample`). Output pixels whose source lies outside the image, or beyond the radius where the model stops
being one-to-one (the Jacobian of the forward map is not positive), are marked invalid. `undistort_points` is the
iterative inverse (Newton's method in float64), for pixels measured in a distorted image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

__all__ = ["LensDistortion", "distort_points", "undistort_points", "undistort_image"]

MODELS = ("opencv", "fisheye")


@dataclass(frozen=True)
class LensDistortion:
    """Distortion coefficients of one camera (unused ones are 0). `model` is "opencv" or "fisheye"."""

    model: str = "opencv"
    k1: float = 0.0
    k2: float = 0.0
    k3: float = 0.0
    k4: float = 0.0
    p1: float = 0.0
    p2: float = 0.0

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown distortion model {self.model!r}; known: {', '.join(MODELS)}")
        for name in ("k1", "k2", "k3", "k4", "p1", "p2"):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise ValueError(f"distortion coefficient {name} must be finite, got {value}")
            object.__setattr__(self, name, value)
        if self.model == "opencv" and self.k4 != 0.0:
            raise ValueError("k4 belongs to the fisheye model; the opencv model uses k1, k2, k3, p1, p2")
        if self.model == "fisheye" and (self.p1 != 0.0 or self.p2 != 0.0):
            raise ValueError("the fisheye model has no tangential terms (p1, p2 must be 0)")

    @property
    def is_identity(self) -> bool:
        """True for the pinhole opencv model (all coefficients 0); fisheye is never the identity."""
        return self.model == "opencv" and not any((self.k1, self.k2, self.k3, self.p1, self.p2))


def distort_points(xy: Float[Tensor, "*batch 2"], d: LensDistortion) -> Float[Tensor, "*batch 2"]:
    """Undistorted normalised coordinates (x, y) → distorted ones (closed form)."""
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    if d.model == "opencv":
        radial = 1 + r2 * (d.k1 + r2 * (d.k2 + r2 * d.k3))
        xd = x * radial + 2 * d.p1 * x * y + d.p2 * (r2 + 2 * x * x)
        yd = y * radial + d.p1 * (r2 + 2 * y * y) + 2 * d.p2 * x * y
        return torch.stack([xd, yd], dim=-1)
    r = r2.sqrt()
    theta = torch.atan(r)
    t2 = theta * theta
    theta_d = theta * (1 + t2 * (d.k1 + t2 * (d.k2 + t2 * (d.k3 + t2 * d.k4))))
    ratio = torch.where(r > 1e-12, theta_d / r.clamp_min(1e-12), torch.ones_like(r))
    return xy * ratio[..., None]


def undistort_points(xy_distorted: Float[Tensor, "*batch 2"], d: LensDistortion, iterations: int = 30
                     ) -> tuple[Float[Tensor, "*batch 2"], Tensor]:
    """Distorted normalised coordinates → undistorted ones, by Newton's method in float64.

    Returns (points in the input dtype, converged mask: |distort(result) − input| < 1e-9)."""
    target = xy_distorted.double()
    xy = target.clone()
    eps = 1e-7
    for _ in range(iterations):
        f = distort_points(xy, d) - target
        jx = (distort_points(xy + torch.tensor([eps, 0.0], dtype=xy.dtype), d) - distort_points(xy, d)) / eps
        jy = (distort_points(xy + torch.tensor([0.0, eps], dtype=xy.dtype), d) - distort_points(xy, d)) / eps
        a, b, c, e = jx[..., 0], jy[..., 0], jx[..., 1], jy[..., 1]  # J = [[a, b], [c, e]]
        det = a * e - b * c
        det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
        step_x = (e * f[..., 0] - b * f[..., 1]) / det
        step_y = (-c * f[..., 0] + a * f[..., 1]) / det
        xy = xy - torch.stack([step_x, step_y], dim=-1)
    converged = (distort_points(xy, d) - target).norm(dim=-1) < 1e-9
    return xy.to(xy_distorted.dtype), converged


def undistort_image(
    image: Float[Tensor, "H W C"], intrinsics: Float[Tensor, "3 3"], d: LensDistortion,
) -> tuple[Float[Tensor, "H W C"], Float[Tensor, "H W 1"]]:
    """Resample a distorted image into the pinhole camera with the same intrinsics and size.

    Returns (image, valid): `valid` is 1 where the output pixel's source lies inside the distorted image and the
    forward model is one-to-one there, else 0 (those pixels hold the nearest border value)."""
    h, w = image.shape[:2]
    k = intrinsics.double()
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5,
                          indexing="ij")
    xy = torch.stack([(u - cx) / fx, (v - cy) / fy], dim=-1)
    src = distort_points(xy, d)
    us, vs = fx * src[..., 0] + cx, fy * src[..., 1] + cy
    # one-to-one where the forward map's Jacobian determinant (in normalised units) is positive
    eps = 1e-6
    jx = (distort_points(xy + torch.tensor([eps, 0.0], dtype=xy.dtype), d) - src) / eps
    jy = (distort_points(xy + torch.tensor([0.0, eps], dtype=xy.dtype), d) - src) / eps
    monotone = (jx[..., 0] * jy[..., 1] - jx[..., 1] * jy[..., 0]) > 0
    inside = (us >= 0) & (us <= w) & (vs >= 0) & (vs <= h)
    grid = torch.stack([2 * us / w - 1, 2 * vs / h - 1], dim=-1)[None].to(image.dtype)
    out = F.grid_sample(image.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border",
                        align_corners=False)[0].permute(1, 2, 0)
    return out.contiguous(), (inside & monotone)[..., None].to(image.dtype)

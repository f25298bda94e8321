"""A built-in scene of Gaussians (a coloured trefoil knot) for smoke tests and the renderer demo."""

from __future__ import annotations

import math

import torch

from .cameras import Cameras, look_at
from .gaussians import Gaussians
from .sh import rgb_to_sh_dc


def trefoil_gaussians(n: int = 20_000, seed: int = 0) -> Gaussians:
    """`n` anisotropic Gaussians along a trefoil knot tube inside [−0.5, 0.5]³, coloured by position on the curve.

    Each Gaussian is stretched along the curve tangent; SH degree 1 with a small view-dependent term."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * 2 * math.pi
    curve = torch.stack([torch.sin(t) + 2 * torch.sin(2 * t), torch.cos(t) - 2 * torch.cos(2 * t),
                         -torch.sin(3 * t)], dim=-1) * 0.14
    tangent = torch.stack([torch.cos(t) + 4 * torch.cos(2 * t), -torch.sin(t) + 4 * torch.sin(2 * t),
                           -3 * torch.cos(3 * t)], dim=-1)
    tangent = torch.nn.functional.normalize(tangent, dim=-1)
    means = curve + 0.035 * torch.randn(n, 3, generator=g)
    # Quaternion rotating the x axis onto the tangent (wxyz).
    x_axis = torch.tensor([1.0, 0.0, 0.0]).expand_as(tangent)
    half = torch.nn.functional.normalize(x_axis + tangent + 1e-6, dim=-1)
    quats = torch.cat([(x_axis * half).sum(-1, keepdim=True), torch.cross(x_axis, half, dim=-1)], dim=-1)
    log_scales = torch.log(torch.tensor([0.02, 0.006, 0.006])).expand(n, 3).clone()
    log_scales += 0.2 * torch.randn(n, 3, generator=g)
    hue = t[:, None] / (2 * math.pi) + torch.tensor([0.0, 1 / 3, 2 / 3])
    rgb = 0.5 + 0.45 * torch.cos(2 * math.pi * hue)
    sh = torch.zeros(n, 4, 3)
    sh[:, 0] = rgb_to_sh_dc(rgb)
    sh[:, 1:] = 0.05 * torch.randn(n, 3, 3, generator=g)
    return Gaussians(means, quats, log_scales, torch.full((n,), 2.0), sh)


def orbit_cameras(n_views: int, width: int, height: int, radius: float = 2.0, elevation: float = 0.35,
                  fov_x: float = 0.6) -> Cameras:
    """`n_views` cameras evenly spaced in azimuth on a ring around the origin, world up +z."""
    az = torch.arange(n_views) * (2 * math.pi / n_views)
    eyes = radius * torch.stack([torch.cos(az) * math.cos(elevation), torch.sin(az) * math.cos(elevation),
                                 torch.full_like(az, math.sin(elevation))], dim=-1)
    return Cameras.from_fov(look_at(eyes, torch.zeros_like(eyes)), fov_x, width, height)

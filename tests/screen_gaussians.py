"""Shared by the compositing tests: random screen-space Gaussian ellipses and a dense brute-force oracle."""

import math

import torch

TILE = 16


def random_ellipses(rand, num_cams, n, width, height, sigma, margin):
    """means2d (pixels, within `margin` of the image), conics from random SPD Σ₂D (+0.3 I low-pass) and 3σ radii.
    `rand(*shape)` draws uniform numbers; draws happen in a fixed order (means, σ₁, σ₂, angle)."""
    means2d = torch.stack([rand(num_cams, n) * (width + 2 * margin) - margin,
                           rand(num_cams, n) * (height + 2 * margin) - margin], dim=-1)
    s1 = sigma[0] + (sigma[1] - sigma[0]) * rand(num_cams, n)
    s2 = sigma[0] + (sigma[1] - sigma[0]) * rand(num_cams, n)
    theta = rand(num_cams, n) * math.pi
    cos, sin = torch.cos(theta), torch.sin(theta)
    a = cos**2 * s1**2 + sin**2 * s2**2 + 0.3
    c = sin**2 * s1**2 + cos**2 * s2**2 + 0.3
    b = cos * sin * (s1**2 - s2**2)
    det = a * c - b * b
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    lam = 0.5 * (a + c) + torch.sqrt(0.25 * (a - c) ** 2 + b * b)
    radii = torch.ceil(3 * torch.sqrt(lam)).to(torch.int32)
    return means2d, conics, radii


def dense_composite(means2d, conics, colors, opacities, depths, radii, background, width, height, offsets=None,
                    rect_rule="mean", clamp_grad=False):
    """Brute force: every pixel × every visible Gaussian at once ((P, K) tensors), written from the contract only.
    `offsets` (C, P, N, 2), zeros, makes the per-pixel dL/dmean2d terms available as its gradient. rect_rule
    "pixel": tile rectangles from the integer-pixel mean u − 0.5 with truncation (CUDA getRect); clamp_grad: the
    derivative of min(0.99, o·G) is taken as that of o·G (CUDA's backward)."""
    num_cams, n = radii.shape
    dtype = means2d.dtype
    py, px = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    px, py = px.reshape(-1), py.reshape(-1)
    centres = torch.stack([px, py], -1).to(dtype) + 0.5  # P 2
    tiles_x, tiles_y = math.ceil(width / TILE), math.ceil(height / TILE)
    images, alphas, depth_maps = [], [], []
    for cam in range(num_cams):
        order = torch.sort(depths[cam].detach(), stable=True).indices
        order = order[radii[cam, order] > 0]
        m = means2d[cam, order][None]  # 1 K 2
        if offsets is not None:
            m = m + offsets[cam][:, order]
        r = radii[cam, order].to(dtype)
        u, v = means2d[cam, order, 0].detach(), means2d[cam, order, 1].detach()
        rnd = torch.floor
        if rect_rule == "pixel":
            rnd, u, v = torch.trunc, u - 0.5, v - 0.5
        x0 = rnd((u - r) / TILE).clamp(0, tiles_x)
        x1 = rnd((u + r + TILE - 1) / TILE).clamp(0, tiles_x)
        y0 = rnd((v - r) / TILE).clamp(0, tiles_y)
        y1 = rnd((v + r + TILE - 1) / TILE).clamp(0, tiles_y)
        tx, ty = (px // TILE)[:, None].to(dtype), (py // TILE)[:, None].to(dtype)
        covered = (tx >= x0) & (tx < x1) & (ty >= y0) & (ty < y1)  # P K
        d = m - centres[:, None, :]
        dx, dy = d[..., 0], d[..., 1]
        a, b, c = conics[cam, order].unbind(-1)
        power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
        raw = opacities[cam, order] * torch.exp(torch.clamp(power, max=0.0))
        alpha = torch.clamp(raw, max=0.99)
        if clamp_grad:
            alpha = raw - (raw - alpha).detach()
        with torch.no_grad():
            valid = covered & (power <= 0) & (alpha >= 1 / 255)
            taken = torch.where(valid, alpha, torch.zeros_like(alpha))
            keep = valid & (torch.cumprod(1 - taken, dim=1) >= 1e-4)  # stops before the Gaussian crossing 1e-4
        alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
        t_incl = torch.cumprod(1 - alpha, dim=1)
        t_excl = torch.cat([torch.ones_like(t_incl[:, :1]), t_incl[:, :-1]], dim=1)
        w = alpha * t_excl
        t_final = t_incl[:, -1] if t_incl.shape[1] else torch.ones(len(centres), dtype=dtype)
        image = w @ colors[cam, order] + t_final[:, None] * background[cam]
        images.append(image.reshape(height, width, 3))
        alphas.append((1 - t_final).reshape(height, width, 1))
        depth_maps.append((w @ depths[cam, order]).reshape(height, width, 1))
    return torch.stack(images), torch.stack(alphas), torch.stack(depth_maps)

"""Random screen-space Gaussian ellipses shared by the compositing tests."""

import math

import torch


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

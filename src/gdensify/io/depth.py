"""Depth output: expected depth from a render, 16-bit PNG, colour-mapped preview PNG and `.npy`.

Expected depth is Σ wᵢ zᵢ / α per pixel (the renderer's `depth` divided by its `alpha`; z is the camera-space
depth along the optical axis, world units). Pixels with α below `min_alpha` carry no depth: 0 in the 16-bit PNG
and the preview's background colour, NaN in the `.npy`.

16-bit PNG encoding: value = round(depth × scale), clipped to 1..65535; `scale` (units⁻¹) is stored in the PNG's
text chunk `depth_scale` and returned. By default scale = 1000 (millimetres when the units are metres), lowered
when the deepest pixel would not fit in 16 bits.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from torch import Tensor

from .atomic import atomic_path

__all__ = ["expected_depth", "colorize_depth", "save_depth_png16", "load_depth_png16", "save_depth_npy",
           "write_depth_maps", "DEPTH_COLORMAP"]

# Our own ramp, near → far: pale yellow, orange, magenta, violet, deep blue (piecewise linear in sRGB).
DEPTH_COLORMAP = np.array([
    [0.99, 0.97, 0.70],
    [0.98, 0.70, 0.25],
    [0.90, 0.35, 0.30],
    [0.70, 0.15, 0.50],
    [0.40, 0.10, 0.60],
    [0.10, 0.05, 0.35],
], dtype=np.float32)


def expected_depth(depth: Float[Tensor, "*batch H W 1"], alpha: Float[Tensor, "*batch H W 1"],
                   min_alpha: float = 0.05) -> Float[Tensor, "*batch H W"]:
    """Σwz / α from a `RenderOutput`'s `depth` and `alpha`; NaN where α < `min_alpha`."""
    if depth.shape != alpha.shape or depth.shape[-1] != 1:
        raise ValueError(f"expected_depth: depth {tuple(depth.shape)} and alpha {tuple(alpha.shape)} must both be "
                         f"(..., H, W, 1)")
    a = alpha[..., 0]
    z = depth[..., 0] / a.clamp_min(1e-8)
    return torch.where(a >= min_alpha, z, torch.full_like(z, float("nan")))


def colorize_depth(depth: Float[Tensor, "H W"], near: float | None = None, far: float | None = None,
                   background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Float[Tensor, "H W 3"]:
    """Colour-mapped depth (`DEPTH_COLORMAP`, near → far) in [0, 1]; NaN pixels get `background`.

    `near`/`far` default to the 2nd and 98th percentiles of the valid depths."""
    d = depth.detach().cpu().double()
    valid = torch.isfinite(d)
    out = torch.tensor(background, dtype=torch.float32).expand(*d.shape, 3).clone()
    if not valid.any():
        return out
    values = d[valid]
    near = float(torch.quantile(values, 0.02)) if near is None else near
    far = float(torch.quantile(values, 0.98)) if far is None else far
    t = ((values - near) / max(far - near, 1e-12)).clamp(0, 1).numpy()
    pos = t * (len(DEPTH_COLORMAP) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(DEPTH_COLORMAP) - 2)
    frac = (pos - lo)[:, None].astype(np.float32)
    colours = DEPTH_COLORMAP[lo] * (1 - frac) + DEPTH_COLORMAP[lo + 1] * frac
    out[valid] = torch.from_numpy(colours)
    return out


def save_depth_png16(depth: Float[Tensor, "H W"], path: str | os.PathLike, scale: float | None = None) -> float:
    """Write depth as a 16-bit grayscale PNG (see the module doc); returns the scale used (units⁻¹)."""
    d = depth.detach().cpu().double().numpy()
    if d.ndim != 2:
        raise ValueError(f"save_depth_png16: depth must be (H, W), got {d.shape}")
    valid = np.isfinite(d) & (d > 0)
    if scale is None:
        deepest = float(d[valid].max()) if valid.any() else 0.0
        scale = 1000.0 if deepest * 1000.0 <= 65535 else 65535.0 / deepest
    if not scale > 0:
        raise ValueError(f"save_depth_png16: scale must be > 0, got {scale}")
    q = np.zeros(d.shape, dtype=np.uint16)
    q[valid] = np.clip(np.round(d[valid] * scale), 1, 65535).astype(np.uint16)
    info = PngInfo()
    info.add_text("depth_scale", repr(float(scale)))
    with atomic_path(Path(path)) as tmp:
        Image.fromarray(q).save(tmp, format="PNG", pnginfo=info)
    return float(scale)


def load_depth_png16(path: str | os.PathLike) -> Float[Tensor, "H W"]:
    """Read a PNG written by `save_depth_png16` back to depth (NaN where 0)."""
    with Image.open(path) as im:
        if "depth_scale" not in im.info:
            raise ValueError(f"{path}: no 'depth_scale' text chunk; not a gdensify depth PNG")
        scale = float(im.info["depth_scale"])
        q = np.asarray(im, dtype=np.float64)
    d = torch.from_numpy(q / scale)
    return torch.where(d > 0, d, torch.full_like(d, float("nan"))).float()


def save_depth_npy(depth: Float[Tensor, "*batch H W"], path: str | os.PathLike) -> Path:
    """float32 `.npy` of the depth (NaN where there is none), written atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, depth.detach().cpu().float().numpy())
    return path


def write_depth_maps(depth: Float[Tensor, "C H W 1"], alpha: Float[Tensor, "C H W 1"], image_path: str | os.PathLike,
                     npy: bool = False, min_alpha: float = 0.05) -> list[Path]:
    """Depth files beside a rendered image `IMAGE.png`: `IMAGE_depth_{i:02d}.png` (16-bit, one per camera),
    `IMAGE_depth.png` (the colour-mapped previews side by side, one colour scale) and, with `npy`,
    `IMAGE_depth.npy` (C, H, W) float32. Returns the paths written."""
    from .images import save_png, side_by_side  # noqa: PLC0415

    image_path = Path(image_path)
    stem = image_path.with_suffix("").name
    z = expected_depth(depth.detach().cpu(), alpha.detach().cpu(), min_alpha)
    written = []
    for i, zi in enumerate(z):
        target = image_path.with_name(f"{stem}_depth_{i:02d}.png")
        save_depth_png16(zi, target)
        written.append(target)
    valid = z[torch.isfinite(z)].double()
    near, far = (float(torch.quantile(valid, 0.02)), float(torch.quantile(valid, 0.98))) if len(valid) else (0, 1)
    written.append(save_png(side_by_side([colorize_depth(zi, near, far) for zi in z]),
                            image_path.with_name(f"{stem}_depth.png")))
    if npy:
        written.append(save_depth_npy(z, image_path.with_name(f"{stem}_depth.npy")))
    return written

"""The `.splat` format read by web splat viewers: 32 bytes per Gaussian, no header, little-endian.

Per Gaussian: position float32 ×3 | scale float32 ×3 (linear standard deviations, i.e. exp of our log-scales) |
RGBA uint8 ×4 (RGB = the SH DC colour 0.5 + C0·dc, A = the opacity, each round(255·v) clamped to 0..255) |
rotation uint8 ×4 (the normalised wxyz quaternion, round(128·q + 128) clamped to 0..255). Higher SH degrees are
not stored. Gaussians keep their order.

Quantisation of a round trip (`load_splat(save_splat(g))`): positions and scales exact to float32; colour and
opacity within 0.5/255 (+ clamping to [0, 1]); each quaternion component within 0.5/128 (+ clamping of q = 1 to
127/128) before renormalisation.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..gaussians import Gaussians
from ..sh import C0 as SH_C0
from .atomic import atomic_path

__all__ = ["SPLAT_DTYPE", "encode_splat", "decode_splat", "save_splat", "load_splat"]

SPLAT_DTYPE = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rotation", "u1", 4)])
assert SPLAT_DTYPE.itemsize == 32


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def encode_splat(gaussians: Gaussians) -> bytes:
    """The `.splat` bytes of `gaussians` (SH beyond the DC term dropped)."""
    g = gaussians.detach().to("cpu", torch.float64)
    g.validate()
    records = np.zeros(len(g), dtype=SPLAT_DTYPE)
    records["position"] = g.means.numpy()
    records["scale"] = g.scales.numpy()
    rgb = 0.5 + SH_C0 * g.sh[:, 0].numpy()
    records["rgba"][:, :3] = _u8(rgb * 255)
    records["rgba"][:, 3] = _u8(g.opacities.numpy() * 255)
    records["rotation"] = _u8(g.rotations.numpy() * 128 + 128)
    return records.tobytes()


def decode_splat(data: bytes, source: str = "<bytes>") -> Gaussians:
    """Gaussians (SH degree 0) from `.splat` bytes. Opacities of 0 or 255 are decoded as 0.5/255 and 254.5/255 so
    that their logits stay finite; a zero quaternion byte pattern (all 128) decodes as the identity."""
    if len(data) % SPLAT_DTYPE.itemsize:
        raise ValueError(f"{source}: {len(data)} bytes is not a multiple of 32 (one .splat record per Gaussian)")
    records = np.frombuffer(data, dtype=SPLAT_DTYPE)
    means = torch.from_numpy(records["position"].astype(np.float32))
    scales = torch.from_numpy(records["scale"].astype(np.float32))
    if not torch.isfinite(means).all() or not torch.isfinite(scales).all() or (scales <= 0).any():
        raise ValueError(f"{source}: positions must be finite and scales finite and > 0")
    rgba = records["rgba"].astype(np.float32) / 255
    quats = torch.from_numpy((records["rotation"].astype(np.float32) - 128) / 128)
    quats[quats.norm(dim=-1) < 1e-6] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    alpha = torch.from_numpy(np.clip(rgba[:, 3], 0.5 / 255, 254.5 / 255))
    dc = torch.from_numpy((rgba[:, :3] - 0.5) / SH_C0)
    return Gaussians(means, quats, scales.log(), torch.logit(alpha), dc[:, None, :].contiguous())


def save_splat(gaussians: Gaussians, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(encode_splat(gaussians))
    return path


def load_splat(path: str | os.PathLike) -> Gaussians:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no .splat file at {path}")
    return decode_splat(path.read_bytes(), str(path))

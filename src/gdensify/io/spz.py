"""The open `.spz` format (Niantic's compressed Gaussian splats), version 3: our own encoder and decoder.

Layout, as specified by the format's reference library (nianticlabs/spz, `load-spz.cc` and its README): one gzip
stream holding a 16-byte little-endian header — magic 0x5053474e ("NGSP"), version (u32), point count (u32), SH
degree (u8), fractional bits (u8), flags (u8; 0x1 antialiased, 0x2 extensions follow), reserved (u8 = 0) — then
each attribute for all points in turn:

    positions  3 × 24-bit signed fixed point, `fractional bits` below the binary point      9 bytes
    alphas     round(255·sigmoid(logit))                                                    1 byte
    colours    round(255·(0.15·dc + 0.5)) per channel (the SH DC coefficient, not the RGB)  3 bytes
    scales     round(16·(log-scale + 10)) per axis                                          3 bytes
    rotations  "smallest three" (v3): index of the largest |component| of the xyzw quaternion in the top 2 bits,
               then the other three (in xyzw order, first in the highest bits) as sign + 9-bit magnitude of
               |q|/√½, after flipping q so the largest component is positive                4 bytes
    SH         (degree+1)²−1 coefficients × RGB (RGB innermost), round(128·x) + 128, rounded to multiples of 8
               (degree 1, 5 bits) or 16 (degree ≥ 2, 4 bits), clamped to 0..255         (K−1)·3 bytes

All u8 fields clamp to 0..255. Coordinate system: the format stores RUB axes (x right, y up, z back, as OpenGL).
`from_rdf=True` (the default) treats our world frame as RDF, like 3DGS `.ply` files and OpenCV, and flips y and z
on the way in (positions, quaternions and the odd SH terms) and back on the way out; `from_rdf=False` stores the
coordinates unchanged. Version 2 files (8-bit xyz quaternions) decode too; version 1 (half floats), the zstd
version 4 and files with extensions are refused with a clear error.

Quantisation bounds of a round trip (`decode_spz(encode_spz(g))`), per component: positions 2^−(f+1) with f the
fractional bits (12, or fewer when |x| ≥ 2048 needs them); log-scales 1/32 inside [−10, 5.9375]; opacity 0.5/255
(as a probability, inside (0.5/255, 254.5/255)); DC coefficients 0.5/(255·0.15) ≈ 0.0131 inside
[−3.33, 3.33]; quaternions (up to sign) about 0.5·√½/511 ≈ 7e−4 per stored component; SH degree 1 within 4.5/128 and
degree ≥ 2 within 8.5/128 inside [−1, 127/128].
"""

from __future__ import annotations

import gzip
import math
import os
import struct
from pathlib import Path

import numpy as np
import torch

from ..gaussians import Gaussians
from ..sh import sh_basis
from .atomic import atomic_path

__all__ = ["SPZ_MAGIC", "encode_spz", "decode_spz", "save_spz", "load_spz", "rdf_rub_sh_signs"]

SPZ_MAGIC = 0x5053474E
_COLOR_SCALE = 0.15
_SQRT1_2 = math.sqrt(0.5)
_MAX_FRACTIONAL_BITS = 12


def rdf_rub_sh_signs(degree: int) -> np.ndarray:
    """±1 per SH coefficient (K,) such that flipping the y and z axes maps coefficient k to sign_k · coefficient k
    (the parity of each real SH basis function under (x, y, z) → (x, −y, −z))."""
    d = torch.nn.functional.normalize(torch.tensor([[0.3, 0.5, 0.8], [-0.6, 0.2, 0.7]], dtype=torch.float64), dim=-1)
    flipped = d * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)
    ratio = sh_basis(degree, flipped) / sh_basis(degree, d)
    signs = torch.sign(ratio[0])
    assert torch.allclose(ratio, signs.expand_as(ratio)), "SH basis functions must be even or odd under the flip"
    return signs.numpy()


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _pack_smallest_three(q_xyzw: np.ndarray) -> np.ndarray:
    """(N, 4) unit quaternions (xyzw) → (N, 4) bytes of the little-endian 32-bit smallest-three code."""
    n = len(q_xyzw)
    largest = np.abs(q_xyzw).argmax(axis=1)
    q = np.where(q_xyzw[np.arange(n), largest][:, None] < 0, -q_xyzw, q_xyzw)
    code = largest.astype(np.uint64)
    for i in range(4):
        keep = largest != i
        mag = np.floor(511 * np.abs(q[:, i]) / _SQRT1_2 + 0.5).clip(0, 511).astype(np.uint64)
        field = ((q[:, i] < 0).astype(np.uint64) << np.uint64(9)) | mag
        code = np.where(keep, (code << np.uint64(10)) | field, code)
    return code.astype("<u4").view(np.uint8).reshape(n, 4)


def _unpack_smallest_three(raw: np.ndarray) -> np.ndarray:
    """(N, 4) bytes → (N, 4) unit quaternions (xyzw)."""
    code = raw.copy().view("<u4").reshape(-1).astype(np.uint64)
    n = len(code)
    largest = (code >> np.uint64(30)).astype(np.int64)
    q = np.zeros((n, 4))
    for i in (3, 2, 1, 0):  # the last packed component sits in the lowest bits
        take = largest != i
        mag = (code & np.uint64(511)).astype(np.float64)
        negative = ((code >> np.uint64(9)) & np.uint64(1)).astype(bool)
        value = _SQRT1_2 * mag / 511 * np.where(negative, -1.0, 1.0)
        q[:, i] = np.where(take, value, 0.0)
        code = np.where(take, code >> np.uint64(10), code)
    q[np.arange(n), largest] = np.sqrt(np.clip(1 - (q ** 2).sum(axis=1), 0, None))
    return q


def _quantize_sh(x: np.ndarray, bits: int) -> np.ndarray:
    bucket = 1 << (8 - bits)
    q = np.round(x * 128.0) + 128.0
    q = np.floor((q + bucket // 2) / bucket) * bucket
    return np.clip(q, 0, 255).astype(np.uint8)


def encode_spz(gaussians: Gaussians, from_rdf: bool = True, sh1_bits: int = 5, sh_rest_bits: int = 4) -> bytes:
    """The gzipped `.spz` (version 3) bytes of `gaussians` (SH degree ≤ 4; see the module doc)."""
    g = gaussians.detach().to("cpu", torch.float64)
    g.validate()
    degree = g.sh_degree
    n = len(g)
    flip = np.array([1.0, -1.0, -1.0]) if from_rdf else np.ones(3)
    means = g.means.numpy() * flip
    extent = float(np.abs(means).max()) if n else 0.0
    fractional = _MAX_FRACTIONAL_BITS
    while fractional > 0 and extent * (1 << fractional) >= (1 << 23) - 1:
        fractional -= 1
    if extent * (1 << fractional) >= (1 << 23) - 1:
        raise ValueError(f"spz: positions up to {extent:.3g} do not fit 24-bit fixed point")
    fixed = np.round(means * (1 << fractional)).astype(np.int64).reshape(-1)
    positions = np.stack([fixed & 0xFF, (fixed >> 8) & 0xFF, (fixed >> 16) & 0xFF], axis=1).astype(np.uint8)
    alphas = _u8(g.opacities.numpy() * 255)
    colors = _u8(g.sh[:, 0].numpy() * (_COLOR_SCALE * 255) + 127.5)
    scales = _u8((g.log_scales.numpy() + 10.0) * 16.0)
    wxyz = g.rotations.numpy()
    xyzw = np.concatenate([wxyz[:, 1:] * flip, wxyz[:, :1]], axis=1)  # y, z flip = conjugation by a 180° turn
    rotations = _pack_smallest_three(xyzw)
    rest = g.sh[:, 1:].numpy()
    if from_rdf and degree:
        rest = rest * rdf_rub_sh_signs(degree)[1:, None]
    sh = np.zeros(rest.shape, dtype=np.uint8)
    if degree:
        sh[:, :3] = _quantize_sh(rest[:, :3], sh1_bits)
        sh[:, 3:] = _quantize_sh(rest[:, 3:], sh_rest_bits)
    header = struct.pack("<IIIBBBB", SPZ_MAGIC, 3, n, degree, fractional, 0, 0)
    body = b"".join(a.tobytes() for a in (positions, alphas, colors, scales, rotations, sh))
    return gzip.compress(header + body, mtime=0)


def decode_spz(data: bytes, to_rdf: bool = True, source: str = "<bytes>") -> Gaussians:
    """Gaussians from `.spz` bytes (versions 2 and 3). `to_rdf` flips y and z back (see the module doc)."""
    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError) as err:
        raise ValueError(f"{source}: not a gzip stream ({err}); .spz version 4 (zstd) is not supported") from err
    if len(raw) < 16:
        raise ValueError(f"{source}: {len(raw)} bytes is too short for an .spz header")
    magic, version, n, degree, fractional, flags, reserved = struct.unpack_from("<IIIBBBB", raw)
    if magic != SPZ_MAGIC:
        raise ValueError(f"{source}: magic {magic:#010x} is not 0x5053474e ('NGSP')")
    if version not in (2, 3):
        raise ValueError(f"{source}: .spz version {version} is not supported (2 and 3 are)")
    if degree > 4:
        raise ValueError(f"{source}: SH degree {degree} is not in 0..4")
    if flags & 0x2:
        raise ValueError(f"{source}: .spz extensions (flags 0x2) are not supported")
    k = (degree + 1) ** 2
    rot_bytes = 4 if version == 3 else 3
    sizes = [9 * n, n, 3 * n, 3 * n, rot_bytes * n, (k - 1) * 3 * n]
    if len(raw) < 16 + sum(sizes):
        raise ValueError(f"{source}: {len(raw) - 16} bytes of data, {sum(sizes)} expected for {n} points of SH "
                         f"degree {degree}")
    offsets = np.cumsum([16] + sizes)
    part = [np.frombuffer(raw, np.uint8, s, o) for s, o in zip(sizes, offsets[:-1])]
    p = part[0].reshape(n, 3, 3).astype(np.int64)
    fixed = p[..., 0] | (p[..., 1] << 8) | (p[..., 2] << 16)
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
    flip = np.array([1.0, -1.0, -1.0]) if to_rdf else np.ones(3)
    means = fixed / float(1 << fractional) * flip
    alpha = np.clip(part[1] / 255.0, 0.5 / 255, 254.5 / 255)
    dc = (part[2].reshape(n, 3) / 255.0 - 0.5) / _COLOR_SCALE
    log_scales = part[3].reshape(n, 3) / 16.0 - 10.0
    if version == 3:
        xyzw = _unpack_smallest_three(part[4].reshape(n, 4))
    else:
        xyz = part[4].reshape(n, 3) / 127.5 - 1.0
        xyzw = np.concatenate([xyz, np.sqrt(np.clip(1 - (xyz ** 2).sum(1, keepdims=True), 0, None))], axis=1)
    wxyz = np.concatenate([xyzw[:, 3:], xyzw[:, :3] * flip], axis=1)
    rest = (part[5].reshape(n, k - 1, 3).astype(np.float64) - 128.0) / 128.0
    if to_rdf and degree:
        rest = rest * rdf_rub_sh_signs(degree)[1:, None]
    sh = np.concatenate([dc[:, None, :], rest], axis=1)
    f = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return Gaussians(f(means), f(wxyz), f(log_scales), torch.logit(f(alpha)), f(sh))


def save_spz(gaussians: Gaussians, path: str | os.PathLike, from_rdf: bool = True) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(encode_spz(gaussians, from_rdf))
    return path


def load_spz(path: str | os.PathLike, to_rdf: bool = True) -> Gaussians:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no .spz file at {path}")
    return decode_spz(path.read_bytes(), to_rdf, str(path))

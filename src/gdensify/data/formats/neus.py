"""Reader for IDR / NeuS captures (DTU as distributed for NeuS-style methods): `cameras_sphere.npz` (or
`cameras.npz`) with `image/` and optional `mask/`.

The archive holds, per frame i (images in sorted file-name order), `world_mat_i`: the 4×4 (or 3×4) projection
P = K·[R | t] from world to pixels, and optionally `scale_mat_i`: the 4×4 similarity that maps the normalised
space (the object inside the unit sphere) to the world. The cameras are returned in the normalised space:
P·scale_mat is split into K (upper triangular, positive diagonal, K[2, 2] = 1) and [R | t] (R a rotation) by an
RQ decomposition, with the projective scale and sign of P removed. The intrinsics are taken as they are, in our
convention (pixel centres at +0.5); NeuS's own ray casting puts pixel centres at integers, half a pixel away.
Masks: `mask/` (or `masks/`), matched by name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from ...cameras import Cameras
from .capture import Capture, CaptureFormatError, CaptureFrame, attach_masks, common_size, list_images

__all__ = ["read_neus", "decompose_projection", "NEUS_CAMERA_FILES"]

NEUS_CAMERA_FILES = ("cameras_sphere.npz", "cameras.npz")


def decompose_projection(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 3×4 projection P (up to scale and sign) → (K 3×3 with positive diagonal and K[2,2] = 1, world-to-camera
    4×4 with a proper rotation), so that P ∝ K·[R | t]."""
    m = p[:, :3]
    if np.linalg.det(m) < 0:  # P and −P project alike; pick the sign that makes R a rotation
        p, m = -p, -m
    # RQ decomposition of m via the QR decomposition of its flipped transpose
    flip = np.eye(3)[::-1]
    q, r = np.linalg.qr((flip @ m).T)
    k = flip @ r.T @ flip
    rot = flip @ q.T
    signs = np.diag(np.sign(np.diag(k)))
    k, rot = k @ signs, signs @ rot
    t = np.linalg.solve(k, p[:, 3])
    scale = k[2, 2]
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = rot, t
    return k / scale, w2c


def read_neus(folder: str | os.PathLike) -> Capture:
    """Read an IDR / NeuS capture into a `Capture` in the normalised space (see the module doc)."""
    folder = Path(folder)
    path = next((folder / n for n in NEUS_CAMERA_FILES if (folder / n).is_file()), folder / NEUS_CAMERA_FILES[0])
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: np.asarray(npz[k], dtype=np.float64) for k in npz.files}
    except (OSError, ValueError) as e:
        raise CaptureFormatError(f"{path}: not a readable .npz archive ({e})") from e
    ids = sorted(int(m.group(1)) for k in data if (m := re.fullmatch(r"world_mat_(\d+)", k)))
    if not ids:
        raise CaptureFormatError(f"{path}: no world_mat_<i> arrays (keys: {sorted(data)[:6]})")
    if ids != list(range(len(ids))):
        raise CaptureFormatError(f"{path}: world_mat_<i> indices are not 0..{len(ids) - 1} (got {ids[:8]})")
    images_dir = next((folder / n for n in ("image", "images", "rgb") if (folder / n).is_dir()), None)
    if images_dir is None:
        raise CaptureFormatError(f"{folder}: no image/ folder beside {path.name}")
    paths = list_images(images_dir)
    if len(paths) != len(ids):
        raise CaptureFormatError(f"{path}: {len(ids)} cameras (world_mat_i) but {len(paths)} images in {images_dir}")
    names = [p.name for p in paths]
    width, height = common_size(paths, names, path)
    w2cs, ks = [], []
    for i, name in enumerate(names):
        world = data[f"world_mat_{i}"]
        scale = data.get(f"scale_mat_{i}", np.eye(4))
        if world.shape not in ((4, 4), (3, 4)) or scale.shape != (4, 4):
            raise CaptureFormatError(f"{path}: frame {i} ({name}): world_mat must be 4x4 or 3x4 and scale_mat 4x4, "
                                     f"got {world.shape} and {scale.shape}")
        if not (np.isfinite(world).all() and np.isfinite(scale).all()):
            raise CaptureFormatError(f"{path}: frame {i} ({name}): world_mat or scale_mat contains NaN or Inf")
        p = (world[:3, :4] @ scale)
        if abs(np.linalg.det(p[:, :3])) < 1e-12 * max(1.0, np.abs(p).max()) ** 3:
            raise CaptureFormatError(f"{path}: frame {i} ({name}): world_mat·scale_mat is singular")
        k, w2c = decompose_projection(p)
        if abs(k[0, 1]) > 1e-6 * k[0, 0]:
            raise CaptureFormatError(f"{path}: frame {i} ({name}): the intrinsics have a skew of {k[0, 1]:g} px "
                                     f"(not supported)")
        k[0, 1] = 0.0
        w2cs.append(w2c)
        ks.append(k)
    frames = [CaptureFrame(n, p) for n, p in zip(names, paths)]
    attach_masks(frames, folder, path)
    cameras = Cameras(torch.from_numpy(np.stack(w2cs)), torch.from_numpy(np.stack(ks)), width, height)
    return Capture(cameras, frames, "neus", folder)

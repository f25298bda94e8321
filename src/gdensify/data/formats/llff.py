"""Reader for LLFF captures: `poses_bounds.npy` with `images/` (or `images_N/`, downsampled N times).

`poses_bounds.npy` is a (V, 17) float array, one row per image in sorted file-name order: a 3×5 matrix (row-major)
whose first three columns are the camera's axes in world coordinates in LLFF's order [down, right, backwards],
the fourth the camera centre, the fifth (height, width, focal length) in pixels of the full-resolution images; then
the near and far depth bounds of the frame. Converted to OpenCV: x = right, y = down, z = −backwards; principal
point at the image centre; the focal length scaled to the images actually read (`images_N/`). The bounds become
`Capture.bounds`. Masks: a `masks/` or `mask/` folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ...cameras import Cameras
from .capture import Capture, CaptureFormatError, CaptureFrame, attach_masks, common_size, list_images

__all__ = ["read_llff"]


def _images_folder(folder: Path, factor: int | None) -> Path:
    if factor is not None:
        cand = folder / ("images" if factor == 1 else f"images_{factor}")
        if not cand.is_dir():
            raise CaptureFormatError(f"{folder}: no {cand.name}/ folder for downsampling factor {factor}")
        return cand
    if (folder / "images").is_dir():
        return folder / "images"
    scaled = sorted((int(p.name[len("images_"):]), p) for p in folder.glob("images_*")
                    if p.is_dir() and p.name[len("images_"):].isdigit())
    if not scaled:
        raise CaptureFormatError(f"{folder}: poses_bounds.npy has no images/ or images_N/ folder beside it")
    return scaled[0][1]


def read_llff(folder: str | os.PathLike, factor: int | None = None) -> Capture:
    """Read an LLFF capture. `factor` picks `images_{factor}/` (1: `images/`); default `images/`, else the least
    downsampled `images_N/`."""
    folder = Path(folder)
    path = folder / "poses_bounds.npy"
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CaptureFormatError(f"{path}: not a readable .npy array ({e})") from e
    if arr.ndim != 2 or arr.shape[1] != 17:
        raise CaptureFormatError(f"{path}: expected a (V, 17) array, got {arr.shape}")
    arr = arr.astype(np.float64)
    images_dir = _images_folder(folder, factor)
    paths = list_images(images_dir)
    if len(paths) != len(arr):
        raise CaptureFormatError(f"{path}: {len(arr)} poses but {len(paths)} images in {images_dir}")
    names = [p.name for p in paths]
    bad = [i for i in range(len(arr)) if not np.isfinite(arr[i]).all()]
    if bad:
        raise CaptureFormatError(f"{path}: frame {bad[0]} ({names[bad[0]]}): pose or bounds contain NaN or Inf")
    width, height = common_size(paths, names, path)
    poses = arr[:, :15].reshape(-1, 3, 5)
    h_full, w_full, focal = poses[:, 0, 4], poses[:, 1, 4], poses[:, 2, 4]
    w2cs, ks = [], []
    for i in range(len(arr)):
        if not (h_full[i] > 0 and w_full[i] > 0 and focal[i] > 0):
            raise CaptureFormatError(f"{path}: frame {i} ({names[i]}): height, width and focal must be positive, "
                                     f"got {h_full[i]}, {w_full[i]}, {focal[i]}")
        sx, sy = width / w_full[i], height / h_full[i]
        if abs(sx - sy) > 0.02 * sx:
            raise CaptureFormatError(f"{path}: frame {i} ({names[i]}): image {width}x{height} is not a scaled "
                                     f"{w_full[i]:g}x{h_full[i]:g} (the size in poses_bounds.npy)")
        down, right, back, centre = (poses[i, :, j] for j in range(4))
        rot = np.stack([right, down, -back], axis=1)
        if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-3) or np.linalg.det(rot) < 0:
            raise CaptureFormatError(f"{path}: frame {i} ({names[i]}): the pose's axes are not a rotation")
        c2w = np.eye(4)
        c2w[:3, :3], c2w[:3, 3] = rot, centre
        w2cs.append(np.linalg.inv(c2w))
        ks.append(np.array([[focal[i] * sx, 0, width / 2], [0, focal[i] * sy, height / 2], [0, 0, 1.0]]))
    frames = [CaptureFrame(n, p) for n, p in zip(names, paths)]
    attach_masks(frames, folder, path)
    cameras = Cameras(torch.from_numpy(np.stack(w2cs)), torch.from_numpy(np.stack(ks)), width, height)
    return Capture(cameras, frames, "llff", folder, bounds=torch.from_numpy(arr[:, 15:17].copy()))

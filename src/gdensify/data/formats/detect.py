"""One entry for every capture layout: `detect_format(folder)` and `read_capture(folder, format=None)`.

Layouts, tried in this order (the first that matches wins; pass `format=` to force one):

  =============  ==========================================================================================
  format         what the folder holds
  =============  ==========================================================================================
  "blender"      `transforms_train.json` (+ `transforms_test.json`, ...): NeRF-synthetic layout; splits kept
  "nerfstudio"   `transforms.json` (nerfstudio, instant-ngp, DL3DV, LaRa's GSO renders); or the .json itself
  "colmap"       `sparse/0/cameras.bin|txt` (or `sparse/`, or the model folder) and `images/`
  "llff"         `poses_bounds.npy` and `images/` or `images_N/`
  "neus"         `cameras_sphere.npz` or `cameras.npz` (IDR / NeuS, DTU) and `image/`, optional `mask/`
  =============  ==========================================================================================

A folder with both a COLMAP model and `poses_bounds.npy` (LLFF's own release) is read as COLMAP: it has the sparse
points and the lens model, and the same poses.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ...cameras import Cameras
from ..blender import blender_splits, read_blender_cameras
from .capture import Capture, CaptureFormatError, CaptureFrame, attach_masks
from .colmap import find_colmap_model, read_colmap
from .llff import read_llff
from .nerfstudio import read_nerfstudio
from .neus import NEUS_CAMERA_FILES, read_neus

__all__ = ["FORMATS", "detect_format", "read_capture", "read_blender_capture"]

FORMATS = ("blender", "nerfstudio", "colmap", "llff", "neus")

_LOOKED_FOR = ("transforms_train.json (Blender), transforms.json (nerfstudio / instant-ngp), sparse/0/cameras.bin "
               "or .txt (COLMAP), poses_bounds.npy (LLFF), cameras_sphere.npz or cameras.npz (IDR / NeuS)")


def detect_format(folder: str | os.PathLike) -> str:
    """The layout of `folder` (one of `FORMATS`); an error listing what was looked for when none matches."""
    path = Path(folder)
    if path.is_file() and path.suffix.lower() == ".json":
        return "nerfstudio"
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder")
    if blender_splits(path):
        return "blender"
    if (path / "transforms.json").is_file():
        return "nerfstudio"
    if find_colmap_model(path) is not None:
        return "colmap"
    if (path / "poses_bounds.npy").is_file():
        return "llff"
    if any((path / n).is_file() for n in NEUS_CAMERA_FILES):
        return "neus"
    raise CaptureFormatError(f"{path}: no capture found; looked for {_LOOKED_FOR}")


def read_blender_capture(folder: str | os.PathLike) -> Capture:
    """Every split of a Blender-layout object as one capture (`Capture.splits` holds each split's frames; frame
    names are `SPLIT/FILE`). Lens distortion fields are ignored with a warning, as in the Blender reader."""
    folder = Path(folder)
    parts, frames, splits = [], [], {}
    for split in blender_splits(folder):
        cams, paths = read_blender_cameras(folder, split)
        splits[split] = list(range(len(frames), len(frames) + len(paths)))
        frames += [CaptureFrame(f"{split}/{p.relative_to(folder)}", p) for p in paths]
        parts.append(cams)
    sizes = {(c.width, c.height) for c in parts}
    if len(sizes) > 1:
        raise CaptureFormatError(f"{folder}: splits have different image sizes {sorted(sizes)}")
    cams = Cameras(torch.cat([c.world_to_camera.double() for c in parts]),
                   torch.cat([c.intrinsics.double() for c in parts]), parts[0].width, parts[0].height)
    attach_masks(frames, folder, folder)
    return Capture(cams, frames, "blender", folder, splits=splits)


_READERS = {"blender": read_blender_capture, "nerfstudio": read_nerfstudio, "colmap": read_colmap,
            "llff": read_llff, "neus": read_neus}


def read_capture(folder: str | os.PathLike, format: str | None = None) -> Capture:
    """Read the capture in `folder` with the reader of `format` (default: `detect_format`)."""
    if format is None:
        format = detect_format(folder)
    if format not in _READERS:
        raise ValueError(f"unknown capture format {format!r}; known: {', '.join(FORMATS)}")
    if not Path(folder).exists():
        raise FileNotFoundError(f"{folder}: no such folder")
    return _READERS[format](folder)

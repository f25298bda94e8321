"""Reader for a single `transforms.json` (nerfstudio, instant-ngp, DL3DV, LaRa's GSO renders).

Fields (top level, each overridable per frame):
  * intrinsics: `fl_x`, `fl_y`, `cx`, `cy` in pixels of an image of size `w`×`h` (scaled if the images have
    another size), or `camera_angle_x` (and `camera_angle_y`) in radians; without `fl_y` / `camera_angle_y` the
    pixels are square; without `cx`, `cy` the principal point is the image centre;
  * `camera_model`: "OPENCV" (default), "PINHOLE", "SIMPLE_PINHOLE" or "OPENCV_FISHEYE"; distortion `k1 k2 k3 k4
    p1 p2` (k4 for the fisheye model only). Distorted frames are undistorted when loaded, keeping their
    intrinsics (see `distortion`); other camera models are refused;
  * `frames`: {`file_path`, `transform_matrix` (camera-to-world, OpenGL/Blender camera axes: x right, y up,
    z backward; converted to OpenCV), optional `mask_path`}. Paths are relative to the JSON file's folder or
    absolute; `file_path` may omit its extension;
  * `aabb_scale` (instant-ngp's ray-marching box) and `ply_file_path` (nerfstudio's sparse points, in the same
    frame as the poses) are optional; `aabb_scale` is kept in `Capture.extras`, the points in `Capture.points`.
Frames whose image file is missing are skipped with one warning that counts them (instant-ngp's samples list
frames that were never shipped). Masks: `mask_path` per frame, else a `masks/` or `mask/` folder, else alpha.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ...cameras import Cameras, opengl_to_opencv
from ..blender import _intrinsics, _matrix, _read_json, _resolve_image
from .capture import (Capture, CaptureFormatError, CaptureFrame, common_size, find_mask_folder, match_masks,
                      resolve_path)
from .distortion import LensDistortion

__all__ = ["read_nerfstudio"]

_PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")
_SUPPORTED_MODELS = _PINHOLE_MODELS + ("OPENCV_FISHEYE",)


def _json_file(path: Path) -> Path:
    if path.is_dir():
        return path / "transforms.json"
    return path


def _distortion(json_path: Path, data: dict, frame: dict, index: int) -> LensDistortion | None:
    def get(key, default=None):
        return frame.get(key, data.get(key, default))

    model = str(get("camera_model", "OPENCV")).upper()
    if model not in _SUPPORTED_MODELS:
        raise CaptureFormatError(f"{json_path}: frame {index}: camera_model {model!r} is not supported (supported: "
                                 f"{', '.join(_SUPPORTED_MODELS)}); undistort the images to a pinhole camera first")
    coeffs = {}
    for key in ("k1", "k2", "k3", "k4", "p1", "p2"):
        value = get(key, 0.0)
        try:
            coeffs[key] = float(0.0 if value is None else value)
        except (TypeError, ValueError) as e:
            raise CaptureFormatError(f"{json_path}: frame {index}: {key!r} is not a number ({value!r})") from e
    try:
        d = LensDistortion("fisheye" if model == "OPENCV_FISHEYE" else "opencv", **coeffs)
    except ValueError as e:
        raise CaptureFormatError(f"{json_path}: frame {index}: camera_model {model}: {e}") from e
    return None if d.is_identity else d


def _check_intrinsic_fields(json_path: Path, data: dict, frame: dict, index: int) -> None:
    """Refuse values that would divide by zero or give a degenerate camera, naming the field."""
    for key, low, high in (("camera_angle_x", 0.0, math.radians(179)), ("camera_angle_y", 0.0, math.radians(179)),
                           ("fl_x", 0.0, math.inf), ("fl_y", 0.0, math.inf), ("w", 0.0, math.inf),
                           ("h", 0.0, math.inf)):
        value = frame.get(key, data.get(key))
        if value is None:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError) as e:
            raise CaptureFormatError(f"{json_path}: frame {index}: {key!r} is not a number ({value!r})") from e
        if not low < number < high:
            raise CaptureFormatError(f"{json_path}: frame {index}: {key!r} must be in ({low:g}, {high:g}), got "
                                     f"{value!r}")


def _read_points(json_path: Path, data: dict) -> torch.Tensor | None:
    rel = data.get("ply_file_path")
    if rel is None:
        return None
    path = resolve_path(json_path.parent, str(rel))
    if not path.is_file():
        raise CaptureFormatError(f"{json_path}: ply_file_path {rel!r} not found ({path})")
    from plyfile import PlyData

    try:
        v = PlyData.read(str(path))["vertex"].data
        xyz = np.stack([np.asarray(v[c], dtype=np.float64) for c in ("x", "y", "z")], axis=1)
    except Exception as e:  # plyfile raises several exception types for corrupt files
        raise CaptureFormatError(f"{path}: not a readable point .ply with a vertex element x, y, z ({e})") from e
    if not np.isfinite(xyz).all():
        raise CaptureFormatError(f"{path}: sparse points contain NaN or Inf")
    return torch.from_numpy(xyz)


def read_nerfstudio(path: str | os.PathLike) -> Capture:
    """Read a `transforms.json` (or the folder holding it) into a `Capture` (see the module doc)."""
    json_path = _json_file(Path(path))
    data = _read_json(json_path)
    frames = data["frames"]
    kept, missing = [], []
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise CaptureFormatError(f"{json_path}: frame {i} is not a JSON object")
        try:
            image = _resolve_image(json_path, frame, i)
        except FileNotFoundError:
            missing.append(str(frame.get("file_path")))
            continue
        kept.append((i, frame, image))
    if not kept:
        raise CaptureFormatError(f"{json_path}: none of the {len(frames)} frames' images exist (e.g. "
                                 f"{missing[0]!r} relative to {json_path.parent})")
    if missing:
        warnings.warn(f"{json_path}: skipped {len(missing)} of {len(frames)} frames whose image is missing "
                      f"(e.g. {missing[0]!r})", stacklevel=2)
    names = [str(f["file_path"]) for _, f, _ in kept]
    width, height = common_size([p for _, _, p in kept], names, json_path)
    mats, ks, capture_frames, mask_paths = [], [], [], []
    for (i, frame, image), name in zip(kept, names):
        mats.append(_matrix(json_path, frame, i))
        _check_intrinsic_fields(json_path, data, frame, i)
        ks.append(_intrinsics(json_path, data, frame, i, width, height))
        mask_rel = frame.get("mask_path")
        mask = None
        if mask_rel is not None:
            mask = resolve_path(json_path.parent, str(mask_rel))
            if not mask.is_file():
                raise CaptureFormatError(f"{json_path}: frame {i}: mask_path {mask_rel!r} not found ({mask})")
        mask_paths.append(mask)
        capture_frames.append(CaptureFrame(name, image, mask, _distortion(json_path, data, frame, i)))
    with_mask = [m is not None for m in mask_paths]
    if any(with_mask) and not all(with_mask):
        lacking = [n for n, m in zip(names, with_mask) if not m]
        raise CaptureFormatError(f"{json_path}: {len(lacking)} of {len(names)} frames have no mask_path (e.g. "
                                 f"{lacking[0]!r}) while others do")
    if not any(with_mask):
        folder = find_mask_folder(json_path.parent)
        if folder is not None:
            for f, m in zip(capture_frames, match_masks(folder, [Path(n).name for n in names], json_path)):
                f.mask_path = m
    c2w = opengl_to_opencv(torch.from_numpy(np.stack(mats)))
    cams = Cameras.from_camera_to_world(c2w, torch.from_numpy(np.stack(ks)), width, height)
    extras = {k: data[k] for k in ("aabb_scale", "scale", "offset") if k in data}
    return Capture(cams, capture_frames, "nerfstudio", json_path, _read_points(json_path, data), extras=extras)

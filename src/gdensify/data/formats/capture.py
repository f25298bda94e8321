"""`Capture`: the common result of every capture reader (posed frames of one object or scene, OpenCV cameras).

A capture holds cameras and file paths, not pixels: `Capture.load` decodes (and undistorts) the frames asked for,
so a 300-frame 4000² capture costs nothing until a few views are used.

Conventions (as everywhere in gdensify): `cameras` are pinhole cameras in OpenCV axes (x right, y down, z forward),
world-to-camera 4×4, intrinsics in pixels with pixel centres at integer + 0.5, at the frames' native size, in the
capture's own world units and frame (nothing is normalised here). Frames whose source camera has lens distortion
keep the same pinhole intrinsics after undistortion (see `distortion.undistort_image`). Images are float32 RGB in
[0, 1] with straight (un-premultiplied) colour; masks are float32 in [0, 1], 1 on the object.

Masks, in order of precedence per frame: an explicit mask file (`mask_path` in `transforms.json`, or a file in a
`masks/` or `mask/` folder next to the images, matched by name: `NAME`, `NAME.png` (COLMAP's convention) or the
same stem with any image extension); else the image's alpha channel when it has transparent pixels; else none.
Undistortion marks pixels with no source in the distorted image as mask 0.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ...cameras import Cameras
from ..blender import IMAGE_EXTENSIONS, _load_rgba
from .distortion import LensDistortion, undistort_image

__all__ = ["Capture", "CaptureFrame", "CaptureFormatError"]

MASK_FOLDERS = ("masks", "mask")


class CaptureFormatError(ValueError):
    """A capture file, frame or image that cannot be used (the message names the file, the frame and the problem)."""


@dataclass
class CaptureFrame:
    """One frame: its name (unique in the capture), image file, optional mask file and source lens distortion."""

    name: str
    image_path: Path
    mask_path: Path | None = None
    distortion: LensDistortion | None = None


@dataclass
class Capture:
    """Posed frames of one object or scene, as read from disk (see the module doc for the conventions).

    cameras: V pinhole cameras (float64), OpenCV, native image size, dataset units.
    frames: V `CaptureFrame`s (names, image and mask paths, lens distortion), in the capture's order.
    format: the reader that produced it ("nerfstudio", "colmap", "llff", "neus", "blender").
    root: the folder (or the transforms.json) it was read from.
    points: (N, 3) float64 sparse points in world units (COLMAP's points3D), or None.
    bounds: (V, 2) float64 per-frame near/far depths in world units (LLFF's bounds), or None.
    splits: split name → frame indices, for layouts with splits (Blender's transforms_{train,test}.json).
    extras: other fields of the source kept for reference (e.g. instant-ngp's `aabb_scale`).
    """

    cameras: Cameras
    frames: list[CaptureFrame]
    format: str
    root: Path
    points: Float[Tensor, "N 3"] | None = None
    bounds: Float[Tensor, "V 2"] | None = None
    splits: dict[str, list[int]] = field(default_factory=dict)
    extras: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        v = len(self.cameras)
        if len(self.frames) != v:
            raise CaptureFormatError(f"{self.root}: {len(self.frames)} frames but {v} cameras")
        names = [f.name for f in self.frames]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise CaptureFormatError(f"{self.root}: frame names appear twice: {dup[:5]}")
        if self.points is not None:
            if self.points.ndim != 2 or self.points.shape[1] != 3:
                raise CaptureFormatError(f"{self.root}: points must be (N, 3), got {tuple(self.points.shape)}")
            if not torch.isfinite(self.points).all():
                raise CaptureFormatError(f"{self.root}: sparse points contain NaN or Inf")
        if self.bounds is not None:
            if tuple(self.bounds.shape) != (v, 2):
                raise CaptureFormatError(f"{self.root}: bounds must be ({v}, 2), got {tuple(self.bounds.shape)}")
            bad = [i for i in range(v) if not (0 < float(self.bounds[i, 0]) < float(self.bounds[i, 1]) < math.inf)]
            if bad:
                raise CaptureFormatError(f"{self.root}: frame {self.frames[bad[0]].name}: near/far bounds "
                                         f"{self.bounds[bad[0]].tolist()} are not 0 < near < far")
        for name, idx in self.splits.items():
            if any(not 0 <= i < v for i in idx):
                raise CaptureFormatError(f"{self.root}: split {name!r} has frame indices out of range 0..{v - 1}")

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def name(self) -> str:
        """The capture's name: its folder's name (the JSON file's folder for a transforms.json)."""
        return self.root.parent.name if self.root.suffix.lower() == ".json" else self.root.name

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.frames]

    @property
    def has_mask_files(self) -> bool:
        return any(f.mask_path is not None for f in self.frames)

    def select(self, indices: Sequence[int]) -> "Capture":
        """The capture restricted to `indices` (in that order); points kept, splits dropped."""
        idx = self._check_indices(indices)
        cams = Cameras(self.cameras.world_to_camera[idx], self.cameras.intrinsics[idx], self.cameras.width,
                       self.cameras.height, self.cameras.near, self.cameras.far)
        return Capture(cams, [self.frames[i] for i in idx], self.format, self.root, self.points,
                       None if self.bounds is None else self.bounds[idx], {}, dict(self.extras))

    def _check_indices(self, indices: Sequence[int]) -> list[int]:
        idx = [int(i) for i in indices]
        bad = [i for i in idx if not 0 <= i < len(self)]
        if bad:
            raise CaptureFormatError(f"{self.root}: frame indices {bad} out of range 0..{len(self) - 1}")
        return idx

    def load_frame(self, index: int) -> tuple[Float[Tensor, "H W 3"], Float[Tensor, "H W 1"] | None]:
        """Frame `index`: (straight RGB, mask or None), undistorted to the capture's pinhole camera."""
        frame = self.frames[self._check_indices([index])[0]]
        w, h = self.cameras.width, self.cameras.height
        rgba = _read_rgba(frame.image_path)
        if rgba.shape[:2] != (h, w):
            raise CaptureFormatError(f"{frame.image_path}: frame {frame.name}: image is {rgba.shape[1]}x"
                                     f"{rgba.shape[0]}, the capture's cameras are {w}x{h}")
        rgb, alpha = torch.from_numpy(rgba[..., :3]), torch.from_numpy(rgba[..., 3:])
        mask: Tensor | None
        if frame.mask_path is not None:
            mask = _read_mask(frame.mask_path, frame.name, w, h)
        elif bool((alpha < 1).any()):
            mask = alpha
        else:
            mask = None
        if frame.distortion is not None and not frame.distortion.is_identity:
            k = self.cameras.intrinsics[index]
            stacked = torch.cat([rgb * alpha, alpha] + ([mask] if mask is not None else []), dim=-1)
            out, valid = undistort_image(stacked, k, frame.distortion)
            a = out[..., 3:4]
            rgb = torch.where(a > 1e-6, out[..., :3] / a.clamp_min(1e-6), out[..., :3]).clamp(0, 1)
            if mask is not None:
                mask = out[..., 4:5].clamp(0, 1)
            elif bool((a < 1 - 1e-6).any()):
                mask = a.clamp(0, 1)
            if bool((valid < 1).any()):
                mask = valid if mask is None else mask * valid
        return rgb.contiguous(), mask

    def load(self, indices: Sequence[int] | None = None
             ) -> tuple[Float[Tensor, "V H W 3"], Float[Tensor, "V H W 1"] | None]:
        """Frames `indices` (default all): stacked RGB and masks (None when no frame has one; frames without a
        mask get an all-ones mask when others have one)."""
        idx = list(range(len(self))) if indices is None else self._check_indices(indices)
        loaded = [self.load_frame(i) for i in idx]
        images = torch.stack([rgb for rgb, _ in loaded])
        if all(m is None for _, m in loaded):
            return images, None
        masks = torch.stack([torch.ones_like(rgb[..., :1]) if m is None else m for rgb, m in loaded])
        return images, masks


# ====================================================================================== helpers for readers
def _read_rgba(path: Path) -> np.ndarray:
    try:
        return _load_rgba(path)
    except ValueError as e:
        raise CaptureFormatError(str(e)) from e


def _read_mask(path: Path, frame: str, width: int, height: int) -> Tensor:
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64) / 65535.0
            elif im.mode in ("RGBA", "LA") and np.asarray(im.getchannel("A")).min() < 255 \
                    and np.asarray(im.convert("L")).min() == np.asarray(im.convert("L")).max():
                arr = np.asarray(im.getchannel("A"), dtype=np.float64) / 255.0  # a mask drawn in alpha only
            else:
                arr = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CaptureFormatError(f"{path}: frame {frame}: corrupt or unreadable mask ({e})") from e
    if arr.shape != (height, width):
        raise CaptureFormatError(f"{path}: frame {frame}: mask is {arr.shape[1]}x{arr.shape[0]}, the image is "
                                 f"{width}x{height}")
    return torch.from_numpy(arr.astype(np.float32))[..., None]


def image_size(path: Path, frame: str) -> tuple[int, int]:
    """(width, height) from the image header."""
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as e:
        raise CaptureFormatError(f"{path}: frame {frame}: cannot read image ({e})") from e


def common_size(paths: Sequence[Path], names: Sequence[str], source: Path) -> tuple[int, int]:
    """The one (width, height) all images share; an error naming two frames of different sizes otherwise."""
    first = None
    for path, name in zip(paths, names):
        size = image_size(path, name)
        if first is None:
            first = (size, path)
        elif size != first[0]:
            raise CaptureFormatError(f"{source}: frames have different image sizes: {first[1]} is "
                                     f"{first[0][0]}x{first[0][1]} but {path} is {size[0]}x{size[1]} (one size "
                                     f"per capture is supported; resize the images)")
    if first is None:
        raise CaptureFormatError(f"{source}: no frames")
    return first[0]


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name."""
    exts = {e.lower() for e in IMAGE_EXTENSIONS}
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts and not
                  p.name.startswith("."))


def find_mask_folder(root: Path) -> Path | None:
    for name in MASK_FOLDERS:
        if (root / name).is_dir():
            return root / name
    return None


def match_masks(folder: Path, names: Sequence[str], source: Path) -> list[Path]:
    """The mask file of every frame name in `folder` (`NAME`, `NAME.png`, or the stem with an image extension);
    an error listing the frames without one."""
    found, missing = [], []
    for name in names:
        rel = Path(name)
        candidates = [folder / rel, folder / (str(rel) + ".png")]
        candidates += [(folder / rel).with_suffix(ext) for ext in IMAGE_EXTENSIONS]
        candidates += [folder / rel.name, folder / (rel.name + ".png")]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            missing.append(name)
        found.append(hit)
    if missing:
        raise CaptureFormatError(f"{source}: mask folder {folder} has no mask for {len(missing)} of {len(names)} "
                                 f"frames (e.g. {', '.join(missing[:3])}); add them or remove the folder")
    return found


def attach_masks(frames: Sequence[CaptureFrame], root: Path, source: Path) -> None:
    """Give every frame its mask file from a mask folder under `root` (`MASK_FOLDERS`), when there is one."""
    folder = find_mask_folder(root)
    if folder is not None:
        for frame, mask in zip(frames, match_masks(folder, [f.name for f in frames], source)):
            frame.mask_path = mask


def resolve_path(base: Path, value: str) -> Path:
    """`value` relative to `base` (absolute paths kept, `~` expanded)."""
    p = Path(os.path.expanduser(str(value)))
    return p if p.is_absolute() else base / p

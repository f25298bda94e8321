"""Reader for the NeRF-synthetic / Blender layout, for any user's object, and explicit scene normalization.

Layout (one object per folder)::

    OBJECT/transforms_train.json   (also transforms_val.json, transforms_test.json, or any transforms_NAME.json)
    OBJECT/<frames' images>

A transforms file is a JSON object with
  - intrinsics, any of (per file, overridable per frame):
      * `camera_angle_x` (horizontal FOV, radians) and optionally `camera_angle_y`; without `camera_angle_y`
        the pixels are square (fy = fx);
      * `fl_x`, `fl_y`, `cx`, `cy` in pixels (nerfstudio / instant-ngp style), with `w`, `h` the size they refer
        to (default: the image size; if the images have another size, the intrinsics are scaled to it);
      * `intrinsic_matrix` 3×3 in pixels (GSO renders);
    with the principal point at the image centre unless `cx`, `cy` are given;
  - `frames`: a list of {`file_path`, `transform_matrix`}. `file_path` is relative to the JSON file's folder,
    with or without an extension (".png" is tried first, then ".jpg", ".jpeg", ".webp"). `transform_matrix` is the
    4×4 (or 3×4) camera-to-world matrix in Blender/OpenGL camera axes (x right, y up, z backward); a uniform
    scale on its rotation columns (a scaled Blender camera) is removed.

Images: RGBA images are composited on `background` (rgb·α + bg·(1 − α), straight alpha); RGB / grey images are
used as they are, with mask 1. An optional `resolution` resizes every view (box average for integer downscales,
else antialiased bilinear) and scales the
intrinsics (`Cameras.resized`). All frames of a split must share one image size.

Normalization (explicit; nothing is normalized unless asked)
    The model works in a fixed volume [-0.5, 0.5]³ and was trained with cameras at `OBJECT_CAMERA_DISTANCE` (2.0)
    from the object centre. A `SceneNormalization` maps world points x to (x − center)·scale, and camera
    matrices accordingly (rotations unchanged, translations moved and scaled; images and intrinsics unchanged):
      * `SceneNormalization.from_cameras(cams, target_distance=2.0)`: center = the point closest (least squares)
        to all optical axes (the point every camera looks at), scale = target_distance / mean camera distance to
        it. Use when the dataset frames its object like ours (object roughly fills the view);
      * `from_cameras(cams, target_distance, target_fov=0.6)`: instead matches the radius of the sphere that the
        cameras' fields of view cover (d·sin(fov/2)) to the training one, for datasets shot with another FOV
        (e.g. a telephoto camera far away): the object keeps its size in the model volume;
      * `SceneNormalization.from_bounds(center, radius, target_radius=0.5)` when the object's bounds are known;
      * `SceneNormalization.identity()`.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians
from .protocol import OBJECT_CAMERA_DISTANCE, OBJECT_RADIUS

__all__ = [
    "BlenderFormatError", "ObjectViews", "SceneNormalization", "load_blender_split", "read_blender_cameras",
    "find_blender_objects", "blender_splits", "IMAGE_EXTENSIONS",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".PNG", ".JPG", ".JPEG")


MAX_FOV = math.radians(175.0)
"""The widest field of view (radians) a pinhole camera of a transforms file may have."""


class BlenderFormatError(ValueError):
    """A transforms file or image that does not follow the Blender layout (the message names the file)."""


# ====================================================================================== views
@dataclass
class ObjectViews:
    """V posed views of one object: images composited on `background`, alpha masks, cameras (OpenCV)."""

    images: Float[Tensor, "V H W 3"]
    cameras: Cameras
    masks: Float[Tensor, "V H W 1"]
    name: str = ""
    file_paths: list[str] = field(default_factory=list)
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        v, h, w = len(self.cameras), self.cameras.height, self.cameras.width
        if tuple(self.images.shape) != (v, h, w, 3):
            raise ValueError(f"{self.name}: images must have shape ({v}, {h}, {w}, 3), got {tuple(self.images.shape)}")
        if tuple(self.masks.shape) != (v, h, w, 1):
            raise ValueError(f"{self.name}: masks must have shape ({v}, {h}, {w}, 1), got {tuple(self.masks.shape)}")

    def __len__(self) -> int:
        return len(self.cameras)

    def select(self, indices: Sequence[int] | Tensor) -> "ObjectViews":
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        return ObjectViews(self.images[idx], Cameras(self.cameras.world_to_camera[idx],
                                                     self.cameras.intrinsics[idx], self.cameras.width,
                                                     self.cameras.height, self.cameras.near, self.cameras.far),
                           self.masks[idx], self.name,
                           [self.file_paths[i] for i in idx.tolist()] if self.file_paths else [], self.background)

    def to(self, *args, **kwargs) -> "ObjectViews":
        return ObjectViews(self.images.to(*args, **kwargs), self.cameras.to(*args, **kwargs),
                           self.masks.to(*args, **kwargs), self.name, self.file_paths, self.background)

    def on_background(self, background: Sequence[float] | Tensor) -> Float[Tensor, "V H W 3"]:
        """The same views re-composited on another background (exact: uses the stored alpha)."""
        old = torch.as_tensor(self.background, dtype=self.images.dtype, device=self.images.device)
        new = torch.as_tensor(background, dtype=self.images.dtype, device=self.images.device)
        new = new.reshape(-1, 1, 1, 3) if new.ndim == 2 else new
        return self.images + (new - old) * (1.0 - self.masks)

    def resized(self, width: int, height: int | None = None) -> "ObjectViews":
        """Resize images and masks (box average for integer downscales, else antialiased bilinear); intrinsics
        scaled per axis (`Cameras.resized`). Compositing stays exact: both filters are linear and normalised."""
        height = width if height is None else height
        images = _resize(self.images, width, height)
        masks = _resize(self.masks, width, height)
        return ObjectViews(images, self.cameras.resized(width, height), masks, self.name, self.file_paths,
                           self.background)


def _resize(x: Float[Tensor, "V H W C"], width: int, height: int) -> Float[Tensor, "V h w C"]:
    if x.shape[1:3] == (height, width):
        return x
    h0, w0 = x.shape[1:3]
    xx = x.permute(0, 3, 1, 2).float()
    if h0 % height == 0 and w0 % width == 0:  # integer downscale: box average (like supersampling)
        y = F.avg_pool2d(xx, kernel_size=(h0 // height, w0 // width))
    else:
        y = F.interpolate(xx, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return y.clamp(0, 1).permute(0, 2, 3, 1).to(x.dtype).contiguous()


# ====================================================================================== normalization
@dataclass(frozen=True)
class SceneNormalization:
    """World points x map to (x − center)·scale; cameras are moved accordingly (images unchanged)."""

    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0 and all(math.isfinite(c) for c in self.center)):
            raise ValueError(f"SceneNormalization needs a finite centre and a positive scale, got {self}")

    @staticmethod
    def identity() -> "SceneNormalization":
        return SceneNormalization()

    @staticmethod
    def from_bounds(center: Sequence[float], radius: float, target_radius: float = OBJECT_RADIUS
                    ) -> "SceneNormalization":
        """The ball (center, radius) known to hold the object maps to the ball of `target_radius` at the origin."""
        return SceneNormalization(tuple(float(c) for c in center), float(target_radius) / float(radius))

    @staticmethod
    def from_cameras(cameras: Cameras, target_distance: float = OBJECT_CAMERA_DISTANCE,
                     target_fov: float | None = None) -> "SceneNormalization":
        """Centre = the point closest to all optical axes; scale from camera distances (see the module doc).

        target_fov None: mean camera distance → target_distance. Otherwise: mean of d·sin(fov/2) (fov the
        smaller of the two axes) → target_distance·sin(target_fov/2)."""
        c2w = cameras.camera_to_world.detach().double().cpu()
        origins, axes = c2w[:, :3, 3], torch.nn.functional.normalize(c2w[:, :3, 2], dim=-1)  # OpenCV +z forward
        center = closest_point_to_axes(origins, axes)
        dist = (origins - center).norm(dim=-1)
        if target_fov is None:
            scale = target_distance / float(dist.mean())
        else:
            k = cameras.intrinsics.detach().double().cpu()
            half_x = torch.atan(0.5 * cameras.width / k[:, 0, 0])
            half_y = torch.atan(0.5 * cameras.height / k[:, 1, 1])
            seen = dist * torch.sin(torch.minimum(half_x, half_y))
            scale = target_distance * math.sin(0.5 * target_fov) / float(seen.mean())
        return SceneNormalization(tuple(float(x) for x in center), scale)

    def apply_points(self, points: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch 3"]:
        return (points - torch.as_tensor(self.center, dtype=points.dtype, device=points.device)) * self.scale

    def invert_points(self, points: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch 3"]:
        return points / self.scale + torch.as_tensor(self.center, dtype=points.dtype, device=points.device)

    def invert_gaussians(self, gaussians: Gaussians) -> Gaussians:
        """Gaussians of the normalized world moved back to dataset units (means and scales; rotations kept)."""
        return Gaussians(self.invert_points(gaussians.means), gaussians.quats,
                         gaussians.log_scales - math.log(self.scale), gaussians.opacity_logits, gaussians.sh)

    def apply(self, cameras: Cameras) -> Cameras:
        """Cameras in the normalized world: w2c' = [R | scale·(R·center + t)] (projections unchanged)."""
        w2c = cameras.world_to_camera.clone()
        c = torch.as_tensor(self.center, dtype=w2c.dtype, device=w2c.device)
        w2c[:, :3, 3] = self.scale * (w2c[:, :3, :3] @ c + w2c[:, :3, 3])
        near, far = cameras.near * self.scale, cameras.far * self.scale
        return Cameras(w2c, cameras.intrinsics, cameras.width, cameras.height, near, far)

    def to_json(self) -> dict:
        return {"center": list(self.center), "scale": self.scale}


def closest_point_to_axes(origins: Float[Tensor, "C 3"], directions: Float[Tensor, "C 3"]) -> Float[Tensor, "3"]:
    """Least-squares point nearest to the lines origins + s·directions (unit directions).

    Nearly parallel axes (a forward-facing capture) make the system ill-conditioned; a small ridge pulls the
    answer towards the mean origin pushed one mean forward step, so the result stays finite."""
    eye = torch.eye(3, dtype=origins.dtype)
    proj = eye - directions[:, :, None] * directions[:, None, :]  # C 3 3
    a = proj.sum(0)
    b = (proj @ origins[:, :, None]).sum(0)[:, 0]
    prior = origins.mean(0) + directions.mean(0)
    ridge = 1e-6 * len(origins)
    return torch.linalg.solve(a + ridge * eye, b + ridge * prior)


# ====================================================================================== reading
def blender_splits(root: str | os.PathLike) -> list[str]:
    """Split names of an object folder, from its `transforms_NAME.json` files (sorted)."""
    return sorted(p.name[len("transforms_"):-len(".json")] for p in Path(root).glob("transforms_*.json"))


def find_blender_objects(path: str | os.PathLike) -> list[Path]:
    """`path` itself if it is an object folder (has transforms_SPLIT.json), else its sub-folders that are (sorted;
    hidden and staging folders are never objects). A lone `transforms.json` is a capture (`data.formats`)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder")
    if blender_splits(path):
        return [path]
    found = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and blender_splits(p))
    if not found:
        raise FileNotFoundError(f"{path}: neither an object folder (transforms_train.json, transforms_test.json) "
                                "nor a folder of them")
    return found


def _transforms_path(root: Path, split: str) -> Path:
    if split.endswith(".json"):
        p = Path(split)
        return p if p.is_absolute() else root / p
    return root / f"transforms_{split}.json"


def _read_json(path: Path) -> dict:
    if not path.is_file():
        splits = blender_splits(path.parent) if path.parent.is_dir() else []
        hint = f" (this folder has splits: {', '.join(splits)})" if splits else ""
        raise FileNotFoundError(f"{path}: transforms file not found{hint}")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BlenderFormatError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise BlenderFormatError(f"{path}: expected a JSON object at the top level")
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise BlenderFormatError(f"{path}: missing or empty 'frames' list")
    return data


def _resolve_image(json_path: Path, frame: dict, index: int) -> Path:
    if "file_path" not in frame:
        raise BlenderFormatError(f"{json_path}: frame {index} has no 'file_path'")
    rel = str(frame["file_path"])
    base = (json_path.parent / rel)
    candidates = [base] if base.suffix.lower() in {e.lower() for e in IMAGE_EXTENSIONS} else []
    candidates += [base.with_name(base.name + ext) for ext in IMAGE_EXTENSIONS]
    candidates.append(base)
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"{json_path}: frame {index}: image {rel!r} not found (looked for {base} with "
                            f"extensions {', '.join(IMAGE_EXTENSIONS[:4])})")


def _matrix(json_path: Path, frame: dict, index: int) -> np.ndarray:
    if "transform_matrix" not in frame:
        raise BlenderFormatError(f"{json_path}: frame {index} has no 'transform_matrix'")
    try:
        m = np.asarray(frame["transform_matrix"], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise BlenderFormatError(f"{json_path}: frame {index}: transform_matrix is not numeric ({e})") from e
    if m.shape == (3, 4):
        m = np.concatenate([m, [[0.0, 0.0, 0.0, 1.0]]])
    if m.shape != (4, 4):
        raise BlenderFormatError(f"{json_path}: frame {index}: transform_matrix must be 4x4 or 3x4, got {m.shape}")
    if not np.isfinite(m).all():
        raise BlenderFormatError(f"{json_path}: frame {index}: transform_matrix contains NaN or Inf")
    if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-6):
        raise BlenderFormatError(f"{json_path}: frame {index}: transform_matrix last row must be [0, 0, 0, 1]")
    rot = m[:3, :3]
    norms = np.linalg.norm(rot, axis=0)
    if np.any(norms < 1e-8):
        raise BlenderFormatError(f"{json_path}: frame {index}: transform_matrix has a zero rotation column")
    rot = rot / norms
    if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-3) or np.linalg.det(rot) < 0:
        raise BlenderFormatError(f"{json_path}: frame {index}: transform_matrix rotation is not a rotation "
                                 f"(columns not orthogonal or a reflection)")
    m = m.copy()
    m[:3, :3] = rot
    return m


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as e:
        raise BlenderFormatError(f"{path}: cannot read image ({e})") from e


def _intrinsics(json_path: Path, data: dict, frame: dict, index: int, width: int, height: int) -> np.ndarray:
    def get(key):
        return frame.get(key, data.get(key))

    def num(key):
        v = get(key)
        try:
            v = float(v)
        except (TypeError, ValueError) as e:
            raise BlenderFormatError(f"{json_path}: frame {index}: {key!r} is not a number ({v!r})") from e
        if not math.isfinite(v):
            raise BlenderFormatError(f"{json_path}: frame {index}: {key!r} is not finite")
        return v

    def positive(key):
        v = num(key)
        if not v > 0:
            raise BlenderFormatError(f"{json_path}: frame {index}: {key!r} must be > 0, got {v}")
        return v

    def angle(key):  # a pinhole field of view: radians in (0, MAX_FOV)
        v = num(key)
        if not 0 < v < MAX_FOV:
            raise BlenderFormatError(f"{json_path}: frame {index}: {key!r} = {v} rad ({math.degrees(v):.1f}°) is not "
                                     f"a pinhole field of view; expected radians in (0, {MAX_FOV:.4f}) "
                                     f"(< {math.degrees(MAX_FOV):.0f}°)")
        return v

    k_json = get("intrinsic_matrix")
    ref_w = positive("w") if get("w") is not None else float(width)
    ref_h = positive("h") if get("h") is not None else float(height)
    if k_json is not None:
        k = np.asarray(k_json, dtype=np.float64)
        if k.shape != (3, 3) or not np.isfinite(k).all():
            raise BlenderFormatError(f"{json_path}: frame {index}: intrinsic_matrix must be a finite 3x3 matrix")
        fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    else:
        if get("fl_x") is not None:
            fx = num("fl_x")
        elif get("camera_angle_x") is not None:
            fx = 0.5 * ref_w / math.tan(0.5 * angle("camera_angle_x"))
        else:
            raise BlenderFormatError(f"{json_path}: no intrinsics for frame {index}: expected 'camera_angle_x', "
                                     f"'fl_x' or 'intrinsic_matrix'")
        if get("fl_y") is not None:
            fy = num("fl_y")
        elif get("camera_angle_y") is not None:
            fy = 0.5 * ref_h / math.tan(0.5 * angle("camera_angle_y"))
        else:
            fy = fx
        cx = num("cx") if get("cx") is not None else 0.5 * ref_w
        cy = num("cy") if get("cy") is not None else 0.5 * ref_h
    if not (fx > 0 and fy > 0):
        raise BlenderFormatError(f"{json_path}: frame {index}: focal lengths must be positive, got {fx}, {fy}")
    if not (2 * math.atan(0.5 * ref_w / fx) < MAX_FOV and 2 * math.atan(0.5 * ref_h / fy) < MAX_FOV):
        raise BlenderFormatError(f"{json_path}: frame {index}: focal lengths {fx:.4g}, {fy:.4g} px for a {ref_w:g}x"
                                 f"{ref_h:g} image give a field of view of {math.degrees(MAX_FOV):.0f}° or more, "
                                 "which a pinhole camera cannot have")
    sx, sy = width / ref_w, height / ref_h
    return np.array([[fx * sx, 0.0, cx * sx], [0.0, fy * sy, cy * sy], [0.0, 0.0, 1.0]])


def read_blender_cameras(
    root: str | os.PathLike, split: str = "train", near: float = 0.01, far: float = 1e10,
) -> tuple[Cameras, list[Path]]:
    """Cameras (OpenCV, at the images' native size) and image paths of one split, without decoding images.

    `split` is a split name ("train" → transforms_train.json) or a JSON file name / path ("transforms.json")."""
    root = Path(root)
    json_path = _transforms_path(root, split)
    data = _read_json(json_path)
    frames = data["frames"]
    paths, mats, ks, size = [], [], [], None
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise BlenderFormatError(f"{json_path}: frame {i} is not a JSON object")
        path = _resolve_image(json_path, frame, i)
        mats.append(_matrix(json_path, frame, i))
        w, h = _image_size(path)
        if size is None:
            size = (w, h)
        elif (w, h) != size:
            raise BlenderFormatError(f"{json_path}: inconsistent image sizes: {paths[0]} is {size[0]}x{size[1]} "
                                     f"but {path} is {w}x{h}")
        ks.append(_intrinsics(json_path, data, frame, i, w, h))
        paths.append(path)
        for key in ("k1", "k2", "k3", "p1", "p2"):
            value = frame.get(key, data.get(key, 0.0))
            try:
                value = float(value or 0.0)
            except (TypeError, ValueError):
                raise BlenderFormatError(f"{json_path}: frame {i}: {key!r} is not a number ({value!r})") from None
            if value != 0.0:
                warnings.warn(f"{json_path}: lens distortion ({key}) is ignored; undistort the images first",
                              stacklevel=2)
                break
    if len(mats) > 1 and all(np.allclose(m, mats[0], rtol=0, atol=1e-9) for m in mats[1:]):
        raise BlenderFormatError(f"{json_path}: all {len(mats)} frames have the same transform_matrix; the views "
                                 "need distinct camera poses")
    c2w = torch.from_numpy(np.stack(mats)).float()
    k = torch.from_numpy(np.stack(ks)).float()
    return Cameras.from_blender(c2w, k, size[0], size[1], near, far), paths


def _load_rgba(path: Path) -> np.ndarray:
    """Float32 (H, W, 4) in [0, 1]; alpha 1 for images without transparency."""
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64) / 65535.0
                return np.concatenate([np.repeat(arr[..., None], 3, -1), np.ones_like(arr[..., None])], -1
                                      ).astype(np.float32)
            rgba = im.convert("RGBA") if has_alpha else im.convert("RGB")
            arr = np.asarray(rgba, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BlenderFormatError(f"{path}: corrupt or unreadable image ({e})") from e
    if arr.shape[-1] == 3:
        arr = np.concatenate([arr, np.ones_like(arr[..., :1])], -1)
    return arr


def load_blender_split(
    root: str | os.PathLike, split: str = "train", *, background: Sequence[float] = (1.0, 1.0, 1.0),
    resolution: int | tuple[int, int] | None = None, normalization: SceneNormalization | None = None,
    indices: Sequence[int] | None = None, near: float = 0.01, far: float = 1e10,
) -> ObjectViews:
    """Load one split of a Blender-layout object.

    Args:
        root: the object folder.
        split: "train", "val", "test" (→ transforms_{split}.json) or a JSON file name such as "transforms.json".
        background: RGB in [0, 1] that RGBA images are composited on.
        resolution: None (native), an int (square W = H = int) or (width, height); intrinsics follow (see
            `ObjectViews.resized`).
        normalization: applied to the cameras (see `SceneNormalization`); None leaves them in dataset units.
        indices: load only these frames (in this order).
        near, far: the cameras' clipping range (in dataset units, before normalization; normalization scales them).
    """
    root = Path(root)
    cameras, paths = read_blender_cameras(root, split, near, far)
    if indices is not None:
        idx = [int(i) for i in indices]
        bad = [i for i in idx if not 0 <= i < len(paths)]
        if bad:
            raise IndexError(f"{_transforms_path(root, split)}: frame indices {bad} out of range 0..{len(paths) - 1}")
        cameras = Cameras(cameras.world_to_camera[idx], cameras.intrinsics[idx], cameras.width, cameras.height,
                          cameras.near, cameras.far)
        paths = [paths[i] for i in idx]
    bg = np.asarray(background, dtype=np.float32).reshape(3)
    if np.any(bg < 0) or np.any(bg > 1):
        raise ValueError(f"background must be RGB in [0, 1], got {background}")
    images, masks = [], []
    for path in paths:
        rgba = _load_rgba(path)
        if rgba.shape[:2] != (cameras.height, cameras.width):
            raise BlenderFormatError(f"{path}: image is {rgba.shape[1]}x{rgba.shape[0]}, its header said "
                                     f"{cameras.width}x{cameras.height}")
        a = rgba[..., 3:]
        images.append(rgba[..., :3] * a + bg * (1.0 - a))
        masks.append(a)
    views = ObjectViews(torch.from_numpy(np.stack(images)), cameras, torch.from_numpy(np.stack(masks)), root.name,
                        [str(p) for p in paths], tuple(float(x) for x in bg))
    if resolution is not None:
        w, h = (resolution, resolution) if isinstance(resolution, int) else (int(resolution[0]), int(resolution[1]))
        views = views.resized(w, h)
    if normalization is not None:
        views = ObjectViews(views.images, normalization.apply(views.cameras), views.masks, views.name,
                            views.file_paths, views.background)
    return views

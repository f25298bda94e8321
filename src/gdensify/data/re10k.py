"""RealEstate10K / ACID chunk reader (the pixelSplat / MVSplat layout): chunks, scenes and posed views.

On-disk layout (`DIR` is a dataset root)::

    DIR/train/000000.torch, 000001.torch, ...   torch-saved lists of scene dicts
    DIR/train/index.json                        {scene key: chunk file name}
    DIR/test/...                                the same for the test split
    DIR/evaluation_index.json                   optional (MVSplat's assets/evaluation_index_re10k.json format)

Each scene dict has exactly the keys

- ``url`` (str), ``key`` (str, the scene id),
- ``timestamps``: int64 tensor (V,),
- ``cameras``: float tensor (V, 18) = [fx/W, fy/H, cx/W, cy/H, 0, 0, w2c 3x4 row-major]: normalized intrinsics and an
  OpenCV world-to-camera matrix (x right, y down, z forward). MVSplat inverts it to camera-to-world; we build
  `gdensify.Cameras` (which keeps world-to-camera) through `Cameras.from_normalized_intrinsics`, equivalently.
- ``images``: list of V uint8 tensors, each the encoded bytes of one JPEG frame (decoded with Pillow).

Frames become model inputs through `load_views`: decoded with Pillow, resized and centre-cropped by
`gdensify.data.shims.crop_transform` (exact intrinsics by default, or MVSplat's bit for bit), optionally mirrored
by `shims.flip_views`. Which frames: `gdensify.data.view_samplers`; the dataset over a root: `re10k_scenes`.

Loading: chunks are read with ``torch.load(..., weights_only=True)``, which accepts these lists of dicts of tensors,
strings and ints (the format written by pixelSplat's converters and by `gdensify.synthetic.scenes`). A chunk
that holds other Python objects (e.g. NumPy arrays) is refused with a message naming the file; pass
``trusted=True`` to fall back to ``weights_only=False`` (arbitrary code execution: only for files you trust).
Every format problem raises `RE10KFormatError`, whose message names the chunk file and the scene key.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..cameras import Cameras

from .shims import IntrinsicsMode, crop_transform, flip_views

REQUIRED_KEYS = ("url", "timestamps", "cameras", "images", "key")


# ---------------------------------------------------------------------------------------------------- errors
class RE10KFormatError(ValueError):
    """A chunk, a scene or an index is malformed. `file` and `scene` say where (either may be None)."""

    def __init__(self, message: str, *, file: str | os.PathLike | None = None, scene: str | None = None) -> None:
        self.file = None if file is None else str(file)
        self.scene = scene
        self.reason = message
        where = []
        if self.file is not None:
            where.append(f"file {self.file}")
        if scene is not None:
            where.append(f"scene {scene!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


# ---------------------------------------------------------------------------------------------------- chunks
@dataclass
class RawScene:
    """One validated scene dict of a chunk; frames stay JPEG-encoded until `decode_frame`."""

    key: str
    url: str
    timestamps: Tensor  # (V,) int64
    cameras: Tensor  # (V, 18) float
    images: list[Tensor]  # V uint8 tensors of JPEG bytes
    file: Path

    def __len__(self) -> int:
        return self.cameras.shape[0]

    def error(self, message: str) -> RE10KFormatError:
        return RE10KFormatError(message, file=self.file, scene=self.key)

    def decode_frame(self, index: int) -> Image.Image:
        """Frame `index` as an RGB PIL image (errors name file, scene and frame)."""
        if not 0 <= index < len(self):
            raise self.error(f"frame index {index} out of range for {len(self)} frames")
        data = self.images[index]
        try:
            image = Image.open(BytesIO(data.numpy().tobytes()))
            image.load()
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise self.error(f"frame {index}: cannot decode image bytes ({type(exc).__name__}: {exc})") from exc
        return image.convert("RGB")

    def camera_parameters(self) -> tuple[Float[Tensor, "V 4 4"], Float[Tensor, "V 4"]]:
        """(world-to-camera 4x4, normalized intrinsics fx, fy, cx, cy) in float64."""
        return parse_camera_vectors(self.cameras, file=self.file, scene=self.key)


def parse_camera_vectors(
    vectors: Tensor, *, file: str | os.PathLike | None = None, scene: str | None = None
) -> tuple[Float[Tensor, "V 4 4"], Float[Tensor, "V 4"]]:
    """RE10K 18-vectors -> (OpenCV world-to-camera (V,4,4), normalized intrinsics (V,4)), both float64."""
    if not isinstance(vectors, Tensor) or vectors.ndim != 2 or vectors.shape[1] != 18:
        shape = tuple(vectors.shape) if isinstance(vectors, Tensor) else type(vectors).__name__
        raise RE10KFormatError(f"'cameras' must be a (V, 18) tensor, got {shape}", file=file, scene=scene)
    v = vectors.detach().to(torch.float64)
    if not torch.isfinite(v).all():
        raise RE10KFormatError("'cameras' contains NaN or Inf", file=file, scene=scene)
    normalized = v[:, :4].clone()
    if (normalized[:, :2] <= 0).any():
        raise RE10KFormatError("'cameras' has non-positive focal lengths", file=file, scene=scene)
    w2c = torch.eye(4, dtype=torch.float64).repeat(len(v), 1, 1)
    w2c[:, :3, :] = v[:, 6:].reshape(-1, 3, 4)
    det = torch.linalg.det(w2c[:, :3, :3])
    if (det.abs() < 1e-6).any():
        bad = int(torch.nonzero(det.abs() < 1e-6)[0, 0])
        raise RE10KFormatError(f"'cameras' frame {bad} has a singular rotation", file=file, scene=scene)
    return w2c, normalized


def camera_vectors(world_to_camera: Tensor, normalized: Tensor) -> Float[Tensor, "V 18"]:
    """The inverse of `parse_camera_vectors`: (V,4,4) or (V,3,4) world-to-camera + (V,4) -> float32 (V,18)."""
    n = len(normalized)
    out = torch.zeros(n, 18, dtype=torch.float64)
    out[:, :4] = normalized.to(torch.float64)
    out[:, 6:] = world_to_camera[:, :3, :4].to(torch.float64).reshape(n, 12)
    return out.to(torch.float32)


def _validate_scene(item: object, file: Path, position: int) -> RawScene:
    label = f"#{position} in the chunk"
    if not isinstance(item, Mapping):
        raise RE10KFormatError(f"scene {label} is a {type(item).__name__}, not a dict", file=file)
    key = item.get("key")
    if not isinstance(key, str):
        raise RE10KFormatError(f"scene {label} has no string 'key' (got {type(key).__name__})", file=file,
                               scene=f"<{label}>")
    missing = [k for k in REQUIRED_KEYS if k not in item]
    if missing:
        raise RE10KFormatError(f"missing key(s) {missing}; a scene needs {list(REQUIRED_KEYS)}", file=file, scene=key)
    cameras, images, timestamps = item["cameras"], item["images"], item["timestamps"]
    parse_camera_vectors(cameras, file=file, scene=key)
    n = cameras.shape[0]
    if not isinstance(images, (list, tuple)):
        raise RE10KFormatError(f"'images' must be a list of uint8 tensors, got {type(images).__name__}",
                               file=file, scene=key)
    if len(images) != n:
        raise RE10KFormatError(f"{len(images)} images for {n} cameras", file=file, scene=key)
    for i, im in enumerate(images):
        if not isinstance(im, Tensor) or im.dtype != torch.uint8 or im.ndim != 1:
            what = f"{im.dtype} tensor of shape {tuple(im.shape)}" if isinstance(im, Tensor) else type(im).__name__
            raise RE10KFormatError(f"image {i} must be a 1-D uint8 tensor of encoded bytes, got {what}",
                                   file=file, scene=key)
    if not isinstance(timestamps, Tensor) or timestamps.shape != (n,):
        shape = tuple(timestamps.shape) if isinstance(timestamps, Tensor) else type(timestamps).__name__
        raise RE10KFormatError(f"'timestamps' must be a ({n},) tensor, got {shape}", file=file, scene=key)
    url = item["url"]
    if not isinstance(url, str):
        raise RE10KFormatError(f"'url' must be a string, got {type(url).__name__}", file=file, scene=key)
    return RawScene(key=key, url=url, timestamps=timestamps, cameras=cameras, images=list(images), file=file)


def _torch_load(path: Path, trusted: bool, scene: str | None) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if "Unsupported global" not in message:
            raise RE10KFormatError(f"corrupt or not a torch-saved chunk ({_first_line(message)})",
                                   file=path, scene=scene) from exc
        if not trusted:
            raise RE10KFormatError(
                "chunk holds Python objects other than tensors, strings and numbers, so "
                "torch.load(weights_only=True) refuses it "
                f"({_unsupported_global(message)}); if you trust this file, load it in Python with trusted=True "
                "(weights_only=False: unpickling can run arbitrary code)", file=path, scene=scene) from exc
        warnings.warn(f"{path}: weights_only=True refused the chunk ({_unsupported_global(message)}); "
                      "loading with weights_only=False because trusted=True", stacklevel=3)
    except FileNotFoundError as exc:
        raise RE10KFormatError("chunk file not found", file=path, scene=scene) from exc
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, TypeError) as exc:
        # a malformed pickle stream makes the weights-only unpickler fail in many ways (e.g. IndexError for a
        # text file starting with 't')
        raise RE10KFormatError(f"corrupt or not a torch-saved chunk ({type(exc).__name__}: "
                               f"{_first_line(str(exc))})", file=path, scene=scene) from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise RE10KFormatError(f"corrupt chunk ({type(exc).__name__}: {_first_line(str(exc))})",
                               file=path, scene=scene) from exc


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0][:300] if message.strip() else "no message"


def _unsupported_global(message: str) -> str:
    for line in message.splitlines():
        if "Unsupported global" in line:
            return line.split("WeightsUnpickler error:")[-1].strip()[:200]
    return "unsupported global"


def load_chunk(path: str | os.PathLike, *, trusted: bool = False, scene: str | None = None) -> list[RawScene]:
    """Load and validate one `.torch` chunk. `scene` (the key being looked for) only enriches error messages."""
    path = Path(path)
    data = _torch_load(path, trusted, scene)
    if not isinstance(data, (list, tuple)):
        raise RE10KFormatError(f"a chunk must be a list of scene dicts, got {type(data).__name__}",
                               file=path, scene=scene)
    try:
        scenes = [_validate_scene(item, path, i) for i, item in enumerate(data)]
    except RE10KFormatError as exc:
        if scene is None or exc.scene == scene:
            raise
        raise RE10KFormatError(f"{exc.reason} (while loading scene {scene!r})",
                               file=path, scene=exc.scene) from exc
    keys = [s.key for s in scenes]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise RE10KFormatError("scene key appears twice in the chunk", file=path, scene=dup)
    return scenes


class ChunkStore:
    """One split folder (`DIR/{split}`): its `index.json` and a small LRU cache of loaded chunks.

    Without `index.json` the index is built by loading every chunk once (with a warning)."""

    def __init__(self, split_dir: str | os.PathLike, *, trusted: bool = False, cache_size: int = 2) -> None:
        self.dir = Path(split_dir)
        self.trusted = trusted
        self.cache_size = max(1, int(cache_size))
        self._cache: OrderedDict[Path, dict[str, RawScene]] = OrderedDict()
        if not self.dir.is_dir():
            raise FileNotFoundError(f"RE10K split folder not found: {self.dir}")
        self.index: dict[str, Path] = self._read_index()

    def _read_index(self) -> dict[str, Path]:
        index_path = self.dir / "index.json"
        if not index_path.exists():
            warnings.warn(f"{index_path} not found; building the index by loading every chunk", stacklevel=3)
            index = {}
            for chunk in sorted(self.dir.glob("*.torch")):
                for scene in self._load(chunk).values():
                    index[scene.key] = chunk
            return index
        try:
            raw = json.loads(index_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RE10KFormatError(f"invalid JSON ({exc})", file=index_path) from exc
        if not isinstance(raw, dict):
            raise RE10KFormatError("index.json must map scene key -> chunk file name", file=index_path)
        index = {}
        for key, name in raw.items():
            if not isinstance(name, str):
                raise RE10KFormatError(f"chunk name must be a string, got {name!r}", file=index_path, scene=key)
            index[key] = self.dir / Path(name).name
        # Chunk order, then index order within a chunk: deterministic and chunk-local.
        order = sorted(index, key=lambda k: index[k].name)
        return {k: index[k] for k in order}

    @property
    def keys(self) -> list[str]:
        return list(self.index)

    @property
    def chunk_files(self) -> list[Path]:
        return sorted(set(self.index.values()))

    def _load(self, path: Path, scene: str | None = None) -> dict[str, RawScene]:
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        scenes = {s.key: s for s in load_chunk(path, trusted=self.trusted, scene=scene)}
        self._cache[path] = scenes
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return scenes

    def load_file(self, path: str | os.PathLike) -> list[RawScene]:
        return list(self._load(Path(path)).values())

    def scene(self, key: str) -> RawScene:
        if key not in self.index:
            raise RE10KFormatError(f"scene not listed in {self.dir / 'index.json'}", scene=key)
        path = self.index[key]
        scenes = self._load(path, scene=key)
        if key not in scenes:
            raise RE10KFormatError("index.json lists the scene in this chunk, but the chunk does not hold it",
                                   file=path, scene=key)
        return scenes[key]


# ---------------------------------------------------------------------------------------------------- views
@dataclass
class ViewOptions:
    """How frames become model inputs. `image_shape` (H, W) or None to keep the stored size."""

    image_shape: tuple[int, int] | None = (256, 256)
    near: float = 1.0
    far: float = 100.0
    intrinsics_mode: IntrinsicsMode = "exact"

    def __post_init__(self) -> None:
        if self.intrinsics_mode not in ("exact", "mvsplat"):
            raise ValueError(f"intrinsics_mode must be 'exact' or 'mvsplat', got {self.intrinsics_mode!r}")
        if not 0 < self.near < self.far:
            raise ValueError(f"need 0 < near < far, got {self.near}, {self.far}")
        if self.image_shape is not None:
            self.image_shape = (int(self.image_shape[0]), int(self.image_shape[1]))


def load_views(scene: RawScene, indices: Sequence[int] | Tensor, options: ViewOptions,
               flip: bool = False) -> tuple[Tensor, Cameras]:
    """Decode, resize and crop the frames `indices` of `scene`; return (images (V,H,W,3), Cameras)."""
    indices = [int(i) for i in indices]
    n = len(scene)
    outside = [i for i in indices if not 0 <= i < n]
    if outside:
        raise scene.error(f"frame ind{'ex' if len(outside) == 1 else 'ices'} {', '.join(map(str, outside))} out of "
                          f"range for {n} frames")
    w2c_all, normalized_all = scene.camera_parameters()
    images, normalized = [], []
    out_hw = None
    for i in indices:
        image = scene.decode_frame(i)
        in_hw = (image.height, image.width)
        if options.image_shape is None:
            out_hw_i, norm = in_hw, normalized_all[i]
        else:
            transform = crop_transform(in_hw, options.image_shape)
            image = transform.apply(image)
            out_hw_i = transform.out_hw
            norm = transform.map_normalized_intrinsics(normalized_all[i], options.intrinsics_mode)
        if out_hw is None:
            out_hw = out_hw_i
        elif out_hw != out_hw_i:
            raise scene.error(f"frames have different sizes {out_hw} and {out_hw_i}; set an image_shape")
        images.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0))
        normalized.append(norm)
    imgs = torch.stack(images)
    norm = torch.stack(normalized)
    w2c = w2c_all[indices]
    if flip:
        imgs, w2c, norm = flip_views(imgs, w2c, norm)
    c2w = torch.linalg.inv(w2c)
    cams = Cameras.from_normalized_intrinsics(c2w, norm, out_hw[1], out_hw[0], options.near, options.far)
    return imgs, cams.to(torch.float32)


__all__ = [
    "REQUIRED_KEYS", "RE10KFormatError", "RawScene", "parse_camera_vectors", "camera_vectors", "load_chunk",
    "ChunkStore", "ViewOptions", "load_views",
]

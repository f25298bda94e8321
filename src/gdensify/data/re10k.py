"""RealEstate10K / ACID chunk reader (the pixelSplat / MVSplat layout), evaluation index and view sampler.

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

Resize and crop (MVSplat's ``crop_shim``): every frame is resized with LANCZOS so that it covers the output shape
(scale = max(h_out/h_in, w_out/w_in), sizes rounded), then centre-cropped at offset ((h_s-h_out)//2, (w_s-w_out)//2).
With ``intrinsics_mode="exact"`` (default) the normalized intrinsics follow the pixels exactly:
``fx' = fx·w_s/w_out`` and ``cx' = (cx·w_s - col)/w_out`` (likewise y), so a 3D point projects to the same image
content before and after. ``intrinsics_mode="mvsplat"`` reproduces MVSplat's shim bit for bit in the intrinsics:
focal lengths are rescaled the same way but cx, cy are left unchanged, which is off by half a pixel when
``w_s - w_out`` is odd (e.g. RE10K's 640x360 -> 455x256 -> 256x256 gives cx = 128.0 instead of the exact 128.5).

Loading: chunks are read with ``torch.load(..., weights_only=True)``, which accepts these lists of dicts of tensors,
strings and ints (the format written by pixelSplat's converters and by `gdensify.data.synthetic_scenes`). A chunk
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
from typing import Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset

from gdensify.cameras import Cameras

REQUIRED_KEYS = ("url", "timestamps", "cameras", "images", "key")
IntrinsicsMode = Literal["exact", "mvsplat"]


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
                f"({_unsupported_global(message)}); if you trust this file, load it with trusted=True "
                "(weights_only=False: unpickling can run arbitrary code)", file=path, scene=scene) from exc
        warnings.warn(f"{path}: weights_only=True refused the chunk ({_unsupported_global(message)}); "
                      "loading with weights_only=False because trusted=True", stacklevel=3)
    except FileNotFoundError as exc:
        raise RE10KFormatError("chunk file not found", file=path, scene=scene) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
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


# ---------------------------------------------------------------------------------------------------- crop
@dataclass(frozen=True)
class CropTransform:
    """Resize (in_hw -> scaled_hw) then centre crop (offset row, col) to out_hw, in (height, width) order.

    Continuous pixel coordinates (pixel centres at +0.5) map as ``u' = u·w_s/w_in - col``,
    ``v' = v·h_s/h_in - row`` (Pillow's resize aligns the image edges)."""

    in_hw: tuple[int, int]
    scaled_hw: tuple[int, int]
    offset: tuple[int, int]
    out_hw: tuple[int, int]

    @property
    def resizes(self) -> bool:
        return self.scaled_hw != self.in_hw

    def map_pixels(self, uv: Tensor) -> Tensor:
        """Pixel coordinates (..., 2) in the input image -> in the output image."""
        scale = uv.new_tensor([self.scaled_hw[1] / self.in_hw[1], self.scaled_hw[0] / self.in_hw[0]])
        offset = uv.new_tensor([self.offset[1], self.offset[0]])
        return uv * scale - offset

    def map_normalized_intrinsics(self, normalized: Tensor, mode: IntrinsicsMode = "exact") -> Tensor:
        """Normalized (fx/W, fy/H, cx/W, cy/H) of the input -> of the output image."""
        (h_s, w_s), (row, col), (h_o, w_o) = self.scaled_hw, self.offset, self.out_hw
        out = normalized.clone()
        out[..., 0] = normalized[..., 0] * w_s / w_o
        out[..., 1] = normalized[..., 1] * h_s / h_o
        if mode == "exact":
            out[..., 2] = (normalized[..., 2] * w_s - col) / w_o
            out[..., 3] = (normalized[..., 3] * h_s - row) / h_o
        elif mode != "mvsplat":
            raise ValueError(f"intrinsics_mode must be 'exact' or 'mvsplat', got {mode!r}")
        return out

    def apply(self, image: Image.Image) -> Image.Image:
        if image.size != (self.in_hw[1], self.in_hw[0]):
            raise ValueError(f"image is {image.size[0]}x{image.size[1]}, transform expects "
                             f"{self.in_hw[1]}x{self.in_hw[0]}")
        if self.resizes:
            image = image.resize((self.scaled_hw[1], self.scaled_hw[0]), Image.LANCZOS)
        (row, col), (h, w) = self.offset, self.out_hw
        if (row, col) != (0, 0) or self.scaled_hw != self.out_hw:
            image = image.crop((col, row, col + w, row + h))
        return image


def crop_transform(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> CropTransform:
    """MVSplat's rescale-and-centre-crop geometry for an input of `in_hw` and an output of `out_hw` (H, W)."""
    (h_in, w_in), (h_out, w_out) = (int(in_hw[0]), int(in_hw[1])), (int(out_hw[0]), int(out_hw[1]))
    if min(h_in, w_in, h_out, w_out) <= 0:
        raise ValueError(f"image shapes must be positive, got {in_hw} -> {out_hw}")
    scale = max(h_out / h_in, w_out / w_in)
    h_s, w_s = max(h_out, round(h_in * scale)), max(w_out, round(w_in * scale))
    return CropTransform((h_in, w_in), (h_s, w_s), ((h_s - h_out) // 2, (w_s - w_out) // 2), (h_out, w_out))


# ---------------------------------------------------------------------------------------------------- evaluation index
@dataclass(frozen=True)
class EvaluationEntry:
    context: tuple[int, ...]
    target: tuple[int, ...]


def load_evaluation_index(source: str | os.PathLike | Mapping) -> dict[str, EvaluationEntry]:
    """Read `{scene key: {"context": [i, j], "target": [a, b, c]} | null}`; null entries are skipped.

    `source` is a JSON file or an already-parsed mapping. Order is preserved."""
    file = None
    if isinstance(source, Mapping):
        raw = source
    else:
        file = Path(source)
        try:
            raw = json.loads(file.read_text())
        except FileNotFoundError as exc:
            raise RE10KFormatError("evaluation index not found", file=file) from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RE10KFormatError(f"invalid JSON ({exc})", file=file) from exc
        if not isinstance(raw, dict):
            raise RE10KFormatError("an evaluation index must be a JSON object keyed by scene", file=file)
    entries = {}
    for key, value in raw.items():
        if value is None:
            continue
        if not isinstance(value, Mapping) or "context" not in value or "target" not in value:
            raise RE10KFormatError(f"entry must be null or have 'context' and 'target', got {value!r}",
                                   file=file, scene=key)
        parts = []
        for name in ("context", "target"):
            seq = value[name]
            if not isinstance(seq, (list, tuple)) or not seq or not all(
                    isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in seq):
                raise RE10KFormatError(f"'{name}' must be a non-empty list of frame indices, got {seq!r}",
                                       file=file, scene=key)
            parts.append(tuple(seq))
        entries[key] = EvaluationEntry(*parts)
    return entries


# ---------------------------------------------------------------------------------------------------- view sampler
@dataclass
class BoundedViewSampler:
    """MVSplat/pixelSplat's "bounded" training view sampler (two context views, targets between them).

    - The context gap (frames between the two context views) is drawn uniformly in [min_gap, max_gap], with
      max_gap clipped to V - 1 and min_gap raised to 2·min_distance_to_context. During the first
      `warm_up_steps` steps both bounds grow linearly from (initial_min_gap, initial_max_gap) to
      (min_gap, max_gap), as `schedule` in MVSplat.
    - The left context index is uniform in [0, V - 1 - gap]; the right one is left + gap.
    - `num_target_views` targets are drawn uniformly (with replacement, as MVSplat) in
      [left + min_distance_to_context, right - min_distance_to_context], both ends included.
    - `pixelsplat_gap_bug=True` reproduces the bug MVSplat keeps on purpose: max_gap = min(V - 1, min_gap), so the
      gap always equals the (scheduled) minimum; with MVSplat's RE10K settings (25->45 during warm-up, final 45/192)
      it grows from 25 to 45 frames and stays there.
    MVSplat's RE10K config: min_gap=45, max_gap=192, initial 25/45, warm_up_steps=150_000, 4 targets, bug on.
    A scene too short for the bounds raises ValueError (MVSplat skips it).
    """

    num_context_views: int = 2
    num_target_views: int = 4
    min_gap: int = 25
    max_gap: int = 45
    min_distance_to_context: int = 0
    warm_up_steps: int = 0
    initial_min_gap: int = 25
    initial_max_gap: int = 45
    pixelsplat_gap_bug: bool = False

    def __post_init__(self) -> None:
        if self.num_context_views != 2:
            raise ValueError("BoundedViewSampler supports exactly 2 context views (as MVSplat)")
        if self.num_target_views < 1:
            raise ValueError("num_target_views must be >= 1")
        if not (1 <= self.min_gap <= self.max_gap):
            raise ValueError(f"need 1 <= min_gap <= max_gap, got {self.min_gap}, {self.max_gap}")
        if not (1 <= self.initial_min_gap <= self.initial_max_gap):
            raise ValueError("need 1 <= initial_min_gap <= initial_max_gap")
        if self.min_distance_to_context < 0 or self.warm_up_steps < 0:
            raise ValueError("min_distance_to_context and warm_up_steps must be >= 0")

    def gap_bounds(self, step: int = 0) -> tuple[int, int]:
        """(min_gap, max_gap) at training step `step`, before clipping to the scene length."""
        if self.warm_up_steps <= 0:
            return self.min_gap, self.max_gap
        fraction = step / self.warm_up_steps

        def schedule(initial: int, final: int) -> int:
            return min(initial + int((final - initial) * fraction), final)

        return schedule(self.initial_min_gap, self.min_gap), schedule(self.initial_max_gap, self.max_gap)

    def sample(self, num_views: int, generator: torch.Generator | None = None,
               step: int = 0) -> tuple[Tensor, Tensor]:
        """(context indices (2,), target indices (num_target_views,)) as int64 tensors."""
        lo, hi = self.gap_bounds(step)
        hi = min(num_views - 1, lo if self.pixelsplat_gap_bug else hi)
        lo = max(2 * self.min_distance_to_context, lo)
        if hi < lo:
            raise ValueError(f"scene with {num_views} frames is too short for a context gap >= {lo}")
        gap = int(torch.randint(lo, hi + 1, (), generator=generator))
        left = int(torch.randint(0, num_views - gap, (), generator=generator))
        right = left + gap
        m = self.min_distance_to_context
        target = torch.randint(left + m, right - m + 1, (self.num_target_views,), generator=generator)
        return torch.tensor([left, right], dtype=torch.int64), target.to(torch.int64)


# ---------------------------------------------------------------------------------------------------- examples
@dataclass
class SceneExample:
    """Two sets of posed views of one scene. Images float32 in [0, 1], (V, H, W, 3)."""

    scene: str
    context_images: Float[Tensor, "Vc H W 3"]
    context_cameras: Cameras
    context_indices: Tensor
    target_images: Float[Tensor, "Vt H W 3"]
    target_cameras: Cameras
    target_indices: Tensor
    flipped: bool = False

    def to_view_example(self):
        """The library-wide `gdensify.data.batch.ViewExample` (inputs = context views, black backgrounds as in
        MVSplat), so scene data goes through the same training and evaluation code as objects."""
        from .batch import ViewExample  # local: batch.py belongs to the shared data layer

        return ViewExample(input_images=self.context_images, input_cameras=self.context_cameras,
                           target_images=self.target_images, target_cameras=self.target_cameras,
                           target_backgrounds=torch.zeros(len(self.target_cameras), 3), name=self.scene,
                           input_background=torch.zeros(3))


@dataclass
class SceneBatch:
    """`collate_scene_examples` output: images stacked to (B, V, H, W, 3), cameras one `Cameras` per example."""

    scenes: list[str]
    context_images: Tensor
    context_cameras: list[Cameras]
    context_indices: Tensor
    target_images: Tensor
    target_cameras: list[Cameras]
    target_indices: Tensor

    def __len__(self) -> int:
        return len(self.scenes)


def collate_scene_examples(examples: Sequence[SceneExample]) -> SceneBatch:
    """DataLoader `collate_fn` for `SceneExample`s (all with the same view counts and image size)."""
    return SceneBatch(
        scenes=[e.scene for e in examples],
        context_images=torch.stack([e.context_images for e in examples]),
        context_cameras=[e.context_cameras for e in examples],
        context_indices=torch.stack([e.context_indices for e in examples]),
        target_images=torch.stack([e.target_images for e in examples]),
        target_cameras=[e.target_cameras for e in examples],
        target_indices=torch.stack([e.target_indices for e in examples]),
    )


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
    for i in indices:
        if not 0 <= i < n:
            raise scene.error(f"frame index {i} out of range for {n} frames")
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


def flip_views(images: Tensor, world_to_camera: Tensor, normalized: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mirror images left-right and the world in x (MVSplat's augmentation, with the exact cx' = 1 - cx).

    w2c' = F·w2c·F with F = diag(-1, 1, 1, 1): the camera sees the mirrored world as the mirrored image."""
    f = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=world_to_camera.dtype))
    norm = normalized.clone()
    norm[..., 2] = 1.0 - normalized[..., 2]
    return images.flip(-2), f @ world_to_camera @ f, norm


def _mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix64 steps), stable across runs and platforms."""
    x = 0x9E3779B97F4A7C15
    mask = (1 << 64) - 1
    for p in parts:
        x = (x ^ (int(p) & mask)) & mask
        x = (x + 0x9E3779B97F4A7C15) & mask
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        x = z ^ (z >> 31)
    return x & ((1 << 63) - 1)


def _example(scene: RawScene, context: Sequence[int], target: Sequence[int], options: ViewOptions,
             flip: bool) -> SceneExample:
    c_img, c_cam = load_views(scene, context, options, flip)
    t_img, t_cam = load_views(scene, target, options, flip)
    return SceneExample(scene.key, c_img, c_cam, torch.tensor(list(context), dtype=torch.int64),
                        t_img, t_cam, torch.tensor(list(target), dtype=torch.int64), flip)


class RE10KDataset(Dataset):
    """Map-style dataset over one split of an RE10K-layout root.

    Two modes:
    - evaluation (``evaluation_index`` given: a JSON path or a parsed mapping): one item per non-null entry whose
      scene is in this split, with exactly the entry's context and target frames; deterministic. Entries for
      scenes absent from the split are skipped (`missing_scenes` lists them) or, with ``on_missing="error"``,
      raise.
    - training (no index): one item per scene; views drawn by ``view_sampler`` (default `BoundedViewSampler()`)
      with a `torch.Generator` seeded from (seed, epoch, item); call `set_epoch` / `set_step` between epochs.
      A scene too short for the sampler is replaced by the next item (deterministically).
    ``flip_augment`` mirrors an example with probability 0.5 (training only).
    Items are ordered chunk by chunk, so a small chunk cache (``chunk_cache`` chunks) suffices when read in order.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "test",
        *,
        image_shape: tuple[int, int] | None = (256, 256),
        near: float = 1.0,
        far: float = 100.0,
        intrinsics_mode: IntrinsicsMode = "exact",
        evaluation_index: str | os.PathLike | Mapping | None = None,
        view_sampler: BoundedViewSampler | None = None,
        seed: int = 0,
        flip_augment: bool = False,
        on_missing: Literal["skip", "error"] = "skip",
        trusted: bool = False,
        chunk_cache: int = 2,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.store = ChunkStore(self.root / split, trusted=trusted, cache_size=chunk_cache)
        self.options = ViewOptions(image_shape, near, far, intrinsics_mode)
        self.seed, self.epoch, self.step = int(seed), 0, 0
        self.flip_augment = flip_augment
        self.missing_scenes: list[str] = []
        if evaluation_index is not None:
            self.view_sampler = None
            entries = load_evaluation_index(evaluation_index)
            position = {k: i for i, k in enumerate(self.store.keys)}
            self.missing_scenes = [k for k in entries if k not in position]
            if self.missing_scenes and on_missing == "error":
                raise RE10KFormatError(
                    f"{len(self.missing_scenes)} evaluation-index scene(s) are not in {self.store.dir}, e.g. "
                    f"{self.missing_scenes[:3]}", scene=self.missing_scenes[0])
            keys = sorted((k for k in entries if k in position), key=position.__getitem__)
            self.items: list[tuple[str, EvaluationEntry | None]] = [(k, entries[k]) for k in keys]
        else:
            self.view_sampler = view_sampler or BoundedViewSampler()
            self.items = [(k, None) for k in self.store.keys]

    @classmethod
    def for_evaluation(cls, root: str | os.PathLike, index: str | os.PathLike | Mapping | None = None,
                       **kwargs) -> "RE10KDataset":
        """The test split with `index` (default ROOT/evaluation_index.json)."""
        index = Path(root) / "evaluation_index.json" if index is None else index
        return cls(root, "test", evaluation_index=index, **kwargs)

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_step(self, step: int) -> None:
        """Training step for the sampler's warm-up schedule."""
        self.step = int(step)

    def generator(self, item: int) -> torch.Generator:
        return torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch, item))

    def __getitem__(self, item: int | tuple[int, int]) -> SceneExample:
        """`item`, or in training `(item, example_seed)` (as `gdensify.training.sampling.StepSampler` yields):
        the views are then drawn from a generator seeded by `example_seed` instead of (seed, epoch, item)."""
        item, example_seed = item if isinstance(item, tuple) else (item, None)
        if not 0 <= item < len(self.items):
            raise IndexError(item)
        key, entry = self.items[item]
        if entry is not None:
            scene = self.store.scene(key)
            return _example(scene, entry.context, entry.target, self.options, False)
        for attempt in range(len(self.items)):
            key = self.items[(item + attempt) % len(self.items)][0]
            scene = self.store.scene(key)
            g = self.generator(item + attempt * len(self.items)) if example_seed is None else \
                torch.Generator().manual_seed(_mix_seed(example_seed, attempt, item))
            try:
                context, target = self.view_sampler.sample(len(scene), g, self.step)
            except ValueError:
                continue
            flip = self.flip_augment and bool(torch.rand((), generator=g) < 0.5)
            return _example(scene, context.tolist(), target.tolist(), self.options, flip)
        raise ValueError(f"no scene in {self.store.dir} is long enough for {self.view_sampler}")


class RE10KIterableDataset(IterableDataset):
    """Streaming training reader (MVSplat's way): chunks shuffled per epoch, scenes shuffled within a chunk,
    chunks sharded over DataLoader workers and over `world_size` ranks; scenes too short are skipped.

    Deterministic for a given (seed, epoch, rank, worker); call `set_epoch` before each epoch."""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        view_sampler: BoundedViewSampler | None = None,
        image_shape: tuple[int, int] | None = (256, 256),
        near: float = 1.0,
        far: float = 100.0,
        intrinsics_mode: IntrinsicsMode = "exact",
        seed: int = 0,
        shuffle: bool = True,
        flip_augment: bool = False,
        rank: int = 0,
        world_size: int = 1,
        trusted: bool = False,
    ) -> None:
        super().__init__()
        self.dir = Path(root) / split
        if not self.dir.is_dir():
            raise FileNotFoundError(f"RE10K split folder not found: {self.dir}")
        self.chunks = sorted(self.dir.glob("*.torch"))
        self.view_sampler = view_sampler or BoundedViewSampler()
        self.options = ViewOptions(image_shape, near, far, intrinsics_mode)
        self.seed, self.epoch, self.step = int(seed), 0, 0
        self.shuffle, self.flip_augment, self.trusted = shuffle, flip_augment, trusted
        self.rank, self.world_size = int(rank), int(world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_step(self, step: int) -> None:
        self.step = int(step)

    def __iter__(self) -> Iterator[SceneExample]:
        order = list(range(len(self.chunks)))
        if self.shuffle:
            g = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch))
            order = torch.randperm(len(order), generator=g).tolist()
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        shard, shards = self.rank * workers + worker, self.world_size * workers
        for position, chunk_id in enumerate(order):
            if position % shards != shard:
                continue
            path = self.chunks[chunk_id]
            scenes = load_chunk(path, trusted=self.trusted)
            g = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch, chunk_id))
            if self.shuffle:
                scenes = [scenes[i] for i in torch.randperm(len(scenes), generator=g).tolist()]
            for scene in scenes:
                try:
                    context, target = self.view_sampler.sample(len(scene), g, self.step)
                except ValueError:
                    continue
                flip = self.flip_augment and bool(torch.rand((), generator=g) < 0.5)
                yield _example(scene, context.tolist(), target.tolist(), self.options, flip)


__all__ = [
    "REQUIRED_KEYS", "RE10KFormatError", "RawScene", "parse_camera_vectors", "camera_vectors", "load_chunk",
    "ChunkStore", "CropTransform", "crop_transform", "EvaluationEntry", "load_evaluation_index",
    "BoundedViewSampler", "SceneExample", "SceneBatch", "collate_scene_examples", "ViewOptions", "load_views",
    "flip_views", "RE10KDataset", "RE10KIterableDataset",
]

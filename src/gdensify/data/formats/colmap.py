"""Reader for COLMAP sparse models (binary `.bin` or text `.txt`), written from COLMAP's documented formats.

Layout: ``FOLDER/sparse/0/{cameras,images,points3D}.{bin,txt}`` (also ``FOLDER/sparse/`` or the model folder itself)
and the images in ``FOLDER/images/`` (named as in the model), optional masks in ``FOLDER/masks/`` (COLMAP's
``NAME.png`` convention or the same stem). Frames are ordered by image name.

Cameras: SIMPLE_PINHOLE (f, cx, cy), PINHOLE (fx, fy, cx, cy), SIMPLE_RADIAL (f, cx, cy, k), RADIAL (f, cx, cy,
k1, k2), OPENCV (fx, fy, cx, cy, k1, k2, p1, p2) and OPENCV_FISHEYE (fx, fy, cx, cy, k1, k2, k3, k4); distorted
frames are undistorted when loaded, keeping their pinhole intrinsics. COLMAP stores world-to-camera poses (unit
quaternion qw qx qy qz and translation) in OpenCV camera axes and intrinsics with pixel centres at +0.5, which are
ours, so they are used as they are. `points3D` become `Capture.points`.

Why not pycolmap: on a truncated `images.bin` it reports "Rig with ID … does not exist" or `std::bad_alloc`; this
reader names the file, the record and the byte offset, and needs no 38 MB dependency.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...cameras import Cameras
from .capture import Capture, CaptureFormatError, CaptureFrame, attach_masks, image_size
from .distortion import LensDistortion

__all__ = ["read_colmap", "find_colmap_model", "COLMAP_MODELS", "ColmapCamera", "ColmapImage",
           "read_colmap_model", "quaternion_to_rotation"]

# model id → (name, number of parameters), from COLMAP's camera model list
COLMAP_MODELS = {0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
                 4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
                 8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12)}
_BY_NAME = {name: (mid, n) for mid, (name, n) in COLMAP_MODELS.items()}
SUPPORTED = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "OPENCV_FISHEYE")


@dataclass
class ColmapCamera:
    id: int
    model: str
    width: int
    height: int
    params: np.ndarray


@dataclass
class ColmapImage:
    id: int
    qvec: np.ndarray  # qw qx qy qz (world to camera)
    tvec: np.ndarray
    camera_id: int
    name: str


def quaternion_to_rotation(q: np.ndarray) -> np.ndarray:
    """Rotation matrix of a (normalised here) wxyz quaternion."""
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


# ====================================================================================== binary
class _Reader:
    def __init__(self, path: Path) -> None:
        self.path, self.data, self.pos = path, path.read_bytes(), 0

    def read(self, fmt: str, what: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise CaptureFormatError(f"{self.path}: truncated file: {what} needs {size} bytes at offset {self.pos} "
                                     f"but the file has {len(self.data)} bytes")
        out = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return out

    def string(self, what: str) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise CaptureFormatError(f"{self.path}: truncated file: {what} has no terminating NUL")
        s = self.data[self.pos:end].decode("utf-8", errors="replace")
        self.pos = end + 1
        return s

    def skip(self, n: int, what: str) -> None:
        if self.pos + n > len(self.data):
            raise CaptureFormatError(f"{self.path}: truncated file: {what} needs {n} bytes at offset {self.pos} "
                                     f"but the file has {len(self.data)} bytes")
        self.pos += n

    def done(self) -> None:
        if self.pos != len(self.data):
            raise CaptureFormatError(f"{self.path}: {len(self.data) - self.pos} unexpected bytes after the last "
                                     f"record (offset {self.pos})")


def _cameras_bin(path: Path) -> dict[int, ColmapCamera]:
    r = _Reader(path)
    (n,) = r.read("Q", "the camera count")
    cams = {}
    for i in range(n):
        cid, mid, w, h = r.read("IiQQ", f"camera record {i}")
        if mid not in COLMAP_MODELS:
            raise CaptureFormatError(f"{path}: camera {cid}: unknown camera model id {mid}")
        name, k = COLMAP_MODELS[mid]
        params = np.array(r.read("d" * k, f"camera {cid}'s {k} parameters"))
        cams[cid] = ColmapCamera(cid, name, w, h, params)
    r.done()
    return cams


def _images_bin(path: Path) -> list[ColmapImage]:
    r = _Reader(path)
    (n,) = r.read("Q", "the image count")
    images = []
    for i in range(n):
        (iid,) = r.read("I", f"image record {i}")
        pose = r.read("7d", f"image {iid}'s pose")
        (cid,) = r.read("I", f"image {iid}'s camera id")
        name = r.string(f"image {iid}'s name")
        (n2d,) = r.read("Q", f"image {name}'s point count")
        r.skip(24 * n2d, f"image {name}'s {n2d} 2D points")
        images.append(ColmapImage(iid, np.array(pose[:4]), np.array(pose[4:]), cid, name))
    r.done()
    return images


def _points_bin(path: Path) -> np.ndarray:
    r = _Reader(path)
    (n,) = r.read("Q", "the point count")
    xyz = np.empty((n, 3))
    for i in range(n):
        _, x, y, z, _, _, _, _, track = r.read("Q3d3BdQ", f"point record {i}")
        xyz[i] = (x, y, z)
        r.skip(8 * track, f"point record {i}'s track of {track}")
    r.done()
    return xyz


# ====================================================================================== text
def _text_lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise CaptureFormatError(f"{path}: not a text file ({e})") from e
    return [(n + 1, line.strip()) for n, line in enumerate(text.split("\n")) if not line.lstrip().startswith("#")]


def _numbers(path: Path, line_no: int, tokens: list[str], kind, what: str):
    try:
        return [kind(t) for t in tokens]
    except ValueError as e:
        raise CaptureFormatError(f"{path}: line {line_no}: {what}: {e}") from e


def _cameras_txt(path: Path) -> dict[int, ColmapCamera]:
    cams = {}
    for no, line in _text_lines(path):
        if not line:
            continue
        t = line.split()
        if len(t) < 4:
            raise CaptureFormatError(f"{path}: line {no}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS, got {line!r}")
        cid, w, h = _numbers(path, no, [t[0], t[2], t[3]], int, "camera id / size")
        if t[1] not in _BY_NAME:
            raise CaptureFormatError(f"{path}: line {no}: camera {cid}: unknown camera model {t[1]!r}")
        params = np.array(_numbers(path, no, t[4:], float, f"camera {cid}'s parameters"))
        if len(params) != _BY_NAME[t[1]][1]:
            raise CaptureFormatError(f"{path}: line {no}: camera {cid}: {t[1]} has {_BY_NAME[t[1]][1]} parameters, "
                                     f"got {len(params)}")
        cams[cid] = ColmapCamera(cid, t[1], w, h, params)
    return cams


def _images_txt(path: Path) -> list[ColmapImage]:
    images, lines, i = [], _text_lines(path), 0
    while i < len(lines):
        no, line = lines[i]
        i += 1  # the next line (2D points, possibly empty) belongs to this image
        if not line:
            continue
        t = line.split()
        if len(t) < 10:
            raise CaptureFormatError(f"{path}: line {no}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, got "
                                     f"{line!r}")
        iid, cid = _numbers(path, no, [t[0], t[8]], int, "image / camera id")
        pose = _numbers(path, no, t[1:8], float, f"image {iid}'s pose")
        images.append(ColmapImage(iid, np.array(pose[:4]), np.array(pose[4:]), cid, " ".join(t[9:])))
        i += 1
    return images


def _points_txt(path: Path) -> np.ndarray:
    rows = []
    for no, line in _text_lines(path):
        if not line:
            continue
        t = line.split()
        if len(t) < 8:
            raise CaptureFormatError(f"{path}: line {no}: expected POINT3D_ID X Y Z R G B ERROR TRACK, got {line!r}")
        rows.append(_numbers(path, no, t[1:4], float, "point coordinates"))
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


# ====================================================================================== model
def find_colmap_model(folder: Path) -> Path | None:
    """The model folder: FOLDER itself, FOLDER/sparse/0, FOLDER/sparse or FOLDER/colmap/sparse/0 (first with a
    cameras file)."""
    for cand in (folder, folder / "sparse" / "0", folder / "sparse", folder / "colmap" / "sparse" / "0"):
        if (cand / "cameras.bin").is_file() or (cand / "cameras.txt").is_file():
            return cand
    return None


def read_colmap_model(model: Path) -> tuple[dict[int, ColmapCamera], list[ColmapImage], np.ndarray | None]:
    """(cameras by id, images, points (N, 3) or None) of a model folder; binary files win over text."""
    kind = "bin" if (model / "cameras.bin").is_file() else "txt"
    files = {n: model / f"{n}.{kind}" for n in ("cameras", "images", "points3D")}
    if not files["images"].is_file():
        raise CaptureFormatError(f"{model}: has {files['cameras'].name} but no {files['images'].name}")
    if kind == "bin":
        cams, images = _cameras_bin(files["cameras"]), _images_bin(files["images"])
        points = _points_bin(files["points3D"]) if files["points3D"].is_file() else None
    else:
        cams, images = _cameras_txt(files["cameras"]), _images_txt(files["images"])
        points = _points_txt(files["points3D"]) if files["points3D"].is_file() else None
    if points is not None and not np.isfinite(points).all():
        raise CaptureFormatError(f"{files['points3D']}: sparse points contain NaN or Inf")
    return cams, images, points


def _pinhole_and_distortion(cam: ColmapCamera, source: Path) -> tuple[np.ndarray, LensDistortion | None]:
    p = cam.params
    if not np.isfinite(p).all():
        raise CaptureFormatError(f"{source}: camera {cam.id}: parameters contain NaN or Inf")
    if cam.model not in SUPPORTED:
        raise CaptureFormatError(f"{source}: camera {cam.id}: camera model {cam.model} is not supported (supported: "
                                 f"{', '.join(SUPPORTED)}); run COLMAP's image_undistorter first")
    d = None
    if cam.model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        fx = fy = p[0]
        cx, cy = p[1], p[2]
        if cam.model == "SIMPLE_RADIAL":
            d = LensDistortion("opencv", k1=p[3])
        elif cam.model == "RADIAL":
            d = LensDistortion("opencv", k1=p[3], k2=p[4])
    else:
        fx, fy, cx, cy = p[:4]
        if cam.model == "OPENCV":
            d = LensDistortion("opencv", k1=p[4], k2=p[5], p1=p[6], p2=p[7])
        elif cam.model == "OPENCV_FISHEYE":
            d = LensDistortion("fisheye", k1=p[4], k2=p[5], k3=p[6], k4=p[7])
    if not (fx > 0 and fy > 0):
        raise CaptureFormatError(f"{source}: camera {cam.id}: focal lengths must be positive, got {fx}, {fy}")
    k = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    return k, (None if d is None or d.is_identity else d)


def _images_folder(folder: Path, model: Path) -> Path:
    for cand in (folder / "images", model.parent / "images", model.parent.parent / "images",
                 model.parent.parent.parent / "images"):
        if cand.is_dir():
            return cand
    raise CaptureFormatError(f"{model}: no images folder (looked for {folder / 'images'} and the folders above the "
                             f"model)")


def read_colmap(folder: str | os.PathLike) -> Capture:
    """Read a COLMAP sparse model and its images into a `Capture` (see the module doc)."""
    folder = Path(folder)
    model = find_colmap_model(folder)
    if model is None:
        raise CaptureFormatError(f"{folder}: no COLMAP model (looked for cameras.bin / cameras.txt in {folder}, "
                                 f"{folder / 'sparse' / '0'}, {folder / 'sparse'})")
    cams, images, points = read_colmap_model(model)
    if not images:
        raise CaptureFormatError(f"{model}: the model has no registered images")
    images_dir = _images_folder(folder, model)
    source = model / ("images.bin" if (model / "images.bin").is_file() else "images.txt")
    images = sorted(images, key=lambda im: im.name)
    w2cs, ks, frames, size = [], [], [], None
    for im in images:
        if im.camera_id not in cams:
            raise CaptureFormatError(f"{source}: image {im.name}: camera id {im.camera_id} is not in the cameras file")
        cam = cams[im.camera_id]
        path = images_dir / im.name
        if not path.is_file():
            raise CaptureFormatError(f"{source}: image {im.name}: file not found ({path})")
        if not (np.isfinite(im.qvec).all() and np.isfinite(im.tvec).all()):
            raise CaptureFormatError(f"{source}: image {im.name}: pose contains NaN or Inf")
        if np.linalg.norm(im.qvec) < 1e-8:
            raise CaptureFormatError(f"{source}: image {im.name}: zero rotation quaternion")
        k, d = _pinhole_and_distortion(cam, source)
        actual = image_size(path, im.name)
        if actual != (cam.width, cam.height):
            raise CaptureFormatError(f"{path}: frame {im.name}: image is {actual[0]}x{actual[1]} but camera "
                                     f"{cam.id} is {cam.width}x{cam.height}")
        if size is None:
            size = actual
        elif actual != size:
            raise CaptureFormatError(f"{source}: frames have different image sizes ({size[0]}x{size[1]} and "
                                     f"{actual[0]}x{actual[1]} for {im.name}); one size per capture is supported")
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = quaternion_to_rotation(im.qvec), im.tvec
        w2cs.append(w2c)
        ks.append(k)
        frames.append(CaptureFrame(im.name, path, None, d))
    attach_masks(frames, images_dir.parent, source)
    cameras = Cameras(torch.from_numpy(np.stack(w2cs)), torch.from_numpy(np.stack(ks)), size[0], size[1])
    return Capture(cameras, frames, "colmap", folder, None if points is None else torch.from_numpy(points),
                   extras={"model": str(model)})

"""Videos along camera paths: frames → `.mp4` (imageio-ffmpeg's bundled ffmpeg, optional extra `video`) or `.gif`.

`render_orbit_video` renders one or more Gaussian sets (e.g. coarse and GD) along one camera path and writes them
side by side, labelled, into one video; `render_video_command` is the body of `gdensify render PLY --video`.
Frames are uint8 arrays (H, W, 3). An `.mp4` needs even sides (yuv420p): frames are padded by one background
row/column when needed. Without imageio-ffmpeg an `.mp4` request writes a `.gif` beside it and prints a note.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..cameras import Cameras
from ..gaussians import Gaussians
from .atomic import atomic_path

__all__ = ["ffmpeg_status", "write_video", "count_video_frames", "render_frames", "side_by_side_frames",
           "orbit_around", "path_cameras", "load_cameras_file", "save_cameras_file", "render_orbit_video", "item_orbit_video",
           "render_video_command",
           "PATHS"]

PATHS = ("orbit", "interpolate", "spiral")
_INSTALL_HINT = "pip install 'gdensify[video]' (imageio-ffmpeg, a bundled ffmpeg)"


def ffmpeg_status() -> tuple[bool, str]:
    """(True, path to ffmpeg) when imageio-ffmpeg imports and finds its binary, else (False, why)."""
    try:
        import imageio_ffmpeg  # noqa: PLC0415

        return True, imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as err:  # ImportError, or RuntimeError when no binary is found
        return False, f"{type(err).__name__}: {err}"


def _pad_even(frame: np.ndarray, value: int) -> np.ndarray:
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    out = np.full((h + h % 2, w + w % 2, 3), value, dtype=np.uint8)
    out[:h, :w] = frame
    return out


def write_video(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: float = 30.0, quality: int = 8,
                overwrite: bool = False) -> Path:
    """Write uint8 frames (H, W, 3), all of one size, to `path` (`.mp4` or `.gif`) atomically; returns the path
    written (a `.gif` beside an `.mp4` request when imageio-ffmpeg is missing, with a note on stderr).

    mp4: H.264 (libx264, yuv420p), `quality` 0–10 (imageio-ffmpeg's scale). gif: looping, 1/fps per frame
    (GIF stores centiseconds, so the rate is rounded to 100/round(100/fps))."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise ValueError(f"{path}: video files must end in .mp4 or .gif")
    if not fps > 0:
        raise ValueError(f"video fps must be > 0, got {fps}")
    if suffix == ".mp4":
        ok, why = ffmpeg_status()
        if not ok:
            path = path.with_suffix(".gif")
            print(f"note: no ffmpeg ({why}); writing {path} instead — for .mp4: {_INSTALL_HINT}", file=sys.stderr)
            suffix = ".gif"
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    if suffix == ".gif":
        return _write_gif(frames, path, fps)
    import imageio_ffmpeg  # noqa: PLC0415

    count = 0
    with atomic_path(path) as tmp:
        writer = None
        try:
            for frame in frames:
                frame = _check_frame(frame)
                if writer is None:
                    size = frame.shape[:2]
                    frame = _pad_even(frame, 255)
                    writer = imageio_ffmpeg.write_frames(
                        str(tmp), (frame.shape[1], frame.shape[0]), fps=fps, quality=quality, codec="libx264",
                        macro_block_size=1, output_params=["-f", "mp4"])
                    writer.send(None)
                elif frame.shape[:2] != size:
                    raise ValueError(f"video frames differ in size: {size} then {frame.shape[:2]}")
                else:
                    frame = _pad_even(frame, 255)
                writer.send(np.ascontiguousarray(frame))
                count += 1
        finally:
            if writer is not None:
                writer.close()
        if count == 0:
            raise ValueError(f"{path}: no frames to write")
    return path


def _check_frame(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"video frames must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
    return frame


def _write_gif(frames: Iterable[np.ndarray], path: Path, fps: float) -> Path:
    images = [Image.fromarray(_check_frame(f)) for f in frames]
    if not images:
        raise ValueError(f"{path}: no frames to write")
    if any(im.size != images[0].size for im in images):
        raise ValueError("video frames differ in size")
    duration = max(2, round(100 / fps)) * 10  # milliseconds, whole centiseconds (≥ 2: browsers clamp smaller)
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0,
                       disposal=1)
    return path


def count_video_frames(path: str | os.PathLike) -> int:
    """Number of frames in an `.mp4` (decoded by imageio-ffmpeg) or `.gif` file."""
    path = Path(path)
    if path.suffix.lower() == ".gif":
        with Image.open(path) as im:
            return int(im.n_frames)
    import imageio_ffmpeg  # noqa: PLC0415

    return int(imageio_ffmpeg.count_frames_and_secs(str(path))[0])


# ------------------------------------------------------------------------------------------ frames
def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


def render_frames(gaussians: Gaussians, cameras: Cameras, background: Sequence[float] = (1.0, 1.0, 1.0),
                  backend: str = "auto", progress: bool = True, desc: str = "render") -> Iterator[np.ndarray]:
    """Render one camera at a time (bounded memory) and yield uint8 frames (H, W, 3), with a progress bar."""
    from tqdm import tqdm  # noqa: PLC0415

    from ..render import rasterize  # noqa: PLC0415

    bg = torch.tensor([float(c) for c in background], dtype=gaussians.dtype, device=gaussians.device)
    cams = cameras.to(gaussians.device)
    for i in tqdm(range(len(cams)), desc=desc, unit="frame", disable=not progress, file=sys.stderr):
        with torch.no_grad():  # not around the yield: grad mode would leak into the consumer
            frame = _to_uint8(rasterize(gaussians, cams[i], background=bg, backend=backend).image[0])
        yield frame


def _label(frame: np.ndarray, text: str) -> np.ndarray:
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = draw.textbbox((0, 0), text)
    draw.rectangle((2, 2, 6 + x1 - x0, 6 + y1 - y0), fill=(255, 255, 255))
    draw.text((4 - x0, 4 - y0), text, fill=(0, 0, 0))
    return np.asarray(image)


def side_by_side_frames(frames: Sequence[np.ndarray], labels: Sequence[str] | None = None, gap: int = 4,
                        gap_value: int = 255) -> np.ndarray:
    """Concatenate same-height uint8 frames left to right with a `gap`-pixel separator, each labelled top-left."""
    if labels is not None and len(labels) != len(frames):
        raise ValueError(f"{len(labels)} labels for {len(frames)} frames")
    h = frames[0].shape[0]
    if any(f.shape[0] != h for f in frames):
        raise ValueError("side_by_side_frames needs frames of one height")
    parts = []
    for i, frame in enumerate(frames):
        parts.append(_label(frame, labels[i]) if labels else frame)
        if i + 1 < len(frames):
            parts.append(np.full((h, gap, 3), gap_value, dtype=np.uint8))
    return np.concatenate(parts, axis=1)


# ------------------------------------------------------------------------------------------ camera paths
def orbit_around(gaussians: Gaussians, n_frames: int, width: int, height: int, elevation: float = math.radians(20),
                 fov_x: float = math.radians(40), up: Sequence[float] = (0.0, 0.0, 1.0),
                 radius: float | None = None) -> Cameras:
    """An `orbit` around the Gaussians' centre (per-axis median of the means with opacity ≥ 0.1) at a radius that
    keeps the 95th-percentile distance from the centre inside the view (unless `radius` is given)."""
    from ..render.camera_paths import orbit  # noqa: PLC0415

    g = gaussians.detach().to("cpu", torch.float32)
    means = g.means[g.opacities >= 0.1] if bool((g.opacities >= 0.1).any()) else g.means
    if len(means) == 0:
        raise ValueError("cannot place an orbit around zero Gaussians")
    center = means.median(dim=0).values
    if radius is None:
        extent = float(torch.quantile((means - center).norm(dim=-1), 0.95)) if len(means) > 1 else 1.0
        half_fov = 0.5 * min(fov_x, 2 * math.atan(math.tan(0.5 * fov_x) * height / width))
        radius = 1.15 * max(extent, 1e-3) / math.sin(half_fov)
    return orbit(center, radius, n_frames, width, height, elevation=elevation, fov_x=fov_x, up=tuple(up))


def load_cameras_file(path: str | os.PathLike) -> Cameras:
    """Cameras from a capture folder in any layout `data.formats` reads (COLMAP, LLFF, NeuS, transforms.json,
    Blender: the frames' cameras in the capture's own frame, where `reconstruct` writes its `.ply` files), a
    Blender `transforms*.json` (its images must exist) or a gdensify cameras JSON: {"width", "height",
    "world_to_camera": [C × 4×4], "intrinsics": [C × 3×3], optional "near", "far"} (OpenCV axes, pixels)."""
    import json  # noqa: PLC0415

    path = Path(path)
    if path.is_dir():
        from ..data.formats import read_capture  # noqa: PLC0415

        return read_capture(path).cameras.to(torch.float32)
    if not path.is_file():
        raise FileNotFoundError(f"no cameras file at {path}")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if isinstance(data, dict) and "frames" in data:
        from ..data.blender import read_blender_cameras  # noqa: PLC0415

        return read_blender_cameras(path.parent, path.name)[0]
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    for key in ("width", "height", "world_to_camera", "intrinsics"):
        if key not in data:
            raise ValueError(f"{path}: missing field {key!r} (a gdensify cameras JSON or a Blender transforms file)")
    try:
        w2c = torch.tensor(data["world_to_camera"], dtype=torch.float32)
        k = torch.tensor(data["intrinsics"], dtype=torch.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: world_to_camera/intrinsics are not numeric matrices ({err})") from err
    try:
        return Cameras(w2c, k, int(data["width"]), int(data["height"]), float(data.get("near", 0.01)),
                       float(data.get("far", 1e10)))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def save_cameras_file(cameras: Cameras, path: str | os.PathLike) -> Path:
    """Write `cameras` as a gdensify cameras JSON (the layout `load_cameras_file` reads), atomically."""
    import json  # noqa: PLC0415

    path = Path(path)
    data = {"convention": "OpenCV axes (x right, y down, z forward), world-to-camera, intrinsics in pixels",
            "width": cameras.width, "height": cameras.height, "near": cameras.near, "far": cameras.far,
            "world_to_camera": cameras.world_to_camera.detach().cpu().double().tolist(),
            "intrinsics": cameras.intrinsics.detach().cpu().double().tolist()}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data) + "\n")
    return path


def path_cameras(kind: str, gaussians: Gaussians, n_frames: int, width: int, height: int,
                 cameras_file: str | os.PathLike | None = None, elevation: float = math.radians(20),
                 up: Sequence[float] = (0.0, 0.0, 1.0), radius: float | None = None) -> Cameras:
    """Cameras for `kind` in `PATHS`: `orbit` around the Gaussians; `interpolate` through the cameras of
    `cameras_file` (closed loop); `spiral` around their mean pose, focused with the Gaussians' depths. Paths from a
    cameras file keep its fields of view, rescaled to width × height."""
    from ..render.camera_paths import interpolate, spiral  # noqa: PLC0415

    if kind not in PATHS:
        raise ValueError(f"unknown camera path {kind!r}; choose one of {', '.join(PATHS)}")
    if kind == "orbit":
        return orbit_around(gaussians, n_frames, width, height, elevation, up=up, radius=radius)
    if cameras_file is None:
        raise ValueError(f"the {kind} path needs --cameras (a cameras JSON or Blender transforms file)")
    keys = load_cameras_file(cameras_file).resized(width, height)
    if kind == "interpolate":
        return interpolate(keys, n_frames, closed=True)
    return spiral(keys, n_frames, points=gaussians.means.detach().cpu()[gaussians.opacities.detach().cpu() >= 0.1])


def render_orbit_video(gaussians_list: Sequence[Gaussians], labels: Sequence[str] | None, cameras_path: Cameras | None,
                       out: str | os.PathLike, fps: float = 30.0, n_frames: int = 120, size: int = 256,
                       backend: str = "auto", background: Sequence[float] = (1.0, 1.0, 1.0),
                       up: Sequence[float] = (0.0, 0.0, 1.0), progress: bool = True,
                       overwrite: bool = False) -> Path:
    """Render every Gaussian set along one camera path and write them side by side (labelled) into one video.

    `cameras_path` None → an `orbit_around` the first set (`n_frames` frames of size × size, world up `up`); else
    its cameras (any count and size). Returns the path written (see `write_video`)."""
    if len(gaussians_list) == 0:
        raise ValueError("render_orbit_video needs at least one Gaussians")
    cameras = cameras_path if cameras_path is not None else orbit_around(gaussians_list[0], n_frames, size, size,
                                                                          up=up)
    streams = [render_frames(g, cameras, background, backend, progress=progress and i == 0,
                             desc=f"video ({len(cameras)} frames)") for i, g in enumerate(gaussians_list)]
    bg = int(round(255 * float(background[0]))) if background else 255
    frames = (side_by_side_frames(list(parts), labels, gap_value=bg) if len(parts) > 1 or labels else parts[0]
              for parts in zip(*streams))
    return write_video(frames, out, fps, overwrite=overwrite)


def item_orbit_video(item_dir: str | os.PathLike, out: str | os.PathLike | None = None, n_frames: int = 120,
                     size: int = 256, fps: float = 30.0, up: Sequence[float] = (0.0, 0.0, 1.0), backend: str = "auto",
                     progress: bool = True, overwrite: bool = False) -> Path:
    """The coarse | GD orbit video of one reconstructed item: `item_dir/coarse.ply` and `item_dir/fine.ply` (as
    `reconstruct` writes them) side by side, orbiting the fine set; written to `out` (default `item_dir/orbit.mp4`).
    Returns the path written."""
    from .ply import load_ply  # noqa: PLC0415

    item_dir = Path(item_dir)
    names = [name for name in ("coarse", "fine") if (item_dir / f"{name}.ply").is_file()]
    if "fine" not in names:
        raise FileNotFoundError(f"{item_dir}: no fine.ply (run reconstruct first)")
    sets = [load_ply(item_dir / f"{name}.ply") for name in names]
    labels = ["coarse" if name == "coarse" else "GD" for name in names]
    cameras = orbit_around(sets[-1], n_frames, size, size, up=up)
    return render_orbit_video(sets, labels, cameras, out if out is not None else item_dir / "orbit.mp4", fps,
                              backend=backend, progress=progress, overwrite=overwrite)


def render_video_command(ply: str | os.PathLike, out: str | os.PathLike, path: str = "orbit", frames: int = 120,
                         fps: float = 30.0, size: int = 256, cameras: str | os.PathLike | None = None,
                         elevation_deg: float = 20.0, up: Sequence[float] = (0.0, 0.0, 1.0),
                         distance: float | None = None, backend: str = "auto", depth: bool = False,
                         overwrite: bool = False, progress: bool = True) -> list[Path]:
    """`gdensify render PLY --video OUT`: render the `.ply` along a camera path into OUT (mp4/gif); with `depth`
    also a colour-mapped expected-depth video beside it (`OUT_depth.mp4`, one colour scale for all frames).
    Returns the files written."""
    from ..render import rasterize  # noqa: PLC0415
    from .depth import colorize_depth, expected_depth  # noqa: PLC0415
    from .ply import load_ply  # noqa: PLC0415

    if frames < 2:
        raise ValueError(f"--frames must be >= 2, got {frames}")
    if size < 8:
        raise ValueError(f"--size must be >= 8, got {size}")
    depth_out = Path(out).with_name(Path(out).stem + "_depth" + Path(out).suffix)
    for target in [Path(out)] + ([depth_out] if depth else []):
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
    gaussians = load_ply(ply)
    cams = path_cameras(path, gaussians, frames, size, size, cameras, math.radians(elevation_deg), up, distance)
    written = [render_orbit_video([gaussians], None, cams, out, fps, backend=backend, progress=progress,
                                  overwrite=overwrite)]
    if depth:
        with torch.no_grad():
            first = rasterize(gaussians, cams[0], background=torch.ones(3), backend=backend)
        z0 = expected_depth(first.depth, first.alpha)[0]
        valid = z0[torch.isfinite(z0)]
        near, far = (float(torch.quantile(valid.double(), 0.02)), float(torch.quantile(valid.double(), 0.98))) \
            if len(valid) else (None, None)

        def depth_frames() -> Iterator[np.ndarray]:
            for i in range(len(cams)):
                with torch.no_grad():
                    r = rasterize(gaussians, cams[i], background=torch.ones(3), backend=backend)
                    frame = _to_uint8(colorize_depth(expected_depth(r.depth, r.alpha)[0], near, far))
                yield frame

        written.append(write_video(depth_frames(), depth_out, fps, overwrite=overwrite))
    return written

"""A `Capture` of one object → the object model's `ViewExample` (inputs, targets, normalised cameras).

Normalisation (no ground-truth bounds needed; printed by `ObjectCaptureExample.summary`)
    The model works in the volume [-0.5, 0.5]³ and was trained with cameras at distance 2 (`OBJECT_CAMERA_DISTANCE`)
    from the object, as the Blender evaluation protocol (`gdensify.data.protocol`) places them. World points x map to
    (x − centre)·scale (`SceneNormalization`):
      * centre, first available of: `center=` (given); the mask centroids of the input views triangulated (the
        least-squares point nearest to the rays through each mask's centroid; needs masks on at least two input
        views); the coordinate-wise median of the sparse points that project inside every input view; the point
        nearest to all the cameras' optical axes (the look-at point);
      * scale: `radius=` given → the ball (centre, radius) maps to the model's ball of radius 0.5; otherwise the
        input cameras land at mean distance 2 from the centre (the protocol), shrunk only when masks show the object
        would overflow the ball: its radius is estimated per input view from the silhouette (d·sin(atan ρ), d the
        centre's depth, ρ the largest normalised distance of a mask pixel from the centre's projection) and the
        largest estimate must map inside 0.5 (2 % slack for the masks' pixel quantisation).
    `ObjectCaptureExample.radius` reports the world radius that maps onto the model's ball.

Views
    Inputs: `inputs=` (frame indices) or `n_inputs` views chosen by farthest-point sampling on viewing directions
    from the centre, starting at the first frame (the protocol's rule; restricted to the "train" split when the
    capture has one). Targets: `targets=` or the "test" split when there is one, else every other frame (the inputs
    themselves when nothing else is left); `max_targets` keeps that many, evenly spaced in frame order.
    Non-square frames are centre-cropped (`square="crop"`, default) or padded with background and mask 0
    (`square="pad"`, for objects that reach the long sides) to a square, never squashed; then resized to
    `input_size` (inputs) and `target_size` (targets, default `input_size`) with a box / antialiased filter,
    intrinsics following exactly. Frames with masks are composited on `background` (rgb·m + bg·(1 − m)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ...cameras import Cameras
from ...gaussians import Gaussians
from ..batch import ViewExample
from ..blender import SceneNormalization, _resize, closest_point_to_axes
from ..view_samplers import farthest_view_sampling, view_directions
from ..protocol import OBJECT_CAMERA_DISTANCE, OBJECT_RADIUS
from .capture import Capture, CaptureFormatError

__all__ = ["ObjectCaptureExample", "capture_to_object_example", "estimate_object_center", "square_frame"]

_RADIUS_SLACK = 1.02


@dataclass
class ObjectCaptureExample:
    """`example` (normalised cameras) plus how it was made; `to_output_frame` moves Gaussians back to the capture's
    world (dataset units and frame)."""

    example: ViewExample
    normalization: SceneNormalization
    input_indices: list[int]
    target_indices: list[int]
    center: tuple[float, float, float]
    radius: float
    center_source: str
    scale_source: str

    def to_output_frame(self, gaussians: Gaussians) -> Gaussians:
        return self.normalization.invert_gaussians(gaussians)

    def summary(self) -> str:
        c = ", ".join(f"{x:.4g}" for x in self.center)
        return (f"{self.example.name}: inputs {self.input_indices}, {len(self.target_indices)} targets; centre ({c}) "
                f"from {self.center_source}; radius {self.radius:.4g} from {self.scale_source}")


def square_frame(
    rgb: Float[Tensor, "H W 3"], mask: Float[Tensor, "H W 1"] | None, intrinsics: Float[Tensor, "3 3"], mode: str,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Centre-crop ("crop") or pad ("pad", rgb 0 and mask 0 outside) to a square; the principal point follows."""
    h, w = rgb.shape[:2]
    k = intrinsics.clone()
    if h == w:
        return rgb, mask, k
    if mode == "crop":
        s = min(h, w)
        r0, c0 = (h - s) // 2, (w - s) // 2
        k[0, 2] -= c0
        k[1, 2] -= r0
        return rgb[r0:r0 + s, c0:c0 + s], None if mask is None else mask[r0:r0 + s, c0:c0 + s], k
    if mode == "pad":
        s = max(h, w)
        r0, c0 = (s - h) // 2, (s - w) // 2
        pad = (0, 0, c0, s - w - c0, r0, s - h - r0)
        k[0, 2] += c0
        k[1, 2] += r0
        m = torch.ones_like(rgb[..., :1]) if mask is None else mask
        return F.pad(rgb, pad), F.pad(m, pad), k
    raise ValueError(f"square must be 'crop' or 'pad', got {mode!r}")


def _prepare(capture: Capture, indices: list[int], size: int, square: str, background: Tensor
             ) -> tuple[Tensor, Tensor | None, Cameras]:
    """Frames → square, resized, composited images; (images, masks or None, cameras at `size`)."""
    images, masks, ks = [], [], []
    for i in indices:
        rgb, mask = capture.load_frame(i)
        rgb, mask, k = square_frame(rgb, mask, capture.cameras.intrinsics[i], square)
        s = rgb.shape[0]
        rgb = _resize(rgb[None], size, size)[0]
        if mask is not None:
            mask = _resize(mask[None], size, size)[0]
            rgb = rgb * mask + background * (1 - mask)
        k = k.clone()
        k[:2] *= size / s
        images.append(rgb)
        masks.append(mask)
        ks.append(k)
    w2c = capture.cameras.world_to_camera[indices]
    cams = Cameras(w2c, torch.stack(ks), size, size)
    if all(m is None for m in masks):
        return torch.stack(images), None, cams
    return torch.stack(images), torch.stack([torch.ones(size, size, 1) if m is None else m for m in masks]), cams


def _optical_axes(cameras: Cameras) -> tuple[Tensor, Tensor]:
    c2w = cameras.camera_to_world.double()
    return c2w[:, :3, 3], F.normalize(c2w[:, :3, 2], dim=-1)


def _mask_centroid_rays(cameras: Cameras, masks: Tensor) -> tuple[Tensor, Tensor] | None:
    """World rays through each view's mask centroid (views whose mask covers 0.01–99 % of the image)."""
    origins, dirs = [], []
    c2w = cameras.camera_to_world.double()
    h, w = masks.shape[1:3]
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5,
                          indexing="ij")
    for i in range(len(cameras)):
        m = masks[i, ..., 0].double()
        cover = float(m.mean())
        if not 1e-4 < cover < 0.99:
            continue
        uc, vc = float((m * u).sum() / m.sum()), float((m * v).sum() / m.sum())
        k = cameras.intrinsics[i].double()
        d_cam = torch.linalg.solve(k, torch.tensor([uc, vc, 1.0], dtype=torch.float64))
        origins.append(c2w[i, :3, 3])
        dirs.append(F.normalize(c2w[i, :3, :3] @ d_cam, dim=0))
    if len(origins) < 2:
        return None
    return torch.stack(origins), torch.stack(dirs)


def _points_in_all_views(points: Tensor, cameras: Cameras) -> Tensor:
    w2c = cameras.world_to_camera.double()
    cam = torch.einsum("vij,nj->vni", w2c[:, :3, :3], points.double()) + w2c[:, None, :3, 3]
    pix = torch.einsum("vij,vnj->vni", cameras.intrinsics.double(), cam)
    z = cam[..., 2]
    u, v = pix[..., 0] / z.clamp_min(1e-12), pix[..., 1] / z.clamp_min(1e-12)
    inside = (z > 0) & (u >= 0) & (u < cameras.width) & (v >= 0) & (v < cameras.height)
    return points[inside.all(dim=0)]


def estimate_object_center(capture: Capture, input_cameras: Cameras, input_masks: Tensor | None
                           ) -> tuple[Tensor, str]:
    """The object centre in world units and where it came from (see the module doc); float64 (3,)."""
    if input_masks is not None:
        rays = _mask_centroid_rays(input_cameras, input_masks)
        if rays is not None:
            return closest_point_to_axes(*rays), "the input masks' centroids"
    if capture.points is not None and len(capture.points):
        seen = _points_in_all_views(capture.points, input_cameras)
        if len(seen) >= 10:
            return seen.double().median(dim=0).values, f"the median of {len(seen)} sparse points seen by every input"
    origins, axes = _optical_axes(capture.cameras)
    return closest_point_to_axes(origins, axes), "the cameras' look-at point"


def _mask_radius(cameras: Cameras, masks: Tensor, center: Tensor) -> float | None:
    """Largest per-view silhouette radius estimate d·sin(atan ρ) around `center` (world units)."""
    w2c = cameras.world_to_camera.double()
    h, w = masks.shape[1:3]
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5,
                          indexing="ij")
    best = None
    for i in range(len(cameras)):
        on = masks[i, ..., 0] > 0.5
        if not bool(on.any()) or bool(on.all()):
            continue
        pc = w2c[i, :3, :3] @ center + w2c[i, :3, 3]
        if pc[2] <= 0:
            continue
        k = cameras.intrinsics[i].double()
        x = (u[on] - k[0, 2]) / k[0, 0] - pc[0] / pc[2]
        y = (v[on] - k[1, 2]) / k[1, 1] - pc[1] / pc[2]
        rho = float((x * x + y * y).sqrt().max())
        r = float(pc[2]) * math.sin(math.atan(rho))
        best = r if best is None else max(best, r)
    return best


def _check_spread(capture: Capture, input_idx: list[int]) -> None:
    """Refuse inputs that all see the object from one place (no parallax: the model cannot place anything)."""
    if len(input_idx) < 2:
        return
    c = capture.cameras.centers.double()[input_idx]
    axes = F.normalize(capture.cameras.camera_to_world.double()[input_idx, :3, 2], dim=-1)
    spread = float(torch.cdist(c, c).max())
    turn = float(torch.arccos((axes @ axes.T).clamp(-1, 1)).max())
    if spread < 1e-6 * max(1.0, float(c.norm(dim=-1).max())) and turn < 1e-3:
        names = [capture.frames[i].name for i in input_idx]
        raise CaptureFormatError(f"{capture.root}: the input views {names} share one camera pose; the object model "
                                 f"needs views from different directions")


def _check(capture: Capture, indices: Sequence[int], what: str) -> list[int]:
    idx = [int(i) for i in indices]
    bad = [i for i in idx if not 0 <= i < len(capture)]
    if bad or not idx:
        raise CaptureFormatError(f"{capture.root}: {what} {idx} must be non-empty frame indices in "
                                 f"0..{len(capture) - 1}")
    if len(set(idx)) != len(idx):
        raise CaptureFormatError(f"{capture.root}: {what} {idx} repeat a frame")
    return idx


def capture_to_object_example(
    capture: Capture, inputs: Sequence[int] | None = None, n_inputs: int = 4, input_size: int = 128,
    target_size: int | None = None, targets: Sequence[int] | None = None,
    background: Sequence[float] = (1.0, 1.0, 1.0), center: Sequence[float] | None = None,
    radius: float | None = None, square: str = "crop", max_targets: int | None = None,
) -> ObjectCaptureExample:
    """The object model's example from a capture (see the module doc for every rule)."""
    if square not in ("crop", "pad"):
        raise ValueError(f"square must be 'crop' or 'pad', got {square!r}")
    if radius is not None and not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius must be a positive number, got {radius}")
    if center is not None and (len(center) != 3 or not all(math.isfinite(float(c)) for c in center)):
        raise ValueError(f"center must be three finite numbers, got {center}")
    target_size = input_size if target_size is None else int(target_size)
    bg = torch.as_tensor([float(c) for c in background], dtype=torch.float32)
    if bg.shape != (3,) or bool((bg < 0).any() or (bg > 1).any()):
        raise ValueError(f"background must be RGB in [0, 1], got {background}")
    cams = capture.cameras
    if inputs is not None:
        input_idx = _check(capture, inputs, "inputs")
    else:
        pool = capture.splits.get("train", list(range(len(capture))))
        if not 1 <= n_inputs <= len(pool):
            raise CaptureFormatError(f"{capture.root}: cannot choose {n_inputs} input views out of {len(pool)} "
                                     f"frames")
        origins, axes = _optical_axes(cams)
        look_at = closest_point_to_axes(origins, axes) if center is None else torch.tensor(
            [float(c) for c in center], dtype=torch.float64)
        dirs = view_directions(cams[pool], look_at)
        input_idx = [pool[i] for i in farthest_view_sampling(dirs, n_inputs)]
    if targets is not None:
        target_idx = _check(capture, targets, "targets")
    elif "test" in capture.splits:
        target_idx = list(capture.splits["test"])
    else:
        target_idx = [i for i in range(len(capture)) if i not in input_idx] or list(input_idx)
    if max_targets is not None and len(target_idx) > max_targets >= 1:
        target_idx = [target_idx[round(q * (len(target_idx) - 1) / max(1, max_targets - 1))]
                      for q in range(max_targets)] if max_targets > 1 else [target_idx[len(target_idx) // 2]]
    _check_spread(capture, input_idx)
    in_images, in_masks, in_cams = _prepare(capture, input_idx, input_size, square, bg)
    if center is not None:
        c, center_source = torch.tensor([float(x) for x in center], dtype=torch.float64), "--center"
    else:
        c, center_source = estimate_object_center(capture, in_cams, in_masks)
    if radius is not None:
        norm, scale_source = SceneNormalization.from_bounds(c.tolist(), radius), "--radius"
    else:
        distance = float((in_cams.centers.double() - c).norm(dim=-1).mean())
        scale, scale_source = OBJECT_CAMERA_DISTANCE / distance, "the input cameras at distance 2"
        if in_masks is not None:
            r_mask = _mask_radius(in_cams, in_masks, c)
            if r_mask is not None and r_mask * scale > OBJECT_RADIUS * _RADIUS_SLACK:
                scale, scale_source = OBJECT_RADIUS / r_mask, "the input masks (object larger than the volume)"
        norm = SceneNormalization(tuple(float(x) for x in c), scale)
    t_images, _, t_cams = _prepare(capture, target_idx, target_size, square, bg)
    example = ViewExample(in_images.float(), norm.apply(in_cams).to(torch.float32), t_images.float(),
                          norm.apply(t_cams).to(torch.float32), bg.expand(len(target_idx), 3).clone(), capture.name,
                          bg.clone())
    return ObjectCaptureExample(example, norm, input_idx, target_idx, norm.center, OBJECT_RADIUS / norm.scale,
                                center_source, scale_source)

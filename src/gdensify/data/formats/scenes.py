"""A `Capture` of a scene → the scene model's `ViewExample` (two context views, targets between them), rescaled to
the scale the scene model was trained at.

Scale. The scene model (MVSplat-style cost volume between near = 1 and far = 100) was trained on `gdensify make-data
scenes` rooms in metres, and its depth predictions only work at that scale. The capture's world is multiplied by
`scale` (cameras' translations, near/far; rotations and intrinsics unchanged), the first available of:
  * `scene_scale=` (given);
  * "depth": `REFERENCE["depth"]` / the mean, over the two context views, of the median camera-z depth of the
    sparse points that project inside the view (needs >= 20 such points per view; COLMAP, nerfstudio's ply);
  * "bounds": `REFERENCE["bounds"]` / the mean over the two context views of sqrt(near·far) (LLFF's bounds);
  * "baseline": `REFERENCE["baseline"]` / the distance between the two context cameras.
`REFERENCE` holds the same statistics measured on generated training scenes by `benchmarks/scene_scale_rules.py`,
which also measures, on other generated scenes written at 0.1×, 1× and 10× their true scale, how far each rule's
scale lands from the truth (error factor, median / 90th percentile over 256 context pairs): depth 1.13 / 1.34,
bounds 1.11 / 1.28, baseline 1.38 / 2.08 (the same at every written scale: the rules are scale-equivariant). Depth
and bounds carry the same information (LLFF computes its bounds from the sparse points) and are equally robust;
the baseline depends on how far apart the user's context views are, so it is the last resort. With the shipped
scene model on 4 generated scenes written at 0.25×, 1× and 4× their size, reading them as written scores 18.40,
21.07 and 14.59 dB PSNR; rescaled by the depth rule, 20.98 dB at every size.

Context and targets. `context=(i, j)` or automatic: among pairs whose optical axes differ by < 45°, the one whose
ratio of baseline to the scene's depth (median point depth over all views, or of the bounds) is closest to the
training pairs' median `REFERENCE["baseline"] / REFERENCE["depth"]` (0.195), preferring pairs with frames between
them; without any depth
information, frames in capture order with a gap of min(V − 1, 30) (the synthetic evaluation gap) centred in the
capture. Targets: `targets=` or up to `n_targets` frames whose camera centre lies between the context cameras (its
projection on the segment at 10–90 % of the way, within half a baseline of it), evenly spread; else the frames
strictly between i and j in capture order.

Images are resized and centre-cropped to `image_size` (MVSplat's rule, `re10k.crop_transform`; never squashed),
intrinsics following exactly. near/far: the training range (1, 100), widened to 0.8× the 1st percentile and 1.2× the
99th percentile of the scaled point depths (or bounds) in the context views when those fall outside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ...cameras import Cameras
from ...gaussians import Gaussians
from ..batch import ViewExample
from ..shims import crop_transform
from .capture import Capture, CaptureFormatError

__all__ = ["SceneCaptureExample", "capture_to_scene_example", "scale_statistic", "estimate_scene_scale",
           "REFERENCE", "SCALE_RULES"]

SCALE_RULES = ("depth", "bounds", "baseline")
# Measured by benchmarks/scene_scale_rules.py on 64 generated training scenes (seed 0, default SceneGenConfig,
# context gaps 10..30 as the scene training sampler draws them): medians over scenes, in the generator's metres.
REFERENCE = {"depth": 2.9128, "bounds": 2.5666, "baseline": 0.5689}
TRAIN_NEAR, TRAIN_FAR = 1.0, 100.0
_MIN_POINTS = 20
_MAX_AXIS_ANGLE = math.radians(45.0)


@dataclass
class SceneCaptureExample:
    """`example` (the capture's world times `scale`) plus how it was made."""

    example: ViewExample
    scale: float
    scale_rule: str
    context: tuple[int, int]
    targets: list[int]
    near: float
    far: float

    def to_output_frame(self, gaussians: Gaussians) -> Gaussians:
        """Gaussians of the rescaled world back in the capture's units."""
        return Gaussians(gaussians.means / self.scale, gaussians.quats, gaussians.log_scales - math.log(self.scale),
                         gaussians.opacity_logits, gaussians.sh)

    def summary(self) -> str:
        return (f"{self.example.name}: context {list(self.context)}, targets {self.targets}; scale {self.scale:.4g} "
                f"from {self.scale_rule}; near {self.near:.3g}, far {self.far:.3g}")


def _point_depths(cameras: Cameras, points: Tensor, view: int) -> Tensor:
    w2c = cameras.world_to_camera[view].double()
    cam = points.double() @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    k = cameras.intrinsics[view].double()
    zc = z.clamp_min(1e-12)
    u, v = k[0, 0] * cam[:, 0] / zc + k[0, 2], k[1, 1] * cam[:, 1] / zc + k[1, 2]
    inside = (z > 0) & (u >= 0) & (u < cameras.width) & (v >= 0) & (v < cameras.height)
    return z[inside]


def scale_statistic(rule: str, cameras: Cameras, context: Sequence[int], points: Tensor | None = None,
                    bounds: Tensor | None = None) -> float | None:
    """The statistic of `rule` (see the module doc) in world units, or None when the data lacks it."""
    i, j = (int(c) for c in context)
    if rule == "depth":
        if points is None:
            return None
        medians = []
        for view in (i, j):
            z = _point_depths(cameras, points, view)
            if len(z) < _MIN_POINTS:
                return None
            medians.append(float(z.median()))
        return 0.5 * (medians[0] + medians[1])
    if rule == "bounds":
        if bounds is None:
            return None
        return float(torch.sqrt(bounds[[i, j], 0].double() * bounds[[i, j], 1].double()).mean())
    if rule == "baseline":
        c = cameras.centers.double()
        return float((c[i] - c[j]).norm())
    raise ValueError(f"unknown scale rule {rule!r}; known: {', '.join(SCALE_RULES)}")


def estimate_scene_scale(capture: Capture, context: Sequence[int]) -> tuple[float, str]:
    """(scale, rule): the first rule in `SCALE_RULES` the capture has data for."""
    for rule in SCALE_RULES:
        stat = scale_statistic(rule, capture.cameras, context, capture.points, capture.bounds)
        if stat is not None and stat > 0 and math.isfinite(stat):
            return REFERENCE[rule] / stat, rule
    raise CaptureFormatError(f"{capture.root}: cannot estimate the scene's scale: the context cameras "
                             f"{list(context)} coincide and there are no sparse points or bounds; pass scene_scale")


def _depth_scale_of_pairs(capture: Capture) -> float | None:
    """A scene depth (world units) for choosing pairs: median point depth over all views, or the bounds'."""
    if capture.points is not None and len(capture.points):
        meds = [float(z.median()) for v in range(len(capture))
                if len(z := _point_depths(capture.cameras, capture.points, v)) >= _MIN_POINTS]
        if meds:
            return float(torch.tensor(meds).median())
    if capture.bounds is not None:
        return float(torch.sqrt(capture.bounds[:, 0] * capture.bounds[:, 1]).median())
    return None


def _between(capture: Capture, i: int, j: int) -> list[tuple[float, int]]:
    """(position along the segment, frame) of the frames whose camera lies between cameras i and j."""
    c = capture.cameras.centers.double()
    axes = F.normalize(capture.cameras.camera_to_world.double()[:, :3, 2], dim=-1)
    seg = c[j] - c[i]
    length2 = float(seg @ seg)
    if length2 <= 0:
        return []
    out = []
    for k in range(len(capture)):
        if k in (i, j):
            continue
        t = float((c[k] - c[i]) @ seg) / length2
        off = float((c[k] - c[i] - t * seg).norm())
        angle = max(float(torch.arccos((axes[k] @ axes[i]).clamp(-1, 1))),
                    float(torch.arccos((axes[k] @ axes[j]).clamp(-1, 1))))
        if 0.1 <= t <= 0.9 and off <= 0.5 * math.sqrt(length2) and angle < _MAX_AXIS_ANGLE:
            out.append((t, k))
    return sorted(out)


def _auto_context(capture: Capture) -> tuple[int, int]:
    v = len(capture)
    depth = _depth_scale_of_pairs(capture)
    if depth is None:
        gap = min(v - 1, 30)
        start = (v - 1 - gap) // 2
        return start, start + gap
    want = REFERENCE["baseline"] / REFERENCE["depth"]
    c = capture.cameras.centers.double()
    axes = F.normalize(capture.cameras.camera_to_world.double()[:, :3, 2], dim=-1)
    angle = torch.arccos((axes @ axes.T).clamp(-1, 1))
    ratio = torch.cdist(c, c) / depth
    upper = torch.triu(torch.ones(v, v, dtype=torch.bool), diagonal=1)
    ok = upper & (angle < _MAX_AXIS_ANGLE) & (ratio > 0)
    if not bool(ok.any()):
        raise CaptureFormatError(f"{capture.root}: no two frames look the same way (optical axes within 45°); "
                                 f"pass context=(i, j)")
    score = torch.where(ok, (ratio / want).log().abs(), torch.full_like(ratio, math.inf))
    order = torch.argsort(score.flatten())[: int(ok.sum())]
    for flat in order[:50].tolist():  # the best-scoring pair with frames between its cameras
        i, j = divmod(flat, v)
        if _between(capture, i, j):
            return i, j
    i, j = divmod(int(order[0]), v)
    return i, j


def _auto_targets(capture: Capture, i: int, j: int, n: int) -> list[int]:
    cands = [k for _, k in _between(capture, i, j)]
    if not cands:
        lo, hi = min(i, j), max(i, j)
        cands = list(range(lo + 1, hi))
    if not cands:
        raise CaptureFormatError(f"{capture.root}: no frame lies between the context frames {i} and {j}; pass "
                                 f"targets or a wider context")
    if len(cands) <= n:
        return cands
    return [cands[round(q * (len(cands) - 1) / max(1, n - 1))] for q in range(n)] if n > 1 else \
        [cands[len(cands) // 2]]


def _load_views(capture: Capture, indices: list[int], size: tuple[int, int], scale: float
                ) -> tuple[Tensor, Cameras]:
    images, ks = [], []
    for i in indices:
        rgb, _ = capture.load_frame(i)
        h, w = rgb.shape[:2]
        tr = crop_transform((h, w), size)
        x = rgb.permute(2, 0, 1)[None]
        if tr.resizes:
            x = F.interpolate(x, size=tr.scaled_hw, mode="bilinear", align_corners=False, antialias=True)
        (r0, c0), (ho, wo) = tr.offset, tr.out_hw
        images.append(x[0, :, r0:r0 + ho, c0:c0 + wo].permute(1, 2, 0).clamp(0, 1))
        k = capture.cameras.intrinsics[i].double().clone()
        sx, sy = tr.scaled_hw[1] / w, tr.scaled_hw[0] / h
        k[0] *= sx
        k[1] *= sy
        k[0, 2] -= c0
        k[1, 2] -= r0
        ks.append(k)
    w2c = capture.cameras.world_to_camera[indices].double().clone()
    w2c[:, :3, 3] *= scale
    return torch.stack(images).contiguous(), Cameras(w2c, torch.stack(ks), size[1], size[0])


def _near_far(capture: Capture, context: tuple[int, int], scale: float) -> tuple[float, float]:
    near, far = TRAIN_NEAR, TRAIN_FAR
    depths = []
    if capture.points is not None:
        depths = [_point_depths(capture.cameras, capture.points, v) for v in context]
    lo = hi = None
    if depths and all(len(z) >= _MIN_POINTS for z in depths):
        z = torch.cat(depths) * scale
        lo, hi = float(torch.quantile(z, 0.01)), float(torch.quantile(z, 0.99))
    elif capture.bounds is not None:
        b = capture.bounds[list(context)].double() * scale
        lo, hi = float(b[:, 0].min()), float(b[:, 1].max())
    if lo is not None:
        near = min(near, 0.8 * lo)
        far = max(far, 1.2 * hi)
    return near, far


def capture_to_scene_example(
    capture: Capture, context: Sequence[int] | None = None, targets: Sequence[int] | None = None,
    n_targets: int = 3, image_size: int | tuple[int, int] = 64, scene_scale: float | None = None,
) -> SceneCaptureExample:
    """The scene model's example from a capture (see the module doc for every rule)."""
    v = len(capture)
    if v < 3 and targets is None:
        raise CaptureFormatError(f"{capture.root}: a scene needs at least 3 frames (2 context + 1 target), got {v}")
    if context is None:
        i, j = _auto_context(capture)
    else:
        ctx = [int(c) for c in context]
        if len(ctx) != 2 or ctx[0] == ctx[1] or any(not 0 <= c < v for c in ctx):
            raise CaptureFormatError(f"{capture.root}: context must be two different frame indices in 0..{v - 1}, "
                                     f"got {list(context)}")
        i, j = ctx
    if targets is None:
        tgt = _auto_targets(capture, i, j, n_targets)
    else:
        tgt = [int(t) for t in targets]
        if not tgt or any(not 0 <= t < v for t in tgt):
            raise CaptureFormatError(f"{capture.root}: targets must be frame indices in 0..{v - 1}, got {tgt}")
    if scene_scale is not None:
        if not (math.isfinite(scene_scale) and scene_scale > 0):
            raise ValueError(f"scene_scale must be a positive number, got {scene_scale}")
        scale, rule = float(scene_scale), "--scene-scale"
    else:
        scale, rule = estimate_scene_scale(capture, (i, j))
    size = (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    near, far = _near_far(capture, (i, j), scale)
    c_img, c_cam = _load_views(capture, [i, j], size, scale)
    t_img, t_cam = _load_views(capture, tgt, size, scale)
    c_cam = Cameras(c_cam.world_to_camera, c_cam.intrinsics, c_cam.width, c_cam.height, near, far).to(torch.float32)
    t_cam = Cameras(t_cam.world_to_camera, t_cam.intrinsics, t_cam.width, t_cam.height, near, far).to(torch.float32)
    example = ViewExample(c_img.float(), c_cam, t_img.float(), t_cam, torch.zeros(len(tgt), 3), capture.name,
                          torch.zeros(3))
    return SceneCaptureExample(example, scale, rule, (i, j), tgt, near, far)

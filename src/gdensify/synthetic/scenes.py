"""Procedural textured indoor scenes with camera paths, written in the RealEstate10K chunk layout.

`generate_scenes(out_dir, count, seed)` writes::

    OUT/train/000000.torch ...  lists of scene dicts with exactly RE10K's keys (url, timestamps, cameras, images, key)
    OUT/train/index.json        {scene key: chunk file name}
    OUT/test/...                the same for the test split
    OUT/evaluation_index.json   {test scene key: {"context": [s, s + gap], "target": [3 frames strictly between]}}
    OUT/dataset.json            generator name/version, seed, count, the full config, split sizes, near/far
                                (near = min_depth) (written last)

so `gdensify.data.re10k` (and MVSplat's own loader) read it unchanged.

Scenes. A room is the inside of an axis-aligned box [0, X]x[0, Y]x[0, Z] (world z up; X, Y in 4-8, Z in 2.5-3,
"metres") holding 2-5 objects: boxes (yawed about z), spheres and vertical capped cylinders. Every surface has a procedural
high-frequency texture in its own metric (u, v) coordinates (stripes, plaid, checkers, dots, glyph-like "text",
colour mosaics), modulated by a low-frequency product of sinusoids so patterns are not exactly periodic. Shading is
Lambertian, view independent (so every frame sees the same colours): ambient + one point light near the ceiling
with distance falloff and hard shadows cast by the objects. Images are rendered EXACTLY by analytic ray casting
(vectorized NumPy, float32), with `supersample`² regular samples per pixel averaged (box-filter antialiasing).

Cameras. Pinhole, square pixels, OpenCV axes; the horizontal FOV of the central min(W, H)² square (what a
256² centre crop keeps) is drawn in [fov_deg_min, fov_deg_max]; the principal point is jittered by up to
`principal_jitter` (normalized) to exercise exact crop intrinsics. A path is a quadratic Bezier curve in the
horizontal plane (0.8-2 m long, >= `wall_margin` from the walls) at eye height, with a yaw sweep of up to
`yaw_sweep_deg`, small pitch and roll, V frames (`frames_min`..`frames_max`) sampled along it. Paths and objects
are rejected and redrawn until every rendered sample of every frame has camera z-depth >= `min_depth`
(default 1.0, MVSplat's RE10K `near`), so the reader's defaults near=1, far=100 bracket all geometry.

Frames are stored as JPEG (quality `jpeg_quality`, default 95, 4:4:4 chroma so thin coloured patterns survive),
about 50-80 KB per 256² frame, i.e. 3-5 MB per 50-frame scene.

Default image size 320x256 (W x H): a 256² centre crop (no resize) as RE10K's 640x360 frames get after
MVSplat's resize; pass e.g. width=360, height=288 to exercise resize + crop.

Each test scene gets an evaluation entry: context [s, s + eval_context_gap] with s uniform, and `eval_targets`
targets evenly spaced strictly between them. The last round(count·test_fraction) scenes form the test split
(at least one when test_fraction > 0 and count >= 2).

Determinism: scene i depends only on (seed, i) (not on count), and the output bytes are identical for the same
seed, config and library versions (chunks are serialized in memory, so file names do not leak into the bytes).

CLI: ``gdensify make-data scenes OUT --count N [--seed S] [--resolution R] [--overwrite]`` ->
``generate_scenes(OUT, N, S, overwrite=..., width=R, height=R)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..cameras import Cameras
from ..data.re10k import camera_vectors, parse_camera_vectors
from ..io.atomic import atomic_path

GENERATOR_VERSION = 1
_EPS = 1e-4
_F = np.float32


# ---------------------------------------------------------------------------------------------------- config
@dataclass
class SceneGenConfig:
    """Every knob of the generator (see the module docstring)."""

    width: int = 320
    height: int = 256
    frames_min: int = 40
    frames_max: int = 60
    supersample: int = 2
    room_min: tuple[float, float, float] = (4.0, 4.0, 2.5)
    room_max: tuple[float, float, float] = (8.0, 8.0, 3.0)
    objects_min: int = 2
    objects_max: int = 5
    fov_deg_min: float = 55.0
    fov_deg_max: float = 70.0
    principal_jitter: float = 0.02
    min_depth: float = 1.0
    wall_margin: float = 0.9
    path_length_min: float = 0.8
    path_length_max: float = 2.0
    yaw_sweep_deg: float = 25.0
    eval_context_gap: int = 30
    eval_targets: int = 3
    jpeg_quality: int = 95
    scenes_per_chunk: int = 8
    shadows: bool = True

    def __post_init__(self) -> None:
        if self.width < 8 or self.height < 8:
            raise ValueError(f"image size must be at least 8x8, got {self.width}x{self.height}")
        if not 2 <= self.frames_min <= self.frames_max:
            raise ValueError(f"need 2 <= frames_min <= frames_max, got {self.frames_min}, {self.frames_max}")
        if self.supersample < 1:
            raise ValueError("supersample must be >= 1")
        if not 1 <= self.eval_context_gap <= self.frames_min - 1:
            raise ValueError(f"eval_context_gap must be in [1, frames_min - 1 = {self.frames_min - 1}], "
                             f"got {self.eval_context_gap}")
        if not 1 <= self.eval_targets <= self.eval_context_gap - 1:
            raise ValueError(f"eval_targets must be in [1, eval_context_gap - 1], got {self.eval_targets}")
        if not 0 <= self.objects_min <= self.objects_max:
            raise ValueError("need 0 <= objects_min <= objects_max")
        if not 0 < self.fov_deg_min <= self.fov_deg_max < 150:
            raise ValueError("need 0 < fov_deg_min <= fov_deg_max < 150")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be in [1, 100]")
        if self.scenes_per_chunk < 1:
            raise ValueError("scenes_per_chunk must be >= 1")
        if any(a > b for a, b in zip(self.room_min, self.room_max)) or min(self.room_min) <= 2 * self.wall_margin:
            raise ValueError("room_min must be <= room_max and wider than 2·wall_margin")
        self.room_min, self.room_max = tuple(map(float, self.room_min)), tuple(map(float, self.room_max))


# ---------------------------------------------------------------------------------------------------- scene model
TEXTURE_KINDS = ("stripes", "plaid", "checker", "dots", "glyphs", "mosaic")


@dataclass
class Texture:
    kind: str
    colors: np.ndarray  # (3, 3) background, ink, accent in [0, 1]
    scale: float  # period / cell size in metres
    angle: float
    offset: np.ndarray  # (2,)
    duty: float
    salt: int
    noise_scale: float
    noise_amount: float


@dataclass
class SceneObject:
    kind: str  # "box" | "sphere" | "cylinder"
    center: np.ndarray  # (3,) box/sphere centre; cylinder: (x, y, z0)
    size: np.ndarray  # box: half extents (3,); sphere: (r,); cylinder: (r, height)
    yaw: float = 0.0

    @property
    def bound_center(self) -> np.ndarray:
        if self.kind == "cylinder":
            return self.center + np.array([0.0, 0.0, self.size[1] / 2])
        return self.center

    @property
    def bound_radius(self) -> float:
        if self.kind == "box":
            return float(np.linalg.norm(self.size))
        if self.kind == "sphere":
            return float(self.size[0])
        return float(math.hypot(self.size[0], self.size[1] / 2))

    @property
    def footprint_radius(self) -> float:
        return float(np.linalg.norm(self.size[:2])) if self.kind == "box" else float(self.size[0])


@dataclass
class SyntheticScene:
    """Geometry, materials and light of one room. Surfaces 0-5 are the room faces (2·axis + (max side)),
    surface 6 + k is object k."""

    room: np.ndarray  # (3,)
    objects: list[SceneObject]
    textures: list[Texture]
    glyphs: np.ndarray  # (G, 7, 5) bool
    light: np.ndarray  # (3,)
    light_strength: float
    ambient: float
    shadows: bool = True


# ---------------------------------------------------------------------------------------------------- ray casting
# Structure of arrays: every ray batch shares ONE origin (a camera centre or the light), so origins are three
# Python floats and directions three float32 arrays (dx, dy, dz) of unit vectors.

def _nudge(a: np.ndarray) -> np.ndarray:
    """Replace exact zeros by a tiny positive value so that divisions give +-inf, never NaN."""
    zero = a == 0
    if zero.any():
        a = a.copy()
        a[zero] = _F(1e-30)
    return a


def _cone_candidates(obj: SceneObject, o: Sequence[float], dx: np.ndarray, dy: np.ndarray, dz: np.ndarray,
                     reach: np.ndarray | float | None = None) -> np.ndarray:
    """Indices of rays from o that can touch the object's bounding sphere (o outside it), optionally only those
    whose segment length `reach` gets there."""
    c = obj.bound_center
    r = obj.bound_radius * 1.002 + 1e-3
    w = np.array([c[0] - o[0], c[1] - o[1], c[2] - o[2]])
    dist = float(np.linalg.norm(w))
    if dist <= r:  # the origin is inside the bound: test every ray
        return np.arange(len(dx))
    w /= dist
    cos_t = math.sqrt(1.0 - (r / dist) ** 2)
    proj = dx * _F(w[0]) + dy * _F(w[1]) + dz * _F(w[2])
    ok = proj >= _F(cos_t)
    if reach is not None:
        ok &= reach > _F(dist - r)
    return np.nonzero(ok)[0]


def _intersect(obj: SceneObject, o: Sequence[float], dx: np.ndarray, dy: np.ndarray, dz: np.ndarray,
               details: bool = True):
    """First hit (t > eps) of rays from the point o (outside the object) with a convex object.

    Returns t (inf = miss) and, with `details`, the outward normal (nx, ny, nz) and metric surface coordinates
    (u, v) of the hits."""
    m = len(dx)
    inf = _F(np.inf)
    if obj.kind == "sphere":
        r = float(obj.size[0])
        ox, oy, oz = (o[i] - float(obj.center[i]) for i in range(3))
        b = dx * _F(ox) + dy * _F(oy) + dz * _F(oz)
        disc = b * b - _F(ox * ox + oy * oy + oz * oz - r * r)
        hit = disc > 0
        t = -b - np.sqrt(np.maximum(disc, 0))
        hit &= t > _EPS
        t = np.where(hit, t, inf)
        if not details:
            return t, None, None
        tt = np.where(hit, t, 0)
        nx, ny, nz = (_F(ox) + tt * dx) / _F(r), (_F(oy) + tt * dy) / _F(r), (_F(oz) + tt * dz) / _F(r)
        u = _F(r) * np.arctan2(ny, nx)
        v = _F(r) * np.arcsin(np.clip(nz, -1, 1))
        return t, (nx, ny, nz), (u, v)
    if obj.kind == "box":
        c, s = math.cos(obj.yaw), math.sin(obj.yaw)
        px, py, pz = (o[i] - float(obj.center[i]) for i in range(3))
        local_o = (c * px + s * py, -s * px + c * py, pz)
        ld = (_nudge(_F(c) * dx + _F(s) * dy), _nudge(_F(-s) * dx + _F(c) * dy), _nudge(dz))
        h = [float(x) for x in obj.size]
        t_near = np.full(m, -np.inf, dtype=_F)
        t_far = np.full(m, np.inf, dtype=_F)
        axis = np.zeros(m, dtype=np.int8)
        for a in range(3):
            inv = _F(1) / ld[a]
            t1 = (_F(-h[a] - local_o[a])) * inv
            t2 = (_F(h[a] - local_o[a])) * inv
            tn, tf = np.minimum(t1, t2), np.maximum(t1, t2)
            larger = tn > t_near
            t_near = np.where(larger, tn, t_near)
            axis[larger] = a
            t_far = np.minimum(t_far, tf)
        hit = (t_near <= t_far) & (t_near > _EPS)
        t = np.where(hit, t_near, inf)
        if not details:
            return t, None, None
        tt = np.where(hit, t, 0)
        lp = [_F(local_o[a]) + tt * ld[a] for a in range(3)]
        nl = [np.where(axis == a, -np.sign(ld[a]), 0).astype(_F) for a in range(3)]
        nx, ny = _F(c) * nl[0] - _F(s) * nl[1], _F(s) * nl[0] + _F(c) * nl[1]
        u = np.where(axis == 0, lp[1], lp[0]) + _F(h[0] + h[1])
        v = np.where(axis == 2, lp[1], lp[2]) + _F(h[2])
        return t, (nx, ny, nl[2]), (u, v)
    if obj.kind == "cylinder":
        r, height = float(obj.size[0]), float(obj.size[1])
        ox, oy = o[0] - float(obj.center[0]), o[1] - float(obj.center[1])
        z0 = float(obj.center[2])
        z1 = z0 + height
        a = dx * dx + dy * dy
        b = dx * _F(ox) + dy * _F(oy)
        disc = b * b - a * _F(ox * ox + oy * oy - r * r)
        a_safe = np.maximum(a, _F(1e-12))
        ts = (-b - np.sqrt(np.maximum(disc, 0))) / a_safe
        zs = _F(o[2]) + ts * dz
        side = (disc > 0) & (a > 1e-12) & (ts > _EPS) & (zs >= z0) & (zs <= z1)
        best = np.where(side, ts, inf)
        which = np.zeros(m, dtype=np.int8)
        dzn = _nudge(dz)
        for k, zc in ((1, z1), (2, z0)):
            tc = _F(zc - o[2]) / dzn
            qx, qy = _F(ox) + tc * dx, _F(oy) + tc * dy
            ok = (tc > _EPS) & (qx * qx + qy * qy <= _F(r * r)) & (tc < best)
            best = np.where(ok, tc, best)
            which[ok] = k
        if not details:
            return best, None, None
        tt = np.where(np.isfinite(best), best, 0)
        qx, qy, qz = _F(ox) + tt * dx, _F(oy) + tt * dy, _F(o[2]) + tt * dz
        on_side = which == 0
        nx = np.where(on_side, qx / _F(r), 0).astype(_F)
        ny = np.where(on_side, qy / _F(r), 0).astype(_F)
        nz = np.where(on_side, 0, np.where(which == 1, 1, -1)).astype(_F)
        u = np.where(on_side, _F(r) * np.arctan2(qy, qx), qx)
        v = np.where(on_side, qz, qy)
        return best, (nx, ny, nz), (u, v)
    raise ValueError(f"unknown object kind {obj.kind!r}")


@dataclass
class Hits:
    """Nearest hits of a ray batch: distance t along the unit ray, surface id, and per object k the
    (ray indices, normals, uv) of the rays whose nearest hit is on that object."""

    t: np.ndarray
    surface: np.ndarray
    objects: dict[int, tuple[np.ndarray, tuple, tuple]]


def trace(scene: SyntheticScene, o: Sequence[float], dx: np.ndarray, dy: np.ndarray, dz: np.ndarray,
          details: bool = True) -> Hits:
    """Nearest surface along rays from the point o (inside the room) with unit directions (dx, dy, dz)."""
    X, Y, Z = (float(x) for x in scene.room)
    d = [_nudge(dx), _nudge(dy), _nudge(dz)]
    t, surface = None, None
    for a, hi in enumerate((X, Y, Z)):
        positive = d[a] > 0
        ta = np.where(positive, _F(hi - o[a]), _F(-o[a])) / d[a]
        sa = (2 * a + positive).astype(np.int16)
        if t is None:
            t, surface = ta, sa
        else:
            closer = ta < t
            t = np.where(closer, ta, t)
            surface = np.where(closer, sa, surface)
    found = {}
    for k, obj in enumerate(scene.objects):
        idx = _cone_candidates(obj, o, dx, dy, dz, reach=t)
        if len(idx) == 0:
            continue
        tk, nk, uvk = _intersect(obj, o, dx[idx], dy[idx], dz[idx], details)
        closer = tk < t[idx]
        if not closer.any():
            continue
        idx = idx[closer]
        t[idx] = tk[closer]
        surface[idx] = 6 + k
        if details:
            found[k] = (idx, tuple(x[closer] for x in nk), tuple(x[closer] for x in uvk))
    objects = {}
    for k, (idx, n, uv) in found.items():
        keep = surface[idx] == 6 + k
        objects[k] = (idx[keep], tuple(x[keep] for x in n), tuple(x[keep] for x in uv))
    return Hits(t, surface, objects)


def _shadowed(scene: SyntheticScene, vx: np.ndarray, vy: np.ndarray, vz: np.ndarray,
              dist: np.ndarray) -> np.ndarray:
    """Whether the segment from the light to each point (light + dist·v, v unit) is blocked by an object."""
    blocked = np.zeros(len(vx), dtype=bool)
    light = [float(x) for x in scene.light]
    for obj in scene.objects:
        idx = _cone_candidates(obj, light, vx, vy, vz, reach=dist)
        if len(idx) == 0:
            continue
        idx = idx[~blocked[idx]]
        tk, _, _ = _intersect(obj, light, vx[idx], vy[idx], vz[idx], details=False)
        blocked[idx[tk < dist[idx] - _F(2e-3)]] = True
    return blocked


# ---------------------------------------------------------------------------------------------------- textures
def _hash(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """uint32 hash of integer lattice coordinates (arrays of any integer dtype)."""
    x = ix.astype(np.int64).astype(np.uint32)
    y = iy.astype(np.int64).astype(np.uint32)
    h = x * np.uint32(0x8DA6B343) ^ y * np.uint32(0xD8163841) ^ np.uint32(salt & 0xFFFFFFFF)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(12)
    h *= np.uint32(0x297A2D39)
    h ^= h >> np.uint32(15)
    return h


def _unit(h: np.ndarray) -> np.ndarray:
    return (h >> np.uint32(8)).astype(_F) * _F(1.0 / (1 << 24))


def shade_texture(tex: Texture, u: np.ndarray, v: np.ndarray, glyphs: np.ndarray) -> np.ndarray:
    """Albedo (M, 3) of `tex` at metric surface coordinates (u, v) (M,); may exceed 1 slightly (clipped later)."""
    ca, sa = _F(math.cos(tex.angle) / tex.scale), _F(math.sin(tex.angle) / tex.scale)
    u0, v0 = u + _F(tex.offset[0]), v + _F(tex.offset[1])
    su, sv = u0 * ca - v0 * sa, u0 * sa + v0 * ca
    bg, ink, accent = (tex.colors[i].astype(_F) for i in range(3))
    # palette: 0 background, 1 ink, 2 accent, 3 background/accent blend, 4 ink/accent blend
    palette = np.stack([bg, ink, accent, 0.5 * (bg + accent), 0.5 * (ink + accent)]).astype(_F)
    gain = None
    kind = tex.kind
    if kind == "stripes":
        pick = ((su - np.floor(su)) < _F(tex.duty)).astype(np.int8)
    elif kind == "plaid":
        pick = ((su - np.floor(su)) < _F(tex.duty)).astype(np.int8)
        hv = sv * _F(0.5)
        pick += 3 * ((hv - np.floor(hv)) < _F(tex.duty * 0.6))
    elif kind == "checker":
        pick = ((np.floor(su).astype(np.int32) + np.floor(sv).astype(np.int32)) & 1).astype(np.int8)
    elif kind == "dots":
        iu, iv = np.floor(su), np.floor(sv)
        fu, fv = su - iu - _F(0.5), sv - iv - _F(0.5)
        inside = fu * fu + fv * fv < _F((tex.duty * 0.5) ** 2)
        use_accent = (_hash(iu, iv, tex.salt) & np.uint32(3)) == 0
        pick = inside * (1 + use_accent).astype(np.int8)
    elif kind == "glyphs":
        # A cell is 7 x 9 glyph pixels: a 5 x 7 bitmap with a one-pixel margin; some cells and lines are blank.
        gu, gv = np.floor(su * 7).astype(np.int64), np.floor(sv * 7).astype(np.int64)
        cu, cv = gu // 7, gv // 9
        pu, pv = gu - cu * 7 - 1, gv - cv * 9 - 1
        inside = (pu >= 0) & (pu < 5) & (pv >= 0) & (pv < 7)
        h = _hash(cu, cv, tex.salt)
        blank = (_unit(h) < 0.18) | ((_hash(cv, cv, tex.salt + 7) & np.uint32(7)) == 0)
        sel = np.nonzero(inside & ~blank)[0]
        pick = np.zeros(len(su), dtype=np.int8)
        gid = ((h[sel] >> np.uint32(4)) % np.uint32(len(glyphs))).astype(np.int64)
        on = glyphs[gid, 6 - pv[sel], pu[sel]]
        pick[sel] = on * (1 + ((h[sel] & np.uint32(15)) == 1)).astype(np.int8)
    elif kind == "mosaic":
        h = _hash(np.floor(su), np.floor(sv * _F(0.7)), tex.salt)
        pick = ((h & np.uint32(3)) % np.uint32(3)).astype(np.int8)
        gain = _F(0.75) + _F(0.5) * _unit(h >> np.uint32(2))
    else:
        raise ValueError(f"unknown texture kind {kind!r}")
    # Low-frequency modulation so the patterns are not exactly periodic.
    k = _F(2 * math.pi / tex.noise_scale)
    phase = (tex.salt % 1000) * 0.001 * 2 * math.pi
    mod = _F(1) + _F(tex.noise_amount) * (np.sin(k * (u * _F(0.83) + v * _F(0.56)) + _F(phase))
                                          * np.sin(k * (v * _F(0.88) - u * _F(0.47)) + _F(2 * phase)))
    if gain is not None:
        mod *= gain
    return palette[pick] * mod[:, None]


# ---------------------------------------------------------------------------------------------------- rendering
_ROOM_NORMALS = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]


def shade(scene: SyntheticScene, o: Sequence[float], dx: np.ndarray, dy: np.ndarray, dz: np.ndarray,
          hits: Hits) -> np.ndarray:
    """Colours (N, 3): albedo · (ambient + point light · cos · falloff · visibility). View independent."""
    out = np.empty((len(dx), 3), dtype=_F)
    light = [float(x) for x in scene.light]
    falloff_scale = _F(1.0 / (0.6 * float(np.linalg.norm(scene.room))) ** 2)
    groups = []
    for s in range(6):
        idx = np.nonzero(hits.surface == s)[0]
        if len(idx):
            groups.append((s, idx, None, None))
    for k, (idx, n, uv) in hits.objects.items():
        if len(idx):
            groups.append((6 + k, idx, n, uv))
    for s, idx, n, uv in groups:
        t = hits.t[idx]
        p = [_F(o[0]) + t * dx[idx], _F(o[1]) + t * dy[idx], _F(o[2]) + t * dz[idx]]
        if n is None:
            axis = s // 2
            u, v = (p[1], p[2]) if axis == 0 else (p[0], p[2]) if axis == 1 else (p[0], p[1])
            nx, ny, nz = (_F(c) for c in _ROOM_NORMALS[s])
        else:
            (nx, ny, nz), (u, v) = n, uv
        albedo = shade_texture(scene.textures[s], u, v, scene.glyphs)
        vx, vy, vz = p[0] - _F(light[0]), p[1] - _F(light[1]), p[2] - _F(light[2])
        dist2 = vx * vx + vy * vy + vz * vz
        dist = np.sqrt(dist2)
        inv = _F(1) / dist
        vx, vy, vz = vx * inv, vy * inv, vz * inv
        cos = -(nx * vx + ny * vy + nz * vz)
        direct = np.maximum(cos, 0) * (_F(scene.light_strength) / (_F(1) + dist2 * falloff_scale))
        if scene.shadows and scene.objects:
            lit = np.nonzero(direct > 0)[0]
            blocked = _shadowed(scene, vx[lit], vy[lit], vz[lit], dist[lit])
            direct[lit[blocked]] = 0
        out[idx] = np.clip(albedo * (_F(scene.ambient) + direct)[:, None], 0, 1)
    return out


def _camera_directions(k: np.ndarray, width: int, height: int, s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Camera-space unit directions (flattened, row-major) through the s x s regular samples of every pixel."""
    u = (np.arange(width * s, dtype=np.float64) + 0.5) / s
    v = (np.arange(height * s, dtype=np.float64) + 0.5) / s
    uu, vv = np.meshgrid(u, v)
    x, y = (uu - k[0, 2]) / k[0, 0], (vv - k[1, 2]) / k[1, 1]
    norm = np.sqrt(x * x + y * y + 1)
    return (x / norm).reshape(-1), (y / norm).reshape(-1), (1 / norm).reshape(-1)


def _rotate(r: np.ndarray, xc: np.ndarray, yc: np.ndarray, zc: np.ndarray):
    return tuple((_F(r[i, 0]) * xc + _F(r[i, 1]) * yc + _F(r[i, 2]) * zc) for i in range(3))


def render_views(scene: SyntheticScene, c2w: np.ndarray, intrinsics: np.ndarray, width: int, height: int,
                 supersample: int = 2, with_depth: bool = False, block: int = 32768
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Render frames from OpenCV camera-to-world (V,4,4) and pixel intrinsics (V,3,3), pixel centres at +0.5.

    Returns (images (V, H, W, 3) float32 in [0, 1] — the mean of supersample² regular samples per pixel —,
    z-depth at pixel centres (V, H, W) if `with_depth` else None, minimum z-depth over all samples (V,))."""
    c2w, intrinsics = np.asarray(c2w, np.float64), np.asarray(intrinsics, np.float64)
    s = supersample
    n_frames = len(c2w)
    images = np.empty((n_frames, height, width, 3), dtype=_F)
    depth = np.empty((n_frames, height, width), dtype=_F) if with_depth else None
    min_depth = np.empty(n_frames, dtype=_F)
    cache: dict[bytes, tuple] = {}
    for f in range(n_frames):
        key = intrinsics[f].tobytes()
        if key not in cache:
            cache = {key: tuple(a.astype(_F) for a in _camera_directions(intrinsics[f], width, height, s))}
        xc, yc, zc = cache[key]
        o = [float(x) for x in c2w[f, :3, 3]]
        r = c2w[f, :3, :3]
        colour = np.empty((len(xc), 3), dtype=_F)
        zmin = np.inf
        for b0 in range(0, len(xc), block):
            sl = slice(b0, b0 + block)
            dx, dy, dz = _rotate(r, xc[sl], yc[sl], zc[sl])
            hits = trace(scene, o, dx, dy, dz)
            colour[sl] = shade(scene, o, dx, dy, dz, hits)
            zmin = min(zmin, float((hits.t * zc[sl]).min()))
        images[f] = colour.reshape(height, s, width, s, 3).mean(axis=(1, 3))
        min_depth[f] = zmin
        if with_depth:
            x1, y1, z1 = (a.astype(_F) for a in _camera_directions(intrinsics[f], width, height, 1))
            dx, dy, dz = _rotate(r, x1, y1, z1)
            depth[f] = (trace(scene, o, dx, dy, dz, details=False).t * z1).reshape(height, width)
    return images, depth, min_depth


def render_cameras(scene: SyntheticScene, cameras: Cameras, supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Render a `gdensify.Cameras` batch: (images (C,H,W,3), z-depth at pixel centres (C,H,W))."""
    c2w = cameras.camera_to_world.detach().double().cpu().numpy()
    k = cameras.intrinsics.detach().double().cpu().numpy()
    images, depth, _ = render_views(scene, c2w, k, cameras.width, cameras.height, supersample, with_depth=True)
    return images, depth


def _grid_directions(c2w: np.ndarray, k: np.ndarray, width: int, height: int, grid: int):
    u, v = np.meshgrid(np.linspace(0, width, grid), np.linspace(0, height, grid))
    x, y = (u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1]
    norm = np.sqrt(x * x + y * y + 1)
    xc, yc, zc = ((a / norm).reshape(-1).astype(_F) for a in (x, y, np.ones_like(x)))
    return _rotate(c2w[:3, :3], xc, yc, zc), zc


def _min_depth_grid(scene: SyntheticScene, c2w: np.ndarray, k: np.ndarray, width: int, height: int,
                    objects: Sequence[SceneObject] | None = None, grid: int = 17) -> float:
    """Minimum z-depth over a grid of rays spanning the image (corners included); optionally only `objects`."""
    (dx, dy, dz), zc = _grid_directions(c2w, k, width, height, grid)
    o = [float(x) for x in c2w[:3, 3]]
    if objects is None:
        t = trace(scene, o, dx, dy, dz, details=False).t
    else:
        t = np.full(len(dx), np.inf, dtype=_F)
        for obj in objects:
            t = np.minimum(t, _intersect(obj, o, dx, dy, dz, details=False)[0])
    return float((t * zc).min())

# ---------------------------------------------------------------------------------------------------- sampling
def _random_color(rng: np.random.Generator, light: bool) -> np.ndarray:
    h = rng.uniform()
    s = rng.uniform(0.2, 0.9)
    v = rng.uniform(0.7, 1.0) if light else rng.uniform(0.08, 0.45)
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=_F)


def _random_texture(rng: np.random.Generator, big: bool) -> Texture:
    kind = TEXTURE_KINDS[int(rng.integers(len(TEXTURE_KINDS)))]
    light_bg = bool(rng.uniform() < 0.6)
    colors = np.stack([_random_color(rng, light_bg), _random_color(rng, not light_bg),
                       _random_color(rng, bool(rng.uniform() < 0.5))])
    lo, hi = {"stripes": (0.04, 0.25), "plaid": (0.05, 0.3), "checker": (0.05, 0.35), "dots": (0.06, 0.3),
              "glyphs": (0.05, 0.16), "mosaic": (0.08, 0.4)}[kind]
    if not big:
        lo, hi = lo * 0.6, hi * 0.6
    scale = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    angle = float(rng.choice([0.0, math.pi / 2, rng.uniform(0, math.pi)]))
    return Texture(kind=kind, colors=colors, scale=scale, angle=angle, offset=rng.uniform(0, 10, 2).astype(_F),
                   duty=float(rng.uniform(0.3, 0.7)), salt=int(rng.integers(1, 2**31)),
                   noise_scale=float(rng.uniform(0.5, 1.5)), noise_amount=float(rng.uniform(0.08, 0.25)))


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """OpenCV camera-to-world rotation (columns right, down, forward) for yaw about world z, pitch up, roll."""
    f = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)])
    right = np.cross(f, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(f, right)
    c, s = math.cos(roll), math.sin(roll)
    right, down = c * right + s * down, -s * right + c * down
    return np.stack([right, down, f], axis=1)


def _sample_path(rng: np.random.Generator, room: np.ndarray, n_frames: int, cfg: SceneGenConfig) -> np.ndarray:
    """Camera-to-world (V, 4, 4) along a smooth path (not yet checked against the scene)."""
    m = cfg.wall_margin
    lo, hi = np.array([m, m]), room[:2] - m
    for _ in range(200):
        p0 = rng.uniform(lo, hi)
        alpha = rng.uniform(0, 2 * math.pi)
        length = rng.uniform(cfg.path_length_min, cfg.path_length_max)
        direction = np.array([math.cos(alpha), math.sin(alpha)])
        p2 = p0 + length * direction
        p1 = (p0 + p2) / 2 + np.array([-direction[1], direction[0]]) * rng.uniform(-0.25, 0.25) * length
        t = np.linspace(0, 1, n_frames)
        ease = rng.uniform(0, 0.5)
        s = (1 - ease) * t + ease * t * t * (3 - 2 * t)
        xy = ((1 - s) ** 2)[:, None] * p0 + (2 * s * (1 - s))[:, None] * p1 + (s**2)[:, None] * p2
        if (xy < lo).any() or (xy > hi).any():
            continue
        z_hi = min(1.75, room[2] - 0.9)
        z0 = rng.uniform(min(1.3, z_hi), z_hi)
        z = z0 + rng.uniform(-0.1, 0.1) * s
        yaw0 = alpha + math.radians(rng.uniform(-100, 100))
        dyaw = math.radians(rng.uniform(-cfg.yaw_sweep_deg, cfg.yaw_sweep_deg))
        pitch0, dpitch = math.radians(rng.uniform(-12, 4)), math.radians(rng.uniform(-4, 4))
        roll0, droll = math.radians(rng.uniform(-2, 2)), math.radians(rng.uniform(-1.5, 1.5))
        c2w = np.tile(np.eye(4), (n_frames, 1, 1))
        for i in range(n_frames):
            c2w[i, :3, :3] = _rotation(yaw0 + dyaw * s[i], pitch0 + dpitch * s[i], roll0 + droll * s[i])
            c2w[i, :3, 3] = (xy[i, 0], xy[i, 1], z[i])
        return c2w
    raise RuntimeError("could not place a camera path in the room; widen the room or reduce wall_margin")


def _sample_object(rng: np.random.Generator, room: np.ndarray, c2w: np.ndarray) -> SceneObject:
    kind = ("box", "sphere", "cylinder")[int(rng.integers(3))]
    if rng.uniform() < 0.7:  # in front of a random frame, so objects are seen with parallax
        f = c2w[int(rng.integers(len(c2w)))]
        fwd = f[:2, 2] / max(np.linalg.norm(f[:2, 2]), 1e-6)
        xy = f[:2, 3] + fwd * rng.uniform(1.8, 4.0) + np.array([-fwd[1], fwd[0]]) * rng.uniform(-1.2, 1.2)
    else:
        xy = rng.uniform([0, 0], room[:2])
    floating = rng.uniform() < 0.25
    if kind == "box":
        h = np.array([rng.uniform(0.15, 0.6), rng.uniform(0.15, 0.6), rng.uniform(0.15, 0.7)])
        z = rng.uniform(h[2] + 0.3, room[2] - h[2] - 0.3) if floating and room[2] > 2 * h[2] + 0.6 else h[2]
        return SceneObject("box", np.array([xy[0], xy[1], z]), h, float(rng.uniform(0, math.pi)))
    if kind == "sphere":
        r = rng.uniform(0.2, 0.55)
        z = rng.uniform(r + 0.3, min(2.0, room[2] - r - 0.2)) if floating else r
        return SceneObject("sphere", np.array([xy[0], xy[1], max(z, r)]), np.array([r]))
    r, height = rng.uniform(0.12, 0.45), rng.uniform(0.4, min(2.2, room[2]))
    z0 = rng.uniform(0.2, max(0.2, room[2] - height - 0.2)) if floating and room[2] - height > 0.6 else 0.0
    return SceneObject("cylinder", np.array([xy[0], xy[1], z0]), np.array([r, height]))


def _object_ok(obj: SceneObject, room: np.ndarray, placed: list[SceneObject], c2w: np.ndarray,
               k: np.ndarray, cfg: SceneGenConfig, scene: SyntheticScene) -> bool:
    fr = obj.footprint_radius
    if (obj.center[:2] - fr < 0.05).any() or (obj.center[:2] + fr > room[:2] - 0.05).any():
        return False
    if obj.bound_center[2] + (obj.size[2] if obj.kind == "box" else 0) > room[2]:
        return False
    for other in placed:
        if np.linalg.norm(obj.center[:2] - other.center[:2]) < fr + other.footprint_radius + 0.1:
            return False
    if (np.linalg.norm(c2w[:, :3, 3] - obj.bound_center, axis=1) < obj.bound_radius + 0.4).any():
        return False
    if np.linalg.norm(scene.light - obj.bound_center) < obj.bound_radius + 0.1:  # shadow rays start outside
        return False
    margin = cfg.min_depth * 1.04
    return all(_min_depth_grid(scene, c2w[i], k, cfg.width, cfg.height, [obj]) >= margin
               for i in range(len(c2w)))


def sample_scene(rng: np.random.Generator, cfg: SceneGenConfig
                 ) -> tuple[SyntheticScene, np.ndarray, np.ndarray]:
    """A scene and its camera path: (scene, camera-to-world (V,4,4), normalized intrinsics (V,4) fx/W fy/H cx/W cy/H).

    The path is checked on a ray grid (>= min_depth·1.04 everywhere); `generate_scenes` re-checks all samples."""
    w, h = cfg.width, cfg.height
    n_frames = int(rng.integers(cfg.frames_min, cfg.frames_max + 1))
    fov = math.radians(rng.uniform(cfg.fov_deg_min, cfg.fov_deg_max))
    f_px = 0.5 * min(w, h) / math.tan(0.5 * fov)
    cx = w * (0.5 + rng.uniform(-cfg.principal_jitter, cfg.principal_jitter))
    cy = h * (0.5 + rng.uniform(-cfg.principal_jitter, cfg.principal_jitter))
    k = np.array([[f_px, 0, cx], [0, f_px, cy], [0, 0, 1.0]])
    normalized = np.tile([f_px / w, f_px / h, cx / w, cy / h], (n_frames, 1))
    for _ in range(100):
        room = rng.uniform(cfg.room_min, cfg.room_max)
        n_obj = int(rng.integers(cfg.objects_min, cfg.objects_max + 1))
        textures = [_random_texture(rng, big=True) for _ in range(6)] + [
            _random_texture(rng, big=False) for _ in range(n_obj)]
        glyphs = rng.uniform(size=(32, 7, 5)) < 0.45
        glyphs[glyphs.reshape(32, -1).sum(1) < 6] |= rng.uniform(size=(7, 5)) < 0.5
        light = np.array([rng.uniform(0.25, 0.75) * room[0], rng.uniform(0.25, 0.75) * room[1], room[2] - 0.25])
        scene = SyntheticScene(room=room, objects=[], textures=textures, glyphs=glyphs, light=light,
                               light_strength=float(rng.uniform(0.8, 1.1)), ambient=float(rng.uniform(0.3, 0.45)),
                               shadows=cfg.shadows)
        c2w = None
        for _ in range(50):
            cand = _sample_path(rng, room, n_frames, cfg)
            ok = all(_min_depth_grid(scene, cand[i], k, w, h) >= cfg.min_depth * 1.04 for i in range(n_frames))
            # the optical axes must see at least 1.8 m of room (no staring at a nearby wall)
            if ok and _axis_clearance(room, cand) >= 1.8:
                c2w = cand
                break
        if c2w is None:
            continue
        for _ in range(n_obj):
            for _ in range(40):
                obj = _sample_object(rng, room, c2w)
                if _object_ok(obj, room, scene.objects, c2w, k, cfg, scene):
                    scene.objects.append(obj)
                    break
        scene.textures = textures[:6 + len(scene.objects)]
        return scene, c2w, normalized
    raise RuntimeError("could not sample a valid scene; check the room and min_depth settings")


def _axis_clearance(room: np.ndarray, c2w: np.ndarray) -> float:
    """Smallest distance along the optical axes to the room walls over the path."""
    o, f = c2w[:, :3, 3], c2w[:, :3, 2]
    with np.errstate(divide="ignore"):
        t = np.where(f > 0, (room - o) / f, np.where(f < 0, -o / f, np.inf))
    return float(t.min(axis=1).min())


# ---------------------------------------------------------------------------------------------------- writing
def scene_key(seed: int, index: int) -> str:
    """16 hex characters, like RE10K keys; a function of (seed, index) only."""
    return hashlib.blake2b(f"gdensify-scenes:{seed}:{index}".encode(), digest_size=8).hexdigest()


def _scene_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32, index, stream]))


def _jpeg(image: np.ndarray, quality: int) -> torch.Tensor:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality, subsampling=0)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def make_scene(seed: int, index: int, cfg: SceneGenConfig) -> tuple[dict[str, Any], SyntheticScene, dict | None]:
    """Render scene `index` of `seed`: (RE10K scene dict, the scene description, its evaluation entry)."""
    rng = _scene_rng(seed, index)
    for _ in range(20):
        scene, c2w, normalized = sample_scene(rng, cfg)
        w2c = np.linalg.inv(c2w)
        vectors = camera_vectors(torch.from_numpy(w2c), torch.from_numpy(normalized))
        # Render with exactly the stored (float32) cameras.
        w2c_s, norm_s = parse_camera_vectors(vectors)
        c2w_s = torch.linalg.inv(w2c_s).numpy()
        k = np.zeros((len(c2w), 3, 3))
        n = norm_s.numpy()
        k[:, 0, 0], k[:, 1, 1] = n[:, 0] * cfg.width, n[:, 1] * cfg.height
        k[:, 0, 2], k[:, 1, 2], k[:, 2, 2] = n[:, 2] * cfg.width, n[:, 3] * cfg.height, 1
        images, _, min_depth = render_views(scene, c2w_s, k, cfg.width, cfg.height, cfg.supersample)
        if min_depth.min() >= cfg.min_depth:
            break
    else:
        raise RuntimeError(f"scene {index}: could not keep all geometry beyond min_depth={cfg.min_depth}")
    key = scene_key(seed, index)
    frames = [_jpeg(np.round(im * 255).astype(np.uint8), cfg.jpeg_quality) for im in images]
    trng = _scene_rng(seed, index, 1)
    start_time = int(trng.integers(0, 10**8))
    timestamps = torch.tensor([start_time + round(i * 1e6 / 30) for i in range(len(frames))], dtype=torch.int64)
    record = {"url": f"synthetic://gdensify-scenes/{key}", "timestamps": timestamps, "cameras": vectors,
              "images": frames, "key": key}
    gap = cfg.eval_context_gap
    s = int(trng.integers(0, len(frames) - gap))
    targets = [s + round(gap * (j + 1) / (cfg.eval_targets + 1)) for j in range(cfg.eval_targets)]
    entry = {"context": [s, s + gap], "target": targets}
    return record, scene, entry


def _split_sizes(count: int, test_fraction: float) -> tuple[int, int]:
    if not 0 <= test_fraction <= 1:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    n_test = round(count * test_fraction)
    if test_fraction > 0 and count >= 2:
        n_test = max(1, n_test)
    if test_fraction < 1 and count >= 2:
        n_test = min(count - 1, n_test)
    return count - n_test, n_test


_OWNED = ("evaluation_index.json", "dataset.json")


def _prepare_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass overwrite=True (CLI: --overwrite) to replace the "
                                  "dataset in it")
        # Remove only what a previous run wrote, so stale chunks cannot mix with the new ones.
        for split in ("train", "test"):
            d = out / split
            if d.is_dir():
                for p in list(d.glob("*.torch")) + [d / "index.json"]:
                    if p.exists():
                        p.unlink()
        for name in _OWNED:
            if (out / name).exists():
                (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _write_json(path: Path, obj: dict) -> None:
    """One top-level entry per line (diff- and grep-friendly), like MVSplat's index files but readable."""
    body = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in obj.items())
    _write_bytes(path, ("{\n" + body + "\n}\n" if obj else "{}\n").encode())


def _save_chunk(path: Path, records: list[dict]) -> None:
    buf = io.BytesIO()  # in-memory: torch.save to a path embeds the (temporary) file name in the archive
    torch.save(records, buf)
    _write_bytes(path, buf.getvalue())


def _config(config: SceneGenConfig | None, overrides: dict[str, Any]) -> SceneGenConfig:
    names = {f.name for f in dataclasses.fields(SceneGenConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown SceneGenConfig field(s) {unknown}; valid: {sorted(names)}")
    return dataclasses.replace(config or SceneGenConfig(), **overrides)


@dataclass
class GeneratedDataset:
    root: Path
    train_keys: list[str] = field(default_factory=list)
    test_keys: list[str] = field(default_factory=list)
    evaluation_index: dict[str, dict] = field(default_factory=dict)


def generate_scenes(
    out_dir: str | os.PathLike,
    count: int,
    seed: int = 0,
    *,
    test_fraction: float = 0.2,
    overwrite: bool = False,
    progress: bool = True,
    config: SceneGenConfig | None = None,
    **overrides: Any,
) -> GeneratedDataset:
    """Generate `count` scenes into `out_dir` (layout in the module docstring); deterministic given `seed`.

    `config` (a `SceneGenConfig`) and/or keyword overrides of its fields (width, height, frames_min, frames_max,
    supersample, scenes_per_chunk, eval_context_gap, ...) set the generator. Refuses a non-empty `out_dir` unless
    `overwrite=True` (which deletes the chunks, indices and metadata a previous run wrote there, nothing else).
    Every file is written atomically; `dataset.json` is written last. Returns the keys per split and the
    evaluation index."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    cfg = _config(config, overrides)
    out = Path(out_dir)
    n_train, n_test = _split_sizes(count, test_fraction)
    _prepare_output(out, overwrite)
    result = GeneratedDataset(out)
    buffers: dict[str, list[dict]] = {"train": [], "test": []}
    chunk_ids = {"train": 0, "test": 0}
    indices: dict[str, dict[str, str]] = {"train": {}, "test": {}}

    def flush(split: str) -> None:
        if not buffers[split]:
            return
        name = f"{chunk_ids[split]:06d}.torch"
        _save_chunk(out / split / name, buffers[split])
        for rec in buffers[split]:
            indices[split][rec["key"]] = name
        buffers[split], chunk_ids[split] = [], chunk_ids[split] + 1

    for i in tqdm(range(count), desc="scenes", unit="scene", disable=not progress):
        split = "train" if i < n_train else "test"
        record, _, entry = make_scene(seed, i, cfg)
        buffers[split].append(record)
        (result.train_keys if split == "train" else result.test_keys).append(record["key"])
        if split == "test":
            result.evaluation_index[record["key"]] = entry
        if len(buffers[split]) >= cfg.scenes_per_chunk:
            flush(split)
    for split in ("train", "test"):
        flush(split)
        (out / split).mkdir(parents=True, exist_ok=True)
        _write_json(out / split / "index.json", indices[split])
    _write_json(out / "evaluation_index.json", result.evaluation_index)
    # "generator" is the id that existing datasets record (kept)
    _write_json(out / "dataset.json", {
        "generator": "gdensify.data.synthetic_scenes", "version": GENERATOR_VERSION, "seed": seed, "count": count,
        "test_fraction": test_fraction, "splits": {"train": n_train, "test": n_test},
        "near": cfg.min_depth, "far": 100.0, "config": dataclasses.asdict(cfg),
    })
    return result


def scene_description(seed: int, index: int, config: SceneGenConfig | None = None, **overrides: Any
                      ) -> tuple[SyntheticScene, np.ndarray, np.ndarray]:
    """Re-create scene `index` of `seed` (geometry and the float32-stored cameras) without writing anything, for
    tests and analysis: (scene, camera-to-world (V,4,4), normalized intrinsics (V,4)). Renders once to apply the
    same rejection as `generate_scenes`."""
    cfg = _config(config, overrides)
    record, scene, _ = make_scene(seed, index, cfg)
    w2c, norm = parse_camera_vectors(record["cameras"])
    return scene, torch.linalg.inv(w2c).numpy(), norm.numpy()


__all__ = [
    "SceneGenConfig", "SyntheticScene", "SceneObject", "Texture", "TEXTURE_KINDS", "trace", "shade",
    "render_views", "render_cameras", "sample_scene", "make_scene", "scene_key", "generate_scenes",
    "GeneratedDataset", "scene_description",
]

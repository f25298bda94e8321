"""Procedural textured objects with high-frequency detail, rendered exactly, written in the Blender layout.

What one object is
    A union of 1–3 analytic primitives (ellipsoid, box, capped cylinder, torus), each with a random pose and a
    procedural texture in surface coordinates measured in world units: printed-text-like glyph rows, thin stripes,
    dots or checkers, in random contrasting colours, optionally on a two-tone low-frequency band. Every primitive
    lies inside the ball of radius `OBJECT_RADIUS` = 0.5, hence inside the model volume [-0.5, 0.5]³ (the object
    protocol's constants, `gdensify.data.protocol`).

How it is rendered (no Gaussians involved)
    Per pixel, `supersample`² rays (default 2×2) are cast analytically (closed-form quadric/slab intersections, the
    torus quartic by batched companion-matrix eigenvalues plus Newton polishing), shaded Lambertian with one fixed
    world-space light plus ambient (so shading is multi-view consistent), and box-filtered. Alpha is the covered
    fraction of the samples; the PNG stores straight (un-premultiplied) RGB, so compositing rgb·α + bg·(1 − α) on
    any background reproduces the exact anti-aliased render on that background.

Cameras (defaults, chosen for a model whose volume is [-0.5, 0.5]³)
    Pinhole cameras on rings around the origin, looking at the origin, world up +z, at distance
    `OBJECT_CAMERA_DISTANCE` = 2.0 with field of view `OBJECT_FOV` = 0.6 rad (both axes, square images). The ball
    of radius 0.5 subtends a half-angle asin(0.5 / 2) = 0.253 rad < 0.3, so the whole object is in every view and
    fills at most ~84 % of the image width. Training views: 4 rings at elevations −20°, 5°, 30°, 55°;
    test views: rings at −5° and 40°, azimuths half a step off the training rings. Every object gets a random
    global azimuth offset (all its cameras turn together).

Layout written (NeRF-synthetic style, readable by `gdensify.data.load_blender_split`)::

    out_dir/obj_00000/transforms_train.json   {"camera_angle_x", "camera_angle_y", "w", "h", "frames": [...]}
    out_dir/obj_00000/transforms_test.json    frames: {"file_path": "./train/r_000", "transform_matrix": c2w (GL)}
    out_dir/obj_00000/train/r_000.png ...     RGBA, 8 bit
    out_dir/obj_00000/test/r_000.png ...
    out_dir/obj_00000/object.json             the generator parameters and the primitives (for reproduction)

Writing: each object is rendered into a hidden staging folder in `out_dir` (every file written with
`gdensify.io.atomic_path`) and renamed into place, so `obj_*` folders are complete or absent; existing non-empty
object folders are never overwritten unless `overwrite=True` (a folder generated with the same parameters is kept,
so an interrupted run resumes).

Determinism: object `i` of `generate_objects(out, count, seed)` depends only on (seed, i) and the parameters, not on
`count`, so generating 10 then 100 objects gives the same first 10. Same seed → identical bytes.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..cameras import Cameras, intrinsics_matrix, look_at, opengl_to_opencv
from ..data.protocol import OBJECT_CAMERA_DISTANCE, OBJECT_FOV, OBJECT_RADIUS
from ..io.atomic import atomic_path
from ..io.staging import owned_temp_prefix, remove_stale

__all__ = [
    "TRAIN_ELEVATIONS_DEG", "TEST_ELEVATIONS_DEG",
    "Texture", "Primitive", "ObjectSpec", "sample_object", "ring_cameras", "render_object", "write_object",
    "generate_objects", "GENERATOR_VERSION",
]

GENERATOR_VERSION = 1
TRAIN_ELEVATIONS_DEG = (-20.0, 5.0, 30.0, 55.0)
TEST_ELEVATIONS_DEG = (-5.0, 40.0)
LIGHT_DIRECTION = (0.45, -0.35, 0.82)  # towards the light, world frame (normalised at use)
AMBIENT = 0.4
DIFFUSE = 0.6

PRIMITIVE_KINDS = ("ellipsoid", "box", "cylinder", "torus")
PATTERNS = ("glyphs", "stripes", "dots", "checker")


# ====================================================================================== object description
@dataclass(frozen=True)
class Texture:
    """A procedural texture on surface coordinates (s, t) in world units.

    pattern: "glyphs" (rows of 5×7 bitmap glyphs, `period` = one glyph pixel), "stripes" (`period` = stripe period,
    `duty` = ink fraction, rotated by `angle`), "dots" (`period` = lattice step, `duty` = dot radius / period),
    "checker" (`period` = square side). `band_period` > 0 adds a low-frequency two-tone band (base / base2)."""

    pattern: str
    base: tuple[float, float, float]
    ink: tuple[float, float, float]
    period: float
    duty: float = 0.5
    angle: float = 0.0
    base2: tuple[float, float, float] | None = None
    band_period: float = 0.0
    glyphs: tuple[int, ...] = ()  # glyph bitmaps, 35 bits each (row-major 7 rows × 5 columns), for "glyphs"
    glyph_hash: int = 0
    space_fraction: float = 0.15


@dataclass(frozen=True)
class Primitive:
    """One analytic shape in its local frame, placed by `rotation` (local→world, row-major 3×3) and `center`.

    size: ellipsoid (a, b, c) radii; box (hx, hy, hz) half extents; cylinder (radius, half_height) around local z;
    torus (major R, minor r) around local z."""

    kind: str
    center: tuple[float, float, float]
    rotation: tuple[tuple[float, float, float], ...]
    size: tuple[float, ...]
    texture: Texture

    def bounding_radius(self) -> float:
        return _bounding_radius(self.kind, self.size)


@dataclass(frozen=True)
class ObjectSpec:
    primitives: tuple[Primitive, ...]
    light_direction: tuple[float, float, float] = LIGHT_DIRECTION
    ambient: float = AMBIENT
    diffuse: float = DIFFUSE

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(data: dict) -> "ObjectSpec":
        prims = []
        for p in data["primitives"]:
            t = dict(p["texture"])
            for key in ("base", "ink", "base2"):
                if t.get(key) is not None:
                    t[key] = tuple(t[key])
            t["glyphs"] = tuple(t.get("glyphs", ()))
            prims.append(Primitive(p["kind"], tuple(p["center"]), tuple(tuple(r) for r in p["rotation"]),
                                   tuple(p["size"]), Texture(**t)))
        return ObjectSpec(tuple(prims), tuple(data.get("light_direction", LIGHT_DIRECTION)),
                          data.get("ambient", AMBIENT), data.get("diffuse", DIFFUSE))


def _bounding_radius(kind: str, size: Sequence[float]) -> float:
    if kind == "ellipsoid":
        return float(max(size))
    if kind == "box":
        return float(np.linalg.norm(size))
    if kind == "cylinder":
        return float(math.hypot(size[0], size[1]))
    if kind == "torus":
        return float(size[0] + size[1])
    raise ValueError(f"unknown primitive kind {kind!r}; expected one of {PRIMITIVE_KINDS}")


# ====================================================================================== random objects
def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _luminance(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    h, s, v = rng.random(), rng.uniform(0.25, 0.95), rng.uniform(0.35, 1.0)
    i, f = int(h * 6) % 6, h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _contrasting_pair(rng: np.random.Generator, min_contrast: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    base = _random_colour(rng)
    for _ in range(64):
        ink = _random_colour(rng) * rng.uniform(0.2, 1.0)
        if abs(_luminance(ink) - _luminance(base)) >= min_contrast:
            return base, ink
    return base, (np.zeros(3) if _luminance(base) > 0.5 else np.ones(3))


def _make_strokes() -> np.ndarray:
    """Pen strokes on the 5 × 7 glyph grid (rows × columns 7 × 5): glyphs are unions of 2–4 of them, which reads
    like printed characters (a segment-display alphabet) rather than noise."""
    strokes = []
    def blank():
        return np.zeros((7, 5), dtype=bool)
    for col in (0, 2, 4):  # full verticals
        g = blank(); g[:, col] = True; strokes.append(g)
    for col in (0, 4):  # half verticals
        for rows in (slice(0, 4), slice(3, 7)):
            g = blank(); g[rows, col] = True; strokes.append(g)
    for row in (0, 3, 6):  # horizontals
        g = blank(); g[row, :] = True; strokes.append(g)
    for flip in (False, True):  # diagonals
        g = blank()
        for r in range(7):
            c = int(round(r * 4 / 6))
            g[r, 4 - c if flip else c] = True
        strokes.append(g)
    g = blank(); g[5:7, 2] = True; strokes.append(g)  # short stem / dot
    return np.stack(strokes)


_STROKES = _make_strokes()


def _random_texture(rng: np.random.Generator) -> Texture:
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    base, ink = _contrasting_pair(rng)
    base2, band = None, 0.0
    if rng.random() < 0.35:
        base2 = np.clip(base * rng.uniform(0.6, 0.9) + rng.uniform(-0.1, 0.1, 3), 0, 1)
        band = float(rng.uniform(0.15, 0.35))
    rnd = lambda x: tuple(round(float(v), 6) for v in x)  # noqa: E731
    common = dict(base=rnd(base), ink=rnd(ink), base2=None if base2 is None else rnd(base2), band_period=band,
                  angle=round(float(rng.uniform(0, math.pi)), 6))
    if pattern == "glyphs":
        glyphs = []
        while len(glyphs) < 48:
            picks = rng.choice(len(_STROKES), size=int(rng.integers(2, 5)), replace=False)
            bits = np.any(_STROKES[picks], axis=0)
            code = int(sum(1 << k for k, b in enumerate(bits.reshape(-1)) if b))
            if code not in glyphs:
                glyphs.append(code)
        return Texture("glyphs", period=round(float(rng.uniform(0.007, 0.016)), 6), duty=1.0, glyphs=tuple(glyphs),
                       glyph_hash=int(rng.integers(1, 2**31 - 1)), space_fraction=round(float(rng.uniform(0.1, 0.25)), 6),
                       **common)
    if pattern == "stripes":
        return Texture("stripes", period=round(float(rng.uniform(0.025, 0.07)), 6),
                       duty=round(float(rng.uniform(0.2, 0.45)), 6), **common)
    if pattern == "dots":
        return Texture("dots", period=round(float(rng.uniform(0.03, 0.08)), 6),
                       duty=round(float(rng.uniform(0.2, 0.38)), 6), **common)
    return Texture("checker", period=round(float(rng.uniform(0.025, 0.08)), 6), **common)


def _random_size(kind: str, b: float, rng: np.random.Generator) -> tuple[float, ...]:
    """Sizes whose bounding radius is exactly b."""
    if kind == "ellipsoid":
        r = np.array([1.0, rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0)])
        return tuple(float(x) for x in rng.permutation(r * b))
    if kind == "box":
        v = rng.uniform(0.3, 1.0, 3)
        return tuple(float(x) for x in v / np.linalg.norm(v) * b)
    if kind == "cylinder":
        phi = rng.uniform(0.35, 1.2)
        return (float(b * math.sin(phi)), float(b * math.cos(phi)))
    minor = b * rng.uniform(0.18, 0.38)
    return (float(b - minor), float(minor))


def sample_object(rng: np.random.Generator | int, max_primitives: int = 3) -> ObjectSpec:
    """A random union of 1..max_primitives textured primitives inside the ball of radius `OBJECT_RADIUS`.

    The first primitive is large (bounding radius 0.28–0.5); later ones overlap or touch it."""
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    weights = np.array([0.4, 0.35, 0.25][:max_primitives])
    count = 1 + int(rng.choice(len(weights), p=weights / weights.sum()))
    prims: list[Primitive] = []
    for i in range(count):
        kind = PRIMITIVE_KINDS[int(rng.integers(len(PRIMITIVE_KINDS)))]
        for _ in range(100):
            if i == 0:
                b = rng.uniform(0.28, OBJECT_RADIUS)
                c = _random_in_ball(rng, OBJECT_RADIUS - b)
            else:
                b = rng.uniform(0.12, 0.3)
                c0, b0 = np.array(prims[0].center), prims[0].bounding_radius()
                c = c0 + _random_in_ball(rng, b0 + 0.3 * b)
            if np.linalg.norm(c) + b <= OBJECT_RADIUS:
                break
        else:  # fall back: shrink towards the origin
            c = c * 0.0
            b = min(b, OBJECT_RADIUS)
        rot = _random_rotation(rng)
        prims.append(Primitive(kind, tuple(round(float(x), 6) for x in c),
                               tuple(tuple(float(x) for x in row) for row in rot),
                               tuple(round(x, 6) for x in _random_size(kind, float(b), rng)), _random_texture(rng)))
    return ObjectSpec(tuple(prims))


def _random_in_ball(rng: np.random.Generator, radius: float) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v) * radius * rng.random() ** (1 / 3)


# ====================================================================================== cameras
def ring_cameras(
    elevations_deg: Sequence[float], count: int, resolution: int = 128, distance: float = OBJECT_CAMERA_DISTANCE,
    fov: float = OBJECT_FOV, azimuth_offset: float = 0.0, half_step: bool = False,
) -> tuple[Cameras, np.ndarray]:
    """`count` cameras spread over rings at the given elevations, looking at the origin, world up +z.

    Ring j gets count // rings views (the first count % rings rings one more), evenly spaced in azimuth,
    staggered by j / rings of a step between rings, plus half a step when `half_step`. Returns the cameras
    (OpenCV, square pixels, principal point at the centre) and the Blender/OpenGL camera-to-world (count, 4, 4)."""
    if count < 1 or not elevations_deg:
        raise ValueError("ring_cameras needs count >= 1 and at least one elevation")
    rings = len(elevations_deg)
    eyes = []
    for j, elev in enumerate(elevations_deg):
        n = count // rings + (1 if j < count % rings else 0)
        for i in range(n):
            az = azimuth_offset + 2 * math.pi * (i + j / rings + (0.5 if half_step else 0.0)) / n
            e = math.radians(elev)
            eyes.append([distance * math.cos(e) * math.cos(az), distance * math.cos(e) * math.sin(az),
                         distance * math.sin(e)])
    eyes_t = torch.tensor(eyes, dtype=torch.float64)
    c2w_cv = look_at(eyes_t, torch.zeros_like(eyes_t), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    c2w_gl = opengl_to_opencv(c2w_cv)  # the flip is its own inverse
    f = 0.5 * resolution / math.tan(0.5 * fov)
    k = intrinsics_matrix(f, f, resolution / 2, resolution / 2).to(torch.float64).expand(len(eyes), 3, 3)
    cams = Cameras(torch.linalg.inv(c2w_cv), k.contiguous(), resolution, resolution)
    return cams, c2w_gl.numpy()


# ====================================================================================== ray casting
# Arrays are component-major (3, N): x, y and z rows, so every operation runs on contiguous rows.
def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _mat(m: np.ndarray, x: np.ndarray) -> np.ndarray:
    """m (3, 3) @ x (3, N) without BLAS (whose threads only add overhead on such thin products)."""
    return np.stack([m[i, 0] * x[0] + m[i, 1] * x[1] + m[i, 2] * x[2] for i in range(3)])


def _intersect(prim: Primitive, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest positive hit of rays (o, d) (world (3, N), d unit) with one primitive.

    Returns t (N,) (inf where missed), local hit points (3, N) and face ids (N,) (box face axis; cylinder 1 = cap)."""
    rot, c = np.asarray(prim.rotation), np.asarray(prim.center)[:, None]
    ol, dl = _mat(rot.T, o - c), _mat(rot.T, d)  # world -> local
    n = o.shape[1]
    face = np.zeros(n, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if prim.kind == "ellipsoid":
            radii = np.asarray(prim.size)[:, None]
            os_, ds = ol / radii, dl / radii
            a, b, cc = _dot(ds, ds), _dot(os_, ds), _dot(os_, os_) - 1.0
            disc = b * b - a * cc
            sq = np.sqrt(np.maximum(disc, 0.0))
            t0, t1 = (-b - sq) / a, (-b + sq) / a
            t = np.where(disc >= 0, np.where(t0 > 1e-9, t0, np.where(t1 > 1e-9, t1, np.inf)), np.inf)
        elif prim.kind == "box":
            h = np.asarray(prim.size)[:, None]
            inv = 1.0 / dl
            ta, tb = (-h - ol) * inv, (h - ol) * inv
            tmin, tmax = np.fmin(ta, tb), np.fmax(ta, tb)  # fmin/fmax ignore NaN (ray in a slab plane)
            tmin = np.where(np.isnan(tmin), -np.inf, tmin)
            tmax = np.where(np.isnan(tmax), np.inf, tmax)
            face = tmin.argmax(0)
            tnear, tfar = tmin.max(0), tmax.min(0)
            t = np.where((tnear <= tfar) & (tnear > 1e-9), tnear, np.inf)
        elif prim.kind == "cylinder":
            r, hh = prim.size
            a = dl[0] ** 2 + dl[1] ** 2
            b = ol[0] * dl[0] + ol[1] * dl[1]
            cc = ol[0] ** 2 + ol[1] ** 2 - r * r
            disc = b * b - a * cc
            ts = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
            side_ok = (disc >= 0) & (a > 1e-12) & (ts > 1e-9) & (np.abs(ol[2] + ts * dl[2]) <= hh)
            t_side = np.where(side_ok, ts, np.inf)
            t_caps = np.full(n, np.inf)
            for sgn in (-1.0, 1.0):
                tc = (sgn * hh - ol[2]) / dl[2]
                xc, yc = ol[0] + tc * dl[0], ol[1] + tc * dl[1]
                ok = (tc > 1e-9) & (xc * xc + yc * yc <= r * r) & (tc < t_caps)
                t_caps = np.where(ok, tc, t_caps)
            t = np.fmin(t_side, t_caps)
            face = (t_caps < t_side).astype(np.int64)
        elif prim.kind == "torus":
            t = _intersect_torus(prim.size[0], prim.size[1], ol, dl)
        else:
            raise ValueError(f"unknown primitive kind {prim.kind!r}")
    p = ol + np.where(np.isfinite(t), t, 0.0) * dl
    return t, p, face


def _cubic_real_roots(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Real roots of x³ + a x² + b x + c (3, N), NaN where a root is complex; closed form (Cardano / trigonometric)."""
    p = b - a * a / 3.0
    q = 2.0 * a ** 3 / 27.0 - a * b / 3.0 + c
    disc = (q / 2.0) ** 2 + (p / 3.0) ** 3
    sq = np.sqrt(np.maximum(disc, 0.0))
    one = np.cbrt(-q / 2.0 + sq) + np.cbrt(-q / 2.0 - sq)
    r = np.sqrt(np.maximum(-p / 3.0, 0.0))
    cos_arg = np.clip(-q / (2.0 * np.maximum(r ** 3, 1e-300)), -1.0, 1.0)
    phi = np.arccos(cos_arg)
    three = np.stack([2 * r * np.cos((phi - 2 * math.pi * k) / 3.0) for k in range(3)])
    single = disc > 0
    roots = np.where(single[None], np.stack([one, np.full_like(one, np.nan), np.full_like(one, np.nan)]), three)
    return roots - a[None] / 3.0


def _intersect_torus(big: float, small: float, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Ray–torus (axis z, |d| = 1): the first root of the quartic P(t) inside the bounding sphere.

    P is positive outside the torus. Between consecutive real roots of P' (closed-form cubic) P is monotonic, so
    the first bracket whose ends change sign holds exactly the first root; bisection then finds it to ~1e-12."""
    n = o.shape[1]
    t = np.full(n, np.inf)
    rb = big + small
    b = _dot(o, d)
    disc = b * b - (_dot(o, o) - rb * rb)
    cand = np.nonzero(disc > 0)[0]
    if len(cand) == 0:
        return t
    sq = np.sqrt(disc[cand])
    t_enter = np.maximum(-b[cand] - sq, 0.0)
    length = np.maximum(-b[cand] + sq - t_enter, 0.0)
    oo, dd = o[:, cand] + t_enter * d[:, cand], d[:, cand]
    e = _dot(oo, dd)
    f = _dot(oo, oo) + big * big - small * small
    g = 4 * big * big
    c3 = 4 * e
    c2 = 4 * e * e + 2 * f - g * (dd[0] ** 2 + dd[1] ** 2)
    c1 = 4 * e * f - 2 * g * (oo[0] * dd[0] + oo[1] * dd[1])
    c0 = f * f - g * (oo[0] ** 2 + oo[1] ** 2)

    def quartic(x):
        return (((x + c3) * x + c2) * x + c1) * x + c0

    crit = _cubic_real_roots(0.75 * c3, 0.5 * c2, 0.25 * c1)  # roots of P'/4
    crit = np.where(np.isnan(crit) | (crit <= 0) | (crit >= length), length, crit)
    crit.sort(axis=0)
    bounds = np.concatenate([np.zeros((1, len(cand))), crit, length[None]])  # (5, M)
    vals = quartic(bounds)
    lo = np.full(len(cand), np.nan)
    hi = np.full(len(cand), np.nan)
    for k in range(3, -1, -1):  # the smallest bracket wins
        change = (vals[k] > 0) & (vals[k + 1] <= 0)
        lo, hi = np.where(change, bounds[k], lo), np.where(change, bounds[k + 1], hi)
    found = ~np.isnan(lo)
    lo, hi = lo[found], hi[found]
    c3, c2, c1, c0 = c3[found], c2[found], c1[found], c0[found]
    x = 0.5 * (lo + hi)
    for _ in range(12):  # Newton safeguarded by bisection inside the monotonic bracket
        val = (((x + c3) * x + c2) * x + c1) * x + c0
        der = ((4 * x + 3 * c3) * x + 2 * c2) * x + c1
        pos = val > 0
        lo, hi = np.where(pos, x, lo), np.where(pos, hi, x)
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = x - val / der
        x = np.where((newton > lo) & (newton < hi), newton, 0.5 * (lo + hi))
    idx = cand[found]
    t[idx] = t_enter[found] + x
    return t


def _local_normals(prim: Primitive, p: np.ndarray, face: np.ndarray) -> np.ndarray:
    n = p.shape[1]
    if prim.kind == "ellipsoid":
        nrm = p / np.square(np.asarray(prim.size))[:, None]
    elif prim.kind == "box":
        nrm = np.zeros_like(p)
        idx = np.arange(n)
        comp = p[face, idx]
        nrm[face, idx] = np.where(comp >= 0, 1.0, -1.0)
    elif prim.kind == "cylinder":
        cap = face == 1
        nrm = np.stack([np.where(cap, 0.0, p[0]), np.where(cap, 0.0, p[1]),
                        np.where(cap, np.where(p[2] >= 0, 1.0, -1.0), 0.0)])
    else:  # torus
        k = 1.0 - prim.size[0] / np.maximum(np.hypot(p[0], p[1]), 1e-12)
        nrm = np.stack([p[0] * k, p[1] * k, p[2]])
    return nrm / np.maximum(np.sqrt(_dot(nrm, nrm)), 1e-12)


def _surface_coords(prim: Primitive, p: np.ndarray, face: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) surface coordinates in (approximately) world units; different faces are offset apart."""
    if prim.kind == "ellipsoid":
        a, b, c = prim.size
        lon = np.arctan2(p[1] / b, p[0] / a)
        lat = np.arcsin(np.clip(p[2] / c, -1, 1))
        return lon * 0.5 * (a + b), lat * c
    if prim.kind == "box":
        idx = np.arange(p.shape[1])
        return p[(face + 1) % 3, idx] + 10.0 * face, p[(face + 2) % 3, idx]
    if prim.kind == "cylinder":
        cap = face == 1
        return np.where(cap, p[0] + 10.0, np.arctan2(p[1], p[0]) * prim.size[0]), np.where(cap, p[1], p[2])
    big, small = prim.size
    rho = np.hypot(p[0], p[1])
    return np.arctan2(p[1], p[0]) * big, np.arctan2(p[2], rho - big) * small


def _texture_colour(tex: Texture, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Albedo (3, N) of the texture at surface coordinates (s, t)."""
    ca, sa = math.cos(tex.angle), math.sin(tex.angle)
    if tex.pattern == "glyphs":
        # text runs along s; a character cell is 6 × 9 glyph pixels (5 × 7 glyph, 1 column and 2 rows of spacing)
        u, v = s / tex.period, t / tex.period
        col, row = np.floor(u / 6.0), np.floor(v / 9.0)
        gx, gy = np.floor(u - 6.0 * col).astype(np.int64), np.floor(v - 9.0 * row).astype(np.int64)
        col, row = col.astype(np.int64), row.astype(np.int64)
        n_glyph = len(tex.glyphs)
        n_slots = n_glyph + max(1, int(round(n_glyph * tex.space_fraction / max(1e-6, 1 - tex.space_fraction))))
        h = (row * 73856093) ^ (col * 19349663) ^ tex.glyph_hash
        h = (h ^ (h >> 13)) * 1274126177
        slot = (h ^ (h >> 16)) % n_slots
        word = np.array(tex.glyphs + (0,), dtype=np.int64)[np.minimum(slot, n_glyph)]
        inside = (gx < 5) & (gy < 7)
        bit = (6 - np.clip(gy, 0, 6)) * 5 + np.clip(gx, 0, 4)
        ink = (inside & (((word >> bit) & 1) == 1)).astype(np.float64)
    elif tex.pattern == "stripes":
        w = (s * ca + t * sa) / tex.period
        ink = ((w - np.floor(w)) < tex.duty).astype(np.float64)
    elif tex.pattern == "dots":
        u, v = (s * ca + t * sa) / tex.period, (-s * sa + t * ca) / tex.period
        row = np.floor(v)
        u = u + 0.5 * (row % 2)  # offset every other row
        du, dv = u - np.floor(u) - 0.5, v - row - 0.5
        ink = ((du * du + dv * dv) < tex.duty ** 2).astype(np.float64)
    elif tex.pattern == "checker":
        u, v = (s * ca + t * sa) / tex.period, (-s * sa + t * ca) / tex.period
        ink = ((np.floor(u) + np.floor(v)) % 2).astype(np.float64)
    else:
        raise ValueError(f"unknown texture pattern {tex.pattern!r}; expected one of {PATTERNS}")
    base = np.asarray(tex.base, dtype=np.float64)[:, None]
    if tex.base2 is not None and tex.band_period > 0:
        band = (np.floor((t * ca - s * sa) / tex.band_period) % 2) > 0
        base = np.where(band[None], np.asarray(tex.base2)[:, None], base)
    return base + (np.asarray(tex.ink)[:, None] - base) * ink[None]


def _shade_rays(spec: ObjectSpec, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shaded colour (3, N) and hit mask (N,) of world rays from one origin o (3, 1) along unit d (3, N)."""
    n = d.shape[1]
    colour = np.zeros((3, n))
    hit = np.zeros(n, dtype=bool)
    b = _dot(o, d)
    cand = np.nonzero(b * b - (_dot(o, o) - (OBJECT_RADIUS + 1e-3) ** 2) > 0)[0]  # rays meeting the object ball
    if len(cand) == 0 or not spec.primitives:
        return colour, hit
    dc = d[:, cand]
    best_t = np.full(len(cand), np.inf)
    best_rgb = np.zeros((3, len(cand)))
    light = np.asarray(spec.light_direction, dtype=np.float64)
    light = light / np.linalg.norm(light)
    for prim in spec.primitives:
        bo = o - np.asarray(prim.center)[:, None]
        rb = prim.bounding_radius() + 1e-6
        bb = _dot(bo, dc)
        sub = np.nonzero(bb * bb - (_dot(bo, bo) - rb * rb) > 0)[0]
        if len(sub) == 0:
            continue
        t, p, face = _intersect(prim, np.broadcast_to(o, (3, len(sub))), dc[:, sub])
        closer = t < best_t[sub]
        if not closer.any():
            continue
        sel = sub[closer]
        p, face = p[:, closer], face[closer]
        nrm = _mat(np.asarray(prim.rotation), _local_normals(prim, p, face))
        albedo = _texture_colour(prim.texture, *_surface_coords(prim, p, face))
        lam = np.clip(light[0] * nrm[0] + light[1] * nrm[1] + light[2] * nrm[2], 0.0, None)
        best_rgb[:, sel] = albedo * (spec.ambient + spec.diffuse * lam)
        best_t[sel] = t[closer]
    hit[cand] = np.isfinite(best_t)
    colour[:, cand] = best_rgb
    return colour, hit


def render_object(spec: ObjectSpec, cameras: Cameras, supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Exact anti-aliased renders of `spec`: straight RGB (V, H, W, 3) and coverage alpha (V, H, W, 1), float32.

    `supersample`² rays per pixel on a regular sub-pixel grid (pixel centres at +0.5, OpenCV cameras); RGB is the
    mean colour of the covered samples (0 where none is covered), so rgb·α + bg·(1 − α) is the box-filtered render
    on background bg."""
    if supersample < 1:
        raise ValueError("supersample must be >= 1")
    ss, w, h = int(supersample), cameras.width, cameras.height
    sub = (np.arange(ss) + 0.5) / ss
    us = (np.arange(w)[:, None] + sub[None, :]).reshape(-1)
    vs = (np.arange(h)[:, None] + sub[None, :]).reshape(-1)
    pix = np.stack([np.broadcast_to(us[None, :], (h * ss, w * ss)).reshape(-1),
                    np.broadcast_to(vs[:, None], (h * ss, w * ss)).reshape(-1), np.ones(h * ss * w * ss)])
    k_all = cameras.intrinsics.detach().cpu().double().numpy()
    c2w_all = cameras.camera_to_world.detach().cpu().double().numpy()
    rgbs, alphas = [], []
    cache: tuple[np.ndarray, np.ndarray] | None = None
    for k, c2w in zip(k_all, c2w_all):
        if cache is None or not np.array_equal(cache[0], k):
            dirs_cam = _mat(np.linalg.inv(k), pix)
            cache = (k, dirs_cam / np.sqrt(_dot(dirs_cam, dirs_cam)))
        dirs = _mat(c2w[:3, :3], cache[1])
        col, hit = _shade_rays(spec, c2w[:3, 3:4], dirs)
        col = (col * hit).reshape(3, h, ss, w, ss)
        cov = hit.astype(np.float64).reshape(h, ss, w, ss)
        col = sum(col[:, :, i, :, j] for i in range(ss) for j in range(ss)) / ss ** 2
        cov = sum(cov[:, i, :, j] for i in range(ss) for j in range(ss)) / ss ** 2
        straight = np.where(cov > 0, col / np.maximum(cov, 1e-12), 0.0)
        rgbs.append(np.clip(straight, 0, 1).transpose(1, 2, 0))
        alphas.append(cov[..., None])
    return np.stack(rgbs).astype(np.float32), np.stack(alphas).astype(np.float32)


# ====================================================================================== writing
def _to_rgba8(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    rgba = np.concatenate([rgb, alpha], -1)
    return np.clip(np.floor(rgba * 255.0 + 0.5), 0, 255).astype(np.uint8)


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        os.chmod(tmp, 0o644)


def _write_split(folder: Path, split: str, spec: ObjectSpec, cams: Cameras, c2w_gl: np.ndarray, fov: float,
                 supersample: int) -> None:
    rgb, alpha = render_object(spec, cams, supersample)
    (folder / split).mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(len(cams)):
        name = f"r_{i:03d}"
        buf = io.BytesIO()
        Image.fromarray(_to_rgba8(rgb[i], alpha[i])).save(buf, format="PNG")  # (H, W, 4) uint8 → RGBA
        _write_bytes(folder / split / f"{name}.png", buf.getvalue())
        frames.append({"file_path": f"./{split}/{name}",
                       "transform_matrix": [[round(float(x), 9) for x in row] for row in c2w_gl[i]]})
    meta = {"camera_angle_x": fov, "camera_angle_y": fov, "w": cams.width, "h": cams.height, "frames": frames}
    _write_bytes(folder / f"transforms_{split}.json", (json.dumps(meta, indent=1) + "\n").encode())


def write_object(
    folder: str | os.PathLike, spec: ObjectSpec, resolution: int = 128, n_train: int = 32, n_test: int = 8,
    azimuth_offset: float = 0.0, supersample: int = 2, distance: float = OBJECT_CAMERA_DISTANCE,
    fov: float = OBJECT_FOV, extra_meta: dict | None = None,
) -> Path:
    """Render `spec` into `folder` in the Blender layout (the folder is created; existing files are replaced, each
    file atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cams_tr, gl_tr = ring_cameras(TRAIN_ELEVATIONS_DEG, n_train, resolution, distance, fov, azimuth_offset)
    cams_te, gl_te = ring_cameras(TEST_ELEVATIONS_DEG, n_test, resolution, distance, fov, azimuth_offset,
                                  half_step=True)
    _write_split(folder, "train", spec, cams_tr, gl_tr, fov, supersample)
    if n_test > 0:
        _write_split(folder, "test", spec, cams_te, gl_te, fov, supersample)
    meta = dict(extra_meta or {})
    meta.update({"object": spec.to_json()})
    _write_bytes(folder / "object.json", (json.dumps(meta, indent=1) + "\n").encode())
    return folder


def _generation_params(seed: int, index: int, resolution: int, n_train: int, n_test: int, supersample: int,
                       max_primitives: int) -> dict:
    # "generator" is the id that existing object folders record (kept, so that their generation resumes)
    return {"generator": "gdensify.data.synthetic_objects", "version": GENERATOR_VERSION, "seed": seed,
            "index": index, "resolution": resolution, "n_train": n_train, "n_test": n_test,
            "supersample": supersample, "max_primitives": max_primitives, "camera_distance": OBJECT_CAMERA_DISTANCE,
            "fov": OBJECT_FOV}


def generate_objects(
    out_dir: str | os.PathLike, count: int, seed: int = 0, resolution: int = 128, n_train: int = 32,
    n_test: int = 8, supersample: int = 2, max_primitives: int = 3, overwrite: bool = False,
    progress: bool = True, start_index: int = 0,
) -> list[Path]:
    """Generate `count` objects as `out_dir/obj_{i:05d}` (i = start_index ..), each in the Blender layout.

    Args:
        out_dir: destination folder (created).
        count: number of objects.
        seed: master seed; object i depends only on (seed, i) and the parameters below.
        resolution: square image size in pixels (default 128).
        n_train / n_test: views in transforms_train.json (rings at `TRAIN_ELEVATIONS_DEG`) and
            transforms_test.json (rings at `TEST_ELEVATIONS_DEG`, half a step off).
        supersample: rays per pixel per axis (anti-aliasing).
        max_primitives: 1..3 primitives per object.
        overwrite: replace existing non-empty object folders. Without it, an existing folder whose object.json
            records the same generation parameters is kept (so an interrupted run resumes), and any other
            non-empty folder raises FileExistsError.
        progress: show a tqdm progress bar.
    Returns the object folders. Each object is rendered into a hidden staging folder inside `out_dir` and renamed
    into place, so a folder `obj_*` is either complete or absent.
    """
    if count < 0 or resolution < 1 or n_train < 1 or n_test < 0 or not 1 <= max_primitives <= 3:
        raise ValueError("generate_objects needs count >= 0, resolution >= 1, n_train >= 1, n_test >= 0 and "
                         "1 <= max_primitives <= 3")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale(out, "obj_*", (".partial", ".old"))  # left by a killed run
    folders = []
    for index in tqdm(range(start_index, start_index + count), desc="objects", unit="obj", disable=not progress):
        folder = out / f"obj_{index:05d}"
        params = _generation_params(seed, index, resolution, n_train, n_test, supersample, max_primitives)
        if folder.exists() and any(folder.iterdir()) and not overwrite:
            try:
                old = json.loads((folder / "object.json").read_text())
                same = {k: old.get(k) for k in params} == params
            except (OSError, ValueError):
                same = False
            if same:
                folders.append(folder)
                continue
            raise FileExistsError(f"{folder} exists and is not empty (and was not generated with these "
                                  f"parameters); pass --overwrite (overwrite=True) to replace it")
        rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
        spec = sample_object(rng, max_primitives)
        azimuth = float(rng.uniform(0, 2 * math.pi))
        staging = Path(tempfile.mkdtemp(prefix=owned_temp_prefix(folder.name), suffix=".partial", dir=out))
        try:
            os.chmod(staging, 0o755)
            write_object(staging, spec, resolution, n_train, n_test, azimuth, supersample, extra_meta=params)
            if folder.exists():
                trash = Path(tempfile.mkdtemp(prefix=owned_temp_prefix(folder.name), suffix=".old", dir=out))
                os.replace(folder, trash / "old")
                os.replace(staging, folder)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(staging, folder)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        folders.append(folder)
    return folders

import json
import math

import numpy as np
import pytest
import torch

from gdensify import Cameras
from gdensify.cameras import look_at
from gdensify.data import load_blender_split
from gdensify.data.protocol import OBJECT_CAMERA_DISTANCE, OBJECT_FOV, OBJECT_RADIUS
from gdensify.synthetic import generate_objects
from gdensify.synthetic.objects import (
    ObjectSpec,
    Primitive,
    Texture,
    _intersect,
    ring_cameras,
    render_object,
    sample_object,
)

IDENTITY = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
PLAIN = Texture("checker", base=(0.8, 0.8, 0.8), ink=(0.8, 0.8, 0.8), period=0.05)


def _sphere(center, radius, texture=PLAIN):
    return ObjectSpec((Primitive("ellipsoid", tuple(center), IDENTITY, (radius,) * 3, texture),))


def test_same_seed_gives_identical_bytes_and_count_does_not_matter(tmp_path):
    a = generate_objects(tmp_path / "a", 2, seed=7, resolution=32, n_train=6, n_test=2, progress=False)
    b = generate_objects(tmp_path / "b", 1, seed=7, resolution=32, n_train=6, n_test=2, progress=False)
    c = generate_objects(tmp_path / "c", 1, seed=8, resolution=32, n_train=6, n_test=2, progress=False)
    files = sorted(p.relative_to(a[0]) for p in a[0].rglob("*") if p.is_file())
    assert {str(f) for f in files} >= {"transforms_train.json", "transforms_test.json", "object.json",
                                       "train/r_000.png", "test/r_001.png"}
    for f in files:
        assert (a[0] / f).read_bytes() == (b[0] / f).read_bytes(), f
    assert (a[0] / "train/r_000.png").read_bytes() != (c[0] / "train/r_000.png").read_bytes()
    assert (a[0] / "train/r_000.png").read_bytes() != (a[1] / "train/r_000.png").read_bytes()
    assert not list((tmp_path / "a").glob(".*"))  # no staging folders left behind


def test_existing_folders_are_kept_resumed_or_refused(tmp_path):
    out = tmp_path / "objs"
    generate_objects(out, 1, seed=1, resolution=16, n_train=4, n_test=1, progress=False)
    png = out / "obj_00000" / "train" / "r_000.png"
    stamp = png.stat().st_mtime_ns
    generate_objects(out, 2, seed=1, resolution=16, n_train=4, n_test=1, progress=False)  # resume: kept as is
    assert png.stat().st_mtime_ns == stamp and (out / "obj_00001").is_dir()
    with pytest.raises(FileExistsError, match="obj_00000.*overwrite=True"):
        generate_objects(out, 1, seed=2, resolution=16, n_train=4, n_test=1, progress=False)
    (out / "obj_00002").mkdir()
    (out / "obj_00002" / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="obj_00002"):
        generate_objects(out, 1, seed=1, resolution=16, n_train=4, n_test=1, progress=False, start_index=2)
    generate_objects(out, 1, seed=2, resolution=16, n_train=4, n_test=1, progress=False, overwrite=True)
    assert json.loads((out / "obj_00000" / "object.json").read_text())["seed"] == 2


def test_sphere_disc_matches_the_camera_projection():
    # a camera on each ring looking at a sphere at the origin: a centred disc of radius f·tan(asin(r / d))
    res, r = 96, 0.4
    cams, _ = ring_cameras([-20.0, 30.0, 70.0], 3, resolution=res)
    _, alpha = render_object(_sphere((0, 0, 0), r), cams, supersample=4)
    f = 0.5 * res / math.tan(0.5 * OBJECT_FOV)
    expected = f * math.tan(math.asin(r / OBJECT_CAMERA_DISTANCE))
    for a in alpha[..., 0]:
        measured = math.sqrt(a.sum() / math.pi)
        assert abs(measured - expected) < 0.3, (measured, expected)
        vv, uu = np.mgrid[:res, :res] + 0.5
        cu, cv = (a * uu).sum() / a.sum(), (a * vv).sum() / a.sum()
        assert abs(cu - res / 2) < 0.05 and abs(cv - res / 2) < 0.05


def test_off_centre_sphere_lands_where_the_cameras_project_it():
    res, r, center = 128, 0.1, torch.tensor([0.25, -0.2, 0.15], dtype=torch.float64)
    cams, _ = ring_cameras([10.0, 45.0], 4, resolution=res)
    _, alpha = render_object(_sphere(center.tolist(), r), cams, supersample=2)
    p = cams.world_to_camera[:, :3, :3] @ center + cams.world_to_camera[:, :3, 3]
    uv = (cams.intrinsics @ p[..., None])[..., 0]
    uv = uv[:, :2] / uv[:, 2:]
    vv, uu = np.mgrid[:res, :res] + 0.5
    for a, (u, v), z in zip(alpha[..., 0], uv.tolist(), p[:, 2].tolist()):
        cu, cv = (a * uu).sum() / a.sum(), (a * vv).sum() / a.sum()
        assert math.hypot(cu - u, cv - v) < 1.0
        f = cams.intrinsics[0, 0, 0].item()
        assert abs(math.sqrt(a.sum() / math.pi) - f * r / z) < 1.5  # ≈ disc of the predicted size


def test_every_primitive_kind_intersects_exactly():
    rng = np.random.default_rng(0)
    o = np.array([[0.0], [0.0], [3.0]]).repeat(2000, 1)
    d = rng.normal(size=(3, 2000)) * np.array([[0.08], [0.08], [0.0]]) + np.array([[0.0], [0.0], [-1.0]])
    d /= np.linalg.norm(d, axis=0)
    rot = tuple(map(tuple, np.linalg.qr(rng.normal(size=(3, 3)))[0] * [1, 1, 1]))
    if np.linalg.det(np.asarray(rot)) < 0:
        rot = tuple(tuple(-x for x in row) for row in rot)
    sizes = {"ellipsoid": (0.3, 0.2, 0.25), "box": (0.2, 0.15, 0.25), "cylinder": (0.18, 0.2), "torus": (0.2, 0.07)}
    implicit = {
        "ellipsoid": lambda p: ((p / np.array(sizes["ellipsoid"])[:, None]) ** 2).sum(0) - 1,
        "box": lambda p: (np.abs(p) - np.array(sizes["box"])[:, None]).max(0),
        "cylinder": lambda p: np.maximum(np.hypot(p[0], p[1]) - 0.18, np.abs(p[2]) - 0.2),
        "torus": lambda p: (np.hypot(p[0], p[1]) - 0.2) ** 2 + p[2] ** 2 - 0.07 ** 2,
    }
    for kind, size in sizes.items():
        prim = Primitive(kind, (0.05, -0.03, 0.02), rot, size, PLAIN)
        t, p_local, _ = _intersect(prim, o, d)
        hit = np.isfinite(t)
        assert 100 < hit.sum() < 2000, kind
        assert np.abs(implicit[kind](p_local[:, hit])).max() < 1e-6, kind
        # points slightly before the hit are outside: it is the first intersection
        before = np.asarray(rot).T @ (o[:, hit] + (t[hit] - 1e-3) * d[:, hit] - np.array(prim.center)[:, None])
        assert (implicit[kind](before) > 0).all(), kind


def test_generated_views_have_high_frequency_detail_and_stay_in_frame(tmp_path):
    folder = generate_objects(tmp_path, 3, seed=3, resolution=64, n_train=8, n_test=2, progress=False)
    for f in folder:
        views = load_blender_split(f, "train", background=(1.0, 1.0, 1.0))
        a = views.masks[..., 0]
        assert a.sum(dim=(1, 2)).min() > 40  # the object is visible in every view
        border = torch.cat([a[:, 0], a[:, -1], a[:, :, 0], a[:, :, -1]], dim=1)
        assert border.max() == 0  # ... and entirely inside the frame
        # high frequency: mean squared gradient inside the object (not only at the silhouette) is large
        img = views.images
        gx = (img[:, :, 1:] - img[:, :, :-1]).square().sum(-1)
        inner = (a[:, :, 1:] == 1) & (a[:, :, :-1] == 1)
        assert gx[inner].mean() > 2e-3
    spec = sample_object(np.random.default_rng(5))
    for prim in spec.primitives:
        assert np.linalg.norm(prim.center) + prim.bounding_radius() <= OBJECT_RADIUS + 1e-6


def test_object_json_round_trip(tmp_path):
    spec = sample_object(np.random.default_rng(11))
    again = ObjectSpec.from_json(json.loads(json.dumps(spec.to_json())))
    cams = Cameras.from_fov(look_at(torch.tensor([[2.0, 0.0, 0.5]]), torch.zeros(1, 3)), 0.6, 24, 24)
    np.testing.assert_array_equal(render_object(spec, cams)[0], render_object(again, cams)[0])

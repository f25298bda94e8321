import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from gdensify import Cameras
from gdensify.cameras import look_at, opengl_to_opencv
from gdensify.data import (
    BlenderFormatError,
    SceneNormalization,
    TrainingViewSampler,
    evaluation_views,
    find_blender_objects,
    load_blender_split,
    read_blender_cameras,
    select_input_views,
)
from gdensify.data.view_samplers import group_views, view_directions
from gdensify.synthetic.objects import (
    TEST_ELEVATIONS_DEG,
    TRAIN_ELEVATIONS_DEG,
    ring_cameras,
    render_object,
    sample_object,
    write_object,
)


def _gl_c2w(eyes, target=(0.0, 0.0, 0.0)):
    eyes = torch.as_tensor(eyes, dtype=torch.float64)
    return opengl_to_opencv(look_at(eyes, torch.as_tensor(target, dtype=torch.float64).expand_as(eyes)))


def _write_dataset(root, split="train", size=(8, 6), n=3, meta=None, mode="RGBA", ext=".png", with_ext=False):
    """A tiny hand-made object: n cameras on a circle of radius 4 around the origin, random RGBA images."""
    root.mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    eyes = [[4 * math.cos(a), 4 * math.sin(a), 1.0] for a in np.linspace(0, 2 * math.pi, n, endpoint=False)]
    c2w = _gl_c2w(eyes)
    frames = []
    for i in range(n):
        arr = rng.integers(0, 256, (size[1], size[0], 4 if mode == "RGBA" else 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / split / f"r_{i}{ext}")
        frames.append({"file_path": f"./{split}/r_{i}" + (ext if with_ext else ""),
                       "transform_matrix": c2w[i].tolist()})
    data = {"camera_angle_x": 0.7, "frames": frames} if meta is None else dict(meta, frames=frames)
    (root / f"transforms_{split}.json").write_text(json.dumps(data))
    return root


# ====================================================================================== reading
def test_round_trip_on_a_generated_object(tmp_path):
    spec = sample_object(np.random.default_rng(4))
    write_object(tmp_path / "obj", spec, resolution=24, n_train=6, n_test=3, azimuth_offset=0.3)
    cams, _ = ring_cameras(TRAIN_ELEVATIONS_DEG, 6, 24, azimuth_offset=0.3)
    views = load_blender_split(tmp_path / "obj", "train", background=(0.0, 0.5, 1.0))
    assert views.images.shape == (6, 24, 24, 3) and views.masks.shape == (6, 24, 24, 1)
    assert views.images.dtype == torch.float32 and views.name == "obj"
    torch.testing.assert_close(views.cameras.world_to_camera, cams.world_to_camera.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(views.cameras.intrinsics, cams.intrinsics.float(), atol=1e-4, rtol=0)
    rgb, alpha = render_object(spec, cams)
    expected = rgb * alpha + np.array([0.0, 0.5, 1.0], dtype=np.float32) * (1 - alpha)
    assert np.abs(views.images.numpy() - expected).max() < 1.5 / 255  # 8-bit quantisation only
    test_cams, _ = ring_cameras(TEST_ELEVATIONS_DEG, 3, 24, azimuth_offset=0.3, half_step=True)
    test = load_blender_split(tmp_path / "obj", "test")
    torch.testing.assert_close(test.cameras.world_to_camera, test_cams.world_to_camera.float(), atol=1e-5, rtol=0)
    assert find_blender_objects(tmp_path) == [tmp_path / "obj"]
    assert find_blender_objects(tmp_path / "obj") == [tmp_path / "obj"]


def test_rgba_composited_on_the_background_and_rgb_accepted(tmp_path):
    root = tmp_path / "o"
    (root / "train").mkdir(parents=True)
    px = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 255, 0, 128], [10, 20, 30, 64]]], dtype=np.uint8)
    Image.fromarray(px, "RGBA").save(root / "train" / "a.png")
    Image.fromarray(px[..., :3].copy(), "RGB").save(root / "train" / "b.jpg", quality=100, subsampling=0)
    c2w = _gl_c2w([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0]]).tolist()
    (root / "transforms_train.json").write_text(json.dumps({"camera_angle_x": 0.5, "frames": [
        {"file_path": "train/a.png", "transform_matrix": c2w[0]},
        {"file_path": "./train/b", "transform_matrix": c2w[1]}]}))
    bg = (0.2, 0.4, 0.6)
    v = load_blender_split(root, background=bg)
    a = px[0, :, 3:] / 255.0
    expected = px[0, :, :3] / 255.0 * a + np.array(bg) * (1 - a)
    np.testing.assert_allclose(v.images[0, 0].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(v.masks[0, 0, :, 0].numpy(), a[:, 0], atol=1e-6)
    assert torch.all(v.masks[1] == 1)  # RGB: opaque
    np.testing.assert_allclose(v.images[1, 0].numpy(), px[0, :, :3] / 255.0, atol=4 / 255)
    jpg = load_blender_split(_write_dataset(tmp_path / "jpg", mode="RGB", ext=".jpg", with_ext=True))
    assert jpg.images.shape == (3, 6, 8, 3) and torch.all(jpg.masks == 1)
    # re-compositing on another background is exact
    white = load_blender_split(root, background=(1.0, 1.0, 1.0))
    torch.testing.assert_close(v.on_background((1.0, 1.0, 1.0)), white.images, atol=1e-6, rtol=0)
    per_view = v.on_background(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))  # e.g. random training greys
    torch.testing.assert_close(per_view[0], white.images[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(per_view[1], v.images[1])  # opaque view: unchanged


def test_intrinsics_from_angle_focal_matrix_and_declared_size(tmp_path):
    w, h = 8, 6
    ang = 0.7
    f = 0.5 * w / math.tan(0.5 * ang)
    by_angle = read_blender_cameras(_write_dataset(tmp_path / "a", size=(w, h)))[0]
    by_focal = read_blender_cameras(_write_dataset(tmp_path / "b", size=(w, h), meta={"fl_x": f, "fl_y": f}))[0]
    torch.testing.assert_close(by_angle.intrinsics, by_focal.intrinsics)
    torch.testing.assert_close(by_angle.world_to_camera, by_focal.world_to_camera)
    assert by_angle.intrinsics[0].flatten().tolist() == pytest.approx([f, 0, w / 2, 0, f, h / 2, 0, 0, 1], abs=1e-5)
    # camera_angle_y gives fy from the height
    k = read_blender_cameras(_write_dataset(tmp_path / "c", size=(w, h), meta={"camera_angle_x": ang,
                                                                                 "camera_angle_y": 0.5}))[0].intrinsics
    assert k[0, 1, 1].item() == pytest.approx(0.5 * h / math.tan(0.25), rel=1e-6)
    # fl_x / cx given for a 16x12 original: scaled to the 8x6 images on disk
    k = read_blender_cameras(_write_dataset(tmp_path / "d", size=(w, h), meta={
        "fl_x": 20.0, "fl_y": 22.0, "cx": 7.0, "cy": 5.0, "w": 16, "h": 12}))[0].intrinsics
    assert k[0].flatten().tolist() == pytest.approx([10.0, 0, 3.5, 0, 11.0, 2.5, 0, 0, 1])
    # a per-frame intrinsic matrix (GSO style) overrides the file level
    root = _write_dataset(tmp_path / "e", size=(w, h))
    data = json.loads((root / "transforms_train.json").read_text())
    data["frames"][1]["intrinsic_matrix"] = [[9.0, 0, 4.1], [0, 9.5, 3.2], [0, 0, 1]]
    (root / "transforms_train.json").write_text(json.dumps(data))
    k = read_blender_cameras(root)[0].intrinsics
    assert k[1].flatten().tolist() == pytest.approx([9.0, 0, 4.1, 0, 9.5, 3.2, 0, 0, 1])
    assert k[0, 0, 0].item() == pytest.approx(f)


def test_blender_axes_convert_to_opencv(tmp_path):
    # a camera at +4x looking at the origin: the origin projects to the principal point, +z (world up) upwards
    root = _write_dataset(tmp_path / "o", n=1)
    cams = read_blender_cameras(root)[0]
    w2c = cams.world_to_camera[0].double()
    p = w2c[:3, :3] @ torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64) + w2c[:3, 3]
    assert p[2] > 0 and abs(p[0]) < 1e-5 and abs(p[1]) < 1e-5
    up = w2c[:3, :3] @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    assert up[1] < -0.9  # OpenCV y points down, so world up is −y


def test_resize_updates_intrinsics_and_keeps_compositing_exact(tmp_path):
    root = _write_dataset(tmp_path / "o", size=(32, 24))
    full = load_blender_split(root, background=(0.0, 0.0, 0.0))
    small = load_blender_split(root, background=(0.0, 0.0, 0.0), resolution=(16, 12))
    assert small.images.shape == (3, 12, 16, 3) and (small.cameras.width, small.cameras.height) == (16, 12)
    torch.testing.assert_close(small.cameras.intrinsics[:, :2], full.cameras.intrinsics[:, :2] / 2)
    # an integer downscale averages blocks (area); other factors use antialiased bilinear
    blocks = full.images.reshape(3, 12, 2, 16, 2, 3).mean(dim=(2, 4))
    torch.testing.assert_close(small.images, blocks, atol=1e-5, rtol=0)
    torch.testing.assert_close(small.on_background((1.0, 1.0, 1.0)),
                               load_blender_split(root, resolution=(16, 12)).images, atol=1e-5, rtol=0)
    assert load_blender_split(root, resolution=8).images.shape == (3, 8, 8, 3)
    odd = load_blender_split(root, resolution=(20, 15))
    assert odd.images.shape == (3, 15, 20, 3) and 0 <= odd.images.min() and odd.images.max() <= 1


def test_normalization_from_cameras_is_explicit_and_consistent(tmp_path):
    center = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    eyes = torch.tensor([[4 * math.cos(a), 4 * math.sin(a), 1.5 * (-1) ** i] for i, a in
                         enumerate(np.linspace(0, 2 * math.pi, 6, endpoint=False))], dtype=torch.float64) + center
    c2w = look_at(eyes, center.expand_as(eyes))
    cams = Cameras.from_fov(c2w, 0.5, 32, 32)
    norm = SceneNormalization.from_cameras(cams, target_distance=2.0)
    assert norm.center == pytest.approx(center.tolist(), abs=1e-6)
    dist = float(eyes.sub(center).norm(dim=-1).mean())
    assert norm.scale == pytest.approx(2.0 / dist, rel=1e-6)
    new = norm.apply(cams)
    assert new.centers.norm(dim=-1).tolist() == pytest.approx([2.0 * e / dist for e in
                                                               eyes.sub(center).norm(dim=-1).tolist()], rel=1e-6)
    # projections of a point and of its normalized image agree
    x = torch.tensor([1.3, 1.8, 3.1], dtype=torch.float64)

    def project(c, p):
        q = c.world_to_camera[:, :3, :3] @ p + c.world_to_camera[:, :3, 3]
        uv = (c.intrinsics @ q[..., None])[..., 0]
        return uv[:, :2] / uv[:, 2:]

    torch.testing.assert_close(project(cams, x), project(new, norm.apply_points(x)))
    torch.testing.assert_close(norm.invert_points(norm.apply_points(x)), x)
    # FOV rule: a camera twice as far with a narrower FOV that sees the same sphere gets the training scale
    far = Cameras.from_fov(look_at(eyes * 2 - center, center.expand_as(eyes)), 2 * math.asin(math.sin(0.25) / 2),
                           32, 32)
    n_near = SceneNormalization.from_cameras(cams, 2.0, target_fov=0.5)
    n_far = SceneNormalization.from_cameras(far, 2.0, target_fov=0.5)
    assert n_near.scale == pytest.approx(2.0 / dist, rel=1e-4) and n_far.scale == pytest.approx(n_near.scale,
                                                                                                  rel=1e-4)
    # applied on load
    root = _write_dataset(tmp_path / "o")
    raw = load_blender_split(root)
    n = SceneNormalization.from_cameras(raw.cameras)
    loaded = load_blender_split(root, normalization=n)
    torch.testing.assert_close(loaded.cameras.world_to_camera, n.apply(raw.cameras).world_to_camera)
    assert SceneNormalization.from_bounds((1, 1, 1), 2.0).scale == 0.25


# ====================================================================================== errors
def _edit(root, fn, split="train"):
    path = root / f"transforms_{split}.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))
    return path


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"transforms_val\.json"):
        load_blender_split(_write_dataset(tmp_path / "a"), "val")
    root = _write_dataset(tmp_path / "b")
    p = _edit(root, lambda d: d["frames"][1].pop("transform_matrix"))
    with pytest.raises(BlenderFormatError, match=f"{p}.*frame 1.*transform_matrix"):
        load_blender_split(root)
    root = _write_dataset(tmp_path / "c")
    p = _edit(root, lambda d: d["frames"][0].pop("file_path"))
    with pytest.raises(BlenderFormatError, match="frame 0.*file_path"):
        load_blender_split(root)
    root = _write_dataset(tmp_path / "d")
    _edit(root, lambda d: d.pop("camera_angle_x"))
    with pytest.raises(BlenderFormatError, match="camera_angle_x"):
        load_blender_split(root)
    root = _write_dataset(tmp_path / "e")
    _edit(root, lambda d: d.pop("frames"))
    with pytest.raises(BlenderFormatError, match="frames"):
        load_blender_split(root)
    root = _write_dataset(tmp_path / "f")
    (root / "train" / "r_2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"r_2"):
        load_blender_split(root)
    root = _write_dataset(tmp_path / "g")
    (root / "train" / "r_1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(BlenderFormatError, match=r"r_1\.png"):
        load_blender_split(root)
    root = _write_dataset(tmp_path / "h")
    _edit(root, lambda d: d["frames"][2]["transform_matrix"][0].__setitem__(3, float("nan")))
    with pytest.raises(BlenderFormatError, match="frame 2.*NaN"):
        load_blender_split(root)
    root = _write_dataset(tmp_path / "i")
    Image.fromarray(np.zeros((5, 5, 4), np.uint8), "RGBA").save(root / "train" / "r_1.png")
    with pytest.raises(BlenderFormatError, match="inconsistent image sizes.*r_1"):
        load_blender_split(root)
    root = _write_dataset(tmp_path / "j")
    (root / "transforms_train.json").write_text("{not json")
    with pytest.raises(BlenderFormatError, match="transforms_train.json.*JSON"):
        load_blender_split(root)
    root = _write_dataset(tmp_path / "k")
    _edit(root, lambda d: d["frames"][0].__setitem__("transform_matrix", [[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0],
                                                                          [0, 0, 0, 1]]))
    with pytest.raises(BlenderFormatError, match="not a rotation"):
        load_blender_split(root)


# ====================================================================================== protocol
def test_input_views_are_deterministic_and_well_spread():
    cams, _ = ring_cameras(TRAIN_ELEVATIONS_DEG, 32, 16, azimuth_offset=1.1)
    idx = select_input_views(cams, 4)
    assert idx[0] == 0 and len(set(idx)) == 4 and idx == select_input_views(cams, 4)
    d = view_directions(cams)[idx]
    angles = torch.rad2deg(torch.arccos((d @ d.T).clamp(-1, 1)))
    assert angles[~torch.eye(4, dtype=torch.bool)].min() > 70  # pairwise spread
    az = torch.atan2(d[:, 1], d[:, 0])
    gaps = torch.diff(torch.sort(torch.remainder(az, 2 * math.pi)).values, append=torch.tensor([0.0]).double())
    gaps[-1] += 2 * math.pi
    assert gaps.max() < math.radians(180)  # no half of the object unseen in azimuth
    # invariant to a rigid move and a scale of the world (directions are taken from the axes' meeting point)
    moved = SceneNormalization((0.3, -2.0, 5.0), 3.7).apply(cams)
    assert select_input_views(moved, 4) == idx


def test_training_sampler_is_seeded_and_spreads_inputs():
    cams, _ = ring_cameras(TRAIN_ELEVATIONS_DEG, 32, 16)
    sampler = TrainingViewSampler(4, 4)
    a = sampler(cams, torch.Generator().manual_seed(3))
    b = sampler(cams, torch.Generator().manual_seed(3))
    assert a == b
    groups = group_views(cams, 4)
    assert sorted(sum(groups, [])) == list(range(32))
    seen = set()
    for s in range(20):
        inputs, targets = sampler(cams, torch.Generator().manual_seed(s))
        assert sorted(next(g for g, m in enumerate(groups) if i in m) for i in inputs) == [0, 1, 2, 3]
        assert len(set(targets)) == 4
        seen.update(inputs)
    assert len(seen) > 12  # inputs vary
    inputs, targets = TrainingViewSampler(4, 6, targets_exclude_inputs=True)(cams, torch.Generator().manual_seed(0))
    assert not set(inputs) & set(targets)
    with pytest.raises(ValueError, match="too few"):
        TrainingViewSampler(4, 30, targets_exclude_inputs=True)(cams, torch.Generator())


def test_evaluation_views_of_a_generated_object(tmp_path):
    write_object(tmp_path / "obj", sample_object(np.random.default_rng(1)), resolution=32, n_train=12, n_test=4)
    ev = evaluation_views(tmp_path / "obj", n_inputs=4, input_resolution=16)
    assert ev.inputs.images.shape == (4, 16, 16, 3) and ev.targets.images.shape == (4, 32, 32, 3)
    assert ev.input_indices == select_input_views(read_blender_cameras(tmp_path / "obj")[0], 4)
    # our generator's cameras already sit at distance 2 around the origin: normalization is the identity
    assert ev.normalization.center == pytest.approx((0, 0, 0), abs=1e-5)
    assert ev.normalization.scale == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(ev.targets.images, load_blender_split(tmp_path / "obj", "test").images)

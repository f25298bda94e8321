"""Capture readers (`gdensify.data.formats`): every layout written from one synthetic object with exact poses must
give back the same cameras, images and object example; bad files must give errors naming the file and frame."""

from __future__ import annotations

import json
import math
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gdensify.cameras import Cameras
from gdensify.data.formats import (CaptureFormatError, LensDistortion, capture_to_object_example, detect_format,
                                   distort_points, read_capture, square_frame, undistort_image, undistort_points)
from gdensify.data.formats.scenes import REFERENCE, capture_to_scene_example, scale_statistic
from gdensify.synthetic.objects import _shade_rays, ring_cameras, render_object, sample_object
from gdensify.synthetic.scenes import SceneGenConfig, render_views, sample_scene, trace

SIZE = 40
VIEWS = 10


# ====================================================================================== the object and its writers
@pytest.fixture(scope="module")
def truth():
    """One object seen by VIEWS ring cameras: OpenCV cameras (float64), GL camera-to-world, 8-bit RGBA renders."""
    spec = sample_object(np.random.default_rng(7))
    cams, c2w_gl = ring_cameras((-10.0, 25.0), VIEWS, SIZE, azimuth_offset=0.3)
    rgb, alpha = render_object(spec, cams, supersample=1)
    rgba8 = np.clip(np.floor(np.concatenate([rgb, alpha], -1) * 255 + 0.5), 0, 255).astype(np.uint8)
    return {"spec": spec, "cams": cams, "c2w_gl": c2w_gl, "rgba8": rgba8}


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _names() -> list[str]:
    return [f"r_{i:03d}.png" for i in range(VIEWS)]


def _rgb_and_masks(folder: Path, truth, images: str = "images", masks: str = "masks", mask_suffix: str = "") -> None:
    for name, rgba in zip(_names(), truth["rgba8"]):
        _png(folder / images / name, rgba[..., :3])
        _png(folder / masks / (name + mask_suffix), rgba[..., 3])


def write_nerfstudio(folder: Path, truth, extra_frames: int = 0) -> Path:
    cams = truth["cams"]
    k = cams.intrinsics[0].tolist()
    frames = []
    for name, rgba, m in zip(_names(), truth["rgba8"], truth["c2w_gl"]):
        _png(folder / "images" / name, rgba)
        frames.append({"file_path": f"images/{name}", "transform_matrix": m.tolist()})
    frames += [{"file_path": f"images/missing_{i}.png", "transform_matrix": truth["c2w_gl"][0].tolist()}
               for i in range(extra_frames)]
    meta = {"fl_x": k[0][0], "fl_y": k[1][1], "cx": k[0][2], "cy": k[1][2], "w": SIZE, "h": SIZE,
            "camera_model": "OPENCV", "aabb_scale": 4, "frames": frames}
    (folder / "transforms.json").write_text(json.dumps(meta))
    return folder


def write_blender(folder: Path, truth) -> Path:
    frames = []
    for name, rgba, m in zip(_names(), truth["rgba8"], truth["c2w_gl"]):
        _png(folder / "train" / name, rgba)
        frames.append({"file_path": f"./train/{name[:-4]}", "transform_matrix": m.tolist()})
    fov = 2 * math.atan(0.5 * SIZE / float(truth["cams"].intrinsics[0, 0, 0]))
    (folder / "transforms_train.json").write_text(json.dumps({"camera_angle_x": fov, "frames": frames}))
    return folder


def _rotation_to_quaternion(r: np.ndarray) -> np.ndarray:
    """wxyz quaternion of a rotation matrix (Shepperd's method: divide by the largest component)."""
    trace = np.trace(r)
    i = int(np.argmax([trace, r[0, 0], r[1, 1], r[2, 2]]))
    if i == 0:
        w = math.sqrt(1 + trace) / 2
        q = [w, (r[2, 1] - r[1, 2]) / (4 * w), (r[0, 2] - r[2, 0]) / (4 * w), (r[1, 0] - r[0, 1]) / (4 * w)]
    elif i == 1:
        x = math.sqrt(1 + r[0, 0] - r[1, 1] - r[2, 2]) / 2
        q = [(r[2, 1] - r[1, 2]) / (4 * x), x, (r[0, 1] + r[1, 0]) / (4 * x), (r[0, 2] + r[2, 0]) / (4 * x)]
    elif i == 2:
        y = math.sqrt(1 - r[0, 0] + r[1, 1] - r[2, 2]) / 2
        q = [(r[0, 2] - r[2, 0]) / (4 * y), (r[0, 1] + r[1, 0]) / (4 * y), y, (r[1, 2] + r[2, 1]) / (4 * y)]
    else:
        z = math.sqrt(1 - r[0, 0] - r[1, 1] + r[2, 2]) / 2
        q = [(r[1, 0] - r[0, 1]) / (4 * z), (r[0, 2] + r[2, 0]) / (4 * z), (r[1, 2] + r[2, 1]) / (4 * z), z]
    return np.array(q)


def write_colmap(folder: Path, truth, binary: bool, points: np.ndarray | None = None) -> Path:
    """COLMAP model in sparse/0 (one PINHOLE camera), RGB images in images/, masks as masks/NAME.png."""
    _rgb_and_masks(folder, truth, mask_suffix=".png")
    model = folder / "sparse" / "0"
    model.mkdir(parents=True)
    cams = truth["cams"]
    k = cams.intrinsics[0].double()
    params = [float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2])]
    w2c = cams.world_to_camera.double().numpy()
    points = np.zeros((0, 3)) if points is None else points
    # image ids in reverse name order: the reader must sort by name, not id
    records = [(VIEWS - i, _rotation_to_quaternion(w2c[i, :3, :3]), w2c[i, :3, 3], name)
               for i, name in enumerate(_names())]
    if binary:
        data = struct.pack("<Q", 1) + struct.pack("<IiQQ", 1, 1, SIZE, SIZE) + struct.pack("<4d", *params)
        (model / "cameras.bin").write_bytes(data)
        data = struct.pack("<Q", len(records))
        for iid, q, t, name in records:
            data += struct.pack("<I7dI", iid, *q, *t, 1) + name.encode() + b"\0"
            data += struct.pack("<Q", 1) + struct.pack("<ddq", 1.5, 2.5, -1)
        (model / "images.bin").write_bytes(data)
        data = struct.pack("<Q", len(points))
        for n, p in enumerate(points):
            data += struct.pack("<Q3d3BdQ", n + 1, *p, 10, 20, 30, 0.5, 1) + struct.pack("<II", 1, 0)
        (model / "points3D.bin").write_bytes(data)
    else:
        (model / "cameras.txt").write_text("# Camera list\n1 PINHOLE %d %d %s\n" % (SIZE, SIZE,
                                                                                   " ".join(map(repr, params))))
        lines = ["# Image list with two lines of data per image:"]
        for j, (iid, q, t, name) in enumerate(records):
            lines.append(" ".join(map(repr, [iid, *q.tolist(), *t.tolist(), 1])) + " " + name)
            lines.append("" if j % 2 else "1.5 2.5 -1")  # COLMAP writes an empty line for images without points
        (model / "images.txt").write_text("\n".join(lines) + "\n")
        (model / "points3D.txt").write_text("".join(f"{n + 1} {p[0]!r} {p[1]!r} {p[2]!r} 10 20 30 0.5 1 0\n"
                                                    for n, p in enumerate(points)))
    return folder


def write_llff(folder: Path, truth, bounds=(1.0, 3.0)) -> Path:
    _rgb_and_masks(folder, truth)
    c2w = truth["cams"].camera_to_world.double().numpy()
    f = float(truth["cams"].intrinsics[0, 0, 0])
    rows = []
    for m in c2w:
        pose = np.stack([m[:3, 1], m[:3, 0], -m[:3, 2], m[:3, 3], [SIZE, SIZE, f]], axis=1)  # down right back c hwf
        rows.append(np.concatenate([pose.reshape(-1), bounds]))
    np.save(folder / "poses_bounds.npy", np.array(rows))
    return folder


NEUS_SCALE, NEUS_OFFSET = 0.8, np.array([0.1, -0.2, 0.05])


def write_neus(folder: Path, truth) -> Path:
    """world_mat = λ·K·[R|t] with a negative projective scale; scale_mat = [[s·I, c], [0, 1]]."""
    _rgb_and_masks(folder, truth, images="image", masks="mask")
    data = {}
    scale_mat = np.eye(4)
    scale_mat[:3, :3] *= NEUS_SCALE
    scale_mat[:3, 3] = NEUS_OFFSET
    for i, (w2c, k) in enumerate(zip(truth["cams"].world_to_camera.double().numpy(),
                                     truth["cams"].intrinsics.double().numpy())):
        k4 = np.eye(4)
        k4[:3, :3] = k
        data[f"world_mat_{i}"] = -2.5 * (k4 @ w2c)
        data[f"scale_mat_{i}"] = scale_mat
    np.savez(folder / "cameras_sphere.npz", **data)
    return folder


def neus_expected_w2c(truth) -> torch.Tensor:
    w2c = truth["cams"].world_to_camera.double().clone()
    r, t = w2c[:, :3, :3], w2c[:, :3, 3]
    w2c[:, :3, 3] = (r @ torch.from_numpy(NEUS_OFFSET) + t) / NEUS_SCALE
    return w2c


WRITERS = {
    "nerfstudio": lambda f, t: write_nerfstudio(f, t),
    "blender": write_blender,
    "colmap-bin": lambda f, t: write_colmap(f, t, binary=True),
    "colmap-txt": lambda f, t: write_colmap(f, t, binary=False),
    "llff": write_llff,
    "neus": write_neus,
}


def _composite(rgba8: np.ndarray, bg: float = 1.0) -> torch.Tensor:
    x = torch.from_numpy(rgba8.astype(np.float32) / 255.0)
    return x[..., :3] * x[..., 3:] + bg * (1 - x[..., 3:])


# ====================================================================================== readers recover everything
@pytest.mark.parametrize("layout", list(WRITERS))
def test_reader_recovers_cameras_and_images(tmp_path, truth, layout):
    folder = WRITERS[layout](tmp_path / layout, truth)
    expected_format = layout.split("-")[0]
    assert detect_format(folder) == expected_format
    cap = read_capture(folder)
    assert cap.format == expected_format and len(cap) == VIEWS
    want_w2c = neus_expected_w2c(truth) if layout == "neus" else truth["cams"].world_to_camera.double()
    assert (cap.cameras.world_to_camera.double() - want_w2c).abs().max() < 1e-5
    assert (cap.cameras.intrinsics.double() - truth["cams"].intrinsics.double()).abs().max() < 1e-5
    images, masks = cap.load()
    assert masks is not None  # alpha channel or a mask folder
    composite = images * masks + (1 - masks)
    assert (composite - _composite(truth["rgba8"])).abs().max() < 1e-5


def test_object_example_is_the_same_from_every_format(tmp_path, truth):
    ref = capture_to_object_example(read_capture(write_nerfstudio(tmp_path / "ref", truth)), input_size=32,
                                    target_size=24)
    examples = {}
    for layout, writer in WRITERS.items():
        cap = read_capture(writer(tmp_path / layout, truth))
        # the ring's views tie in the farthest-view choice: float32 Blender cameras may break a tie differently
        inputs = ref.input_indices if layout == "blender" else None
        examples[layout] = capture_to_object_example(cap, inputs=inputs, input_size=32, target_size=24)
    assert ref.center_source == "the input masks' centroids"
    for layout, ex in examples.items():
        assert ex.input_indices == ref.input_indices and ex.target_indices == ref.target_indices, layout
        assert (ex.example.input_images - ref.example.input_images).abs().max() < 1e-5, layout
        assert (ex.example.target_images - ref.example.target_images).abs().max() < 1e-5, layout
        for a, b in ((ex.example.input_cameras, ref.example.input_cameras),
                     (ex.example.target_cameras, ref.example.target_cameras)):
            assert (a.world_to_camera - b.world_to_camera).abs().max() < 1e-4, layout
            assert (a.intrinsics - b.intrinsics).abs().max() < 1e-4, layout
    # normalised like the protocol: input cameras at mean distance 2 from the centre (now the origin)
    dist = ref.example.input_cameras.centers.norm(dim=-1).mean()
    assert abs(float(dist) - 2.0) < 1e-4
    # the object's centre: mask centroids land near the primitives' centre of mass, far from 0.5 off
    assert np.linalg.norm(np.array(ref.center)) < 0.25


def test_object_example_overrides_and_inputs(tmp_path, truth):
    cap = read_capture(write_nerfstudio(tmp_path / "o", truth))
    ex = capture_to_object_example(cap, inputs=[3, 7], center=(0.1, 0.0, 0.0), radius=1.0, input_size=16)
    assert ex.input_indices == [3, 7] and len(ex.target_indices) == VIEWS - 2
    assert ex.center == (0.1, 0.0, 0.0) and abs(ex.radius - 1.0) < 1e-12
    assert abs(ex.normalization.scale - 0.5) < 1e-12  # radius 1 → the model's ball of radius 0.5
    assert "--center" in ex.summary() and "--radius" in ex.summary()
    assert capture_to_object_example(cap, inputs=[3, 7], max_targets=3, input_size=16).target_indices == [0, 5, 9]
    with pytest.raises(CaptureFormatError, match="out of range|frame indices"):
        capture_to_object_example(cap, inputs=[0, 99])
    with pytest.raises(CaptureFormatError, match="cannot choose 40 input views out of 10"):
        capture_to_object_example(cap, n_inputs=40)


def test_object_example_without_masks_uses_the_look_at_point(tmp_path, truth):
    folder = write_colmap(tmp_path / "c", truth, binary=True)
    for p in (folder / "masks").iterdir():
        p.unlink()
    (folder / "masks").rmdir()
    ex = capture_to_object_example(read_capture(folder), input_size=16)
    assert ex.center_source == "the cameras' look-at point"
    assert np.linalg.norm(np.array(ex.center)) < 1e-6  # ring cameras look at the origin


def test_sparse_points_centre_the_object(tmp_path, truth):
    rng = np.random.default_rng(0)
    blob = rng.normal(size=(200, 3)) * 0.05 + np.array([0.2, -0.1, 0.05])
    far = rng.normal(size=(50, 3)) * 20  # background points, mostly outside some view
    folder = write_colmap(tmp_path / "c", truth, binary=True, points=np.concatenate([blob, far]))
    for p in (folder / "masks").iterdir():
        p.unlink()
    (folder / "masks").rmdir()
    cap = read_capture(folder)
    assert cap.points.shape == (250, 3)
    ex = capture_to_object_example(cap, input_size=16)
    assert "sparse points" in ex.center_source
    assert np.linalg.norm(np.array(ex.center) - [0.2, -0.1, 0.05]) < 0.03


# ====================================================================================== non-square frames
def test_square_frame_crops_and_pads_without_squashing():
    rgb = torch.rand(30, 50, 3)
    k = torch.tensor([[40.0, 0, 25.0], [0, 40.0, 15.0], [0, 0, 1]])
    point = torch.tensor([0.1, -0.05, 1.0])  # a camera-space point and its pixel
    uv = (k @ point)[:2] / point[2]
    for mode, side in (("crop", 30), ("pad", 50)):
        out, mask, k2 = square_frame(rgb, None, k, mode)
        assert out.shape == (side, side, 3)
        uv2 = (k2 @ point)[:2] / point[2]
        shift = torch.tensor([(side - 50) / 2, (side - 30) / 2])
        assert torch.allclose(uv2, uv + shift)
        assert k2[0, 0] == k2[1, 1] == 40.0  # no squashing
        r, c = int(uv2[1]), int(uv2[0])
        assert torch.equal(out[r, c], rgb[int(uv[1]), int(uv[0])])
        if mode == "pad":
            assert mask[0, 0, 0] == 0 and mask[25, 25, 0] == 1


def test_wide_frames_are_centre_cropped_not_squashed(tmp_path, truth):
    """The same views on 8-pixel transparent side bands (56×40, principal point moved): the cropped example is the
    square capture's example."""
    square = capture_to_object_example(read_capture(write_nerfstudio(tmp_path / "sq", truth)), input_size=20)
    folder = write_nerfstudio(tmp_path / "wide", truth)
    meta = json.loads((folder / "transforms.json").read_text())
    meta.update(w=SIZE + 16, cx=meta["cx"] + 8)
    (folder / "transforms.json").write_text(json.dumps(meta))
    for name, rgba in zip(_names(), truth["rgba8"]):
        _png(folder / "images" / name, np.pad(rgba, ((0, 0), (8, 8), (0, 0))))
    wide = capture_to_object_example(read_capture(folder), input_size=20)
    assert wide.input_indices == square.input_indices
    assert (wide.example.input_images - square.example.input_images).abs().max() < 1e-6
    assert (wide.example.input_cameras.intrinsics - square.example.input_cameras.intrinsics).abs().max() < 1e-5
    assert (wide.example.target_images - square.example.target_images).abs().max() < 1e-6


# ====================================================================================== lens distortion
@pytest.mark.parametrize("d", [LensDistortion("opencv", k1=-0.2, k2=0.05, k3=0.01, p1=0.003, p2=-0.002),
                               LensDistortion("fisheye", k1=0.05, k2=-0.01, k3=0.002, k4=-0.001)])
def test_undistort_points_inverts_the_closed_form_model(d):
    xy = torch.rand(500, 2, dtype=torch.float64) * 1.2 - 0.6
    back, ok = undistort_points(distort_points(xy, d), d)
    assert bool(ok.all())
    assert (back - xy).abs().max() < 1e-9


def _render_distorted(spec, cams: Cameras, d: LensDistortion, ss: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Exact render of the distorted camera: each sub-pixel sample's ray is the undistorted direction."""
    k = cams.intrinsics[0].double()
    c2w = cams.camera_to_world.double()
    size = cams.width
    sub = (torch.arange(ss, dtype=torch.float64) + 0.5) / ss
    u = (torch.arange(size, dtype=torch.float64)[:, None] + sub).reshape(-1)
    v, u = torch.meshgrid(u, u, indexing="ij")
    xy_d = torch.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1]], dim=-1)
    xy, ok = undistort_points(xy_d, d)
    assert bool(ok.all())
    dirs = torch.nn.functional.normalize(torch.cat([xy, torch.ones_like(xy[..., :1])], -1), dim=-1)
    rgbs, alphas = [], []
    for m in c2w:
        world = (dirs.reshape(-1, 3) @ m[:3, :3].T).T.numpy()
        col, hit = _shade_rays(spec, m[:3, 3:4].numpy(), world)
        col = (col * hit).reshape(3, size, ss, size, ss).mean(axis=(2, 4))
        cov = hit.astype(np.float64).reshape(size, ss, size, ss).mean(axis=(1, 3))
        rgbs.append(np.where(cov > 0, col / np.maximum(cov, 1e-12), 0).transpose(1, 2, 0))
        alphas.append(cov[..., None])
    return np.stack(rgbs), np.stack(alphas)


def _rgba8(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(np.concatenate([rgb, alpha], -1) * 255 + 0.5), 0, 255).astype(np.uint8)


def test_distorted_transforms_json_is_undistorted(tmp_path, truth):
    """Frames rendered exactly through a known Brown–Conrady lens (barrel, 1–2.5 px of displacement on the object
    at 96²) come back matching the exact pinhole render. Tolerance: one bilinear resampling of anti-aliased edges
    and thin texture lines errs on those pixels only, whose share falls as 1/size (measured mean error 0.0070 at
    96², 0.0040 at 192², against 0.014 for the distorted frames used as they are). So we require the mean error
    below 0.008 and 0.6× the raw frames' error, and the true coefficients to beat k1 off by ±30 %."""
    size = 96
    d = LensDistortion("opencv", k1=-0.6, k2=0.1, p1=0.01, p2=-0.008)
    cams, c2w_gl = ring_cameras((-10.0, 25.0), 2, size, azimuth_offset=0.3)
    rgb, alpha = _render_distorted(truth["spec"], cams, d)
    rgb0, alpha0 = render_object(truth["spec"], cams, supersample=3)  # the pinhole truth, same anti-aliasing
    folder = tmp_path / "distorted"
    k = cams.intrinsics[0].tolist()
    frames = []
    for i in range(len(cams)):
        _png(folder / f"f{i}.png", _rgba8(rgb[i], alpha[i]))
        frames.append({"file_path": f"f{i}.png", "transform_matrix": c2w_gl[i].tolist()})
    (folder / "transforms.json").write_text(json.dumps({
        "fl_x": k[0][0], "fl_y": k[1][1], "cx": k[0][2], "cy": k[1][2], "w": size, "h": size,
        "k1": d.k1, "k2": d.k2, "p1": d.p1, "p2": d.p2, "frames": frames}))
    cap = read_capture(folder)
    assert cap.frames[0].distortion == d
    images, masks = cap.load()
    want, raw = _composite(_rgba8(rgb0, alpha0)), _composite(_rgba8(rgb, alpha))
    err, err_raw = float(((images * masks + 1 - masks) - want).abs().mean()), float((raw - want).abs().mean())
    assert err < 0.008 and err < 0.6 * err_raw, (err, err_raw)
    for wrong in (0.7, 1.3):
        off = LensDistortion("opencv", k1=d.k1 * wrong, k2=d.k2, p1=d.p1, p2=d.p2)
        redone = torch.stack([undistort_image(raw[i], cams.intrinsics[i], off)[0] for i in range(len(cams))])
        assert float((redone - want).abs().mean()) > err * 1.1


def test_fisheye_and_unsupported_camera_models(tmp_path, truth):
    folder = write_nerfstudio(tmp_path / "n", truth)
    meta = json.loads((folder / "transforms.json").read_text())
    meta.update(camera_model="OPENCV_FISHEYE", k1=0.01)
    (folder / "transforms.json").write_text(json.dumps(meta))
    cap = read_capture(folder)
    assert cap.frames[0].distortion.model == "fisheye"
    assert cap.load([0])[0].shape == (1, SIZE, SIZE, 3)
    meta.update(camera_model="EQUIRECTANGULAR")
    (folder / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(CaptureFormatError, match=r"transforms.json: frame 0: camera_model 'EQUIRECTANGULAR' is not "
                                                 r"supported"):
        read_capture(folder)


# ====================================================================================== layout details
def test_missing_images_are_skipped_with_one_warning(tmp_path, truth):
    folder = write_nerfstudio(tmp_path / "n", truth, extra_frames=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cap = read_capture(folder)
    assert len(cap) == VIEWS
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and f"skipped 3 of {VIEWS + 3} frames" in messages[0]
    assert cap.extras["aabb_scale"] == 4


def test_absolute_paths_and_mask_path(tmp_path, truth):
    folder = write_nerfstudio(tmp_path / "n", truth)
    meta = json.loads((folder / "transforms.json").read_text())
    for i, f in enumerate(meta["frames"]):
        f["file_path"] = str((folder / f["file_path"]).resolve())
        rgba = truth["rgba8"][i]
        _png(folder / "m" / f"{i}.png", rgba[..., 3])
        _png(folder / f["file_path"], rgba[..., :3].copy())  # no alpha: the mask must come from mask_path
        f["mask_path"] = f"m/{i}.png"
    (folder / "transforms.json").write_text(json.dumps(meta))
    images, masks = read_capture(folder).load([0, 1])
    assert (images * masks + 1 - masks - _composite(truth["rgba8"][:2])).abs().max() < 1e-5


def test_llff_downsampled_folder_and_bounds(tmp_path, truth):
    folder = write_llff(tmp_path / "l", truth, bounds=(1.5, 4.0))
    (folder / "images").rename(folder / "images_2")  # images_2 at the size of the file: focal scaled by 1
    for p in (folder / "images_2").iterdir():
        Image.open(p).resize((SIZE // 2, SIZE // 2)).save(p)
    for p in (folder / "masks").iterdir():
        Image.open(p).resize((SIZE // 2, SIZE // 2)).save(p)
    cap = read_capture(folder)
    assert cap.cameras.width == SIZE // 2
    assert abs(float(cap.cameras.intrinsics[0, 0, 0]) - float(truth["cams"].intrinsics[0, 0, 0]) / 2) < 1e-9
    assert torch.allclose(cap.bounds, torch.tensor([[1.5, 4.0]], dtype=torch.float64).expand(VIEWS, 2))


# ====================================================================================== bad files
def test_truncated_colmap_binary(tmp_path, truth):
    folder = write_colmap(tmp_path / "c", truth, binary=True)
    path = folder / "sparse" / "0" / "images.bin"
    path.write_bytes(path.read_bytes()[:150])
    with pytest.raises(CaptureFormatError, match=r"images.bin: truncated file: image .* needs"):
        read_capture(folder)


def test_colmap_image_without_file_and_unsupported_model(tmp_path, truth):
    folder = write_colmap(tmp_path / "c", truth, binary=False)
    (folder / "images" / "r_004.png").unlink()
    with pytest.raises(CaptureFormatError, match=r"images.txt: image r_004.png: file not found"):
        read_capture(folder)
    folder = write_colmap(tmp_path / "d", truth, binary=False)
    cam = folder / "sparse" / "0" / "cameras.txt"
    cam.write_text(f"1 FULL_OPENCV {SIZE} {SIZE} " + " ".join(["1"] * 12) + "\n")
    with pytest.raises(CaptureFormatError, match="camera 1: camera model FULL_OPENCV is not supported"):
        read_capture(folder)


def test_mismatched_image_counts(tmp_path, truth):
    folder = write_llff(tmp_path / "l", truth)
    (folder / "images" / "r_009.png").unlink()
    with pytest.raises(CaptureFormatError, match=rf"poses_bounds.npy: {VIEWS} poses but {VIEWS - 1} images"):
        read_capture(folder)
    folder = write_neus(tmp_path / "n", truth)
    (folder / "image" / "r_000.png").unlink()
    with pytest.raises(CaptureFormatError, match=rf"cameras_sphere.npz: {VIEWS} cameras .* but {VIEWS - 1} images"):
        read_capture(folder)


def test_nan_poses(tmp_path, truth):
    folder = write_llff(tmp_path / "l", truth)
    arr = np.load(folder / "poses_bounds.npy")
    arr[2, 3] = np.nan
    np.save(folder / "poses_bounds.npy", arr)
    with pytest.raises(CaptureFormatError, match=r"frame 2 \(r_002.png\): pose or bounds contain NaN"):
        read_capture(folder)
    folder = write_neus(tmp_path / "n", truth)
    data = dict(np.load(folder / "cameras_sphere.npz"))
    data["world_mat_5"][0, 0] = np.nan
    np.savez(folder / "cameras_sphere.npz", **data)
    with pytest.raises(CaptureFormatError, match=r"frame 5 \(r_005.png\): world_mat or scale_mat contains NaN"):
        read_capture(folder)
    folder = write_nerfstudio(tmp_path / "s", truth)
    meta = json.loads((folder / "transforms.json").read_text())
    meta["frames"][1]["transform_matrix"][0][3] = float("nan")
    (folder / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"transforms.json: frame 1: transform_matrix contains NaN"):
        read_capture(folder)


@pytest.mark.parametrize("key,value", [("camera_angle_x", 0), ("camera_angle_x", math.pi), ("w", 0),
                                       ("fl_x", -3.0), ("k1", "abc")])
def test_degenerate_intrinsics(tmp_path, truth, key, value):
    folder = write_nerfstudio(tmp_path / "n", truth)
    meta = json.loads((folder / "transforms.json").read_text())
    if key.startswith("camera"):
        del meta["fl_x"], meta["fl_y"]
    meta[key] = value
    (folder / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(CaptureFormatError, match=rf"transforms.json: frame 0: '{key}' "):
        read_capture(folder)


def test_inputs_sharing_one_pose(tmp_path, truth):
    folder = write_nerfstudio(tmp_path / "n", truth)
    meta = json.loads((folder / "transforms.json").read_text())
    for f in meta["frames"]:
        f["transform_matrix"] = meta["frames"][0]["transform_matrix"]
    (folder / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(CaptureFormatError, match="share one camera pose"):
        capture_to_object_example(read_capture(folder), input_size=16)


def test_missing_masks(tmp_path, truth):
    folder = write_colmap(tmp_path / "c", truth, binary=True)
    (folder / "masks" / "r_003.png.png").unlink()
    with pytest.raises(CaptureFormatError, match=rf"no mask for 1 of {VIEWS} frames \(e.g. r_003.png\)"):
        read_capture(folder)
    folder = write_nerfstudio(tmp_path / "n", truth)
    meta = json.loads((folder / "transforms.json").read_text())
    meta["frames"][0]["mask_path"] = "nowhere.png"
    (folder / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(CaptureFormatError, match=r"frame 0: mask_path 'nowhere.png' not found"):
        read_capture(folder)


def test_nothing_detected_lists_what_was_looked_for(tmp_path):
    with pytest.raises(CaptureFormatError, match="looked for transforms_train.json .* poses_bounds.npy"):
        detect_format(tmp_path)
    with pytest.raises(ValueError, match="unknown capture format 'ply'"):
        read_capture(tmp_path, format="ply")


def test_matches_pycolmap(tmp_path, truth):
    pycolmap = pytest.importorskip("pycolmap")
    folder = write_colmap(tmp_path / "c", truth, binary=True, points=np.array([[0.1, 0.2, 0.3]]))
    rec = pycolmap.Reconstruction(str(folder / "sparse" / "0"))
    cap = read_capture(folder)
    for i, name in enumerate(cap.names):
        image = rec.find_image_with_name(name)
        w2c = torch.from_numpy(np.asarray(image.cam_from_world().matrix()))
        assert (cap.cameras.world_to_camera[i, :3] - w2c).abs().max() < 1e-6


# ====================================================================================== scenes
@pytest.fixture(scope="module")
def scene_capture(tmp_path_factory):
    """A small generated room written as a COLMAP model with simulated sparse points (ray hits)."""
    cfg = SceneGenConfig(width=32, height=24, frames_min=14, frames_max=14, eval_context_gap=10, objects_max=2)
    scene, c2w, normalized = sample_scene(np.random.default_rng(3), cfg)
    k = np.array([[normalized[0, 0] * 32, 0, normalized[0, 2] * 32], [0, normalized[0, 1] * 24, normalized[0, 3] * 24],
                  [0, 0, 1]])
    images, _, _ = render_views(scene, c2w, np.repeat(k[None], len(c2w), 0), 32, 24, supersample=1)
    rng = np.random.default_rng(0)
    pts = []
    for m in c2w:
        d_cam = np.linalg.inv(k) @ np.stack([rng.uniform(0, 32, 40), rng.uniform(0, 24, 40), np.ones(40)])
        d = m[:3, :3] @ (d_cam / np.linalg.norm(d_cam, axis=0))
        t = trace(scene, m[:3, 3], *(x.astype(np.float32) for x in d), details=False).t
        pts.append((m[:3, 3:4] + d * t).T)
    folder = tmp_path_factory.mktemp("scene")
    model = folder / "sparse" / "0"
    model.mkdir(parents=True)
    params = " ".join(repr(float(x)) for x in (k[0, 0], k[1, 1], k[0, 2], k[1, 2]))
    (model / "cameras.txt").write_text(f"1 PINHOLE 32 24 {params}\n")
    lines = []
    for i, m in enumerate(c2w):
        w2c = np.linalg.inv(m)
        _png(folder / "images" / f"{i:03d}.png", np.round(images[i] * 255).astype(np.uint8))
        q = _rotation_to_quaternion(w2c[:3, :3])
        lines += [" ".join(map(repr, [i + 1, *q.tolist(), *w2c[:3, 3].tolist(), 1])) + f" {i:03d}.png", ""]
    (model / "images.txt").write_text("\n".join(lines) + "\n")
    points = np.concatenate(pts)
    (model / "points3D.txt").write_text("".join(f"{n} {float(p[0])!r} {float(p[1])!r} {float(p[2])!r} 0 0 0 0\n"
                                                for n, p in enumerate(points)))
    return folder


def test_scene_example_scale_context_and_targets(scene_capture):
    cap = read_capture(scene_capture)
    ex = capture_to_scene_example(cap, image_size=16)
    i, j = ex.context
    assert ex.scale_rule == "depth"
    stat = scale_statistic("depth", cap.cameras, (i, j), cap.points)
    assert abs(ex.scale - REFERENCE["depth"] / stat) < 1e-9
    assert 0.5 < ex.scale < 2.0  # a generated room is already at about the training scale
    assert ex.targets and all(t not in (i, j) for t in ex.targets)
    assert ex.example.input_images.shape == (2, 16, 16, 3) and ex.example.target_images.shape[1:] == (16, 16, 3)
    assert ex.near <= 1.0 and ex.far >= 100.0
    # the same scene written 10x larger gives the same example (equivariance of the rule)
    cap10 = read_capture(scene_capture)
    w2c = cap10.cameras.world_to_camera.clone()
    w2c[:, :3, 3] *= 10
    cap10.cameras = Cameras(w2c, cap10.cameras.intrinsics, cap10.cameras.width, cap10.cameras.height)
    cap10.points = cap10.points * 10
    ex10 = capture_to_scene_example(cap10, image_size=16)
    assert ex10.context == ex.context and ex10.targets == ex.targets
    assert abs(ex10.scale * 10 - ex.scale) < 1e-9
    assert (ex10.example.input_cameras.world_to_camera - ex.example.input_cameras.world_to_camera).abs().max() < 1e-5
    # explicit context, targets and scale
    ex2 = capture_to_scene_example(cap, context=(0, 6), targets=[3], scene_scale=2.0, image_size=(12, 16))
    assert ex2.context == (0, 6) and ex2.targets == [3] and ex2.scale == 2.0 and ex2.scale_rule == "--scene-scale"
    assert ex2.example.input_images.shape == (2, 12, 16, 3)
    with pytest.raises(CaptureFormatError, match="context must be two different frame indices"):
        capture_to_scene_example(cap, context=(0, 0))


def test_scene_scale_without_points(scene_capture):
    cap = read_capture(scene_capture)
    depths = [scale_statistic("depth", cap.cameras, (v, v), cap.points) for v in range(len(cap))]
    cap.points = None
    ex = capture_to_scene_example(cap, image_size=8)
    assert ex.scale_rule == "baseline" and ex.context == (0, 13)  # gap min(V - 1, 30) in capture order
    assert abs(ex.scale * scale_statistic("baseline", cap.cameras, (0, 13)) - REFERENCE["baseline"]) < 1e-9
    assert 1 <= len(ex.targets) <= 3 and all(0 < t < 13 for t in ex.targets)
    cap.bounds = torch.tensor([[0.5 * d, 2.0 * d] for d in depths], dtype=torch.float64)  # sqrt(near·far) = d
    ex = capture_to_scene_example(cap, context=(2, 9), image_size=8)
    assert ex.scale_rule == "bounds"
    assert abs(ex.scale - REFERENCE["bounds"] / (0.5 * (depths[2] + depths[9]))) < 1e-9


# ====================================================================================== the command line
def test_reconstruct_any_format_gives_the_same_metrics(tmp_path, truth, capsys):
    """`gdensify reconstruct --data FOLDER` on the same object written as transforms.json and as a COLMAP model:
    the layout is detected, the same inputs are used, the metrics agree, the .ply comes back in the capture's
    frame, and the line saying how the object was centred and scaled is printed."""
    from gdensify.cli import main
    from gdensify.io import load_ply

    results = []
    for name, writer in (("ns", write_nerfstudio), ("colmap", lambda f, t: write_colmap(f, t, binary=True))):
        folder = writer(tmp_path / name, truth)
        out = tmp_path / f"out_{name}"
        assert main(["reconstruct", "--data", str(folder), "--inputs", "0,3,5,8", "--out", str(out),
                     "--no-progress"]) == 0
        printed = capsys.readouterr().out
        assert "inputs [0, 3, 5, 8]" in printed and "radius" in printed
        results.append(json.loads((out / "metrics.json").read_text()))
        item = next(p for p in out.iterdir() if p.is_dir())
        fine = load_ply(item / "fine.ply")
        centre = fine.means[fine.opacities > 0.1].median(dim=0).values  # the object sits at the origin
        assert centre.norm() < 0.5 * (truth["cams"].centers.norm(dim=-1).mean())
    assert results[0]["n_objects"] == 1
    for key in ("psnr_fine", "psnr_coarse", "ssim_fine"):
        assert abs(results[0][key] - results[1][key]) < 1e-3, key
    # `render` follows the data: through the capture's own cameras, in the frame the .ply was written in
    image = tmp_path / "views.png"
    assert main(["render", str(item / "fine.ply"), "--path", "interpolate", "--cameras", str(tmp_path / "colmap"),
                 "--views", "3", "--resolution", "48", "--out", str(image)]) == 0
    pixels = np.asarray(Image.open(image).convert("RGB"), dtype=np.float32) / 255
    assert (pixels < 0.9).any(axis=-1).mean() > 0.05  # the object is in view, not a blank white image


def test_reconstruct_a_scene_capture_with_a_video(tmp_path, scene_capture, capsys):
    from gdensify.cli import main
    from gdensify.io.video import count_video_frames

    out = tmp_path / "scene"
    assert main(["reconstruct", "--scene", "--data", str(scene_capture), "--context", "2,11", "--video",
                 "--frames", "6", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "context [2, 11]" in printed and "scale" in printed
    item = next(p for p in out.iterdir() if p.is_dir())
    assert count_video_frames(item / "video.mp4") == 6
    assert main(["reconstruct", "--scene", "--data", str(scene_capture), "--context", "2,99", "--out",
                 str(tmp_path / "bad"), "--no-progress"]) == 2
    assert "context" in capsys.readouterr().err

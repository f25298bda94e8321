"""Camera paths: orbit cameras look at the centre, interpolation passes through its keys, spirals face forward."""

import math

import pytest
import torch

from gdensify.cameras import Cameras, look_at
from gdensify.render.camera_paths import catmull_rom, interpolate, orbit, quat_slerp, rotmat_to_quat, spiral


def _project(cams: Cameras, point: torch.Tensor) -> torch.Tensor:
    p = cams.world_to_camera[:, :3, :3] @ point + cams.world_to_camera[:, :3, 3]
    uv = (cams.intrinsics @ p[..., None])[..., 0]
    return uv[:, :2] / uv[:, 2:], p[:, 2]


def test_orbit_looks_at_centre_from_radius_and_elevation():
    centre = torch.tensor([0.3, -0.2, 0.5])
    cams = orbit(centre, 2.5, 12, 80, 60, elevation=math.radians(30), up=(0.0, 0.0, 1.0))
    uv, z = _project(cams, centre)
    assert torch.allclose(uv, torch.tensor([40.0, 30.0]).expand(12, 2), atol=1e-4)
    assert torch.allclose(z, torch.full((12,), 2.5), atol=1e-5)
    offsets = cams.centers - centre
    assert torch.allclose(offsets.norm(dim=-1), torch.full((12,), 2.5), atol=1e-5)
    assert torch.allclose(offsets[:, 2], torch.full((12,), 2.5 * math.sin(math.radians(30))), atol=1e-5)
    # image up (camera −y) has a positive component along world up; azimuth steps are equal
    assert (-cams.camera_to_world[:, 2, 1] > 0).all()
    az = torch.atan2(offsets[:, 1], offsets[:, 0])
    steps = torch.remainder(az.roll(-1) - az, 2 * math.pi)
    assert torch.allclose(steps, torch.full((12,), 2 * math.pi / 12), atol=1e-5)


def test_orbit_rejects_bad_arguments():
    with pytest.raises(ValueError, match="radius"):
        orbit((0, 0, 0), 0.0, 4, 16, 16)


def test_rotmat_quat_and_slerp():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(64, 4, generator=g, dtype=torch.float64), dim=-1)
    from gdensify.gaussians import quat_to_rotmat

    back = rotmat_to_quat(quat_to_rotmat(q))
    assert torch.allclose(back, q * torch.sign(q[:, :1]), atol=1e-10)
    mid = quat_slerp(q[:1], q[1:2], torch.tensor([0.5], dtype=torch.float64))
    a0 = torch.acos((mid * q[:1]).sum().abs().clamp(max=1))
    a1 = torch.acos((mid * q[1:2]).sum().abs().clamp(max=1))
    assert torch.allclose(a0, a1, atol=1e-9)


def test_catmull_rom_passes_through_keys():
    keys = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, 1.0], [4.0, 4.0]])
    t = torch.arange(4, dtype=torch.float64)
    assert torch.allclose(catmull_rom(keys, t), keys.double())
    assert torch.allclose(catmull_rom(keys, t, closed=True), keys.double())


def _keys() -> Cameras:
    eyes = torch.tensor([[2.0, 0.0, 0.5], [0.0, 2.0, 0.8], [-2.0, 0.2, 0.3], [0.1, -2.0, 1.0]])
    c2w = look_at(eyes, torch.zeros_like(eyes))
    k = torch.tensor([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]]).repeat(4, 1, 1)
    k[2, 0, 0] = k[2, 1, 1] = 70.0
    return Cameras.from_camera_to_world(c2w, k, 64, 48)


def test_interpolate_passes_through_keys_open_and_closed():
    keys = _keys()
    m = 5
    path = interpolate(keys, (len(keys) - 1) * m + 1)
    assert torch.allclose(path.world_to_camera[::m], keys.world_to_camera, atol=1e-5)
    assert torch.allclose(path.intrinsics[::m], keys.intrinsics, atol=1e-5)
    assert path.intrinsics[m + 2, 0, 0] > 50.0  # between key 1 (50) and key 2 (70)
    loop = interpolate(keys, len(keys) * m, closed=True)
    assert torch.allclose(loop.world_to_camera[::m], keys.world_to_camera, atol=1e-5)
    r = loop.world_to_camera[:, :3, :3]
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3).expand_as(r), atol=1e-5)
    steps = (loop.centers.roll(-1, 0) - loop.centers).norm(dim=-1)
    assert steps.max() < 3 * steps.min() + 1e-3  # smooth: no jumps


def test_spiral_faces_the_focus_point_around_the_mean_pose():
    eyes = torch.tensor([[x, y, 0.0] for x in (-0.2, 0.2) for y in (-0.1, 0.1)])
    targets = eyes + torch.tensor([0.0, 0.0, 5.0])
    c2w = look_at(eyes, targets, up=torch.tensor([0.0, -1.0, 0.0]))
    k = torch.tensor([[40.0, 0, 32], [0, 40.0, 32], [0, 0, 1]]).repeat(4, 1, 1)
    cams = Cameras.from_camera_to_world(c2w, k, 64, 64, near=1.0, far=10.0)
    path = spiral(cams, 30)
    focus_depth = 1.0 / (0.25 / 1.0 + 0.75 / 10.0)
    uv, z = _project(path, torch.tensor([0.0, 0.0, focus_depth]))
    assert torch.allclose(uv, torch.tensor([32.0, 32.0]).expand(30, 2), atol=1e-3)
    assert (z > 0).all()
    assert (path.centers[:, 0].abs() <= 0.2 + 1e-5).all() and (path.centers[:, 1].abs() <= 0.1 + 1e-5).all()
    assert path.centers[:, 0].max() > 0.15
    with pytest.raises(ValueError, match="depth bounds"):
        spiral(Cameras.from_camera_to_world(c2w, k, 64, 64), 10)

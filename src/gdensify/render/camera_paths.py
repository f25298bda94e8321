"""Camera trajectories for videos: `orbit`, `interpolate` and `spiral`.

Every function returns a `Cameras` batch in the library's conventions: OpenCV camera axes (x right, y down,
z forward), world-to-camera 4×4 matrices, intrinsics in pixels with pixel centres at +0.5. Angles are in radians.
Rotations are interpolated as unit quaternions (wxyz) of the camera-to-world rotation.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

from ..cameras import Cameras, look_at
from ..gaussians import quat_to_rotmat

__all__ = ["orbit", "interpolate", "spiral", "quat_slerp", "rotmat_to_quat", "catmull_rom"]


def _unit(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def orbit(
    center: Float[Tensor, "3"] | tuple[float, float, float],
    radius: float,
    n_frames: int,
    width: int,
    height: int,
    elevation: float = math.radians(20.0),
    fov_x: float = math.radians(40.0),
    up: Float[Tensor, "3"] | tuple[float, float, float] = (0.0, 0.0, 1.0),
    start_azimuth: float = 0.0,
    near: float = 0.01,
    far: float = 1e10,
) -> Cameras:
    """`n_frames` cameras on a circle around `center`, all looking at it, one full turn (the last frame stops one
    step short of the first, so the video loops).

    The circle lies in the plane perpendicular to `up` (world units; +z by default, as in Blender-layout objects),
    raised by `elevation` above it at distance `radius`; image up (camera −y) points along `up` as far as possible.
    The principal point is the image centre and pixels are square (`fov_x` horizontal)."""
    if n_frames < 1:
        raise ValueError(f"orbit: n_frames must be >= 1, got {n_frames}")
    if not radius > 0:
        raise ValueError(f"orbit: radius must be > 0, got {radius}")
    center = torch.as_tensor(center, dtype=torch.float32)
    up = _unit(torch.as_tensor(up, dtype=torch.float32))
    helper = torch.tensor([1.0, 0.0, 0.0]) if abs(float(up[0])) < 0.9 else torch.tensor([0.0, 1.0, 0.0])
    e1 = _unit(torch.linalg.cross(up, helper))
    e2 = torch.linalg.cross(up, e1)
    az = start_azimuth + torch.arange(n_frames, dtype=torch.float32) * (2 * math.pi / n_frames)
    ring = torch.cos(az)[:, None] * e1 + torch.sin(az)[:, None] * e2
    eyes = center + radius * (math.cos(elevation) * ring + math.sin(elevation) * up)
    c2w = look_at(eyes, center.expand_as(eyes), up)
    return Cameras.from_fov(c2w, fov_x, width, height, near=near, far=far)


# ------------------------------------------------------------------------------------------ interpolation
def rotmat_to_quat(r: Float[Tensor, "*batch 3 3"]) -> Float[Tensor, "*batch 4"]:
    """Unit quaternions (wxyz, w >= 0) of rotation matrices (the numerically stable branch per matrix)."""
    m = r.double()
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    candidates = torch.stack([
        torch.stack([1 + trace, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0],
                     m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                     m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0],
                     1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], m[..., 1, 2] + m[..., 2, 1]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
                     1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1),
    ], dim=-2)  # (..., 4, 4): each row is 4·q·q_k for branch k (unnormalised)
    diag = torch.stack([trace, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], -1)
    best = diag.argmax(-1)
    q = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    q = _unit(q)
    q = torch.where(q[..., :1] < 0, -q, q)
    return q.to(r.dtype)


def quat_slerp(q0: Float[Tensor, "*batch 4"], q1: Float[Tensor, "*batch 4"],
               t: Float[Tensor, "*batch"]) -> Float[Tensor, "*batch 4"]:
    """Spherical linear interpolation of unit quaternions along the shorter arc (t = 0 → q0, t = 1 → q1)."""
    q0, q1 = _unit(q0.double()), _unit(q1.double())
    dot = (q0 * q1).sum(-1, keepdim=True)
    q1 = torch.where(dot < 0, -q1, q1)
    dot = dot.abs().clamp(max=1.0)
    t = t.double()[..., None]
    theta = torch.acos(dot)
    sin = torch.sin(theta)
    small = sin < 1e-6
    w0 = torch.where(small, 1 - t, torch.sin((1 - t) * theta) / torch.where(small, 1.0, sin))
    w1 = torch.where(small, t, torch.sin(t * theta) / torch.where(small, 1.0, sin))
    return _unit(w0 * q0 + w1 * q1)


def catmull_rom(points: Float[Tensor, "K D"], t: Float[Tensor, " F"], closed: bool = False) -> Float[Tensor, "F D"]:
    """Uniform Catmull–Rom spline through `points` at parameters `t` (key i at t = i; t in [0, K−1], or [0, K)
    when `closed`). Open ends repeat the end point as the missing neighbour, so the curve passes through every
    key with C¹ continuity."""
    k = len(points)
    p = points.double()
    t = t.double()
    seg = torch.clamp(torch.floor(t).long(), 0, (k if closed else k - 1) - 1)
    s = (t - seg)[:, None]

    def at(i: Tensor) -> Tensor:
        return p[i % k] if closed else p[i.clamp(0, k - 1)]

    p0, p1, p2, p3 = at(seg - 1), at(seg), at(seg + 1), at(seg + 2)
    s2, s3 = s * s, s * s * s
    return 0.5 * (2 * p1 + (p2 - p0) * s + (2 * p0 - 5 * p1 + 4 * p2 - p3) * s2 + (3 * p1 - p0 - 3 * p2 + p3) * s3)


def interpolate(keys: Cameras, n_frames: int, closed: bool = False) -> Cameras:
    """`n_frames` cameras along a smooth path through the key cameras, in their order.

    Centres follow a uniform Catmull–Rom spline; rotations are SLERPed between consecutive keys; intrinsics are
    interpolated linearly. Open paths run from the first key to the last (with n_frames = (K−1)·m + 1, every m-th
    frame is exactly a key); `closed` paths return to the first key (n_frames = K·m puts every m-th frame on a
    key). Image size and near/far are the keys'."""
    k = len(keys)
    if k < 2:
        raise ValueError(f"interpolate: need at least 2 key cameras, got {k}")
    if n_frames < 2:
        raise ValueError(f"interpolate: n_frames must be >= 2, got {n_frames}")
    dtype = keys.world_to_camera.dtype
    c2w = keys.camera_to_world.double().cpu()
    if closed:
        t = torch.arange(n_frames, dtype=torch.float64) * (k / n_frames)
    else:
        t = torch.linspace(0, k - 1, n_frames, dtype=torch.float64)
    centers = catmull_rom(c2w[:, :3, 3], t, closed)
    seg = torch.clamp(torch.floor(t).long(), 0, (k if closed else k - 1) - 1)
    frac = t - seg
    quats = rotmat_to_quat(c2w[:, :3, :3])
    rot = quat_to_rotmat(quat_slerp(quats[seg], quats[(seg + 1) % k], frac))
    intr = keys.intrinsics.double().cpu()
    intrinsics = (1 - frac)[:, None, None] * intr[seg] + frac[:, None, None] * intr[(seg + 1) % k]
    out = torch.eye(4, dtype=torch.float64).repeat(n_frames, 1, 1)
    out[:, :3, :3], out[:, :3, 3] = rot, centers
    device = keys.world_to_camera.device
    return Cameras.from_camera_to_world(out.to(device, dtype), intrinsics.to(device, dtype), keys.width,
                                        keys.height, keys.near, keys.far)


# ------------------------------------------------------------------------------------------ spiral
def _mean_pose(c2w: Tensor) -> Tensor:
    """Average OpenCV camera-to-world pose: mean centre, mean forward (+z) and mean image-up (−y) axes."""
    center = c2w[:, :3, 3].mean(0)
    forward = _unit(c2w[:, :3, 2].mean(0))
    up = _unit(-c2w[:, :3, 1].mean(0))
    right = _unit(torch.linalg.cross(forward, up))
    down = torch.linalg.cross(forward, right)
    pose = torch.eye(4, dtype=c2w.dtype)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, center
    return pose


def spiral(
    cameras: Cameras,
    n_frames: int,
    points: Float[Tensor, "N 3"] | None = None,
    focus_depth: float | None = None,
    rotations: float = 2.0,
    z_rate: float = 0.5,
    radius_percentile: float = 90.0,
    radius_scale: float = 1.0,
) -> Cameras:
    """A forward-facing spiral (LLFF style) around the mean pose of `cameras`, for scenes.

    The mean pose has the mean centre and the averaged forward (+z) and image-up (−y) axes. Radii along the mean
    pose's x, y and z axes are the `radius_percentile`-th percentile of the input centres' absolute offsets
    (× `radius_scale`). Every frame looks at a focus point `focus_depth` in front of the mean pose; by default that
    depth is the weighted harmonic mean 1 / (0.25/near + 0.75/far) of the scene's depth bounds, taken as the 5th
    and 95th percentiles of the depths of `points` (e.g. the Gaussians' means) in the mean camera, else as the
    cameras' own near/far. Intrinsics are the first camera's."""
    if n_frames < 1:
        raise ValueError(f"spiral: n_frames must be >= 1, got {n_frames}")
    dtype, device = cameras.world_to_camera.dtype, cameras.world_to_camera.device
    c2w = cameras.camera_to_world.double().cpu()
    pose = _mean_pose(c2w)
    if focus_depth is None:
        if points is not None and len(points):
            local = (points.double().cpu() - pose[:3, 3]) @ pose[:3, :3]
            z = local[:, 2][local[:, 2] > 0]
            if len(z) == 0:
                raise ValueError("spiral: no point lies in front of the mean camera; pass focus_depth")
            near, far = torch.quantile(z, 0.05).item(), torch.quantile(z, 0.95).item()
        elif cameras.far < 1e9:
            near, far = cameras.near, cameras.far
        else:
            raise ValueError("spiral: the depth bounds are unknown (cameras have no finite far plane and no points "
                             "were given); pass focus_depth or points")
        focus_depth = 1.0 / (0.25 / max(near, 1e-6) + 0.75 / max(far, 1e-6))
    offsets = (c2w[:, :3, 3] - pose[:3, 3]) @ pose[:3, :3]
    radii = torch.quantile(offsets.abs(), radius_percentile / 100.0, dim=0) * radius_scale
    theta = torch.arange(n_frames, dtype=torch.float64) * (2 * math.pi * rotations / n_frames)
    local = torch.stack([torch.cos(theta), -torch.sin(theta), -torch.sin(theta * z_rate)], -1) * radii
    eyes = pose[:3, 3] + local @ pose[:3, :3].T
    focus = pose[:3, 3] + focus_depth * pose[:3, 2]
    poses = look_at(eyes, focus.expand_as(eyes), -pose[:3, 1])
    k = cameras.intrinsics[0].double().cpu().expand(n_frames, 3, 3)
    return Cameras.from_camera_to_world(poses.to(device, dtype), k.to(device, dtype), cameras.width,
                                        cameras.height, cameras.near, cameras.far)


import math

import numpy as np
import pytest
import torch
from plyfile import PlyData

from gdensify import Cameras, Gaussians
from gdensify.cameras import look_at, opengl_to_opencv
from gdensify.gaussians import quat_to_rotmat
from gdensify.io import atomic_path, load_ply, save_ply
from gdensify.sh import eval_sh, sh_basis


def random_gaussians(n: int, degree: int = 1, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return Gaussians(torch.randn(n, 3, generator=g), torch.randn(n, 4, generator=g),
                     torch.randn(n, 3, generator=g) - 3, torch.randn(n, generator=g), torch.randn(n, k, 3, generator=g))


def test_gaussians_validation_names_the_problem():
    g = random_gaussians(4)
    with pytest.raises(ValueError, match="quats"):
        Gaussians(g.means, g.quats[:, :3], g.log_scales, g.opacity_logits, g.sh)
    with pytest.raises(ValueError, match="not a square"):
        Gaussians(g.means, g.quats, g.log_scales, g.opacity_logits, torch.zeros(4, 5, 3))
    with pytest.raises(ValueError, match="dtype"):
        Gaussians(g.means.double(), g.quats, g.log_scales, g.opacity_logits, g.sh)
    bad = g.means.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="means contains NaN"):
        Gaussians(bad, g.quats, g.log_scales, g.opacity_logits, g.sh).validate()


def test_gaussians_indexing_cat_and_activations():
    g = random_gaussians(6, degree=1)
    assert len(g[torch.tensor([0, 2])]) == 2 and len(g[g.opacities > 2.0]) == 0 and len(g[2]) == 1
    both = Gaussians.cat([g, random_gaussians(3, degree=0)])
    assert len(both) == 9 and both.sh_degree == 1 and torch.all(both.sh[6:, 1:] == 0)
    assert torch.allclose(g.rotations.norm(dim=-1), torch.ones(6))
    r = g.rotation_matrices
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3).expand(6, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(r), torch.ones(6), atol=1e-5)
    s = g.scales
    assert torch.allclose(g.covariances, r @ torch.diag_embed(s**2) @ r.transpose(1, 2), atol=1e-6)
    with pytest.raises(ValueError):
        Gaussians.cat([])


def test_quaternion_convention_is_wxyz():
    angle = 0.7  # rotation about z
    q = torch.tensor([math.cos(angle / 2), 0.0, 0.0, math.sin(angle / 2)])
    r = quat_to_rotmat(q)
    expected = torch.tensor([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    assert torch.allclose(r, expected, atol=1e-6)


def test_ply_round_trip_is_exact_and_plyfile_readable(tmp_path):
    g = random_gaussians(10, degree=2)
    path = save_ply(g, tmp_path / "g.ply")
    h = load_ply(path)
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        assert torch.equal(getattr(h, name), getattr(g, name)), name
    v = PlyData.read(str(path))["vertex"]
    assert [p.name for p in v.properties][:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert len([p for p in v.properties if p.name.startswith("f_rest_")]) == 24
    # f_rest is channel-major: f_rest_0 is red coefficient 1, f_rest_8 is green coefficient 1.
    assert np.float32(v["f_rest_0"][3]) == g.sh[3, 1, 0].item()
    assert np.float32(v["f_rest_8"][3]) == g.sh[3, 1, 1].item()
    assert load_ply(save_ply(g, tmp_path / "g3.ply", sh_degree=3)).sh.shape[1] == 16


def test_ply_errors_and_atomic_write(tmp_path):
    (tmp_path / "bad.ply").write_bytes(b"not a ply")
    with pytest.raises(ValueError, match="bad.ply"):
        load_ply(tmp_path / "bad.ply")
    with pytest.raises(FileNotFoundError):
        load_ply(tmp_path / "missing.ply")
    target = tmp_path / "keep.txt"
    target.write_text("original")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("interrupted")
    assert target.read_text() == "original" and list(tmp_path.glob(".keep.txt*")) == []
    with atomic_path(tmp_path / "new.txt") as tmp:
        tmp.write_text("done")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert (tmp_path / "new.txt").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # not mkstemp's 0600


def test_sh_basis_is_orthonormal():
    # Monte-Carlo orthonormality of the real SH basis on the sphere, degree 4.
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(400_000, 3, generator=g, dtype=torch.float64), dim=-1)
    y = sh_basis(4, dirs)
    gram = 4 * math.pi * (y.T @ y) / len(dirs)
    assert torch.allclose(gram, torch.eye(25, dtype=torch.float64), atol=0.03)
    sh = torch.zeros(1, 4, 3)
    sh[0, 0] = 1.0
    assert torch.allclose(eval_sh(1, sh, torch.tensor([[0.0, 0.0, 1.0]])), torch.full((1, 3), 0.5 + 0.28209479))


def test_cameras_constructors_agree():
    eyes = torch.tensor([[2.0, 0.0, 0.5], [0.0, -2.0, 0.3]])
    c2w = look_at(eyes, torch.zeros(2, 3))
    cams = Cameras.from_fov(c2w, fov_x=0.8, width=64, height=48)
    assert torch.allclose(cams.centers, eyes, atol=1e-5)
    # The origin projects to the principal point.
    p = cams.world_to_camera[:, :3, 3]
    uv = (cams.intrinsics @ p[..., None])[..., 0]
    assert torch.allclose(uv[:, :2] / uv[:, 2:], torch.tensor([[32.0, 24.0]] * 2), atol=1e-4)
    # Image "up" (−y camera axis) points towards world +z.
    assert (c2w[:, 2, 1] < 0).all()
    gl = c2w @ torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    assert torch.allclose(Cameras.from_blender(gl, cams.intrinsics, 64, 48).world_to_camera, cams.world_to_camera,
                          atol=1e-6)
    assert torch.allclose(opengl_to_opencv(gl), c2w)
    norm = torch.stack([cams.intrinsics[:, 0, 0] / 64, cams.intrinsics[:, 1, 1] / 48,
                        cams.intrinsics[:, 0, 2] / 64, cams.intrinsics[:, 1, 2] / 48], dim=-1)
    assert torch.allclose(Cameras.from_normalized_intrinsics(c2w, norm, 64, 48).intrinsics, cams.intrinsics)


def test_camera_rays_and_plucker():
    c2w = look_at(torch.tensor([[0.0, -3.0, 0.0]]), torch.zeros(1, 3))
    cams = Cameras.from_fov(c2w, fov_x=0.5, width=33, height=17)
    origins, dirs = cams.rays()
    assert origins.shape == dirs.shape == (1, 17, 33, 3)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(1, 17, 33), atol=1e-6)
    # Points along each ray project back to that pixel centre.
    pts = origins + 2.5 * dirs
    cam = torch.einsum("ij,hwj->hwi", cams.world_to_camera[0, :3, :3], pts[0]) + cams.world_to_camera[0, :3, 3]
    uv = torch.einsum("ij,hwj->hwi", cams.intrinsics[0], cam)
    uv = uv[..., :2] / uv[..., 2:]
    v, u = torch.meshgrid(torch.arange(17) + 0.5, torch.arange(33) + 0.5, indexing="ij")
    assert torch.allclose(uv, torch.stack([u, v], -1).float(), atol=1e-3)
    pl = cams.plucker()
    assert pl.shape == (1, 17, 33, 6)
    assert torch.allclose((pl[..., :3] * pl[..., 3:]).sum(-1), torch.zeros(1, 17, 33), atol=1e-5)


def test_cameras_validation():
    with pytest.raises(ValueError, match="world_to_camera"):
        Cameras(torch.eye(4), torch.eye(3)[None], 8, 8)
    with pytest.raises(ValueError, match="near"):
        Cameras(torch.eye(4)[None], torch.eye(3)[None], 8, 8, near=2.0, far=1.0)
    bad = torch.eye(4)[None].clone()
    bad[0, 0, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        Cameras(bad, torch.eye(3)[None], 8, 8)
    cams = Cameras(torch.eye(4).repeat(3, 1, 1), torch.eye(3).repeat(3, 1, 1), 8, 8)
    assert len(cams[1:]) == 2 and len(cams[0]) == 1 and cams.resized(16, 4).intrinsics[0, 0, 0] == 2.0

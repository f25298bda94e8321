"""EWA projection: the PyTorch `project` against hand computations, one Gaussian at a time; the C++ `project_cpu`
against its PyTorch twin (values, radii, every gradient, every renderer rule) and finite differences."""

from __future__ import annotations

import math

import pytest
import torch

from gdensify import Cameras, Gaussians
from gdensify.cameras import look_at
from gdensify.render import RasterRules, _cpu, project, tile_rect
from gdensify.render._cpu import project_cpu
from gdensify.sh import eval_sh

F64 = torch.float64


def random_gaussians(n, sh_degree=2, seed=0, spread=1.0, scale=0.1):
    gen = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2
    return Gaussians(
        means=(torch.rand(n, 3, generator=gen, dtype=F64) * 2 - 1) * spread,
        quats=torch.randn(n, 4, generator=gen, dtype=F64),
        log_scales=math.log(scale) + 0.5 * torch.randn(n, 3, generator=gen, dtype=F64),
        opacity_logits=torch.randn(n, generator=gen, dtype=F64),
        sh=0.3 * torch.randn(n, k, 3, generator=gen, dtype=F64),
    )


def two_cameras(width=37, height=29):
    eyes = torch.tensor([[0.3, -4.0, 0.8], [3.5, 1.0, -1.0]], dtype=F64)
    c2w = look_at(eyes, torch.zeros(2, 3, dtype=F64))
    k = torch.tensor([[[40.0, 0.0, 17.0], [0.0, 44.0, 15.5], [0.0, 0.0, 1.0]],
                      [[30.0, 0.0, 20.0], [0.0, 30.0, 13.0], [0.0, 0.0, 1.0]]], dtype=F64)
    return Cameras.from_camera_to_world(c2w, k, width, height)


def hand_projection(g: Gaussians, cams: Cameras, c: int, i: int):
    """One Gaussian in one camera, written out step by step as in the 3DGS paper."""
    w2c = cams.world_to_camera[c]
    r_wc, t = w2c[:3, :3], w2c[:3, 3]
    fx, fy, cx, cy = (float(cams.intrinsics[c, 0, 0]), float(cams.intrinsics[c, 1, 1]),
                      float(cams.intrinsics[c, 0, 2]), float(cams.intrinsics[c, 1, 2]))
    x, y, z = (float(v) for v in r_wc @ g.means[i] + t)
    u, v = fx * x / z + cx, fy * y / z + cy
    lim_x = 1.3 * max(cx, cams.width - cx) / fx
    lim_y = 1.3 * max(cy, cams.height - cy) / fy
    xc = z * min(max(x / z, -lim_x), lim_x)
    yc = z * min(max(y / z, -lim_y), lim_y)
    jac = torch.tensor([[fx / z, 0.0, -fx * xc / z**2], [0.0, fy / z, -fy * yc / z**2]], dtype=F64)
    cov3d = g.covariances[i]
    cov2d = jac @ r_wc @ cov3d @ r_wc.T @ jac.T + 0.3 * torch.eye(2, dtype=F64)
    lam_max = float(torch.linalg.eigvalsh(cov2d).max())
    radius = math.ceil(3 * math.sqrt(lam_max))
    return (u, v), z, cov2d, radius


def test_means2d_conics_radii_depths_match_hand_projection():
    g = random_gaussians(12, seed=1)
    cams = two_cameras()
    proj = project(g, cams)
    assert proj.means2d.shape == (2, 12, 2) and proj.conics.shape == (2, 12, 3)
    assert proj.radii.dtype == torch.int32 and proj.radii.shape == (2, 12)
    checked = 0
    for c in range(2):
        for i in range(12):
            (u, v), z, cov2d, radius = hand_projection(g, cams, c, i)
            assert float(proj.depths[c, i]) == pytest.approx(z, rel=1e-12)
            if int(proj.radii[c, i]) == 0:
                continue
            checked += 1
            assert proj.means2d[c, i].tolist() == pytest.approx([u, v], rel=1e-12, abs=1e-10)
            assert int(proj.radii[c, i]) == radius
            a, b, cc = proj.conics[c, i].tolist()
            conic = torch.tensor([[a, b], [b, cc]], dtype=F64)
            torch.testing.assert_close(conic @ cov2d, torch.eye(2, dtype=F64), rtol=0, atol=1e-10)
    assert checked >= 20


def test_fov_clamp_enters_the_jacobian_only():
    # A Gaussian far to the right of the image but wide enough to reach it: x/z exceeds lim_x.
    cams = Cameras(torch.eye(4, dtype=F64)[None], torch.tensor([[[20.0, 0, 10.0], [0, 20.0, 9.0], [0, 0, 1]]],
                                                                dtype=F64), 20, 18)
    g = Gaussians(torch.tensor([[2.0, 0.0, 1.0]], dtype=F64), torch.tensor([[1.0, 0, 0, 0]], dtype=F64),
                  torch.full((1, 3), math.log(1.0), dtype=F64), torch.zeros(1, dtype=F64),
                  torch.zeros(1, 1, 3, dtype=F64))
    proj = project(g, cams)
    (u, v), _, cov2d, radius = hand_projection(g, cams, 0, 0)
    assert 2.0 > 1.3 * 10 / 20  # the clamp is active
    assert int(proj.radii[0, 0]) == radius > 0
    assert proj.means2d[0, 0].tolist() == pytest.approx([u, v])  # the mean itself is not clamped: u = 50
    a, b, c = proj.conics[0, 0].tolist()
    torch.testing.assert_close(torch.tensor([[a, b], [b, c]], dtype=F64) @ cov2d, torch.eye(2, dtype=F64),
                               rtol=0, atol=1e-10)


def test_culling_rules():
    cams = Cameras(torch.eye(4, dtype=F64)[None], torch.tensor([[[20.0, 0, 10.0], [0, 20.0, 9.0], [0, 0, 1]]],
                                                                dtype=F64), 20, 18, near=0.1, far=50.0)
    means = torch.tensor([
        [0.0, 0.0, 2.0],  # visible
        [0.0, 0.0, -2.0],  # behind the camera
        [0.0, 0.0, 0.05],  # in front of the camera but nearer than `near`
        [0.0, 0.0, 0.2],  # straddles the near plane (scale 0.5 > z - near): kept, centre in front
        [0.0, 0.0, 60.0],  # beyond `far`
        [40.0, 0.0, 2.0],  # far outside the image: empty tile rectangle
    ], dtype=F64)
    n = len(means)
    log_scales = torch.full((n, 3), math.log(0.05), dtype=F64)
    log_scales[3] = math.log(0.5)
    g = Gaussians(means, torch.tensor([[1.0, 0, 0, 0]] * n, dtype=F64), log_scales, torch.zeros(n, dtype=F64),
                  torch.zeros(n, 1, 3, dtype=F64))
    proj = project(g, cams)
    assert proj.radii[0].tolist()[1:3] == [0, 0] and proj.radii[0].tolist()[4:] == [0, 0]
    assert int(proj.radii[0, 0]) > 0 and int(proj.radii[0, 3]) > 0
    culled = proj.radii[0] == 0
    assert float(proj.means2d[0][culled].abs().max()) == 0.0 and float(proj.conics[0][culled].abs().max()) == 0.0
    assert bool(torch.isfinite(proj.means2d).all() and torch.isfinite(proj.conics).all())


def test_tile_rect_formula_and_border_culling():
    means2d = torch.tensor([[[-3.0, 5.0], [0.4, 5.0], [36.9, 28.5], [47.9, 5.0], [49.5, 5.0], [10.0, 10.0]]],
                           dtype=F64)
    radii = torch.tensor([[3, 3, 2, 1, 1, 30]], dtype=torch.int32)
    x0, x1, y0, y1 = tile_rect(means2d, radii, 37, 29)  # tiles_x = 3, tiles_y = 2
    assert x0[0].tolist() == [0, 0, 2, 2, 3, 0]
    assert x1[0].tolist() == [0, 1, 3, 3, 3, 3]  # u + r < 1 → empty; u - r ≥ 48 → empty
    assert (x1 > x0)[0].tolist() == [False, True, True, True, False, True]
    assert y0[0].tolist() == [0, 0, 1, 0, 0, 0] and y1[0].tolist() == [1, 1, 2, 1, 1, 2]


def test_colors_equal_eval_sh_and_sh_degree_truncates():
    g = random_gaussians(10, sh_degree=3, seed=2)
    cams = two_cameras()
    for degree in (0, 1, 3):
        proj = project(g, cams, sh_degree=degree)
        for c in range(2):
            dirs = torch.nn.functional.normalize(g.means - cams.centers[c], dim=-1)
            torch.testing.assert_close(proj.colors[c], eval_sh(degree, g.sh, dirs))
    torch.testing.assert_close(proj.opacities, torch.sigmoid(g.opacity_logits).expand(2, 10))
    with pytest.raises(ValueError, match="sh_degree"):
        project(g, cams, sh_degree=4)


def test_several_cameras_equal_one_at_a_time():
    g = random_gaussians(20, seed=3)
    cams = two_cameras()
    both = project(g, cams)
    for c in range(2):
        one = project(g, cams[c])
        for name in ("means2d", "conics", "depths", "radii", "colors", "opacities"):
            torch.testing.assert_close(getattr(both, name)[c], getattr(one, name)[0])


def test_projection_gradcheck():
    """Finite differences of means2d, conics, depths and colours w.r.t. every Gaussian parameter (visible
    Gaussians; radii are piecewise constant and excluded)."""
    g = random_gaussians(4, sh_degree=1, seed=4, spread=0.5, scale=0.2)
    cams = two_cameras()
    params = [g.means, g.quats, g.log_scales, g.opacity_logits, g.sh]
    inputs = [p.clone().requires_grad_(True) for p in params]
    visible = project(g, cams).radii > 0
    assert bool(visible.all())

    def f(*ps):
        proj = project(Gaussians(*ps), cams)
        return proj.means2d, proj.conics, proj.depths, proj.colors, proj.opacities

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_culled_gaussians_get_zero_finite_gradients():
    cams = Cameras(torch.eye(4, dtype=F64)[None], torch.tensor([[[20.0, 0, 10.0], [0, 20.0, 9.0], [0, 0, 1]]],
                                                                dtype=F64), 20, 18)
    means = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.1, 0.0, 2.0]], dtype=F64, requires_grad=True)
    g = Gaussians(means, torch.tensor([[1.0, 0, 0, 0]] * 3, dtype=F64), torch.full((3, 3), -2.0, dtype=F64),
                  torch.zeros(3, dtype=F64), torch.zeros(3, 1, 3, dtype=F64))
    proj = project(g, cams)
    assert proj.radii[0].tolist()[:2] == [0, 0]
    (proj.means2d.sum() + proj.conics.sum()).backward()
    assert bool(torch.isfinite(means.grad).all())
    assert float(means.grad[:2].abs().max()) == 0.0 and float(means.grad[2].abs().max()) > 0.0


# ----------------------------------------------------------------------------------------------- C++ twin
needs_cxx = pytest.mark.skipif(_cpu._compiler() is None, reason="no C++ compiler: the extension cannot be built")
FIELDS = ("means2d", "conics", "depths", "radii", "colors", "opacities")
RULES = {
    "default": RasterRules(),
    "pixel_rect": RasterRules(tile_rect="pixel"),
    "radius_floor": RasterRules(radius_floor=0.1),
    "no_far_cull": RasterRules(far_cull=False),
    "negated_origin": RasterRules(sh_view_origin="negated_position"),
    "gd_object_release": RasterRules.gd_object_release(),
}


def mixed_scene(sh_degree, dtype=F64, seed=0, n=300):
    """Gaussians around two cameras, with every culling case present: behind, nearer than `near`, beyond `far`,
    far outside the image (empty tile rectangle), and beyond the J clamp while still reaching the image."""
    g = random_gaussians(n, sh_degree=sh_degree, seed=seed, spread=2.5, scale=0.15)
    cams = two_cameras()
    cams = Cameras(cams.world_to_camera, cams.intrinsics, cams.width, cams.height, near=0.2, far=20.0)
    c2w = cams.camera_to_world[0]
    centre, forward = c2w[:3, 3], c2w[:3, 2]
    means = g.means.clone()
    means[0] = centre + 0.1 * forward  # nearer than near
    means[1] = centre + 30.0 * forward  # beyond far
    means[2] = torch.tensor([60.0, 1.0, 0.0], dtype=F64)  # far outside both images
    means[3] = torch.tensor([3.0, -3.0, 0.8], dtype=F64)  # wide of camera 0: x/z beyond the clamp
    log_scales = g.log_scales.clone()
    log_scales[3] = math.log(1.5)
    g = Gaussians(means, g.quats, log_scales, g.opacity_logits, g.sh)
    return g.to(dtype), cams.to(dtype)


def project_both(g, cams, rules, sh_degree=None, weights_seed=1):
    """Outputs of both projections and the gradients of one random-weighted loss of all outputs."""
    results = []
    for fn in (project, project_cpu):
        leaves = [x.detach().clone().requires_grad_(True) for x in (g.means, g.quats, g.log_scales,
                                                                     g.opacity_logits, g.sh)]
        proj = fn(Gaussians(*leaves), cams, sh_degree, rules)
        gen = torch.Generator().manual_seed(weights_seed)
        floats = [getattr(proj, f) for f in FIELDS if f != "radii"]
        loss = sum((x * torch.randn(x.shape, generator=gen, dtype=F64).to(x.dtype)).sum() for x in floats)
        loss.backward()
        results.append(([getattr(proj, f).detach() for f in FIELDS], [x.grad for x in leaves]))
    return results


def rel_err(a, b):
    scale = float(b.abs().max())
    diff = float((a - b).abs().max())
    return diff / scale if scale > 0 else diff


@needs_cxx
@pytest.mark.parametrize("rules", list(RULES))
@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3, 4])
def test_cpp_projection_equals_the_twin_float64(rules, sh_degree):
    g, cams = mixed_scene(sh_degree, seed=sh_degree)
    (want, want_grads), (got, got_grads) = project_both(g, cams, RULES[rules])
    radii = want[3]
    assert torch.equal(got[3], radii)
    visible = radii > 0
    assert 0 < int(visible.sum()) < radii.numel()  # both culled and visible entries
    for name, a, b in zip(FIELDS, got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert rel_err(a, b) < 1e-12, name
    for name, a, b in zip(("means", "quats", "log_scales", "opacity_logits", "sh"), got_grads, want_grads):
        assert float(b.abs().max()) > 0, name
        assert rel_err(a, b) < 1e-10, name


@needs_cxx
def test_cpp_projection_covers_every_culling_case_and_the_fov_clamp():
    g, cams = mixed_scene(1)
    proj = project_cpu(g, cams)
    assert proj.radii[0, :3].tolist() == [0, 0, 0]  # near / far / outside the image
    assert int(proj.radii[1, 2]) == 0
    hand_radius = hand_projection(g, cams, 0, 3)[3]
    assert int(proj.radii[0, 3]) == hand_radius > 0  # camera 0: x/z = 3/4 > 1.3·20/40 (clamped J)
    rules = RasterRules(far_cull=False)
    assert int(project_cpu(g, cams, rules=rules).radii[0, 1]) > 0  # z = 30 > far: kept without the far cull
    culled = proj.radii == 0
    assert float(proj.means2d[culled].abs().max()) == 0.0 and float(proj.conics[culled].abs().max()) == 0.0


@needs_cxx
@pytest.mark.parametrize("rules", ["default", "gd_object_release"])
@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3, 4])
def test_cpp_projection_float32_within_rounding_of_the_twin(rules, sh_degree):
    """float32 runs 8 Gaussians per AVX2 vector where available; 2,003 leaves a scalar tail."""
    g, cams = mixed_scene(sh_degree, dtype=torch.float32, seed=5, n=2003)
    (want, want_grads), (got, got_grads) = project_both(g, cams, RULES[rules])
    same = got[3] == want[3]
    assert float(same.float().mean()) > 0.995  # a radius may flip at a ceil boundary by rounding
    for name, a, b in zip(FIELDS, got, want):
        if name != "radii":
            mask = same[..., None] if a.dim() == 3 else same
            assert rel_err(a * mask, b * mask) < 1e-5, name
    for name, a, b in zip(("means", "quats", "log_scales", "opacity_logits", "sh"), got_grads, want_grads):
        assert rel_err(a, b) < 1e-5, name


@needs_cxx
def test_cpp_projection_does_not_depend_on_the_thread_count():
    g, cams = mixed_scene(2, dtype=torch.float32, seed=6, n=4003)
    threads = torch.get_num_threads()
    runs = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            runs.append(project_both(g, cams, RasterRules())[1])
    finally:
        torch.set_num_threads(threads)
    for outs, grads in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outs + grads, runs[0][0] + runs[0][1]))


@needs_cxx
@pytest.mark.parametrize("rules", ["default", "gd_object_release"])
def test_cpp_projection_gradcheck(rules):
    """Finite differences of every output of the C++ projection w.r.t. every Gaussian parameter (SH degree 3,
    one Gaussian beyond the J clamp, culled ones included)."""
    g = random_gaussians(5, sh_degree=3, seed=4, spread=0.5, scale=0.2)
    means = g.means.clone()
    means[0] = torch.tensor([2.6, -0.2, 0.3], dtype=F64)  # camera 0 sees it beyond the clamp, still visible
    means[1] = torch.tensor([0.3, 4.5, 0.8], dtype=F64)  # culled in camera 1
    g = Gaussians(means, g.quats, g.log_scales, g.opacity_logits, g.sh)
    cams = two_cameras()
    params = [g.means, g.quats, g.log_scales, g.opacity_logits, g.sh]
    inputs = [p.clone().requires_grad_(True) for p in params]
    radii = project_cpu(g, cams, rules=RULES[rules]).radii
    assert int((radii == 0).sum()) >= 1 and int((radii > 0).sum()) >= 6

    def f(*ps):
        proj = project_cpu(Gaussians(*ps), cams, rules=RULES[rules])
        return proj.means2d, proj.conics, proj.depths, proj.colors, proj.opacities

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@needs_cxx
def test_cpp_projection_lower_sh_degree_and_errors():
    g, cams = mixed_scene(3)
    (want, want_grads), (got, got_grads) = project_both(g, cams, RasterRules(), sh_degree=1)
    torch.testing.assert_close(got[4], want[4], rtol=1e-12, atol=1e-12)
    assert float(got_grads[4][:, 4:].abs().max()) == 0.0 and float(got_grads[4][:, :4].abs().max()) > 0
    with pytest.raises(ValueError, match="sh_degree"):
        project_cpu(g, cams, sh_degree=4)
    with pytest.raises(ValueError, match="CPU tensors"):
        project_cpu(g.to("meta"), cams)
    with pytest.raises(ValueError, match="float32 or float64"):
        project_cpu(g.to(torch.float16), cams.to(torch.float16))

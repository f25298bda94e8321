"""`RasterRules`: each rule of the Inria/GDM CUDA kernel, in the reference and cpu backends (compositing against the
dense oracle, projection against hand computations, end to end between backends), and gsplat's refusals."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from gdensify import Cameras, Gaussians
from gdensify.render import RasterRules, composite_reference, project, rasterize, tile_rect
from gdensify.render import _cpu, _gsplat
from gdensify.render.projection import sh_view_origins
from gdensify.sh import eval_sh

from screen_gaussians import dense_composite, random_ellipses

F64 = torch.float64
HAS_CXX = _cpu._compiler() is not None
needs_cxx = pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler: the cpu backend cannot be built here")
COMPOSITORS = ["reference", pytest.param("cpu", marks=needs_cxx)]


def compositor(name):
    return composite_reference if name == "reference" else _cpu.composite_cpu


def opaque_scene(num_cams, n, width, height, seed=0, dtype=F64):
    """Screen-space Gaussians with opacities up to 1, so that o·G > 0.99 (the clamp) at many pixels, and radii
    that make the tile rectangle rule matter (means within a few pixels of tile borders)."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.rand(*s, generator=gen, dtype=F64)  # noqa: E731
    means2d, conics, radii = random_ellipses(rand, num_cams, n, width, height, (1.0, 4.0), 3.0)
    colors = rand(num_cams, n, 3)
    opacities = 0.2 + 0.8 * rand(num_cams, n)
    opacities[:, ::3] = 0.9975  # o·G > 0.99 near these centres
    depths = 1.0 + rand(num_cams, n)
    background = rand(num_cams, 3)
    return [x.to(dtype) for x in (means2d, conics, colors, opacities, depths)], radii, background.to(dtype)


def run(fn, floats, radii, background, width, height, **kwargs):
    ins = [x.detach().clone().requires_grad_(True) for x in (*floats, background)]
    outs = fn(*ins[:5], radii, ins[5], width, height, **kwargs)
    gen = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=F64).to(o.dtype)).sum() for o in outs)
    grads = torch.autograd.grad(loss, ins)
    return [o.detach() for o in outs], list(grads), getattr(ins[0], "absgrad", None)


def rel(a, b):
    scale = float(b.abs().max())
    return float((a - b).abs().max()) / scale if scale > 0 else float((a - b).abs().max())


# ----------------------------------------------------------------------------------------------- the dataclass
def test_presets_and_validation():
    assert RasterRules() == RasterRules(tile_rect="mean", radius_floor=0.0, far_cull=True, alpha_clamp_grad=False,
                                        sh_view_origin="center", clamp_image=False)
    inria = RasterRules.inria()
    assert (inria.tile_rect, inria.radius_floor, inria.far_cull, inria.alpha_clamp_grad, inria.sh_view_origin,
            inria.clamp_image) == ("pixel", 0.1, False, True, "center", True)
    assert RasterRules.gd_object_release() == dataclasses.replace(inria, sh_view_origin="negated_position")
    assert RasterRules.inria(clamp_image=False).clamp_image is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        inria.tile_rect = "mean"
    for bad in (dict(tile_rect="floor"), dict(sh_view_origin="camera"), dict(radius_floor=-1.0),
                dict(radius_floor=float("nan")), dict(far_cull=1)):
        with pytest.raises(ValueError, match="RasterRules"):
            RasterRules(**bad)
    with pytest.raises(TypeError, match="RasterRules"):
        rasterize(Gaussians.empty(), Cameras(torch.eye(4)[None], torch.eye(3)[None], 4, 4), rules="inria")


# ----------------------------------------------------------------------------------------------- tile rectangle
def test_pixel_tile_rect_is_cuda_getrect_on_the_integer_pixel_mean():
    # u = 16.3, r = 0: from u the rectangle starts in tile 1; from the integer-pixel mean 15.8, in tile 0.
    means2d = torch.tensor([[[16.3, 5.0], [16.6, 5.0], [-0.3, 40.2], [47.4, 8.0], [3.0, 31.9]]], dtype=F64)
    radii = torch.tensor([[0, 0, 1, 1, 1]], dtype=torch.int32)
    mean = tile_rect(means2d, radii, 48, 48)
    pixel = tile_rect(means2d, radii, 48, 48, rule="pixel")

    def cuda_get_rect(p, r, grid):  # (int) truncation toward zero, then clamped to [0, grid]
        lo = min(grid, max(0, int((p - r) / 16)))
        hi = min(grid, max(0, int((p + r + 15) / 16)))
        return lo, hi

    for k in range(5):
        u, v = (float(x) - 0.5 for x in means2d[0, k])
        r = int(radii[0, k])
        assert (int(pixel[0][0, k]), int(pixel[1][0, k])) == cuda_get_rect(u, r, 3)
        assert (int(pixel[2][0, k]), int(pixel[3][0, k])) == cuda_get_rect(v, r, 3)
    assert mean[0][0].tolist()[:2] == [1, 1] and pixel[0][0].tolist()[:2] == [0, 1]
    with pytest.raises(ValueError, match="rule"):
        tile_rect(means2d, radii, 48, 48, rule="cuda")


# ----------------------------------------------------------------------------------------------- compositing
@pytest.mark.parametrize("backend", COMPOSITORS)
@pytest.mark.parametrize("rect_rule,clamp_grad", [("pixel", False), ("mean", True), ("pixel", True)])
def test_composite_rules_match_the_dense_oracle(backend, rect_rule, clamp_grad):
    width, height = 37, 29
    floats, radii, bg = opaque_scene(2, 60, width, height, seed=1)
    rules = RasterRules(tile_rect=rect_rule, alpha_clamp_grad=clamp_grad)
    outs, grads, absgrad = run(compositor(backend), floats, radii, bg, width, height, rules=rules)
    want_outs, want_grads, _ = run(lambda *a, **k: dense_composite(*a, rect_rule=rect_rule, clamp_grad=clamp_grad),
                                   floats, radii, bg, width, height)
    for a, b in zip(outs + grads, want_outs + want_grads):
        assert rel(a, b) < 1e-10
    # the rule changes something on this scene
    default = run(compositor(backend), floats, radii, bg, width, height)
    changed = outs[0] if not clamp_grad else grads[3]
    assert rel(changed, default[0][0] if not clamp_grad else default[1][3]) > 1e-6


@pytest.mark.parametrize("backend", COMPOSITORS)
def test_alpha_clamp_gradient_passes_through_the_clamp(backend):
    """One Gaussian of opacity 0.9975 over one pixel at its centre: α = min(0.99, o·G) is clamped, so by default
    dL/do = 0 there; with alpha_clamp_grad dL/do = G·dL/dα (CUDA's backward)."""
    means2d = torch.tensor([[[0.5, 0.5]]], dtype=F64)  # exactly on the pixel centre: G = 1
    conics = torch.tensor([[[1.0, 0.0, 1.0]]], dtype=F64)
    opac = torch.tensor([[0.9975]], dtype=F64, requires_grad=True)
    colors = torch.tensor([[[0.7, 0.2, 0.4]]], dtype=F64)
    depths = torch.ones(1, 1, dtype=F64)
    radii = torch.tensor([[1]], dtype=torch.int32)
    grads = {}
    for clamp_grad in (False, True):
        image, alpha, _ = compositor(backend)(means2d, conics, colors, opac, depths, radii, None, 1, 1,
                                              rules=RasterRules(alpha_clamp_grad=clamp_grad))
        assert float(alpha.detach()) == pytest.approx(0.99, abs=1e-15)
        (g,) = torch.autograd.grad(image.sum(), opac)
        grads[clamp_grad] = float(g)
    assert grads[False] == 0.0
    assert grads[True] == pytest.approx(0.7 + 0.2 + 0.4, rel=1e-12)  # dImage/dα = colour (black background)


# ----------------------------------------------------------------------------------------------- projection
def one_camera(width=32, height=32, focal=30.0, near=0.01, far=1e10):
    k = torch.tensor([[[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]]], dtype=F64)
    return Cameras(torch.eye(4, dtype=F64)[None], k, width, height, near=near, far=far)


def gaussians_at(means, log_scale=math.log(0.05), sh=None):
    n = len(means)
    return Gaussians(torch.as_tensor(means, dtype=F64), torch.tensor([[1.0, 0, 0, 0]] * n, dtype=F64),
                     torch.full((n, 3), log_scale, dtype=F64), torch.zeros(n, dtype=F64),
                     torch.zeros(n, 1, 3, dtype=F64) if sh is None else sh)


PROJECTORS = ["torch", pytest.param("cpp", marks=needs_cxx)]


def projector(name):
    return project if name == "torch" else _cpu.project_cpu


@pytest.mark.parametrize("which", PROJECTORS)
def test_radius_floor(which):
    """An isotropic Gaussian: Σ₂D ∝ I, so mid² − det = 0 and λ_max = mid + sqrt(floor)."""
    g = gaussians_at([[0.0, 0.0, 2.0]], log_scale=math.log(0.1))
    cams = one_camera()
    fx, z, s = 30.0, 2.0, 0.1
    var = (fx * s / z) ** 2 + 0.3  # pixels²
    for floor in (0.0, 0.1):
        radius = int(projector(which)(g, cams, rules=RasterRules(radius_floor=floor)).radii[0, 0])
        assert radius == math.ceil(3 * math.sqrt(var + math.sqrt(floor)))
    # 3·sqrt(2.55) = 4.79 → 5, 3·sqrt(2.55 + 0.316) = 5.08 → 6
    assert math.ceil(3 * math.sqrt(var)) != math.ceil(3 * math.sqrt(var + math.sqrt(0.1)))


@pytest.mark.parametrize("which", PROJECTORS)
def test_far_cull_rule(which):
    g = gaussians_at([[0.0, 0.0, 2.0], [0.0, 0.0, 60.0], [0.0, 0.0, 0.15], [0.0, 0.0, -1.0]], log_scale=0.0)
    cams = one_camera(near=0.2, far=50.0)
    culled = projector(which)(g, cams).radii[0] == 0
    assert culled.tolist() == [False, True, True, True]
    kept = projector(which)(g, cams, rules=RasterRules(far_cull=False)).radii[0] == 0
    assert kept.tolist() == [False, False, True, True]  # still culled at z ≤ near


@pytest.mark.parametrize("which", PROJECTORS)
def test_sh_view_origin_rule(which):
    gen = torch.Generator().manual_seed(3)
    g = gaussians_at(torch.rand(6, 3, generator=gen, dtype=F64) + torch.tensor([0.0, 0.0, 2.0], dtype=F64),
                     sh=0.4 * torch.randn(6, 9, 3, generator=gen, dtype=F64))
    w2c = torch.eye(4, dtype=F64)[None]
    w2c[0, :3, 3] = torch.tensor([0.3, -0.2, 0.5], dtype=F64)  # camera centre (−0.3, 0.2, −0.5)
    cams = Cameras(w2c, one_camera().intrinsics, 32, 32)
    centre = cams.centers[0]
    for origin, start in (("center", centre), ("negated_position", -centre)):
        rules = RasterRules(sh_view_origin=origin)
        torch.testing.assert_close(sh_view_origins(cams, rules, F64)[0], start)
        colors = projector(which)(g, cams, rules=rules).colors[0]
        dirs = torch.nn.functional.normalize(g.means - start, dim=-1)
        torch.testing.assert_close(colors, eval_sh(2, g.sh, dirs), rtol=1e-12, atol=1e-12)
    a = projector(which)(g, cams).colors
    b = projector(which)(g, cams, rules=RasterRules(sh_view_origin="negated_position")).colors
    assert float((a - b).abs().max()) > 1e-3


# ----------------------------------------------------------------------------------------------- end to end
def scene(n=80, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=gen, dtype=F64)  # noqa: E731
    means = torch.stack([(r(n) - 0.5) * 1.2, (r(n) - 0.5) * 1.0, 2.0 + 2.0 * r(n)], -1)
    means[:4, 2] = 70.0  # beyond far: culled unless far_cull is False
    opacities = 0.2 + 0.7 * r(n)
    opacities[4:16] = 0.9995  # o·G > 0.99 near their centres: the α clamp is active
    g = Gaussians(means, torch.randn(n, 4, generator=gen, dtype=F64), torch.log(0.03 + 0.08 * r(n, 3)),
                  torch.logit(opacities), torch.randn(n, 4, 3, generator=gen, dtype=F64) * 0.8)
    return g.to(dtype)


def cameras(dtype=F64):
    c2w = torch.eye(4, dtype=F64).repeat(2, 1, 1)
    c2w[1, :3, 3] = torch.tensor([0.2, -0.1, -0.3], dtype=F64)
    k = torch.tensor([[40.0, 0.0, 20.0], [0.0, 40.0, 16.0], [0.0, 0.0, 1.0]], dtype=F64).expand(2, 3, 3)
    return Cameras.from_camera_to_world(c2w, k, 40, 32, near=0.2, far=50.0).to(dtype)


def render(g, cams, backend, rules, projection="auto"):
    leaves = [x.detach().clone().requires_grad_(True) for x in (g.means, g.quats, g.log_scales, g.opacity_logits,
                                                                 g.sh)]
    bg = torch.tensor([0.3, 0.8, 0.5], dtype=g.dtype, requires_grad=True)
    out = rasterize(Gaussians(*leaves), cams, bg, backend=backend, rules=rules, projection=projection)
    gen = torch.Generator().manual_seed(5)
    loss = sum((x * torch.randn(x.shape, generator=gen, dtype=F64).to(x.dtype)).sum()
               for x in (out.image, out.alpha, out.depth))
    loss.backward()
    return [out.image.detach(), out.alpha.detach(), out.depth.detach(), out.radii, *(x.grad for x in leaves),
            bg.grad, out.means2d.grad, out.means2d.absgrad]


RULE_SETS = {
    "default": RasterRules(),
    "tile_rect": RasterRules(tile_rect="pixel"),
    "radius_floor": RasterRules(radius_floor=0.1),
    "far_cull": RasterRules(far_cull=False),
    "alpha_clamp_grad": RasterRules(alpha_clamp_grad=True),
    "sh_view_origin": RasterRules(sh_view_origin="negated_position"),
    "clamp_image": RasterRules(clamp_image=True),
    "inria": RasterRules.inria(),
    "gd_object_release": RasterRules.gd_object_release(),
}


@needs_cxx
@pytest.mark.parametrize("name", list(RULE_SETS))
def test_every_rule_end_to_end_cpu_equals_reference(name):
    """float64: the cpu backend (C++ projection and compositing) equals the reference backend (PyTorch projection
    and compositing) to rounding for every rule, images and every gradient; the PyTorch twin under the cpu
    compositor too. And every rule changes the render or its gradients on this scene."""
    g, cams = scene(), cameras()
    rules = RULE_SETS[name]
    ref = render(g, cams, "reference", rules)
    for projection in ("auto", "torch"):
        got = render(g, cams, "cpu", rules, projection)
        assert torch.equal(got[3], ref[3])  # radii
        for a, b in zip(got, ref):
            assert rel(a.double(), b.double()) < 1e-10
    if name != "default":
        base = render(g, cams, "reference", RasterRules())
        assert max(rel(a.double(), b.double()) for a, b in zip(ref, base)) > 1e-6


@needs_cxx
def test_inria_rules_float32_cpu_matches_reference():
    g, cams = scene(dtype=torch.float32, seed=2), cameras(torch.float32)
    ref = render(g, cams, "reference", RasterRules.gd_object_release())
    got = render(g, cams, "cpu", RasterRules.gd_object_release())
    assert float((got[3] != ref[3]).float().mean()) < 0.01  # radii: a rare rounding flip at a ceil boundary
    for a, b in zip(got[:3] + got[4:], ref[:3] + ref[4:]):
        assert rel(a, b) < 2e-3


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=needs_cxx)])
def test_clamp_image(backend):
    """Bright SH colours (> 1): the clamped image stays in [0, 1] and has no gradient where it was clamped."""
    g = scene(n=30, seed=4)
    g = Gaussians(g.means, g.quats, g.log_scales + 1.0, g.opacity_logits + 3.0, g.sh + 3.0)
    sh = g.sh.clone().requires_grad_(True)
    cams = cameras()
    out = rasterize(Gaussians(g.means, g.quats, g.log_scales, g.opacity_logits, sh), cams, backend=backend,
                    rules=RasterRules(clamp_image=True))
    raw = rasterize(g, cams, backend=backend).image
    image = out.image.detach()
    assert float(raw.max()) > 1.5 and float(image.max()) == 1.0 and float(image.min()) >= 0.0
    torch.testing.assert_close(image, raw.clamp(0, 1))
    (g_sh,) = torch.autograd.grad((out.image * (raw > 1)).sum(), sh)
    assert float(g_sh.abs().max()) == 0.0


# ----------------------------------------------------------------------------------------------- gsplat
def test_gsplat_refuses_rules_its_kernel_cannot_follow():
    assert _gsplat.unsupported_rules(RasterRules()) == []
    assert _gsplat.unsupported_rules(RasterRules(far_cull=False, clamp_image=True)) == []
    assert _gsplat.unsupported_rules(RasterRules.gd_object_release()) == [
        "tile_rect", "radius_floor", "alpha_clamp_grad", "sh_view_origin"]
    g = scene(n=3, dtype=torch.float32)
    with pytest.raises(ValueError, match="gsplat backend cannot follow RasterRules tile_rect='pixel'"):
        _gsplat.rasterize_gsplat(g, cameras(torch.float32), torch.zeros(2, 3), 0, rules=RasterRules.inria())

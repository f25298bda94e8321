"""The public `rasterize` API: gradients w.r.t. every input, view-space gradients, edge cases, validation and
backend selection."""

from __future__ import annotations

import importlib
import math
import warnings

import pytest
import torch

from gdensify import Cameras, Gaussians
from gdensify.cameras import look_at
from gdensify.render import (
    RasterRules, RenderOutput, _gsplat, available_backends, composite_reference, means2d_grad_to_ndc, project,
    rasterize, tile_rect,
)

rasterize_module = importlib.import_module("gdensify.render.rasterize")  # the attribute is the function
F64 = torch.float64


def simple_camera(width=20, height=18, focal=20.0, dtype=F64, near=0.01):
    """Camera at the origin looking down +z (OpenCV axes), principal point at the image centre."""
    k = torch.tensor([[[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]]], dtype=dtype)
    return Cameras(torch.eye(4, dtype=dtype)[None], k, width, height, near=near)


def smooth_scene(n=4, seed=0, sh_degree=1):
    """Gaussians at z ≈ 4 in front of `simple_camera`, ~6 px wide: every tile rectangle covers the whole 20×18
    image with room to spare (radius changes do not change coverage), opacities ≤ 0.7 (no 0.99 clamp, no early
    stop), colours well above the clamp at 0. The render is smooth in every parameter here."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=gen, dtype=F64)  # noqa: E731
    z = 3.5 + r(n)
    means = torch.stack([(r(n) - 0.5) * 0.6 * z / 20 * 10, (r(n) - 0.5) * 0.6 * z / 20 * 9, z], dim=-1)
    k = (sh_degree + 1) ** 2
    return Gaussians(
        means=means,
        quats=torch.randn(n, 4, generator=gen, dtype=F64),
        log_scales=math.log(1.2) + 0.15 * (2 * r(n, 3) - 1),
        opacity_logits=torch.logit(0.3 + 0.4 * r(n)),
        sh=0.15 * (2 * r(n, k, 3) - 1),
    )


def weighted(out: RenderOutput, seed=3):
    gen = torch.Generator().manual_seed(seed)
    return sum((x * torch.randn(x.shape, generator=gen, dtype=x.dtype)).sum() for x in (out.image, out.alpha,
                                                                                         out.depth))


# ----------------------------------------------------------------------------------------------- gradients
def test_gradcheck_every_input_through_rasterize():
    g = smooth_scene()
    cams = simple_camera()
    proj = project(g, cams)
    assert bool((proj.radii > 0).all())
    x0, x1, y0, y1 = tile_rect(proj.means2d, proj.radii, cams.width, cams.height)
    assert bool(((x0 == 0) & (y0 == 0) & (x1 == 2) & (y1 == 2)).all())  # 2×2 tiles, all covered
    # ... with margin: the square [u−r, u+r] overshoots tile 1's far edge (u + r ≥ 17) and 0 (u − r < 0) by > 1 px.
    u, v = proj.means2d[0].unbind(-1)
    r = proj.radii[0].to(F64)
    assert bool(((u - r < -1) & (v - r < -1) & (u + r > 18) & (v + r > 18)).all())
    background = torch.tensor([0.2, 0.6, 0.4], dtype=F64)
    inputs = [x.clone().requires_grad_(True) for x in (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh,
                                                       background)]

    def f(means, quats, log_scales, logits, sh, bg):
        out = rasterize(Gaussians(means, quats, log_scales, logits, sh), cams, bg, backend="reference")
        return weighted(out)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_through_rasterize_with_the_released_object_rules(backend):
    """Finite differences with `RasterRules.gd_object_release()` (C++ projection on the cpu backend): on this smooth
    scene no α reaches the 0.99 clamp and the image stays inside (0, 1), so the render is smooth there too."""
    if backend == "cpu" and rasterize_module._load_cpu()[0] is None:
        pytest.skip(f"cpu backend unavailable: {rasterize_module._load_cpu()[1]}")
    g = smooth_scene(seed=4)
    cams = simple_camera()
    rules = RasterRules.gd_object_release()
    background = torch.tensor([0.2, 0.6, 0.4], dtype=F64)
    out = rasterize(g, cams, background, backend=backend, rules=rules)
    assert bool((out.radii > 0).all()) and 0.0 < float(out.image.min()) and float(out.image.max()) < 1.0
    inputs = [x.clone().requires_grad_(True) for x in (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh,
                                                       background)]

    def f(means, quats, log_scales, logits, sh, bg):
        return weighted(rasterize(Gaussians(means, quats, log_scales, logits, sh), cams, bg, backend=backend,
                                  rules=rules))

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_means2d_grad_and_absgrad_land_on_out_means2d():
    g = smooth_scene(seed=1)
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        getattr(g, name).requires_grad_(True)
    cams = simple_camera()
    out = rasterize(g, cams, backend="reference")
    weighted(out).backward()
    grad, absgrad = out.means2d.grad, out.means2d.absgrad
    assert grad.shape == absgrad.shape == (1, 4, 2)

    # The same gradient, computed on composite_reference directly with a leaf copy of the projected means.
    proj = project(g.detach(), cams)
    leaf = proj.means2d.clone().requires_grad_(True)
    image, alpha, depth = composite_reference(leaf, proj.conics, proj.colors, proj.opacities, proj.depths,
                                              proj.radii, None, cams.width, cams.height)
    weighted(RenderOutput(image, alpha, depth, proj.radii, leaf, "reference")).backward()
    torch.testing.assert_close(grad, leaf.grad)
    torch.testing.assert_close(absgrad, leaf.absgrad)
    assert bool((absgrad >= grad.abs() - 1e-12).all())
    torch.testing.assert_close(out.view_space_grad(absolute=False), grad)
    torch.testing.assert_close(out.view_space_grad(ndc=True), absgrad * torch.tensor([10.0, 9.0], dtype=F64))


def test_means2d_grad_flag_with_detached_gaussians():
    g = smooth_scene(seed=2)
    cams = simple_camera()
    out = rasterize(g, cams, backend="reference")
    assert not out.means2d.requires_grad and not out.image.requires_grad
    out = rasterize(g, cams, backend="reference", means2d_grad=True)
    (out.image**2).sum().backward()
    assert out.means2d.grad is not None and out.means2d.absgrad.shape == (1, 4, 2)
    assert g.means.grad is None
    with torch.no_grad():
        out = rasterize(g, cams, backend="reference", means2d_grad=True)
    assert not out.means2d.requires_grad
    with pytest.raises(RuntimeError, match="view-space gradient"):
        out.view_space_grad()


def test_means2d_grad_to_ndc():
    grad = torch.tensor([[[1.0, 2.0], [-3.0, 0.5]]])
    torch.testing.assert_close(means2d_grad_to_ndc(grad, 640, 480), grad * torch.tensor([320.0, 240.0]))


# ----------------------------------------------------------------------------------------------- edge cases
def test_zero_gaussians_and_all_behind_the_camera_give_the_background():
    cams = Cameras.cat([simple_camera(37, 29), simple_camera(37, 29)])
    background = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.8, 0.7]], dtype=F64)
    empty = Gaussians.empty(sh_degree=1, dtype=F64)
    behind = smooth_scene()
    behind = Gaussians(behind.means * torch.tensor([1.0, 1.0, -1.0], dtype=F64), behind.quats, behind.log_scales,
                       behind.opacity_logits, behind.sh)
    for g in (empty, behind):
        out = rasterize(g, cams, background, backend="reference")
        assert out.image.shape == (2, 29, 37, 3) and out.alpha.shape == out.depth.shape == (2, 29, 37, 1)
        assert out.radii.shape == (2, len(g)) and out.means2d.shape == (2, len(g), 2)
        torch.testing.assert_close(out.image, background[:, None, None, :].expand(2, 29, 37, 3))
        assert float(out.alpha.abs().max()) == 0.0 and float(out.depth.abs().max()) == 0.0
        assert not bool((out.radii != 0).any())


def test_straddling_near_plane_tiny_and_huge_scales_stay_finite():
    cams = simple_camera(37, 29, focal=30.0, near=0.2)
    means = torch.tensor([[0.0, 0.0, 0.25], [0.3, 0.1, 3.0], [-0.2, 0.0, 2.0], [0.0, -0.3, 5.0], [0.0, 0.0, 50.0]],
                         dtype=F64)
    log_scales = torch.tensor([[math.log(0.5)] * 3,  # centre just past `near`, extent far across it
                               [math.log(1e-7)] * 3,  # degenerate: only the 0.3 px² dilation remains
                               [math.log(1e3)] * 3,  # huge
                               [math.log(1e-7), math.log(1.0), math.log(1.0)],  # flat disc
                               [math.log(1e9)] * 3], dtype=F64)  # absurd: the radius saturates, no int32 overflow
    g = Gaussians(means.clone().requires_grad_(True), torch.randn(5, 4, dtype=F64), log_scales.requires_grad_(True),
                  torch.full((5,), 2.0, dtype=F64), torch.zeros(5, 1, 3, dtype=F64))
    out = rasterize(g, cams, backend="reference")
    assert bool((out.radii > 0).all())
    assert int(out.radii[0, 1]) == math.ceil(3 * math.sqrt(0.3))  # tiny: radius of the dilation alone
    assert int(out.radii[0, 4]) == 2**30
    for x in (out.image, out.alpha, out.depth):
        assert bool(torch.isfinite(x).all())
    assert bool(((out.alpha >= 0) & (out.alpha <= 1)).all())
    weighted(out).backward()
    assert bool(torch.isfinite(g.means.grad).all() and torch.isfinite(g.log_scales.grad).all())
    assert bool(torch.isfinite(out.means2d.absgrad).all())


def test_several_cameras_equal_one_at_a_time_and_odd_sizes():
    g = smooth_scene(n=30, seed=4, sh_degree=2)
    eyes = torch.tensor([[0.0, 0.0, 0.0], [1.5, -0.5, 0.5], [-1.0, 1.0, -0.5]], dtype=F64)
    c2w = look_at(eyes, torch.tensor([[0.0, 0.0, 4.0]] * 3, dtype=F64), up=torch.tensor([0.0, -1.0, 0.0]))
    cams = Cameras.from_fov(c2w, math.radians(50), 37, 29)
    background = torch.rand(3, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    out = rasterize(g, cams, background, backend="reference")
    assert out.image.shape == (3, 29, 37, 3)
    for c in range(3):
        one = rasterize(g, cams[c], background[c], backend="reference")
        for name in ("image", "alpha", "depth", "radii", "means2d"):
            torch.testing.assert_close(getattr(out, name)[c], getattr(one, name)[0])


def test_background_only_where_nothing_is_visible_and_alpha_bounds():
    cams = simple_camera(37, 29, focal=30.0)
    g = Gaussians(torch.tensor([[-0.5, -0.3, 3.0], [0.4, 0.3, 3.0]], dtype=F64),
                  torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=F64), torch.full((2, 3), math.log(0.05), dtype=F64),
                  torch.full((2,), 3.0, dtype=F64), torch.zeros(2, 1, 3, dtype=F64))
    background = torch.tensor([0.3, 0.9, 0.1], dtype=F64)
    out = rasterize(g, cams, background, backend="reference")
    assert bool(((out.alpha >= 0) & (out.alpha <= 1)).all())
    empty = out.alpha[0, ..., 0] == 0
    assert 0 < int(empty.sum()) < 37 * 29
    torch.testing.assert_close(out.image[0][empty], background.expand(int(empty.sum()), 3))
    covered = ~empty
    # Neither colour (0.5 grey from zero SH) nor background alone where something is visible.
    assert float((out.image[0][covered] - background).abs().sum(-1).min()) > 0


def test_single_opaque_gaussian_depth_over_alpha_is_its_depth():
    cams = simple_camera(37, 29, focal=30.0)
    g = Gaussians(torch.tensor([[0.1, -0.1, 3.0]], dtype=F64), torch.tensor([[0.9, 0.1, 0.3, 0.2]], dtype=F64),
                  torch.full((1, 3), math.log(0.2), dtype=F64), torch.full((1,), 6.0, dtype=F64),
                  torch.zeros(1, 1, 3, dtype=F64))
    out = rasterize(g, cams, backend="reference")
    hit = out.alpha[0, ..., 0] > 0
    z = float(project(g, cams).depths[0, 0])
    torch.testing.assert_close(out.depth[0][hit] / out.alpha[0][hit], torch.full_like(out.depth[0][hit], z))
    assert float(out.alpha.max()) == pytest.approx(0.99, abs=1e-3)  # nearly opaque at the centre (clamped α)


def test_float32_renders_and_keeps_dtype():
    g = smooth_scene(seed=5)
    g32 = g.to(torch.float32)
    out32 = rasterize(g32, simple_camera(dtype=torch.float32), backend="reference")
    out64 = rasterize(g, simple_camera(), backend="reference")
    assert out32.image.dtype == torch.float32
    torch.testing.assert_close(out32.image.double(), out64.image, rtol=1e-4, atol=1e-5)


def test_sh_degree_argument():
    g = smooth_scene(seed=6, sh_degree=2)
    cams = simple_camera()
    full = rasterize(g, cams, backend="reference")
    lower = rasterize(g, cams, backend="reference", sh_degree=0)
    same = rasterize(g.with_sh_degree(0), cams, backend="reference")
    torch.testing.assert_close(lower.image, same.image)
    assert float((full.image - lower.image).abs().max()) > 1e-4
    with pytest.raises(ValueError, match="sh_degree"):
        rasterize(g, cams, backend="reference", sh_degree=3)


# ----------------------------------------------------------------------------------------------- validation
def test_invalid_inputs_raise_value_errors():
    g = smooth_scene()
    cams = simple_camera()
    with pytest.raises(ValueError, match="auto, reference, cpu, gsplat"):
        rasterize(g, cams, backend="opengl")
    bad = Gaussians(g.means.clone(), g.quats, g.log_scales, g.opacity_logits, g.sh)
    bad.means[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        rasterize(bad, cams, backend="reference")
    bad = Gaussians(g.means, g.quats, g.log_scales.clone(), g.opacity_logits, g.sh)
    bad.log_scales[1, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        rasterize(bad, cams)
    for background in (torch.zeros(4), torch.zeros(2, 3), torch.zeros(1, 3, 1)):
        with pytest.raises(ValueError, match="background"):
            rasterize(g, cams, background, backend="reference")
    with pytest.raises(ValueError, match="background"):
        rasterize(g, cams, torch.tensor([0.0, float("nan"), 0.0]), backend="reference")
    with pytest.raises(ValueError, match="sh_degree"):
        rasterize(g, cams, sh_degree=2)
    other = simple_camera()
    other.world_to_camera = other.world_to_camera.to("meta")  # a second device without needing a GPU
    with pytest.raises(ValueError, match="meta"):
        rasterize(g, other, backend="reference")
    with pytest.raises(TypeError):
        rasterize(g.means, cams)


def test_projection_argument():
    g = smooth_scene(n=6, seed=2)
    cams = simple_camera()
    with pytest.raises(ValueError, match="unknown projection"):
        rasterize(g, cams, backend="reference", projection="numpy")
    fn, reason = rasterize_module._load_cpu()
    if fn is None:
        pytest.skip(f"cpu backend unavailable: {reason}")
    twin = rasterize(g, cams, backend="reference")
    cpp = rasterize(g, cams, backend="reference", projection="cpp")  # C++ projection, PyTorch compositing
    assert cpp.backend == "reference"
    torch.testing.assert_close(cpp.image, twin.image, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cpp.means2d, twin.means2d, rtol=1e-12, atol=1e-12)


def test_backend_requirements_without_cuda():
    g = smooth_scene()
    cams = simple_camera()
    with pytest.raises(ValueError, match="CUDA"):
        rasterize(g, cams, backend="gsplat")
    ok, reason = _gsplat.gsplat_status("cpu")
    assert not ok and "CUDA" in reason
    with pytest.raises(ValueError, match="CUDA"):
        _gsplat.rasterize_gsplat(g.to(torch.float32), simple_camera(dtype=torch.float32),
                                 torch.zeros(1, 3), sh_degree=1)
    status = available_backends("cpu")
    assert status["reference"] == "ok" and set(status) == {"reference", "cpu", "gsplat"}
    assert status["gsplat"] != "ok"


def test_gsplat_version_parsing():
    assert _gsplat._version_tuple("1.5.3") == (1, 5, 3)
    assert _gsplat._version_tuple("1.5.3+pt24cu124") == (1, 5, 3)
    assert _gsplat._version_tuple("1.6") == (1, 6, 0)
    assert _gsplat.MIN_VERSION <= _gsplat._version_tuple("1.5.3") < _gsplat.MAX_VERSION
    assert not _gsplat._version_tuple("1.6.0") < _gsplat.MAX_VERSION


def test_auto_falls_back_to_reference_with_one_warning(monkeypatch):
    monkeypatch.setattr(rasterize_module, "_cpu_state", (None, "extension not built (test)"))
    monkeypatch.setattr(rasterize_module, "_warned_fallback", False)
    g, cams = smooth_scene(), simple_camera()
    with pytest.warns(RuntimeWarning, match="extension not built"):
        out = rasterize(g, cams)
    assert out.backend == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rasterize(g, cams).backend == "reference"
    with pytest.raises(RuntimeError, match="extension not built"):
        rasterize(g, cams, backend="cpu")


def test_cpu_backend_matches_reference_when_available():
    # Transient: the C++ backend lives in `_cpu.py`, written separately; skip while it cannot be loaded here.
    fn, reason = rasterize_module._load_cpu()
    if fn is None:
        pytest.skip(f"cpu backend unavailable: {reason}")
    g = smooth_scene(n=30, seed=7, sh_degree=2)
    for name in ("means", "opacity_logits", "sh"):
        getattr(g, name).requires_grad_(True)
    cams = simple_camera(37, 29, focal=30.0)
    background = torch.tensor([0.2, 0.3, 0.4], dtype=F64)
    outs = {}
    for backend in ("reference", "cpu"):
        out = rasterize(g, cams, background, backend=backend)
        weighted(out).backward()
        outs[backend] = (out.image, out.alpha, out.depth, out.means2d.grad, out.means2d.absgrad,
                         g.means.grad.clone())
        g.means.grad = None
    for a, b in zip(outs["reference"], outs["cpu"]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------- CUDA only
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_reference_on_cuda_matches_cpu():
    g = smooth_scene(n=30, seed=8, sh_degree=2)
    cams = simple_camera(37, 29, focal=30.0)
    out_cpu = rasterize(g, cams, backend="reference")
    out_gpu = rasterize(g.to("cuda"), cams.to("cuda"), backend="reference")
    for name in ("image", "alpha", "depth", "radii", "means2d"):
        torch.testing.assert_close(getattr(out_gpu, name).cpu(), getattr(out_cpu, name))


@needs_cuda
def test_gsplat_matches_reference_on_cuda():
    """Parity of the optional gsplat backend with the reference (float32). Only approximate: gsplat 1.5 uses
    opacity-aware per-axis radii and its own J clamp, so footprint edges differ slightly (see _gsplat.py)."""
    if not _gsplat.gsplat_status("cuda")[0]:
        pytest.skip(f"gsplat unusable: {_gsplat.gsplat_status('cuda')[1]}")
    g = smooth_scene(n=30, seed=9, sh_degree=2).to(device="cuda", dtype=torch.float32)
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        getattr(g, name).requires_grad_(True)
    cams = simple_camera(37, 29, focal=30.0, dtype=torch.float32).to("cuda")
    background = torch.tensor([0.2, 0.3, 0.4], device="cuda")
    outs = {}
    for backend in ("reference", "gsplat"):
        out = rasterize(g, cams, background, backend=backend)
        assert out.backend == backend and out.radii.dtype == torch.int32 and out.radii.shape == (1, 30)
        (out.image.square().sum() + out.depth.sum()).backward()
        outs[backend] = out
    assert rasterize(g, cams).backend == "gsplat"
    ref, gs = outs["reference"], outs["gsplat"]
    for name in ("image", "alpha", "depth"):
        diff = (getattr(gs, name) - getattr(ref, name)).abs()
        assert float(diff.mean()) < 2e-3 * max(1.0, float(getattr(ref, name).abs().mean())), name
    torch.testing.assert_close(gs.means2d, ref.means2d, rtol=1e-4, atol=1e-3)
    for attr in ("grad", "absgrad"):
        a, b = getattr(gs.means2d, attr), getattr(ref.means2d, attr)
        assert a.shape == b.shape == (1, 30, 2)
        rel = float((a - b).norm() / b.norm().clamp_min(1e-12))
        assert rel < 0.05, (attr, rel)

"""The C++ compositing backend (`composite_cpu`) against the pure-PyTorch reference and a dense brute-force oracle:
values, every gradient, per-pixel absgrad, finite differences, edge cases, end to end through `rasterize`; plus a
smoke run of `benchmarks/rasterizer.py` so the benchmark cannot rot."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gdensify import Cameras, Gaussians
from gdensify.render import _cpu, rasterize
from gdensify.render._cpu import composite_cpu
from gdensify.render._reference import composite_reference

from screen_gaussians import dense_composite, random_ellipses

ROOT = Path(__file__).resolve().parents[1]

if _cpu._compiler() is None:
    pytest.skip("no C++ compiler: the cpu backend cannot be built here", allow_module_level=True)


@pytest.fixture(scope="module", autouse=True)
def _built():
    _cpu._load()  # compile once (cached across runs); a build failure fails every test here, loudly


# ----------------------------------------------------------------------------------------------- helpers
def screen_scene(num_cams, n, width, height, seed=0, sigma=(1.0, 5.0), opacity=(0.05, 0.999), margin=4.0,
                 dtype=torch.float64):
    """Random screen-space Gaussians: means2d in pixels, conics from random SPD Σ₂D (+0.3 I), 3σ radii, about 10%
    culled (radius 0), depths with a few exact ties (index order must break them)."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.rand(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    means2d, conics, radii = random_ellipses(rand, num_cams, n, width, height, sigma, margin)
    radii[rand(num_cams, n) < 0.1] = 0
    colors = rand(num_cams, n, 3)
    opacities = opacity[0] + (opacity[1] - opacity[0]) * rand(num_cams, n)
    depths = 1.0 + torch.floor(40 * rand(num_cams, n)) / 10  # ties
    background = rand(num_cams, 3)
    floats = [x.to(dtype) for x in (means2d, conics, colors, opacities, depths)]
    return floats, radii, background.to(dtype)


def weights_for(outputs, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype) for o in outputs]


def weighted_loss(outputs, weights):
    return sum((o * w).sum() for o, w in zip(outputs, weights))


def run(fn, floats, radii, background, width, height, weights=None, seed=1):
    """Outputs, gradients of a random-weighted loss w.r.t. the 5 float inputs and the background, and absgrad."""
    ins = [x.detach().clone().requires_grad_(True) for x in (*floats, background)]
    outs = fn(*ins[:5], radii, ins[5], width, height)
    weights = weights_for(outs, seed) if weights is None else weights
    grads = torch.autograd.grad(weighted_loss(outs, weights), ins)
    return [o.detach() for o in outs], list(grads), ins[0].absgrad


def rel_err(a, b):
    """max |a − b| / max |b| (0 when both are zero)."""
    scale = float(b.abs().max()) if b.numel() else 0.0
    diff = float((a - b).abs().max()) if b.numel() else 0.0
    return diff / scale if scale > 0 else diff


def assert_all_close(got, want, tol, names):
    for name, a, b in zip(names, got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert rel_err(a, b) <= tol, f"{name}: relative error {rel_err(a, b):.2e} > {tol}"


OUT_NAMES = ["image", "alpha", "depth"]
GRAD_NAMES = ["means2d", "conics", "colors", "opacities", "depths", "background"]


# ----------------------------------------------------------------------------------------------- vs reference
@pytest.mark.parametrize("num_cams,n,width,height,seed", [
    (2, 300, 37, 29, 0),  # not a multiple of 16, several cameras
    (1, 1500, 64, 48, 1),  # dense: many pixels stop early
    (3, 200, 33, 50, 2),
])
def test_float32_matches_reference(num_cams, n, width, height, seed):
    floats, radii, bg = screen_scene(num_cams, n, width, height, seed=seed, dtype=torch.float32)
    outs_c, grads_c, abs_c = run(composite_cpu, floats, radii, bg, width, height)
    outs_r, grads_r, abs_r = run(composite_reference, floats, radii, bg, width, height)
    assert_all_close(outs_c, outs_r, 1e-4, OUT_NAMES)
    assert_all_close(grads_c, grads_r, 1e-4, GRAD_NAMES)
    assert_all_close([abs_c], [abs_r], 1e-4, ["absgrad"])
    assert float(outs_c[1].max()) > 0.999  # some pixels are (nearly) opaque: early termination happened


def test_gradients_are_bitwise_reproducible_with_threads():
    floats, radii, bg = screen_scene(2, 3000, 96, 80, seed=3, dtype=torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = [run(composite_cpu, floats, radii, bg, 96, 80) for _ in range(3)]
    finally:
        torch.set_num_threads(threads)
    for outs, grads, absgrad in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads + [absgrad], runs[0][1] + [runs[0][2]]))


def test_float64_matches_dense_oracle_including_per_pixel_absgrad():
    num_cams, n, width, height = 2, 40, 37, 29
    floats, radii, bg = screen_scene(num_cams, n, width, height, seed=3)
    outs_c, grads_c, abs_c = run(composite_cpu, floats, radii, bg, width, height)

    ins = [x.detach().clone().requires_grad_(True) for x in (*floats, bg)]
    offsets = torch.zeros(num_cams, height * width, n, 2, dtype=torch.float64, requires_grad=True)
    outs_o = dense_composite(*ins[:5], radii, ins[5], width, height, offsets=offsets)
    loss = weighted_loss(outs_o, weights_for(outs_o))
    *grads_o, g_off = torch.autograd.grad(loss, [*ins, offsets])
    assert_all_close(outs_c, [o.detach() for o in outs_o], 1e-12, OUT_NAMES)
    torch.testing.assert_close(g_off.sum(1), grads_o[0], rtol=1e-10, atol=1e-12)  # per-pixel terms sum to grad
    assert_all_close(grads_c, grads_o, 1e-10, GRAD_NAMES)
    expected_abs = g_off.abs().sum(1)  # Σ over pixels of |per-pixel dL/dmean2d|, x and y separately
    assert_all_close([abs_c], [expected_abs], 1e-10, ["absgrad"])
    assert bool((abs_c >= grads_c[0].abs() - 1e-12).all())
    assert float((abs_c - grads_c[0].abs()).max()) > 1e-6  # signs cancel somewhere


def test_finite_differences_float64():
    """gradcheck of every differentiable input on a tiny scene whose Gaussians stay clear of tile borders and of
    the α clamp, so the function is smooth at the test point."""
    width, height = 20, 18
    means2d = torch.tensor([[[6.0, 7.5], [8.5, 6.0], [7.2, 8.4], [17.3, 8.0], [10.0, 16.5]]], dtype=torch.float64)
    n = means2d.shape[1]
    conics = torch.tensor([[[0.5, 0.1, 0.4], [0.3, -0.05, 0.6], [0.8, 0.2, 0.5], [2.0, 0.0, 2.0],
                            [1.5, 0.3, 1.0]]], dtype=torch.float64)
    radii = torch.tensor([[5, 5, 5, 2, 2]], dtype=torch.int32)
    colors = torch.rand(1, n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    opacities = torch.tensor([[0.8, 0.6, 0.7, 0.5, 0.9]], dtype=torch.float64)
    depths = torch.tensor([[2.0, 3.0, 1.5, 2.5, 4.0]], dtype=torch.float64)
    background = torch.tensor([[0.1, 0.4, 0.7]], dtype=torch.float64)
    inputs = [x.clone().requires_grad_(True) for x in (means2d, conics, colors, opacities, depths, background)]
    weights = weights_for(composite_cpu(*inputs[:5], radii, inputs[5], width, height), seed=5)

    def f(m, cn, col, op, z, bg):
        return weighted_loss(composite_cpu(m, cn, col, op, z, radii, bg, width, height), weights)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("n", [0, 7])
def test_zero_or_all_culled_gaussians_give_the_background(n):
    width, height = 37, 29
    floats, radii, bg = screen_scene(2, n, width, height, seed=4)
    radii = torch.zeros_like(radii)
    outs, grads, absgrad = run(composite_cpu, floats, radii, bg, width, height)
    image, alpha, depth = outs
    assert image.shape == (2, height, width, 3) and alpha.shape == depth.shape == (2, height, width, 1)
    torch.testing.assert_close(image, bg[:, None, None, :].expand_as(image), rtol=0, atol=0)
    assert float(alpha.abs().max()) == 0.0 and float(depth.abs().max()) == 0.0
    for g, x in zip(grads[:5], floats):
        assert g.shape == x.shape and float(g.abs().sum()) == 0.0
    assert absgrad.shape == (2, n, 2)
    # d image / d background = T = 1 everywhere
    ref = run(composite_reference, floats, radii, bg, width, height)
    torch.testing.assert_close(grads[5], ref[1][5])


def test_one_tile_with_many_gaussians():
    """3000 Gaussians in a single 16×16 tile (one long depth-sorted list), against the dense oracle."""
    width, height = 16, 16
    floats, radii, bg = screen_scene(1, 3000, width, height, seed=5, sigma=(0.5, 2.0), opacity=(0.01, 0.2),
                                     margin=0.0)
    radii = radii.clamp(max=8)  # all in the single tile
    outs_c, grads_c, abs_c = run(composite_cpu, floats, radii, bg, width, height)
    ins = [x.detach().clone().requires_grad_(True) for x in (*floats, bg)]
    offsets = torch.zeros(1, height * width, 3000, 2, dtype=torch.float64, requires_grad=True)
    outs_o = dense_composite(*ins[:5], radii, ins[5], width, height, offsets=offsets)
    *grads_o, g_off = torch.autograd.grad(weighted_loss(outs_o, weights_for(outs_o)), [*ins, offsets])
    assert_all_close(outs_c, [o.detach() for o in outs_o], 1e-12, OUT_NAMES)
    assert_all_close(grads_c, grads_o, 1e-10, GRAD_NAMES)
    assert_all_close([abs_c], [g_off.abs().sum(1)], 1e-10, ["absgrad"])


def test_opaque_stack_terminates_early():
    """Twelve large, nearly opaque Gaussians over the same pixels: T falls below 1e-4 part-way down the stack, so
    the Gaussians behind receive no gradient from those pixels."""
    n, width, height = 12, 37, 29
    means2d = torch.tensor([[[18.0 + 0.4 * i, 14.0 - 0.3 * i] for i in range(n)]], dtype=torch.float64)
    conics = torch.tensor([[[1 / 60.0, 0.002, 1 / 50.0]] * n], dtype=torch.float64)
    radii = torch.full((1, n), 24, dtype=torch.int32)
    colors = torch.rand(1, n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    opacities = torch.full((1, n), 0.98, dtype=torch.float64)
    depths = torch.arange(n, dtype=torch.float64)[None] + 1.0
    bg = torch.tensor([[1.0, 0.0, 0.5]], dtype=torch.float64)
    floats = [means2d, conics, colors, opacities, depths]
    outs_c, grads_c, abs_c = run(composite_cpu, floats, radii, bg, width, height)
    outs_o = dense_composite(*floats, radii, bg, width, height)
    assert_all_close(outs_c, list(outs_o), 1e-12, OUT_NAMES)
    assert float(outs_c[1][0, 14, 18, 0]) > 1 - 1e-3  # the centre is saturated
    leaf = colors.clone().requires_grad_(True)
    image, _, _ = composite_cpu(means2d, conics, leaf, opacities, depths, radii, bg, width, height)
    (g,) = torch.autograd.grad(image[0, 14, 18].sum(), leaf)
    assert float(g[0, :2].abs().min()) > 0 and float(g[0, 4:].abs().max()) == 0.0
    for dtype in (torch.float32,):  # and in float32 against the reference
        f32 = [x.to(dtype) for x in floats]
        got = run(composite_cpu, f32, radii, bg.to(dtype), width, height)
        want = run(composite_reference, f32, radii, bg.to(dtype), width, height)
        assert_all_close(got[0] + got[1] + [got[2]], want[0] + want[1] + [want[2]], 1e-4,
                         OUT_NAMES + GRAD_NAMES + ["absgrad"])


def test_cameras_are_independent_and_background_may_be_shared():
    width, height = 40, 24
    floats, radii, bg = screen_scene(3, 120, width, height, seed=6)
    together = composite_cpu(*floats, radii, bg, width, height)
    for cam in range(3):
        alone = composite_cpu(*(x[cam:cam + 1] for x in floats), radii[cam:cam + 1], bg[cam:cam + 1], width, height)
        for a, b in zip(together, alone):
            torch.testing.assert_close(a[cam:cam + 1], b, rtol=0, atol=0)
    shared = torch.tensor([0.2, 0.3, 0.4], dtype=torch.float64, requires_grad=True)
    image, _, _ = composite_cpu(*floats, radii, shared, width, height)
    image.sum().backward()
    expected = composite_reference(*floats, radii, shared.detach().expand(3, 3), width, height)[0]
    torch.testing.assert_close(image.detach(), expected)
    assert shared.grad.shape == (3,)


def test_absgrad_attached_to_the_input_tensor_and_overwritten():
    width, height = 20, 18
    floats, radii, bg = screen_scene(1, 6, width, height, seed=8)
    m = floats[0].clone().requires_grad_(True)
    image, _, _ = composite_cpu(m, *floats[1:], radii, None, width, height)
    image.sum().backward()
    first = m.absgrad.clone()
    assert first.shape == (1, 6, 2) and bool((first > 0).any())
    image, _, _ = composite_cpu(m, *floats[1:], radii, None, width, height)
    (2 * image).sum().backward()
    torch.testing.assert_close(m.absgrad, 2 * first)  # set by each backward, not accumulated (as the reference)


def test_repeated_calls_reuse_buffers_without_leaking_state():
    """Cached blocks (tile lists, gradient buffers that must be zero again) are reused across calls of different
    sizes: results do not depend on what ran before."""
    big = screen_scene(2, 900, 70, 50, seed=9, dtype=torch.float32)
    small = screen_scene(1, 50, 20, 18, seed=10, dtype=torch.float32)
    first = run(composite_cpu, *big, 70, 50)
    run(composite_cpu, *small, 20, 18)
    _cpu.release_cpu_cache()
    run(composite_cpu, *small, 20, 18)
    again = run(composite_cpu, *big, 70, 50)
    assert_all_close(again[0], first[0], 0.0, OUT_NAMES)  # the forward is deterministic
    assert_all_close(again[1] + [again[2]], first[1] + [first[2]], 1e-6, GRAD_NAMES + ["absgrad"])


def test_errors_are_clear(monkeypatch):
    floats, radii, bg = screen_scene(1, 3, 20, 18)
    with pytest.raises(ValueError, match="CPU tensors"):
        composite_cpu(floats[0].to("meta"), *floats[1:], radii, bg, 20, 18)
    with pytest.raises(ValueError, match="background"):
        composite_cpu(*floats, radii, torch.zeros(2, 3, dtype=torch.float64), 20, 18)
    with pytest.raises(ValueError, match="conics"):
        composite_cpu(floats[0], floats[1][..., :2], *floats[2:], radii, bg, 20, 18)
    # no compiler: a RuntimeError that names the problem, and the availability probe says False
    monkeypatch.setattr(_cpu, "_module", None)
    monkeypatch.setattr(_cpu, "_error", None)
    monkeypatch.setenv("CXX", "gdensify-no-such-compiler")
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        _cpu._load()
    assert _cpu.cpu_backend_available() is False
    assert "compiler" in _cpu.cpu_backend_error()


def test_loading_ignores_a_stale_build_lock():
    """A build killed while holding torch's lock file must not make later processes wait forever: an existing
    library is loaded without any lock."""
    lock = _cpu._build_directory(_cpu._name) / "lock"
    created = not lock.exists()
    lock.touch()
    try:
        code = "from gdensify.render import _cpu; _cpu._load(); print('loaded')"
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0 and "loaded" in res.stdout, res.stderr
    finally:
        if created:
            lock.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------- end to end
def _gaussians(n, sh_degree, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.rand(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    means = torch.stack([rand(n) - 0.5, rand(n) - 0.5, 2.0 + rand(n)], -1)
    quats = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    log_scales = torch.log(0.01 + 0.05 * rand(n, 3))
    logits = torch.logit(0.05 + 0.94 * rand(n))
    sh = 0.3 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=gen, dtype=torch.float64)
    return [x.to(dtype) for x in (means, quats, log_scales, logits, sh)]


def _cameras(width, height, dtype):
    rot = torch.linalg.matrix_exp(torch.tensor([[0.0, -0.1, 0.05], [0.1, 0.0, -0.08], [-0.05, 0.08, 0.0]]))
    w2c = torch.eye(4).repeat(2, 1, 1)
    w2c[1, :3, :3] = rot
    w2c[1, :3, 3] = torch.tensor([0.05, -0.03, 0.1])
    k = torch.tensor([[1.2 * width, 0.0, width / 2], [0.0, 1.2 * width, height / 2], [0.0, 0.0, 1.0]])
    return Cameras(w2c.to(dtype), k.expand(2, 3, 3).to(dtype), width, height)


def _render(backend, params, cameras, background):
    leaves = [p.detach().clone().requires_grad_(True) for p in (*params, background)]
    out = rasterize(Gaussians(*leaves[:5]), cameras, leaves[5], backend=backend)
    assert out.backend == backend
    outputs = [out.image, out.alpha, out.depth]
    loss = weighted_loss(outputs, weights_for(outputs, seed=11))
    loss.backward()
    grads = [p.grad for p in leaves]
    return [o.detach() for o in outputs], grads, out.means2d.grad, out.means2d.absgrad


def test_rasterize_cpu_matches_reference_end_to_end():
    width, height = 48, 40
    params = _gaussians(600, 1, torch.float32, seed=12)
    cameras = _cameras(width, height, torch.float32)
    background = torch.tensor([0.2, 0.6, 0.9])
    outs_c, grads_c, g2d_c, abs_c = _render("cpu", params, cameras, background)
    outs_r, grads_r, g2d_r, abs_r = _render("reference", params, cameras, background)
    assert_all_close(outs_c, outs_r, 1e-4, OUT_NAMES)
    assert_all_close(grads_c, grads_r, 1e-4, ["means", "quats", "log_scales", "opacity_logits", "sh", "background"])
    assert_all_close([g2d_c, abs_c], [g2d_r, abs_r], 1e-4, ["means2d.grad", "means2d.absgrad"])
    assert float(abs_c.abs().max()) > 0


# ----------------------------------------------------------------------------------------------- portable build
@pytest.mark.slow
def test_portable_build_matches_reference():
    """The non-AVX2 float32 paths of compositing and projection (GDENSIFY_CPU_SIMD=0, a second build of ~1 minute)
    in a subprocess."""
    code = (
        "import torch, sys; sys.path.insert(0, %r)\n"
        "import test_render_cpu as t\n"
        "from gdensify.render import _cpu\n"
        "assert not _cpu.cpu_backend_simd()\n"
        "t.test_float32_matches_reference(2, 300, 37, 29, 0)\n"
        "t.test_opaque_stack_terminates_early()\n"
        "import test_projection as p\n"
        "p.test_cpp_projection_float32_within_rounding_of_the_twin('gd_object_release', 3)\n"
        "print('ok')\n" % str(Path(__file__).parent))
    env = dict(os.environ, GDENSIFY_CPU_SIMD="0")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0 and "ok" in res.stdout, res.stdout + res.stderr


# ----------------------------------------------------------------------------------------------- benchmark smoke
def test_benchmark_script_runs_in_quick_mode(capsys):
    spec = importlib.util.spec_from_file_location("bench_rasterizer", ROOT / "benchmarks" / "rasterizer.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--quick", "--sizes", "300", "--res", "32", "--runs", "1"])
    out = capsys.readouterr().out
    assert "| N |" in out and "cpu" in out and "reference" in out
    assert "speed-up" in out


def test_projection_benchmark_runs_small(capsys):
    spec = importlib.util.spec_from_file_location("bench_rasterizer", ROOT / "benchmarks" / "rasterizer.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.projection_benchmark(n=500, size=32, repeats=1, threads=1)
    assert result["torch_projection_s"] > 0 and result["cpp_projection_s"] > 0
    out = capsys.readouterr().out
    assert "PyTorch twin" in out and "C++" in out and "× faster" in out


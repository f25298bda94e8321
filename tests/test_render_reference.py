"""The pure-PyTorch compositor (`composite_reference`) against a brute-force oracle, finite differences and a
per-pixel absgrad computation. Scenes are built directly in screen space."""

from __future__ import annotations

import math

import pytest
import torch

from gdensify.render import _reference, composite_reference

from screen_gaussians import random_ellipses

TILE = 16


# ----------------------------------------------------------------------------------------------- scenes
def make_scene(num_cams, n, width, height, seed=0, sigma=(1.5, 5.0), opacity=(0.3, 0.9), dtype=torch.float64,
               margin=0.0):
    """Random screen-space Gaussians: means2d (pixels), conics from random SPD Σ₂D (+0.3 I), radii by the 3σ rule."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.rand(*s, generator=gen, dtype=dtype)  # noqa: E731
    means2d, conics, radii = random_ellipses(rand, num_cams, n, width, height, sigma, margin)
    colors = rand(num_cams, n, 3)
    opacities = opacity[0] + (opacity[1] - opacity[0]) * rand(num_cams, n)
    depths = 1.0 + 4.0 * rand(num_cams, n)
    return means2d, conics, colors, opacities, depths, radii


def brute_composite(means2d, conics, colors, opacities, depths, radii, background, width, height):
    """All pixels × all Gaussians, one Gaussian at a time in (depth, index) order; only the tile-rectangle
    membership rule of the tiling is kept. Written independently of the chunked implementation."""
    num_cams, n = radii.shape
    dtype = means2d.dtype
    py, px = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    tile_x, tile_y = px // TILE, py // TILE
    centres_x, centres_y = px.to(dtype) + 0.5, py.to(dtype) + 0.5
    tiles_x, tiles_y = math.ceil(width / TILE), math.ceil(height / TILE)
    images, alphas, depth_maps = [], [], []
    for cam in range(num_cams):
        trans = torch.ones(height, width, dtype=dtype)
        done = torch.zeros(height, width, dtype=torch.bool)
        color = torch.zeros(height, width, 3, dtype=dtype)
        depth = torch.zeros(height, width, dtype=dtype)
        order = sorted(range(n), key=lambda i: (float(depths[cam, i].detach()), i))
        for i in order:
            r = int(radii[cam, i])
            if r <= 0:
                continue
            u, v = (float(x) for x in means2d[cam, i].detach())
            x0 = min(max(math.floor((u - r) / TILE), 0), tiles_x)
            x1 = min(max(math.floor((u + r + TILE - 1) / TILE), 0), tiles_x)
            y0 = min(max(math.floor((v - r) / TILE), 0), tiles_y)
            y1 = min(max(math.floor((v + r + TILE - 1) / TILE), 0), tiles_y)
            inside = (tile_x >= x0) & (tile_x < x1) & (tile_y >= y0) & (tile_y < y1)
            dx = means2d[cam, i, 0] - centres_x
            dy = means2d[cam, i, 1] - centres_y
            a, b, c = conics[cam, i]
            power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
            alpha = torch.clamp(opacities[cam, i] * torch.exp(power), max=0.99)
            skip = (power > 0) | (alpha < 1 / 255) | ~inside | done
            stop = ~skip & (trans * (1 - alpha) < 1e-4)
            done = done | stop
            use = ~skip & ~stop
            weight = torch.where(use, alpha * trans, torch.zeros_like(alpha))
            color = color + weight[..., None] * colors[cam, i]
            depth = depth + weight * depths[cam, i]
            trans = torch.where(use, trans * (1 - alpha), trans)
        images.append(color + trans[..., None] * background[cam])
        alphas.append(1 - trans[..., None])
        depth_maps.append(depth[..., None])
    return torch.stack(images), torch.stack(alphas), torch.stack(depth_maps)


def weights_like(outputs, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outputs]


def weighted_loss(outputs, weights):
    return sum((o * w).sum() for o, w in zip(outputs, weights))


def leaves(tensors):
    return [t.detach().clone().requires_grad_(t.is_floating_point()) for t in tensors]


# ----------------------------------------------------------------------------------------------- oracle
@pytest.mark.parametrize("num_cams,n,width,height,seed", [
    (1, 6, 20, 18, 0),
    (2, 40, 37, 29, 1),  # not a multiple of 16, several cameras
    (1, 120, 48, 33, 2),  # dense: early termination is reached in many pixels
])
def test_matches_brute_force_oracle_values_and_gradients(num_cams, n, width, height, seed):
    scene = make_scene(num_cams, n, width, height, seed=seed, opacity=(0.5, 0.999), margin=6.0)
    background = torch.tensor([[0.2, 0.5, 0.9]] * num_cams, dtype=torch.float64)
    ins_ref = leaves([*scene[:5], background])
    ins_bf = leaves([*scene[:5], background])
    radii = scene[5]
    out_ref = composite_reference(*ins_ref[:5], radii, ins_ref[5], width, height)
    out_bf = brute_composite(*ins_bf[:5], radii, ins_bf[5], width, height)
    for a, b in zip(out_ref, out_bf):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    w = weights_like(out_ref)
    g_ref = torch.autograd.grad(weighted_loss(out_ref, w), ins_ref)
    g_bf = torch.autograd.grad(weighted_loss(out_bf, w), ins_bf)
    for a, b in zip(g_ref, g_bf):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_early_termination_is_exercised_and_matches_oracle():
    # Eight opaque, large Gaussians stacked over the same pixels: T falls below 1e-4 part-way down the stack.
    n, width, height = 8, 20, 18
    means2d = torch.tensor([[[10.0 + 0.3 * i, 9.0 - 0.2 * i] for i in range(n)]], dtype=torch.float64)
    conics = torch.tensor([[[1 / 30.0, 0.0, 1 / 30.0]] * n], dtype=torch.float64)
    radii = torch.full((1, n), 17, dtype=torch.int32)
    colors = torch.rand(1, n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    opacities = torch.full((1, n), 0.97, dtype=torch.float64)
    depths = torch.arange(n, dtype=torch.float64)[None] + 1.0
    background = torch.ones(1, 3, dtype=torch.float64)
    args = [means2d, conics, colors, opacities, depths]
    image, alpha, depth = composite_reference(*args, radii, background, width, height)
    ref = brute_composite(*args, radii, background, width, height)
    torch.testing.assert_close(image, ref[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(alpha, ref[1], rtol=1e-12, atol=1e-12)
    # At the centre pixel T goes 1 → 0.03 → 9e-4 and the third Gaussian would bring it below 1e-4: the pixel stops
    # there, so only the two front Gaussians receive colour gradient from it.
    assert float(alpha[0, 9, 10, 0]) == pytest.approx(1 - 0.03**2, rel=1e-2)
    leaf = colors.clone().requires_grad_(True)
    out = composite_reference(means2d, conics, leaf, opacities, depths, radii, background, width, height)
    (g,) = torch.autograd.grad(out[0][0, 9, 10].sum(), leaf)
    assert float(g[0, 2:].abs().max()) == 0.0
    assert float(g[0, :2].abs().min()) > 0.0


def test_alpha_clamp_at_099_has_zero_derivative():
    # One nearly opaque Gaussian centred on pixel (10, 9): α = min(0.99, o·exp(power)) is clamped at that pixel.
    means2d = torch.tensor([[[10.5, 9.5]]], dtype=torch.float64)
    conics = torch.tensor([[[0.5, 0.0, 0.5]]], dtype=torch.float64)
    radii = torch.tensor([[5]], dtype=torch.int32)
    colors = torch.tensor([[[1.0, 0.5, 0.25]]], dtype=torch.float64)
    opacities = torch.tensor([[0.999]], dtype=torch.float64, requires_grad=True)
    depths = torch.tensor([[2.0]], dtype=torch.float64)
    image, alpha, depth = composite_reference(means2d, conics, colors, opacities, depths, radii, None, 20, 18)
    assert float(alpha.detach()[0, 9, 10, 0]) == pytest.approx(0.99, abs=1e-15)
    assert float(depth.detach()[0, 9, 10, 0]) == pytest.approx(0.99 * 2.0, abs=1e-14)
    (g_centre,) = torch.autograd.grad(alpha[0, 9, 10, 0], opacities, retain_graph=True)
    (g_side,) = torch.autograd.grad(alpha[0, 9, 11, 0], opacities)
    assert float(g_centre) == 0.0 and float(g_side) > 0.0


def test_chunking_does_not_change_results(monkeypatch):
    """Tiny depth chunks and tiny tile groups (many K-chunks carrying T and the stop flag) give the same values,
    gradients and absgrad as one chunk per tile."""
    width, height = 37, 29
    scene = make_scene(2, 70, width, height, seed=3, sigma=(3.0, 6.0), opacity=(0.8, 0.99), margin=4.0)
    big = _run_with_pairs(scene, width, height, max_pairs=_reference.MAX_CHUNK_PAIRS)
    monkeypatch.setattr(_reference, "MAX_CHUNK_GAUSSIANS", 5)  # read at call time
    outs_s, grads_s, absgrad_s = _run_with_pairs(scene, width, height, max_pairs=2 * 256 * 5)
    for a, b in zip(big[0], outs_s):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(big[1], grads_s):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(big[2], absgrad_s, rtol=1e-10, atol=1e-12)


def _run_with_pairs(scene, width, height, max_pairs):
    ins = leaves(scene[:5])
    outs = composite_reference(*ins, scene[5], None, width, height, max_pairs=max_pairs)
    grads = torch.autograd.grad(weighted_loss(outs, weights_like(outs)), ins)
    return outs, grads, ins[0].absgrad


# ----------------------------------------------------------------------------------------------- finite differences
def test_gradcheck_all_inputs():
    """Finite differences w.r.t. means2d, conics, colors, opacities, depths and background. Gaussians sit well
    inside one tile each (the 3σ footprint stays clear of tile borders), opacities ≤ 0.9 (no 0.99 clamp) and few
    overlaps (no early stop), so the function is smooth at the test point."""
    width, height = 20, 18
    means2d = torch.tensor([[[7.0, 7.5], [8.5, 6.0], [7.2, 8.4], [17.3, 8.0], [10.0, 16.5]]], dtype=torch.float64)
    n = means2d.shape[1]
    conics = torch.tensor([[[0.5, 0.1, 0.4], [0.3, -0.05, 0.6], [0.8, 0.2, 0.5], [2.0, 0.0, 2.0], [1.5, 0.3, 1.0]]],
                          dtype=torch.float64)
    radii = torch.full((1, n), 2, dtype=torch.int32)  # footprint ±2 px: each Gaussian within a single tile column
    radii[0, :3] = 5
    colors = torch.rand(1, n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    opacities = torch.tensor([[0.8, 0.6, 0.7, 0.5, 0.9]], dtype=torch.float64)
    depths = torch.tensor([[2.0, 3.0, 1.5, 2.5, 4.0]], dtype=torch.float64)
    background = torch.tensor([[0.1, 0.4, 0.7]], dtype=torch.float64)
    inputs = [x.clone().requires_grad_(True) for x in (means2d, conics, colors, opacities, depths, background)]
    w = weights_like(composite_reference(*inputs[:5], radii, inputs[5], width, height), seed=5)

    def f(m, cn, col, op, z, bg):
        return weighted_loss(composite_reference(m, cn, col, op, z, radii, bg, width, height), w)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------------------------- absgrad
def test_absgrad_equals_per_pixel_brute_force():
    width, height = 20, 18
    scene = make_scene(2, 5, width, height, seed=4, sigma=(1.5, 3.0))
    radii = scene[5]
    background = torch.tensor([[0.3, 0.3, 0.3], [0.0, 1.0, 0.0]], dtype=torch.float64)
    ins = leaves(scene[:5])
    outs = composite_reference(*ins, radii, background, width, height)
    w = weights_like(outs, seed=7)
    (grad,) = torch.autograd.grad(weighted_loss(outs, w), ins[0])
    absgrad = ins[0].absgrad
    assert absgrad.shape == grad.shape

    # Per pixel: L_p = Σ_channels w·out at pixel p; gradient w.r.t. means2d, abs, summed over pixels.
    m = scene[0].clone().requires_grad_(True)
    image, alpha, depth = brute_composite(m, *scene[1:5], radii, background, width, height)
    per_pixel = (image * w[0]).sum(-1) + (alpha * w[1]).sum(-1) + (depth * w[2]).sum(-1)  # C H W
    expected = torch.zeros_like(m)
    for c in range(2):
        for y in range(height):
            for x in range(width):
                (g,) = torch.autograd.grad(per_pixel[c, y, x], m, retain_graph=True)
                expected += g.abs()
    torch.testing.assert_close(absgrad, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, torch.autograd.grad(per_pixel.sum(), m)[0], rtol=1e-10, atol=1e-12)
    assert bool((absgrad >= grad.abs() - 1e-12).all())
    assert float((absgrad - grad.abs()).max()) > 1e-6  # signs do cancel somewhere: absgrad is not just |grad|


def test_absgrad_is_attached_to_the_input_tensor_and_overwritten():
    width, height = 20, 18
    scene = make_scene(1, 4, width, height, seed=8)
    m = scene[0].clone().requires_grad_(True)
    image, _, _ = composite_reference(m, *scene[1:5], scene[5], None, width, height)
    image.sum().backward()
    first = m.absgrad.clone()
    assert first.shape == (1, 4, 2) and bool((first > 0).any())
    image, _, _ = composite_reference(m, *scene[1:5], scene[5], None, width, height)
    (2 * image).sum().backward()
    torch.testing.assert_close(m.absgrad, 2 * first)  # set by each backward, not accumulated


# ----------------------------------------------------------------------------------------------- edge cases
def test_zero_and_culled_gaussians_give_the_background():
    width, height = 37, 29
    background = torch.tensor([[0.25, 0.5, 0.75]], dtype=torch.float64)
    for n in (0, 5):
        scene = make_scene(1, n, width, height)
        radii = torch.zeros_like(scene[5])
        image, alpha, depth = composite_reference(*scene[:5], radii, background, width, height)
        assert image.shape == (1, height, width, 3) and alpha.shape == depth.shape == (1, height, width, 1)
        torch.testing.assert_close(image, background[:, None, None, :].expand_as(image))
        assert float(alpha.abs().max()) == 0.0 and float(depth.abs().max()) == 0.0


def test_outputs_are_bounded_and_background_only_where_nothing_is_visible():
    width, height = 37, 29
    scene = make_scene(1, 3, width, height, seed=9, sigma=(0.8, 1.2))
    scene[0][0] = torch.tensor([[5.0, 5.0], [30.0, 6.0], [20.0, 22.0]], dtype=torch.float64)
    background = torch.tensor([[0.9, 0.1, 0.4]], dtype=torch.float64)
    image, alpha, depth = composite_reference(*scene[:5], scene[5], background, width, height)
    assert bool(((alpha >= 0) & (alpha <= 1)).all())
    empty = alpha[0, ..., 0] == 0
    assert bool(empty.any()) and bool((~empty).any())
    torch.testing.assert_close(image[0][empty], background.expand(int(empty.sum()), 3))
    assert float(depth[0][empty].abs().max()) == 0.0


def test_float32_matches_float64():
    width, height = 37, 29
    scene = make_scene(2, 60, width, height, seed=10, margin=3.0)
    out64 = composite_reference(*scene[:5], scene[5], None, width, height)
    out32 = composite_reference(*(x.float() for x in scene[:5]), scene[5], None, width, height)
    for a, b in zip(out64, out32):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b.double(), a, rtol=1e-4, atol=1e-4)


def test_bad_shapes_raise():
    scene = make_scene(1, 3, 20, 18)
    with pytest.raises(ValueError, match="background"):
        composite_reference(*scene[:5], scene[5], torch.zeros(2, 3, dtype=torch.float64), 20, 18)
    with pytest.raises(ValueError, match="conics"):
        composite_reference(scene[0], scene[1][..., :2], *scene[2:5], scene[5], None, 20, 18)

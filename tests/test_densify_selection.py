"""Selection of coarse Gaussians by view-space positional gradients (rendered with the reference rasterizer)."""

import math

import pytest
import torch

from gdensify import Cameras, Gaussians
from gdensify.cameras import look_at
from gdensify.densify.selection import (
    SelectionConfig, gradient_scores, score_gaussians, select_gaussians, top_k_per_group, view_space_gradients,
)

BACKEND = "reference"


def _scene(n=60, seed=0, size=24, views=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    gauss = Gaussians(
        means=(torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * 0.6,
        quats=torch.randn(n, 4, generator=g, dtype=dtype),
        log_scales=torch.full((n, 3), math.log(0.04), dtype=dtype) + 0.3 * torch.randn(n, 3, generator=g,
                                                                                          dtype=dtype),
        opacity_logits=torch.randn(n, generator=g, dtype=dtype),
        sh=0.3 * torch.randn(n, 4, 3, generator=g, dtype=dtype))
    eyes = torch.tensor([[0.0, 0.0, -2.0], [2.0, 0.2, 0.0], [0.1, 2.0, 0.3], [-2.0, 0.0, 0.4]], dtype=dtype)[:views]
    c2w = look_at(eyes, torch.zeros(views, 3, dtype=dtype), up=torch.tensor([0.0, 0.0, 1.0], dtype=dtype))
    cams = Cameras.from_fov(c2w, math.radians(45), size, size)
    images = torch.rand(views, size, size, 3, generator=g, dtype=dtype)
    return gauss, cams, images


def _per_view_grads(gauss, cams, images, absolute):
    """Reference: one render and one backward per view."""
    from gdensify.render import rasterize

    out = []
    for v in range(len(cams)):
        r = rasterize(gauss.detach(), cams[v], backend=BACKEND, means2d_grad=True)
        ((r.image - images[v:v + 1]) ** 2).mean().backward()
        out.append(r.view_space_grad(absolute=absolute)[0])
    return torch.stack(out)


@pytest.mark.parametrize("absolute", [False, True])
def test_gradients_equal_one_render_per_view(absolute):
    gauss, cams, images = _scene()
    grads = view_space_gradients(gauss, cams, images, absolute=absolute, backend=BACKEND)
    ref = _per_view_grads(gauss, cams, images, absolute)
    torch.testing.assert_close(grads, ref, rtol=1e-9, atol=1e-12)
    assert grads.abs().sum() > 0


def test_paper_mean_and_released_sum_reductions():
    gauss, cams, images = _scene(seed=1)
    ref = _per_view_grads(gauss, cams, images, absolute=False)
    mean = score_gaussians(gauss, cams, images, SelectionConfig(min_opacity=0.0), backend=BACKEND)
    torch.testing.assert_close(mean, ref.norm(dim=-1).mean(0))
    summed = score_gaussians(gauss, cams, images, SelectionConfig(min_opacity=0.0, reduction="sum"), backend=BACKEND)
    torch.testing.assert_close(summed, ref.sum(0).norm(dim=-1))
    ndc = score_gaussians(gauss, cams, images, SelectionConfig(min_opacity=0.0, reduction="sum", units="ndc"),
                          backend=BACKEND)
    torch.testing.assert_close(ndc, (ref.sum(0) * torch.tensor([12.0, 12.0], dtype=ref.dtype)).norm(dim=-1))


def test_absolute_gradient_bounds_the_plain_one():
    gauss, cams, images = _scene(seed=2)
    plain = view_space_gradients(gauss, cams, images, absolute=False, backend=BACKEND)
    absolute = view_space_gradients(gauss, cams, images, absolute=True, backend=BACKEND)
    assert bool((absolute >= plain.abs() - 1e-12).all())


def test_no_gradient_reaches_the_producing_network_and_no_grad_mode_works():
    gauss, cams, images = _scene(seed=3, dtype=torch.float32)
    net = torch.nn.Linear(3, 3).double()
    torch.nn.init.eye_(net.weight)
    torch.nn.init.zeros_(net.bias)
    produced = Gaussians(net(gauss.means.double()).float(), gauss.quats, gauss.log_scales, gauss.opacity_logits,
                         gauss.sh)
    assert produced.means.requires_grad
    with_grad = select_gaussians(produced, torch.zeros(len(gauss), dtype=torch.long), cams, images,
                                 SelectionConfig(k=10), backend=BACKEND)
    with torch.no_grad():
        no_grad = select_gaussians(produced, torch.zeros(len(gauss), dtype=torch.long), cams, images,
                                   SelectionConfig(k=10), backend=BACKEND)
    with torch.inference_mode():
        inference = select_gaussians(gauss, torch.zeros(len(gauss), dtype=torch.long), cams, images,
                                     SelectionConfig(k=10), backend=BACKEND)
    assert net.weight.grad is None and net.bias.grad is None
    assert not with_grad.scores.requires_grad
    assert torch.equal(with_grad.index, no_grad.index) and torch.equal(no_grad.index, inference.index)
    assert len(with_grad) == 10


def test_top_k_candidates_min_opacity_and_k_above_available():
    gauss, cams, images = _scene(seed=4)
    gauss.opacity_logits[:20] = -10.0  # opacity 4.5e-5 < 0.005: never candidates
    batch = torch.zeros(len(gauss), dtype=torch.long)
    sel = select_gaussians(gauss, batch, cams, images, SelectionConfig(k=15), backend=BACKEND)
    assert len(sel) == 15 and bool((sel.index >= 20).all())
    assert bool((sel.index[1:] > sel.index[:-1]).all())
    assert bool(torch.isinf(sel.scores[:20]).all())
    chosen = sel.scores[sel.index]
    rest = torch.ones(len(gauss), dtype=torch.bool)
    rest[sel.index] = False
    assert chosen.min() >= sel.scores[rest].max()
    everything = select_gaussians(gauss, batch, cams, images, SelectionConfig(k=10_000), backend=BACKEND)
    assert everything.index.tolist() == list(range(20, len(gauss)))


def test_ties_are_deterministic_and_groups_are_separate():
    scores = torch.tensor([1.0, 1.0, 1.0, 2.0, 1.0, 1.0, -math.inf, 3.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert top_k_per_group(scores, groups, 2).tolist() == [0, 3, 4, 7]
    assert top_k_per_group(scores, groups, 3).tolist() == [0, 1, 3, 4, 5, 7]
    assert top_k_per_group(scores, groups, 0).tolist() == []
    with pytest.raises(ValueError, match="NaN"):
        top_k_per_group(torch.tensor([float("nan")]), torch.zeros(1, dtype=torch.long), 1)


def test_batched_objects_equal_separate_calls_and_scene_groups():
    ga, ca, ia = _scene(n=40, seed=5)
    gb, cb, ib = _scene(n=30, seed=6, views=2)
    both = Gaussians.cat([ga, gb])
    batch = torch.cat([torch.zeros(40), torch.ones(30)]).long()
    cfg = SelectionConfig(k=8)
    joint = select_gaussians(both, batch, [ca, cb], [ia, ib], cfg, backend=BACKEND)
    sa = select_gaussians(ga, torch.zeros(40, dtype=torch.long), ca, ia, cfg, backend=BACKEND)
    sb = select_gaussians(gb, torch.zeros(30, dtype=torch.long), cb, ib, cfg, backend=BACKEND)
    assert joint.index.tolist() == sa.index.tolist() + (sb.index + 40).tolist()
    assert joint.batch.tolist() == [0] * 8 + [1] * 8
    # scenes: top K per input view of the pixel-aligned Gaussians
    groups = torch.arange(40) % 4
    per_view = select_gaussians(ga, torch.zeros(40, dtype=torch.long), ca, ia, SelectionConfig(k=3), groups=groups,
                                backend=BACKEND)
    assert torch.bincount(groups[per_view.index]).tolist() == [3, 3, 3, 3]


def test_random_selection_and_errors():
    gauss, cams, images = _scene(seed=7)
    batch = torch.zeros(len(gauss), dtype=torch.long)
    cfg = SelectionConfig(k=5, method="random")
    a = select_gaussians(gauss, batch, cams, images, cfg, generator=torch.Generator().manual_seed(1))
    b = select_gaussians(gauss, batch, cams, images, cfg, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.index, b.index) and len(a) == 5
    with pytest.raises(ValueError, match="images must have shape"):
        select_gaussians(gauss, batch, cams, images[:, :10], backend=BACKEND)
    with pytest.raises(ValueError, match="batch indices"):
        select_gaussians(gauss, batch + 1, cams, images, backend=BACKEND)
    with pytest.raises(ValueError, match="reduction"):
        gradient_scores(torch.zeros(1, 2, 2), "median")
    with pytest.raises(ValueError, match="unknown SelectionConfig preset"):
        SelectionConfig.preset("best")
    assert SelectionConfig.preset("released_object").gradient == "absolute"

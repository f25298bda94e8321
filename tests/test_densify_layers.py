"""UP / SPLIT / HEAD layers: bounds, encoding layout, straight-through estimator, per-object top ratio; the
opacity split between coincident copies."""

import math

import pytest
import torch

from gdensify.densify._ops import keep_counts, rank_within_segments, segment_mean, segment_softmax, top_ratio_mask
from gdensify.densify.layers import (
    FINE_LOG_SCALE_SHIFT, OPACITY_SHIFT, GaussianHead, LearnableMask, Upsample, attributes_to_gaussians,
    positional_encoding, split_opacity_logits,
)


def test_sigmoid_mask_keeps_ceil_ratio_per_object_and_is_exact_in_forward():
    torch.manual_seed(1)
    mask = LearnableMask(8, keep_ratio=0.8)
    batch = torch.cat([torch.zeros(24), torch.ones(7), torch.full((1,), 2)]).long()
    f = torch.randn(len(batch), 8, requires_grad=True)
    out, keep, p = mask(f, batch, 4)
    assert torch.equal(out, f)
    assert [int(keep[batch == b].sum()) for b in range(3)] == [math.ceil(0.8 * 24 - 1e-6), 6, 1]
    for b in range(3):  # the kept points are the highest p of their object
        pb, kb = p[batch == b], keep[batch == b]
        if (~kb).any():
            assert pb[kb].min() >= pb[~kb].max()
    out.sum().backward()
    assert mask.net[0].weight.grad is not None and mask.net[0].weight.grad.abs().sum() > 0


def test_softmax_mask_zeroes_leaves_and_normalises_per_object():
    torch.manual_seed(2)
    mask = LearnableMask(8, keep_ratio=0.5, activation="softmax")
    batch = torch.tensor([0] * 10 + [1] * 6)
    f = torch.randn(16, 8)
    out, keep, p = mask(f, batch, 2)
    torch.testing.assert_close(segment_mean(p[:, None], batch, 2)[:, 0] * torch.tensor([10.0, 6.0]),
                               torch.ones(2))
    torch.testing.assert_close(out, f * keep[:, None])
    assert [int(keep[batch == b].sum()) for b in range(2)] == [5, 3]


def test_top_ratio_ties_are_deterministic_lower_index_first():
    score = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.9])
    batch = torch.zeros(5, dtype=torch.long)
    keep = top_ratio_mask(score, batch, 1, 0.6)  # ceil(3) = 3: 0.9 then indices 0, 1
    assert keep.tolist() == [True, True, False, False, True]
    assert rank_within_segments(score, batch, 1).tolist() == [1, 2, 3, 4, 0]


def test_keep_counts_are_robust_to_float_noise():
    assert keep_counts(torch.tensor([24000, 76800, 60000, 10, 1, 0]), 0.8).tolist() == [19200, 61440, 48000, 8, 1, 0]
    assert keep_counts(torch.tensor([60000]), 0.5).tolist() == [30000]


def test_segment_softmax_matches_per_object_softmax():
    x = torch.randn(9, dtype=torch.float64)
    batch = torch.tensor([2, 0, 0, 2, 1, 0, 2, 2, 1])
    s = segment_softmax(x, batch, 3)
    for b in range(3):
        torch.testing.assert_close(s[batch == b], torch.softmax(x[batch == b], 0))


def test_upsample_children_offsets_and_shapes():
    torch.manual_seed(3)
    up = Upsample(16, 24, factor=4, offset_scale=0.5)
    coord = torch.rand(10, 3)
    feat = torch.randn(10, 16) * 50  # large features: tanh saturates, offsets must stay bounded
    batch = torch.tensor([0] * 6 + [1] * 4)
    g = 1 / 64
    c, f, b, parent, dx = up(coord, feat, batch, g)
    assert c.shape == (40, 3) and f.shape == (40, 24) and b.tolist() == batch.repeat_interleave(4).tolist()
    assert parent.tolist() == torch.arange(10).repeat_interleave(4).tolist()
    assert float(dx.detach().abs().max()) <= 0.5 * g + 1e-9
    torch.testing.assert_close(c, coord.repeat_interleave(4, 0) + dx)


def test_positional_encoding_layout_and_upsample_parameter_shapes():
    x = torch.tensor([[0.1, -0.2, 0.3]])
    freqs = 2.0 ** torch.arange(15)
    pe = positional_encoding(x, freqs)
    assert pe.shape == (1, 90)
    k, a = 5, 1
    torch.testing.assert_close(pe[0, k * 3 + a], torch.sin(freqs[k] * x[0, a]))
    torch.testing.assert_close(pe[0, 45 + k * 3 + a], torch.cos(freqs[k] * x[0, a]))
    up = Upsample(160, 256, factor=2)
    shapes = {k: tuple(v.shape) for k, v in up.state_dict().items()}
    assert shapes == {"frequencies": (15,), "delta_x.0.weight": (160, 160), "delta_x.0.bias": (160,),
                      "delta_x.2.weight": (6, 160), "delta_x.2.bias": (6,), "skip.weight": (256, 160),
                      "skip.bias": (256,), "delta_f.1.weight": (160, 250), "delta_f.1.bias": (160,),
                      "delta_f.3.weight": (256, 160), "delta_f.3.bias": (256,)}
    assert sum(p.numel() for p in up.parameters()) == 149_318


def test_head_layout_and_default_shifts():
    head = GaussianHead(256, sh_degree=1)
    assert head.num_outputs == 20 and sum(p.numel() for p in head.parameters()) == 70_932
    attr = torch.zeros(3, 20)
    g = attributes_to_gaussians(torch.zeros(3, 3), attr, 1)
    assert g.sh.shape == (3, 4, 3)
    torch.testing.assert_close(g.opacities, torch.sigmoid(torch.tensor(OPACITY_SHIFT)).expand(3))
    torch.testing.assert_close(g.log_scales, torch.full((3, 3), FINE_LOG_SCALE_SHIFT))
    assert abs(math.exp(FINE_LOG_SCALE_SHIFT) - 6.51e-4) < 1e-6
    attr = torch.arange(20.0)[None]
    g = attributes_to_gaussians(torch.zeros(1, 3), attr, 1)
    assert g.sh.flatten().tolist() == list(range(12)) and g.quats.tolist() == [[16, 17, 18, 19]]
    with pytest.raises(ValueError, match="attributes"):
        attributes_to_gaussians(torch.zeros(1, 3), torch.zeros(1, 19), 1)


@pytest.mark.parametrize("adaptive", [False, True])
def test_upsample_factored_delta_f_equals_the_direct_formula(adaptive):
    """Δf's first Linear runs on [PE(Δx), f_rep] through a LayerNorm; the module computes it without the
    concatenation. Compare with the literal formula."""
    torch.manual_seed(4)
    up = Upsample(12, 16, factor=3, global_dim=5 if adaptive else None).double()
    if adaptive:
        with torch.no_grad():
            up.delta_f[0].affine.weight.normal_()
            up.delta_f[0].affine.bias.normal_()
    batch = torch.tensor([0, 0, 1, 1, 1])
    g = torch.randn(2, 5, dtype=torch.float64)
    f = torch.randn(5, 12, dtype=torch.float64) * 2 + 0.5
    dx = torch.randn(15, 3, dtype=torch.float64) * 1e-3
    pe = positional_encoding(dx, up.frequencies)
    b_rep = batch.repeat_interleave(3)
    got = up._delta_f_hidden(pe, f, batch, b_rep, g if adaptive else None)
    h = torch.cat([pe, f.repeat_interleave(3, 0)], dim=1)
    ref = up.delta_f[1](up.delta_f[0](h, b_rep, g if adaptive else None))
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


def test_split_opacity_copies_compose_to_the_original():
    logits = torch.tensor([-30.0, -4.0, -0.5, 0.0, 1.5, 6.0, 20.0], dtype=torch.float64)
    for n in (1, 2, 3, 7):
        copies = torch.full_like(logits, n, dtype=torch.long)
        split = split_opacity_logits(logits, copies)
        assert torch.isfinite(split).all()
        composed = 1 - (1 - torch.sigmoid(split)) ** n  # n coincident copies at their centres
        torch.testing.assert_close(composed, torch.sigmoid(logits), rtol=1e-9, atol=1e-12)
        if n > 1:
            assert (split[1:] < logits[1:]).all()  # each copy is more transparent than the original
    x = torch.tensor([0.3, -2.0], requires_grad=True)
    split_opacity_logits(x, torch.tensor([4, 2])).sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad > 0).all()

"""The GenerativeDensifier: paper counts and parameter count, batching, gradients, determinism, bad inputs,
merge with the coarse Gaussians."""

import math

import pytest
import torch

from gdensify import Gaussians
from gdensify.densify import DensifierConfig, GenerativeDensifier, count_parameters, merge_with_coarse
from gdensify.io.weights import load_mapped
from gdensify.models.official import densifier_key


def _surface_points(n, seed=0, radius=0.35):
    """n points on a sphere shell snapped near the 64³ voxel centres of [-0.5, 0.5]³ (like selected coarse
    Gaussians: at most one per voxel, each moved within its cell)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack(torch.meshgrid(*[torch.arange(64)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centres = (idx + 0.5) / 64 - 0.5
    shell = centres[((centres.norm(dim=-1) - radius).abs() < 0.03)]
    pick = torch.randperm(len(shell), generator=g)[:n]
    assert len(pick) == n
    return shell[pick] + (torch.rand(n, 3, generator=g) - 0.5) / 64


def _tiny(**kw):
    return DensifierConfig.preset("tiny", **kw)


def test_paper_object_parameter_count_with_plain_layernorm():
    model = GenerativeDensifier(DensifierConfig.preset("paper_object", norm="layernorm"))
    n = count_parameters(model)
    assert abs(n - 7_946_555) / 7_946_555 < 0.01
    assert n == 7_946_555  # the shapes of the released decoder, exactly
    blocks = model.layers[0].blocks
    assert count_parameters(blocks[0]) == 1_025_760 and count_parameters(model.layers[1].blocks[0]) == 2_624_256
    assert count_parameters(model.layers[0].mask) == 66_049 and model.layers[1].mask is None
    assert blocks[0].attn.num_heads == 20 and model.layers[1].blocks[0].attn.num_heads == 32
    # the paper's global adaptive normalization adds one Linear(160 → C) per normalization
    assert count_parameters(GenerativeDensifier(DensifierConfig.preset("paper_object"))) > n


def test_paper_object_counts_12000_to_81600():
    """12,000 selected points of one object → 4,800 + 76,800 = 81,600 fine Gaussians (narrow channels for speed;
    the counts depend only on factors and ratios)."""
    cfg = DensifierConfig.preset("paper_object", in_channels=8, channels=(8, 8), mlp_ratio=1.0)
    assert cfg.fine_count(12_000) == 81_600 == DensifierConfig.preset("paper_object").fine_count(12_000)
    x = _surface_points(12_000)
    model = GenerativeDensifier(cfg).eval()
    with torch.no_grad():
        res = model(x, torch.randn(12_000, 8), torch.zeros(12_000, dtype=torch.long))
    assert len(res) == 81_600
    assert res.layer_counts() == [
        {"points_in": 12_000, "points_up": 24_000, "leaves": 4_800, "passed": 19_200},
        {"points_in": 19_200, "points_up": 76_800, "leaves": 76_800, "passed": 0}]
    assert int((res.layer == 0).sum()) == 4_800 and int((res.layer == 1).sum()) == 76_800
    assert res.mask_probs[0].shape == (24_000,)


def test_paper_object_full_width_small_selection():
    """The released decoder at full width: 300 points → 600 → 120 leaves + 480 → 1,920; 2,040 in total."""
    model = GenerativeDensifier(DensifierConfig.preset("paper_object")).eval()
    x = _surface_points(300, seed=3)
    with torch.no_grad():
        res = model(x, torch.randn(300, 160), torch.zeros(300, dtype=torch.long))
    assert len(res) == 2_040 and res.gaussians.sh.shape == (2_040, 4, 3)
    assert torch.isfinite(res.attributes).all()
    # children stay near their parents: |Δ| ≤ g0/2 + g1/2 per axis
    d = (res.gaussians.means - x[res.parent]).abs().max()
    assert float(d) <= 0.5 / 64 + 0.5 / 128 + 1e-6


def test_paper_scene_preset():
    cfg = DensifierConfig.preset("paper_scene")
    assert cfg.channels == (320, 256, 128) and cfg.up_factors == (2, 2, 2) and cfg.keep_ratios == (0.5, 0.8, 1.0)
    assert cfg.residual_attributes and cfg.head_before_split and cfg.mask == "softmax"
    assert cfg.fine_count(30_000) == 138_000
    model = GenerativeDensifier(cfg.replace(norm="layernorm"))
    assert [b.attn.num_heads for layer in model.layers for b in layer.blocks] == [40, 40, 32, 32, 16, 16]
    assert model.layers[0].head.num_outputs == 83
    small = GenerativeDensifier(cfg.replace(in_channels=16, channels=(16, 16, 8), mlp_ratio=1.0)).eval()
    x = torch.rand(100, 3)
    with torch.no_grad():
        res = small(x, torch.randn(100, 16), torch.zeros(100, dtype=torch.long))
    assert len(res) == cfg.fine_count(100) == 100 + 40 + 320
    assert res.layer_counts()[0]["leaves"] == 100


@pytest.mark.parametrize("variant", [{}, {"norm": "layernorm"},
                                     {"mask": "softmax", "head_before_split": True, "residual_attributes": True}])
def test_batch_of_two_equals_two_separate_calls(variant):
    torch.manual_seed(0)
    model = GenerativeDensifier(_tiny(**variant)).eval()
    xa, xb = _surface_points(90, seed=1), _surface_points(130, seed=2) * 0.5 + 0.2
    fa, fb = torch.randn(90, 32), torch.randn(130, 32)
    with torch.no_grad():
        joint = model(torch.cat([xa, xb]), torch.cat([fa, fb]),
                      torch.cat([torch.zeros(90), torch.ones(130)]).long())
        ra = model(xa, fa, torch.zeros(90, dtype=torch.long))
        rb = model(xb, fb, torch.zeros(130, dtype=torch.long))
    assert joint.counts.tolist() == [len(ra), len(rb)]
    torch.testing.assert_close(joint.attributes, torch.cat([ra.attributes, rb.attributes]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(joint.gaussians.means, torch.cat([ra.gaussians.means, rb.gaussians.means]))
    torch.testing.assert_close(joint.parent, torch.cat([ra.parent, rb.parent + 90]))


def test_interleaved_batch_and_empty_object():
    model = GenerativeDensifier(_tiny()).eval()
    x, f = _surface_points(60, seed=4), torch.randn(60, 32)
    batch = torch.tensor([0, 2] * 30)
    with torch.no_grad():
        res = model(x, f, batch, num_objects=3)
    assert res.counts[1] == 0 and res.counts[0] == res.counts[2] == _tiny().fine_count(30)
    assert bool((res.batch[1:] >= res.batch[:-1]).all())


@pytest.mark.parametrize("variant", [{}, {"norm": "layernorm"},
                                     {"mask": "softmax", "head_before_split": True, "residual_attributes": True}])
def test_every_parameter_gets_a_gradient(variant):
    torch.manual_seed(1)
    model = GenerativeDensifier(_tiny(**variant)).train()
    x = _surface_points(120, seed=5).requires_grad_(True)
    f = torch.randn(120, 32, requires_grad=True)
    res = model(x, f, torch.zeros(120, dtype=torch.long), generator=torch.Generator().manual_seed(0))
    g = res.gaussians
    loss = g.means.square().sum() + g.sh.square().mean() + g.opacity_logits.mean() + g.log_scales.mean() + \
        g.quats.square().mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing
    assert x.grad is not None and torch.any(x.grad != 0)  # positions are not detached
    assert f.grad is not None


def test_initial_attributes_start_the_residual_sum():
    torch.manual_seed(2)
    residual = {"mask": "softmax", "head_before_split": True, "residual_attributes": True}
    model = GenerativeDensifier(_tiny(**residual)).train()
    n, width = 80, model.layers[0].head.num_outputs
    x, f, b = _surface_points(n, seed=8), torch.randn(n, 32), torch.zeros(n, dtype=torch.long)
    initial = torch.randn(n, width, requires_grad=True)
    with torch.no_grad():
        plain = model(x, f, b, generator=torch.Generator().manual_seed(0))
    res = model(x, f, b, generator=torch.Generator().manual_seed(0), initial_attributes=initial)
    # the heads' corrections are the same; every leaf adds its ancestor's initial attributes
    torch.testing.assert_close(res.attributes, plain.attributes + initial[res.parent], rtol=1e-5, atol=1e-5)
    res.attributes.sum().backward()
    torch.testing.assert_close(initial.grad, torch.bincount(res.parent, minlength=n)[:, None].float().expand(n, width))
    model.zero_init_heads()
    with torch.no_grad():
        copies = model(x, f, b, generator=torch.Generator().manual_seed(0), initial_attributes=initial)
    assert torch.equal(copies.attributes, initial.detach()[copies.parent])  # every leaf is a copy of its parent

    with pytest.raises(ValueError, match=r"initial_attributes must have shape \(80, 20\)"):
        model(x, f, b, initial_attributes=torch.zeros(n, width - 1))
    with pytest.raises(ValueError, match="initial_attributes contain NaN"):
        model(x, f, b, initial_attributes=torch.full((n, width), float("nan")))
    with pytest.raises(ValueError, match="residual_attributes=True"):
        GenerativeDensifier(_tiny())(x, f, b, initial_attributes=torch.zeros(n, width))


def test_evaluation_is_deterministic_and_training_follows_the_generator():
    model = GenerativeDensifier(_tiny())
    x, f = _surface_points(150, seed=6), torch.randn(150, 32)
    b = torch.zeros(150, dtype=torch.long)
    model.eval()
    with torch.no_grad():
        r1, r2 = model(x, f, b), model(x, f, b)
    assert torch.equal(r1.attributes, r2.attributes) and torch.equal(r1.gaussians.means, r2.gaussians.means)
    model.train()
    with torch.no_grad():
        t1 = model(x, f, b, generator=torch.Generator().manual_seed(5))
        t2 = model(x, f, b, generator=torch.Generator().manual_seed(5))
        t3 = model(x, f, b, generator=torch.Generator().manual_seed(6))
    assert torch.equal(t1.attributes, t2.attributes)
    assert not torch.equal(t1.attributes, t3.attributes)


def test_float64_and_adaptive_norm_uses_the_object_feature():
    model = GenerativeDensifier(_tiny()).double().eval()
    with torch.no_grad():
        for layer in model.layers:
            for block in layer.blocks:
                block.norm1.affine.weight.normal_()
    x, f = _surface_points(50, seed=7).double(), torch.randn(50, 32, dtype=torch.float64)
    b = torch.zeros(50, dtype=torch.long)
    with torch.no_grad():
        r = model(x, f, b)
        # same points, other features' global mean → other output for every point
        r2 = model(torch.cat([x, x]), torch.cat([f, f + 1.0]), torch.cat([b, b + 1]))
    assert r.gaussians.dtype == torch.float64
    torch.testing.assert_close(r2.attributes[: len(r)], r.attributes)
    assert not torch.allclose(r2.attributes[len(r):], r.attributes)


def test_bad_inputs_give_clear_errors():
    model = GenerativeDensifier(_tiny())
    x, f, b = torch.rand(10, 3), torch.randn(10, 32), torch.zeros(10, dtype=torch.long)
    bad_x = x.clone()
    bad_x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(bad_x, f, b)
    with pytest.raises(ValueError, match="empty selection"):
        model(torch.zeros(0, 3), torch.zeros(0, 32), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"features must have shape \(10, 32\)"):
        model(x, torch.randn(10, 16), b)
    with pytest.raises(ValueError, match=r"features must have shape \(10, 32\)"):
        model(x, torch.randn(9, 32), b)
    with pytest.raises(ValueError, match=r"coords must have shape \(N, 3\)"):
        model(torch.rand(10, 2), f, b)
    with pytest.raises(ValueError, match=r"batch must have shape \(10,\)"):
        model(x, f, torch.zeros(9, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        model(x, f, torch.zeros(10))
    with pytest.raises(ValueError, match="num_objects"):
        model(x, f, b + 2, num_objects=2)
    with pytest.raises(ValueError, match="keep ratio"):
        DensifierConfig(keep_ratios=(0.8, 0.5))
    with pytest.raises(ValueError, match="num_blocks"):
        DensifierConfig(num_blocks=(2,))
    with pytest.raises(ValueError, match="unknown DensifierConfig preset"):
        DensifierConfig.preset("huge")


def test_config_dict_round_trip_and_overrides():
    from gdensify.config import ConfigError, apply_overrides, from_dict, to_dict

    cfg = DensifierConfig.preset("paper_scene")
    assert from_dict(DensifierConfig, to_dict(cfg)) == cfg
    assert DensifierConfig.preset("paper_scene", norm="layernorm") == cfg.replace(norm="layernorm")
    assert apply_overrides(cfg, ["keep_ratios=[0.6,0.8,1.0]"]).keep_ratios == (0.6, 0.8, 1.0)
    with pytest.raises(ConfigError, match="norm"):
        apply_overrides(cfg, ["norm=batchnorm"])


def test_merge_with_coarse():
    model = GenerativeDensifier(_tiny()).eval()
    n = 40
    coarse = Gaussians(torch.rand(n, 3), torch.randn(n, 4), torch.randn(n, 3), torch.randn(n),
                       torch.randn(n, 1, 3))
    coarse_batch = torch.tensor([0] * 25 + [1] * 15)
    selected = torch.tensor([1, 3, 5, 7, 26, 30])
    keep = torch.ones(n, dtype=torch.bool)
    keep[[0, 39]] = False  # e.g. invisible coarse Gaussians
    with torch.no_grad():
        res = model(coarse.means[selected], torch.randn(6, 32), coarse_batch[selected])
    merged, batch = merge_with_coarse(coarse, coarse_batch, selected, res, keep=keep)
    per_obj = [int((batch == b).sum()) for b in range(2)]
    assert per_obj == [int(res.counts[0]) + 25 - 4 - 1, int(res.counts[1]) + 15 - 2 - 1]
    assert merged.sh_degree == 1  # coarse SH zero-padded to the fine degree
    # per object: fine Gaussians first, then the retained coarse ones in their order
    first = merged.means[batch == 0]
    torch.testing.assert_close(first[: int(res.counts[0])], res.gaussians.means[res.batch == 0])
    rest_idx = [i for i in range(25) if i not in (0, 1, 3, 5, 7)]
    torch.testing.assert_close(first[int(res.counts[0]):], coarse.means[rest_idx])
    mask_sel = torch.zeros(n, dtype=torch.bool)
    mask_sel[selected] = True
    merged2, batch2 = merge_with_coarse(coarse, coarse_batch, mask_sel, res, keep=keep)
    assert torch.equal(merged2.means, merged.means) and torch.equal(batch2, batch)


def test_released_checkpoint_keys_map_onto_the_paper_object_decoder():
    model = GenerativeDensifier(DensifierConfig.preset("paper_object", norm="layernorm"))
    ours = model.state_dict()
    released = {}
    for key, value in ours.items():  # our names → the released names
        parts = key.split(".")
        if parts[2] == "blocks":
            name = ".".join(["net", "dec", parts[1], f"block{parts[3]}", *parts[4:]])
        else:
            name = ".".join(["net", "dec", *parts[1:]])
        released[name] = torch.randn_like(value) if value.is_floating_point() else value
    assert len(released) == 82
    assert released["net.dec.0.block1.cpe.0.weight"].shape == (160, 3, 3, 3, 160)
    assert released["net.dec.1.up.delta_f.1.weight"].shape == (256, 346)
    assert released["net.dec.0.mask.net.2.weight"].shape == (1, 256)
    released["net.img_encoder.model.cls_token"] = torch.zeros(1, 1, 768)  # ignored: not the decoder
    fresh = GenerativeDensifier(DensifierConfig.preset("paper_object", norm="layernorm"))
    load_mapped(fresh, released, lambda k: densifier_key(k[len("net."):]) if k.startswith("net.dec.") else None)
    assert torch.equal(fresh.layers[1].blocks[0].attn.qkv.weight, released["net.dec.1.block0.attn.qkv.weight"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_is_deterministic():
    model = GenerativeDensifier(_tiny()).eval()
    x, f = _surface_points(200, seed=8), torch.randn(200, 32)
    b = torch.zeros(200, dtype=torch.long)
    with torch.no_grad():
        ref = model(x, f, b)
        gpu = model.cuda()
        r1 = gpu(x.cuda(), f.cuda(), b.cuda())
        r2 = gpu(x.cuda(), f.cuda(), b.cuda())
    assert torch.equal(r1.attributes, r2.attributes)
    torch.testing.assert_close(r1.attributes.cpu(), ref.attributes, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("variant", [{}, {"mask": "softmax", "head_before_split": True, "residual_attributes": True}])
def test_row_chunking_gives_the_same_result(variant):
    x, f = _surface_points(100, seed=9), torch.randn(100, 32)
    b = torch.tensor([0] * 60 + [1] * 40)
    plain = GenerativeDensifier(_tiny(**variant)).eval()
    chunked = GenerativeDensifier(_tiny(row_chunk=50, **variant)).eval()
    chunked.load_state_dict(plain.state_dict())
    with torch.no_grad():
        r1, r2 = plain(x, f, b), chunked(x, f, b)
    torch.testing.assert_close(r1.attributes, r2.attributes, rtol=1e-5, atol=1e-6)
    assert torch.equal(r1.parent, r2.parent)

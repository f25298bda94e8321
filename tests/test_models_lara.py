"""LaRa-style backbone (`gdensify.models.lara`) and the ViT image encoder (`gdensify.models.vit`)."""

import dataclasses
import math
import time

import pytest
import torch
import torch.nn.functional as F

from gdensify import Cameras, Gaussians
from gdensify.cameras import look_at
from gdensify.models import (
    LaRaBackbone, LaRaConfig, ViTConfig, VisionTransformer, load_official_state_dict, load_vit_weights, visible_masks,
)
from gdensify.cameras import stack_cameras
from gdensify.io.weights import WeightLoadingError
from gdensify.models.lara import (
    CrossAttention, ModLN, VolumeTransformer, _conv3x3x3, _to_groups, _token_view, dense_grid, plucker_sh,
    rsh_cart_3, token_plucker,
)
from gdensify.models.vit import resample_pos_embed
from gdensify.sh import sh_basis

SIZE = 128


def ring_cameras(views: int = 4, radius: float = 2.0, size: int = SIZE, fov: float = 0.6, phase: float = 0.0,
                 height: float = 0.5) -> Cameras:
    ang = torch.arange(views, dtype=torch.float32) * 2 * math.pi / views + phase
    eyes = torch.stack([radius * torch.cos(ang), radius * torch.sin(ang), torch.full((views,), height)], -1)
    return Cameras.from_fov(look_at(eyes, torch.zeros(views, 3)), fov, size, size)


MICRO = 32  # image size of the micro config used for behavioural tests (the presets are tested separately)


def micro_config() -> LaRaConfig:
    """Every code path of the backbone at toy size: 32² images, 4² tokens, 4³ feature volume, 8³ × 16 query
    volume with alternating group counts (4, 2), 16³ Gaussians, the official half-pixel sampling shift."""
    return LaRaConfig(
        encoder=ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2), image_size=32,
        view_embed_dim=8, feat_volume_size=4, volume_size=8, volume_dim=16, volume_layers=2, volume_heads=2,
        groups=(4, 2), gaussian_feature_dim=8, fine_heads=2, sample_pixel_shift=0.5,
    )


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return LaRaBackbone(LaRaConfig.preset("tiny")).eval()


@pytest.fixture(scope="module")
def micro():
    torch.manual_seed(0)
    return LaRaBackbone(micro_config()).eval()


def fake_renders(coarse, images):
    """Differentiable stand-ins for the coarse renders of the input views (the rasterizer is not under test)."""
    b = images.shape[0]
    tint = torch.sigmoid(coarse.sh.mean(dim=(1, 2)))[:, None, None, None, :]
    rgb = images * tint
    alpha = torch.sigmoid(coarse.opacity_logits.mean(1)).reshape(b, 1, 1, 1, 1).expand(*images.shape[:4], 1)
    depth = (2.0 + coarse.means.norm(dim=-1).mean(1)).reshape(b, 1, 1, 1, 1).expand(*images.shape[:4], 1)
    return rgb, alpha, depth


# ------------------------------------------------------------------------------------------- parameter counts
def test_paper_parameter_counts_match_spec():
    with torch.device("meta"):
        model = LaRaBackbone(LaRaConfig.preset("paper"))
    counts = model.parameter_counts()
    # gd_official_spec.md §6: exact numbers; DINO "about 85.8 M"
    assert counts["volume_transformer"] == 39_448_144
    assert counts["lara_heads"] == 42_995
    assert counts["dir_norm"] == 52_224
    assert counts["view_embed"] == 128
    assert abs(counts["image_encoder"] - 85.8e6) / 85.8e6 < 0.005
    assert counts["image_encoder"] == 85_798_656  # timm vit_base_patch16_224 without head
    assert abs(counts["total"] - 125.34e6) / 125.34e6 < 0.005  # backbone part of the ~133.3 M model


def test_paper_state_dict_keys_and_shapes_match_official_checkpoint():
    with torch.device("meta"):
        model = LaRaBackbone(LaRaConfig.preset("paper"))
    sd = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {
        "view_embed": (1, 4, 32, 1, 1, 1), "dir_norm.norm.weight": (768,), "dir_norm.norm.bias": (768,),
        "dir_norm.mlp.1.weight": (1536, 32), "dir_norm.mlp.1.bias": (1536,),
        "vol_decoder.pos_embed": (1, 256, 32, 32, 32), "vol_decoder.norm.weight": (256,),
        "vol_decoder.norm.bias": (256,), "vol_decoder.deconv.weight": (256, 80, 2, 2, 2),
        "vol_decoder.deconv.bias": (80,),
        "decoder.mlp_coarse.0.weight": (80, 80), "decoder.mlp_coarse.0.bias": (80,),
        "decoder.mlp_coarse.2.weight": (80, 80), "decoder.mlp_coarse.2.bias": (80,),
        "decoder.mlp_coarse.4.weight": (23, 80), "decoder.mlp_coarse.4.bias": (23,),
        "decoder.norm.weight": (80,), "decoder.norm.bias": (80,),
        "decoder.cross_att.q_proj_weight": (80, 80), "decoder.cross_att.k_proj_weight": (80, 8),
        "decoder.cross_att.v_proj_weight": (80, 8), "decoder.cross_att.out_proj.weight": (80, 80),
        "decoder.mlp_fine.0.weight": (80, 80), "decoder.mlp_fine.0.bias": (80,),
        "decoder.mlp_fine.2.weight": (92, 80), "decoder.mlp_fine.2.bias": (92,),
    }
    for i in range(12):
        p = f"vol_decoder.layers.{i}."
        for n in ("norm1", "norm2", "norm3"):
            expected[p + n + ".weight"] = expected[p + n + ".bias"] = (256,)
        expected.update({
            p + "cross_attn.q_proj_weight": (256, 256), p + "cross_attn.k_proj_weight": (256, 800),
            p + "cross_attn.v_proj_weight": (256, 800), p + "cross_attn.out_proj.weight": (256, 256),
            p + "cnn.weight": (256, 256, 3, 3, 3), p + "mlp.0.weight": (512, 256), p + "mlp.0.bias": (512,),
            p + "mlp.3.weight": (256, 512), p + "mlp.3.bias": (256,),
        })
    vit = {"img_encoder.model.cls_token": (1, 1, 768), "img_encoder.model.pos_embed": (1, 197, 768),
           "img_encoder.model.patch_embed.proj.weight": (768, 3, 16, 16),
           "img_encoder.model.patch_embed.proj.bias": (768,),
           "img_encoder.model.norm.weight": (768,), "img_encoder.model.norm.bias": (768,)}
    for i in range(12):
        p = f"img_encoder.model.blocks.{i}."
        vit.update({p + "norm1.weight": (768,), p + "norm1.bias": (768,), p + "norm2.weight": (768,),
                    p + "norm2.bias": (768,), p + "attn.qkv.weight": (2304, 768), p + "attn.qkv.bias": (2304,),
                    p + "attn.proj.weight": (768, 768), p + "attn.proj.bias": (768,),
                    p + "mlp.fc1.weight": (3072, 768), p + "mlp.fc1.bias": (3072,),
                    p + "mlp.fc2.weight": (768, 3072), p + "mlp.fc2.bias": (768,)})
    assert len(expected) == 206  # "outside DINO the Network has 290 entries" − 82 decoder − 2 buffers
    assert sd == {**expected, **vit}


def test_paper_derived_constants():
    cfg = LaRaConfig.preset("paper")
    assert cfg.num_gaussians == 262_144 and cfg.feature_dim == 160 and cfg.cond_dim == 32
    assert cfg.offset_bound == pytest.approx(1 / 128)
    assert cfg.log_scale_shift == pytest.approx(math.log(0.03125 / 6), abs=1e-12)
    assert cfg.log_scale_shift == pytest.approx(-5.2575, abs=1e-4)
    assert cfg.fine_log_scale_shift == pytest.approx(-7.3369, abs=1e-4)
    centres = dense_grid(cfg.gaussian_grid_size, 0.5).reshape(-1, 3)
    assert centres[0].tolist() == pytest.approx([-0.4921875] * 3)
    assert centres[1].tolist() == pytest.approx([-0.4921875, -0.4921875, -0.4765625])  # z fastest, x slowest


def test_config_round_trip_and_overrides():
    from gdensify.config import apply_overrides, from_dict, to_dict

    for cfg in (LaRaConfig.preset("paper"), LaRaConfig.preset("tiny")):
        assert from_dict(LaRaConfig, to_dict(cfg)) == cfg
    cfg = apply_overrides(LaRaConfig.preset("tiny"), ["volume_dim=96", "encoder.depth=2", "groups=[8,4]"])
    assert cfg.volume_dim == 96 and cfg.encoder.depth == 2 and cfg.groups == (8, 4)
    with pytest.raises(ValueError, match="divide"):
        apply_overrides(LaRaConfig.preset("tiny"), ["groups=[3]"])


# ------------------------------------------------------------------------------------------- building blocks
def test_rsh_cart_3_matches_library_sh_on_unit_vectors():
    d = F.normalize(torch.randn(50, 3, dtype=torch.float64), dim=-1)
    assert torch.allclose(rsh_cart_3(d), sh_basis(3, d), atol=1e-12)
    m = torch.randn(5, 3, dtype=torch.float64) * 3  # moments are not unit: the polynomial form is kept as is
    x, y, z = m.unbind(-1)
    assert torch.allclose(rsh_cart_3(m)[:, 6], 0.94617469575756 * z * z - 0.31539156525252)
    assert plucker_sh(torch.randn(7, 6)).shape == (7, 32)


def test_token_plucker_matches_cameras_plucker():
    cams = ring_cameras(3)
    ours = token_plucker(cams.world_to_camera, cams.intrinsics, 16, 16, 8)
    ref = cams.resized(16, 16).plucker()
    assert torch.allclose(ours, ref, atol=1e-5)


def test_modln_formula():
    mod = ModLN(12, 6, eps=1e-6)
    x, c = torch.randn(4, 5, 12), torch.randn(4, 5, 6)
    shift, scale = mod.mlp[1](F.silu(c)).chunk(2, dim=-1)
    ref = F.layer_norm(x, (12,), mod.norm.weight, mod.norm.bias, 1e-6) * (1 + scale) + shift
    assert torch.allclose(mod(x, c), ref, atol=1e-6)


def test_cross_attention_equals_torch_multihead_attention():
    torch.manual_seed(0)
    ours = CrossAttention(32, 8, 20, 20)
    ref = torch.nn.MultiheadAttention(32, 8, kdim=20, vdim=20, bias=False, batch_first=True)
    ref.load_state_dict(ours.state_dict(), strict=True)  # same parameter names and shapes
    q, kv = torch.randn(6, 5, 32), torch.randn(6, 4, 20)
    assert torch.allclose(ours(q, kv), ref(q, kv, kv, need_weights=False)[0], atol=1e-5)


def test_cross_attention_attend_one_equals_forward():
    torch.manual_seed(0)
    att = CrossAttention(32, 4, 8, 8)
    q, ctx = torch.randn(50, 32, requires_grad=True), torch.rand(50, 4, 8)
    ref = att(q[:, None], ctx)[:, 0]
    out = att.attend_one(q, ctx)
    assert (out - ref).abs().max() <= 1e-6 * ref.abs().max()
    gq, gw = torch.autograd.grad(out.square().sum(), [q, att.k_proj_weight])
    rq, rw = torch.autograd.grad(ref.square().sum(), [q, att.k_proj_weight])
    assert torch.allclose(gq, rq, atol=1e-5) and torch.allclose(gw, rw, atol=1e-5)


def test_grouping_is_a_local_view():
    x = torch.randn(2, 3, 8, 8, 8)
    view = _token_view(x, 4)
    assert view.shape == (2, 4, 4, 4, 2, 2, 2, 3) and view.data_ptr() == x.data_ptr()
    groups = _to_groups(x, 4)
    assert groups.shape == (2 * 64, 8, 3)
    # group (b=1, i=1, j=2, k=3) holds exactly the 2³ block x[1, :, 2:4, 4:6, 6:8], x slowest
    g = groups[1 * 64 + 1 * 16 + 2 * 4 + 3]
    assert torch.equal(g, x[1, :, 2:4, 4:6, 6:8].reshape(3, -1).T)


def _reference_volume_transformer(vt: VolumeTransformer, feat_vol: torch.Tensor) -> torch.Tensor:
    """The volume transformer written plainly (as before the layout change): every block regroups a
    (B, C, D, H, W) volume into tokens and back."""
    b, v, c, f = feat_vol.shape[:4]
    x = vt.pos_embed.expand(b, -1, -1, -1, -1)
    for i, layer in enumerate(vt.layers):
        g = vt.groups[i % len(vt.groups)]
        s, d = f // g, x.shape[2]
        cond = feat_vol.reshape(b, v, c, g, s, g, s, g, s).permute(0, 3, 5, 7, 1, 4, 6, 8, 2)
        cond = cond.reshape(b * g ** 3, v * s ** 3, c)
        p = _to_groups(x, g)
        p = p + layer.cross_attn(layer.norm1(p), cond)
        p = p + layer.mlp(layer.norm2(p))
        q = d // g
        p = layer.norm3(p).reshape(b, g, g, g, q, q, q, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        x = p.reshape(b, -1, d, d, d)
        x = x + _conv3x3x3(x, layer.cnn.weight)
    x = vt.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
    return vt.deconv(x).permute(0, 2, 3, 4, 1)


def _volume_transformer(layers: int = 3) -> VolumeTransformer:
    torch.manual_seed(0)
    vt = VolumeTransformer(16, 20, 8, 8, layers, 2, (4, 2), 2.0)
    with torch.no_grad():  # non-trivial norms and biases, so that every parameter matters
        for prm in vt.parameters():
            prm.add_(0.1 * torch.randn_like(prm))
    return vt.eval()


def test_volume_transformer_layouts_match_plain_reference_in_float32():
    vt = _volume_transformer()
    feat = torch.randn(2, 3, 20, 4, 4, 4)
    with torch.no_grad():
        ref = _reference_volume_transformer(vt, feat)
        out = vt(feat)
        with torch.inference_mode():
            out_inf = vt(feat)
    assert out.shape == (2, 16, 16, 16, 8) and out.is_contiguous()
    scale = ref.abs().max()
    assert (out - ref).abs().max() <= 1e-6 * scale
    assert (out_inf - ref).abs().max() <= 1e-6 * scale
    # under autograd the strided writes become copies of the same values: same outputs and gradients
    feat.requires_grad_(True)
    grads_ref = torch.autograd.grad(_reference_volume_transformer(vt, feat).square().sum(),
                                    [feat, vt.pos_embed, vt.layers[0].cnn.weight])
    grads = torch.autograd.grad(vt(feat).square().sum(), [feat, vt.pos_embed, vt.layers[0].cnn.weight])
    for a, b in zip(grads, grads_ref):
        assert (a - b).abs().max() <= 1e-6 * b.abs().max()


def _copies(fn) -> list:
    """`aten::copy_` calls made by fn(), except dtype casts (`_to_copy`) and bias broadcasts of `addmm`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    out = []
    for e in prof.events():
        if e.name == "aten::copy_":
            parent = e.cpu_parent.name if e.cpu_parent is not None else ""
            if parent not in ("aten::_to_copy", "aten::addmm"):
                out.append(e.input_shapes[0])
    return out


@pytest.mark.parametrize("autocast", [False, True])
def test_volume_transformer_blocks_copy_no_volume(autocast):
    """Layout copies per forward do not grow with the number of blocks, except float32's convolution input
    (one per block, kept for bit-for-bit float32 results)."""
    feat = torch.randn(1, 3, 20, 4, 4, 4)
    counts = []
    for layers in (2, 4):
        vt = _volume_transformer(layers)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            vt(feat)
            copies = _copies(lambda: vt(feat))
        weight_copies = [s for s in copies if len(s) == 5 and s[2:] in ([3, 3, 3], [2, 2, 2]) and s[0] != 1]
        counts.append(len(copies) - len(weight_copies))
    per_block = (counts[1] - counts[0]) // 2
    assert per_block == (0 if autocast else 1), counts
    if autocast:  # the query volume, and the feature volume once per group count (4 and 2)
        assert counts[0] == 3, counts


def test_volume_transformer_bf16_autocast_stays_close():
    vt = _volume_transformer()
    feat = torch.randn(1, 3, 20, 4, 4, 4)
    with torch.inference_mode():
        ref = vt(feat)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = vt(feat)
    assert out.dtype == torch.bfloat16
    assert ((out.float() - ref).norm() / ref.norm()) < 2e-2
    # with autograd on (mixed-precision training) the residual stream stays float32: a different, closer result
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained = vt(feat).detach()
    assert not torch.equal(trained, out)
    assert (trained.float() - ref).norm() < (out.float() - ref).norm()


# ------------------------------------------------------------------------------------------- tiny forward
def test_tiny_forward_shapes_and_coarse_parameterisation(tiny):
    cfg = tiny.config
    images = torch.rand(1, 4, SIZE, SIZE, 3)
    with torch.no_grad():
        out = tiny.encode(images, [ring_cameras()])
    n = cfg.num_gaussians
    assert n == 32 ** 3
    assert out.means.shape == (1, n, 3) and out.quats.shape == (1, n, 4) and out.log_scales.shape == (1, n, 3)
    assert out.opacity_logits.shape == (1, n) and out.sh.shape == (1, n, 4, 3)
    assert out.voxel_features.shape == (1, n, cfg.gaussian_feature_dim)
    for t in (out.means, out.quats, out.log_scales, out.opacity_logits, out.sh, out.voxel_features):
        assert torch.isfinite(t).all() and t.dtype == torch.float32
    g = out.gaussians(0)
    assert isinstance(g, Gaussians) and len(g) == n and g.sh_degree == 1
    g.validate()
    centres = dense_grid(cfg.gaussian_grid_size, 0.5).reshape(-1, 3)
    assert (out.means[0] - centres).abs().max() <= cfg.offset_bound + 1e-6  # each mean stays in its cell
    assert out.means.abs().max() < 0.5


def test_coarse_head_defaults_at_zero_output():
    model = LaRaBackbone(micro_config()).eval()  # 16³ Gaussians, cell 1/16
    last = model.decoder.mlp_coarse[4]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    with torch.no_grad():
        out = model.encode(torch.rand(1, 2, MICRO, MICRO, 3), ring_cameras(2, size=MICRO))
    assert torch.allclose(out.means[0], dense_grid(16, 0.5).reshape(-1, 3), atol=1e-7)
    assert torch.allclose(torch.sigmoid(out.opacity_logits), torch.tensor(0.10164), atol=1e-4)
    assert torch.allclose(out.log_scales, torch.tensor(math.log(1 / 16 / 3)), atol=1e-6)
    tiny = LaRaConfig.preset("tiny")
    assert tiny.num_gaussians == 32 ** 3 and tiny.log_scale_shift == pytest.approx(math.log(1 / 96))


def test_camera_forms_and_resolution_rescaling(micro):
    images = torch.rand(2, 3, MICRO, MICRO, 3)
    cams = [ring_cameras(3, size=MICRO), ring_cameras(3, phase=0.4, size=MICRO)]
    with torch.no_grad():
        a = micro.encode(images, cams)
        b = micro.encode(images, Cameras.cat(cams))  # one Cameras of B·V views, object-major
        c = micro.encode(images, [cams[0].resized(512, 512), cams[1].resized(256, 256)])  # intrinsics rescaled
    assert torch.equal(a.means, b.means)
    assert torch.allclose(a.means, c.means, atol=1e-5) and torch.allclose(a.sh, c.sh, atol=1e-4)
    with pytest.raises(ValueError, match="views"):
        micro.encode(torch.rand(1, 5, MICRO, MICRO, 3), ring_cameras(5, size=MICRO))
    with pytest.raises(ValueError, match="cameras"):
        micro.encode(images, ring_cameras(3, size=MICRO))
    _, k = stack_cameras([ring_cameras(2, size=256)], 1, 2, SIZE, SIZE)
    assert torch.allclose(k[0], ring_cameras(2).intrinsics)


def test_batch_of_two_equals_two_separate_calls(micro):
    tiny = micro
    torch.manual_seed(1)
    images = torch.rand(2, 4, MICRO, MICRO, 3)
    cams = [ring_cameras(size=MICRO), ring_cameras(phase=0.7, radius=2.3, size=MICRO)]
    with torch.no_grad():
        both = tiny.encode(images, cams)
        ones = [tiny.encode(images[i:i + 1], [cams[i]]) for i in range(2)]
        rgb, alpha, depth = fake_renders(both, images)
        masks = visible_masks(both, threshold=0.1)
        assert 0 < masks.sum() < masks.numel()
        ref_both = tiny.refine(both, images, rgb, alpha, depth, masks)
        ref_ones = [tiny.refine(ones[i], images[i:i + 1], rgb[i:i + 1], alpha[i:i + 1], depth[i:i + 1],
                                masks[i:i + 1])[0] for i in range(2)]
    for i in range(2):
        for name in ("means", "quats", "log_scales", "opacity_logits", "sh", "voxel_features"):
            assert torch.allclose(getattr(both, name)[i], getattr(ones[i], name)[0], atol=2e-5, rtol=1e-4), name
        assert torch.equal(ref_both[i].index, ref_ones[i].index)
        assert torch.allclose(ref_both[i].features, ref_ones[i].features, atol=2e-5, rtol=1e-4)
        assert torch.allclose(ref_both[i].gaussians.sh, ref_ones[i].gaussians.sh, atol=2e-5, rtol=1e-4)


def test_refine_outputs(micro):
    tiny = micro
    images = torch.rand(2, 4, MICRO, MICRO, 3)
    with torch.no_grad():
        coarse = tiny.encode(images, [ring_cameras(size=MICRO), ring_cameras(phase=0.3, size=MICRO)])
        rgb, alpha, depth = fake_renders(coarse, images)
        masks = torch.zeros(2, tiny.num_gaussians, dtype=torch.bool)
        masks[0, ::7] = True
        masks[1, 100:500] = True
        refined = tiny.refine(coarse, images, rgb, alpha[..., 0], depth, masks)  # (B,V,H,W) alpha accepted
        everything = tiny.refine(coarse, images, rgb, alpha, depth)
    assert len(refined) == 2 and len(everything[0].index) == tiny.num_gaussians
    for i, r in enumerate(refined):
        m = int(masks[i].sum())
        assert torch.equal(r.index, masks[i].nonzero()[:, 0])
        assert r.features.shape == (m, tiny.feature_dim) and len(r.gaussians) == m
        assert torch.equal(r.features[:, tiny.config.gaussian_feature_dim:], coarse.voxel_features[i, r.index])
        assert torch.allclose(r.gaussians.sh, coarse.sh[i, r.index] + r.sh_residual)
        assert torch.equal(r.gaussians.means, coarse.means[i, r.index])
        assert torch.equal(r.gaussians.opacity_logits, coarse.opacity_logits[i, r.index])
        assert torch.isfinite(r.features).all()
        # per-Gaussian independence: the visible subset's results equal those of the full set
        assert torch.allclose(r.features, everything[i].features[r.index], atol=1e-5)
    with pytest.raises(ValueError, match="depth"):
        tiny.refine(coarse, images, rgb, alpha, depth[:, :, :16])


def _points_at_pixels(cams: Cameras, pixels: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    """World points that camera 0 sees at `pixels` (continuous coordinates) and camera depth `depths`."""
    k, c2w = cams.intrinsics[0], torch.linalg.inv(cams.world_to_camera[0])
    cam = torch.cat([(pixels - k[:2, 2]) / k[[0, 1], [0, 1]] * depths[:, None], depths[:, None]], -1)
    return cam @ c2w[:3, :3].T + c2w[:3, 3]


def test_point_features_sample_pixels_exactly(tiny, micro):
    """A Gaussian projecting onto a pixel centre reads that pixel's values (no half-pixel shift in `tiny`)."""
    cams = ring_cameras(2)
    pixels = torch.tensor([[10.5, 20.5], [64.5, 64.5], [100.5, 3.5]])
    depths = torch.tensor([1.7, 2.0, 2.2])
    points = _points_at_pixels(cams, pixels, depths)
    images = torch.rand(2, SIZE, SIZE, 3)
    rgb, alpha, depth = torch.rand(2, SIZE, SIZE, 3), torch.rand(2, SIZE, SIZE, 1), torch.rand(2, SIZE, SIZE, 1) + 1
    pf = tiny.point_features(points, images, rgb, alpha, depth, cams.world_to_camera, cams.intrinsics)
    assert pf.shape == (3, 2, 8)
    for j, (u, v) in enumerate(pixels.long().tolist()):
        expect = torch.cat([images[0, v, u], rgb[0, v, u], alpha[0, v, u], (depth[0, v, u] - depths[j]).abs()])
        assert torch.allclose(pf[j, 0], expect, atol=1e-5)
    # the official +0.5 px quirk (paper preset, and `micro`) reads the 2×2 average towards +u, +v instead
    cams = ring_cameras(1, size=MICRO)
    points = _points_at_pixels(cams, torch.tensor([[10.5, 20.5]]), torch.tensor([2.0]))
    img = torch.rand(1, MICRO, MICRO, 3)
    pf = micro.point_features(points, img, img, img[..., :1], img[..., :1], cams.world_to_camera, cams.intrinsics)
    assert torch.allclose(pf[0, 0, :3], img[0, 20:22, 10:12].mean((0, 1)), atol=1e-5)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = LaRaBackbone(micro_config()).train()
    images = torch.rand(2, 4, MICRO, MICRO, 3)
    coarse = model.encode(images, [ring_cameras(size=MICRO), ring_cameras(phase=0.5, size=MICRO)])
    gen = torch.Generator().manual_seed(0)
    w = {n: torch.randn(getattr(coarse, n).shape, generator=gen)
         for n in ("means", "quats", "log_scales", "opacity_logits", "sh")}
    loss_coarse = sum((getattr(coarse, n) * w[n]).sum() for n in w)
    loss_coarse.backward(retain_graph=True)
    no_grad = sorted(n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0)
    # a loss on the coarse Gaussians reaches everything except the refinement head
    assert no_grad == ["decoder.cross_att.k_proj_weight", "decoder.cross_att.out_proj.weight",
                       "decoder.cross_att.q_proj_weight", "decoder.cross_att.v_proj_weight",
                       "decoder.mlp_fine.0.bias", "decoder.mlp_fine.0.weight", "decoder.mlp_fine.2.bias",
                       "decoder.mlp_fine.2.weight", "decoder.norm.bias", "decoder.norm.weight"]
    model.zero_grad()
    rgb, alpha, depth = fake_renders(coarse, images)
    refined = model.refine(coarse, images, rgb, alpha, depth, visible_masks(coarse, threshold=0.1))
    loss = loss_coarse + sum((r.features ** 2).mean() + r.gaussians.sh.sum() for r in refined)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_visible_masks_rules():
    logits = torch.full((3, 10_000), -10.0)
    logits[1, :6000] = 0.0  # 60 % visible
    logits[2, :5] = 0.0  # 0.05 % visible: random extras are added (p = 0.2)
    gen = torch.Generator().manual_seed(0)
    ev = visible_masks(logits, generator=gen)
    assert ev[0].float().mean() == pytest.approx(0.2, abs=0.03)  # nothing visible → random 20 %
    assert torch.equal(ev[1], logits[1] > -5)  # evaluation keeps every visible one
    assert ev[2, :5].all() and ev[2].float().mean() == pytest.approx(0.2, abs=0.03)
    tr = visible_masks(logits, training=True, generator=gen)
    assert not tr[1, 6000:].any() and tr[1, :6000].float().mean() == pytest.approx(0.5, abs=0.05)
    a = visible_masks(logits, training=True, generator=torch.Generator().manual_seed(3))
    b = visible_masks(logits, training=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_official_state_dict_round_trip(micro):
    """A GD Lightning state dict (`net.` prefix, densifier keys, grid buffers) loads the backbone strictly."""
    state = {"net." + k: v.clone() for k, v in micro.state_dict().items()}
    state["net.dec.0.block0.attn.qkv.weight"] = torch.zeros(3, 3)
    state["net.volume_grid"] = torch.zeros(4, 4, 4, 3)
    state["net.group_centers"] = torch.zeros(1, 16 ** 3, 3)
    fresh = LaRaBackbone(micro_config()).eval()
    load_official_state_dict(fresh, state)
    images, cams = torch.rand(1, 2, MICRO, MICRO, 3), ring_cameras(2, size=MICRO)
    with torch.no_grad():
        assert torch.equal(fresh.encode(images, cams).sh, micro.encode(images, cams).sh)
    del state["net.view_embed"]
    with pytest.raises(WeightLoadingError, match="view_embed"):
        load_official_state_dict(fresh, state)


def test_tiny_forward_is_fast(tiny):
    """1 object × 4 views at 128²: measured as single-thread CPU time so that a loaded machine does not fail it."""
    model = tiny
    images, cams = torch.rand(1, 4, SIZE, SIZE, 3), [ring_cameras()]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            model.encode(images, cams)
            best = math.inf
            for _ in range(3):
                t = time.process_time()
                model.encode(images, cams)
                best = min(best, time.process_time() - t)
    finally:
        torch.set_num_threads(threads)
    assert best < 1.0, f"tiny forward took {best:.3f} s of CPU time"


# ------------------------------------------------------------------------------------------- ViT
def timm_vit_keys(depth: int) -> set[str]:
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight",
            "norm.bias"}
    for i in range(depth):
        for sub in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"blocks.{i}.{sub}.weight", f"blocks.{i}.{sub}.bias"}
    return keys


def test_vit_uses_timm_key_names_and_shapes():
    with torch.device("meta"):
        vit = VisionTransformer(ViTConfig.preset("paper"))
    sd = vit.state_dict()
    assert set(sd) == timm_vit_keys(12)
    assert sd["pos_embed"].shape == (1, 197, 768) and sd["blocks.3.attn.qkv.weight"].shape == (2304, 768)
    assert sum(p.numel() for p in vit.parameters()) == 85_798_656


def test_vit_weight_loading_round_trip(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    cfg = ViTConfig.preset("tiny")
    src = VisionTransformer(cfg).eval()
    state = {k: v.clone() for k, v in src.state_dict().items()}
    assert set(state) == timm_vit_keys(cfg.depth)
    x = torch.randn(2, 3, 64, 96)

    save_file(state, str(tmp_path / "vit.safetensors"))
    a = load_vit_weights(VisionTransformer(cfg), tmp_path / "vit.safetensors").eval()
    torch.save({"state_dict": {"net.img_encoder.model." + k: v for k, v in state.items()}, "epoch": 3},
               tmp_path / "gd.ckpt")
    b = load_vit_weights(VisionTransformer(cfg), tmp_path / "gd.ckpt", prefix="net.img_encoder.model.").eval()
    with torch.no_grad():
        ref = src(x)
        assert torch.equal(a(x), ref) and torch.equal(b(x), ref)
    assert ref.shape == (2, cfg.embed_dim, 8, 12)

    # through the backbone config
    bb = LaRaBackbone(dataclasses.replace(micro_config(), encoder=cfg, image_size=128,
                                          encoder_weights=str(tmp_path / "vit.safetensors")))
    assert torch.equal(bb.img_encoder.model.pos_embed, state["pos_embed"])

    fresh = VisionTransformer(cfg)
    bad = dict(state)
    del bad["blocks.1.mlp.fc2.weight"]
    bad["head.weight"] = torch.zeros(10, cfg.embed_dim)
    with pytest.raises(WeightLoadingError) as err:
        load_vit_weights(fresh, bad)
    assert "missing keys (1 of 54 model tensors): ['blocks.1.mlp.fc2.weight']" in str(err.value)
    assert "unexpected keys (1): ['head.weight']" in str(err.value)
    bad["blocks.1.mlp.fc2.weight"] = torch.zeros(3, 3)
    with pytest.raises(WeightLoadingError, match="shape mismatches.*blocks.1.mlp.fc2.weight"):
        load_vit_weights(fresh, bad, ignore_prefixes=("head.",))
    bad["blocks.1.mlp.fc2.weight"] = state["blocks.1.mlp.fc2.weight"]
    load_vit_weights(fresh, bad, ignore_prefixes=("head.",))  # a classifier head can be skipped explicitly
    with pytest.raises(WeightLoadingError, match="prefix"):
        load_vit_weights(fresh, state, prefix="model.")
    with pytest.raises(FileNotFoundError):
        load_vit_weights(fresh, tmp_path / "nope.safetensors")


def test_vit_loading_resamples_pos_embed_of_another_grid():
    src = VisionTransformer(ViTConfig(img_size=64, patch_size=8, embed_dim=32, depth=1, num_heads=2))
    dst = VisionTransformer(ViTConfig(img_size=128, patch_size=8, embed_dim=32, depth=1, num_heads=2))
    load_vit_weights(dst, src.state_dict())
    assert dst.pos_embed.shape == (1, 257, 32)
    assert torch.equal(dst.pos_embed[:, :1], src.pos_embed[:, :1])
    assert torch.allclose(dst.pos_embed, resample_pos_embed(src.pos_embed.detach(), (16, 16)))


def test_pos_embed_interpolation():
    pe = torch.randn(1, 1 + 14 * 14, 24)
    out = resample_pos_embed(pe, (32, 20))
    assert out.shape == (1, 1 + 32 * 20, 24) and torch.equal(out[:, 0], pe[:, 0])
    grid = pe[:, 1:].reshape(1, 14, 14, 24).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(32, 20), mode="bicubic", antialias=True, align_corners=False)
    assert torch.allclose(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, -1, 24), atol=1e-6)
    assert resample_pos_embed(pe, (14, 14)) is pe
    # a constant embedding stays constant, and a smooth one stays smooth, at any grid
    const = torch.ones(1, 1 + 49, 4)
    assert torch.allclose(resample_pos_embed(const, (16, 9)), torch.ones(1, 1 + 144, 4), atol=1e-5)
    # the model runs at a resolution other than its stored grid (like timm's dynamic_img_size)
    vit = VisionTransformer(ViTConfig(img_size=224, patch_size=16, embed_dim=32, depth=1, num_heads=2)).eval()
    with torch.no_grad():
        tokens = vit.forward_features(torch.randn(1, 3, 512, 320))
    assert tokens.shape == (1, 1 + 32 * 20, 32)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        vit(torch.randn(1, 3, 100, 100))


def test_bf16_autocast_forward_gives_float32_gaussians(micro):
    images = torch.rand(1, 2, MICRO, MICRO, 3)
    cams = ring_cameras(2, size=MICRO)
    with torch.no_grad():
        ref = micro.encode(images, cams)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = micro.encode(images, cams)
            rgb, alpha, depth = fake_renders(out, images)
            refined = micro.refine(out, images, rgb, alpha, depth)
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        assert getattr(out, name).dtype == torch.float32
    assert refined[0].features.dtype == torch.float32 and refined[0].gaussians.sh.dtype == torch.float32
    assert (out.means - ref.means).abs().max() < 2e-3  # bounded offsets: tiny differences only


def test_fast_path_runs_encoder_and_volume_transformer_in_bf16(micro):
    from gdensify.runtime import inference

    images = torch.rand(1, 2, MICRO, MICRO, 3)
    cams = ring_cameras(2, size=MICRO)
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, a, out, name=name: seen.__setitem__(name, out.dtype))
             for name, m in (("conv", micro.vol_decoder.layers[0].cnn), ("mlp", micro.vol_decoder.layers[0].mlp[0]),
                             ("vit", micro.img_encoder.model.blocks[0].mlp.fc1), ("head", micro.decoder.mlp_coarse))]
    try:
        with inference("fp32"):
            ref = micro.encode(images, cams)
        with inference("bf16", micro.bf16_modules()):
            micro.vol_decoder.layers[0].cnn(torch.zeros(1, 16, 3, 3, 3))  # outside the stage: float32
            assert seen.pop("conv") == torch.float32
            out = micro.encode(images, cams)
            rgb, alpha, depth = fake_renders(out, images)
            refined = micro.refine(out, images, rgb, alpha, depth)
    finally:
        for h in hooks:
            h.remove()
    assert seen == {"mlp": torch.bfloat16, "vit": torch.bfloat16, "head": torch.float32}
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh", "voxel_features"):
        a, b = getattr(out, name), getattr(ref, name)
        assert a.dtype == torch.float32 and not torch.equal(a, b)
        assert (a - b).norm() <= 0.05 * b.norm(), name
    assert refined[0].features.dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")

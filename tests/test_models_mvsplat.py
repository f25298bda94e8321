"""MVSplat-style scene backbone: sizes, shapes, geometry (plane sweep, rays, SH rotation), batching, gradients,
weight loading and input errors."""

import math

import pytest
import torch

from gdensify.cameras import Cameras, look_at
from gdensify.gaussians import quat_to_rotmat
from gdensify.models.mvsplat import PAPER_PARAMETERS_M, MVSplatBackbone, MVSplatConfig
from gdensify.models.mvsplat_geometry import (
    disparity_candidates,
    plane_sweep_correlation,
    rotate_sh,
    rotmat_to_quat,
)
from gdensify.sh import eval_sh

NEAR, FAR = 1.0, 100.0


def random_rotations(n: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    q = torch.randn(n, 4, generator=generator, dtype=dtype)
    return quat_to_rotmat(q)


def scene_cameras(size: int, views: int = 2, seed: int = 0, near: float = NEAR, far: float = FAR) -> Cameras:
    """Cameras 5 units from a common target, spread ±~10°, slightly different focal lengths."""
    g = torch.Generator().manual_seed(seed)
    target = torch.tensor([0.2, -0.1, 0.3])
    eyes = target + torch.tensor([0.0, 0.0, -5.0]) + 0.8 * torch.randn(views, 3, generator=g)
    c2w = look_at(eyes, target.expand(views, 3), up=torch.tensor([0.0, -1.0, 0.0]))
    f = size * (0.9 + 0.1 * torch.rand(views, generator=g))
    k = torch.zeros(views, 3, 3)
    k[:, 0, 0], k[:, 1, 1] = f, f * 1.02
    k[:, 0, 2], k[:, 1, 2], k[:, 2, 2] = size / 2 + 0.3, size / 2 - 0.2, 1.0
    return Cameras.from_camera_to_world(c2w, k, size, size, near=near, far=far)


def tiny_model(seed: int = 0, **overrides) -> MVSplatBackbone:
    torch.manual_seed(seed)
    return MVSplatBackbone(MVSplatConfig.preset("tiny", **overrides))


def images(batch: int, views: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, views, size, size, 3, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------- sizes
def test_paper_parameter_count_matches_mvsplat():
    # Target: MVSplat "#Param (M) 12" (GD project page, RE10K table; paper_and_mvsplat.md §1b). Tolerance ±3 %.
    model = MVSplatBackbone(MVSplatConfig.preset("paper"))  # ~0.5 s on CPU (the meta device is slower to set up here)
    counts = model.parameter_counts()
    total = counts.pop("total")
    assert sum(counts.values()) == total
    assert abs(total / 1e6 - PAPER_PARAMETERS_M) <= 0.03 * PAPER_PARAMETERS_M, total
    cfg = model.config
    assert cfg.feature_dim == 163 and cfg.raw_channels == 84 and cfg.num_depth_candidates == 128
    assert cfg.size_multiple == 16


# ----------------------------------------------------------------------------------------------------------- forward
def test_tiny_forward_shapes_finite_and_depth_in_range():
    model = tiny_model().eval()
    cfg = model.config
    size = 64
    with torch.no_grad():
        out = model.encode(images(1, 2, size), [scene_cameras(size)])
    b, v, h, w = 1, 2, size, size
    k = (cfg.sh_degree + 1) ** 2
    assert out.means.shape == (b, v, h, w, 3) and out.quats.shape == (b, v, h, w, 4)
    assert out.log_scales.shape == (b, v, h, w, 3) and out.opacity_logits.shape == (b, v, h, w)
    assert out.sh.shape == (b, v, h, w, k, 3) and out.features.shape == (b, v, h, w, cfg.feature_dim)
    assert out.depth.shape == (b, v, h, w) and out.coarse_depth.shape == (b, v, h // 4, w // 4)
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh", "features", "depth", "confidence"):
        assert torch.isfinite(getattr(out, name)).all(), name
    tol = 1e-4
    assert out.depth.min() >= NEAR * (1 - tol) and out.depth.max() <= FAR * (1 + tol)
    assert out.coarse_depth.min() >= NEAR * (1 - tol) and out.coarse_depth.max() <= FAR * (1 + tol)
    assert (out.confidence > 0).all() and (out.confidence <= 1 + 1e-6).all()
    scene = out.scene_gaussians(0).validate()
    assert len(scene) == v * h * w and scene.sh_degree == cfg.sh_degree
    assert len(out.view_gaussians(0, 1)) == h * w
    index = out.view_index()
    assert index.shape == (v * h * w,) and index[0] == 0 and index[-1] == v - 1 and (index == 1).sum() == h * w
    # the view index and flat order agree: view 1's Gaussians are the second half
    torch.testing.assert_close(scene.means[index == 1], out.view_gaussians(0, 1).means)
    # scales follow MVSplat's range: (0.5 … 15)·depth·0.1·(1/fx + 1/fy)
    cams = scene_cameras(size)
    footprint = (1 / cams.intrinsics[:, 0, 0] + 1 / cams.intrinsics[:, 1, 1])[None, :, None, None, None]
    rel = out.log_scales.exp() / (out.depth[..., None] * 0.1 * footprint)
    assert rel.min() >= 0.5 * (1 - 1e-4) and rel.max() <= 15 * (1 + 1e-4)


@pytest.mark.parametrize("depth_mode", ["ray", "z"])
def test_means_lie_on_pixel_rays(depth_mode):
    size = 32
    cams = scene_cameras(size, seed=3)
    imgs = images(1, 2, size, seed=1)
    for offsets in (False, True):
        model = tiny_model(pixel_offsets=offsets, depth_mode=depth_mode).eval()
        with torch.no_grad():
            out = model.encode(imgs, [cams])
        for v in range(2):
            w2c, k = cams.world_to_camera[v], cams.intrinsics[v]
            pts = out.means[0, v].reshape(-1, 3) @ w2c[:3, :3].T + w2c[:3, 3]
            uv = (pts @ k.T)[:, :2] / pts[:, 2:]
            xy = out.pixel_xy[0, v].reshape(-1, 2)
            assert (uv - xy).abs().max() < 1e-3
            ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
            centres = torch.stack([xs, ys], -1).reshape(-1, 2)
            if offsets:
                assert (xy - centres).abs().max() <= 0.5
            else:
                assert (uv - centres).abs().max() < 1e-3
            depth = out.depth[0, v].reshape(-1)
            measured = pts.norm(dim=-1) if depth_mode == "ray" else pts[:, 2]
            torch.testing.assert_close(measured, depth, rtol=1e-4, atol=1e-4)


def test_gaussian_rotation_is_camera_rotation_to_world():
    """World covariance = R_c2w · Σ_camera · R_c2wᵀ, Σ_camera from the head's (normalised) quaternion."""
    size = 32
    cams = scene_cameras(size, seed=5)
    model = tiny_model().eval()
    captured = {}
    model.gaussian_head.register_forward_hook(lambda m, i, o: captured.setdefault("raw", o))
    with torch.no_grad():
        out = model.encode(images(1, 2, size), [cams])
    raw = captured["raw"].permute(0, 2, 3, 1)[1].reshape(-1, model.config.raw_channels)  # view 1
    q_cam = raw[:, 2 + 3:2 + 7]
    r_c2w = cams.camera_to_world[1, :3, :3]
    expected = r_c2w @ quat_to_rotmat(q_cam)
    got = quat_to_rotmat(out.quats[0, 1].reshape(-1, 4))
    torch.testing.assert_close(got, expected.expand_as(got), atol=1e-5, rtol=1e-5)
    # the public activation (used for GD's fine Gaussians with distance = |mean - centre|) reproduces the coarse set
    means = out.means[0, 1].reshape(-1, 3)
    distance = (means - cams.centers[1]).norm(dim=-1)
    k = (model.config.sh_degree + 1) ** 2
    log_scales, quats, sh = model.activate_attributes(raw[:, 2:5], raw[:, 5:9], raw[:, 9:].reshape(-1, k, 3),
                                                      distance, cams.camera_to_world[1], cams.intrinsics[1])
    torch.testing.assert_close(log_scales, out.log_scales[0, 1].reshape(-1, 3), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(quats, out.quats[0, 1].reshape(-1, 4))
    torch.testing.assert_close(sh, out.sh[0, 1].reshape(-1, k, 3))
    # raw_attributes: the same head output in the densifier HEAD's layout [SH | opacity logit | scale | quaternion]
    expected_raw = torch.cat([raw[:, 9:], out.opacity_logits[0, 1].reshape(-1, 1), raw[:, 2:5], raw[:, 5:9]], dim=-1)
    assert out.raw_attributes().shape == (1, 2, size, size, 3 * k + 8)
    torch.testing.assert_close(out.raw_attributes()[0, 1].reshape(-1, 3 * k + 8), expected_raw)


def test_batch_of_two_equals_two_separate_calls():
    size = 32
    model = tiny_model().eval()
    cams = [scene_cameras(size, seed=1), scene_cameras(size, seed=2, near=0.5, far=20.0)]
    imgs = images(2, 2, size, seed=4)
    with torch.no_grad():
        both = model.encode(imgs, cams)
        singles = [model.encode(imgs[i:i + 1], [cams[i]]) for i in range(2)]
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh", "features", "depth"):
        batched = getattr(both, name)
        for i in range(2):
            torch.testing.assert_close(batched[i], getattr(singles[i], name)[0], atol=2e-5, rtol=2e-5,
                                       msg=lambda m, n=name: f"{n}: {m}")
    # the same scene given as a tensor pair with explicit bounds
    w2c = torch.stack([c.world_to_camera for c in cams])
    k = torch.stack([c.intrinsics for c in cams])
    with torch.no_grad():
        tensors = model.encode(imgs, (w2c, k), near=torch.tensor([1.0, 0.5]), far=torch.tensor([100.0, 20.0]))
    torch.testing.assert_close(tensors.means, both.means)


def test_three_views_permutation_equivariant():
    """V = 3: each view attends to / sweeps against both others; permuting the input views permutes the outputs."""
    size = 32
    model = tiny_model().eval()
    cams = scene_cameras(size, views=3, seed=6)
    imgs = images(1, 3, size, seed=2)
    perm = [2, 0, 1]
    with torch.no_grad():
        out = model.encode(imgs, [cams])
        permuted = model.encode(imgs[:, perm], [cams[perm]])
    for name in ("means", "sh", "features", "depth"):
        torch.testing.assert_close(getattr(permuted, name), getattr(out, name)[:, perm], atol=2e-5, rtol=2e-5)


def test_gradients_reach_every_parameter():
    # zero_init_residual=False: with the LDM zero-initialised norms the convs behind them get exactly zero gradient
    # at step 0 (by design); every parameter must still be connected to the outputs.
    model = tiny_model(zero_init_residual=False).train()
    size = 32
    out = model.encode(images(1, 2, size), [scene_cameras(size)])
    g = torch.Generator().manual_seed(0)
    loss = 0.0
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh", "features"):
        t = getattr(out, name)
        loss = loss + (t * torch.randn(t.shape, generator=g)).mean()
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, dead


# ---------------------------------------------------------------------------------------------------------- plane sweep
def _plane_texture(points: torch.Tensor, channels: int = 32) -> torch.Tensor:
    """Unit-norm smooth random features of world points (x, y) on the plane."""
    g = torch.Generator().manual_seed(7)
    freqs = 2.0 * torch.randn(channels, 2, generator=g, dtype=torch.float64)
    phase = 2 * math.pi * torch.rand(channels, generator=g, dtype=torch.float64)
    f = torch.sin(points[..., :2] @ freqs.T + phase)
    return torch.nn.functional.normalize(f, dim=-1)


def test_plane_sweep_argmax_at_plane_depth():
    """A fronto-parallel plane z = z0 in the reference camera: the cost volume peaks at the candidate z0."""
    h = w = 32
    d = 32
    near, far = torch.tensor([1.0], dtype=torch.float64), torch.tensor([100.0], dtype=torch.float64)
    disps = disparity_candidates(near, far, d)
    target = 5
    z0 = float(1 / disps[0, target])
    k = torch.tensor([[30.0, 0, 16.0], [0, 30.0, 16.0], [0, 0, 1]], dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    c2w[1, :3, :3] = quat_to_rotmat(torch.tensor([1.0, 0.0, 0.03, 0.01], dtype=torch.float64))
    c2w[1, :3, 3] = torch.tensor([1.0, 0.1, 0.05], dtype=torch.float64)
    w2c = torch.linalg.inv(c2w)
    feats = []
    for v in range(2):  # features = texture at the ray–plane intersection of every pixel centre
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5,
                                torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij")
        rays = torch.stack([xs, ys, torch.ones_like(xs)], -1) @ torch.linalg.inv(k).T @ c2w[v, :3, :3].T
        origin = c2w[v, :3, 3]
        t = (z0 - origin[2]) / rays[..., 2]
        feats.append(_plane_texture(origin + t[..., None] * rays).permute(2, 0, 1))
    features = torch.stack(feats)[None]  # 1 2 C h w
    corr = plane_sweep_correlation(features, k.expand(1, 2, 3, 3), w2c[None], disps)
    assert corr.shape == (1, 2, d, h, w)
    # pixels of the reference view (0) that see the plane in view 1 at z0
    pts = torch.stack([xs, ys, torch.ones_like(xs)], -1) @ torch.linalg.inv(k).T * z0
    src = pts @ w2c[1, :3, :3].T + w2c[1, :3, 3]
    uv = (src @ k.T)[..., :2] / src[..., 2:]
    inside = ((uv > 1) & (uv < w - 1)).all(-1)
    assert inside.sum() > 0.5 * h * w
    best = corr[0, 0].argmax(dim=0)
    assert (best[inside] == target).double().mean() > 0.95
    torch.testing.assert_close(corr[0, 0, target][inside], torch.ones_like(corr[0, 0, target][inside]) / math.sqrt(32),
                               atol=2e-2, rtol=0)
    # and symmetrically from view 1
    assert (corr[0, 1].argmax(dim=0) == target).double().mean() > 0.5


# ---------------------------------------------------------------------------------------------------------- SH rotation
@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
def test_sh_rotation_matches_rotated_evaluation(degree):
    g = torch.Generator().manual_seed(degree)
    n = 64
    sh = 0.3 * torch.randn(n, (degree + 1) ** 2, 3, generator=g, dtype=torch.float64)
    rot = random_rotations(n, g)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1)
    rotated = rotate_sh(sh, rot)
    expected = eval_sh(degree, sh, dirs)
    got = eval_sh(degree, rotated, (rot @ dirs[..., None])[..., 0])
    torch.testing.assert_close(got, expected, atol=1e-9, rtol=1e-9)
    # float32 path and broadcasting of one rotation over many Gaussians
    r1 = rot[:1].float()
    got32 = eval_sh(degree, rotate_sh(sh.float(), r1), dirs.float() @ r1[0].T)
    torch.testing.assert_close(got32, eval_sh(degree, sh.float(), dirs.float()), atol=1e-5, rtol=1e-5)


def test_rotmat_to_quat_round_trip():
    g = torch.Generator().manual_seed(0)
    rot = random_rotations(500, g)
    # include the awkward cases: identity and 180° turns about each axis
    special = torch.stack([torch.eye(3, dtype=torch.float64), torch.diag(torch.tensor([1.0, -1, -1])).double(),
                           torch.diag(torch.tensor([-1.0, 1, -1])).double(),
                           torch.diag(torch.tensor([-1.0, -1, 1])).double()])
    rot = torch.cat([rot, special])
    torch.testing.assert_close(quat_to_rotmat(rotmat_to_quat(rot)), rot, atol=1e-10, rtol=1e-10)


# ----------------------------------------------------------------------------------------------------------- weights
def test_feature_backbone_loads_from_local_file(tmp_path):
    source = tiny_model(seed=1)
    state = {k: v for k, v in source.state_dict().items() if k.startswith(("cnn.", "transformer."))}
    # UniMatch-style names: the CNN is "backbone.*"
    unimatch = {("backbone." + k[4:] if k.startswith("cnn.") else k): v for k, v in state.items()}
    unimatch["upsampler.0.weight"] = torch.zeros(3)  # a key outside the feature backbone: ignored
    torch.save({"model": unimatch}, tmp_path / "unimatch.pth")
    target = tiny_model(seed=2)
    report = target.load_feature_backbone(tmp_path / "unimatch.pth")
    assert report["ignored"] == ["upsampler.0.weight"] and not report["missing"]
    for k, v in state.items():
        torch.testing.assert_close(target.state_dict()[k], v)
    # safetensors file of our own names, via the config option
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "ours.safetensors"))
    loaded = MVSplatBackbone(MVSplatConfig.preset("tiny", feature_backbone_weights=str(tmp_path / "ours.safetensors")))
    torch.testing.assert_close(loaded.state_dict()["cnn.conv1.weight"], state["cnn.conv1.weight"])

    missing = dict(state)
    missing.pop("transformer.layers.0.self_attn.q_proj.weight")
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing keys \(1 of \d+ model tensors\): \['transformer.layers.0.self_attn.q_proj.weight'\]"):
        target.load_feature_backbone(tmp_path / "missing.pt")
    bad = dict(state)
    bad["cnn.conv2.weight"] = torch.zeros(5, 5, 1, 1)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad.pt.*cnn.conv2.weight: file \(5, 5, 1, 1\)"):
        target.load_feature_backbone(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        target.load_feature_backbone(tmp_path / "nowhere.pt")


# ----------------------------------------------------------------------------------------------------------- errors
def test_bad_inputs_give_clear_errors():
    model = tiny_model().eval()
    cams = scene_cameras(32)
    good = images(1, 2, 32)
    cases = [
        (lambda: model.encode(good[0], [cams]), ValueError, r"\(B, V, H, W, 3\)"),
        (lambda: model.encode(good[:, :1], [cams[:1]]), ValueError, "at least 2 context views"),
        (lambda: model.encode(images(1, 2, 40), [scene_cameras(40)]), ValueError, "multiple of 16"),
        (lambda: model.encode(good * 255, [cams]), ValueError, r"in \[0, 1\]"),
        (lambda: model.encode(good, [cams, cams]), ValueError, "2 Cameras for a batch of 1"),
        (lambda: model.encode(good, [scene_cameras(64)]), ValueError, "64x64, images are 32x32"),
        (lambda: model.encode(good, (cams.world_to_camera[None], cams.intrinsics[None])), ValueError, "near is required"),
        (lambda: model.encode(good, [cams], near=5.0, far=2.0), ValueError, "0 < near < far"),
        (lambda: model.encode(good, [scene_cameras(32, far=1e10)]), ValueError, "far/near ratio"),
        (lambda: model.encode(good, "cameras"), TypeError, "cameras must be"),
        (lambda: model.encode(good.to(torch.int64), [cams]), ValueError, "floating point"),
    ]
    for fn, exc, message in cases:
        with pytest.raises(exc, match=message):
            fn()
    with pytest.raises(ValueError, match="sh_degree"):
        MVSplatConfig(sh_degree=5)
    with pytest.raises(ValueError, match="attn_levels"):
        MVSplatConfig(depth_unet_attn_levels=(32,))
    with pytest.raises(ValueError, match="unknown MVSplatConfig preset"):
        MVSplatConfig.preset("huge")


def test_config_round_trips_through_yaml():
    from gdensify.config import apply_overrides, dump_yaml, from_dict, to_dict
    import yaml

    cfg = MVSplatConfig.preset("tiny")
    assert from_dict(MVSplatConfig, yaml.safe_load(dump_yaml(cfg))) == cfg
    assert from_dict(MVSplatConfig, to_dict(MVSplatConfig.preset("paper"))) == MVSplatConfig.preset("paper")
    assert apply_overrides(cfg, ["num_depth_candidates=16", "depth_mode=z"]).num_depth_candidates == 16

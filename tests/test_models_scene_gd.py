"""Scene-level GD (MVSplat-style backbone + view conditioning + per-view densifier): sizes, the conditioning
tokens, forward/backward of the tiny preset, leaves initialised from their parents, the coarse-only baseline,
determinism and input errors."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from gdensify.cameras import Cameras, look_at
from gdensify.config import from_dict, to_dict
from gdensify.data.batch import ViewBatch, ViewExample
from gdensify.densify import DensifierConfig, GenerativeDensifier
from gdensify.gaussians import Gaussians
from gdensify.io import save_checkpoint
from gdensify.models.loading import load_model
from gdensify.models.mvsplat import MVSplatBackbone, MVSplatConfig
from gdensify.models import GDConfig, GDModel
from gdensify.models import gd as gd_module
from gdensify.models.view_tokens import sample_view_tokens, token_maps
from gdensify.render import rasterize
from gdensify.training.system import supervision_views

SIZE = 64


def forward_facing_cameras(views: int, size: int, seed: int) -> Cameras:
    """Cameras ~3 units in front of the origin (OpenCV axes, y down), spread by ~0.3, near 1 and far 100."""
    g = torch.Generator().manual_seed(seed)
    eyes = torch.tensor([0.0, 0.0, -3.0]) + 0.3 * torch.randn(views, 3, generator=g)
    c2w = look_at(eyes, torch.zeros(views, 3), up=torch.tensor([0.0, -1.0, 0.0]))
    k = torch.tensor([[0.9 * size, 0.0, size / 2], [0.0, 0.9 * size, size / 2], [0.0, 0.0, 1.0]])
    return Cameras.from_camera_to_world(c2w, k.expand(views, 3, 3), size, size, near=1.0, far=100.0)


def scene_batch(scenes: int = 2, context: int = 2, targets: int = 2, size: int = SIZE) -> ViewBatch:
    g = torch.Generator().manual_seed(0)
    examples = []
    for i in range(scenes):
        cams = forward_facing_cameras(context + targets, size, seed=i)
        examples.append(ViewExample(
            torch.rand(context, size, size, 3, generator=g), cams[:context],
            torch.rand(targets, size, size, 3, generator=g), cams[context:], torch.zeros(targets, 3), f"scene{i}",
            input_background=torch.zeros(3)))
    return ViewBatch.collate(examples)


def test_paper_parameter_counts():
    model = GDModel(GDConfig.preset("scene-paper"))  # ~0.6 s, no forward
    counts = model.parameter_counts()
    print("\n".join(f"{k:<34}{v:>12,}" for k, v in counts.items()))
    assert counts["backbone"] == 11_955_734
    assert counts["backbone"] == sum(v for k, v in counts.items() if k.startswith("backbone."))
    assert counts["densifier"] == sum(p.numel() for p in GenerativeDensifier(
        DensifierConfig.preset("paper_scene")).parameters())
    # MLP 163→160→160, LayerNorm 160, attention (q, out 160×160; k, v 160×8; no biases), MLP 160→160→160
    assert counts["conditioning"] == (163 * 160 + 160 + 160 * 160 + 160) + 2 * 160 + 2 * 160 * 160 + 2 * 160 * 8 \
        + 2 * (160 * 160 + 160)
    assert counts["total"] == counts["backbone"] + counts["conditioning"] + counts["densifier"]
    cfg = model.config
    assert cfg.densifier.in_channels == 320 and cfg.selection.k == 30_000 and cfg.backbone.feature_dim == 163


def test_view_tokens_sample_at_pixel_centres():
    cams = forward_facing_cameras(2, 16, seed=3)
    images = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    coarse = Gaussians(torch.randn(50, 3, generator=g) * 0.5, torch.randn(50, 4, generator=g),
                       torch.full((50, 3), -2.0), torch.zeros(50), torch.rand(50, 1, 3, generator=g))
    # points on the rays through pixel centres (column 5, row 9) and (12, 2) of view 0, at camera z 2.5 and 3.0
    pixels, z = torch.tensor([[5.5, 9.5], [12.5, 2.5]]), torch.tensor([2.5, 3.0])
    k = cams.intrinsics[0]
    cam_points = torch.cat([(pixels - k[:2, 2]) / k.diagonal()[:2] * z[:, None], z[:, None]], dim=-1)
    c2w = cams.camera_to_world[0]
    points = cam_points @ c2w[:3, :3].T + c2w[:3, 3]
    render = rasterize(coarse, cams, torch.zeros(3), backend="reference")
    with torch.no_grad():
        tokens = sample_view_tokens(points, cams.world_to_camera, cams.intrinsics,
                                    token_maps(images, render.image, render.alpha, render.depth), padding="border")
    assert tokens.shape == (2, 2, 8)
    for i, (col, row) in enumerate([(5, 9), (12, 2)]):
        torch.testing.assert_close(tokens[i, 0, :3], images[0, row, col])
        torch.testing.assert_close(tokens[i, 0, 3:6], render.image[0, row, col])
        torch.testing.assert_close(tokens[i, 0, 6], render.alpha[0, row, col, 0])
        torch.testing.assert_close(tokens[i, 0, 7], (render.depth[0, row, col, 0] - z[i]).abs())
    assert not tokens.requires_grad and torch.isfinite(tokens).all()


def test_tiny_forward_counts_activation_and_gradients():
    torch.manual_seed(0)
    config = GDConfig.preset("scene-tiny")
    model = GDModel(config)
    batch = scene_batch()
    out = model(batch, generator=torch.Generator().manual_seed(1))
    scenes, views = 2, 2
    k = config.selection.k
    assert len(out.coarse) == len(out.fine) == scenes
    assert all(len(c) == views * SIZE * SIZE for c in out.coarse)
    # K per view selected; each view's K points become fine_count(K) leaves (2048 → 2048 + 819 + 6554 = 9421)
    assert out.diagnostics["n_coarse"].item() == views * SIZE * SIZE
    assert out.diagnostics["n_selected"].item() == views * k
    leaves = views * config.densifier.fine_count(k)
    assert out.diagnostics["n_fine"].item() == views * SIZE * SIZE - views * k + leaves
    assert all(len(f) == views * SIZE * SIZE - views * k + leaves for f in out.fine)
    for fine in out.fine:
        assert fine.sh.shape[1:] == (9, 3) and torch.isfinite(fine.means).all()
    # fine scales follow MVSplat's adapter: (0.5 … 15)·0.1·footprint·distance to the view's camera; the scene's
    # fine Gaussians of view 0 come first (leaves, then non-selected coarse), those of view 1 after them
    cam = batch.input_cameras[0][0]
    fine0 = out.fine[0][:config.densifier.fine_count(k)]
    distance = (fine0.means - cam.centers[0]).norm(dim=-1, keepdim=True)
    footprint = 2.0 / (0.9 * SIZE)
    ratio = fine0.log_scales - torch.log(0.1 * footprint * distance)
    assert ratio.min() >= math.log(0.5) - 1e-4 and ratio.max() <= math.log(15.0) + 1e-4

    cameras, backgrounds, truth = supervision_views(batch)
    loss = (out.render(cameras, backgrounds, "fine") - truth).square().mean()
    loss = loss + (out.render(cameras, backgrounds, "coarse") - truth).square().mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    for module in (model.backbone.cnn, model.conditioning.attention, model.conditioning.project,
                   model.densifier.layers[0], model.densifier.layers[-1].head):
        assert sum(p.grad.abs().sum() for p in module.parameters()) > 0


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    config = GDConfig.preset("scene-tiny")
    assert from_dict(GDConfig, to_dict(config)) == config
    model = GDModel(config)
    path = save_checkpoint(tmp_path / "scene.safetensors", model.state_dict(), "gd", to_dict(config))
    loaded, _ = load_model(path)
    assert isinstance(loaded, GDModel) and loaded.config == config and not loaded.training
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_coarse_only_baseline():
    config = GDConfig.preset("scene-tiny")
    config.densify = False
    model = GDModel(config).eval()
    assert model.densifier is None and model.conditioning is None
    assert set(model.parameter_counts()) == {*(f"backbone.{k}" for k in MVSplatBackbone.COMPONENTS), "backbone",
                                              "total"}
    with torch.no_grad():
        out = model(scene_batch(scenes=1))
    assert out.fine is None and len(out.coarse[0]) == 2 * SIZE * SIZE


def test_eval_is_deterministic():
    torch.manual_seed(0)
    model = GDModel(GDConfig.preset("scene-tiny")).eval()
    batch = scene_batch(scenes=1)
    with torch.no_grad():
        first, second = model(batch), model(batch)
    for a, b in zip(first.fine + first.coarse, second.fine + second.coarse):
        for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_bad_inputs_raise_clear_errors():
    model = GDModel(GDConfig.preset("scene-tiny")).eval()
    batch = scene_batch(scenes=1)
    batch.input_images[0, 1, 3, 4, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"), torch.no_grad():
        model(batch)
    with pytest.raises(ValueError, match="in_channels"):
        GDConfig(backbone=MVSplatConfig.preset("tiny"), densifier=DensifierConfig.preset("tiny"))
    with pytest.raises(ValueError, match="unknown model preset"):
        GDConfig.preset("huge")


def test_leaves_start_as_copies_of_their_parents(monkeypatch):
    """leaf_init="parent": before training, each leaf has its selected parent's SH, orientation and scale factor,
    its parent's leaves together are exactly as opaque as the parent at their centres, and the fine render is
    close to the coarse one."""
    torch.manual_seed(0)
    config = GDConfig.preset("scene-tiny")
    assert config.backbone.leaf_init == "parent"
    model = GDModel(config).eval()
    captured = {}
    select = gd_module.select_from_renders
    monkeypatch.setattr(gd_module, "select_from_renders",
                        lambda *a, **k: captured.setdefault("selection", select(*a, **k)))
    activate = model.backbone.finalize
    monkeypatch.setattr(model.backbone, "finalize",
                        lambda r, c, b: captured.setdefault("leaves", (r, activate(r, c, b)))[1])
    batch = scene_batch(scenes=1)
    with torch.no_grad():
        out = model(batch)
    result, leaves = captured["leaves"]
    parents = out.coarse[0][captured["selection"].index[result.parent]]
    torch.testing.assert_close(leaves.sh, parents.sh)
    torch.testing.assert_close(F.normalize(leaves.quats, dim=-1), F.normalize(parents.quats, dim=-1))
    centres = batch.input_cameras[0].centers[result.batch]  # object = view of scene 0
    # MVSplat's scale is proportional to the distance to the camera; a leaf moves by at most offset_scale·grid
    # per axis in layer 0, half that in layer 1, a quarter in layer 2
    distance_ratio = (leaves.means - centres).norm(dim=-1) / (parents.means - centres).norm(dim=-1)
    reach = math.sqrt(3) * config.densifier.offset_scale * config.densifier.grid_size * (1 + 1 / 2 + 1 / 4)
    assert (leaves.means - parents.means).norm(dim=-1).max() <= reach
    torch.testing.assert_close(leaves.log_scales - parents.log_scales, distance_ratio.log()[:, None].expand(-1, 3),
                               atol=1e-5, rtol=1e-4)
    selected = out.coarse[0][captured["selection"].index]
    transmittance = torch.zeros(len(selected)).index_add_(0, result.parent, F.logsigmoid(-leaves.opacity_logits))
    torch.testing.assert_close(transmittance.exp(), torch.sigmoid(-selected.opacity_logits), atol=1e-6, rtol=1e-5)
    cameras, backgrounds = batch.target_cameras, batch.target_backgrounds
    fine, coarse = out.render(cameras, backgrounds, "fine"), out.render(cameras, backgrounds, "coarse")
    zero_config = dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, leaf_init="zero"))
    torch.manual_seed(0)
    with torch.no_grad():
        from_scratch = GDModel(zero_config).eval()(batch).render(cameras, backgrounds, "fine")
    error, scratch_error = (fine - coarse).square().mean(), (from_scratch - coarse).square().mean()
    print(f"fine vs coarse MSE at initialisation: parent {error:.2e}, zero {scratch_error:.2e}")
    assert error < 0.1 * scratch_error


def test_leaf_init_needs_a_residual_densifier():
    with pytest.raises(ValueError, match="leaf_init must be"):
        dataclasses.replace(GDConfig.preset("scene-tiny").backbone, leaf_init="child")
    tiny = GDConfig.preset("scene-tiny")
    with pytest.raises(ValueError, match="residual_attributes"):
        dataclasses.replace(tiny, densifier=tiny.densifier.replace(residual_attributes=False))
    with pytest.raises(ValueError, match="sh_degree"):
        dataclasses.replace(tiny, densifier=tiny.densifier.replace(sh_degree=1))
    assert GDConfig.preset("scene-paper").backbone.leaf_init == "zero"  # the release's behaviour

"""The one GD pipeline: a third backbone plugs in with one class and one registry entry; the coarse Gaussians are
rendered once per forward; selection scores every coarse Gaussian and masks afterwards."""

from dataclasses import dataclass
from typing import Literal

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gdensify.builtin_scene import orbit_cameras
from gdensify.cameras import stack_cameras
from gdensify.data.batch import ViewBatch, ViewExample
from gdensify.densify import DensifierConfig
from gdensify.densify.selection import SelectionConfig, select_gaussians
from gdensify.gaussians import Gaussians
from gdensify.models import BACKBONES, Backbone, Coarse, Conditioned, GDConfig, GDModel, register_backbone
from gdensify.models import gd as gd_module


@dataclass
class PixelConfig:
    name: Literal["pixel"] = "pixel"
    gd_feature_dim: int = 16
    sh_degree: int = 1


class PixelBackbone(Backbone):
    """A toy backbone: one 3×3 conv predicts a Gaussian per input pixel (depth along the ray, scale, opacity, SH)
    and a GD feature; one selection group per input view."""

    def __init__(self, config: PixelConfig, densifier=None) -> None:
        super().__init__()
        self.config = config
        self.head = nn.Conv2d(3, 1 + 3 + 1 + 3 * (config.sh_degree + 1) ** 2 + config.gd_feature_dim, 3, padding=1)

    def forward(self, batch: ViewBatch, generator=None) -> Coarse:
        b, v, h, w, _ = batch.input_images.shape
        out = self.head(batch.input_images.reshape(b * v, h, w, 3).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        out = out.reshape(b, v, h * w, -1)
        w2c, k = stack_cameras(batch.input_cameras, b, v, w, h)
        ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        pixels = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3)
        rays = torch.einsum("bvij,nj->bvni", torch.linalg.inv(k), pixels)
        points = rays * (1.5 + torch.sigmoid(out[..., :1]))
        c2w = torch.linalg.inv(w2c)
        means = torch.einsum("bvij,bvnj->bvni", c2w[..., :3, :3], points) + c2w[..., None, :3, 3]
        n_sh = (self.config.sh_degree + 1) ** 2
        gaussians = Gaussians(means.reshape(-1, 3), torch.tensor([1.0, 0, 0, 0]).expand(b * v * h * w, 4),
                              out[..., 1:4].reshape(-1, 3) - 4.0, out[..., 4].reshape(-1),
                              out[..., 5:5 + 3 * n_sh].reshape(-1, n_sh, 3))
        item = torch.arange(b).repeat_interleave(v * h * w)
        group = torch.arange(b * v).repeat_interleave(h * w)
        return Coarse(gaussians, item, group, b, b * v, state=out[..., 5 + 3 * n_sh:].reshape(b * v * h * w, -1))

    def condition(self, coarse, batch, render, index, conditioning=None) -> Conditioned:
        return Conditioned(coarse.state[index], coarse.gaussians)


def _batch(size: int = 24, items: int = 2) -> ViewBatch:
    g = torch.Generator().manual_seed(0)
    cams = orbit_cameras(6, size, size)
    return ViewBatch.collate([ViewExample(torch.rand(3, size, size, 3, generator=g), cams[:3],
                                          torch.rand(3, size, size, 3, generator=g), cams[3:], torch.ones(3, 3),
                                          f"item{i}") for i in range(items)])


def test_a_new_backbone_is_one_class_and_one_registry_entry(monkeypatch):
    monkeypatch.setitem(BACKBONES, "pixel", BACKBONES.get("pixel"))
    register_backbone("pixel", PixelConfig)(PixelBackbone)
    torch.manual_seed(0)
    config = GDConfig(PixelConfig(), DensifierConfig.preset("tiny", in_channels=16, grid_size=0.05),
                      SelectionConfig.preset("released_scene", k=40))
    model = GDModel(config)
    assert isinstance(model.backbone, PixelBackbone) and model.conditioning is None
    batch = _batch()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(6):
        out = model(batch, generator=torch.Generator().manual_seed(step))
        loss = (out.render(batch.target_cameras, batch.target_backgrounds, "fine") - batch.target_images).square().mean()
        optimiser.zero_grad()
        loss.backward()
        assert model.backbone.head.weight.grad.abs().sum() > 0
        assert model.densifier.layers[0].up.skip.weight.grad.abs().sum() > 0
        optimiser.step()
        losses.append(loss.item())
    # 40 selected per view, 3 views, 2 items; each selected Gaussian becomes fine_count(40)/40 leaves on average
    assert out.diagnostics["n_selected"].item() == 3 * 40
    assert out.diagnostics["n_fine"].item() == 3 * 24 * 24 - 3 * 40 + 3 * config.densifier.fine_count(40)
    assert losses[-1] < losses[0], losses


def test_the_coarse_gaussians_are_rendered_once_per_forward(monkeypatch):
    calls = []
    render = gd_module.rasterize
    monkeypatch.setattr(gd_module, "rasterize", lambda *a, **k: calls.append("graph") or render(*a, **k))
    detached = gd_module.render_for_selection
    monkeypatch.setattr(gd_module, "render_for_selection", lambda *a, **k: calls.append("detached") or detached(*a, **k))
    config = GDConfig.preset("object-tiny")
    config.selection.k = 100
    model = GDModel(config)
    batch = _batch(size=32, items=2)
    model(batch, generator=torch.Generator().manual_seed(0))
    assert calls == ["graph", "graph"]  # one render per object, in the graph (the refinement trains through it)
    calls.clear()
    with torch.no_grad():
        model.eval()(batch)
    assert calls == ["detached", "detached"]


def test_selection_scores_all_coarse_gaussians_then_masks_by_visibility(monkeypatch):
    """As the release: the selection render holds every coarse Gaussian, the visible set only masks the scores
    (in training it is randomly thinned, so rendering the visible subset alone would change every gradient)."""
    torch.manual_seed(0)
    config = GDConfig.preset("object-tiny")
    config.selection.k = 150
    model = GDModel(config)
    captured = {}
    select = gd_module.select_from_renders
    monkeypatch.setattr(gd_module, "select_from_renders",
                        lambda *a, **k: captured.setdefault("selection", select(*a, **k)))
    coarse_forward = model.backbone.forward
    monkeypatch.setattr(model.backbone, "forward",
                        lambda *a, **k: captured.setdefault("coarse", coarse_forward(*a, **k)))
    batch = _batch(size=32, items=1)
    model(batch, generator=torch.Generator().manual_seed(3))  # training mode: visible set thinned at random
    coarse, selection = captured["coarse"], captured["selection"]
    assert 0 < coarse.candidates.sum() < len(coarse)
    full = select_gaussians(coarse.gaussians, coarse.item, batch.input_cameras, list(batch.input_images),
                            SelectionConfig(**{**config.selection.__dict__, "k": len(coarse)}),
                            backgrounds=list(batch.input_backgrounds))
    masked = torch.where(coarse.candidates, full.scores, torch.full_like(full.scores, -float("inf")))
    torch.testing.assert_close(selection.scores, masked)
    expected = torch.topk(masked, config.selection.k).indices.sort().values
    assert torch.equal(selection.index, expected)
    subset = select_gaussians(coarse.gaussians[coarse.candidates], torch.zeros(int(coarse.candidates.sum()),
                              dtype=torch.long), batch.input_cameras, list(batch.input_images), config.selection,
                              backgrounds=list(batch.input_backgrounds))
    visible = torch.nonzero(coarse.candidates).flatten()
    assert not torch.equal(visible[subset.index], selection.index)  # rendering the subset alone selects others


def test_unknown_backbone_names_are_refused():
    from gdensify.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="not a registered backbone"):
        from_dict(GDConfig, {"backbone": {"name": "depthsplat"}})


def test_the_cpu_fast_path_runs_the_heavy_stages_in_bfloat16():
    from gdensify.evaluation.evaluate import evaluate_example

    torch.manual_seed(0)
    config = GDConfig.preset("object-tiny")
    config.selection.k = 100
    model = GDModel(config).eval()
    assert model.bf16_modules() == [model.backbone.img_encoder, model.backbone.vol_decoder, model.densifier]
    assert GDModel(GDConfig.preset("scene-tiny")).bf16_modules() == []  # no scene stage keeps its accuracy
    batch = _batch(size=32, items=1)
    example = ViewExample(batch.input_images[0], batch.input_cameras[0], batch.target_images[0],
                          batch.target_cameras[0], batch.target_backgrounds[0], "item")
    fp32 = evaluate_example(model, example, generator=torch.Generator().manual_seed(0))
    bf16 = evaluate_example(model, example, generator=torch.Generator().manual_seed(0), precision="bf16")
    assert fp32.row["n_fine"] == bf16.row["n_fine"]
    assert not torch.equal(fp32.reconstruction.coarse[0].means, bf16.reconstruction.coarse[0].means)
    assert abs(fp32.row["psnr_fine"] - bf16.row["psnr_fine"]) < 0.5

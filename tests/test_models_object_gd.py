import torch

from gdensify.builtin_scene import orbit_cameras
from gdensify.data.batch import ViewBatch, ViewExample
from gdensify.models import GDConfig, GDModel
from gdensify.training.system import supervision_views


def _batch(size: int = 64, objects: int = 2) -> ViewBatch:
    g = torch.Generator().manual_seed(0)
    cams = orbit_cameras(6, size, size)
    examples = [ViewExample(torch.rand(4, size, size, 3, generator=g), cams[:4], torch.rand(2, size, size, 3,
                            generator=g), cams[4:], torch.ones(2, 3), f"obj{i}") for i in range(objects)]
    return ViewBatch.collate(examples)


def test_tiny_object_gd_forward_and_gradients():
    torch.manual_seed(0)
    config = GDConfig.preset("object-tiny")
    config.selection.k = 300
    model = GDModel(config)
    batch = _batch()
    out = model(batch, generator=torch.Generator().manual_seed(1))
    assert len(out.coarse) == len(out.fine) == 2
    assert all(len(c) == 32**3 for c in out.coarse)
    # 300 selected per object → 300·2·0.2 + 300·2·0.8·4 = 120 + 1920 leaves, plus the non-selected visible ones.
    n_visible = out.diagnostics["n_visible"].item()
    assert out.diagnostics["n_selected"].item() == 300
    assert out.diagnostics["n_fine"].item() == n_visible - 300 + 2040
    cameras, backgrounds, truth = supervision_views(batch)
    loss = (out.render(cameras, backgrounds, "fine") - truth).square().mean()
    loss = loss + (out.render(cameras, backgrounds, "coarse") - truth).square().mean()
    loss.backward()
    assert model.densifier.layers[0].up.skip.weight.grad.abs().sum() > 0
    assert model.backbone.img_encoder.model.patch_embed.proj.weight.grad.abs().sum() > 0


def test_coarse_only_baseline_has_no_densifier():
    config = GDConfig.preset("object-tiny")
    config.densify = False
    model = GDModel(config)
    assert model.densifier is None and "densifier" not in model.parameter_counts()
    model.eval()
    with torch.no_grad():
        out = model(_batch(objects=1))
    assert out.fine is None and len(out.coarse[0]) == 32**3

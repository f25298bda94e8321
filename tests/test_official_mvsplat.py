"""MVSplat encoder parity with the official code, stage by stage (fixture `mvsplat_small`: 2 views of 64², random
weights): the official state dict loads through `load_official_checkpoint` with the fixture's official config and
every stage agrees with the official intermediate tensors."""

import pytest
import torch
from official_fixtures import assert_close, covariances, load_fixture, mvsplat_config, weights

from gdensify.cameras import Cameras
from gdensify.models.mvsplat_layers import TransformerLayer
from gdensify.models.official import load_official_checkpoint


@pytest.fixture(scope="module")
def run():
    tensors, meta = load_fixture("mvsplat_small")
    model = load_official_checkpoint(weights(tensors), official_config=mvsplat_config(meta))
    backbone = model.backbone
    captured = {}

    def keep(name, inputs=False):
        def hook(module, args, out):
            captured[name] = (args[0] if inputs else out).detach().clone()
        return hook

    backbone.cnn.register_forward_hook(keep("cnn"))
    backbone.transformer.register_forward_hook(keep("transformer"))
    backbone.cost_volume_residual.register_forward_hook(keep("cost_volume_in", inputs=True))
    backbone.depth_head.register_forward_hook(keep("lowres_logits"))
    backbone.proj_feature.register_forward_hook(keep("fullres_features", inputs=True))
    backbone.proj_feature.register_forward_hook(keep("proj_feature"))
    backbone.depth_refine.register_forward_hook(keep("refine_out"))
    backbone.disparity_head.register_forward_hook(keep("to_disparity"))
    size = meta["image_size"]
    k = tensors["inputs.intrinsics"][0].clone()
    k[:, :2] *= size  # normalised → pixels
    cameras = Cameras.from_camera_to_world(tensors["inputs.extrinsics"][0], k, size, size, near=meta["near"],
                                           far=meta["far"])
    with torch.no_grad():
        out = backbone.encode(tensors["inputs.image"].permute(0, 1, 3, 4, 2), [cameras])
    return tensors, out, captured, model


def test_loads_as_coarse_only_scene_model(run):
    _, _, _, model = run
    assert model.densifier is None and not model.training
    cfg = model.config.backbone
    assert (cfg.window_mask, cfg.cost_volume_grid, cfg.upsample_align_corners, cfg.sh_rotation) == \
        ("additive", "released", True, "e3nn")


@pytest.mark.parametrize("stage,reference,atol,rtol", [
    ("cnn", "out.backbone.cnn_features", 1e-4, None),
    ("transformer", "out.backbone.trans_features", 1e-4, None),
    ("cost_volume_in", "out.depth.cost_volume_in", 1e-4, 1e-5),  # correlations reach ~400
    ("lowres_logits", "out.depth.lowres_logits", 1e-4, None),
    ("fullres_features", "out.depth.fullres_features", 1e-4, None),
    ("proj_feature", "out.depth.proj_feature", 1e-4, None),
    ("refine_out", "out.depth.refine_out", 1e-4, None),
    ("to_disparity", "out.depth.to_disparity", 1e-4, None),
])
def test_stages(run, stage, reference, atol, rtol):
    tensors, _, captured, _ = run
    ours = captured[stage]
    ref = tensors[reference]
    assert_close(ours.reshape(ref.shape), ref, atol, stage, rtol)


def test_depths_and_gaussians(run):
    tensors, out, _, _ = run
    n = out.means.shape[1] * out.means.shape[2] * out.means.shape[3]
    assert_close(out.depth.reshape(1, 2, -1), tensors["out.depth.depths"][..., 0, 0], 1e-4, "depths")
    assert_close(torch.sigmoid(out.opacity_logits).reshape(1, 2, -1), tensors["out.depth.densities"][..., 0, 0],
                 1e-4, "densities")
    assert_close(out.means.reshape(n, 3), tensors["out.gaussians.means"][0], 1e-4, "means")
    assert_close(covariances(out.quats.reshape(n, 4), out.log_scales.reshape(n, 3)),
                 tensors["out.gaussians.covariances"][0], 1e-4, "covariances")
    assert_close(out.sh.reshape(n, -1, 3).transpose(1, 2), tensors["out.gaussians.harmonics"][0], 1e-4, "harmonics")
    assert_close(torch.sigmoid(out.opacity_logits).reshape(n), tensors["out.gaussians.opacities"][0], 1e-4,
                 "opacities")


def test_each_switch_matters(run):
    """Turning any released-code switch off breaks parity (so the test above can fail for each of them)."""
    tensors, meta = load_fixture("mvsplat_small")
    size = meta["image_size"]
    k = tensors["inputs.intrinsics"][0].clone()
    k[:, :2] *= size
    cameras = Cameras.from_camera_to_world(tensors["inputs.extrinsics"][0], k, size, size, near=meta["near"],
                                           far=meta["far"])
    images = tensors["inputs.image"].permute(0, 1, 3, 4, 2)
    model = run[3]
    backbone = model.backbone
    defaults = {"cost_volume_grid": "centers", "upsample_align_corners": False, "sh_rotation": "exact"}
    n = 2 * size * size
    layers = [m for m in backbone.modules() if isinstance(m, TransformerLayer)]
    for name, value in [*defaults.items(), ("window_mask", "exact")]:
        released = getattr(backbone.config, name)
        setattr(backbone.config, name, value)
        for layer in layers:  # the window mask is fixed at construction
            layer.masked_logit = None if backbone.config.window_mask == "exact" else -100.0
        try:
            with torch.no_grad():
                out = backbone.encode(images, [cameras])
        finally:
            setattr(backbone.config, name, released)
            for layer in layers:
                layer.masked_logit = -100.0
        means = (out.means.reshape(n, 3) - tensors["out.gaussians.means"][0]).abs().max()
        sh = (out.sh.reshape(n, -1, 3).transpose(1, 2) - tensors["out.gaussians.harmonics"][0]).abs().max()
        assert max(means, sh) > 1e-3, name


def test_view_batch_forward(run):
    """The public call: model(ViewBatch) → Reconstruction whose coarse[0] holds the V·H·W pixel-aligned Gaussians in
    (view, row, column) order."""
    from gdensify.data.batch import ViewBatch

    tensors, out, _, model = run
    size = out.means.shape[2]
    k = tensors["inputs.intrinsics"][0].clone()
    k[:, :2] *= size
    cameras = Cameras.from_camera_to_world(tensors["inputs.extrinsics"][0], k, size, size, near=0.5, far=10.0)
    images = tensors["inputs.image"].permute(0, 1, 3, 4, 2)
    batch = ViewBatch(images, [cameras], images, [cameras], torch.zeros(1, 2, 3), torch.zeros(1, 3), ["scene"])
    with torch.no_grad():
        coarse = model(batch).coarse[0]
    assert_close(coarse.means, tensors["out.gaussians.means"][0], 1e-4, "means")
    assert_close(coarse.sh.transpose(1, 2), tensors["out.gaussians.harmonics"][0], 1e-4, "harmonics")

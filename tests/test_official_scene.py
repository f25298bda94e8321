"""GD scene decoder parity with the official `PointDecoder` (fixture `scene_decoder_small`: 300 points, 3 layers,
random weights): every layer's serialization, blocks, UP, mask and head, and the activated Gaussians of
`decode_points`."""

import pytest
import torch
from official_fixtures import assert_close, covariances, load_fixture, scene_config, weights

from gdensify.cameras import Cameras
from gdensify.models.official import densifier_head_permutation, load_official_checkpoint


def _camera(tensors, meta):
    h, w = meta["image_shape"]
    k = tensors["inputs.intrinsics"][0, 0].clone()
    k[0] *= w
    k[1] *= h
    return Cameras.from_camera_to_world(tensors["inputs.extrinsics"][0], k[None], w, h)


@pytest.fixture(scope="module")
def run():
    tensors, meta = load_fixture("scene_decoder_small")
    _, mvsplat_meta = load_fixture("mvsplat_small")
    # a decoder-only file: the encoder and conditioning keep their initialisation (strict=False)
    model = load_official_checkpoint(weights(tensors), kind="gd-scene",
                                     official_config=scene_config(meta, mvsplat_meta), strict=False)
    captured = {}
    for li, layer in enumerate(model.densifier.layers):
        def first_input(module, args, key=f"{li}"):
            point = args[0]
            captured.setdefault(f"{key}.serialized", (point.coord.clone(), point.grid_coord.clone(),
                                                      point.serialized_code.clone(),
                                                      point.serialized_order.clone()))
        layer.blocks[0].register_forward_pre_hook(first_input)
        for bi, block in enumerate(layer.blocks):
            block.cpe[2].register_forward_hook(
                lambda m, a, o, key=f"{li}.block{bi}.cpe_out": captured.__setitem__(key, o.clone()))
            block.register_forward_hook(
                lambda m, a, o, key=f"{li}.block{bi}.out": captured.__setitem__(key, o.feat.clone()))
        layer.up.register_forward_hook(
            lambda m, a, o, key=f"{li}.up": captured.__setitem__(key, (o[0].clone(), o[1].clone())))
    with torch.no_grad():
        gaussians = model.decode_points(tensors["inputs.coord"], tensors["inputs.feat"], _camera(tensors, meta))
        result = model.densifier(tensors["inputs.coord"], tensors["inputs.feat"],
                                 torch.zeros(len(tensors["inputs.coord"]), dtype=torch.long))
    return tensors, captured, gaussians, result, model


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_layers(run, layer):
    tensors, captured, _, result, _ = run
    prefix = f"out.dec.{layer}.{'in' if layer == 0 else 'serialized'}"
    coord, grid, code, order = captured[f"{layer}.serialized"]
    assert_close(coord, tensors[f"{prefix}.coord"], 1e-5, "input coordinates")
    assert torch.equal(grid, tensors[f"{prefix}.grid_coord"].long())
    assert torch.equal(code, tensors[f"{prefix}.serialized_code"])
    assert torch.equal(order, tensors[f"{prefix}.serialized_order"])  # the released unstable argsort
    for block in (0, 1):
        assert_close(captured[f"{layer}.block{block}.cpe_out"], tensors[f"out.dec.{layer}.block{block}.cpe_out"],
                     1e-4, f"layer {layer} block {block} CPE")
        assert_close(captured[f"{layer}.block{block}.out"], tensors[f"out.dec.{layer}.block{block}.out"], 1e-4,
                     f"layer {layer} block {block}")
    up_coord, up_feat = captured[f"{layer}.up"]
    assert_close(up_coord, tensors[f"out.dec.{layer}.up.coord"], 1e-5, "UP coordinates")
    assert_close(up_feat, tensors[f"out.dec.{layer}.up.feat"], 1e-4, "UP features")
    if layer < 2:
        stats = result.layers[layer]
        assert torch.equal(stats.keep, tensors[f"out.dec.{layer}.mask.non_leaf"].bool())
        assert_close(stats.mask_probs, tensors[f"out.dec.{layer}.mask.prob"][:, 0], 1e-6, "mask probabilities")


def test_residual_head_attributes(run):
    """The last layer's residually summed attributes equal the official ones after the layout permutation."""
    tensors, _, _, result, _ = run
    official = tensors["out.dec.2.head.attribute"][:, densifier_head_permutation(4)]
    last = result.layer == 2
    assert_close(result.attributes[last], official, 1e-4, "layer-2 attributes")


def test_activated_gaussians(run):
    tensors, _, gaussians, _, _ = run
    ref = {k: v.reshape(-1, *v.shape[5:]) for k, v in tensors.items() if k.startswith("out.gaussians.")}
    assert len(gaussians) == ref["out.gaussians.means"].shape[0] == 1380
    assert_close(gaussians.means, ref["out.gaussians.means"], 1e-4, "means")
    assert_close(covariances(gaussians.quats, gaussians.log_scales), ref["out.gaussians.covariances"], 1e-6,
                 "covariances", rtol=1e-4)
    assert_close(gaussians.sh.transpose(1, 2), ref["out.gaussians.harmonics"], 1e-4, "harmonics")
    assert_close(torch.sigmoid(gaussians.opacity_logits), ref["out.gaussians.opacities"], 1e-4, "opacities")


def test_default_rules_differ(run):
    """With our default tie order and duplicate-voxel rule the same weights give other outputs (the switches are
    what makes the parity above)."""
    tensors, _, gaussians, _, model = run
    cfg = model.densifier.config
    try:
        cfg.serialization_ties, cfg.cpe_duplicates = "stable", "mean"
        with torch.no_grad():
            other = model.densifier(tensors["inputs.coord"], tensors["inputs.feat"],
                                    torch.zeros(len(tensors["inputs.coord"]), dtype=torch.long))
    finally:
        cfg.serialization_ties, cfg.cpe_duplicates = "released", "spconv_cpu"
    assert (other.gaussians.means - gaussians.means).abs().max() > 1e-3

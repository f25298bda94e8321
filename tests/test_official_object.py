"""GD object model parity with the official `Network` (fixture `object_small`: 4 views of 64², 16³ coarse
Gaussians, K = 200, random weights), for the stages that do not depend on the renderer: the backbone's coarse
Gaussians, the LaRa refinement fed with the official renders, and the densifier fed with the official selected
set (every layer, the fine Gaussians and the merged fine set)."""

import pytest
import torch
from official_fixtures import assert_close, load_fixture, object_config, weights

from gdensify.cameras import Cameras
from gdensify.densify import merge_with_coarse
from gdensify.models.official import load_official_checkpoint


def _views(render: torch.Tensor, channels: int) -> torch.Tensor:
    """(1, H, 8·W, C) views side by side → the 4 input views (4, H, W, C)."""
    h = render.shape[1]
    return render[0].reshape(h, 8, -1, channels).permute(1, 0, 2, 3)[:4]


@pytest.fixture(scope="module")
def run():
    tensors, meta = load_fixture("object_small")
    model = load_official_checkpoint(weights(tensors), official_config=object_config(meta))
    size = meta["image_size"]
    cameras = Cameras.from_camera_to_world(tensors["inputs.tar_c2w"][0, :4], tensors["inputs.tar_ixt"][0, :4],
                                           size, size)
    images = tensors["inputs.tar_rgb"][:, :4]
    render = (_views(tensors["out.render.image"], 3), _views(tensors["out.render.acc_map"], 1),
              _views(tensors["out.render.depth"], 1))
    captured = {}
    for li, layer in enumerate(model.densifier.layers):
        for bi, block in enumerate(layer.blocks):
            block.cpe[2].register_forward_hook(
                lambda m, a, o, key=f"{li}.block{bi}.cpe_out": captured.__setitem__(key, o.clone()))
            block.attn.register_forward_hook(
                lambda m, a, o, key=f"{li}.block{bi}.attn_out": captured.__setitem__(key, o.clone()))
            block.register_forward_hook(
                lambda m, a, o, key=f"{li}.block{bi}.out": captured.__setitem__(key, o.feat.clone()))
        layer.up.register_forward_hook(
            lambda m, a, o, key=f"{li}.up": captured.__setitem__(key, (o[0].clone(), o[1].clone())))
        layer.head.register_forward_hook(
            lambda m, a, o, key=f"{li}.head": captured.__setitem__(key, o.clone()))
    with torch.no_grad():
        coarse = model.backbone.encode(images, [cameras])
        refined = model.backbone.refine(coarse, images, *(r[None] for r in render))[0]
        point_features = model.backbone.point_features(coarse.means[0], images[0], *render,
                                                       coarse.world_to_camera[0], coarse.intrinsics[0])
        selected = tensors["out.select.selected_index"]
        densified = model.densifier(tensors["out.dec.0.in.coord"], tensors["out.dec.0.in.feat"],
                                    torch.zeros(len(selected), dtype=torch.long))
    return dict(tensors=tensors, model=model, coarse=coarse.gaussians(0), refined=refined,
                point_features=point_features, selected=selected, densified=densified, captured=captured)


def test_released_switches(run):
    cfg = run["model"].config.densifier
    assert (cfg.norm, cfg.serialization_ties, cfg.cpe_duplicates) == ("layernorm", "released", "spconv_cpu")
    assert run["model"].config.selection.k == 200


def test_coarse_gaussians(run):
    t, g = run["tensors"], run["coarse"]
    assert_close(g.means, t["out.coarse.centers"], 1e-5, "coarse means")
    assert_close(g.sh, t["out.coarse.shs"], 1e-5, "coarse SH")
    assert_close(g.opacity_logits, t["out.coarse.opacity"][:, 0], 1e-5, "coarse opacity logits")
    assert_close(g.log_scales, t["out.coarse.scaling"], 1e-5, "coarse log-scales")
    assert_close(g.quats, t["out.coarse.rotation"], 1e-5, "coarse quaternions")


def test_refinement_with_official_renders(run):
    t, refined = run["tensors"], run["refined"]
    assert_close(run["point_features"], t["out.refine.point_feats"].permute(2, 0, 1), 1e-4, "point features")
    width = refined.features.shape[1] // 2
    assert_close(refined.features[:, :width], t["out.refine.feats_fine"][:, 0], 1e-4, "refined features")
    assert_close(refined.sh_residual.reshape(len(refined.index), -1), t["out.refine.shs_res"][:, 0], 1e-4,
                 "SH residual")
    # the densifier's input (selected centres and GD features) is the official one
    selected = run["selected"]
    assert_close(refined.gaussians.means[selected], t["out.dec.0.in.coord"], 1e-6, "selected centres")
    assert_close(refined.features[selected], t["out.dec.0.in.feat"], 1e-4, "selected features")


@pytest.mark.parametrize("layer", [0, 1])
def test_densifier_layers(run, layer):
    t, captured = run["tensors"], run["captured"]
    for block in (0, 1):
        for part in ("cpe_out", "attn_out", "out"):
            assert_close(captured[f"{layer}.block{block}.{part}"], t[f"out.dec.{layer}.block{block}.{part}"], 1e-4,
                         f"layer {layer} block {block} {part}")
    coord, feat = captured[f"{layer}.up"]
    assert_close(coord, t[f"out.dec.{layer}.up.coord"], 1e-5, "UP coordinates")
    assert_close(feat, t[f"out.dec.{layer}.up.feat"], 1e-3, "UP features")
    assert_close(captured[f"{layer}.head"], t[f"out.dec.{layer}.head.attribute"], 1e-3, "head attributes")


def test_fine_gaussians(run):
    t, fine = run["tensors"], run["densified"].gaussians
    n = len(fine)
    assert n == 1360
    assert_close(fine.means, t["out.fine.centers"][:n], 1e-4, "fine means")
    assert_close(fine.sh, t["out.fine.shs"][:n], 1e-3, "fine SH")
    assert_close(fine.opacity_logits, t["out.fine.opacity"][:n, 0], 1e-3, "fine opacity logits")
    assert_close(fine.log_scales, t["out.fine.scaling"][:n], 1e-3, "fine log-scales")
    assert_close(fine.quats, t["out.fine.rotation"][:n], 1e-3, "fine quaternions")


def assert_fine_set(fine, t: dict) -> None:
    """The official fine set (5,256: densified first, then the kept coarse Gaussians with refined SH)."""
    assert len(fine) == t["out.fine.centers"].shape[0] == 5256
    assert_close(fine.means, t["out.fine.centers"], 1e-4, "fine means")
    assert_close(fine.sh, t["out.fine.shs"], 1e-3, "fine SH")
    assert_close(fine.opacity_logits, t["out.fine.opacity"][:, 0], 1e-3, "fine opacity logits")
    assert_close(fine.log_scales, t["out.fine.scaling"], 1e-3, "fine log-scales")
    assert_close(fine.quats, t["out.fine.rotation"], 1e-3, "fine quaternions")


def test_merged_fine_set(run):
    """Fine Gaussians first, then the non-selected visible coarse Gaussians with refined SH (5,256 in all)."""
    t, refined = run["tensors"], run["refined"]
    owner = torch.zeros(len(refined.index), dtype=torch.long)
    merged, _ = merge_with_coarse(refined.gaussians, owner, run["selected"], run["densified"], num_objects=1)
    assert_fine_set(merged, t)


def test_end_to_end_through_the_public_api(run, monkeypatch):
    """`model(ViewBatch) -> Reconstruction` on the fixture's inputs, with the loaded model's own renderer (SH view
    origin −t_c2w, CUDA tile rectangle and radius, near-only culling at 0.2, gradient through the α clamp, [0, 1]
    clamp): the coarse set in voxel order, the AbsGS selection on all coarse Gaussians, the fine set (densified
    first, then the kept coarse Gaussians with refined SH, as the release orders them) and `Reconstruction.render`
    into all 8 views."""
    from gdensify.data.batch import ViewBatch, ViewExample
    from gdensify.models import gd as gd_module

    t, model = run["tensors"], run["model"]
    size = 64
    cameras = Cameras.from_camera_to_world(t["inputs.tar_c2w"][0], t["inputs.tar_ixt"][0], size, size)
    images, background = t["inputs.tar_rgb"][0], t["inputs.bg_color"][0]
    batch = ViewBatch.collate([ViewExample(images[:4], cameras[:4], images[4:], cameras[4:], background[4:],
                                           "object_small", input_background=background[0])])
    captured = {}
    select = gd_module.select_from_renders
    monkeypatch.setattr(gd_module, "select_from_renders",
                        lambda *a, **k: captured.setdefault("selection", select(*a, **k)))
    with torch.inference_mode():
        out = model(batch)
        renders = {which: out.render([cameras], background[None], which)[0] for which in ("coarse", "fine")}
    coarse, fine = out.coarse[0], out.fine[0]
    assert_close(coarse.means, t["out.coarse.centers"], 1e-5, "coarse means")
    assert_close(coarse.sh, t["out.coarse.shs"], 1e-5, "coarse SH")
    selection = captured["selection"]
    assert_close(selection.scores, t["out.select.scores"], 1e-6, "selection scores", rtol=1e-4)
    assert torch.equal(selection.index, t["out.select.selected_index"].sort().values)
    assert_fine_set(fine, t)

    def official(name: str) -> torch.Tensor:
        return t[name][0].reshape(size, 8, size, 3).permute(1, 0, 2, 3)

    assert_close(renders["coarse"], official("out.render.image"), 1e-2, "coarse renders")
    assert_close(renders["fine"], official("out.render.image_fine"), 1e-2, "fine renders")

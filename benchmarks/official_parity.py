"""Per-stage parity of gdensify with the official GD / MVSplat code on the golden fixtures of
`tests/fixtures/official/` (official code run on CPU: small configs, random weights). Prints a Markdown table of
max |ours − official| and that divided by max |official| for every stage that does not need the renderer.

    OMP_NUM_THREADS=1 python benchmarks/official_parity.py

Each model is loaded with `gdensify.models.load_official_checkpoint` from the fixture's official state dict and
official config; stages are compared on the fixture's own inputs (the object refinement on the official renders,
the object densifier on the official selected set, the scene decoder on the fixture's points and camera).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from gdensify.cameras import Cameras
from gdensify.densify import merge_with_coarse
from gdensify.gaussians import quat_to_rotmat
from gdensify.models import decode_points, load_official_checkpoint

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "official"


def _load(name: str) -> tuple[dict[str, torch.Tensor], dict]:
    return load_file(str(FIXTURES / f"{name}.safetensors")), json.loads((FIXTURES / f"{name}.json").read_text())


def _weights(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("weights."):]: v for k, v in tensors.items() if k.startswith("weights.")}


def _cov(quats: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    r = quat_to_rotmat(torch.nn.functional.normalize(quats, dim=-1))
    return r @ torch.diag_embed(torch.exp(2 * log_scales)) @ r.transpose(-1, -2)


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, float, float]] = []

    def add(self, fixture: str, stage: str, ours: torch.Tensor, ref: torch.Tensor) -> None:
        ours = ours.reshape(ref.shape).double()
        err = (ours - ref.double()).abs().max().item()
        self.rows.append((fixture, stage, err, err / max(ref.double().abs().max().item(), 1e-30)))

    def markdown(self) -> str:
        lines = ["| fixture | stage | max abs diff | relative |", "|---|---|---|---|"]
        lines += [f"| {f} | {s} | {a:.2e} | {r:.2e} |" for f, s, a, r in self.rows]
        return "\n".join(lines)


def _hooks(module: torch.nn.Module, captured: dict, name: str, inputs: bool = False) -> None:
    module.register_forward_hook(lambda m, a, o: captured.__setitem__(name, (a[0] if inputs else o).detach()))


def mvsplat(table: Table) -> None:
    t, meta = _load("mvsplat_small")
    size = meta["image_size"]
    config = {"model": {"encoder": meta["encoder_config"]},
              "dataset": {"image_shape": [size, size], "near": meta["near"], "far": meta["far"]}}
    backbone = load_official_checkpoint(_weights(t), official_config=config).backbone
    cap: dict = {}
    for name, module, inputs in (("cnn", backbone.cnn, False), ("transformer", backbone.transformer, False),
                                 ("cost_volume_in", backbone.cost_volume_residual, True),
                                 ("lowres_logits", backbone.depth_head, False),
                                 ("fullres_features", backbone.proj_feature, True),
                                 ("refine_out", backbone.depth_refine, False),
                                 ("to_disparity", backbone.disparity_head, False)):
        _hooks(module, cap, name, inputs)
    k = t["inputs.intrinsics"][0].clone()
    k[:, :2] *= size
    cams = Cameras.from_camera_to_world(t["inputs.extrinsics"][0], k, size, size, near=meta["near"], far=meta["far"])
    with torch.no_grad():
        out = backbone(t["inputs.image"].permute(0, 1, 3, 4, 2), [cams])
    for stage, ref in (("cnn", "backbone.cnn_features"), ("transformer", "backbone.trans_features"),
                       ("cost_volume_in", "depth.cost_volume_in"), ("lowres_logits", "depth.lowres_logits"),
                       ("fullres_features", "depth.fullres_features"), ("refine_out", "depth.refine_out"),
                       ("to_disparity", "depth.to_disparity")):
        table.add("mvsplat_small", stage, cap[stage], t[f"out.{ref}"])
    n = 2 * size * size
    table.add("mvsplat_small", "depths", out.depth, t["out.depth.depths"])
    table.add("mvsplat_small", "Gaussian means", out.means, t["out.gaussians.means"])
    table.add("mvsplat_small", "Gaussian covariances", _cov(out.quats.reshape(n, 4), out.log_scales.reshape(n, 3)),
              t["out.gaussians.covariances"])
    table.add("mvsplat_small", "Gaussian SH (degree 4)", out.sh.reshape(n, -1, 3).transpose(1, 2),
              t["out.gaussians.harmonics"])
    table.add("mvsplat_small", "Gaussian opacities", torch.sigmoid(out.opacity_logits), t["out.gaussians.opacities"])


def scene_decoder(table: Table) -> None:
    t, meta = _load("scene_decoder_small")
    _, mv = _load("mvsplat_small")
    decoder = dict(meta["decoder_kwargs"], grid_size=meta["grid_size"])
    config = {"model": {"encoder": mv["encoder_config"], "decoder": decoder},
              "dataset": {"image_shape": meta["image_shape"], "near": mv["near"], "far": mv["far"]}}
    model = load_official_checkpoint(_weights(t), kind="gd-scene", official_config=config, strict=False)
    cap: dict = {}
    for li, layer in enumerate(model.densifier.layers):
        for bi, block in enumerate(layer.blocks):
            block.register_forward_hook(lambda m, a, o, key=f"{li}.{bi}": cap.__setitem__(key, o.feat.clone()))
        layer.up.register_forward_hook(lambda m, a, o, key=f"{li}.up": cap.__setitem__(key, o[1].clone()))
    h, w = meta["image_shape"]
    k = t["inputs.intrinsics"][0, 0].clone()
    k[0] *= w
    k[1] *= h
    cams = Cameras.from_camera_to_world(t["inputs.extrinsics"][0], k[None], w, h)
    with torch.no_grad():
        g = decode_points(model, t["inputs.coord"], t["inputs.feat"], cams)
    for li in range(3):
        for bi in range(2):
            table.add("scene_decoder_small", f"layer {li} block {bi}", cap[f"{li}.{bi}"],
                      t[f"out.dec.{li}.block{bi}.out"])
        table.add("scene_decoder_small", f"layer {li} UP features", cap[f"{li}.up"], t[f"out.dec.{li}.up.feat"])
    ref = {k[len("out.gaussians."):]: v.reshape(-1, *v.shape[5:]) for k, v in t.items()
           if k.startswith("out.gaussians.")}
    table.add("scene_decoder_small", "activated means", g.means, ref["means"])
    table.add("scene_decoder_small", "activated covariances", _cov(g.quats, g.log_scales), ref["covariances"])
    table.add("scene_decoder_small", "activated SH (degree 4)", g.sh.transpose(1, 2), ref["harmonics"])
    table.add("scene_decoder_small", "activated opacities", torch.sigmoid(g.opacity_logits), ref["opacities"])


def object_model(table: Table) -> None:
    t, meta = _load("object_small")
    size = meta["image_size"]
    config = {"n_views": meta["n_views"], "model": dict(meta["config"], timm_kwargs=meta["timm_overrides"]),
              "test_dataset": {"img_size": [size, size]}}
    model = load_official_checkpoint(_weights(t), official_config=config)
    cams = Cameras.from_camera_to_world(t["inputs.tar_c2w"][0, :4], t["inputs.tar_ixt"][0, :4], size, size)
    images = t["inputs.tar_rgb"][:, :4]

    def views(x: torch.Tensor, c: int) -> torch.Tensor:
        return x[0].reshape(size, 8, size, c).permute(1, 0, 2, 3)[:4]

    render = (views(t["out.render.image"], 3), views(t["out.render.acc_map"], 1), views(t["out.render.depth"], 1))
    cap: dict = {}
    for li, layer in enumerate(model.densifier.layers):
        for bi, block in enumerate(layer.blocks):
            block.register_forward_hook(lambda m, a, o, key=f"{li}.{bi}": cap.__setitem__(key, o.feat.clone()))
    with torch.no_grad():
        coarse = model.backbone.encode(images, [cams])
        g = coarse.gaussians(0)
        refined = model.backbone.refine(coarse, images, *(r[None] for r in render))[0]
        selected = t["out.select.selected_index"]
        result = model.densifier(t["out.dec.0.in.coord"], t["out.dec.0.in.feat"],
                                 torch.zeros(len(selected), dtype=torch.long))
    table.add("object_small", "coarse means", g.means, t["out.coarse.centers"])
    table.add("object_small", "coarse SH / opacity / scale / quaternion (max)",
              torch.cat([g.sh.flatten(1), g.opacity_logits[:, None], g.log_scales, g.quats], 1),
              torch.cat([t["out.coarse.shs"].flatten(1), t["out.coarse.opacity"], t["out.coarse.scaling"],
                         t["out.coarse.rotation"]], 1))
    width = refined.features.shape[1] // 2
    table.add("object_small", "refined features (official renders)", refined.features[:, :width],
              t["out.refine.feats_fine"])
    table.add("object_small", "SH residual (official renders)", refined.sh_residual, t["out.refine.shs_res"])
    for li in range(2):
        for bi in range(2):
            table.add("object_small", f"densifier layer {li} block {bi}", cap[f"{li}.{bi}"],
                      t[f"out.dec.{li}.block{bi}.out"])
    fine = result.gaussians
    n = len(fine)
    table.add("object_small", f"fine means ({n})", fine.means, t["out.fine.centers"][:n])
    table.add("object_small", "fine SH", fine.sh, t["out.fine.shs"][:n])
    table.add("object_small", "fine opacity logits", fine.opacity_logits, t["out.fine.opacity"][:n, 0])
    table.add("object_small", "fine log-scales", fine.log_scales, t["out.fine.scaling"][:n])
    table.add("object_small", "fine quaternions", fine.quats, t["out.fine.rotation"][:n])
    merged, _ = merge_with_coarse(refined.gaussians, torch.zeros(len(refined.index), dtype=torch.long), selected,
                                  result, num_objects=1)
    table.add("object_small", f"merged fine set ({len(merged)}), all attributes (max)",
              torch.cat([merged.means, merged.sh.flatten(1), merged.opacity_logits[:, None], merged.log_scales,
                         merged.quats], 1),
              torch.cat([t["out.fine.centers"], t["out.fine.shs"].flatten(1), t["out.fine.opacity"],
                         t["out.fine.scaling"], t["out.fine.rotation"]], 1))


def main() -> None:
    table = Table()
    object_model(table)
    scene_decoder(table)
    mvsplat(table)
    print(table.markdown())


if __name__ == "__main__":
    main()

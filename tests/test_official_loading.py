"""Loading official checkpoints: paper-size key layouts (meta device) against the official models' key listings, kind
inference, the strict mapping report, checkpoint files, config translation errors, and unchanged defaults."""

import re

import pytest
import torch
from official_fixtures import load_fixture, mvsplat_config, object_config, scene_config, weights

from gdensify.densify import DensifierConfig
from gdensify.models import MVSplatConfig
from gdensify.models.official import (build_model, infer_kind, load_official_checkpoint, map_state_dict,
                                      mapped_state_dict, mvsplat_head_permutation, densifier_head_permutation,
                                      read_official_state_dict, translate_config)

# Our name → official name, written from the official models' state-dict listings (an inverse independent of the
# loader's rules). MVSplat encoder module names (ours → official without "encoder."):
MVSPLAT_INVERSE = [
    ("cnn.", "backbone.backbone."), ("transformer.", "backbone.transformer."),
    ("cost_volume_refine.stem.", "depth_predictor.corr_refine_net."),
    ("cost_volume_refine.unet.", "depth_predictor.corr_refine_net.3."),
    ("cost_volume_out.", "depth_predictor.corr_refine_net.4."),
    ("cost_volume_residual.", "depth_predictor.regressor_residual."),
    ("depth_head.", "depth_predictor.depth_head_lowres."),
    ("upsampler.", "depth_predictor.upsampler.0."), ("proj_feature.", "depth_predictor.proj_feature."),
    ("depth_refine.stem.", "depth_predictor.refine_unet."), ("depth_refine.unet.", "depth_predictor.refine_unet.3."),
    ("gaussian_head.", "depth_predictor.to_gaussians."), ("disparity_head.", "depth_predictor.to_disparity."),
]


def _official_mvsplat(name: str) -> str:
    for ours, official in MVSPLAT_INVERSE:
        if name.startswith(ours):
            rest = name[len(ours):]
            if ".unet." in ours:
                rest = rest.replace("skip.", "skip_connection.").replace("middle_block.1.", "middle_block.2.")
            return official + rest
    raise AssertionError(f"no official name for {name}")


def _official_densifier(name: str) -> str:
    name = re.sub(r"^layers\.(\d+)\.blocks\.(\d+)\.", r"dec.\1.block\2.", name)
    return re.sub(r"^layers\.(\d+)\.(up|mask|head)\.", r"dec.\1.\2.", name)


def _official_name(kind: str, name: str) -> str:
    if kind.startswith("gd-object"):
        if name.startswith("densifier."):
            return "net." + _official_densifier(name[len("densifier."):])
        return "net." + name[len("backbone."):]
    if name.startswith("backbone."):
        return "encoder." + _official_mvsplat(name[len("backbone."):])
    if name.startswith("densifier."):
        return "point_decoder." + _official_densifier(name[len("densifier."):])
    for ours, official in (("conditioning.project.", "mlp1."), ("conditioning.norm.", "norm."),
                           ("conditioning.attention.", "cross_att."), ("conditioning.mlp.", "mlp2.")):
        if name.startswith(ours):
            return official + name[len(ours):]
    raise AssertionError(f"no official name for {name}")


def _official_state(kind: str) -> dict[str, torch.Tensor]:
    """The official paper-size state dict of `kind` on the meta device, built from our released model."""
    with torch.device("meta"):
        model = build_model(translate_config(kind))
    state = {_official_name(kind, k): v for k, v in model.state_dict().items()}
    if kind.startswith("gd-object"):
        state["net.volume_grid"] = torch.empty(16, 16, 16, 3, device="meta")
        state["net.group_centers"] = torch.empty(1, 262144, 3, device="meta")
    return state


# (entries, elements) of the released official state dicts, as listed from the official models built at their released
# configs (GD object `Network` incl. its 2 grid buffers, GD scene model, MVSplat encoder), and some named shapes.
OFFICIAL_TOTALS = {"gd-object": (440, 134_087_452), "gd-object-residual": (440, 134_087_452),
                   "gd-scene": (610, 27_799_536), "mvsplat": (471, 11_955_734)}
OFFICIAL_SHAPES = {
    "gd-object": {"net.img_encoder.model.pos_embed": (1, 197, 768),
                  "net.dec.0.block0.cpe.0.weight": (160, 3, 3, 3, 160),
                  "net.dec.1.block1.attn.qkv.weight": (768, 256), "net.decoder.mlp_coarse.4.weight": (23, 80),
                  "net.decoder.mlp_fine.2.weight": (92, 80), "net.dec.0.up.frequencies": (15,),
                  "net.dec.0.mask.net.2.weight": (1, 256), "net.dec.1.head.feat2attr.2.weight": (20, 256)},
    "gd-scene": {"mlp1.0.weight": (160, 163), "cross_att.k_proj_weight": (160, 8), "norm.weight": (160,),
                 "point_decoder.dec.2.head.feat2attr.2.weight": (83, 128),
                 "point_decoder.dec.0.block0.cpe.0.weight": (320, 3, 3, 3, 320)},
    "mvsplat": {"encoder.depth_predictor.to_gaussians.2.bias": (84,)},  # 2 offsets + 3 + 4 + 3·25 SH
}


@pytest.mark.parametrize("kind", ["gd-object", "gd-object-residual", "gd-scene", "mvsplat"])
def test_paper_size_key_layout(kind):
    """Released configs build models whose tensors, mapped to official names, are the official key set."""
    state = _official_state(kind)
    entries, elements = OFFICIAL_TOTALS[kind]
    assert len(state) == entries
    assert sum(v.numel() for v in state.values()) == elements
    for name, shape in OFFICIAL_SHAPES.get(kind.replace("-residual", ""), {}).items():
        assert tuple(state[name].shape) == shape, name
    assert infer_kind(state) == ("gd-object" if kind.startswith("gd-object") else kind)
    with torch.device("meta"):
        translated = translate_config(kind)
        model = build_model(translated)
    report = mapped_state_dict(state, translated)
    assert not report.unknown
    assert sorted(report.dropped) == (["net.group_centers", "net.volume_grid"] if kind.startswith("gd-object")
                                      else [])
    own = model.state_dict()
    assert set(report.mapped) == set(own)
    assert all(tuple(own[k].shape) == tuple(v.shape) for k, v in report.mapped.items())


def test_infer_kind():
    state = {"net.dec.0.block0.attn.qkv.weight": torch.zeros(1), "net.vol_decoder.norm.weight": torch.zeros(1)}
    assert infer_kind(state) == "gd-object"
    assert infer_kind(state, {"model": {"enable_residual_attribute": True}}) == "gd-object-residual"
    assert infer_kind({"encoder.depth_predictor.to_gaussians.0.weight": torch.zeros(1)}) == "mvsplat"
    assert infer_kind({"encoder.backbone.backbone.conv1.weight": torch.zeros(1),
                       "point_decoder.dec.0.head.feat2attr.0.weight": torch.zeros(1)}) == "gd-scene"
    with pytest.raises(ValueError, match="cannot infer the kind.*model.weight"):
        infer_kind({"model.weight": torch.zeros(1)})


@pytest.fixture(scope="module")
def mvsplat():
    tensors, meta = load_fixture("mvsplat_small")
    return weights(tensors), mvsplat_config(meta)


def test_strict_report_names_every_problem(mvsplat):
    state, config = mvsplat
    state = dict(state)
    state["encoder.depth_predictor.extra.weight"] = torch.zeros(3)
    missing = "encoder.depth_predictor.proj_feature.bias"
    del state[missing]
    state["encoder.depth_predictor.to_disparity.2.bias"] = torch.zeros(5)
    with pytest.raises(ValueError) as err:
        load_official_checkpoint(state, official_config=config)
    message = str(err.value)
    assert "encoder.depth_predictor.extra.weight" in message
    assert "backbone.proj_feature.bias" in message
    assert "encoder.depth_predictor.to_disparity.2.bias (5,)" in message


def test_non_strict_keeps_initialisation_but_not_unknown_keys(mvsplat):
    state, config = mvsplat
    partial = {k: v for k, v in state.items() if not k.startswith("encoder.backbone.")}
    model = load_official_checkpoint(partial, official_config=config, strict=False)
    loaded = model.state_dict()["backbone.proj_feature.weight"]
    assert torch.equal(loaded, state["encoder.depth_predictor.proj_feature.weight"])
    with pytest.raises(ValueError, match="unknown official tensors"):
        load_official_checkpoint({**partial, "encoder.nothing": torch.zeros(1)}, official_config=config, strict=False)


def test_lightning_checkpoint_file(tmp_path, mvsplat):
    state, config = mvsplat
    path = tmp_path / "re10k.ckpt"
    torch.save({"epoch": 3, "global_step": 10, "state_dict": {**state, "losses.1.lpips.w": torch.zeros(2)}}, path)
    assert set(read_official_state_dict(path)) == set(state) | {"losses.1.lpips.w"}
    model = load_official_checkpoint(path, official_config=config)
    assert model.config.densify is False
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(FileNotFoundError, match="no weight file"):
        load_official_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.ckpt: cannot read"):
        load_official_checkpoint(tmp_path / "bad.ckpt")


def test_object_and_scene_map_without_loss():
    tensors, meta = load_fixture("object_small")
    report = map_state_dict(weights(tensors), "gd-object")
    assert sorted(report.dropped) == ["net.group_centers", "net.volume_grid"] and not report.unknown
    scene, scene_meta = load_fixture("scene_decoder_small")
    report = map_state_dict(weights(scene), "gd-scene")
    assert all(k.startswith("densifier.layers.") for k in report.mapped) and not report.unknown
    assert object_config(meta)["model"]["timm_kwargs"]["embed_dim"] == 64
    assert scene_config(scene_meta, load_fixture("mvsplat_small")[1])["model"]["decoder"]["grid_size"] == 0.01


def test_head_permutations():
    p = densifier_head_permutation(1)  # official [R0..R3 G0..G3 B0..B3 | o | s s s | x y z w]
    assert p[:6].tolist() == [0, 4, 8, 1, 5, 9] and p[12:].tolist() == [12, 13, 14, 15, 19, 16, 17, 18]
    q = mvsplat_head_permutation(0)  # [dx dy | s s s | x y z w | R G B]
    assert q.tolist() == [0, 1, 2, 3, 4, 8, 5, 6, 7, 9, 10, 11]
    assert sorted(densifier_head_permutation(4).tolist()) == list(range(83))


@pytest.mark.parametrize("section,key,value,match", [
    ("model", "K", 2, "model.K = 2"),
    ("model", "n_offset_groups", 16, "n_offset_groups = 16"),
    ("model", "dec_num_head", [20, 16], "dec_channels / dec_num_head"),
    ("model", "enable_absolute_pe", True, "enable_absolute_pe"),
    ("model", "encoder_backbone", "resnet50", "encoder_backbone"),
])
def test_object_config_errors(section, key, value, match):
    from gdensify.models.official import released_official_config

    config = released_official_config("gd-object")
    config[section][key] = value
    with pytest.raises(ValueError, match=re.escape(match)):
        translate_config("gd-object", config)


def test_scene_config_errors():
    from gdensify.models.official import released_official_config

    config = released_official_config("mvsplat")
    config["model"]["encoder"]["opacity_mapping"] = {"initial": 0.0, "final": 1.0, "warm_up": 10}
    with pytest.raises(ValueError, match="opacity_mapping"):
        translate_config("mvsplat", config)
    config = released_official_config("gd-scene")
    config["model"]["decoder"]["order"] = ["hilbert", "z"]
    with pytest.raises(ValueError, match="model.decoder.order"):
        translate_config("gd-scene", config)
    with pytest.raises(ValueError, match="unknown official checkpoint kind"):
        translate_config("lara")


def test_released_translation_values():
    obj = translate_config("gd-object").model
    assert obj.densifier.grid_size == pytest.approx(1 / 64) and obj.densifier.head_dim == 8
    assert obj.densifier.keep_ratios == (0.8, 1.0) and obj.selection.k == 12_000
    res = translate_config("gd-object-residual").model.densifier
    assert (res.mask, res.head_before_split, res.residual_attributes, res.coord_scale) == ("softmax", True, True, 2.0)
    scene = translate_config("gd-scene").model
    assert scene.densifier.channels == (320, 256, 128) and scene.densifier.keep_ratios == (0.5, 0.8, 1.0)
    assert scene.backbone.conditioning.width == 160 and scene.selection.k == 30_000 and scene.densifier.offset_scale == 0.1


def test_defaults_unchanged():
    """Our presets keep today's behaviour; the released switches are opt-in."""
    for name in ("paper_object", "paper_scene", "tiny"):
        cfg = DensifierConfig.preset(name)
        assert (cfg.serialization_ties, cfg.cpe_duplicates) == ("stable", "mean")
    for cfg in (MVSplatConfig.preset("paper"), MVSplatConfig.preset("tiny")):
        assert (cfg.window_mask, cfg.cost_volume_grid, cfg.upsample_align_corners, cfg.sh_rotation) == \
            ("exact", "centers", False, "exact")
    with pytest.raises(ValueError, match="cpe_duplicates"):
        DensifierConfig(cpe_duplicates="gpu")
    with pytest.raises(ValueError, match="sh_rotation"):
        MVSplatConfig(sh_rotation="wigner")


def test_missing_decoder_key_is_named():
    from gdensify.models.official import released_official_config

    config = released_official_config("gd-scene")
    del config["model"]["decoder"]["upscale_factor"]
    with pytest.raises(ValueError, match=r"model\.decoder\.upscale_factor is missing"):
        translate_config("gd-scene", config)


def test_convert_to_gdensify_checkpoint(tmp_path, mvsplat):
    from gdensify.models.loading import load_model
    from gdensify.models.official import convert_official_checkpoint

    state, config = mvsplat
    out = convert_official_checkpoint(state, tmp_path / "mvsplat.safetensors", official_config=config)
    model, checkpoint = load_model(out)
    assert checkpoint.metadata["gdensify.official_kind"] == "mvsplat"
    assert model.config.backbone.sh_rotation == "e3nn" and model.densifier is None
    direct = load_official_checkpoint(state, official_config=config)
    for name, value in direct.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    with pytest.raises(ValueError, match="already exists"):
        convert_official_checkpoint(state, out, official_config=config)
    tensors, meta = load_fixture("object_small")
    out = convert_official_checkpoint(weights(tensors), tmp_path / "object.safetensors",
                                      official_config=object_config(meta))
    model, _ = load_model(out)
    assert model.config.densifier.cpe_duplicates == "spconv_cpu" and model.config.selection.k == 200

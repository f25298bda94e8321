"""Published checkpoints of the official code: key mapping, config translation and loading.

Four kinds of official checkpoints are understood:

- ``gd-object`` / ``gd-object-residual``: the GD object `Network` (LaRa backbone + densifier; Lightning prefix
  ``net.``), the released ``epoch=49.ckpt`` and ``epoch=49_residual.ckpt``. Both have the same keys: the residual
  variant is told apart only by its config (``enable_residual_attribute``);
- ``gd-scene``: the scene branch's model (``encoder.*`` = MVSplat, ``point_decoder.*``, ``mlp1``, ``norm``,
  ``cross_att``, ``mlp2``), ``fast_model.ckpt`` / ``final_model.ckpt``;
- ``mvsplat``: MVSplat's ``EncoderCostVolume`` (``encoder.*``), ``re10k.ckpt`` / ``acid.ckpt``; built as the
  coarse-only scene model.

Pieces (each usable alone):

- key mapping official → ours (`map_state_dict`): the ``net.`` prefix, ``dec.{s}.block{b}`` →
  ``densifier.layers.{s}.blocks.{b}``, MVSplat's module names (`MVSPLAT_RULES`), the scene conditioning names;
  the object model's two persistent grid buffers (``volume_grid``, ``group_centers``) and the training losses'
  networks (``losses.*``) are dropped explicitly;
- head layouts: the released scene densifier's HEAD and MVSplat's Gaussian head write the SH channel-major
  ``(3, K)`` and the quaternion as xyzw; ours are coefficient-major ``(K, 3)`` and wxyz. The rows of those
  heads' last layers are permuted at load time (`densifier_head_permutation`, `mvsplat_head_permutation`); the
  densifier's residual attribute sums are linear, so the permutation is exact;
- config translation from the official YAML-structured dict (`translate_config`; `released_official_config` gives
  the released paper-size dicts), with every released-code behaviour switched on: densifier
  ``norm="layernorm"``, ``serialization_ties="released"``, ``cpe_duplicates="spconv_cpu"``; MVSplat's
  `MVSplatConfig.released` switches (additive window mask, cost-volume pixel grid, ``align_corners=True``
  up-sampling, e3nn SH rotation);
- `infer_kind` from the keys, `check_state_dict` (one error naming unknown, missing and mismatched tensors),
  `load_official_checkpoint` (the model, eval mode, float32), `convert_official_checkpoint` (a gdensify
  checkpoint file) and `decode_points` (the released scene `PointDecoder.forward`: densifier + MVSplat's adapter
  in one camera).

Not reproduced here: the released object model's renderer rules (SH view direction from −t_c2w, tile rectangle,
radius rule, near-only culling, [0, 1] clamp) belong to the renderer and the model pipeline; flash-attn's fp16
attention runs in fp32; ``shuffle_orders`` is honoured in training only (the released code also shuffles the
curves at test time, with its own random draws).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn

from ..cameras import Cameras
from ..densify import DensifierConfig, attributes_to_gaussians
from ..densify.selection import SelectionConfig
from ..gaussians import Gaussians
from ..io.weights import read_state_dict
from ..render.rules import RasterRules
from .lara import LaRaConfig
from .mvsplat import MVSplatConfig
from .view_tokens import ConditioningConfig
from .vit import ViTConfig

KINDS = ("gd-object", "gd-object-residual", "gd-scene", "mvsplat")

# ---------------------------------------------------------------------------------------------- key mapping
#: official MVSplat encoder module names (without ``encoder.``) → ours (`MVSplatBackbone`), first match wins.
MVSPLAT_RULES: tuple[tuple[str, str], ...] = (
    ("backbone.backbone.", "cnn."),
    ("backbone.transformer.", "transformer."),
    ("depth_predictor.corr_refine_net.0.", "cost_volume_refine.stem.0."),
    ("depth_predictor.corr_refine_net.1.", "cost_volume_refine.stem.1."),
    ("depth_predictor.corr_refine_net.3.", "cost_volume_refine.unet."),
    ("depth_predictor.corr_refine_net.4.", "cost_volume_out."),
    ("depth_predictor.regressor_residual.", "cost_volume_residual."),
    ("depth_predictor.depth_head_lowres.", "depth_head."),
    ("depth_predictor.upsampler.0.", "upsampler."),
    ("depth_predictor.proj_feature.", "proj_feature."),
    ("depth_predictor.refine_unet.0.", "depth_refine.stem.0."),
    ("depth_predictor.refine_unet.1.", "depth_refine.stem.1."),
    ("depth_predictor.refine_unet.3.", "depth_refine.unet."),
    ("depth_predictor.to_gaussians.", "gaussian_head."),
    ("depth_predictor.to_disparity.", "disparity_head."),
)
#: scene conditioning modules of the official scene model → ours (`GDModel.conditioning`).
SCENE_CONDITIONING_RULES: tuple[tuple[str, str], ...] = (
    ("mlp1.", "conditioning.project."),
    ("norm.", "conditioning.norm."),
    ("cross_att.", "conditioning.attention."),
    ("mlp2.", "conditioning.mlp."),
)
#: official tensors that have no counterpart and are dropped on purpose.
OBJECT_DROPPED = ("volume_grid", "group_centers")  # persistent grid buffers, recomputed from the config
DROPPED_PREFIXES = ("losses.",)  # training-loss networks (LPIPS VGG) stored next to the model


def densifier_key(key: str) -> str | None:
    """``dec.{s}.block{b}.X`` → ``layers.{s}.blocks.{b}.X``, ``dec.{s}.{up,mask,head}.X`` →
    ``layers.{s}.{up,mask,head}.X``; None for other keys."""
    match = re.fullmatch(r"dec\.(\d+)\.(block(\d+)|up|mask|head)\.(.+)", key)
    if match is None:
        return None
    layer, module, block, rest = match.groups()
    inner = f"blocks.{block}" if block is not None else module
    return f"layers.{layer}.{inner}.{rest}"


def mvsplat_key(key: str) -> str | None:
    """An official MVSplat encoder key (without ``encoder.``) → our `MVSplatBackbone` name; None if unknown."""
    for old, new in MVSPLAT_RULES:
        if key.startswith(old):
            ours = new + key[len(old):]
            if ".unet." in ours:  # LDM U-Net internals
                ours = ours.replace(".skip_connection.", ".skip.").replace(".middle_block.2.", ".middle_block.1.")
            return ours
    return None


def official_key(key: str, kind: str) -> str | None:
    """Our parameter name for one official key of a checkpoint of `kind`; None when no rule applies (keys to drop
    are recognised by `is_dropped`)."""
    if kind in ("gd-object", "gd-object-residual"):
        name = key[len("net."):] if key.startswith("net.") else key
        dec = densifier_key(name)
        if dec is not None:
            return "densifier." + dec
        if name.startswith(("img_encoder.", "dir_norm.", "view_embed", "vol_decoder.", "decoder.")):
            return "backbone." + name
        return None
    if kind == "mvsplat":
        if key.startswith("encoder."):
            inner = mvsplat_key(key[len("encoder."):])
            return None if inner is None else "backbone." + inner
        return None
    if kind == "gd-scene":
        if key.startswith("encoder."):
            inner = mvsplat_key(key[len("encoder."):])
            return None if inner is None else "backbone." + inner
        if key.startswith("point_decoder."):
            dec = densifier_key(key[len("point_decoder."):])
            return None if dec is None else "densifier." + dec
        for old, new in SCENE_CONDITIONING_RULES:
            if key.startswith(old):
                return new + key[len(old):]
        return None
    raise ValueError(f"unknown official checkpoint kind {kind!r}; expected one of {KINDS}")


def is_dropped(key: str, kind: str) -> bool:
    """True for official tensors that are dropped on purpose (grid buffers, loss networks)."""
    if key.startswith(DROPPED_PREFIXES):
        return True
    if kind in ("gd-object", "gd-object-residual"):
        name = key[len("net."):] if key.startswith("net.") else key
        return name in OBJECT_DROPPED
    return False


# ---------------------------------------------------------------------------------------------- head layouts
def densifier_head_permutation(sh_degree: int) -> Tensor:
    """Row permutation p with ours[i] = official[p[i]] for the scene densifier HEAD's outputs: official
    [SH (channel-major, c·K + k) | opacity | scale 3 | quaternion xyzw] → ours [SH (k·3 + c) | opacity | scale 3 |
    quaternion wxyz]."""
    k = (sh_degree + 1) ** 2
    sh = [c * k + j for j in range(k) for c in range(3)]
    rest = [3 * k, 3 * k + 1, 3 * k + 2, 3 * k + 3]
    quat = [3 * k + 4 + i for i in (3, 0, 1, 2)]
    return torch.tensor(sh + rest + quat)


def mvsplat_head_permutation(sh_degree: int, pixel_offsets: bool = True) -> Tensor:
    """Row permutation p with ours[i] = official[p[i]] for MVSplat's Gaussian head: official [offset 2 | scale 3 |
    quaternion xyzw | SH channel-major] → ours [offset 2 | scale 3 | quaternion wxyz | SH (k·3 + c)]."""
    k = (sh_degree + 1) ** 2
    o = 2 if pixel_offsets else 0
    quat = [o + 3 + i for i in (3, 0, 1, 2)]
    sh = [o + 7 + c * k + j for j in range(k) for c in range(3)]
    return torch.tensor(list(range(o + 3)) + quat + sh)


def _permute_heads(mapped: dict[str, Tensor], kind: str, config: Any) -> None:
    """Apply the head-layout permutations in place (scene densifier HEADs, MVSplat's Gaussian head)."""
    if kind in ("gd-scene", "mvsplat"):
        backbone = config.backbone
        perm = mvsplat_head_permutation(backbone.sh_degree, backbone.pixel_offsets)
        for name in ("backbone.gaussian_head.2.weight", "backbone.gaussian_head.2.bias"):
            if name in mapped:
                mapped[name] = mapped[name][perm]
    if kind == "gd-scene" and config.densify:
        perm = densifier_head_permutation(config.densifier.sh_degree)
        for name in list(mapped):
            if re.fullmatch(r"densifier\.layers\.\d+\.head\.feat2attr\.2\.(weight|bias)", name):
                mapped[name] = mapped[name][perm]


# ---------------------------------------------------------------------------------------------- report
@dataclass
class MappingReport:
    """What `map_state_dict` did with every official tensor: `mapped` (our name → tensor), `sources` (our name →
    official name), `dropped` (official names dropped on purpose) and `unknown` (official names no rule covers)."""

    mapped: dict[str, Tensor] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def map_state_dict(state: Mapping[str, Tensor], kind: str) -> MappingReport:
    """Rename every tensor of an official state dict of `kind` (no layout permutation; `load_official_checkpoint`
    applies those)."""
    if kind not in KINDS:
        raise ValueError(f"unknown official checkpoint kind {kind!r}; expected one of {KINDS}")
    report = MappingReport()
    for key, value in state.items():
        if is_dropped(key, kind):
            report.dropped.append(key)
            continue
        ours = official_key(key, kind)
        if ours is None:
            report.unknown.append(key)
        elif ours in report.mapped:
            raise ValueError(f"official keys {report.sources[ours]!r} and {key!r} both map to {ours!r}")
        else:
            report.mapped[ours] = value
            report.sources[ours] = key
    return report


def check_state_dict(model: nn.Module, report: MappingReport, strict: bool = True, source: str = "checkpoint") -> None:
    """Raise one ValueError naming every unknown official key, every model tensor the checkpoint lacks (when
    `strict`) and every shape mismatch; returns silently when the mapped tensors fit the model."""
    own = model.state_dict()
    unexpected = [report.sources[k] for k in report.mapped if k not in own]
    mismatched = [f"{report.sources[k]} {tuple(v.shape)} vs {k} {tuple(own[k].shape)}"
                  for k, v in report.mapped.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = sorted(set(own) - set(report.mapped)) if strict else []
    problems = []
    if report.unknown or unexpected:
        names = sorted(report.unknown + unexpected)
        problems.append(f"{len(names)} unknown official tensors {_first(names)}")
    if missing:
        problems.append(f"{len(missing)} model tensors missing from it {_first(missing)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches (official vs ours) {_first(mismatched)}")
    if problems:
        raise ValueError(f"{source}: does not match the model: " + "; ".join(problems))


def _first(names: list[str], n: int = 8) -> str:
    return "[" + ", ".join(names[:n]) + (", ..." if len(names) > n else "") + "]"


# ---------------------------------------------------------------------------------------------- kinds
def infer_kind(state: Mapping[str, Tensor], official_config: Mapping[str, Any] | None = None) -> str:
    """The kind of an official state dict from its keys (and, for objects, ``enable_residual_attribute`` of the
    official config, since both object checkpoints have the same keys)."""
    keys = list(state)
    has = lambda *prefixes: any(k.startswith(prefixes) for k in keys)  # noqa: E731
    if has("net.vol_decoder.", "net.dec.", "vol_decoder.", "dec.") and not has("point_decoder."):
        model = (official_config or {}).get("model", {}) or {}
        return "gd-object-residual" if model.get("enable_residual_attribute", False) else "gd-object"
    if has("point_decoder.", "cross_att.", "mlp1."):
        return "gd-scene"
    if has("encoder.depth_predictor.", "encoder.backbone."):
        return "mvsplat"
    raise ValueError(f"cannot infer the kind of an official checkpoint from its keys (first keys: {_first(keys, 5)});"
                     f" pass kind= one of {KINDS}")


# ---------------------------------------------------------------------------------------------- configs
def released_official_config(kind: str) -> dict[str, Any]:
    """The official config dict (official key names) of the released paper-size checkpoint of `kind`."""
    if kind in ("gd-object", "gd-object-residual"):
        model = dict(
            encoder_backbone="vit_base_patch16_224.dino", vol_feat_reso=16, vol_embedding_reso=32,
            embedding_dim=256, num_layers=12, num_heads=16, n_groups=[16], n_offset_groups=32,
            vol_embedding_out_dim=80, view_embed_dim=32, sh_degree=1, K=1, dec_channels=[160, 256],
            dec_depths=[2, 2], dec_num_head=[20, 32], dec_patch_size=[48, 48], upscale_factor=[2, 4],
            non_leaf_ratio=[0.8], stride=[2], mlp_ratio=4, qkv_bias=True, drop_path=0.3,
            enable_upscale_drop_path=True, n_frequencies=15, order=["z", "z-trans", "hilbert", "hilbert-trans"],
            shuffle_orders=True, k_num=12_000, temperature=1.0, enable_flash=True, use_mask=True,
            mask_sampling_type="topk", enable_absolute_pe=False, enable_rpe=False,
            enable_residual_attribute=kind == "gd-object-residual")
        return {"n_views": 4, "model": model, "test_dataset": {"img_size": [512, 512]}}
    encoder = dict(
        name="costvolume", d_feature=128, num_depth_candidates=128, costvolume_unet_feat_dim=128,
        costvolume_unet_channel_mult=[1, 1, 1], costvolume_unet_attn_res=[4], depth_unet_feat_dim=32,
        depth_unet_attn_res=[16], depth_unet_channel_mult=[1, 1, 1, 1, 1], downscale_factor=4,
        multiview_trans_attn_split=2, gaussians_per_pixel=1, num_surfaces=1,
        gaussian_adapter=dict(gaussian_scale_min=0.5, gaussian_scale_max=15.0, sh_degree=4),
        opacity_mapping=dict(initial=0.0, final=0.0, warm_up=1), wo_depth_refine=False, wo_cost_volume=False,
        wo_backbone_cross_attn=False, wo_cost_volume_refine=False, use_epipolar_trans=False)
    dataset = {"image_shape": [256, 256], "near": 1.0, "far": 100.0}
    if kind == "mvsplat":
        return {"model": {"encoder": encoder}, "dataset": dataset}
    if kind == "gd-scene":
        decoder = dict(
            dec_channels=[320, 256, 128], dec_depths=[2, 2, 2], dec_num_head=[40, 32, 16],
            dec_patch_size=[48, 48, 48], upscale_factor=[2, 2, 2], non_leaf_ratio=[0.5, 0.8], stride=[2, 2],
            mlp_ratio=4, qkv_bias=True, drop_path=0.3, enable_upscale_drop_path=True, n_frequencies=15,
            order=["z", "z-trans", "hilbert", "hilbert-trans"], shuffle_orders=True, sh_degree=4, grid_size=0.01,
            k_num=30_000, enable_absolute_pe=False)
        return {"model": {"encoder": encoder, "decoder": decoder}, "dataset": dataset}
    raise ValueError(f"unknown official checkpoint kind {kind!r}; expected one of {KINDS}")


@dataclass
class TranslatedConfig:
    """Our configs for an official checkpoint: `model` is a `GDConfig` (LaRa backbone for the object kinds,
    MVSplat for the scene kinds; ``densify=False`` for ``mvsplat``). `near`, `far` and `image_size` (H, W) are the official dataset
    values (scene kinds) or the object test resolution, for information: our models take near/far from the
    cameras."""

    kind: str
    model: Any
    image_size: tuple[int, int]
    near: float | None = None
    far: float | None = None


def _get(section: Mapping[str, Any], key: str, default: Any, where: str) -> Any:
    if not isinstance(section, Mapping):
        raise ValueError(f"official config: {where} must be a mapping, got {type(section).__name__}")
    return section.get(key, default)


def _need(section: Mapping[str, Any], key: str, where: str) -> Any:
    value = _get(section, key, None, where)
    if value is None:
        raise ValueError(f"official config: {where}.{key} is missing")
    return value


def _require(value: Any, expected: Any, where: str) -> None:
    if value != expected:
        raise ValueError(f"official config: {where} = {value!r} is not supported (gdensify reproduces {expected!r})")


def _same(values: list[Any], where: str) -> Any:
    if len(set(values)) != 1:
        raise ValueError(f"official config: {where} = {values} must be equal in every layer")
    return values[0]


def _densifier_config(section: Mapping[str, Any], where: str, in_channels: int, grid_size: float,
                      sh_degree: int, **fixed: Any) -> DensifierConfig:
    """The shared decoder keys (``dec_*``, ``upscale_factor``, ``non_leaf_ratio``, ...) → `DensifierConfig` with
    the released behaviours switched on."""
    channels = [int(c) for c in _need(section, "dec_channels", where)]
    layers = len(channels)
    heads = [int(h) for h in _need(section, "dec_num_head", where)]
    if len(heads) != layers:
        raise ValueError(f"official config: {where}.dec_num_head has {len(heads)} entries for {layers} layers")
    head_dim = _same([c // h for c, h in zip(channels, heads)], f"{where}.dec_channels / dec_num_head")
    if any(c % h for c, h in zip(channels, heads)):
        raise ValueError(f"official config: {where}.dec_channels {channels} not divisible by dec_num_head {heads}")
    ratios = [float(r) for r in _need(section, "non_leaf_ratio", where)]
    if len(ratios) < layers - 1:
        raise ValueError(f"official config: {where}.non_leaf_ratio {ratios} needs {layers - 1} entries")
    strides = [int(s) for s in _get(section, "stride", [2] * (layers - 1), where)]
    if any(s != 2 for s in strides):
        raise ValueError(f"official config: {where}.stride = {strides} is not supported (grids halve per layer)")
    for key, expected in (("enable_absolute_pe", False), ("enable_rpe", False), ("use_mask", True),
                          ("mask_sampling_type", "topk")):
        if key in section:
            _require(section[key], expected, f"{where}.{key}")
    return DensifierConfig(
        in_channels=in_channels, channels=tuple(channels),
        num_blocks=tuple(int(d) for d in _need(section, "dec_depths", where)),
        up_factors=tuple(int(f) for f in _need(section, "upscale_factor", where)),
        keep_ratios=tuple(ratios[: layers - 1]) + (1.0,), grid_size=grid_size, head_dim=head_dim,
        patch_size=_same([int(p) for p in _get(section, "dec_patch_size", [48] * layers, where)],
                         f"{where}.dec_patch_size"),
        mlp_ratio=float(_get(section, "mlp_ratio", 4, where)), qkv_bias=bool(_get(section, "qkv_bias", True, where)),
        drop_path=float(_get(section, "drop_path", 0.3, where)),
        upsample_drop_path=bool(_get(section, "enable_upscale_drop_path", True, where)),
        n_frequencies=int(_get(section, "n_frequencies", 15, where)), norm="layernorm", sh_degree=sh_degree,
        orders=tuple(_get(section, "order", ("z", "z-trans", "hilbert", "hilbert-trans"), where)),
        shuffle_orders=bool(_get(section, "shuffle_orders", True, where)), shuffle_orders_eval=False,
        serialization_ties="released", cpe_duplicates="spconv_cpu", **fixed)


def _vit_config(model: Mapping[str, Any]) -> ViTConfig:
    name = str(model.get("encoder_backbone", "vit_base_patch16_224.dino"))
    match = re.fullmatch(r"vit_(small|base|large)_patch(\d+)_(\d+)(\.\w+)?", name)
    if match is None:
        raise ValueError(f"official config: model.encoder_backbone = {name!r} is not a timm ViT gdensify supports")
    size, patch, img = match.group(1), int(match.group(2)), int(match.group(3))
    widths = {"small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}[size]
    extra = dict(model.get("timm_kwargs") or {})
    unknown = sorted(set(extra) - {"embed_dim", "depth", "num_heads"})
    if unknown:
        raise ValueError(f"official config: model.timm_kwargs {unknown} are not supported")
    return ViTConfig(img_size=img, patch_size=patch, embed_dim=int(extra.get("embed_dim", widths[0])),
                     depth=int(extra.get("depth", widths[1])), num_heads=int(extra.get("num_heads", widths[2])))


def translate_object_config(official: Mapping[str, Any], residual: bool | None = None) -> TranslatedConfig:
    """GD object config ``{"n_views", "model": {...}, "test_dataset": {"img_size": [H, W]}}`` → `GDConfig`."""
    from .gd import GDConfig  # noqa: PLC0415  (the pipeline module imports this one lazily)

    model = _get(official, "model", None, "config")
    if model is None:
        raise ValueError("official config: the 'model' section is missing")
    where = "model"
    if residual is None:
        residual = bool(model.get("enable_residual_attribute", False))
    _require(int(model.get("K", 1)), 1, f"{where}.K")
    size = [int(s) for s in _get(_get(official, "test_dataset", {}, "config") or {}, "img_size", [512, 512],
                                 "test_dataset")]
    reso = int(_get(model, "vol_embedding_reso", 32, where))
    offset_groups = int(_get(model, "n_offset_groups", reso, where))
    if offset_groups != reso:
        raise ValueError(f"official config: {where}.n_offset_groups = {offset_groups} must equal "
                         f"vol_embedding_reso = {reso} (gdensify bounds coarse offsets by half a Gaussian cell)")
    backbone = LaRaConfig(
        encoder=_vit_config(model), image_size=size[0], max_views=int(_get(official, "n_views", 4, "config")),
        view_embed_dim=int(_get(model, "view_embed_dim", 32, where)),
        feat_volume_size=int(_get(model, "vol_feat_reso", 16, where)), volume_size=reso,
        volume_dim=int(_get(model, "embedding_dim", 256, where)),
        volume_layers=int(_get(model, "num_layers", 12, where)),
        volume_heads=int(_get(model, "num_heads", 16, where)),
        groups=tuple(int(g) for g in _get(model, "n_groups", [16], where)),
        gaussian_feature_dim=int(_get(model, "vol_embedding_out_dim", 80, where)),
        sh_degree=int(_get(model, "sh_degree", 1, where)), fine_heads=16)
    if size[0] != size[1]:
        raise ValueError(f"official config: test_dataset.img_size = {size} must be square")
    cell = backbone.cell_size
    fixed: dict[str, Any] = dict(offset_scale=0.5, opacity_shift=backbone.opacity_shift,
                                 log_scale_shift=backbone.fine_log_scale_shift,
                                 mask_temperature=float(_get(model, "temperature", 1.0, where)))
    if residual:
        fixed.update(mask="softmax", head_before_split=True, residual_attributes=True, coord_scale=2.0)
    densifier = _densifier_config(model, where, backbone.feature_dim, cell, backbone.sh_degree, **fixed)
    selection = SelectionConfig.preset("released_object", k=int(_get(model, "k_num", 12_000, where)))
    config = GDConfig(backbone=backbone, densifier=densifier, selection=selection,
                      render_rules=RasterRules.gd_object_release(), render_near=0.2)
    return TranslatedConfig("gd-object-residual" if residual else "gd-object", config, (size[0], size[1]))


def translate_mvsplat_config(encoder: Mapping[str, Any], where: str = "model.encoder") -> MVSplatConfig:
    """MVSplat's ``model.encoder`` section (``costvolume``) → `MVSplatConfig.preset("released", ...)`."""
    for key, expected in (("downscale_factor", 4), ("gaussians_per_pixel", 1), ("num_surfaces", 1),
                          ("wo_depth_refine", False), ("wo_cost_volume", False), ("wo_backbone_cross_attn", False),
                          ("wo_cost_volume_refine", False), ("use_epipolar_trans", False)):
        if key in encoder:
            _require(encoder[key], expected, f"{where}.{key}")
    mapping = encoder.get("opacity_mapping") or {}
    if float(mapping.get("initial", 0.0)) != 0.0 or float(mapping.get("final", 0.0)) != 0.0:
        raise ValueError(f"official config: {where}.opacity_mapping = {dict(mapping)} is not supported "
                         "(gdensify reproduces initial = final = 0, the identity)")
    adapter = encoder.get("gaussian_adapter") or {}
    return MVSplatConfig.preset("released",
        d_feature=int(_get(encoder, "d_feature", 128, where)),
        num_depth_candidates=int(_get(encoder, "num_depth_candidates", 128, where)),
        costvolume_unet_channels=int(_get(encoder, "costvolume_unet_feat_dim", 128, where)),
        costvolume_unet_channel_mult=tuple(_get(encoder, "costvolume_unet_channel_mult", (1, 1, 1), where)),
        costvolume_unet_attn_levels=tuple(_get(encoder, "costvolume_unet_attn_res", (4,), where)),
        depth_unet_channels=int(_get(encoder, "depth_unet_feat_dim", 32, where)),
        depth_unet_channel_mult=tuple(_get(encoder, "depth_unet_channel_mult", (1, 1, 1, 1, 1), where)),
        depth_unet_attn_levels=tuple(_get(encoder, "depth_unet_attn_res", (16,), where)),
        attn_splits=int(_get(encoder, "multiview_trans_attn_split", 2, where)),
        sh_degree=int(adapter.get("sh_degree", 4)), scale_min=float(adapter.get("gaussian_scale_min", 0.5)),
        scale_max=float(adapter.get("gaussian_scale_max", 15.0)))


def translate_scene_config(official: Mapping[str, Any], densify: bool) -> TranslatedConfig:
    """MVSplat (`densify=False`) or GD scene config ``{"model": {"encoder", "decoder"}, "dataset"}`` →
    `GDConfig`."""
    from .gd import GDConfig  # noqa: PLC0415

    model = _get(official, "model", None, "config")
    if model is None or "encoder" not in model:
        raise ValueError("official config: the 'model.encoder' section is missing")
    backbone = translate_mvsplat_config(model["encoder"])
    dataset = _get(official, "dataset", {}, "config") or {}
    shape = tuple(int(s) for s in dataset.get("image_shape", (256, 256)))
    near, far = dataset.get("near"), dataset.get("far")
    kind = "gd-scene" if densify else "mvsplat"
    if not densify:
        config = GDConfig(backbone=backbone, densify=False)
        return TranslatedConfig(kind, config, shape, near, far)
    decoder = _get(model, "decoder", None, "model")
    if decoder is None:
        raise ValueError("official config: the 'model.decoder' section is missing (GD scene)")
    where = "model.decoder"
    order = tuple(decoder.get("order", ("z", "z-trans", "hilbert", "hilbert-trans")))
    if order != ("z", "z-trans", "hilbert", "hilbert-trans"):
        # the released PointDecoder serializes layers > 0 with the default list whatever `order` says
        raise ValueError(f"official config: {where}.order = {list(order)} is not supported (the released scene "
                         "decoder uses the default order list in every layer but the first)")
    width = int(_need(decoder, "dec_channels", where)[0]) // 2
    densifier = _densifier_config(
        decoder, where, 2 * width, float(_get(decoder, "grid_size", 0.01, where)), backbone.sh_degree,
        offset_scale=0.1, mask="softmax", head_before_split=True, residual_attributes=True, opacity_shift=0.0,
        log_scale_shift=0.0)
    selection = SelectionConfig.preset("released_scene", k=int(decoder.get("k_num", model.get("k_num", 30_000))))
    backbone = dataclasses.replace(backbone, conditioning=ConditioningConfig(width=width, heads=16), leaf_init="zero")
    config = GDConfig(backbone=backbone, densifier=densifier, selection=selection, densify=True)
    return TranslatedConfig(kind, config, shape, near, far)


def translate_config(kind: str, official_config: Mapping[str, Any] | None = None) -> TranslatedConfig:
    """Our configs for an official checkpoint of `kind`; `official_config` defaults to the released one."""
    if kind not in KINDS:
        raise ValueError(f"unknown official checkpoint kind {kind!r}; expected one of {KINDS}")
    official = official_config if official_config is not None else released_official_config(kind)
    if kind in ("gd-object", "gd-object-residual"):
        return translate_object_config(official, residual=kind == "gd-object-residual")
    return translate_scene_config(official, densify=kind == "gd-scene")


# ---------------------------------------------------------------------------------------------- loading
def read_official_state_dict(source: str | os.PathLike | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The tensors of an official checkpoint: a Lightning ``.ckpt`` (its ``state_dict``), a torch file holding a
    state dict, a ``.safetensors`` file (`io.weights.read_state_dict`, ``weights_only=True``), or an already loaded
    mapping."""
    if not isinstance(source, Mapping):
        return read_state_dict(source)
    state = source["state_dict"] if isinstance(source.get("state_dict"), Mapping) else source
    if not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError("state dict: does not hold a state dict of tensors")
    return dict(state)


def build_model(translated: TranslatedConfig) -> nn.Module:
    """Our model for translated configs (random weights)."""
    from .gd import GDModel  # noqa: PLC0415

    return GDModel(translated.model)


def mapped_state_dict(state: Mapping[str, Tensor], translated: TranslatedConfig) -> MappingReport:
    """`map_state_dict` plus the head-layout permutations of `translated`'s kind."""
    report = map_state_dict(state, translated.kind)
    _permute_heads(report.mapped, translated.kind, translated.model)
    return report


def load_official_checkpoint(source: str | os.PathLike | Mapping[str, Tensor], kind: str | None = None,
                             official_config: Mapping[str, Any] | None = None, strict: bool = True, *,
                             overrides: Sequence[str] = ()) -> nn.Module:
    """A gdensify model (eval mode, float32) computing what the official model of an official checkpoint computes.

    `kind` ∈ `KINDS` is inferred from the keys when None (`infer_kind`); `official_config` is the official
    config dict (default: the released one of that kind). Strict: every official tensor is used or dropped on
    purpose, and every model tensor is loaded; with ``strict=False`` model tensors the checkpoint lacks keep their
    initialisation (unknown keys and shape mismatches remain errors). `overrides` (`key=value` on our model
    config, e.g. `selection.method=random`) apply before the model is built."""
    where = "state dict" if isinstance(source, Mapping) else os.fspath(source)
    state = read_official_state_dict(source)
    kind = kind if kind is not None else infer_kind(state, official_config)
    translated = translate_config(kind, official_config)
    if overrides:
        from ..config import apply_overrides  # noqa: PLC0415

        translated = dataclasses.replace(translated, model=apply_overrides(translated.model, overrides))
    model = build_model(translated)
    report = mapped_state_dict(state, translated)
    check_state_dict(model, report, strict, where)
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in report.mapped.items()}, strict=False)
    return model.float().eval()


def convert_official_checkpoint(source: str | os.PathLike | Mapping[str, Tensor], output: str | os.PathLike,
                                kind: str | None = None, official_config: Mapping[str, Any] | None = None,
                                overwrite: bool = False) -> Path:
    """Write an official checkpoint as a gdensify checkpoint (`gdensify.io.save_checkpoint`: our weights and
    the translated config; model kind "gd"), readable by `gdensify.models.loading.load_model`.
    The official kind is stored as ``gdensify.official_kind`` metadata. Refuses to replace an existing file
    unless `overwrite`."""
    from ..config import to_dict  # noqa: PLC0415
    from ..io import save_checkpoint  # noqa: PLC0415

    output = Path(output)
    if output.exists() and not overwrite:
        raise ValueError(f"{output}: already exists (pass overwrite=True to replace it)")
    state = read_official_state_dict(source)
    kind = kind if kind is not None else infer_kind(state, official_config)
    model = load_official_checkpoint(state, kind, official_config)
    return save_checkpoint(output, model.state_dict(), "gd", to_dict(model.config),
                           extra={"gdensify.official_kind": kind})


# ---------------------------------------------------------------------------------------------- scene decoder
def decode_points(model: nn.Module, points: Float[Tensor, "N 3"], features: Float[Tensor, "N C"],
                  camera: Cameras) -> Gaussians:
    """The released scene `PointDecoder.forward`: the densifier of a GD scene model on one view's points and
    features (C = the densifier's input width), then MVSplat's adapter in `camera` (one view; scale from
    ‖mean − camera centre‖, quaternion and SH from camera to world axes, opacity logit = raw). Returns the fine
    Gaussians in the densifier's order (layer, then creation order)."""
    densifier = getattr(model, "densifier", None)
    backbone = getattr(model, "backbone", None)
    if densifier is None or backbone is None or not hasattr(backbone, "activate_attributes"):
        raise ValueError("decode_points needs a GD scene model with a densifier (built with densify=True)")
    if len(camera) != 1:
        raise ValueError(f"decode_points takes one camera, got {len(camera)}")
    cfg = densifier.config
    batch = torch.zeros(points.shape[0], dtype=torch.long, device=points.device)
    result = densifier(points, features, batch, num_objects=1)
    raw = attributes_to_gaussians(result.gaussians.means, result.attributes, cfg.sh_degree,
                                  opacity_shift=cfg.opacity_shift, log_scale_shift=0.0)
    c2w = camera.camera_to_world[0].to(raw.means)
    distance = (raw.means - c2w[:3, 3]).norm(dim=-1)
    log_scales, quats, sh = backbone.activate_attributes(raw.log_scales, raw.quats, raw.sh, distance, c2w,
                                                         camera.intrinsics[0].to(raw.means))
    return Gaussians(raw.means, quats, log_scales, raw.opacity_logits, sh)


__all__ = [
    "KINDS", "MappingReport", "TranslatedConfig", "build_model", "check_state_dict", "convert_official_checkpoint",
    "decode_points",
    "densifier_head_permutation", "infer_kind", "load_official_checkpoint", "map_state_dict", "mapped_state_dict",
    "mvsplat_head_permutation", "official_key", "read_official_state_dict", "released_official_config",
    "translate_config", "translate_mvsplat_config",
]

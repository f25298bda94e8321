"""Reconstruction models: the backbone contract and registry (`backbone`), the one GD pipeline (`gd`), the object
backbone (`lara`, image encoder `vit`), the scene backbone (`mvsplat`), the per-view tokens GD conditions on
(`view_tokens`), checkpoint loading (`loading`) and the published checkpoints (`official`)."""

from .backbone import BACKBONES, Backbone, Coarse, Conditioned, build_backbone, register_backbone
from .gd import PRESETS, GDConfig, GDModel
from .lara import LaRaBackbone, LaRaCoarse, LaRaConfig, LaRaRefined, load_official_state_dict, visible_masks
from .loading import initialise_from, load_model
from .mvsplat import MVSplatBackbone, MVSplatConfig, MVSplatOutput
from .official import decode_points, load_official_checkpoint
from .output import Reconstruction
from .view_tokens import ConditioningConfig, ViewConditioning
from .vit import ViTConfig, VisionTransformer, load_vit_weights

__all__ = [
    "BACKBONES", "Backbone", "Coarse", "Conditioned", "ConditioningConfig", "GDConfig", "GDModel", "LaRaBackbone",
    "LaRaCoarse", "LaRaConfig", "LaRaRefined", "MVSplatBackbone", "MVSplatConfig", "MVSplatOutput", "PRESETS",
    "Reconstruction", "ViTConfig", "ViewConditioning", "VisionTransformer", "build_backbone", "decode_points",
    "initialise_from", "load_model", "load_official_checkpoint", "load_official_state_dict", "load_vit_weights",
    "register_backbone", "visible_masks",
]

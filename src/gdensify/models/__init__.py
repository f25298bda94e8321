"""Reconstruction models: image encoder (`vit`), object backbone (`lara`), scene backbone (`mvsplat`), and the
object- and scene-level GD models (`object_gd`, `scene_gd`: backbone + selection + densifier)."""

from .lara import (
    LaRaBackbone,
    LaRaCoarse,
    LaRaConfig,
    LaRaRefined,
    format_parameter_counts,
    load_official_state_dict,
    parameter_counts,
    visible_masks,
)
from .mvsplat import MVSplatBackbone, MVSplatConfig, MVSplatOutput
from .object_gd import ObjectGD, ObjectGDConfig
from .official import decode_points, load_official_checkpoint
from .output import Reconstruction
from .scene_gd import SceneGD, SceneGDConfig
from .vit import ViTConfig, VisionTransformer, WeightLoadingError, load_vit_weights

__all__ = [
    "LaRaBackbone", "LaRaCoarse", "LaRaConfig", "LaRaRefined", "MVSplatBackbone", "MVSplatConfig", "MVSplatOutput",
    "ObjectGD", "ObjectGDConfig", "Reconstruction", "SceneGD", "SceneGDConfig", "ViTConfig", "VisionTransformer",
    "WeightLoadingError", "decode_points", "format_parameter_counts", "load_official_checkpoint",
    "load_official_state_dict", "load_vit_weights",
    "parameter_counts", "visible_masks",
]

"""Reconstruction models: image encoder (`vit`), object backbone (`lara`); the scene backbone and the composed
GD models live beside them (`mvsplat`, `object_gd`, `scene_gd`)."""

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
from .vit import ViTConfig, VisionTransformer, WeightLoadingError, load_vit_weights

__all__ = [
    "LaRaBackbone", "LaRaCoarse", "LaRaConfig", "LaRaRefined", "ViTConfig", "VisionTransformer",
    "WeightLoadingError", "format_parameter_counts", "load_official_state_dict", "load_vit_weights",
    "parameter_counts", "visible_masks",
]

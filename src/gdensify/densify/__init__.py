"""Generative Densification: gradient-based selection of coarse Gaussians and the densifier that turns their
features into fine Gaussians (serialized point transformer, UP / SPLIT / HEAD layers)."""

from .config import DensifierConfig
from .densifier import DensifierResult, GenerativeDensifier, LayerStats, count_parameters, merge_with_coarse
from .layers import GaussianHead, LearnableMask, Upsample, attributes_to_gaussians, split_opacity_logits
from .point_transformer import Block, GlobalAdaptiveLayerNorm, PointBatch, SerializedAttention, SubmanifoldConv3d

__all__ = [
    "Block", "DensifierConfig", "DensifierResult", "GaussianHead", "GenerativeDensifier", "GlobalAdaptiveLayerNorm",
    "LayerStats", "LearnableMask", "PointBatch", "SerializedAttention", "SubmanifoldConv3d", "Upsample",
    "attributes_to_gaussians", "count_parameters", "merge_with_coarse", "split_opacity_logits",
]

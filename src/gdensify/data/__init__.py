"""Datasets as `ViewExample`s: readers, shims, view samplers and the `DATASETS` registry.

    batch            `ViewExample` (one item) and `ViewBatch` (what models consume)
    registry         `DATASETS` (name → `DataSource`), the `DataConfig` union, detection of a folder's layout
    source           `DataSource`: what a registry entry provides (training data, evaluation protocol, validation)
    blender          Blender / NeRF-synthetic layout reader and `SceneNormalization`
    blender_objects  `DATASETS["blender"]`: objects in the object model's frame (`protocol`)
    re10k            RealEstate10K / ACID chunk reader
    re10k_scenes     `DATASETS["re10k"]`
    shims            resize + centre crop with exact intrinsics, flip augmentation
    view_samplers    input / target view choice: object protocol, bounded sampler, evaluation index
    protocol         the object model's frame (camera distance, radius, field of view) and evaluation rules
The synthetic generators that write these layouts live in `gdensify.synthetic`.
"""

from .batch import ViewBatch, ViewExample
from .blender import (
    BlenderFormatError,
    ObjectViews,
    SceneNormalization,
    blender_splits,
    find_blender_objects,
    load_blender_split,
    read_blender_cameras,
)
from .blender_objects import BlenderDataConfig, BlenderObjects, EvaluationViews, evaluation_views
from .protocol import OBJECT_CAMERA_DISTANCE, OBJECT_FOV, OBJECT_RADIUS
from .re10k_scenes import RE10KDataConfig, RE10KScenes
from .registry import DATASETS, DataConfig, build_dataset, data_config_from_checkpoint, data_config_from_dict, \
    detect_dataset
from .source import DataSource
from .view_samplers import BoundedViewSampler, TrainingViewSampler, group_views, select_input_views

__all__ = [
    # examples and the registry
    "ViewExample", "ViewBatch", "DATASETS", "DataConfig", "DataSource", "build_dataset", "detect_dataset",
    "data_config_from_dict", "data_config_from_checkpoint", "BlenderDataConfig", "BlenderObjects",
    "RE10KDataConfig", "RE10KScenes",
    # object level: Blender layout and protocol
    "BlenderFormatError", "ObjectViews", "SceneNormalization", "blender_splits", "find_blender_objects",
    "load_blender_split", "read_blender_cameras", "EvaluationViews", "evaluation_views",
    "OBJECT_CAMERA_DISTANCE", "OBJECT_FOV", "OBJECT_RADIUS",
    # view samplers
    "TrainingViewSampler", "BoundedViewSampler", "group_views", "select_input_views",
]

"""Datasets and synthetic generators.

Object level (Blender / NeRF-synthetic layout): `load_blender_split`, `ObjectViews`, `SceneNormalization`,
`generate_objects` (procedural textured objects), and the view protocol (`evaluation_views`,
`select_input_views`, `TrainingViewSampler`). Scene level (RE10K chunks) lives in `re10k` / `synthetic_scenes`.
"""

from .blender import (
    BlenderFormatError,
    ObjectViews,
    SceneNormalization,
    blender_splits,
    find_blender_objects,
    load_blender_split,
    read_blender_cameras,
)
from .protocol import (
    EvaluationViews,
    TrainingViewSampler,
    evaluation_views,
    group_views,
    select_input_views,
)
from .synthetic_objects import OBJECT_CAMERA_DISTANCE, OBJECT_FOV, OBJECT_RADIUS, generate_objects, render_object

__all__ = [
    # object level: Blender layout
    "BlenderFormatError", "ObjectViews", "SceneNormalization", "blender_splits", "find_blender_objects",
    "load_blender_split", "read_blender_cameras",
    # object level: protocol
    "EvaluationViews", "TrainingViewSampler", "evaluation_views", "group_views", "select_input_views",
    # object level: generator
    "OBJECT_CAMERA_DISTANCE", "OBJECT_FOV", "OBJECT_RADIUS", "generate_objects", "render_object",
]

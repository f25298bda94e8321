"""Readers for posed captures in common layouts, and their conversion to the models' examples.

    capture = read_capture(folder)                 # auto-detects; format="colmap" etc. forces a reader
    obj = capture_to_object_example(capture)      # objects: ObjectCaptureExample (.example is a ViewExample)
    scene = capture_to_scene_example(capture)      # scenes: SceneCaptureExample (.example is a ViewExample)

Layouts: Blender (`transforms_train.json`), nerfstudio / instant-ngp (`transforms.json`), COLMAP (`sparse/0`),
LLFF (`poses_bounds.npy`), IDR / NeuS (`cameras_sphere.npz`); see `detect` and each reader's module.
"""

from .capture import Capture, CaptureFormatError, CaptureFrame
from .colmap import read_colmap
from .detect import FORMATS, detect_format, read_blender_capture, read_capture
from .distortion import LensDistortion, distort_points, undistort_image, undistort_points
from .llff import read_llff
from .nerfstudio import read_nerfstudio
from .neus import decompose_projection, read_neus
from .objects import ObjectCaptureExample, capture_to_object_example, estimate_object_center, square_frame
from .scenes import REFERENCE, SceneCaptureExample, capture_to_scene_example, estimate_scene_scale, scale_statistic

__all__ = [
    "Capture", "CaptureFrame", "CaptureFormatError", "FORMATS", "detect_format", "read_capture",
    "read_blender_capture", "read_nerfstudio", "read_colmap", "read_llff", "read_neus", "decompose_projection",
    "LensDistortion", "distort_points", "undistort_points", "undistort_image",
    "ObjectCaptureExample", "capture_to_object_example", "estimate_object_center", "square_frame",
    "SceneCaptureExample", "capture_to_scene_example", "estimate_scene_scale", "scale_statistic", "REFERENCE",
]

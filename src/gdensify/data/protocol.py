"""The object-level protocol: the camera setup the object model works in, and how its examples are chosen.

Frame. The object model reconstructs inside the fixed volume [-0.5, 0.5]³ (radius `OBJECT_RADIUS` around the
origin) from cameras at `OBJECT_CAMERA_DISTANCE` from the origin with field of view about `OBJECT_FOV`. A reader
brings any dataset into this frame with `blender.SceneNormalization.from_cameras` of the *input* cameras only (what
a user has at inference), applied to inputs and targets alike; the synthetic generator (`gdensify.synthetic`)
renders its objects in this frame directly.

Evaluation (deterministic, `blender_objects.evaluation_views`):
  * inputs: 4 views of the train split chosen by farthest-point sampling on the viewing directions
    (`view_samplers.select_input_views`: unit vectors from the object centre to the camera centres, angular
    distance), starting from frame 0 of the split, ties broken by the lower index. Frame 0 is the dataset's first
    view (the one that defines the model's frame in LaRa/GD's re-framing), so the rule needs no randomness and no
    clustering;
  * targets: every view of the test split, at the dataset's native resolution, composited on the same background.
  This replaces the unseeded KMeans of the official GSO evaluation loader, which made the input choice vary by run.

Training (`view_samplers.TrainingViewSampler`): the train split's views are grouped into `n_inputs` direction
clusters (farthest-point seeds + nearest assignment, deterministic); each example takes one random view per group,
in a random group order (as Gobjaverse's training loader does with its KMeans groups), plus `n_targets` random
target views, all drawn from a `torch.Generator`.
"""

from __future__ import annotations

__all__ = ["OBJECT_CAMERA_DISTANCE", "OBJECT_FOV", "OBJECT_RADIUS"]

OBJECT_CAMERA_DISTANCE = 2.0
"""Camera distance from the object centre (model units) that `SceneNormalization.from_cameras` targets."""
OBJECT_FOV = 0.6
"""Field of view (radians, horizontal = vertical) of the views the object model is trained on."""
OBJECT_RADIUS = 0.5
"""Radius of the ball around the origin that holds the object (inside the model volume [-0.5, 0.5]³)."""

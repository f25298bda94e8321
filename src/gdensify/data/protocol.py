"""Which views are inputs and which are targets: the object-level evaluation protocol and the training sampler.

Evaluation (deterministic, `evaluation_views`):
  * inputs: `n_inputs` (4) views of the train split chosen by farthest-point sampling on the viewing directions
    (unit vectors from the object centre to the camera centres; angular distance), starting from frame 0 of the
    split, ties broken by the lower index. Frame 0 is the dataset's first view (the one that defines the model's
    frame in LaRa/GD's re-framing), so the rule needs no randomness and no clustering.
  * targets: every view of the test split, at the dataset's native resolution, composited on the same background.
  * normalization: `SceneNormalization.from_cameras` of the *input* cameras only (what a user has at inference),
    applied to inputs and targets alike.
  This replaces the official GSO loader's unseeded KMeans (spec §5.2), which made the input choice vary by run.

Training (`TrainingViewSampler`): the train split's views are grouped into `n_inputs` direction clusters
(farthest-point seeds + nearest assignment, deterministic); each example takes one random view per group, in a
random group order (as Gobjaverse's training loader does with its KMeans groups), plus `n_targets` random target
views, all drawn from a `torch.Generator`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..cameras import Cameras
from .blender import ObjectViews, SceneNormalization, closest_point_to_axes, load_blender_split, read_blender_cameras
from .synthetic_objects import OBJECT_CAMERA_DISTANCE

__all__ = ["view_directions", "farthest_view_sampling", "select_input_views", "group_views", "TrainingViewSampler",
           "EvaluationViews", "evaluation_views"]


def view_directions(cameras: Cameras, center: Float[Tensor, "3"] | None = None) -> Float[Tensor, "V 3"]:
    """Unit vectors from `center` (default: the point closest to all optical axes) to each camera centre."""
    centres = cameras.centers.detach().double().cpu()
    if center is None:
        c2w = cameras.camera_to_world.detach().double().cpu()
        center = closest_point_to_axes(c2w[:, :3, 3], torch.nn.functional.normalize(c2w[:, :3, 2], dim=-1))
    return torch.nn.functional.normalize(centres - torch.as_tensor(center, dtype=torch.float64), dim=-1)


def farthest_view_sampling(directions: Float[Tensor, "V 3"], count: int, start: int = 0) -> list[int]:
    """Greedy farthest-point sampling by angle between unit directions; deterministic (ties → lower index)."""
    v = len(directions)
    if not 1 <= count <= v:
        raise ValueError(f"cannot choose {count} views out of {v}")
    if not 0 <= start < v:
        raise ValueError(f"start view {start} out of range 0..{v - 1}")
    d = directions.double()
    chosen = [start]
    min_angle = torch.arccos((d @ d[start]).clamp(-1, 1))
    for _ in range(count - 1):
        scores = min_angle.clone()
        scores[chosen] = -1.0
        best = int(torch.argmax(scores))  # argmax returns the first maximum: ties → lower index
        chosen.append(best)
        min_angle = torch.minimum(min_angle, torch.arccos((d @ d[best]).clamp(-1, 1)))
    return chosen


def select_input_views(cameras: Cameras, count: int = 4, start: int = 0) -> list[int]:
    """The protocol's input views: farthest-point sampling on viewing directions from frame `start` (0)."""
    return farthest_view_sampling(view_directions(cameras), count, start)


def group_views(cameras: Cameras, groups: int = 4) -> list[list[int]]:
    """Deterministic direction clusters: farthest-point seeds, each view assigned to the nearest seed (by angle)."""
    d = view_directions(cameras)
    seeds = farthest_view_sampling(d, groups)
    assign = torch.argmax(d @ d[seeds].T, dim=1)
    assign[seeds] = torch.arange(groups)  # every group holds at least its seed (duplicate directions)
    return [torch.nonzero(assign == g).flatten().tolist() for g in range(groups)]


class TrainingViewSampler:
    """Random input / target view indices for one training example.

    Inputs: one random view from each of `n_inputs` direction groups (`group_views`), in random group order, so
    inputs are spread around the object but vary. Targets: `n_targets` distinct random views of the whole split
    (inputs allowed, as in the official Gobjaverse loader) or, with `targets_exclude_inputs`, of the others."""

    def __init__(self, n_inputs: int = 4, n_targets: int = 4, targets_exclude_inputs: bool = False) -> None:
        if n_inputs < 1 or n_targets < 1:
            raise ValueError("TrainingViewSampler needs n_inputs >= 1 and n_targets >= 1")
        self.n_inputs, self.n_targets, self.exclude = n_inputs, n_targets, targets_exclude_inputs

    def __call__(self, cameras: Cameras, generator: torch.Generator | None = None) -> tuple[list[int], list[int]]:
        v = len(cameras)
        need = self.n_targets + (self.n_inputs if self.exclude else 0)
        if v < self.n_inputs or v < need:
            raise ValueError(f"{v} views are too few for {self.n_inputs} inputs and {self.n_targets} targets"
                             + (" (targets exclude inputs)" if self.exclude else ""))
        groups = group_views(cameras, self.n_inputs)
        order = torch.randperm(self.n_inputs, generator=generator).tolist()
        inputs = []
        for g in order:
            members = groups[g]
            inputs.append(members[int(torch.randint(len(members), (1,), generator=generator))])
        pool = [i for i in range(v) if not (self.exclude and i in inputs)]
        perm = torch.randperm(len(pool), generator=generator)[: self.n_targets].tolist()
        return inputs, [pool[i] for i in perm]


@dataclass
class EvaluationViews:
    """One object's evaluation example: `inputs` (chosen train views), `targets` (all test views)."""

    inputs: ObjectViews
    targets: ObjectViews
    input_indices: list[int]
    normalization: SceneNormalization
    name: str


def evaluation_views(
    root: str | os.PathLike, n_inputs: int = 4, input_resolution: int | tuple[int, int] | None = None,
    background: Sequence[float] = (1.0, 1.0, 1.0), target_distance: float | None = OBJECT_CAMERA_DISTANCE,
    target_fov: float | None = None, input_split: str = "train", target_split: str = "test",
) -> EvaluationViews:
    """The deterministic evaluation example of one Blender-layout object folder (see the module doc).

    input_resolution: the model's input size (None: native); targets always stay at the dataset's resolution.
    target_distance / target_fov: passed to `SceneNormalization.from_cameras`; target_distance None disables
    normalization (cameras stay in dataset units)."""
    root = Path(root)
    cams, _ = read_blender_cameras(root, input_split)
    idx = select_input_views(cams, n_inputs)
    norm = SceneNormalization.identity() if target_distance is None else SceneNormalization.from_cameras(
        Cameras(cams.world_to_camera[idx], cams.intrinsics[idx], cams.width, cams.height), target_distance,
        target_fov)
    inputs = load_blender_split(root, input_split, background=background, resolution=input_resolution,
                                normalization=norm, indices=idx)
    targets = load_blender_split(root, target_split, background=background, normalization=norm)
    return EvaluationViews(inputs, targets, idx, norm, root.name)

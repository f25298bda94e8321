"""Blender-layout object folders as `ViewExample`s: random views for training, the fixed protocol for evaluation.

Training items are `(object_index, example_seed)` pairs from `gdensify.training.sampling.StepSampler`; every random
choice of an example (its input and target views) comes from `example_seed`, so a batch is a pure function of the
sampler's output. Each example is normalised by `SceneNormalization.from_cameras` of its *input* cameras, exactly as
at evaluation (`protocol.evaluation_views`), so the model never sees dataset units.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from ..cameras import Cameras
from .batch import ViewExample
from .blender import SceneNormalization, find_blender_objects, load_blender_split, read_blender_cameras
from .protocol import TrainingViewSampler, evaluation_views
from .synthetic_objects import OBJECT_CAMERA_DISTANCE


class ObjectTrainingDataset(Dataset):
    """Random training examples from the `split` views of every object under `root`.

    Inputs and targets are drawn by `TrainingViewSampler` (inputs spread around the object, targets at random) and
    resized to `resolution`²; images are composited on `background`."""

    def __init__(self, root: str | os.PathLike | Sequence[str | os.PathLike], resolution: int, n_inputs: int = 4,
                 n_targets: int = 4, split: str = "train", background: Sequence[float] = (1.0, 1.0, 1.0),
                 target_distance: float = OBJECT_CAMERA_DISTANCE) -> None:
        roots = [root] if isinstance(root, (str, os.PathLike)) else list(root)
        self.objects = [p for r in roots for p in find_blender_objects(r)]
        self.sampler = TrainingViewSampler(n_inputs, n_targets)
        self.resolution, self.split, self.target_distance = resolution, split, target_distance
        self.background = tuple(float(x) for x in background)
        self._cameras: dict[int, Cameras] = {}

    def __len__(self) -> int:
        return len(self.objects)

    def cameras(self, index: int) -> Cameras:
        if index not in self._cameras:
            self._cameras[index] = read_blender_cameras(self.objects[index], self.split)[0]
        return self._cameras[index]

    def __getitem__(self, key: tuple[int, int]) -> ViewExample:
        index, seed = key
        root = self.objects[index]
        cameras = self.cameras(index)
        inputs, targets = self.sampler(cameras, torch.Generator().manual_seed(int(seed)))
        norm = SceneNormalization.from_cameras(cameras[inputs], self.target_distance)
        views = load_blender_split(root, self.split, background=self.background, resolution=self.resolution,
                                   normalization=norm, indices=inputs + targets)
        n = len(inputs)
        bg = torch.tensor(self.background)
        return ViewExample(views.images[:n], views.cameras[:n], views.images[n:], views.cameras[n:],
                           bg.expand(len(targets), 3).clone(), root.name, bg.clone())


class ObjectEvaluationDataset(Dataset):
    """The deterministic evaluation example of every object under `root` (`protocol.evaluation_views`): 4 spread
    train-split inputs at the model's `resolution`, every test-split view as a target at native resolution."""

    def __init__(self, root: str | os.PathLike, resolution: int, n_inputs: int = 4,
                 background: Sequence[float] = (1.0, 1.0, 1.0), target_distance: float = OBJECT_CAMERA_DISTANCE,
                 target_split: str = "test") -> None:
        self.objects: list[Path] = find_blender_objects(root)
        self.resolution, self.n_inputs, self.target_distance = resolution, n_inputs, target_distance
        self.background = tuple(float(x) for x in background)
        self.target_split = target_split

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, index: int) -> ViewExample:
        ev = evaluation_views(self.objects[index], self.n_inputs, self.resolution, self.background,
                              self.target_distance, target_split=self.target_split)
        bg = torch.tensor(self.background)
        return ViewExample(ev.inputs.images, ev.inputs.cameras, ev.targets.images, ev.targets.cameras,
                           bg.expand(len(ev.targets), 3).clone(), ev.name, bg.clone())

"""Blender-layout objects as a dataset (`DATASETS["blender"]`): random views for training, the fixed protocol for
evaluation, both as `ViewExample`s in the object model's frame (`gdensify.data.protocol`).

Training items are `(object_index, example_seed)` pairs from `gdensify.training.sampling.StepSampler`; every random
choice of an example (its input and target views) comes from `example_seed`, so a batch is a pure function of the
sampler's output. Each example is normalised by `SceneNormalization.from_cameras` of its *input* cameras, exactly as
at evaluation (`evaluation_views`), so the model never sees dataset units.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from torch.utils.data import Dataset

from ..cameras import Cameras, nearest_by_direction
from .batch import ViewExample
from .blender import (
    BlenderFormatError,
    ObjectViews,
    SceneNormalization,
    blender_splits,
    find_blender_objects,
    load_blender_split,
    read_blender_cameras,
)
from .protocol import OBJECT_CAMERA_DISTANCE
from .source import DataSource
from .view_samplers import TrainingViewSampler, select_input_views

__all__ = ["BlenderDataConfig", "BlenderObjects", "ObjectTrainingDataset", "ObjectEvaluationDataset",
           "EvaluationViews", "evaluation_views", "random_greys"]

TARGET_BACKGROUNDS = ("random_grey", "fixed")
GREYS = (0.0, 0.5, 1.0)  # the released recipe's training target backgrounds


def random_greys(count: int, generator: torch.Generator) -> Float[Tensor, "V 3"]:
    """`count` backgrounds, each a grey drawn uniformly from `GREYS` with `generator`."""
    pick = torch.randint(len(GREYS), (count,), generator=generator)
    return torch.tensor(GREYS)[pick, None].expand(count, 3).clone()


@dataclass
class BlenderDataConfig:
    """Blender-layout objects (`gdensify.data.blender`). Inputs are resized to `image_size`² (None: the model's
    input size, which the caller passes to `BlenderObjects`); targets keep their size."""

    name: Literal["blender"] = "blender"
    root: str = "data/objects/train"  # an object folder or a folder of them
    val_root: str | None = None  # evaluation-protocol objects validated at every epoch end (None: no validation)
    val_limit: int = 8  # at most this many validation objects
    n_inputs: int = 4
    n_targets: int = 4
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    image_size: int | None = None
    target_split: str = "test"  # evaluation targets; "train" departs from the protocol (the inputs are scored too)
    # Training targets' backgrounds. "random_grey" (the released GD recipe): every target view of an example on
    # its own grey drawn from {0, 0.5, 1} by the example's generator, which pins the rendered alpha down and
    # penalises floaters; "fixed": every view on `background`. Inputs and evaluation always use `background`.
    target_backgrounds: Literal["random_grey", "fixed"] = "random_grey"

    def __post_init__(self) -> None:
        if self.n_inputs < 1 or self.n_targets < 1 or self.val_limit < 1:
            raise ValueError("data.n_inputs, data.n_targets and data.val_limit must be >= 1")
        if any(not 0 <= c <= 1 for c in self.background):
            raise ValueError(f"data.background must be RGB in [0, 1], got {self.background}")
        if self.target_backgrounds not in TARGET_BACKGROUNDS:
            raise ValueError(f"data.target_backgrounds must be one of {TARGET_BACKGROUNDS}, got "
                             f"{self.target_backgrounds!r}")
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"data.image_size must be >= 8 or null, got {self.image_size}")


# ---------------------------------------------------------------------------------------------------- evaluation
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
    """The deterministic evaluation example of one Blender-layout object folder (`gdensify.data.protocol`).

    input_resolution: the model's input size (None: native); targets always stay at the dataset's resolution.
    target_distance / target_fov: passed to `SceneNormalization.from_cameras`; target_distance None disables
    normalization (cameras stay in dataset units)."""
    root = Path(root)
    cams, _ = read_blender_cameras(root, input_split)
    try:
        idx = select_input_views(cams, n_inputs)
    except ValueError as err:
        raise BlenderFormatError(f"{root}: {input_split} split: {err} (data.n_inputs = {n_inputs})") from None
    norm = SceneNormalization.identity() if target_distance is None else SceneNormalization.from_cameras(
        Cameras(cams.world_to_camera[idx], cams.intrinsics[idx], cams.width, cams.height), target_distance,
        target_fov)
    inputs = load_blender_split(root, input_split, background=background, resolution=input_resolution,
                                normalization=norm, indices=idx)
    targets = load_blender_split(root, target_split, background=background, normalization=norm)
    return EvaluationViews(inputs, targets, idx, norm, root.name)


# ---------------------------------------------------------------------------------------------------- datasets
class ObjectTrainingDataset(Dataset):
    """Random training examples from the `split` views of every object under `root`.

    Inputs and targets are drawn by `TrainingViewSampler` (inputs spread around the object, targets at random) and
    resized to `resolution`²; inputs are composited on `background`, targets on `background` too or, with
    `target_backgrounds="random_grey"`, each on a grey from {0, 0.5, 1} drawn after the views from the same
    example generator."""

    def __init__(self, root: str | os.PathLike | Sequence[str | os.PathLike], resolution: int, n_inputs: int = 4,
                 n_targets: int = 4, split: str = "train", background: Sequence[float] = (1.0, 1.0, 1.0),
                 target_distance: float = OBJECT_CAMERA_DISTANCE,
                 target_backgrounds: Literal["random_grey", "fixed"] = "random_grey") -> None:
        if target_backgrounds not in TARGET_BACKGROUNDS:
            raise ValueError(f"target_backgrounds must be one of {TARGET_BACKGROUNDS}, got {target_backgrounds!r}")
        roots = [root] if isinstance(root, (str, os.PathLike)) else list(root)
        self.objects = [p for r in roots for p in find_blender_objects(r)]
        self.sampler = TrainingViewSampler(n_inputs, n_targets)
        self.resolution, self.split, self.target_distance = resolution, split, target_distance
        self.background = tuple(float(x) for x in background)
        self.target_backgrounds = target_backgrounds
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
        generator = torch.Generator().manual_seed(int(seed))
        inputs, targets = self.sampler(cameras, generator)
        norm = SceneNormalization.from_cameras(cameras[inputs], self.target_distance)
        views = load_blender_split(root, self.split, background=self.background, resolution=self.resolution,
                                   normalization=norm, indices=inputs + targets)
        n = len(inputs)
        bg = torch.tensor(self.background)
        target_views = views.select(range(n, len(views)))
        if self.target_backgrounds == "random_grey":
            target_bg = random_greys(len(targets), generator)
            target_images = target_views.on_background(target_bg)
        else:
            target_bg, target_images = bg.expand(len(targets), 3).clone(), target_views.images
        return ViewExample(views.images[:n], views.cameras[:n], target_images, target_views.cameras, target_bg,
                           root.name, bg.clone(), torch.tensor(inputs), torch.tensor(targets), norm.invert_gaussians)


class ObjectEvaluationDataset(Dataset):
    """The deterministic evaluation example of every object under `root` (`evaluation_views`): `n_inputs` spread
    train-split inputs at the model's `resolution`, every `target_split` view as a target at native resolution.
    An object without the `target_split` split is an error naming it (nothing is scored in its place)."""

    def __init__(self, root: str | os.PathLike, resolution: int, n_inputs: int = 4,
                 background: Sequence[float] = (1.0, 1.0, 1.0), target_distance: float = OBJECT_CAMERA_DISTANCE,
                 target_split: str = "test") -> None:
        self.objects: list[Path] = find_blender_objects(root)
        lacking = [p for p in self.objects if target_split not in blender_splits(p)]
        if lacking:
            hint = (" (data.target_split=train scores the train views instead, the inputs included: not the "
                    "evaluation protocol)" if target_split == "test" else "")
            raise BlenderFormatError(f"{lacking[0]}: no transforms_{target_split}.json, so no evaluation targets"
                                     f"{f' ({len(lacking)} objects lack it)' if len(lacking) > 1 else ''}; found "
                                     f"splits {blender_splits(lacking[0]) or 'none'}{hint}")
        self.resolution, self.n_inputs, self.target_distance = resolution, n_inputs, target_distance
        self.background = tuple(float(x) for x in background)
        self.target_split = target_split

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, index: int) -> ViewExample:
        folder = self.objects[index]
        ev = evaluation_views(folder, self.n_inputs, self.resolution, self.background, self.target_distance,
                              target_split=self.target_split)
        bg = torch.tensor(self.background)
        return ViewExample(ev.inputs.images, ev.inputs.cameras, ev.targets.images, ev.targets.cameras,
                           bg.expand(len(ev.targets), 3).clone(), ev.name, bg.clone(), torch.tensor(ev.input_indices),
                           torch.arange(len(ev.targets)), ev.normalization.invert_gaussians)


# ---------------------------------------------------------------------------------------------------- registry entry
class BlenderObjects(DataSource):
    """`DATASETS["blender"]`: Blender-layout objects under `config.root`; validation on `config.val_root`."""

    config_class = BlenderDataConfig
    layout = "transforms_train.json (+ transforms_test.json) in the folder or in its sub-folders"
    item_label = "objects"
    nearest_input = staticmethod(nearest_by_direction)

    @staticmethod
    def detect(folder: str | os.PathLike) -> bool:
        """Whether `folder` is a Blender-layout object or a folder of them."""
        try:
            return bool(find_blender_objects(folder))
        except (BlenderFormatError, OSError):
            return False

    def training_dataset(self, seed: int = 0) -> ObjectTrainingDataset:
        """Items `(object_index, example_seed)`; `seed` is unused (every draw comes from `example_seed`)."""
        c = self.config
        return ObjectTrainingDataset(self.existing(c.root, "data.root"), self.image_size, c.n_inputs, c.n_targets,
                                     background=c.background, target_backgrounds=c.target_backgrounds)

    def evaluation_dataset(self, root: str | os.PathLike | None = None) -> ObjectEvaluationDataset:
        c = self.config
        key = "data.root" if root is None else "data.val_root"
        return ObjectEvaluationDataset(self.existing(c.root if root is None else root, key), self.image_size,
                                       c.n_inputs, c.background, target_split=c.target_split)

    def protocol_departures(self, trained: object | None = None) -> list[str]:
        c, notes = self.config, []
        if c.target_split != "test":
            notes.append(f"targets are the {c.target_split} views (data.target_split), the input views included")
        if isinstance(trained, BlenderDataConfig) and trained.n_inputs != c.n_inputs:
            notes.append(f"{c.n_inputs} input views (data.n_inputs) for a model trained with {trained.n_inputs}")
        return notes

    def validation_root(self) -> str | None:
        return self.config.val_root

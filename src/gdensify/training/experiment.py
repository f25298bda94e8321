"""Experiments: a model config, a data config and a `TrainConfig`, named by presets or read from YAML.

`gdensify train --config NAME [key=value ...]` resolves NAME with `load_experiment`: a preset (`tiny`, `paper`
for objects; `scene-tiny`, `scene-paper` for scenes) or a YAML file holding a dumped experiment (its `kind` says
which). Overrides address the nested keys, e.g. `model.densify=false`, `train.max_steps=500`,
`data.root=data/objects/train`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal


from torch.utils.data import Dataset

from ..config import ConfigError, apply_overrides, from_dict, read_yaml_mapping
from ..data.batch import ViewExample
from ..data.re10k import BoundedViewSampler, RE10KDataset
from ..io import Checkpoint
from ..models.object_gd import ObjectGD, ObjectGDConfig
from ..models.scene_gd import SceneGD, SceneGDConfig
from .config import TrainConfig


@dataclass
class ObjectDataConfig:
    """Blender-layout objects. Inputs are resized to the model's `backbone.image_size`."""

    root: str = "data/objects/train"  # an object folder or a folder of them
    val_root: str | None = None  # evaluation-protocol objects validated at every epoch end (None: no validation)
    val_limit: int = 8  # at most this many validation objects
    n_inputs: int = 4
    n_targets: int = 4
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.n_inputs < 1 or self.n_targets < 1 or self.val_limit < 1:
            raise ValueError("data.n_inputs, data.n_targets and data.val_limit must be >= 1")
        if any(not 0 <= c <= 1 for c in self.background):
            raise ValueError(f"data.background must be RGB in [0, 1], got {self.background}")


@dataclass
class ObjectExperiment:
    model: ObjectGDConfig = field(default_factory=ObjectGDConfig)
    data: ObjectDataConfig = field(default_factory=ObjectDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    kind: Literal["object"] = "object"

    def build_model(self) -> ObjectGD:
        return ObjectGD(self.model)

    def training_dataset(self):
        from ..data.object_dataset import ObjectTrainingDataset

        d = self.data
        return ObjectTrainingDataset(_existing(d.root, "data.root"), self.model.backbone.image_size, d.n_inputs,
                                     d.n_targets, background=d.background)

    def validation_examples(self) -> list[ViewExample]:
        from ..data.object_dataset import ObjectEvaluationDataset

        d = self.data
        if d.val_root is None:
            return []
        dataset = ObjectEvaluationDataset(_existing(d.val_root, "data.val_root"), self.model.backbone.image_size,
                                          d.n_inputs, d.background)
        return [dataset[i] for i in range(min(len(dataset), d.val_limit))]


@dataclass
class SceneDataConfig:
    """RealEstate10K-layout chunks (`ROOT/train`, `ROOT/test`, `ROOT/evaluation_index.json`), resized and
    centre-cropped to `image_size`²; training views from `BoundedViewSampler` (2 context views, targets between)."""

    root: str = "data/scenes"
    image_size: int = 64
    n_targets: int = 4
    min_gap: int = 10  # frames between the two context views
    max_gap: int = 30
    near: float = 1.0
    far: float = 100.0
    validate: bool = True  # validate on the first `val_limit` entries of ROOT's evaluation index
    val_limit: int = 4

    def __post_init__(self) -> None:
        if self.image_size < 8 or self.n_targets < 1 or self.val_limit < 1:
            raise ValueError("data.image_size must be >= 8, data.n_targets and data.val_limit >= 1")
        if not 1 <= self.min_gap <= self.max_gap:
            raise ValueError(f"need 1 <= data.min_gap <= data.max_gap, got {self.min_gap}, {self.max_gap}")
        if not 0 < self.near < self.far:
            raise ValueError(f"need 0 < data.near < data.far, got {self.near}, {self.far}")


class _SceneViews(Dataset):
    """`RE10KDataset` items as `ViewExample`s (context views are the inputs; black backgrounds)."""

    def __init__(self, scenes: RE10KDataset) -> None:
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, key) -> ViewExample:
        return self.scenes[key].to_view_example()


@dataclass
class SceneExperiment:
    model: SceneGDConfig = field(default_factory=SceneGDConfig)
    data: SceneDataConfig = field(default_factory=SceneDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    kind: Literal["scene"] = "scene"

    def build_model(self) -> SceneGD:
        return SceneGD(self.model)

    def _options(self) -> dict:
        d = self.data
        return {"image_shape": (d.image_size, d.image_size), "near": d.near, "far": d.far}

    def training_dataset(self) -> Dataset:
        d = self.data
        sampler = BoundedViewSampler(num_target_views=d.n_targets, min_gap=d.min_gap, max_gap=d.max_gap,
                                     initial_min_gap=d.min_gap, initial_max_gap=d.max_gap)
        root = _existing(d.root, "data.root")
        return _SceneViews(RE10KDataset(root, "train", view_sampler=sampler, seed=self.train.seed, **self._options()))

    def validation_examples(self) -> list[ViewExample]:
        d = self.data
        if not d.validate:
            return []
        scenes = RE10KDataset.for_evaluation(_existing(d.root, "data.root"), **self._options())
        return [scenes[i].to_view_example() for i in range(min(len(scenes), d.val_limit))]


Experiment = ObjectExperiment | SceneExperiment


def _existing(path: str, key: str) -> str:
    if not Path(path).exists():
        raise FileNotFoundError(f"{key}: {path} does not exist (generate synthetic data with `gdensify make-data "
                                f"objects|scenes DIR --count N`)")
    return path


def experiment_preset(name: str) -> Experiment:
    """`tiny` / `scene-tiny`: the 2-CPU-core models and the recipes of the shipped checkpoints; `paper`: the
    published object shapes with the released recipe (batch 2 per device, 4e-4 warm-up then 1e-4);
    `scene-paper`: the published scene shapes at 256² with MVSplat's data settings (loss MSE + 0.05·LPIPS, lr
    2e-4 with cosine decay, 300k steps)."""
    if name == "tiny":
        return ObjectExperiment(ObjectGDConfig.preset("tiny"), ObjectDataConfig(val_limit=4),
                                TrainConfig(max_steps=1500, batch_size=1, lr=1e-3, final_lr=1e-4, warmup_steps=100,
                                            after_warmup="cosine", checkpoint_every=250, out_dir="outputs/tiny"))
    if name == "paper":
        return ObjectExperiment(ObjectGDConfig.preset("paper"), ObjectDataConfig(),
                                TrainConfig(out_dir="outputs/paper"))
    if name == "scene-tiny":
        return SceneExperiment(SceneGDConfig.preset("tiny"), SceneDataConfig(),
                               TrainConfig(max_steps=1500, batch_size=2, lr=1e-3, final_lr=1e-4, warmup_steps=100,
                                           after_warmup="cosine", lpips_weight=0.05, supervise_inputs=False,
                                           checkpoint_every=250, out_dir="outputs/scene_tiny"))
    if name == "scene-paper":
        return SceneExperiment(SceneGDConfig.preset("paper"),
                               SceneDataConfig(root="data/re10k", image_size=256, min_gap=45, max_gap=192),
                               TrainConfig(max_steps=300_000, batch_size=2, lr=2e-4, final_lr=2e-6, warmup_steps=2000,
                                           after_warmup="cosine", lpips_weight=0.05, supervise_inputs=False,
                                           checkpoint_every=2000, out_dir="outputs/scene_paper"))
    raise ConfigError(f"unknown experiment preset {name!r}; expected one of {list(PRESETS)} or a YAML file")


PRESETS = ("tiny", "paper", "scene-tiny", "scene-paper")
KINDS = {"object": ObjectExperiment, "scene": SceneExperiment}


def experiment_from_dict(data: dict) -> Experiment:
    kind = data.get("kind", "object")
    if kind not in KINDS:
        raise ConfigError(f"unknown experiment kind {kind!r}; expected one of {sorted(KINDS)}")
    return from_dict(KINDS[kind], data)


def load_experiment(name_or_path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    """A preset name or a YAML file, then `key=value` overrides."""
    text = str(name_or_path)
    if text in PRESETS:
        experiment = experiment_preset(text)
    else:
        if not Path(text).is_file():
            raise ConfigError(f"--config {text!r} is neither a preset {list(PRESETS)} nor a YAML file")
        experiment = experiment_from_dict(read_yaml_mapping(text))
    return apply_overrides(experiment, list(overrides)) if overrides else experiment


def experiment_from_checkpoint(checkpoint: Checkpoint) -> Experiment:
    """The experiment a `model.safetensors` was trained with (its `gdensify.experiment` metadata), or, for a
    checkpoint without it, the default experiment of its kind around the stored model config."""
    text = checkpoint.metadata.get("gdensify.experiment")
    if text is not None:
        return experiment_from_dict(json.loads(text))
    if checkpoint.kind not in KINDS:
        raise ConfigError(f"unknown checkpoint kind {checkpoint.kind!r}; expected one of {sorted(KINDS)}")
    experiment = KINDS[checkpoint.kind]()
    return replace(experiment, model=from_dict(type(experiment.model), checkpoint.config))

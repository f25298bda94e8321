"""Experiments: a model config, a data config and a `TrainConfig`, named by presets or read from YAML.

`gdensify train --config NAME [key=value ...]` resolves NAME with `load_experiment`: a preset (`tiny`, `paper`)
or a YAML file holding a dumped experiment. Overrides address the nested keys, e.g. `model.densify=false`,
`train.max_steps=500`, `data.root=data/objects/train`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from ..config import ConfigError, apply_overrides, from_dict
from ..data.batch import ViewExample
from ..models.object_gd import ObjectGD, ObjectGDConfig
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


def _existing(path: str, key: str) -> str:
    if not Path(path).exists():
        hint = " (generate synthetic objects with `gdensify make-data objects DIR --count N`)" if "data" in key else ""
        raise FileNotFoundError(f"{key}: {path} does not exist{hint}")
    return path


def experiment_preset(name: str) -> ObjectExperiment:
    """`tiny`: the 2-CPU-core object model and the recipe of the shipped checkpoint; `paper`: the published shapes
    with the released recipe (batch 2 per device, 4e-4 warm-up then 1e-4)."""
    if name == "tiny":
        return ObjectExperiment(ObjectGDConfig.preset("tiny"), ObjectDataConfig(val_limit=4),
                                TrainConfig(max_steps=1500, batch_size=1, lr=1e-3, final_lr=1e-4, warmup_steps=100,
                                            after_warmup="cosine", checkpoint_every=250, out_dir="outputs/tiny"))
    if name == "paper":
        return ObjectExperiment(ObjectGDConfig.preset("paper"), ObjectDataConfig(),
                                TrainConfig(out_dir="outputs/paper"))
    raise ConfigError(f"unknown experiment preset {name!r}; expected 'tiny', 'paper' or a YAML file")


PRESETS = ("tiny", "paper")


def experiment_from_dict(data: dict) -> ObjectExperiment:
    kind = data.get("kind", "object")
    if kind != "object":
        raise ConfigError(f"unknown experiment kind {kind!r}; expected 'object'")
    return from_dict(ObjectExperiment, data)


def load_experiment(name_or_path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> ObjectExperiment:
    """A preset name or a YAML file, then `key=value` overrides."""
    text = str(name_or_path)
    if text in PRESETS:
        experiment = experiment_preset(text)
    else:
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"--config {text!r} is neither a preset {list(PRESETS)} nor a YAML file")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        experiment = experiment_from_dict(data)
    return apply_overrides(experiment, list(overrides)) if overrides else experiment

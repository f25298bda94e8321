"""Experiments: a model config, a data config and a `TrainConfig`, named by presets or read from YAML.

`gdensify train --config NAME [key=value ...]` resolves NAME with `load_experiment`: a preset (`tiny`, `paper`
for objects; `scene-tiny`, `scene-paper` for scenes) or a YAML file holding a dumped experiment (its `kind` says
which). Overrides address the nested keys, e.g. `model.densify=false`, `train.max_steps=500`,
`data.root=data/objects/train`. The `data` section is any `gdensify.data.DataConfig` (chosen by `data.name`:
`blender`, `re10k`).
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
from ..data.blender_objects import BlenderDataConfig
from ..data.re10k_scenes import RE10KDataConfig
from ..data.registry import LEGACY_KINDS, DataConfig, build_dataset
from ..data.source import DataSource
from ..io import Checkpoint
from ..models.object_gd import ObjectGD, ObjectGDConfig
from ..models.scene_gd import SceneGD, SceneGDConfig
from .config import TrainConfig


@dataclass
class ObjectExperiment:
    model: ObjectGDConfig = field(default_factory=ObjectGDConfig)
    data: DataConfig = field(default_factory=BlenderDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    kind: Literal["object"] = "object"

    def build_model(self) -> ObjectGD:
        return ObjectGD(self.model)

    def data_source(self) -> DataSource:
        """The `DATASETS` entry of `data` (inputs at the model's `backbone.image_size` unless `data.image_size`)."""
        return build_dataset(self.data, self.model.backbone.image_size)

    def training_dataset(self) -> Dataset:
        return self.data_source().training_dataset(self.train.seed)

    def validation_examples(self) -> list[ViewExample]:
        return self.data_source().validation_examples()


@dataclass
class SceneExperiment:
    model: SceneGDConfig = field(default_factory=SceneGDConfig)
    data: DataConfig = field(default_factory=RE10KDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    kind: Literal["scene"] = "scene"

    def build_model(self) -> SceneGD:
        return SceneGD(self.model)

    def data_source(self) -> DataSource:
        """The `DATASETS` entry of `data` (the scene model takes any input size: `data.image_size` decides)."""
        return build_dataset(self.data)

    def training_dataset(self) -> Dataset:
        return self.data_source().training_dataset(self.train.seed)

    def validation_examples(self) -> list[ViewExample]:
        return self.data_source().validation_examples()


Experiment = ObjectExperiment | SceneExperiment


def experiment_preset(name: str) -> Experiment:
    """`tiny` / `scene-tiny`: the 2-CPU-core models and the recipes of the shipped checkpoints; `paper`: the
    published object shapes with the released recipe (batch 2 per device, 4e-4 warm-up then 1e-4);
    `scene-paper`: the published scene shapes at 256² with MVSplat's data settings (loss MSE + 0.05·LPIPS, lr
    2e-4 with cosine decay, 300k steps)."""
    if name == "tiny":
        return ObjectExperiment(ObjectGDConfig.preset("tiny"), BlenderDataConfig(val_limit=4),
                                TrainConfig(max_steps=1500, batch_size=1, lr=1e-3, final_lr=1e-4, warmup_steps=100,
                                            after_warmup="cosine", checkpoint_every=250, out_dir="outputs/tiny"))
    if name == "paper":
        return ObjectExperiment(ObjectGDConfig.preset("paper"), BlenderDataConfig(),
                                TrainConfig(out_dir="outputs/paper"))
    if name == "scene-tiny":
        return SceneExperiment(SceneGDConfig.preset("tiny"), RE10KDataConfig(),
                               TrainConfig(max_steps=1500, batch_size=2, lr=1e-3, final_lr=1e-4, warmup_steps=100,
                                           after_warmup="cosine", lpips_weight=0.05, supervise_inputs=False,
                                           checkpoint_every=250, out_dir="outputs/scene_tiny"))
    if name == "scene-paper":
        return SceneExperiment(SceneGDConfig.preset("paper"),
                               RE10KDataConfig(root="data/re10k", image_size=256, min_gap=45, max_gap=192),
                               TrainConfig(max_steps=300_000, batch_size=2, lr=2e-4, final_lr=2e-6, warmup_steps=2000,
                                           after_warmup="cosine", lpips_weight=0.05, supervise_inputs=False,
                                           checkpoint_every=2000, out_dir="outputs/scene_paper"))
    raise ConfigError(f"unknown experiment preset {name!r}; expected one of {list(PRESETS)} or a YAML file")


PRESETS = ("tiny", "paper", "scene-tiny", "scene-paper")
KINDS = {"object": ObjectExperiment, "scene": SceneExperiment}


def experiment_from_dict(data: dict) -> Experiment:
    """An experiment from its dict; a `data` section without `name` (written before the dataset registry) is
    read as the dataset its `kind` names (`gdensify.data.registry.LEGACY_KINDS`)."""
    kind = data.get("kind", "object")
    if kind not in KINDS:
        raise ConfigError(f"unknown experiment kind {kind!r}; expected one of {sorted(KINDS)}")
    if isinstance(data.get("data"), dict) and "name" not in data["data"]:
        data = {**data, "data": {**data["data"], "name": LEGACY_KINDS[kind]}}
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

"""Experiments: a model config, a data config and a `TrainConfig`, named by presets or read from YAML.

`gdensify train --config NAME [key=value ...]` resolves NAME with `load_experiment`: a preset (`tiny`, `paper`
for objects; `scene-tiny`, `scene-paper` for scenes) or a YAML file holding a dumped experiment. Overrides address
the nested keys, e.g. `model.densify=false`, `train.max_steps=500`, `data.root=data/objects/train`. The model's
backbone is any registered one (`model.backbone.name`: `lara`, `mvsplat`), the `data` section any
`gdensify.data.DataConfig` (`data.name`: `blender`, `re10k`); the two choices are independent.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import Dataset

from ..config import ConfigError, apply_overrides, from_dict, read_yaml_mapping
from ..data.batch import ViewExample
from ..data.blender_objects import BlenderDataConfig
from ..data.re10k_scenes import RE10KDataConfig
from ..data.registry import LEGACY_KINDS, DataConfig, build_dataset, data_config_from_checkpoint
from ..data.source import DataSource
from ..io import Checkpoint
from ..models.gd import GDConfig, GDModel
from ..models.loading import model_config, upgrade_model_config
from .config import TrainConfig


@dataclass
class Experiment:
    """What to build (`model`: a `GDConfig`, its backbone chosen by name), what to read (`data`: a `DataConfig`,
    its dataset chosen by name) and how to train (`train`)."""

    model: GDConfig = field(default_factory=GDConfig)
    data: DataConfig = field(default_factory=BlenderDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def build_model(self) -> GDModel:
        return GDModel(self.model)

    def data_source(self) -> DataSource:
        """The `DATASETS` entry of `data`; inputs at the backbone's `image_size` when it has one (LaRa) and the
        data config leaves `image_size` unset."""
        return build_dataset(self.data, getattr(self.model.backbone, "image_size", None))

    def training_dataset(self) -> Dataset:
        return self.data_source().training_dataset(self.train.seed)

    def validation_examples(self) -> list[ViewExample]:
        return self.data_source().validation_examples()

    def missing_pretrained_weights(self) -> list[str]:
        """Override keys (`model.backbone.*`) of the pretrained weights the published recipe starts from that
        this experiment leaves unset (its backbone then starts from random weights), e.g.
        `model.backbone.encoder_weights` (DINO ViT-B/16) for `paper`, `model.backbone.feature_backbone_weights`
        (UniMatch) for `scene-paper`; [] for the `tiny` models, which train from scratch by design."""
        unset = getattr(self.model.backbone, "unset_pretrained_weights", None)
        return [f"model.backbone.{key}" for key in (unset() if unset is not None else [])]


def experiment_preset(name: str) -> Experiment:
    """`tiny` / `scene-tiny`: the 2-CPU-core models and the recipes of the shipped checkpoints; `paper`: the
    published object shapes with the released recipe (batch 2 per device, 1,000 warm-up steps to 4e-4, then
    constant 1e-4);
    `scene-paper`: the published scene shapes at 256² with MVSplat's data settings as GD's release keeps them
    (context gap 25 → 45 frames over the first 100k steps, then 45: pixelSplat's gap rule), loss
    MSE + 0.05·LPIPS, lr 2e-4 with cosine decay, 300k steps."""
    if name == "tiny":
        return Experiment(GDConfig.preset("object-tiny"), BlenderDataConfig(val_limit=4),
                                TrainConfig(max_steps=1500, batch_size=1, lr=1e-3, final_lr=1e-4, warmup_steps=100,
                                            after_warmup="cosine", checkpoint_every=250, out_dir="outputs/tiny"))
    if name == "paper":
        return Experiment(GDConfig.preset("object-paper"), BlenderDataConfig(),
                                TrainConfig(warmup_steps=1000, out_dir="outputs/paper"))
    if name == "scene-tiny":
        return Experiment(GDConfig.preset("scene-tiny"), RE10KDataConfig(),
                               TrainConfig(max_steps=1500, batch_size=2, lr=1e-3, final_lr=1e-4, warmup_steps=100,
                                           after_warmup="cosine", lpips_weight=0.05, supervise_inputs=False,
                                           checkpoint_every=250, out_dir="outputs/scene_tiny"))
    if name == "scene-paper":
        return Experiment(GDConfig.preset("scene-paper"),
                               RE10KDataConfig(root="data/re10k", image_size=256, min_gap=45, max_gap=192,
                                               gap_warm_up_steps=100_000, initial_min_gap=25, initial_max_gap=45,
                                               pixelsplat_gap_bug=True),
                               TrainConfig(max_steps=300_000, batch_size=2, lr=2e-4, final_lr=2e-6, warmup_steps=2000,
                                           after_warmup="cosine", lpips_weight=0.05, supervise_inputs=False,
                                           checkpoint_every=2000, out_dir="outputs/scene_paper"))
    raise ConfigError(f"unknown experiment preset {name!r}; expected one of {list(PRESETS)} or a YAML file")


PRESETS = ("tiny", "paper", "scene-tiny", "scene-paper")


def experiment_from_dict(data: dict) -> Experiment:
    """An experiment from its dict. One written before the one-pipeline redesign has a top-level `kind`
    ("object" / "scene"): its model config is upgraded (`models.loading.upgrade_model_config`) and its `data`
    section, which has no `name`, is read as the dataset the kind names (`data.registry.LEGACY_KINDS`)."""
    data = dict(data)
    kind = data.pop("kind", None)
    if kind is not None:
        if kind not in LEGACY_KINDS:
            raise ConfigError(f"kind: unknown experiment kind {kind!r}; expected one of {sorted(LEGACY_KINDS)}")
        data["model"] = upgrade_model_config(kind, data.get("model", {}))
        if "name" not in data.get("data", {}):
            data["data"] = {**data.get("data", {}), "name": LEGACY_KINDS[kind]}
    return from_dict(Experiment, data)


def load_experiment(name_or_path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    """A preset name or a YAML file, then `key=value` overrides."""
    text = str(name_or_path)
    if text in PRESETS:
        experiment = experiment_preset(text)
    else:
        if not Path(text).is_file():
            raise ConfigError(f"--config {text!r} is neither a preset {list(PRESETS)} nor a YAML file")
        data = read_yaml_mapping(text)
        if "kind" not in data:  # a legacy file names its kind instead
            missing = [key for key in ("model", "data", "train") if not isinstance(data.get(key), dict)]
            if not missing and not isinstance(data["model"].get("backbone"), dict):
                missing = ["model.backbone"]
            if missing:
                raise ConfigError(f"{text}: missing section(s) {missing}; a config names what it builds "
                                  "(model.backbone.name), what it reads (data.name) and how it trains (train)")
        experiment = experiment_from_dict(data)
    return apply_overrides(experiment, list(overrides)) if overrides else experiment


def experiment_from_checkpoint(checkpoint: Checkpoint) -> Experiment:
    """The experiment a `model.safetensors` was trained with (its `gdensify.experiment` metadata), or, for a
    checkpoint without it, the stored model config with the data config `data_config_from_checkpoint` gives."""
    text = checkpoint.metadata.get("gdensify.experiment")
    if text is not None:
        return experiment_from_dict(json.loads(text))
    return Experiment(model_config(checkpoint), data_config_from_checkpoint(checkpoint))

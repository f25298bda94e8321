"""Experiments: a model config, a data config and a `TrainConfig`, named by presets or read from YAML.

`gdensify train --config NAME [key=value ...]` resolves NAME with `load_experiment`: a preset (`tiny`, `paper`
for objects; `scene-tiny`, `scene-paper` for scenes) or a YAML file holding a dumped experiment. Overrides address
the nested keys, e.g. `model.densify=false`, `train.max_steps=500`, `data.root=data/objects/train`. The model's
backbone is any registered one (`model.backbone.name`: `lara`, `mvsplat`), the `data` section any
`gdensify.data.DataConfig` (`data.name`: `blender`, `re10k`); the two choices are independent.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch.utils.data import Dataset

from ..config import ConfigError, apply_overrides, dump_yaml, from_dict, read_yaml_mapping
from ..data.batch import ViewExample
from ..data.blender_objects import BlenderDataConfig
from ..data.re10k_scenes import RE10KDataConfig
from ..data.registry import LEGACY_KINDS, DataConfig, build_dataset, data_config_from_checkpoint, upgrade_data_config
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


PRESETS: dict[str, Callable[[], Experiment]] = {
    # the 2-CPU-core object model; the shipped checkpoint is this with data.root=data/objects/train2, max_steps=12000
    "tiny": lambda: Experiment(
        GDConfig.preset("object-tiny"), BlenderDataConfig(val_limit=4),
        TrainConfig(max_steps=1500, batch_size=1, lr=1e-3, final_lr=1e-4, warmup_steps=100, after_warmup="cosine",
                    checkpoint_every=250, out_dir="outputs/tiny")),
    # the published object shapes with the released recipe (batch 2 per device, 1,000 warm-up steps to 4e-4, then
    # constant 1e-4)
    "paper": lambda: Experiment(GDConfig.preset("object-paper"), BlenderDataConfig(),
                                TrainConfig(warmup_steps=1000, out_dir="outputs/paper")),
    # the 2-CPU-core scene model and the recipe of the shipped checkpoint
    "scene-tiny": lambda: Experiment(
        GDConfig.preset("scene-tiny"), RE10KDataConfig(),
        TrainConfig(max_steps=1500, batch_size=2, lr=1e-3, final_lr=1e-4, warmup_steps=100, after_warmup="cosine",
                    lpips_weight=0.05, supervise_inputs=False, checkpoint_every=250, out_dir="outputs/scene_tiny")),
    # the published scene shapes at 256² with MVSplat's data settings as GD's release keeps them (context gap
    # 25 → 45 frames over the first 100k steps, then 45: pixelSplat's gap rule), loss MSE + 0.05·LPIPS, lr 2e-4 with
    # cosine decay, 300k steps
    "scene-paper": lambda: Experiment(
        GDConfig.preset("scene-paper"),
        RE10KDataConfig(root="data/re10k", image_size=256, min_gap=45, max_gap=192, gap_warm_up_steps=100_000,
                        initial_min_gap=25, initial_max_gap=45, pixelsplat_gap_bug=True),
        TrainConfig(max_steps=300_000, batch_size=2, lr=2e-4, final_lr=2e-6, warmup_steps=2000,
                    after_warmup="cosine", lpips_weight=0.05, supervise_inputs=False, checkpoint_every=2000,
                    out_dir="outputs/scene_paper")),
}


def experiment_preset(name: str) -> Experiment:
    """A fresh experiment of the `PRESETS` table."""
    if name not in PRESETS:
        raise ConfigError(f"unknown experiment preset {name!r}; expected one of {list(PRESETS)} or a YAML file")
    return PRESETS[name]()


def experiment_from_dict(data: dict) -> Experiment:
    """An experiment from its dict. One written before the one-pipeline redesign has a top-level `kind`
    ("object" / "scene"): its model config is upgraded (`models.loading.upgrade_model_config`) and so is its `data`
    section, which has no `name` (`data.registry.upgrade_data_config`)."""
    data = dict(data)
    kind = data.pop("kind", None)
    if kind is not None:
        if kind not in LEGACY_KINDS:
            raise ConfigError(f"kind: unknown experiment kind {kind!r}; expected one of {sorted(LEGACY_KINDS)}")
        data["model"] = upgrade_model_config(kind, data.get("model", {}))
        data["data"] = upgrade_data_config(kind, data.get("data", {}))
    return from_dict(Experiment, data)


RUN_CONFIG_HEADER = "# gdensify run config: relative paths are relative to this file's folder\n"
"""The first line of a run's `config.yaml` (`run_config_text`); without it, relative paths are relative to the
working directory."""

_PATH_FIELDS = {"data": ("root", "val_root", "index"), "train": ("init_weights", "out_dir")}


def _map_paths(experiment: Experiment, fn: Callable[[str], str]) -> Experiment:
    """A copy of `experiment` with `fn` applied to every path field that is set."""
    sections = {}
    for section, names in _PATH_FIELDS.items():
        config = getattr(experiment, section)
        changes = {n: fn(getattr(config, n)) for n in names
                   if hasattr(config, n) and isinstance(getattr(config, n), str) and getattr(config, n)}
        sections[section] = dataclasses.replace(config, **changes)
    return dataclasses.replace(experiment, **sections)


def run_config_text(experiment: Experiment) -> str:
    """The YAML of a run's `config.yaml`: the experiment with its relative paths made relative to the run folder
    (`train.out_dir` is "."; absolute paths stay absolute), so the run resumes from any working directory."""
    run = os.path.abspath(experiment.train.out_dir)
    relative = _map_paths(experiment, lambda p: p if os.path.isabs(p) else os.path.relpath(os.path.abspath(p), run))
    return RUN_CONFIG_HEADER + dump_yaml(dataclasses.replace(
        relative, train=dataclasses.replace(relative.train, out_dir=".")))


def load_run_config(run_dir: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    """The experiment of the run in `run_dir` (its `config.yaml`) for `--resume`, with `key=value` overrides;
    `train.out_dir` must stay `run_dir`."""
    stored = Path(run_dir) / "config.yaml"
    if not stored.is_file():
        raise FileNotFoundError(f"cannot resume: {stored} does not exist")
    experiment = load_experiment(stored, overrides)
    if Path(experiment.train.out_dir).resolve() != Path(run_dir).resolve():
        raise ValueError(f"train.out_dir ({experiment.train.out_dir}) must stay {run_dir} when resuming")
    return experiment


def load_experiment(name_or_path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    """A preset name or a YAML file, then `key=value` overrides. A run's `config.yaml` (`RUN_CONFIG_HEADER`)
    has its relative paths resolved against its folder; any other YAML file's stay relative to the working
    directory. A YAML file must hold the `model`, `data` and `train` sections and nothing else."""
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
        unknown = sorted(set(data) - {"model", "data", "train", "kind"})
        if unknown:
            raise ConfigError(f"{text}: unknown top-level section(s) {unknown}; expected model, data and train")
        experiment = experiment_from_dict(data)
        with open(text) as f:
            if f.readline() == RUN_CONFIG_HEADER:
                folder = os.path.dirname(os.path.abspath(text))
                experiment = _map_paths(experiment, lambda p: p if os.path.isabs(p) else
                                        os.path.relpath(os.path.normpath(os.path.join(folder, p))))
    return apply_overrides(experiment, list(overrides)) if overrides else experiment


def experiment_from_checkpoint(checkpoint: Checkpoint) -> Experiment:
    """The experiment a `model.safetensors` was trained with (its `gdensify.experiment` metadata), or, for a
    checkpoint without it, the stored model config with the data config `data_config_from_checkpoint` gives."""
    text = checkpoint.metadata.get("gdensify.experiment")
    if text is not None:
        return experiment_from_dict(json.loads(text))
    return Experiment(model_config(checkpoint), data_config_from_checkpoint(checkpoint))

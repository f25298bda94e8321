"""`DATASETS`: dataset name → its `DataSource` class, and `DataConfig`, the union of their configs.

A config chooses its dataset by its `name` field (`gdensify.config.from_dict` resolves the union), e.g. in YAML::

    data:
      name: re10k
      root: data/re10k
      image_size: 256

Adding a dataset: one module with a config dataclass (`name: Literal["mine"]`) and a `DataSource` subclass, then
one entry in `DATASETS` and one member in `DataConfig`.

Experiments written before the registry have no `data.name`; their top-level `kind` ("object" or "scene")
names the dataset instead (`LEGACY_KINDS`), which `upgrade_data_config` maps.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..config import ConfigError, from_dict
from ..io import Checkpoint
from .blender_objects import BlenderDataConfig, BlenderObjects
from .captures import CaptureDataConfig, Captures
from .re10k_scenes import RE10KDataConfig, RE10KScenes
from .source import DataSource

__all__ = ["DATASETS", "DataConfig", "LEGACY_KINDS", "build_dataset", "detect_dataset", "data_config_from_dict",
           "data_config_from_checkpoint", "upgrade_data_config"]

DATASETS: dict[str, type[DataSource]] = {"blender": BlenderObjects, "re10k": RE10KScenes, "capture": Captures}
DataConfig = BlenderDataConfig | RE10KDataConfig | CaptureDataConfig
LEGACY_KINDS = {"object": "blender", "scene": "re10k"}
"""The dataset an experiment or checkpoint of the old `kind` was trained on."""


def build_dataset(config: DataConfig, image_size: int | None = None) -> DataSource:
    """The `DATASETS` entry of `config.name`, built from `config` (`image_size`: the model's input size, used when
    the config leaves `image_size` unset)."""
    if config.name not in DATASETS:
        raise ConfigError(f"data.name: unknown dataset {config.name!r}; known: {sorted(DATASETS)}")
    return DATASETS[config.name](config, image_size)


def detect_dataset(folder: str | os.PathLike) -> str:
    """The name of the one dataset layout `folder` is in; ValueError naming the folder if none or several match."""
    if not os.path.exists(folder):
        raise ValueError(f"{folder}: no known dataset layout (no such folder)")
    found = [name for name, source in DATASETS.items() if source.detect(folder)]
    if len(found) != 1:
        seen = "a file"
        if os.path.isdir(folder):
            names = sorted(p.name + ("/" if p.is_dir() else "") for p in Path(folder).iterdir())
            seen = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "") if names else "nothing"
        expected = "; ".join(f"{name}: {getattr(source, 'layout', None) or source.__doc__.splitlines()[0]}"
                             for name, source in DATASETS.items())
        what = "no known dataset layout" if not found else f"several layouts ({', '.join(found)})"
        raise ValueError(f"{folder}: {what} (it holds {seen}); expected {expected}")
    return found[0]


def data_config_from_dict(data: dict[str, Any], kind: str | None = None) -> DataConfig:
    """A `DataConfig` from its dict; without a `name`, the legacy experiment `kind` (if any) names the dataset."""
    data = upgrade_data_config(kind, data) if kind is not None else dict(data)
    name = data.get("name", "blender")
    if name not in DATASETS:
        raise ConfigError(f"data.name: unknown dataset {name!r}; known: {sorted(DATASETS)}")
    return from_dict(DATASETS[name].config_class, data, prefix="data.")


def upgrade_data_config(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """The `data` section of an experiment written before the registry (legacy `kind`, no `data.name`) in today's
    terms: the dataset the kind names, and for objects the training targets those runs had, every view on
    `data.background` (`target_backgrounds="fixed"`; random grey targets came later). A section with a `name`
    is already in today's terms and comes back as is."""
    if "name" in data:
        return dict(data)
    if kind not in LEGACY_KINDS:
        raise ConfigError(f"kind: unknown experiment kind {kind!r}; expected one of {sorted(LEGACY_KINDS)}")
    upgraded = {**data, "name": LEGACY_KINDS[kind]}
    if kind == "object":
        upgraded.setdefault("target_backgrounds", "fixed")
    return upgraded


def data_config_from_checkpoint(checkpoint: Checkpoint) -> DataConfig:
    """The data config a checkpoint was trained with (its `gdensify.experiment` metadata), or for a checkpoint
    without one, the default config of the dataset its legacy `kind` names."""
    text = checkpoint.metadata.get("gdensify.experiment")
    if text is not None:
        experiment = json.loads(text)
        return data_config_from_dict(experiment.get("data", {}), experiment.get("kind"))
    if checkpoint.kind not in LEGACY_KINDS:
        raise ConfigError(f"checkpoint kind {checkpoint.kind!r} names no dataset and the checkpoint stores no "
                          f"experiment; expected one of {sorted(LEGACY_KINDS)}")
    return data_config_from_dict({}, checkpoint.kind)

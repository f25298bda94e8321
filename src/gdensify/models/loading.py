"""Build a model from a `model.safetensors` checkpoint (weights + the model config in its metadata), or initialise
part of a model from one. Checkpoints written before the one-pipeline redesign (kind "object" / "scene") load
too: their configs are upgraded to `GDConfig`'s layout; tensor names did not change."""

from __future__ import annotations

import copy
import os
from typing import Any, Sequence

import torch

from ..config import apply_overrides, from_dict
from ..io import Checkpoint, load_checkpoint
from ..io.weights import load_mapped
from .gd import GDConfig, GDModel

MODEL_KIND = "gd"  # the checkpoint kind of every GD model (backbone chosen by the config)


def upgrade_model_config(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    """A stored model config in `GDConfig`'s layout. Kind "object" (before the redesign: a LaRa backbone config
    without a name) and "scene" (MVSplat, with `conditioning` and `leaf_init` at the top level) are converted;
    kind "gd" is returned as is."""
    config = copy.deepcopy(config)
    if kind == "object":
        config.setdefault("backbone", {}).setdefault("name", "lara")
    elif kind == "scene":
        backbone = config.setdefault("backbone", {})
        backbone.setdefault("name", "mvsplat")
        for key in ("conditioning", "leaf_init"):
            if key in config:
                backbone[key] = config.pop(key)
    elif kind != MODEL_KIND:
        raise ValueError(f"unknown model checkpoint kind {kind!r}; expected {MODEL_KIND!r} (or 'object'/'scene' "
                         "from earlier versions)")
    return config


def model_config(checkpoint: Checkpoint) -> GDConfig:
    """The model config stored in a checkpoint."""
    return from_dict(GDConfig, upgrade_model_config(checkpoint.kind, checkpoint.config))


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu",
               overrides: Sequence[str] = ()) -> tuple[GDModel, Checkpoint]:
    """The model of a checkpoint in eval mode, and the checkpoint (its metadata holds the training recipe).
    `overrides` (`key=value` on the model config, e.g. `selection.method=random`) apply before the model is
    built; they must leave the tensors' names and shapes as stored."""
    checkpoint = load_checkpoint(path)
    config = model_config(checkpoint)
    model = GDModel(apply_overrides(config, overrides) if overrides else config)
    load_mapped(model, checkpoint.state_dict, source=f"{path} (weights vs the model config stored with them)")
    return model.to(device).eval(), checkpoint


def initialise_from(model: torch.nn.Module, path: str | os.PathLike, kind: str | None = None) -> list[str]:
    """Copy every tensor of the checkpoint at `path` into `model` (e.g. a coarse-only model's backbone into a GD
    model: pre-train, then fine-tune with densification, as the paper's scene recipe does). Each stored tensor
    must exist in `model` with the same shape; `kind`, if given, must match the checkpoint's. Returns the names of
    the model's parameters and buffers left at their initialisation."""
    checkpoint = load_checkpoint(path, kind)
    return load_mapped(model, checkpoint.state_dict, strict=False, source=str(path)).missing


def is_gdensify_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a checkpoint gdensify wrote (a safetensors file with gdensify metadata)."""
    if not str(path).endswith(".safetensors") or not os.path.isfile(path):
        return False
    from safetensors import safe_open  # noqa: PLC0415

    try:
        with safe_open(str(path), framework="pt") as f:
            return "gdensify.kind" in (f.metadata() or {})
    except Exception:  # noqa: BLE001  (unreadable: not ours; the official reader reports the problem)
        return False


def load_any_model(path: str | os.PathLike, device: torch.device | str = "cpu", overrides: Sequence[str] = (),
                   official_kind: str | None = None, official_config: dict | None = None,
                   ) -> tuple[GDModel, Checkpoint | None]:
    """A gdensify checkpoint (`load_model`), or a published official one (Lightning `.ckpt` or state dict:
    `official.load_official_checkpoint` with `official_config`, default the released config of its kind, inferred
    from its keys unless `official_kind`); the checkpoint is None for official files (no gdensify recipe)."""
    if is_gdensify_checkpoint(path):
        return load_model(path, device, overrides)
    from .official import load_official_checkpoint  # noqa: PLC0415

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    model = load_official_checkpoint(path, official_kind, official_config, overrides=overrides)
    return model.to(device), None

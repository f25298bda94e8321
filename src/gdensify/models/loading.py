"""Build a model from a `model.safetensors` checkpoint (weights + the model config in its metadata), or initialise
part of a model from one."""

from __future__ import annotations

import os

import torch
from torch import nn

from ..config import from_dict
from ..io import Checkpoint, load_checkpoint
from .object_gd import ObjectGD, ObjectGDConfig
from .scene_gd import SceneGD, SceneGDConfig

MODEL_KINDS: dict[str, tuple[type, type[nn.Module]]] = {"object": (ObjectGDConfig, ObjectGD),
                                                         "scene": (SceneGDConfig, SceneGD)}


def load_model(path: str | os.PathLike, kind: str | None = None,
               device: torch.device | str = "cpu") -> tuple[nn.Module, Checkpoint]:
    """The model of a checkpoint in eval mode, and the checkpoint (its metadata holds the training recipe).
    `kind` ("object" or "scene"), if given, must match the checkpoint's."""
    checkpoint = load_checkpoint(path, kind)
    if checkpoint.kind not in MODEL_KINDS:
        raise ValueError(f"{path}: unknown model kind {checkpoint.kind!r}; known: {sorted(MODEL_KINDS)}")
    config_cls, model_cls = MODEL_KINDS[checkpoint.kind]
    model = model_cls(from_dict(config_cls, checkpoint.config))
    missing = _copy_tensors(model, checkpoint, path)
    if missing:
        raise ValueError(f"{path}: weights do not match the stored config ({len(missing)} tensors missing, e.g. "
                         f"{missing[:5]})")
    return model.to(device).eval(), checkpoint


def initialise_from(model: nn.Module, path: str | os.PathLike, kind: str | None = None) -> list[str]:
    """Copy every tensor of the checkpoint at `path` into `model` (e.g. a coarse-only model's backbone into a GD
    model: pre-train, then fine-tune with densification, as the paper's scene recipe does). Each stored tensor
    must exist in `model` with the same shape; `kind`, if given, must match the checkpoint's. Returns the names of
    the model's parameters and buffers left at their initialisation."""
    return _copy_tensors(model, load_checkpoint(path, kind), path)


def _copy_tensors(model: nn.Module, checkpoint: Checkpoint, path: str | os.PathLike) -> list[str]:
    """Load every stored tensor into `model` after checking names and shapes; the names the file lacks."""
    own = model.state_dict()
    unknown = sorted(set(checkpoint.state_dict) - set(own))
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} tensors have no counterpart in the model (e.g. {unknown[:3]}); "
                         f"was it trained with a different model config?")
    mismatched = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in checkpoint.state_dict.items()
                  if v.shape != own[k].shape]
    if mismatched:
        raise ValueError(f"{path}: {len(mismatched)} tensors differ in shape from the model's (stored vs model; "
                         f"e.g. {mismatched[:3]})")
    model.load_state_dict(checkpoint.state_dict, strict=False)
    return sorted(set(own) - set(checkpoint.state_dict))

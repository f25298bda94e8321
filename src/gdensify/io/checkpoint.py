"""Model checkpoints: safetensors weights with the resolved config stored in the file's metadata.

A checkpoint is one `.safetensors` file whose metadata holds `gdensify.kind` (which model family, e.g. "object"
or "scene"), `gdensify.config` (the resolved config as JSON) and `gdensify.format` (the layout version). Training
state for exact resumption (optimizer, step) lives separately in Lightning's `.ckpt` files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import atomic_path

FORMAT_VERSION = "1"


@dataclass
class Checkpoint:
    kind: str
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, str]


def save_checkpoint(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], kind: str,
                    config: dict[str, Any], extra: dict[str, str] | None = None) -> Path:
    """Write weights + config atomically. `extra` adds free-form string metadata (e.g. how it was trained)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    metadata = {"gdensify.kind": kind, "gdensify.config": json.dumps(config), "gdensify.format": FORMAT_VERSION}
    metadata.update(extra or {})
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def load_checkpoint(path: str | os.PathLike, kind: str | None = None) -> Checkpoint:
    """Read a checkpoint; `kind` (if given) must match. Errors name the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state_dict = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable safetensors checkpoint ({err})") from err
    missing = [k for k in ("gdensify.kind", "gdensify.config", "gdensify.format") if k not in metadata]
    if missing:
        raise ValueError(f"{path}: missing checkpoint metadata {missing} (not written by gdensify?)")
    if metadata["gdensify.format"] != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {metadata['gdensify.format']}, expected {FORMAT_VERSION}")
    if kind is not None and metadata["gdensify.kind"] != kind:
        raise ValueError(f"{path}: a {metadata['gdensify.kind']!r} checkpoint, expected {kind!r}")
    try:
        config = json.loads(metadata["gdensify.config"])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: metadata 'gdensify.config' is not valid JSON ({err})") from None
    bad = [name for name, t in state_dict.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ValueError(f"{path}: {len(bad)} weight tensor(s) hold NaN or Inf, e.g. {bad[:3]}")
    return Checkpoint(metadata["gdensify.kind"], config, state_dict, metadata)

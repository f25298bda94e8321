"""Weight files: one reader (`read_state_dict`) and one loader (`load_mapped`) for every model.

Each model keeps only its key-mapping function (its name → ours, or None for a key it does not use); the loader
checks names and shapes and reports every problem in one format.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn


class WeightLoadingError(ValueError):
    """A weight file does not match the model; the message lists missing, unexpected and mismatched tensors."""


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a local `.safetensors` file or a torch checkpoint (`weights_only=True`: no code runs).

    A torch checkpoint holding a dict under "state_dict", "model" or "module" (Lightning, DINO's own format, DDP
    wrappers) is unwrapped; non-tensor entries are dropped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weight file at {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # noqa: PLC0415

            return dict(load_file(str(path), device="cpu"))
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (any decoding failure is reported with the file name)
        raise WeightLoadingError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from err
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise WeightLoadingError(f"{path} does not hold a state dict of tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise WeightLoadingError(f"{path} does not hold a state dict of tensors")
    return tensors


@dataclass
class LoadReport:
    """What `load_mapped` did: model tensors loaded, model tensors the file lacked (non-strict loads only), and
    file keys the mapping dropped."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _listing(names: list[str], limit: int = 10) -> str:
    return f"{names[:limit]}{' ...' if len(names) > limit else ''}"


def load_mapped(
    module: nn.Module, state: Mapping[str, Tensor], key_fn: Callable[[str], str | None] | None = None,
    strict: bool = True, source: str = "weights", scope: tuple[str, ...] | None = None,
) -> LoadReport:
    """Copy `state` into `module` after mapping every key with `key_fn` (None → the key is dropped and reported
    as ignored; default: names are ours already).

    The module's tensors considered are those whose names start with one of `scope` (default: all). Unknown names
    and shape mismatches are always errors; tensors the file lacks are an error when `strict`. One
    `WeightLoadingError` names `source` and lists every problem."""
    own = {k: v for k, v in module.state_dict().items() if scope is None or k.startswith(scope)}
    mapped: dict[str, Tensor] = {}
    report = LoadReport()
    unknown, mismatched = [], []
    for key, value in state.items():
        name = key if key_fn is None else key_fn(key)
        if name is None:
            report.ignored.append(key)
        elif name not in own:
            unknown.append(key if name == key else f"{key} (as {name})")
        elif tuple(value.shape) != tuple(own[name].shape):
            mismatched.append(f"{name}: file {tuple(value.shape)} vs model {tuple(own[name].shape)}")
        else:
            mapped[name] = value
    missing = sorted(set(own) - set(mapped))
    problems = []
    if missing and strict:
        problems.append(f"missing keys ({len(missing)} of {len(own)} model tensors): {_listing(missing)}")
    if unknown:
        problems.append(f"unexpected keys ({len(unknown)}): {_listing(sorted(unknown))} (no counterpart in the "
                        "model)")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {_listing(sorted(mismatched))} (tensors that "
                        "differ in shape)")
    if problems:
        raise WeightLoadingError(f"{source} does not match the model: " + "; ".join(problems))
    with torch.no_grad():
        for name, value in mapped.items():
            own[name].copy_(value.to(own[name].dtype))
    report.loaded, report.missing, report.ignored = sorted(mapped), missing, sorted(report.ignored)
    return report

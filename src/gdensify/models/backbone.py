"""The backbone contract: what every coarse predictor gives the GD pipeline (`models/gd.py`), and the registry.

A backbone turns a `ViewBatch` into coarse Gaussians (`forward`), and provides the two GD hooks:
- `condition(coarse, batch, render, index, conditioning)`: the densifier's input features for the selected
  Gaussians (and the coarse set as the fine set keeps it), given the coarse Gaussians' render into the input views;
  `conditioning` is the module `build_conditioning` made for GD (None when the backbone needs none), which the GD
  model owns (its parameters are `conditioning.*`, beside `backbone.*` and `densifier.*`, as in the releases);
- `finalize(result, coarse, batch)`: the densifier's raw leaves → Gaussians (identity unless the backbone
  activates attributes in its own way, as MVSplat's adapter does).

Adding a backbone is one module: subclass `Backbone`, give its config a `name` field, decorate the class with
`@register_backbone("name", ConfigClass)`. `GDConfig(backbone=ConfigClass(...))` then builds it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from ..data.batch import ViewBatch
from ..densify import DensifierResult
from ..gaussians import Gaussians
from ..render import RenderOutput


@dataclass
class Coarse:
    """The coarse Gaussians of a batch, flat and item-major, and what the GD pipeline needs of them.

    `group` is the unit of top-K selection and of the densifier's per-object statistics: the item for objects,
    item·V + view for pixel-aligned scene Gaussians. `candidates` marks the Gaussians that may be selected and that
    the fine set keeps (e.g. LaRa's visible set); None = all. `state` is the backbone's own data for its hooks."""

    gaussians: Gaussians
    item: Int[Tensor, " N"]
    group: Int[Tensor, " N"]
    num_items: int
    num_groups: int
    candidates: Bool[Tensor, " N"] | None = None
    state: Any = None

    def __len__(self) -> int:
        return len(self.gaussians)

    def sets(self) -> list[Gaussians]:
        """One `Gaussians` per item (views in order for pixel-aligned backbones)."""
        counts = torch.bincount(self.item, minlength=self.num_items).tolist()
        out, start = [], 0
        for n in counts:
            out.append(self.gaussians[start:start + n])
            start += n
        return out

    def group_items(self) -> Int[Tensor, " G"]:
        """The item each group belongs to."""
        items = torch.zeros(self.num_groups, dtype=torch.long, device=self.item.device)
        return items.index_copy_(0, self.group, self.item)


@dataclass
class Conditioned:
    """What `condition` gives the densifier: `features` (S, C) of the S selected Gaussians; `kept`, the whole coarse
    set as the fine set keeps its non-selected members (e.g. with LaRa's refined SH); optional
    `initial_attributes` (S, A) that start the densifier's residual attribute sum."""

    features: Float[Tensor, "S C"]
    kept: Gaussians
    initial_attributes: Float[Tensor, "S A"] | None = None


class Backbone(nn.Module, ABC):
    """pixelSplat's encoder contract plus the two GD hooks (module docstring).

    Every backbone keeps its config as `self.config`. `render_in_graph`: whether `condition` trains through the coarse render (then GD renders with the coarse
    Gaussians in the autograd graph in training; otherwise from detached copies). `COMPONENTS` names the parameter
    groups `parameter_counts` reports: component → attribute names."""

    render_in_graph: ClassVar[bool] = False
    densifier_in_bf16: ClassVar[bool] = False  # whether the densifier may join `bf16_modules` on the fast path
    COMPONENTS: ClassVar[dict[str, tuple[str, ...]]] = {}

    config: Any  # a dataclass with `name`, `gd_feature_dim` (the densifier's input width) and `sh_degree`

    @abstractmethod
    def forward(self, batch: ViewBatch, generator: torch.Generator | None = None) -> Coarse:
        """Coarse Gaussians of every item of the batch from its input views."""

    @abstractmethod
    def condition(self, coarse: Coarse, batch: ViewBatch, render: list[RenderOutput], index: Int[Tensor, " S"],
                  conditioning: nn.Module | None) -> Conditioned:
        """Densifier inputs for the selected Gaussians `coarse.gaussians[index]`; `render[b]` is item b's coarse
        render into its input views."""

    def build_conditioning(self) -> nn.Module | None:
        """GD-only modules `condition` needs (built only when the model densifies); default none."""
        return None

    def init_densifier(self, densifier: nn.Module) -> None:
        """Adjust the densifier's initialisation to this backbone (default: leave it)."""

    def bf16_modules(self) -> list[nn.Module]:
        """Stages that may run in bfloat16 on the CPU fast path (`runtime.inference("bf16", ...)`); default none."""
        return []

    def finalize(self, result: DensifierResult, coarse: Coarse, batch: ViewBatch) -> Gaussians:
        """The leaves as Gaussians (default: the densifier's own activation)."""
        return result.gaussians

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component of `COMPONENTS` and in total (works on the meta device)."""
        def count(name: str) -> int:
            part = getattr(self, name, None)
            if part is None:
                return 0
            return sum(p.numel() for p in part.parameters()) if isinstance(part, nn.Module) else part.numel()

        counts = {component: sum(count(n) for n in names) for component, names in self.COMPONENTS.items()}
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts


BACKBONES: dict[str, tuple[type, type[Backbone]]] = {}


def register_backbone(name: str, config_class: type) -> Callable[[type[Backbone]], type[Backbone]]:
    """Class decorator: `BACKBONES[name] = (config_class, cls)`; `config_class` needs a `name` field equal to
    `name` (what a config file uses to choose the backbone)."""
    def add(cls: type[Backbone]) -> type[Backbone]:
        BACKBONES[name] = (config_class, cls)
        return cls
    return add


def build_backbone(config: Any, densifier: Any = None) -> Backbone:
    """The registered backbone for `config` (chosen by `config.name`); `densifier` is the densifier's config when
    the model densifies (a backbone whose hooks depend on it keeps it), else None."""
    name = getattr(config, "name", None)
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; registered: {sorted(BACKBONES)}")
    return BACKBONES[name][1](config, densifier=densifier)


def backbone_config_from_dict(data: dict[str, Any]) -> Any:
    """A backbone config from a plain dict whose `name` picks the registered config class."""
    from ..config import ConfigError, from_dict  # noqa: PLC0415  (config is a leaf module; avoids a cycle)

    name = data.get("name")
    if name not in BACKBONES:
        raise ConfigError(f"model.backbone.name: {name!r} is not a registered backbone; choose one of "
                          f"{sorted(BACKBONES)}")
    return from_dict(BACKBONES[name][0], data, prefix="model.backbone.")

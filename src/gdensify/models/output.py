"""`Reconstruction`: what a reconstruction model returns, and rendering it into a batch of views."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians
from ..render import RasterRules, rasterize


def with_near(cameras: Cameras, near: float | None) -> Cameras:
    """`cameras` with another near plane (None: unchanged)."""
    return cameras if near is None else dataclasses.replace(cameras, near=float(near))


@dataclass
class Reconstruction:
    """Per-item Gaussians. `fine` is None for a coarse-only model (densifier disabled). `rules` and `near` are how
    the model that made them renders (`GDConfig.render_rules`, `render_near`); `render` uses them."""

    coarse: list[Gaussians]
    fine: list[Gaussians] | None = None
    diagnostics: dict[str, Tensor] = field(default_factory=dict)
    rules: RasterRules | None = None
    near: float | None = None

    def gaussians(self, which: Literal["coarse", "fine"]) -> list[Gaussians]:
        if which == "fine":
            if self.fine is None:
                raise ValueError("this model has no fine Gaussians (densifier disabled)")
            return self.fine
        return self.coarse

    def render(self, cameras: list[Cameras], backgrounds: Float[Tensor, "batch view 3"],
               which: Literal["coarse", "fine"] = "fine", backend: str = "auto") -> Float[Tensor, "batch view h w 3"]:
        """Render every item's Gaussians into its cameras over per-view backgrounds (float32), the way the model
        renders (its rules and near plane)."""
        images = []
        for gaussians, cams, bg in zip(self.gaussians(which), cameras, backgrounds):
            images.append(rasterize(gaussians.to(dtype=torch.float32), with_near(cams, self.near),
                                    background=bg.float(), backend=backend, rules=self.rules).image)
        return torch.stack(images)

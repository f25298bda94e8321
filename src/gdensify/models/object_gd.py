"""Object-level Generative Densification: the LaRa-style backbone, gradient selection, the densifier and the merge.

Per batch of B objects (Appendix B of `gd_official_spec.md`):
1. backbone → coarse Gaussians and voxel features (all objects at once);
2. render the coarse Gaussians into the input views (kept in the graph: the refinement trains through them);
3. visible set (opacity > 0.005, with the released code's random completion/thinning in training);
4. LaRa refinement of the visible Gaussians → 2·C-dim GD features and refined SH;
5. selection: top-K visible Gaussians per object by the view-space gradient of the input-view MSE (no gradient
   reaches the network from this step);
6. densifier on the selected Gaussians; final set = non-selected visible Gaussians (refined SH) ∪ every layer's
   leaves.
With `densify=False` the model is the coarse-only baseline (steps 1 only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..data.batch import ViewBatch
from ..densify import DensifierConfig, GenerativeDensifier, merge_with_coarse
from ..densify.selection import SelectionConfig, select_gaussians
from ..gaussians import Gaussians
from ..render import rasterize
from .lara import LaRaBackbone, LaRaConfig, parameter_counts, visible_masks
from .output import Reconstruction


@dataclass
class ObjectGDConfig:
    backbone: LaRaConfig = field(default_factory=LaRaConfig.paper)
    densifier: DensifierConfig = field(default_factory=lambda: DensifierConfig.preset("paper_object"))
    selection: SelectionConfig = field(default_factory=lambda: SelectionConfig.preset("released_object"))
    densify: bool = True  # False: the coarse-only baseline
    render_backend: str = "auto"

    def __post_init__(self) -> None:
        if self.densify and self.densifier.in_channels != self.backbone.feature_dim:
            raise ValueError(f"densifier.in_channels ({self.densifier.in_channels}) must equal the backbone's GD "
                             f"feature size ({self.backbone.feature_dim})")

    @staticmethod
    def preset(name: str) -> "ObjectGDConfig":
        """`paper`: the published shapes (DINO ViT-B/16, 64³ coarse Gaussians, the released decoder, K = 12,000).
        `tiny`: 128² images, 32³ coarse Gaussians, a small decoder and K = 2,000; trains on 2 CPU cores."""
        if name == "paper":
            return ObjectGDConfig()
        if name == "tiny":
            backbone = LaRaConfig.tiny()
            cell = backbone.cell_size
            densifier = DensifierConfig.preset(
                "tiny", in_channels=backbone.feature_dim, channels=(64, 64), grid_size=cell / 2,
                log_scale_shift=math.log(cell / 24))
            return ObjectGDConfig(backbone, densifier, SelectionConfig.preset("released_object", k=2000))
        raise ValueError(f"unknown object model preset {name!r}; expected 'paper' or 'tiny'")


class ObjectGD(nn.Module):
    """`forward(batch: ViewBatch) -> Reconstruction` for B objects in the normalised object frame."""

    def __init__(self, config: ObjectGDConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = LaRaBackbone(config.backbone)
        self.densifier = GenerativeDensifier(config.densifier) if config.densify else None

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per backbone component (`backbone.*`, names of spec §6), of the backbone, the densifier and
        in total."""
        counts = parameter_counts(self.backbone)
        out = {f"backbone.{k}": v for k, v in counts.items() if k != "total"}
        out["backbone"] = counts["total"]
        if self.densifier is not None:
            out["densifier"] = sum(p.numel() for p in self.densifier.parameters())
        out["total"] = sum(p.numel() for p in self.parameters())
        return out

    def forward(self, batch: ViewBatch, generator: torch.Generator | None = None) -> Reconstruction:
        cfg = self.config
        images = batch.input_images
        coarse = self.backbone(images, batch.input_cameras)
        coarse_sets = coarse.gaussians_list()
        if self.densifier is None:
            return Reconstruction(coarse_sets)

        renders = [rasterize(g, cams, background=bg, backend=cfg.render_backend)
                   for g, cams, bg in zip(coarse_sets, batch.input_cameras, batch.input_backgrounds)]
        masks = visible_masks(coarse, training=self.training, generator=generator)
        refined = self.backbone.refine(coarse, images, torch.stack([r.image for r in renders]),
                                       torch.stack([r.alpha for r in renders]),
                                       torch.stack([r.depth for r in renders]), masks)
        visible = Gaussians.cat([r.gaussians for r in refined])
        owner = torch.cat([torch.full((len(r.index),), i, device=images.device) for i, r in enumerate(refined)])
        # Selection scores the coarse Gaussians (coarse SH), as in the released code.
        coarse_visible = Gaussians.cat([coarse_sets[i][r.index] for i, r in enumerate(refined)])
        selection = select_gaussians(coarse_visible, owner, batch.input_cameras, list(images), cfg.selection,
                                     backgrounds=list(batch.input_backgrounds), backend=cfg.render_backend,
                                     generator=generator)
        features = torch.cat([r.features for r in refined])
        result = self.densifier(visible.means[selection.index], features[selection.index], selection.batch,
                                num_objects=len(batch), generator=generator)
        merged, merged_owner = merge_with_coarse(visible, owner, selection.index, result, num_objects=len(batch))
        fine_sets = [merged[merged_owner == i] for i in range(len(batch))]
        diagnostics = {
            "n_visible": torch.tensor(float(len(visible)) / len(batch)),
            "n_selected": torch.tensor(float(len(selection)) / len(batch)),
            "n_fine": torch.tensor(float(len(merged)) / len(batch)),
        }
        return Reconstruction(coarse_sets, fine_sets, diagnostics)

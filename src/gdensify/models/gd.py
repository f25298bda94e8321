"""One Generative Densification pipeline for every backbone: `GDModel(GDConfig)`.

Per batch (`forward(batch: ViewBatch) -> Reconstruction`):
1. backbone → coarse Gaussians (`Coarse`: flat, item-major, with a group index — the item for objects,
   item·V + view for pixel-aligned scenes — and the candidates that may be selected and are kept);
2. render the coarse Gaussians into the input views ONCE, with differentiable 2-D means: in the autograd graph in
   training when the backbone trains through the render (LaRa's refinement), else from detached copies;
3. selection: the view-space gradient of the input-view MSE from that render (no gradient reaches the network),
   top K per group among the candidates (`densify.selection.select_from_renders`);
4. conditioning (`backbone.condition`): the densifier's input features of the selected Gaussians, sampled from
   the same render;
5. densifier on the selected Gaussians (one densifier "object" per group), `backbone.finalize` activates leaves;
6. fine set per group = the group's leaves ∪ its non-selected candidates (as `condition` keeps them); an item's
   fine set is its groups' sets in group order.
With `densify=False` the model is the coarse-only baseline (step 1 only).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from jaxtyping import Float
from torch import Tensor, nn

from ..cameras import Cameras
from ..data.batch import ViewBatch
from ..densify import DensifierConfig, GenerativeDensifier, merge_with_coarse
from ..densify.selection import SelectionConfig, render_for_selection, select_from_renders
from ..gaussians import Gaussians
from ..render import RasterRules, RenderOutput, rasterize
from .backbone import Backbone, Coarse, backbone_config_from_dict, build_backbone
from .lara import LaRaConfig
from .mvsplat import MVSplatConfig
from .output import Reconstruction, with_near
from .view_tokens import ConditioningConfig


@dataclass
class GDConfig:
    """A backbone (any registered config; its `name` picks the class), the densifier, the selection, and whether
    to densify at all (False: the coarse-only baseline)."""

    backbone: Any = field(default_factory=LaRaConfig)
    densifier: DensifierConfig = field(default_factory=lambda: DensifierConfig.preset("paper_object"))
    selection: SelectionConfig = field(default_factory=lambda: SelectionConfig.preset("released_object"))
    densify: bool = True
    render_backend: str = "auto"
    # how every render of this model's Gaussians is made (selection, conditioning, `Reconstruction.render`):
    # renderer rules, and a near plane replacing the cameras' (None: keep it). The released object model renders
    # with `RasterRules.gd_object_release()` and near 0.2 (the CUDA kernel's).
    render_rules: RasterRules = field(default_factory=RasterRules)
    render_near: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.backbone, dict):
            self.backbone = backbone_config_from_dict(self.backbone)
        if isinstance(self.render_rules, dict):
            self.render_rules = RasterRules(**self.render_rules)
        if self.render_near is not None and not self.render_near > 0:
            raise ValueError(f"render_near must be positive, got {self.render_near}")
        if not self.densify:
            return
        width = self.backbone.gd_feature_dim
        if self.densifier.in_channels != width:
            raise ValueError(f"densifier.in_channels ({self.densifier.in_channels}) must equal the "
                             f"{self.backbone.name} backbone's GD feature size ({width})")
        if self.selection.k < 1:
            raise ValueError(f"selection.k must be >= 1, got {self.selection.k}")
        check = getattr(self.backbone, "check_densifier", None)
        if check is not None:
            check(self.densifier)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "GDConfig":
        """A named model (`PRESETS`) with top-level fields replaced by `overrides`."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}")
        return dataclasses.replace(copy.deepcopy(PRESETS[name]()), **overrides)


def _object_tiny() -> GDConfig:
    # The densifier's layer-0 serialization / sparse-conv grid is one coarse cell, the release's rule (its
    # `grid_size = 0.5·voxel_size` with voxel_size = 2 coarse cells), as in `object-paper` (1/64): the CPE's 3×3×3
    # kernel then sees the neighbouring coarse Gaussians and UP offsets (±offset_scale·grid) reach half a cell.
    # Checkpoints trained before this fix stored half a cell in their config and keep it.
    backbone = LaRaConfig.preset("tiny")
    densifier = DensifierConfig.preset("tiny", in_channels=backbone.feature_dim, channels=(64, 64),
                                       grid_size=backbone.cell_size,
                                       log_scale_shift=backbone.fine_log_scale_shift)
    return GDConfig(backbone, densifier, SelectionConfig.preset("released_object", k=2000))


def _scene_tiny() -> GDConfig:
    backbone = dataclasses.replace(MVSplatConfig.preset("tiny"), conditioning=ConditioningConfig(width=32, heads=4),
                                   leaf_init="parent")
    densifier = DensifierConfig.preset(
        "paper_scene", in_channels=backbone.gd_feature_dim, channels=(64, 48, 32), num_blocks=(1, 1, 1),
        patch_size=16, mlp_ratio=2.0, drop_path=0.1, grid_size=0.04, offset_scale=2.0,
        sh_degree=backbone.sh_degree)
    return GDConfig(backbone, densifier, SelectionConfig.preset("released_scene", k=2048))


PRESETS: dict[str, Callable[[], GDConfig]] = {
    # LaRa-style backbone at the published shapes (DINO ViT-B/16, 64³ coarse Gaussians), the released object
    # densifier, K = 12,000
    "object-paper": GDConfig,
    # 128² images, 32³ coarse Gaussians, a small densifier, K = 2,000; trains on 2 CPU cores
    "object-tiny": _object_tiny,
    # MVSplat's RE10K backbone, 160-wide view conditioning, the released scene densifier, K = 30,000 per view
    "scene-paper": lambda: GDConfig(MVSplatConfig(), DensifierConfig.preset("paper_scene"),
                                    SelectionConfig.preset("released_scene")),
    # 64² scenes: the tiny backbone, 32-wide conditioning, a 3-layer 64/48/32 densifier, K = 2,048 per view (half
    # a view, the paper's ratio), grid 0.04, UP offsets up to 2·grid, leaves start as copies of their parents
    "scene-tiny": _scene_tiny,
}


class GDModel(nn.Module):
    """`forward(batch: ViewBatch) -> Reconstruction` (module docstring). Parameters: `backbone.*` and, when
    densifying, `conditioning.*` (if the backbone needs GD-only modules) and `densifier.*`."""

    def __init__(self, config: GDConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone: Backbone = build_backbone(config.backbone, config.densifier if config.densify else None)
        self.conditioning = self.densifier = None
        if config.densify:
            self.conditioning = self.backbone.build_conditioning()
            self.densifier = GenerativeDensifier(config.densifier)
            self.backbone.init_densifier(self.densifier)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per backbone component (`backbone.*`), of the backbone, the densifier and in total."""
        counts = self.backbone.parameter_counts()
        out = {f"backbone.{k}": v for k, v in counts.items() if k != "total"}
        out["backbone"] = counts["total"]
        for name in ("conditioning", "densifier"):
            module = getattr(self, name)
            if module is not None:
                out[name] = sum(p.numel() for p in module.parameters())
        out["total"] = sum(p.numel() for p in self.parameters())
        return out

    def bf16_modules(self) -> list[nn.Module]:
        """The stages the CPU fast path runs in bfloat16 (`runtime.inference("bf16", model.bf16_modules())`): the
        backbone's, and the densifier where the backbone allows it; empty when no stage keeps its accuracy."""
        modules = self.backbone.bf16_modules()
        if self.densifier is not None and self.backbone.densifier_in_bf16:
            modules = modules + [self.densifier]
        return modules

    def decode_points(self, points: Float[Tensor, "N 3"], features: Float[Tensor, "N C"], camera: Cameras) -> Gaussians:
        """The scene densifier alone on one view's points and conditioned features, activated by MVSplat's adapter
        in that view's `camera` (the released scene decoder's `PointDecoder.forward`; MVSplat backbones only)."""
        from .official import decode_points  # noqa: PLC0415  (official imports this module)

        return decode_points(self, points, features, camera)

    def render_inputs(self, coarse: Coarse, batch: ViewBatch) -> list[RenderOutput]:
        """Every item's coarse Gaussians rendered into its input views over its input background, with
        differentiable 2-D means (module docstring, step 2)."""
        in_graph = self.backbone.render_in_graph and torch.is_grad_enabled()
        cfg = self.config
        renders = []
        for gaussians, cameras, background in zip(coarse.sets(), batch.input_cameras, batch.input_backgrounds):
            cameras = with_near(cameras, cfg.render_near)
            if in_graph:
                renders.append(rasterize(gaussians, cameras, background, backend=cfg.render_backend,
                                         means2d_grad=True, rules=cfg.render_rules))
            else:
                renders.append(render_for_selection(gaussians, cameras, background, cfg.render_backend,
                                                    rules=cfg.render_rules))
        return renders

    def forward(self, batch: ViewBatch, generator: torch.Generator | None = None) -> Reconstruction:
        coarse = self.backbone(batch, generator)
        coarse_sets = coarse.sets()
        look = dict(rules=self.config.render_rules, near=self.config.render_near)
        if self.densifier is None:
            return Reconstruction(coarse_sets, **look)

        renders = self.render_inputs(coarse, batch)
        selection = select_from_renders(coarse.gaussians, coarse.item, coarse.num_items, renders,
                                        list(batch.input_images), self.config.selection, groups=coarse.group,
                                        num_groups=coarse.num_groups, candidates=coarse.candidates,
                                        generator=generator)
        if not (self.backbone.render_in_graph and torch.is_grad_enabled()):
            renders = [dataclasses.replace(r, image=r.image.detach(), alpha=r.alpha.detach(), depth=r.depth.detach())
                       for r in renders]
        index = selection.index
        conditioned = self.backbone.condition(coarse, batch, renders, index, self.conditioning)
        result = self.densifier(coarse.gaussians.means[index], conditioned.features, coarse.group[index],
                                num_objects=coarse.num_groups, generator=generator,
                                initial_attributes=conditioned.initial_attributes)
        result = dataclasses.replace(result, gaussians=self.backbone.finalize(result, coarse, batch))
        merged, owner = merge_with_coarse(conditioned.kept, coarse.group, index, result, keep=coarse.candidates,
                                          num_objects=coarse.num_groups)
        item = coarse.group_items()[owner]
        fine_sets = [merged[item == i] for i in range(coarse.num_items)]
        n = float(coarse.num_items)
        kept = len(coarse) if coarse.candidates is None else int(coarse.candidates.sum())
        diagnostics = {
            "n_coarse": torch.tensor(len(coarse) / n),
            "n_visible": torch.tensor(kept / n),
            "n_selected": torch.tensor(len(selection) / n),
            "n_fine": torch.tensor(len(merged) / n),
        }
        return Reconstruction(coarse_sets, fine_sets, diagnostics, **look)

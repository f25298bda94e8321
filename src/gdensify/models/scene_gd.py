"""Scene-level Generative Densification: the MVSplat-style backbone, per-view gradient selection, view-sampled
conditioning, the densifier run per context view, and the merge (`shared/reference/paper_and_mvsplat.md` §3b).

Per batch of B scenes with V context views each:
1. backbone → one pixel-aligned coarse Gaussian per pixel per view and its Gaussian-head input feature (163-D in
   the `paper` preset);
2. selection: the coarse Gaussians are rendered into the context views and scored by the norm of the view-summed
   plain view-space gradient of the context-image MSE; the top K **per context view** are selected (no gradient
   reaches the network from this step);
3. conditioning (`ViewConditioning`): each selected Gaussian is projected into every context view, where the input
   RGB (3), the coarse render's RGB (3) and alpha (1), and |rendered depth − the Gaussian's camera z| (1) are
   sampled bilinearly (8-D per view, detached). The feature goes through an MLP to `width` (160) and a LayerNorm
   to form the query of a multi-head cross-attention (16 heads) over the V per-view 8-D tokens (projected to
   `width` by the attention's key/value projections); the attended vector goes through a second MLP and is
   concatenated with the projected feature → the densifier's 2·`width`-D (320) input;
4. densifier, run separately for each context view: densifier object index = b·V + v, so per-view keep ratios
   and serialization anchors apply per view. With ``leaf_init="parent"`` (our addition; the `tiny` preset) the
   residual attributes start from the selected Gaussian's own pre-activation attributes
   (`MVSplatOutput.raw_attributes()`) and the heads' last layers start at zero, so every leaf begins as a copy of
   its parent; with ``"zero"`` (the release) they start from zero and the leaves are learned from scratch;
5. fine attributes are activated as MVSplat's adapter does (as the release does): scale =
   (0.5 + 14.5·sigmoid(raw))·‖mean − centre of the view's camera‖·0.1·pixel footprint, the quaternion and the
   SH (masked 1, 0.1·0.25^l) are rotated from that camera's axes to world, opacity = sigmoid(raw + the
   densifier's `opacity_shift`, 0 in `paper_scene`). The densifier's own `log_scale_shift` is therefore unused.
   With ``leaf_init="parent"`` the n leaves of one parent split its opacity: each gets 1 − (1 − σ(raw))^(1/n)
   (`split_opacity_logits`), so that at initialisation the n near-coincident copies are, at their centres, exactly
   as opaque as the parent, and the fine render starts close to the coarse one;
6. final set per view = every layer's leaves ∪ the view's non-selected coarse Gaussians; a scene's set is its
   views' sets concatenated (view order).
With `densify=False` the model is the coarse-only baseline (MVSplat; step 1 only).

Differences from the release (`stnamjef/GenerativeDensification`, branch `scene`), all deliberate:
- conditioning is computed for the selected Gaussians only (the release computes it for all and then selects;
  same values);
- the depth token compares depths in world units; the release renders the scene rescaled by 1/near and compares
  that render's depth with the world-unit camera z (identical for RE10K's near = 1);
- the rendered depth is the library's Σ w·z (not divided by alpha), as the release's rasterizer returns it;
- a Gaussian behind a context camera samples the border of that view (its projection is taken at z ≥ 1e-6);
  the release divides by the raw z;
- selection candidates need opacity > 0.005 (`SelectionConfig.min_opacity`); the release ranks all Gaussians;
- the `paper_scene` densifier uses the paper's global adaptive normalization (`DensifierConfig.norm`); the released
  scene decoder's norms are plain LayerNorms (pass `norm="layernorm"` to reproduce it);
- ``leaf_init="parent"`` (steps 4–5) is ours and off in the `paper` preset.

Parameters of the `paper` preset: backbone 11,955,734 + conditioning 157,600 + densifier 17,745,051 = 29,858,385;
with `norm="layernorm"` the densifier has 15,686,157 and the total is 27,799,491, the paper's "27.8 M".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from ..cameras import Cameras
from ..data.batch import ViewBatch
from ..densify import (DensifierConfig, DensifierResult, GenerativeDensifier, attributes_to_gaussians,
                       merge_with_coarse, split_opacity_logits)
from ..densify.selection import SelectionConfig, select_gaussians
from ..gaussians import Gaussians
from ..render import rasterize
from .mvsplat import MVSplatBackbone, MVSplatConfig
from .output import Reconstruction

VIEW_TOKEN_DIM = 8  # input RGB 3 + coarse-render RGB 3 + alpha 1 + |rendered depth − z| 1


@dataclass
class ConditioningConfig:
    """Widths of the view-sampled conditioning; the densifier's input has 2·`width` channels."""

    width: int = 160
    heads: int = 16

    def __post_init__(self) -> None:
        if self.width <= 0 or self.heads <= 0 or self.width % self.heads:
            raise ValueError(f"ConditioningConfig needs positive width divisible by heads, got width={self.width}, "
                             f"heads={self.heads}")


@dataclass
class SceneGDConfig:
    backbone: MVSplatConfig = field(default_factory=MVSplatConfig.paper)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    densifier: DensifierConfig = field(default_factory=lambda: DensifierConfig.preset("paper_scene"))
    selection: SelectionConfig = field(default_factory=lambda: SelectionConfig.preset("released_scene"))
    densify: bool = True  # False: the coarse-only baseline (MVSplat)
    leaf_init: Literal["zero", "parent"] = "zero"  # residual attributes start at zero (release) or at the parent
    render_backend: str = "auto"

    def __post_init__(self) -> None:
        if self.leaf_init not in ("zero", "parent"):
            raise ValueError(f"leaf_init must be 'zero' or 'parent', got {self.leaf_init!r}")
        if not self.densify:
            return
        if self.leaf_init == "parent":
            d = self.densifier
            if not (d.residual_attributes and d.head_before_split):
                raise ValueError("leaf_init='parent' needs densifier.residual_attributes=true and "
                                 "densifier.head_before_split=true")
            if d.sh_degree != self.backbone.sh_degree:
                raise ValueError(f"leaf_init='parent' needs densifier.sh_degree ({d.sh_degree}) equal to "
                                 f"backbone.sh_degree ({self.backbone.sh_degree})")
        if self.densifier.in_channels != 2 * self.conditioning.width:
            raise ValueError(f"densifier.in_channels ({self.densifier.in_channels}) must equal 2·conditioning.width "
                             f"({2 * self.conditioning.width})")
        if self.selection.k < 1:
            raise ValueError(f"selection.k must be >= 1 Gaussian per context view, got {self.selection.k}")

    @staticmethod
    def preset(name: str) -> "SceneGDConfig":
        """`paper`: MVSplat's RE10K backbone, the released scene decoder (320/256/128, factors 2/2/2, keep
        0.5/0.8/1.0), K = 30,000 per view, 160-wide conditioning with 16 heads (256² inputs).
        `tiny`: the tiny backbone, a 3-layer 64/48/32 decoder and K = 2,048 per view (half of a 64² view, as the
        paper's 30,000 is about half of a 256² view); grid 0.04 (4× the paper's 0.01 for 4× larger pixels);
        UP offsets up to 2·grid (the paper: 0.1·grid), so a leaf can move by about a pixel footprint; leaves
        start from their parents (``leaf_init="parent"``); trains on 2 CPU cores."""
        if name == "paper":
            return SceneGDConfig()
        if name == "tiny":
            backbone = MVSplatConfig.tiny()
            conditioning = ConditioningConfig(width=32, heads=4)
            densifier = DensifierConfig.preset(
                "paper_scene", in_channels=2 * conditioning.width, channels=(64, 48, 32), num_blocks=(1, 1, 1),
                patch_size=16, mlp_ratio=2.0, drop_path=0.1, grid_size=0.04, offset_scale=2.0,
                sh_degree=backbone.sh_degree)
            return SceneGDConfig(backbone, conditioning, densifier,
                                 SelectionConfig.preset("released_scene", k=2048), leaf_init="parent")
        raise ValueError(f"unknown scene model preset {name!r}; expected 'paper' or 'tiny'")


def _xavier_mlp(in_dim: int, width: int) -> nn.Sequential:
    """Linear → ReLU → Linear, Xavier-uniform weights and zero biases (as the release initialises them)."""
    mlp = nn.Sequential(nn.Linear(in_dim, width), nn.ReLU(), nn.Linear(width, width))
    for layer in (mlp[0], mlp[2]):
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)
    return mlp


class ViewConditioning(nn.Module):
    """features (S, F) and per-view tokens (S, V, 8) → densifier input (S, 2·width) = [MLP(features) ‖
    MLP(cross-attention(LayerNorm(MLP(features)), tokens))]."""

    def __init__(self, feature_dim: int, config: ConditioningConfig) -> None:
        super().__init__()
        w = config.width
        self.project = _xavier_mlp(feature_dim, w)
        self.norm = nn.LayerNorm(w)
        self.attention = nn.MultiheadAttention(w, config.heads, bias=False, kdim=VIEW_TOKEN_DIM,
                                               vdim=VIEW_TOKEN_DIM, batch_first=True)
        self.mlp = _xavier_mlp(w, w)

    def forward(self, features: Float[Tensor, "S F"], tokens: Float[Tensor, "S V 8"]) -> Float[Tensor, "S D"]:
        projected = self.project(features)
        query = self.norm(projected)[:, None]
        attended = self.attention(query, tokens, tokens, need_weights=False)[0][:, 0]
        return torch.cat([projected, self.mlp(attended)], dim=-1)


@torch.no_grad()
def view_tokens(points: Float[Tensor, "S 3"], cameras: Cameras, images: Float[Tensor, "V H W 3"],
                coarse: Gaussians, background: Float[Tensor, "3"], backend: str = "auto") -> Float[Tensor, "S V 8"]:
    """The 8-D conditioning token of each point in each of the V context views (no gradient): bilinear samples
    (`grid_sample`, pixel centres at +0.5, border padding) of the input image, the coarse Gaussians' render and
    alpha, and |rendered depth (Σ w·z) − the point's camera z| (world units)."""
    render = rasterize(coarse, cameras, background=background, backend=backend)
    maps = torch.cat([images, render.image, render.alpha, render.depth], dim=-1).permute(0, 3, 1, 2)  # V 8 H W
    w2c = cameras.world_to_camera.to(points)
    intrinsics = cameras.intrinsics.to(points)
    cam = torch.einsum("vij,sj->vsi", w2c[:, :3, :3], points) + w2c[:, None, :3, 3]  # V S 3
    z = cam[..., 2]
    pixel = torch.einsum("vij,vsj->vsi", intrinsics[:, :2, :2], cam[..., :2] / z.clamp_min(1e-6)[..., None]) \
        + intrinsics[:, None, :2, 2]
    size = points.new_tensor([cameras.width, cameras.height])
    grid = 2.0 * pixel / size - 1.0  # align_corners=False: −1 and +1 are the outer image edges
    samples = F.grid_sample(maps.to(points), grid[:, None], mode="bilinear", padding_mode="border",
                            align_corners=False)[:, :, 0]  # V 8 S
    samples = samples.permute(2, 0, 1)  # S V 8
    return torch.cat([samples[..., :7], (samples[..., 7] - z.T).abs()[..., None]], dim=-1)


class SceneGD(nn.Module):
    """`forward(batch: ViewBatch) -> Reconstruction` for B scenes of V ≥ 2 context views (OpenCV cameras in
    metres-like world units, near/far from the `Cameras`; black backgrounds)."""

    def __init__(self, config: SceneGDConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = MVSplatBackbone(config.backbone)
        if config.densify:
            self.conditioning = ViewConditioning(config.backbone.feature_dim, config.conditioning)
            self.densifier = GenerativeDensifier(config.densifier)
            if config.leaf_init == "parent":
                self.densifier.zero_init_heads()
        else:
            self.conditioning = self.densifier = None

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per backbone component (`backbone.*`), of the backbone, the conditioning and the densifier,
        and in total."""
        counts = self.backbone.parameter_counts()
        out = {f"backbone.{k}": v for k, v in counts.items() if k != "total"}
        out["backbone"] = counts["total"]
        if self.densifier is not None:
            out["conditioning"] = sum(p.numel() for p in self.conditioning.parameters())
            out["densifier"] = sum(p.numel() for p in self.densifier.parameters())
        out["total"] = sum(p.numel() for p in self.parameters())
        return out

    def forward(self, batch: ViewBatch, generator: torch.Generator | None = None) -> Reconstruction:
        cfg = self.config
        images = batch.input_images
        b, v, h, w, _ = images.shape
        coarse = self.backbone(images, batch.input_cameras)
        coarse_sets = coarse.gaussians()
        if self.densifier is None:
            return Reconstruction(coarse_sets)

        gaussians = Gaussians.cat(coarse_sets)  # scene-major, then (view, row, column)
        per_scene = v * h * w
        scene = torch.arange(b, device=images.device).repeat_interleave(per_scene)
        view = scene * v + coarse.view_index().repeat(b)  # densifier object = b·V + v
        selection = select_gaussians(gaussians, scene, batch.input_cameras, list(images), cfg.selection,
                                     groups=view, backgrounds=list(batch.input_backgrounds),
                                     backend=cfg.render_backend, generator=generator)
        index, selected_scene = selection.index, selection.batch
        tokens = torch.empty(len(index), v, VIEW_TOKEN_DIM, dtype=images.dtype, device=images.device)
        for i in range(b):
            rows = torch.nonzero(selected_scene == i, as_tuple=False).flatten()
            tokens[rows] = view_tokens(gaussians.means[index[rows]], batch.input_cameras[i], images[i],
                                       coarse_sets[i], batch.input_backgrounds[i], cfg.render_backend)
        features = coarse.features.reshape(b * per_scene, -1)[index]
        initial = None
        if cfg.leaf_init == "parent":
            initial = coarse.raw_attributes().reshape(b * per_scene, -1)[index]
            initial[:, 3 * cfg.backbone.num_sh] -= cfg.densifier.opacity_shift  # the densifier adds it back
        result = self.densifier(gaussians.means[index], self.conditioning(features, tokens), view[index],
                                num_objects=b * v, generator=generator, initial_attributes=initial)
        result = dataclasses.replace(result, gaussians=self._activate_fine(result, batch.input_cameras))
        merged, owner = merge_with_coarse(gaussians, view, index, result, num_objects=b * v)
        owner_scene = torch.div(owner, v, rounding_mode="floor")
        fine_sets = [merged[owner_scene == i] for i in range(b)]
        diagnostics = {
            "n_coarse": torch.tensor(float(len(gaussians)) / b),
            "n_selected": torch.tensor(float(len(selection)) / b),
            "n_fine": torch.tensor(float(len(merged)) / b),
        }
        return Reconstruction(coarse_sets, fine_sets, diagnostics)

    def _activate_fine(self, result: DensifierResult, cameras: list[Cameras]) -> Gaussians:
        """The densifier's raw head outputs activated by MVSplat's adapter in the axes of the context camera each
        fine Gaussian's view came from (module docstring, step 5)."""
        dcfg = self.config.densifier
        raw = attributes_to_gaussians(result.gaussians.means, result.attributes, dcfg.sh_degree,
                                      opacity_shift=dcfg.opacity_shift, log_scale_shift=0.0)
        if self.config.leaf_init == "parent":
            leaves = torch.bincount(result.parent)[result.parent]  # leaves of each fine Gaussian's parent
            raw = dataclasses.replace(raw, opacity_logits=split_opacity_logits(raw.opacity_logits, leaves))
        views = len(cameras[0])
        parts = []
        start = 0
        for obj, count in enumerate(result.counts.tolist()):  # rows are grouped by object = b·V + v
            g = raw[start: start + count]
            start += count
            cam = cameras[obj // views][obj % views]
            c2w = cam.camera_to_world.to(g.means)
            distance = (g.means - c2w[0, :3, 3]).norm(dim=-1)
            log_scales, quats, sh = self.backbone.activate_attributes(g.log_scales, g.quats, g.sh, distance, c2w,
                                                                      cam.intrinsics.to(g.means))
            parts.append(Gaussians(g.means, quats, log_scales, g.opacity_logits, sh))
        return Gaussians.cat(parts)

"""MVSplat-style scene backbone: posed context views → one pixel-aligned Gaussian per pixel per view.

Architecture (MVSplat, Chen et al. 2024, `src/model/encoder/encoder_costvolume.py`; blocks in `mvsplat_layers.py`, geometry in
`mvsplat_geometry.py`):

1. Feature backbone: CNN (UniMatch-style residual blocks, InstanceNorm, channels 64→96→128) to 1/4 resolution,
   1×1 conv to `d_feature`; then a multi-view transformer (6 × self- + cross-view attention with FFN, 1 head) in
   Swin-style shifted local windows (`attn_splits` windows per side; `attn_splits=1` is global attention) with
   sine position encodings. For V > 2 views each view attends to all others.
2. Plane-sweep cost volume at 1/4 resolution over `num_depth_candidates` depths spaced uniformly in inverse depth
   between near and far: each other view's transformer features are warped into the reference view per depth
   plane (bilinear `grid_sample`), correlated by dot product / sqrt(C), averaged over the other views.
3. Cost-volume refinement: [correlation ‖ features] → conv3×3 + GroupNorm + GELU → 2-D U-Net (cross-view attention
   at the lowest level) → conv to D logits, plus a 1×1 residual from the input; a conv-GELU-conv depth head; softmax
   over candidates; disparity = expectation, confidence = max probability; both up-sampled ×4 (disparity
   bilinearly, confidence nearest).
4. Full-resolution features: [transformer ‖ CNN] → conv → bilinear ×4 → GELU (`d_feature` ch), projected to
   `depth_unet_channels`.
5. Depth refinement U-Net on [RGB, projected features, disparity, confidence] (cross-view attention at 1/16); a
   conv-GELU-conv head gives Δdisparity and a raw density; disparity = clamp(up-sampled + Δ, 1/far, 1/near),
   depth = 1/disparity ∈ [near, far]; opacity = sigmoid(raw density) (MVSplat's opacity mapping with
   initial = final = 0 is the identity), i.e. opacity comes from the refinement net that sees the matching
   confidence.
6. Gaussian head on the per-pixel feature [refinement output ‖ RGB ‖ full-res features] (163 channels in the
   `paper` preset; exported as `features`: the GD densifier's per-Gaussian input): conv3×3 → GELU → conv3×3 to
   2 sub-pixel offsets + 3 scales + 4 quaternion + 3·(d+1)² SH.
7. Gaussian adapter (MVSplat's): mean = camera centre + unit ray direction × depth (`depth_mode="ray"`: the
   plane-sweep depth is used as a distance along the normalised ray, as MVSplat does; `"z"` places it at camera z
   instead); scale = (0.5 + 14.5·sigmoid)·depth·0.1·pixel footprint (footprint = 1/fx + 1/fy); the head's
   quaternion is in camera axes and is rotated to world (q_world = q_c2w ⊗ q); SH coefficients are scaled by
   MVSplat's mask (0.1·0.25^l for degree l) and rotated from camera to world axes (exact SH rotation for any
   degree 0–4, `mvsplat_geometry.rotate_sh`). No sigmoid on colour (colour = SH·basis + 0.5 as everywhere).

Differences from the reference code, deliberate by default: pixel centres at +0.5 with `align_corners=False`
everywhere (the reference mixes integer pixel coordinates with `align_corners=True`); intrinsics in pixels; views
laid out b-major; opacity stored as a logit (the raw density itself, so sigmoid gives MVSplat's opacity); the
U-Nets' cross-view attention always spans the V views of one scene (the reference reshapes by a fixed frame count);
SH rotation by an exact least-squares fit per band instead of e3nn's Wigner matrices; shifted-window attention
masks exactly instead of adding −100; the plane-sweep grid is computed without gradient, as in the reference, and
sampling points behind the source camera read zeros.

Released-code switches (`MVSplatConfig`; all off by default, all on in `MVSplatConfig.preset("released")`, which loads and
reproduces published MVSplat / GD-scene checkpoints, see `gdensify.models.official`):
- ``window_mask``: ``"exact"`` | ``"additive"`` (−100 added to the logits of masked tokens, as UniMatch);
- ``cost_volume_grid``: ``"centers"`` | ``"released"`` (the reference warps integer pixel coordinates with the
  normalised intrinsics scaled to the feature map and samples with `align_corners=True`, i.e. the feature-map
  principal point moves by +0.5 px);
- ``upsample_align_corners``: ``False`` | ``True`` (bilinear ×4 up-sampling of the full-resolution features and of
  the disparity with `align_corners=True`);
- ``sh_rotation``: ``"exact"`` | ``"e3nn"`` (`mvsplat_geometry.e3nn_wigner_matrices`).
The released Gaussian head's output layout (quaternion xyzw, SH channel-major) differs from ours ([scale | wxyz |
SH coefficient-major]); `gdensify.models.official` permutes the rows of its last convolution at load time.

Inputs: images (B, V, H, W, 3) in [0, 1] with H and W multiples of `config.size_multiple` (16 in both presets);
cameras as a list of B `Cameras` of V views each (intrinsics in pixels for H×W), a single `Cameras` of B·V views
(scene-major), or a pair of tensors (world_to_camera (B, V, 4, 4), intrinsics (B, V, 3, 3)); near and far as floats
or (B,) tensors, or None to take them from the `Cameras` objects.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from ..cameras import Cameras, stack_cameras
from ..data.batch import ViewBatch
from ..densify import DensifierConfig, DensifierResult, attributes_to_gaussians, split_opacity_logits
from ..gaussians import Gaussians
from ..config import Presets
from ..io.weights import load_mapped, read_state_dict
from ..render import RenderOutput
from .backbone import Backbone, Coarse, Conditioned, register_backbone
from .mvsplat_geometry import (SH_ROTATIONS, adapt_attributes, disparity_candidates, pixel_centers,
                               plane_sweep_correlation)
from .mvsplat_layers import IMAGENET_MEAN, IMAGENET_STD, CNNEncoder, MultiViewTransformer, RefinementNet
from .view_tokens import VIEW_TOKEN_DIM, ConditioningConfig, ViewConditioning, sample_view_tokens, token_maps

# The `paper` preset's parameter count is checked against this: MVSplat's "#Param (M) 12" in the GD project page's
# RealEstate10K table.
PAPER_PARAMETERS_M = 12.0


@dataclass
class MVSplatConfig(Presets):
    """Sizes of the MVSplat-style backbone. Defaults = the `paper` preset (MVSplat's RE10K model)."""

    # feature backbone
    cnn_channels: tuple[int, ...] = (64, 96, 128)  # 3 stages
    d_feature: int = 128
    transformer_layers: int = 6
    transformer_heads: int = 1
    ffn_expansion: int = 4
    attn_splits: int = 2  # windows per side at 1/4 resolution (1 = global attention)
    # cost volume
    num_depth_candidates: int = 128
    costvolume_unet_channels: int = 128
    costvolume_unet_channel_mult: tuple[int, ...] = (1, 1, 1)
    costvolume_unet_attn_levels: tuple[int, ...] = (4,)  # down-sampling factors (of the 1/4 map) with attention
    costvolume_depth_chunk: int = 32  # depth planes warped at once (memory bound only)
    # depth refinement
    depth_unet_channels: int = 32
    depth_unet_channel_mult: tuple[int, ...] = (1, 1, 1, 1, 1)
    depth_unet_attn_levels: tuple[int, ...] = (16,)  # down-sampling factors (of the full-res map) with attention
    unet_head_channels: int = 32
    zero_init_residual: bool = True  # LDM-style zero-initialised last norm of each residual / attention branch
    # Gaussians
    sh_degree: int = 4
    scale_min: float = 0.5
    scale_max: float = 15.0
    scale_multiplier: float = 0.1
    pixel_offsets: bool = True  # learned sub-pixel offsets of the ray in [-0.5, 0.5] px (MVSplat); False = centre
    depth_mode: Literal["ray", "z"] = "ray"
    feature_backbone_weights: str | None = None  # optional local file initialising `cnn` + `transformer`
    # released-code switches (module docstring)
    window_mask: Literal["exact", "additive"] = "exact"
    cost_volume_grid: Literal["centers", "released"] = "centers"
    upsample_align_corners: bool = False
    sh_rotation: Literal["exact", "e3nn"] = "exact"
    # GD hooks (used only when the model densifies)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    leaf_init: Literal["zero", "parent"] = "zero"  # residual attributes start at zero (release) or at the parent
    name: Literal["mvsplat"] = "mvsplat"  # the backbone registry key

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"MVSplatConfig.{name} must be positive, got {getattr(self, name)}")

        for name in ("d_feature", "transformer_layers", "transformer_heads", "ffn_expansion", "attn_splits",
                     "num_depth_candidates", "costvolume_unet_channels", "costvolume_depth_chunk",
                     "depth_unet_channels", "unet_head_channels"):
            positive(name)
        self.cnn_channels = tuple(int(c) for c in self.cnn_channels)
        for name in ("costvolume_unet_channel_mult", "depth_unet_channel_mult", "costvolume_unet_attn_levels",
                     "depth_unet_attn_levels"):
            setattr(self, name, tuple(int(c) for c in getattr(self, name)))
        if len(self.cnn_channels) != 3 or min(self.cnn_channels) <= 0:
            raise ValueError(f"MVSplatConfig.cnn_channels must be 3 positive ints, got {self.cnn_channels}")
        if self.d_feature % 4 != 0:
            raise ValueError(f"MVSplatConfig.d_feature must be a multiple of 4 (sine encoding), got {self.d_feature}")
        if self.d_feature % self.transformer_heads != 0:
            raise ValueError(f"MVSplatConfig.d_feature={self.d_feature} not divisible by "
                             f"transformer_heads={self.transformer_heads}")
        for prefix in ("costvolume_unet", "depth_unet"):
            mult = getattr(self, f"{prefix}_channel_mult")
            channels = getattr(self, f"{prefix}_channels")
            if channels % 4 != 0:
                raise ValueError(f"MVSplatConfig.{prefix}_channels must be a multiple of 4 (GroupNorm), got {channels}")
            if not mult or min(mult) <= 0:
                raise ValueError(f"MVSplatConfig.{prefix}_channel_mult must be non-empty positive, got {mult}")
            levels = {2 ** i for i in range(len(mult))}
            bad = [a for a in getattr(self, f"{prefix}_attn_levels") if a not in levels]
            if bad:
                raise ValueError(f"MVSplatConfig.{prefix}_attn_levels {bad} not among the U-Net's levels "
                                 f"{sorted(levels)}")
            for m in mult:
                if (m * channels) % 4 != 0:
                    raise ValueError(f"MVSplatConfig.{prefix}: {m}·{channels} channels must be a multiple of 4 "
                                     "(GroupNorm)")
            for a in getattr(self, f"{prefix}_attn_levels"):
                ch = mult[int(math.log2(a))] * channels
                if ch % self.unet_head_channels != 0:
                    raise ValueError(f"MVSplatConfig.{prefix}: {ch} channels at level {a} not divisible by "
                                     f"unet_head_channels={self.unet_head_channels}")
        if not 0 <= self.sh_degree <= 4:
            raise ValueError(f"MVSplatConfig.sh_degree must be in [0, 4], got {self.sh_degree}")
        if not 0 < self.scale_min < self.scale_max:
            raise ValueError(f"MVSplatConfig needs 0 < scale_min < scale_max, got {self.scale_min}, {self.scale_max}")
        if self.scale_multiplier <= 0:
            raise ValueError(f"MVSplatConfig.scale_multiplier must be positive, got {self.scale_multiplier}")
        if self.depth_mode not in ("ray", "z"):
            raise ValueError(f"MVSplatConfig.depth_mode must be 'ray' or 'z', got {self.depth_mode!r}")
        for name, allowed in (("window_mask", ("exact", "additive")), ("cost_volume_grid", ("centers", "released")),
                              ("sh_rotation", SH_ROTATIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"MVSplatConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")

        if isinstance(self.conditioning, dict):
            self.conditioning = ConditioningConfig(**self.conditioning)
        if self.leaf_init not in ("zero", "parent"):
            raise ValueError(f"leaf_init must be 'zero' or 'parent', got {self.leaf_init!r}")

    def check_densifier(self, densifier: DensifierConfig) -> None:
        """The densifier settings GD on this backbone needs (raises ValueError)."""
        if self.leaf_init == "parent":
            if not (densifier.residual_attributes and densifier.head_before_split):
                raise ValueError("leaf_init='parent' needs densifier.residual_attributes=true and "
                                 "densifier.head_before_split=true")
            if densifier.sh_degree != self.sh_degree:
                raise ValueError(f"leaf_init='parent' needs densifier.sh_degree ({densifier.sh_degree}) equal to "
                                 f"backbone.sh_degree ({self.sh_degree})")

    # ------------------------------------------------------------------ presets
    PRESETS = {
        # MVSplat's RealEstate10K model (config/experiment/re10k.yaml over costvolume.yaml): ~12 M parameters
        "paper": {},
        # the `paper` shapes with every released-code switch on (module docstring): what published MVSplat and
        # GD-scene checkpoints need to reproduce their outputs
        "released": dict(window_mask="additive", cost_volume_grid="released", upsample_align_corners=True,
                         sh_rotation="e3nn"),
        # trains on 2 CPU cores at 64²–128² with 2 views; same structure, small channels, 32 depth candidates
        "tiny": dict(cnn_channels=(16, 24, 32), d_feature=32, transformer_layers=2, transformer_heads=1,
                     ffn_expansion=2, attn_splits=2, num_depth_candidates=32, costvolume_unet_channels=32,
                     costvolume_unet_channel_mult=(1, 1, 1), costvolume_unet_attn_levels=(4,),
                     costvolume_depth_chunk=32, depth_unet_channels=16, depth_unet_channel_mult=(1, 1, 1, 1),
                     depth_unet_attn_levels=(8,), unet_head_channels=16, sh_degree=2),
    }

    def unset_pretrained_weights(self) -> list[str]:
        """Config keys of the pretrained weights the published recipe starts from and that are unset here:
        `feature_backbone_weights` (UniMatch / GMFlow `cnn` + `transformer`) when the feature backbone has the
        published shape; [] otherwise (e.g. `tiny`, trained from scratch)."""
        published = MVSplatConfig()
        shape = ("cnn_channels", "d_feature", "transformer_layers", "transformer_heads", "ffn_expansion")
        if all(getattr(self, k) == getattr(published, k) for k in shape) and not self.feature_backbone_weights:
            return ["feature_backbone_weights"]
        return []

    # ------------------------------------------------------------------ derived sizes
    @property
    def gd_feature_dim(self) -> int:
        """The densifier's input width: the view conditioning's output, 2·`conditioning.width`."""
        return 2 * self.conditioning.width

    @property
    def feature_dim(self) -> int:
        """Channels of the per-Gaussian feature (the Gaussian head's input): refinement + RGB + full-res features."""
        return self.depth_unet_channels + 3 + self.d_feature

    @property
    def num_sh(self) -> int:
        return (self.sh_degree + 1) ** 2

    @property
    def raw_channels(self) -> int:
        """Gaussian-head output channels: [2 offsets] + 3 scales + 4 quaternion + 3·(d+1)² SH (84 for `paper`)."""
        return (2 if self.pixel_offsets else 0) + 3 + 4 + 3 * self.num_sh

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this: 4 × the cost-volume U-Net's and the windows' divisibility, and the
        depth U-Net's down-sampling."""
        cv = 2 ** (len(self.costvolume_unet_channel_mult) - 1)
        cv = cv * self.attn_splits // math.gcd(cv, self.attn_splits)
        depth = 2 ** (len(self.depth_unet_channel_mult) - 1)
        m = 4 * cv
        return m * depth // math.gcd(m, depth)


# ---------------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class MVSplatOutput:
    """Per-pixel coarse Gaussians of every context view, batched, plus what GD needs.

    Gaussian fields are raw in the library's convention (quaternion wxyz unnormalised, log-scales, opacity logits,
    SH (K, 3) in world axes). `head_output` is the Gaussian head's raw [scale | quaternion | SH] (camera axes,
    before the adapter; pixel offsets removed); `raw_attributes()` reorders it into the densifier HEAD's layout.
    The flat order of a scene's Gaussians is (view, row, column)."""

    means: Float[Tensor, "B V H W 3"]
    quats: Float[Tensor, "B V H W 4"]
    log_scales: Float[Tensor, "B V H W 3"]
    opacity_logits: Float[Tensor, "B V H W"]
    sh: Float[Tensor, "B V H W K 3"]
    head_output: Float[Tensor, "B V H W R"]  # raw [scale 3 | quaternion 4 | SH 3K], R = 3K + 7
    features: Float[Tensor, "B V H W F"]  # Gaussian-head input (GD's per-Gaussian feature)
    depth: Float[Tensor, "B V H W"]  # in [near, far]; distance along the unit ray ("ray") or camera z ("z")
    confidence: Float[Tensor, "B V H W"]  # max softmax probability over depth candidates (nearest up-sampled)
    coarse_depth: Float[Tensor, "B V h w"]  # 1 / expected disparity of the cost volume, 1/4 resolution
    pixel_xy: Float[Tensor, "B V H W 2"]  # image point each Gaussian's ray passes through (pixels, centres +0.5)
    near: Float[Tensor, " B"]
    far: Float[Tensor, " B"]
    diagnostics: dict[str, Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.means.shape[0]

    @property
    def num_views(self) -> int:
        return self.means.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W)."""
        return self.means.shape[2], self.means.shape[3]

    def view_gaussians(self, b: int, v: int) -> Gaussians:
        """The H·W Gaussians of view v of scene b (row-major pixels)."""
        k = self.sh.shape[-2]
        return Gaussians(self.means[b, v].reshape(-1, 3), self.quats[b, v].reshape(-1, 4),
                         self.log_scales[b, v].reshape(-1, 3), self.opacity_logits[b, v].reshape(-1),
                         self.sh[b, v].reshape(-1, k, 3))

    def scene_gaussians(self, b: int) -> Gaussians:
        """All V·H·W Gaussians of scene b, ordered (view, row, column)."""
        k = self.sh.shape[-2]
        return Gaussians(self.means[b].reshape(-1, 3), self.quats[b].reshape(-1, 4),
                         self.log_scales[b].reshape(-1, 3), self.opacity_logits[b].reshape(-1),
                         self.sh[b].reshape(-1, k, 3))

    def gaussians(self) -> list[Gaussians]:
        """One `Gaussians` per scene (the coarse set)."""
        return [self.scene_gaussians(b) for b in range(self.batch_size)]

    def raw_attributes(self) -> Float[Tensor, "B V H W A"]:
        """Every Gaussian before the adapter, in the layout of the densifier's HEAD (`densify.layers.GaussianHead`):
        [SH (unmasked, camera axes, index k·3 + channel) | opacity logit | raw scales | raw quaternion],
        A = 3K + 8; `MVSplatBackbone.activate_attributes` maps the last three parts to world space."""
        scales, quats, sh = split_head_output(self.head_output)
        return torch.cat([sh, self.opacity_logits[..., None], scales, quats], dim=-1)

    def view_index(self) -> Tensor:
        """(V·H·W,) int64: the source view of each Gaussian of a scene (same for every scene)."""
        h, w = self.image_size
        return torch.arange(self.num_views, device=self.means.device).repeat_interleave(h * w)


def split_head_output(raw: Float[Tensor, "*batch R"]) -> tuple[Tensor, Tensor, Tensor]:
    """The Gaussian head's raw output (pixel offsets removed) → (scales 3, quaternion 4, SH 3K), as views."""
    return raw[..., :3], raw[..., 3:7], raw[..., 7:]


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------
@register_backbone("mvsplat", MVSplatConfig)
class MVSplatBackbone(Backbone):
    """The MVSplat-style encoder: see the module docstring. `encode(images, cameras, near, far) -> MVSplatOutput`;
    the backbone contract on top of it (pixel-aligned: one selection group per context view; GD conditioning by
    per-view tokens, `view_tokens.ViewConditioning`; leaves activated by MVSplat's adapter)."""

    def __init__(self, config: MVSplatConfig | None = None, load_feature_weights: bool = True,
                 densifier: DensifierConfig | None = None) -> None:
        """`load_feature_weights`: read `config.feature_backbone_weights` (when set) now; pass False when the
        whole model is about to be restored from a checkpoint, so the initialisation file need not exist.
        `densifier`: the densifier's config when the model densifies (the hooks read its shifts)."""
        super().__init__()
        cfg = config if config is not None else MVSplatConfig()
        self.config = cfg
        self.densifier_config = densifier
        c, d = cfg.d_feature, cfg.num_depth_candidates
        zero = cfg.zero_init_residual
        # 1. feature backbone
        self.cnn = CNNEncoder(cfg.cnn_channels, c)
        self.transformer = MultiViewTransformer(c, cfg.transformer_layers, cfg.transformer_heads,
                                                cfg.ffn_expansion, cfg.attn_splits,
                                                -100.0 if cfg.window_mask == "additive" else None)
        # 3. cost-volume refinement and low-res depth head
        cu = cfg.costvolume_unet_channels
        self.cost_volume_refine = RefinementNet(d + c, cu, cfg.costvolume_unet_channel_mult,
                                                cfg.costvolume_unet_attn_levels, cfg.unet_head_channels,
                                                8 if cu % 8 == 0 else 4, zero)
        self.cost_volume_out = nn.Conv2d(cu, d, 3, padding=1)
        self.cost_volume_residual = nn.Conv2d(d + c, d, 1)
        self.depth_head = nn.Sequential(nn.Conv2d(d, 2 * d, 3, padding=1), nn.GELU(), nn.Conv2d(2 * d, d, 3, padding=1))
        # 4. full-resolution features
        cd = cfg.depth_unet_channels
        self.upsampler = nn.Conv2d(2 * c, c, 3, padding=1)
        self.proj_feature = nn.Conv2d(c, cd, 3, padding=1)
        # 5. depth refinement
        self.depth_refine = RefinementNet(3 + cd + 2, cd, cfg.depth_unet_channel_mult, cfg.depth_unet_attn_levels,
                                          cfg.unet_head_channels, 4, zero)
        self.disparity_head = nn.Sequential(nn.Conv2d(cd, 2 * cd, 3, padding=1), nn.GELU(),
                                            nn.Conv2d(2 * cd, 2, 3, padding=1))
        # 6. Gaussian head
        r = cfg.raw_channels
        self.gaussian_head = nn.Sequential(nn.Conv2d(cfg.feature_dim, 2 * r, 3, padding=1), nn.GELU(),
                                           nn.Conv2d(2 * r, r, 3, padding=1))
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)
        if cfg.feature_backbone_weights and load_feature_weights:
            self.load_feature_backbone(cfg.feature_backbone_weights)

    # ------------------------------------------------------------------ parameters and weights
    COMPONENTS = {
        "cnn": ("cnn",),
        "transformer": ("transformer",),
        "cost_volume_refine": ("cost_volume_refine", "cost_volume_out", "cost_volume_residual"),
        "depth_head_lowres": ("depth_head",),
        "feature_upsampler": ("upsampler", "proj_feature"),
        "depth_refine": ("depth_refine", "disparity_head"),
        "gaussian_head": ("gaussian_head",),
    }

    @staticmethod
    def _map_backbone_key(key: str) -> str | None:
        """Our name for a feature-backbone key from our own, an MVSplat or a UniMatch state dict; None otherwise."""
        for prefix in ("module.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        for prefix in ("encoder.backbone.", "backbone_model."):  # MVSplat checkpoints: encoder.backbone.{backbone,..}
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key.startswith(("cnn.", "transformer.")):
            return key
        if key.startswith("backbone."):  # UniMatch / MVSplat's name for the CNN
            return "cnn." + key[len("backbone."):]
        return None

    def load_feature_backbone(self, path: str | Path, strict: bool = True) -> dict[str, list[str]]:
        """Initialise `cnn` and `transformer` from a local state-dict file (.safetensors, or a torch file holding a
        state dict, possibly under "model"/"state_dict"). Keys may be ours (`cnn.*`, `transformer.*`), MVSplat's
        (`encoder.backbone.backbone.*`, `encoder.backbone.transformer.*`) or UniMatch's (`backbone.*`,
        `transformer.*`). Keys outside the feature backbone are ignored and reported. Raises ValueError naming the
        file and the keys when backbone keys are missing (strict), unknown, or of the wrong shape."""
        report = load_mapped(self, read_state_dict(path), self._map_backbone_key, strict,
                             source=f"feature backbone weights {path}", scope=("cnn.", "transformer."))
        return {"loaded": report.loaded, "missing": report.missing, "ignored": report.ignored}

    # ------------------------------------------------------------------ inputs
    def _parse_inputs(self, images: Tensor, cameras, near, far):
        cfg = self.config
        if not isinstance(images, Tensor) or images.ndim != 5 or images.shape[-1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"MVSplatBackbone: images must have shape (B, V, H, W, 3), got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"MVSplatBackbone: images must be floating point in [0, 1], got {images.dtype}")
        b, v, h, w, _ = images.shape
        if v < 2:
            raise ValueError(f"MVSplatBackbone: needs at least 2 context views per scene, got {v}")
        m = cfg.size_multiple
        if h % m or w % m:
            raise ValueError(f"MVSplatBackbone: image size {h}x{w} must be a multiple of {m} in both dimensions "
                             "(1/4-resolution features, U-Net levels, attention windows); crop or resize first")
        param = next(self.parameters())
        if images.device != param.device:
            raise ValueError(f"MVSplatBackbone: images on {images.device}, model on {param.device}")
        lo, hi = torch.aminmax(images.detach())
        if not torch.isfinite(lo) or not torch.isfinite(hi) or lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"MVSplatBackbone: images must be finite and in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
        dtype, device = images.dtype, images.device

        cam_near = cam_far = None
        if isinstance(cameras, Cameras) or (isinstance(cameras, (list, tuple)) and len(cameras) > 0
                                            and all(isinstance(c, Cameras) for c in cameras)):
            w2c, k = stack_cameras(cameras, b, v, w, h, rescale=False)
            w2c, k = w2c.to(device=device, dtype=dtype), k.to(device=device, dtype=dtype)
            items = [cameras[i * v:(i + 1) * v] for i in range(b)] if isinstance(cameras, Cameras) else cameras
            cam_near = torch.tensor([cam.near for cam in items], dtype=dtype, device=device)
            cam_far = torch.tensor([cam.far for cam in items], dtype=dtype, device=device)
        elif isinstance(cameras, (list, tuple)) and len(cameras) == 2 and all(isinstance(t, Tensor) for t in cameras):
            w2c, k = cameras
            if tuple(w2c.shape) != (b, v, 4, 4) or tuple(k.shape) != (b, v, 3, 3):
                raise ValueError(f"MVSplatBackbone: camera tensors must be world_to_camera ({b}, {v}, 4, 4) and "
                                 f"intrinsics ({b}, {v}, 3, 3), got {tuple(w2c.shape)} and {tuple(k.shape)}")
            w2c, k = w2c.to(device=device, dtype=dtype), k.to(device=device, dtype=dtype)
            if not (torch.isfinite(w2c).all() and torch.isfinite(k).all()):
                raise ValueError("MVSplatBackbone: camera tensors contain NaN or Inf")
        else:
            raise TypeError("MVSplatBackbone: cameras must be a list of B Cameras (V views each), one Cameras of "
                            "B·V views, or a pair (world_to_camera (B,V,4,4), intrinsics (B,V,3,3)); got "
                            f"{type(cameras).__name__}")
        if (k[..., 0, 0] <= 0).any() or (k[..., 1, 1] <= 0).any():
            raise ValueError("MVSplatBackbone: intrinsics need positive focal lengths (pixels)")

        def bounds(value, default, name):
            if value is None:
                if default is None:
                    raise ValueError(f"MVSplatBackbone: {name} is required when cameras are given as tensors")
                return default
            t = torch.as_tensor(value, dtype=dtype, device=device)
            if t.ndim == 0:
                t = t.expand(b)
            if tuple(t.shape) != (b,):
                raise ValueError(f"MVSplatBackbone: {name} must be a float or a ({b},) tensor, got {tuple(t.shape)}")
            return t

        near_t, far_t = bounds(near, cam_near, "near"), bounds(far, cam_far, "far")
        if not (torch.isfinite(near_t).all() and torch.isfinite(far_t).all()) or (near_t <= 0).any() \
                or (far_t <= near_t).any():
            raise ValueError(f"MVSplatBackbone: need 0 < near < far per scene, got near={near_t.tolist()}, "
                             f"far={far_t.tolist()}")
        if (far_t / near_t > 1e6).any():
            raise ValueError(f"MVSplatBackbone: far/near ratio above 1e6 (near={near_t.tolist()}, "
                             f"far={far_t.tolist()}); pass the scene's depth range as near=, far= explicitly")
        return w2c, k, near_t, far_t

    # ------------------------------------------------------------------ forward
    def encode(
        self,
        images: Float[Tensor, "B V H W 3"],
        cameras: Sequence[Cameras] | Cameras | tuple[Tensor, Tensor],
        near: float | Tensor | None = None,
        far: float | Tensor | None = None,
    ) -> MVSplatOutput:
        cfg = self.config
        w2c, intr, near_t, far_t = self._parse_inputs(images, cameras, near, far)
        b, v, h, w, _ = images.shape
        hf, wf = h // 4, w // 4
        rgb = images.permute(0, 1, 4, 2, 3).reshape(b * v, 3, h, w)

        # 1. features at 1/4 resolution
        cnn = self.cnn((rgb - self.image_mean.to(rgb)) / self.image_std.to(rgb))  # (B V) C hf wf
        c = cnn.shape[1]
        trans = self.transformer(cnn.reshape(b, v, c, hf, wf))  # B V C hf wf

        # 2. plane-sweep cost volume
        disps = disparity_candidates(near_t, far_t, cfg.num_depth_candidates)  # B D
        k_feat = intr.clone()
        k_feat[..., :2, :] = k_feat[..., :2, :] / 4.0  # pixel-centre convention: scale f and c alike
        if cfg.cost_volume_grid == "released":
            k_feat[..., :2, 2] = k_feat[..., :2, 2] + 0.5
        corr = plane_sweep_correlation(trans, k_feat, w2c, disps, cfg.costvolume_depth_chunk)  # B V D hf wf
        trans_flat = trans.reshape(b * v, c, hf, wf)
        cv_in = torch.cat([corr.reshape(b * v, -1, hf, wf), trans_flat], dim=1)

        # 3. refinement, softmax over candidates
        refined = self.cost_volume_out(self.cost_volume_refine(cv_in, v)) + self.cost_volume_residual(cv_in)
        pdf = torch.softmax(self.depth_head(refined), dim=1)  # (B V) D hf wf
        disp_flat = disps.repeat_interleave(v, dim=0)[:, :, None, None]  # (B V) D 1 1
        coarse_disp = (pdf * disp_flat).sum(dim=1, keepdim=True)
        confidence = pdf.max(dim=1, keepdim=True).values
        corners = cfg.upsample_align_corners
        full_disp = F.interpolate(coarse_disp, size=(h, w), mode="bilinear", align_corners=corners)
        full_conf = F.interpolate(confidence, size=(h, w), mode="nearest")

        # 4. full-resolution features
        feat_full = F.gelu(F.interpolate(self.upsampler(torch.cat([trans_flat, cnn], dim=1)), size=(h, w),
                                         mode="bilinear", align_corners=corners))  # (B V) C H W
        proj = self.proj_feature(feat_full)

        # 5. depth refinement → depth, opacity
        refine = self.depth_refine(torch.cat([rgb, proj, full_disp, full_conf], dim=1), v)
        delta_disp, raw_density = self.disparity_head(refine).split(1, dim=1)
        lo = (1.0 / far_t).repeat_interleave(v)[:, None, None, None]
        hi = (1.0 / near_t).repeat_interleave(v)[:, None, None, None]
        disp = torch.minimum(torch.maximum(full_disp + delta_disp, lo), hi)
        depth = (1.0 / disp).reshape(b, v, h, w)

        # 6. Gaussian head
        head_in = torch.cat([refine, rgb, feat_full], dim=1)  # (B V) F H W
        raw = self.gaussian_head(head_in).permute(0, 2, 3, 1).reshape(b, v, h, w, -1)
        features = head_in.permute(0, 2, 3, 1).reshape(b, v, h, w, -1)

        # 7. adapter
        out = self._adapt(raw, depth, raw_density.reshape(b, v, h, w), w2c, intr)
        return MVSplatOutput(
            **out, features=features, depth=depth, confidence=full_conf.reshape(b, v, h, w),
            coarse_depth=(1.0 / coarse_disp).reshape(b, v, hf, wf), near=near_t, far=far_t,
        )

    # ------------------------------------------------------------------ the backbone contract
    def forward(self, batch: ViewBatch, generator: torch.Generator | None = None) -> Coarse:
        """`encode` on the batch's context views (near/far from their `Cameras`); one group per context view."""
        out = self.encode(batch.input_images, batch.input_cameras)
        b, v, h, w = out.opacity_logits.shape
        k = out.sh.shape[-2]
        gaussians = Gaussians(out.means.reshape(-1, 3), out.quats.reshape(-1, 4), out.log_scales.reshape(-1, 3),
                              out.opacity_logits.reshape(-1), out.sh.reshape(-1, k, 3))
        item = torch.arange(b, device=out.means.device).repeat_interleave(v * h * w)
        group = item * v + out.view_index().repeat(b)  # item·V + view
        return Coarse(gaussians, item, group, b, b * v, state=out)

    def build_conditioning(self) -> nn.Module:
        cond = self.config.conditioning
        return ViewConditioning(self.config.feature_dim, cond.width, cond.heads)

    def init_densifier(self, densifier: nn.Module) -> None:
        """With ``leaf_init="parent"`` every leaf starts as a copy of its parent: the heads' corrections are zero."""
        if self.config.leaf_init == "parent":
            densifier.zero_init_heads()

    def condition(self, coarse: Coarse, batch: ViewBatch, render: list[RenderOutput], index: Int[Tensor, " S"],
                  conditioning: nn.Module | None = None) -> Conditioned:
        """The selected Gaussians' head-input features and their 8-D tokens in every context view (border
        padding, detached) → `conditioning`; with ``leaf_init="parent"`` their raw attributes start the
        densifier's residual sum."""
        out: MVSplatOutput = coarse.state
        b, v = out.batch_size, out.num_views
        images = batch.input_images
        selected_item = coarse.item[index]
        tokens = torch.empty(len(index), v, VIEW_TOKEN_DIM, dtype=images.dtype, device=images.device)
        with torch.no_grad():
            w2c, k = stack_cameras(batch.input_cameras, b, v, images.shape[3], images.shape[2], rescale=False)
            for i in range(b):
                rows = torch.nonzero(selected_item == i, as_tuple=False).flatten()
                maps = token_maps(images[i], render[i].image, render[i].alpha, render[i].depth)
                tokens[rows] = sample_view_tokens(coarse.gaussians.means[index[rows]], w2c[i].to(images),
                                                  k[i].to(images), maps, padding="border").to(tokens)
        features = out.features.reshape(len(coarse), -1)[index]
        initial = None
        if self.config.leaf_init == "parent":
            initial = out.raw_attributes().reshape(len(coarse), -1)[index]
            initial[:, 3 * self.config.num_sh] -= self.densifier_config.opacity_shift  # the densifier adds it back
        return Conditioned(conditioning(features, tokens), coarse.gaussians, initial)

    def finalize(self, result: DensifierResult, coarse: Coarse, batch: ViewBatch) -> Gaussians:
        """The densifier's raw head outputs activated by MVSplat's adapter in the axes of the context camera each
        leaf's view came from (scale ∝ distance to that camera; quaternion and SH rotated to world axes);
        opacity = sigmoid(raw + the densifier's `opacity_shift`). With ``leaf_init="parent"`` the n leaves of one
        parent split its opacity: each gets 1 − (1 − σ(raw))^(1/n), so that together they are exactly as opaque
        as the parent at their centres."""
        dcfg = self.densifier_config
        raw = attributes_to_gaussians(result.gaussians.means, result.attributes, dcfg.sh_degree,
                                      opacity_shift=dcfg.opacity_shift, log_scale_shift=0.0)
        if self.config.leaf_init == "parent":
            leaves = torch.bincount(result.parent)[result.parent]  # leaves of each fine Gaussian's parent
            raw = dataclasses.replace(raw, opacity_logits=split_opacity_logits(raw.opacity_logits, leaves))
        cameras = batch.input_cameras
        views = len(cameras[0])
        parts, start = [], 0
        for group, count in enumerate(result.counts.tolist()):  # rows are grouped by group = item·V + view
            g = raw[start: start + count]
            start += count
            cam = cameras[group // views][group % views]
            c2w = cam.camera_to_world.to(g.means)
            distance = (g.means - c2w[0, :3, 3]).norm(dim=-1)
            log_scales, quats, sh = self.activate_attributes(g.log_scales, g.quats, g.sh, distance, c2w,
                                                             cam.intrinsics.to(g.means))
            parts.append(Gaussians(g.means, quats, log_scales, g.opacity_logits, sh))
        return Gaussians.cat(parts)

    def activate_attributes(self, raw_scales: Tensor, raw_quats: Tensor, raw_sh: Tensor, distance: Tensor,
                            camera_to_world: Tensor, intrinsics: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`mvsplat_geometry.adapt_attributes` with this model's scale range → (log_scales, quats, sh) in world
        axes; for GD's fine Gaussians pass distance = ‖mean − camera centre‖ (`finalize`)."""
        cfg = self.config
        return adapt_attributes(raw_scales, raw_quats, raw_sh, distance, camera_to_world, intrinsics,
                                cfg.scale_min, cfg.scale_max, cfg.scale_multiplier, cfg.sh_rotation)

    def _adapt(self, raw: Tensor, depth: Tensor, raw_density: Tensor, w2c: Tensor, intr: Tensor) -> dict[str, Tensor]:
        """MVSplat's Gaussian adapter (see the module docstring), per pixel of every view."""
        cfg = self.config
        b, v, h, w, _ = raw.shape
        if cfg.pixel_offsets:
            offsets, raw = torch.sigmoid(raw[..., :2]) - 0.5, raw[..., 2:]
        else:
            offsets = None
        raw_scales, raw_quats, raw_sh = split_head_output(raw)
        xy = pixel_centers(h, w, dtype=raw.dtype, device=raw.device).expand(b, v, h, w, 2)
        if offsets is not None:
            xy = xy + offsets
        c2w = torch.linalg.inv(w2c)  # B V 4 4
        k_inv = torch.linalg.inv(intr)
        homog = torch.cat([xy, torch.ones_like(xy[..., :1])], dim=-1)
        dirs = torch.einsum("bvij,bvhwj->bvhwi", k_inv, homog)  # camera-frame ray with z = 1
        if cfg.depth_mode == "ray":
            dirs = F.normalize(dirs, dim=-1)
        points = dirs * depth[..., None]
        means = torch.einsum("bvij,bvhwj->bvhwi", c2w[..., :3, :3], points) + c2w[:, :, None, None, :3, 3]
        log_scales, quats, sh = adapt_attributes(
            raw_scales, raw_quats, raw_sh.reshape(b, v, h, w, cfg.num_sh, 3), depth, c2w[:, :, None, None],
            intr[:, :, None, None], cfg.scale_min, cfg.scale_max, cfg.scale_multiplier, cfg.sh_rotation)
        return {"means": means, "quats": quats, "log_scales": log_scales, "opacity_logits": raw_density,
                "sh": sh, "head_output": raw, "pixel_xy": xy}


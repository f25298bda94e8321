"""LaRa-style object backbone: posed images → coarse 3D Gaussians on a voxel grid + per-Gaussian GD features.

This is the object-level backbone of Generative Densification (the official GD object `Network`,
`lightning/network.py`, built on LaRa's). It implements the backbone contract (`models/backbone.py`) that the one
GD pipeline (`models/gd.py`) drives:

    coarse = backbone(batch, generator)   # `encode` (steps 1–5) + the visible set (candidates, LaRa `_check_mask`)
    ... GDModel renders the coarse Gaussians into the input views once and selects from that render ...
    backbone.condition(coarse, batch, render, index)   # step 6: LaRa refinement of the visible Gaussians from the
                                                       # render (kept in the graph) → GD features, refined SH

Pipeline (shapes for the `paper` preset, B objects × V ≤ 4 input views of 512²):
1. `img_encoder`: ImageNet-normalised images → DINO ViT-B/16 (`vit.py`) → 32² patch tokens × 768 (class token
   dropped; position embedding resampled from 14² like timm's `dynamic_img_size`).
2. Ray conditioning `dir_norm = ModLN(768, 32)`: per token, the Plücker ray (d = unit direction through the token
   centre, m = o × d with o the camera centre) is encoded with real SH of degree 3 (`rsh_cart_3`, 16 values each
   for d and for the un-normalised m → 32); then LN(x)·(1 + scale) + shift, (shift, scale) = Linear(SiLU(cond)).
3. Lifting: the 16³ cell centres of [-0.5, 0.5]³ are projected into every view and the modulated token map is
   sampled bilinearly (`grid_sample`, zero padding, no visibility test); a learned view embedding (32 ch per
   view slot) is appended → (B, V, 800, 16, 16, 16).
4. `vol_decoder`: a learned 32³ × 256 query volume; 12 group-attention blocks (each 2³ query group cross-attends
   to the V tokens of its 1³ feature cell, MLP, LN, then a residual 3×3×3 Conv3d over the whole volume); final LN
   and ConvTranspose3d(k=2, s=2) → the 64³ × 80 Gaussian volume (channels last; axes (x, y, z), x slowest).
5. `decoder.mlp_coarse`: one Gaussian per 64³ voxel, 23 numbers = [offset 3 | SH 12 | opacity 1 | scale 3 |
   quaternion 4]: mean = voxel centre + (2σ(offset) − 1)·(cell/2); opacity logit = raw − 2.1792; log-scale =
   raw + ln(cell/3); raw wxyz quaternion; SH degree 1 (coefficient-major, RGB innermost).
6. Refinement (`refine`): for the visible coarse Gaussians, per input view sample [input RGB, coarse RGB, coarse
   alpha, |coarse depth − camera z|] at the projected centre → (M, V, 8); the LN'd voxel feature cross-attends to
   them (16 heads, no biases); `mlp_fine` (80 → 80 → 80 + 12) gives a refined 80-d feature and an SH residual.
   GD feature = cat(refined 80, raw voxel 80) = 160-d; refined SH = coarse SH + residual.

Conventions: images (B, V, H, W, 3) float in [0, 1], already composited on their background. Cameras are
`gdensify.Cameras` in OpenCV axes, in the normalised object frame where the volume is [-scene_half_size,
scene_half_size]³; pass either a list of B `Cameras` with V views each, or one `Cameras` with B·V views in
object-major order (object 0's V views first). When the cameras' width/height differ from the images', the
intrinsics are rescaled to the image resolution. At most `max_views` (4) input views: the view embedding has one
slot per input position.

Parameter names equal the official GD `Network` state dict without the `net.` prefix, so
`load_official_state_dict` loads a released checkpoint's backbone strictly. Quirks kept on purpose:
the +0.5 pixel shift before normalising sample coordinates (`sample_pixel_shift`, 0.5 in `paper`, 0 in `tiny`),
block LayerNorms with eps 1e-5 (the constructor's eps is ignored upstream), fp32 head outputs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from ..cameras import Cameras, stack_cameras
from ..data.batch import ViewBatch
from ..gaussians import Gaussians
from ..render import RenderOutput
from .backbone import Backbone, Coarse, Conditioned, register_backbone
from .view_tokens import grid_coordinates, project_points, sample_view_tokens, token_maps
from ..config import Presets
from ..io.weights import load_mapped
from .vit import ViTConfig, VisionTransformer, load_vit_weights

__all__ = [
    "LaRaConfig", "LaRaBackbone", "LaRaCoarse", "LaRaRefined", "ModLN", "CrossAttention", "GroupAttBlock",
    "VolumeTransformer", "GaussianHeads", "ImageEncoder", "rsh_cart_3", "plucker_sh", "visible_masks",
    "load_official_state_dict",
]


# ---------------------------------------------------------------------------------------------------- config
@dataclass
class LaRaConfig(Presets):
    """Shapes of the LaRa-style backbone. Presets (`LaRaConfig.preset(name)`): `paper` (published GD/LaRa shapes)
    and `tiny` (2 CPU cores)."""

    encoder: ViTConfig = field(default_factory=ViTConfig)
    encoder_weights: str | None = None  # local safetensors / torch file with timm key names; None = random init
    encoder_weights_prefix: str = ""  # e.g. "net.img_encoder.model." for a GD Lightning checkpoint
    image_size: int = 512  # the resolution the preset is meant for (any multiple of the patch size works)
    max_views: int = 4  # view-embedding slots = maximum number of input views
    view_embed_dim: int = 32
    ray_sh_degree: int = 3  # Plücker conditioning: SH of d and of m up to this degree (≤ 3)
    feat_volume_size: int = 16  # image-feature volume resolution
    volume_size: int = 32  # learned query volume resolution (Gaussian grid = 2 × this)
    volume_dim: int = 256
    volume_layers: int = 12
    volume_heads: int = 16
    volume_mlp_ratio: float = 2.0
    groups: tuple[int, ...] = (16,)  # groups per axis; layer i uses groups[i % len(groups)]
    gaussian_feature_dim: int = 80  # channels of the up-sampled Gaussian volume
    sh_degree: int = 1
    fine_heads: int = 16
    scene_half_size: float = 0.5
    opacity_shift: float = -2.1792
    sample_pixel_shift: float = 0.5  # official quirk: +0.5 px before normalising grid_sample coordinates
    image_mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # ImageNet statistics (timm's DINO data config)
    image_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    name: Literal["lara"] = "lara"  # the backbone registry key

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = ViTConfig(**self.encoder)
        self.groups = tuple(int(g) for g in self.groups)
        self.image_mean = tuple(float(x) for x in self.image_mean)
        self.image_std = tuple(float(x) for x in self.image_std)
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("image_mean and image_std need 3 values (RGB)")
        if not self.groups:
            raise ValueError("groups must not be empty")
        for g in self.groups:
            if g <= 0 or self.volume_size % g or self.feat_volume_size % g:
                raise ValueError(f"group count {g} must divide volume_size {self.volume_size} and "
                                 f"feat_volume_size {self.feat_volume_size}")
        if not 0 <= self.ray_sh_degree <= 3:
            raise ValueError(f"ray_sh_degree must be in [0, 3], got {self.ray_sh_degree}")
        if not 0 <= self.sh_degree <= 4:
            raise ValueError(f"sh_degree must be in [0, 4], got {self.sh_degree}")
        if self.volume_dim % self.volume_heads:
            raise ValueError(f"volume_dim {self.volume_dim} not divisible by volume_heads {self.volume_heads}")
        if self.gaussian_feature_dim % self.fine_heads:
            raise ValueError(f"gaussian_feature_dim {self.gaussian_feature_dim} not divisible by "
                             f"fine_heads {self.fine_heads}")
        if self.image_size % self.encoder.patch_size:
            raise ValueError(f"image_size {self.image_size} not a multiple of patch {self.encoder.patch_size}")

    def unset_pretrained_weights(self) -> list[str]:
        """Config keys of the pretrained weights the published recipe starts from and that are unset here:
        `encoder_weights` (timm DINO ViT-B/16) when the encoder has DINO ViT-B/16's shape; [] otherwise."""
        dino, e = ViTConfig(), self.encoder
        shape = (e.patch_size, e.embed_dim, e.depth, e.num_heads) == (dino.patch_size, dino.embed_dim, dino.depth,
                                                                     dino.num_heads)
        return ["encoder_weights"] if shape and not self.encoder_weights else []

    # ------------------------------------------------------------------ derived quantities (GD paper, Appendix A)
    @property
    def gaussian_grid_size(self) -> int:
        """Gaussians per axis (one per voxel of the up-sampled volume)."""
        return 2 * self.volume_size

    @property
    def num_gaussians(self) -> int:
        return self.gaussian_grid_size ** 3

    @property
    def cell_size(self) -> float:
        """Edge of one Gaussian voxel in world units (1/64 in `paper`)."""
        return 2 * self.scene_half_size / self.gaussian_grid_size

    @property
    def offset_bound(self) -> float:
        """Largest |mean − voxel centre| per axis: half a cell (1/128 in `paper`)."""
        return 0.5 * self.cell_size

    @property
    def log_scale_shift(self) -> float:
        """Added to the raw log-scales: ln(cell/3) (= ln(0.03125/6) = −5.2575 in `paper`)."""
        return math.log(self.cell_size / 3.0)

    @property
    def fine_log_scale_shift(self) -> float:
        """The densifier's log-scale shift for new Gaussians, ln(cell/24) (= −7.3369 in `paper`, GD paper, Appendix A)."""
        return math.log(self.cell_size / 24.0)

    @property
    def feature_dim(self) -> int:
        """Per-Gaussian GD feature width: refined + raw voxel feature (160 in `paper`)."""
        return 2 * self.gaussian_feature_dim

    @property
    def gd_feature_dim(self) -> int:
        """The densifier's input width (the backbone contract's name for `feature_dim`)."""
        return self.feature_dim

    @property
    def num_sh_coeffs(self) -> int:
        return (self.sh_degree + 1) ** 2

    @property
    def cond_dim(self) -> int:
        return 2 * (self.ray_sh_degree + 1) ** 2

    # ------------------------------------------------------------------ presets
    PRESETS = {
        # published shapes: DINO ViT-B/16 at 512², 16³ feature volume, 32³×256 query volume (12 layers, 16 heads),
        # 64³ × 80 Gaussian volume → 262,144 coarse Gaussians, 160-d GD features
        "paper": {},
        # for 2 CPU cores: 128² images, ViT patch 8 / 128 ch / 4 blocks (16² tokens), 8³ feature volume, 16³ × 64
        # query volume (4 layers, 4 heads, groups of 2³), 32³ × 32 Gaussian volume → 32,768 coarse Gaussians,
        # 64-d GD features; no half-pixel sampling quirk
        "tiny": dict(encoder=ViTConfig.preset("tiny"), image_size=128, feat_volume_size=8, volume_size=16,
                     volume_dim=64, volume_layers=4, volume_heads=4, groups=(8,), gaussian_feature_dim=32,
                     fine_heads=4, sample_pixel_shift=0.0),
    }


# ---------------------------------------------------------------------------------------------------- helpers
def rsh_cart_3(xyz: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch 16"]:
    """Real SH up to degree 3 in the Cartesian polynomial form of cheind/torch-spherical-harmonics (as LaRa's
    `tools/rsh.py`). The polynomials are used as written, so non-unit inputs (the Plücker moment) give the same
    numbers as upstream; index n(n+1)+m holds Y_nm."""
    x, y, z = xyz.unbind(-1)
    x2, y2, z2 = x * x, y * y, z * z
    xy, xz, yz = x * y, x * z, y * z
    return torch.stack([
        torch.full_like(x, 0.282094791773878),
        -0.48860251190292 * y,
        0.48860251190292 * z,
        -0.48860251190292 * x,
        1.09254843059208 * xy,
        -1.09254843059208 * yz,
        0.94617469575756 * z2 - 0.31539156525252,
        -1.09254843059208 * xz,
        0.54627421529604 * x2 - 0.54627421529604 * y2,
        -0.590043589926644 * y * (3.0 * x2 - y2),
        2.89061144264055 * xy * z,
        0.304697199642977 * y * (1.5 - 7.5 * z2),
        1.24392110863372 * z * (1.5 * z2 - 0.5) - 0.497568443453487 * z,
        0.304697199642977 * x * (1.5 - 7.5 * z2),
        1.44530572132028 * z * (x2 - y2),
        -0.590043589926644 * x * (x2 - 3.0 * y2),
    ], dim=-1)


def plucker_sh(plucker: Float[Tensor, "*batch 6"], degree: int = 3) -> Float[Tensor, "*batch c"]:
    """Ray condition: cat(rsh(d), rsh(m)) truncated to `degree`, c = 2(degree+1)² (32 for degree 3)."""
    k = (degree + 1) ** 2
    return torch.cat([rsh_cart_3(plucker[..., :3])[..., :k], rsh_cart_3(plucker[..., 3:6])[..., :k]], dim=-1)


def _normal_parameter(*shape: int, std: float) -> nn.Parameter:
    """N(0, std²) parameter; on the meta device the values are left undefined (avoids slow meta decompositions)."""
    t = torch.empty(*shape)
    if not t.is_meta:
        t.normal_(0.0, std)
    return nn.Parameter(t)


def dense_grid(resolution: int, half_size: float, device=None, dtype=torch.float32) -> Float[Tensor, "r r r 3"]:
    """Cell centres of [-half, half]³ on an r³ grid, axes (x, y, z) = array axes (0, 1, 2) ('ij' indexing)."""
    a = torch.arange(resolution, device=device, dtype=dtype)
    grid = torch.stack(torch.meshgrid(a, a, a, indexing="ij"), dim=-1)
    return ((grid + 0.5) / resolution * 2 - 1) * half_size


def token_plucker(
    world_to_camera: Float[Tensor, "n 4 4"], intrinsics: Float[Tensor, "n 3 3"], rows: int, cols: int, patch: int,
) -> Float[Tensor, "n rows cols 6"]:
    """Plücker coordinates (d, o × d) of the rays through the token centres (intrinsics divided by the patch
    size, token centres at +0.5), as LaRa's `tar_rays_down`; same as `Cameras.resized(...).plucker()`."""
    k = intrinsics.clone()
    k[:, :2] = k[:, :2] / patch
    dtype, device = k.dtype, k.device
    v, u = torch.meshgrid(torch.arange(rows, dtype=dtype, device=device) + 0.5,
                          torch.arange(cols, dtype=dtype, device=device) + 0.5, indexing="ij")
    pixels = torch.stack([u, v, torch.ones_like(u)], dim=-1)
    c2w = torch.linalg.inv(world_to_camera)
    dirs_cam = torch.einsum("nij,hwj->nhwi", torch.linalg.inv(k), pixels)
    dirs = F.normalize(torch.einsum("nij,nhwj->nhwi", c2w[:, :3, :3], dirs_cam), dim=-1)
    origins = c2w[:, None, None, :3, 3].expand_as(dirs)
    return torch.cat([dirs, torch.cross(origins, dirs, dim=-1)], dim=-1)


# ---------------------------------------------------------------------------------------------------- modules
class ModLN(nn.Module):
    """Modulated LayerNorm (DiT adaLN as in LaRa): LN(x)·(1 + scale) + shift, (shift, scale) = Linear(SiLU(c))."""

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))

    def forward(self, x: Float[Tensor, "*batch d"], cond: Float[Tensor, "*batch c"]) -> Float[Tensor, "*batch d"]:
        shift, scale = self.mlp(cond).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale) + shift


class CrossAttention(nn.Module):
    """Multi-head cross-attention with `nn.MultiheadAttention(bias=False, kdim, vdim)`'s parameter names and
    arithmetic (separate q/k/v projections, no biases, no out-projection bias), computed with SDPA."""

    def __init__(self, embed_dim: int, num_heads: int, kdim: int, vdim: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim))
        self.k_proj_weight = nn.Parameter(torch.empty(embed_dim, kdim))
        self.v_proj_weight = nn.Parameter(torch.empty(embed_dim, vdim))
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=False)
        for w in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
            nn.init.xavier_uniform_(w)

    def forward(self, query: Float[Tensor, "n lq e"], context: Float[Tensor, "n lk c"]) -> Float[Tensor, "n lq e"]:
        n, lq, e = query.shape
        h = self.num_heads
        q = F.linear(query, self.q_proj_weight).view(n, lq, h, e // h).transpose(1, 2)
        k = F.linear(context, self.k_proj_weight).view(n, -1, h, e // h).transpose(1, 2)
        v = F.linear(context, self.v_proj_weight).view(n, -1, h, e // h).transpose(1, 2)
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            # PyTorch's CPU attention kernel is slower in bfloat16 than in float32 for these short sequences
            # (a few keys per query group); float32 here is faster and more precise
            with torch.autocast("cpu", enabled=False):
                out = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(n, lq, e))

    def attend_one(self, query: Float[Tensor, "n e"], context: Float[Tensor, "n lk c"]) -> Float[Tensor, "n e"]:
        """`forward` for one query per item, computed in the context's space: the key projection is folded into
        the query side (per head, Wₖᵀ·W_q) and the value projection into the output side (W_o·W_v), so nothing
        of size n·lk·embed_dim is formed. Same values as `forward(query[:, None], context)[:, 0]` up to float
        rounding; much cheaper when the context is narrow (the refinement's 8-d view tokens)."""
        n, e = query.shape
        h, kdim, vdim = self.num_heads, self.k_proj_weight.shape[1], self.v_proj_weight.shape[1]
        d = e // h
        wq = self.q_proj_weight.view(h, d, e)
        wk = self.k_proj_weight.view(h, d, kdim)
        fold_q = torch.einsum("hdk,hde->hke", wk, wq).reshape(h * kdim, e) * d ** -0.5
        fold_o = torch.einsum("ehd,hdv->ehv", self.out_proj.weight.view(e, h, d), self.v_proj_weight.view(h, d, vdim))
        q = F.linear(query, fold_q).view(n, h, kdim)  # query in key space, per head
        # (n, lk, h): the softmax runs over a middle axis, vectorised over the heads (a last axis of a few
        # keys is slow on the CPU)
        weights = torch.softmax(torch.bmm(context, q.transpose(1, 2)), dim=1)
        mixed = torch.bmm(weights.transpose(1, 2), context)  # (n, h, vdim): attention-weighted context per head
        return F.linear(mixed.reshape(n, h * vdim), fold_o.reshape(e, h * vdim))


def _token_view(volume: Float[Tensor, "b c d h w"], groups: int) -> Float[Tensor, "b g g g s s s c"]:
    """The voxels of a cubic volume (any memory layout) indexed as groups³ blocks of s³ = (d/groups)³ tokens,
    channels last. A view: nothing is copied."""
    b, c, d = volume.shape[:3]
    s = d // groups
    return volume.view(b, c, groups, s, groups, s, groups, s).permute(0, 2, 4, 6, 3, 5, 7, 1)


def _to_groups(x: Float[Tensor, "b c d h w"], groups: int) -> Float[Tensor, "bg l c"]:
    """Split a cubic volume into groups³ blocks of (d/groups)³ tokens, channels last (a copy)."""
    b, c, d = x.shape[:3]
    return _token_view(x, groups).reshape(b * groups ** 3, (d // groups) ** 3, c)


def _add_into(a: Tensor, b: Tensor, out: Tensor) -> Tensor:
    """out ← a + b, where `out` is a view into another memory layout: the sum is written there directly (the
    relayout costs nothing beyond the addition). Under autograd, the same values go through a `copy_`."""
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return out.copy_(a + b)
    return torch.add(a, b, out=out)


def _cpu_autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _conv3x3x3(x: Float[Tensor, "b c d h w"], weight: Float[Tensor, "o c 3 3 3"]) -> Float[Tensor, "b o d h w"]:
    """3×3×3 convolution, padding 1, no bias. On CPU float32 (no autocast) it calls oneDNN directly on a
    (B, C, D, H, W)-contiguous input: PyTorch's backend heuristic sends batch-1 volumes with few channels (the
    `tiny` preset) to the much slower im2col `slow_conv3d`; oneDNN gives the same result (to float rounding)
    2–3× faster, with autograd support. Otherwise (autocast, bfloat16, CUDA) it runs on the input's own memory
    layout (channels-last in `GroupAttBlock`), and so does its output."""
    if (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and not _cpu_autocast_enabled()):
        return torch.ops.aten.mkldnn_convolution(x.contiguous(), weight, None, [1, 1, 1], [1, 1, 1], [1, 1, 1], 1)
    return F.conv3d(x, weight, padding=1)


class GroupAttBlock(nn.Module):
    """x ← x + MHA(LN₁x, cond) per group; x ← x + MLP(LN₂x); x ← LN₃x; x ← x + Conv3d₃ₓ₃ₓ₃(x) (whole volume).

    Memory layouts, chosen so that nothing is copied from one layout to another: the residual stream enters as
    group-major tokens (B·g³, s³, C) for this block's group count g (attention, MLP and LN₁, LN₂ run on them);
    the MLP's residual sum is written straight into a channels-last volume (B, D, H, W, C), where LN₃ and the
    convolution run; the convolution's residual sum is written straight into the next block's group-major
    tokens (`next_groups`; `next_groups = D` gives channels-last voxels). The relayouts ride on additions that
    happen anyway. Only in float32 on the CPU does the convolution read a (B, C, D, H, W)-contiguous copy of its
    input: oneDNN's channels-last float32 kernel rounds differently (≈4e-6 relative at the `paper` size), and
    float32 is the reference path, kept bit-for-bit as it was."""

    def __init__(self, dim: int, cond_dim: int, num_heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, num_heads, cond_dim, cond_dim)
        self.cnn = nn.Conv3d(dim, dim, kernel_size=3, padding=1, bias=False)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim),
                                 nn.Dropout(0.0))

    def forward(self, p: Float[Tensor, "bg l c"], cond: Float[Tensor, "bg lk cc"], batch: int, groups: int,
                size: int, next_groups: int) -> Float[Tensor, "bg2 l2 c"]:
        c = p.shape[-1]
        s, n = size // groups, size // next_groups
        p = p + self.cross_attn(self.norm1(p), cond)
        voxels = p.new_empty(batch, size, size, size, c)  # channels-last volume
        _add_into(p.view(batch, groups, groups, groups, s, s, s, c),
                  self.mlp(self.norm2(p)).view(batch, groups, groups, groups, s, s, s, c),
                  _token_view(voxels.permute(0, 4, 1, 2, 3), groups))
        y = self.norm3(voxels).permute(0, 4, 1, 2, 3)  # (B, C, D, H, W) view of channels-last memory
        z = _conv3x3x3(y, self.cnn.weight)
        out = p.new_empty(batch * next_groups ** 3, n ** 3, c)
        _add_into(_token_view(y, next_groups), _token_view(z, next_groups),
                  out.view(batch, next_groups, next_groups, next_groups, n, n, n, c))
        return out


class VolumeTransformer(nn.Module):
    """LaRa `VolTransformer`: learned query volume, group-attention blocks, LN, ×2 transposed-conv up-sampling.

    No block copies the volume between layouts (`GroupAttBlock`); per forward, the learned query volume and the
    feature volume are put once into token order (the feature volume once per group count, not once per block),
    and the final LN and transposed convolution run channels-last, which is also the output's layout. With
    autograd on, the relayouting additions become `copy_`s of the same values."""

    def __init__(self, dim: int, cond_dim: int, size: int, out_dim: int, num_layers: int, num_heads: int,
                 groups: Sequence[int], mlp_ratio: float = 2.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.size, self.groups = size, tuple(groups)
        self.pos_embed = _normal_parameter(1, dim, size, size, size, std=dim ** -0.5)
        self.layers = nn.ModuleList([GroupAttBlock(dim, cond_dim, num_heads, mlp_ratio) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.deconv = nn.ConvTranspose3d(dim, out_dim, kernel_size=2, stride=2)

    def _layer_groups(self, i: int) -> int:
        """Group count of block i; past the last block, `size` (one voxel per group: channels-last voxels)."""
        return self.groups[i % len(self.groups)] if i < len(self.layers) else self.size

    def forward(self, feat_vol: Float[Tensor, "b v c f f f"]) -> Float[Tensor, "b g g g o"]:
        b, v, c, f = feat_vol.shape[:4]
        conds = {}
        for g in set(self.groups):
            s = f // g
            blocks = feat_vol.reshape(b, v, c, g, s, g, s, g, s).permute(0, 3, 5, 7, 1, 4, 6, 8, 2)
            conds[g] = blocks.reshape(b * g ** 3, v * s ** 3, c).contiguous()  # read by every block's k/v
            if torch.is_autocast_enabled(feat_vol.device.type):  # cast once, not in every block's k/v projection
                conds[g] = conds[g].to(torch.get_autocast_dtype(feat_vol.device.type))
        size = self.size
        p = _to_groups(self.pos_embed.expand(b, -1, -1, -1, -1), self._layer_groups(0))
        if feat_vol.device.type == "cpu" and torch.is_autocast_enabled("cpu") and not torch.is_grad_enabled():
            # CPU inference under autocast: the residual stream in bfloat16 too. The elementwise work is memory-
            # bound, so this is ~30 % faster; the output moves from 0.7 % to 0.95 % RMS away from float32. With
            # autograd on (mixed-precision training) the stream stays float32.
            p = p.to(torch.get_autocast_dtype("cpu"))
        for i, layer in enumerate(self.layers):
            p = layer(p, conds[self._layer_groups(i)], b, self._layer_groups(i), size, self._layer_groups(i + 1))
        x = self.norm(p.view(b, size, size, size, -1))  # channels-last voxels
        # the transposed convolution reads and writes channels-last (oneDNN), so the result needs no permute copy
        return self.deconv(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1).contiguous()


class GaussianHeads(nn.Module):
    """LaRa/GD `Decoder`: the coarse head (`mlp_coarse`) and the refinement head (`norm`, `cross_att`, `mlp_fine`)."""

    def __init__(self, dim: int, sh_coeffs: int, fine_heads: int, cond_dim: int = 8) -> None:
        super().__init__()
        self.dim, self.sh_dim = dim, 3 * sh_coeffs
        self.raw_dim = 3 + self.sh_dim + 1 + 3 + 4
        self.mlp_coarse = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(),
                                        nn.Linear(dim, self.raw_dim))
        self.norm = nn.LayerNorm(dim)
        self.cross_att = CrossAttention(dim, fine_heads, cond_dim, cond_dim)
        self.mlp_fine = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim + self.sh_dim))
        for layer in [*self.mlp_coarse, *self.mlp_fine]:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def coarse(self, feats: Float[Tensor, "*batch c"]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Raw (offset, sh, opacity, scale, quaternion) before shifts/activations, float32."""
        raw = self.mlp_coarse(feats).float()
        return tuple(torch.split(raw, [3, self.sh_dim, 1, 3, 4], dim=-1))  # type: ignore[return-value]

    def fine(self, feats: Float[Tensor, "m c"], point_feats: Float[Tensor, "m v 8"]
             ) -> tuple[Float[Tensor, "m c"], Float[Tensor, "m s"]]:
        """(refined feature, SH residual) from the voxel feature attending to the per-view point features."""
        x = self.cross_att.attend_one(self.norm(feats), point_feats)
        out = self.mlp_fine(x).float()
        return out[:, :self.dim], out[:, self.dim:]


class ImageEncoder(nn.Module):
    """Images in [0, 1] (N, H, W, 3) → normalised → ViT patch-token map (N, C, H/p, W/p). Holds `model`."""

    def __init__(self, config: ViTConfig, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = VisionTransformer(config)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)

    def forward(self, images: Float[Tensor, "n h w 3"]) -> Float[Tensor, "n c gh gw"]:
        x = ((images - self.mean) / self.std).permute(0, 3, 1, 2)
        return self.model(x)


# ---------------------------------------------------------------------------------------------------- outputs
@dataclass
class LaRaCoarse:
    """Coarse Gaussians of B objects (raw parameters, N = gaussian_grid³ each, x slowest) and their voxel features.

    `world_to_camera` / `intrinsics` are the resolved (B, V) input cameras at the image resolution `image_size`;
    `refine` reuses them."""

    means: Float[Tensor, "b n 3"]
    quats: Float[Tensor, "b n 4"]
    log_scales: Float[Tensor, "b n 3"]
    opacity_logits: Float[Tensor, "b n"]
    sh: Float[Tensor, "b n k 3"]
    voxel_features: Float[Tensor, "b n c"]
    world_to_camera: Float[Tensor, "b v 4 4"]
    intrinsics: Float[Tensor, "b v 3 3"]
    image_size: tuple[int, int]  # (width, height) the intrinsics refer to

    def __len__(self) -> int:
        return self.means.shape[0]

    def gaussians(self, index: int) -> Gaussians:
        """Object `index`'s coarse Gaussians."""
        return Gaussians(self.means[index], self.quats[index], self.log_scales[index],
                         self.opacity_logits[index], self.sh[index])

    def gaussians_list(self) -> list[Gaussians]:
        return [self.gaussians(i) for i in range(len(self))]


@dataclass
class LaRaRefined:
    """One object's visible coarse Gaussians after the LaRa refinement.

    `index`: positions in the coarse set (sorted); `gaussians`: coarse geometry/opacity with the refined SH (what
    GD keeps for non-selected Gaussians); `features`: GD input features cat(refined, raw voxel feature);
    `sh_residual`: refined SH − coarse SH."""

    index: Int[Tensor, " m"]
    gaussians: Gaussians
    features: Float[Tensor, "m f"]
    sh_residual: Float[Tensor, "m k 3"]


# ---------------------------------------------------------------------------------------------------- backbone
@register_backbone("lara", LaRaConfig)
class LaRaBackbone(Backbone):
    """See the module docstring. `encode(images, cameras) -> LaRaCoarse`; `refine(...) -> list[LaRaRefined]`;
    the backbone contract (`forward(batch) -> Coarse`, `condition`) on top of them. The densifier's config is not
    needed (LaRa's refinement heads exist with or without it)."""

    render_in_graph = True  # the refinement trains through the coarse render
    densifier_in_bf16 = True  # measured: fine renders within 50 dB PSNR of float32 at the paper size
    COMPONENTS = {"image_encoder": ("img_encoder",), "dir_norm": ("dir_norm",), "view_embed": ("view_embed",),
                  "volume_transformer": ("vol_decoder",), "lara_heads": ("decoder",)}

    def __init__(self, config: LaRaConfig | None = None, densifier: object = None) -> None:
        super().__init__()
        self.config = cfg = config or LaRaConfig()
        enc_dim = cfg.encoder.embed_dim
        self.img_encoder = ImageEncoder(cfg.encoder, cfg.image_mean, cfg.image_std)
        self.dir_norm = ModLN(enc_dim, cfg.cond_dim, eps=1e-6)
        self.view_embed = _normal_parameter(1, cfg.max_views, cfg.view_embed_dim, 1, 1, 1,
                                            std=cfg.view_embed_dim ** -0.5)
        self.vol_decoder = VolumeTransformer(
            cfg.volume_dim, enc_dim + cfg.view_embed_dim, cfg.volume_size, cfg.gaussian_feature_dim,
            cfg.volume_layers, cfg.volume_heads, cfg.groups, cfg.volume_mlp_ratio)
        self.decoder = GaussianHeads(cfg.gaussian_feature_dim, cfg.num_sh_coeffs, cfg.fine_heads)
        # built on the CPU, then moved to the default device (fast under `torch.device("meta")` too)
        default = torch.empty(0).device
        self.register_buffer("volume_grid", dense_grid(cfg.feat_volume_size, cfg.scene_half_size, "cpu").to(default),
                             persistent=False)
        self.register_buffer("group_centers", dense_grid(cfg.gaussian_grid_size, cfg.scene_half_size, "cpu")
                             .reshape(-1, 3).to(default), persistent=False)
        if cfg.encoder_weights:
            self.load_encoder_weights(cfg.encoder_weights, cfg.encoder_weights_prefix)

    # ------------------------------------------------------------------ properties for composition
    @property
    def feature_dim(self) -> int:
        return self.config.feature_dim

    @property
    def num_gaussians(self) -> int:
        return self.config.num_gaussians

    def bf16_modules(self) -> list[nn.Module]:
        """The stages that run in bfloat16 on the fast path (`gdensify.runtime.inference("bf16", modules)`): the
        image encoder and the volume transformer, which hold almost all of the arithmetic. The ray modulation,
        the lifting, the Gaussian heads and the refinement stay float32 (cheap; the heads' outputs are the
        Gaussians' parameters)."""
        return [self.img_encoder, self.vol_decoder]

    def load_encoder_weights(self, path: str, prefix: str = "", ignore_prefixes: tuple[str, ...] = ()) -> None:
        load_vit_weights(self.img_encoder.model, path, prefix=prefix, ignore_prefixes=ignore_prefixes)

    # ------------------------------------------------------------------ steps 1–3
    def build_feature_volume(
        self, tokens: Float[Tensor, "bv c gh gw"], w2c: Float[Tensor, "bv 4 4"], k: Float[Tensor, "bv 3 3"],
        width: int, height: int,
    ) -> Float[Tensor, "bv c f f f"]:
        """Ray-modulate the token map (ModLN with SH-encoded Plücker rays) and sample it at the feature-volume
        cell centres projected into each view."""
        cfg = self.config
        bv, c, gh, gw = tokens.shape
        with torch.autocast(w2c.device.type, enabled=False):  # camera geometry in float32
            w2c, k = w2c.float(), k.float()
            cond = plucker_sh(token_plucker(w2c, k, gh, gw, cfg.encoder.patch_size), cfg.ray_sh_degree)
            uv, z = project_points(self.volume_grid.reshape(1, -1, 3).float(), w2c, k)
            grid = grid_coordinates(uv, z, width, height, cfg.sample_pixel_shift)
        tokens = self.dir_norm(tokens.permute(0, 2, 3, 1), cond).permute(0, 3, 1, 2)
        sampled = F.grid_sample(tokens.float(), grid[:, None].float(), mode="bilinear", padding_mode="zeros",
                                align_corners=False)
        f = cfg.feat_volume_size
        return sampled.reshape(bv, c, f, f, f).to(tokens.dtype)

    def encode(self, images: Float[Tensor, "b v h w 3"], cameras: Cameras | Sequence[Cameras]) -> LaRaCoarse:
        """Steps 1–5 of the module docstring for B objects at once: coarse Gaussians and voxel features."""
        cfg = self.config
        if images.ndim != 5 or images.shape[-1] != 3:
            raise ValueError(f"images must have shape (B, V, H, W, 3), got {tuple(images.shape)}")
        b, v, h, w, _ = images.shape
        if v > cfg.max_views:
            raise ValueError(f"at most {cfg.max_views} input views (view-embedding slots), got {v}")
        w2c, k = stack_cameras(cameras, b, v, w, h)
        w2c, k = w2c.to(images.device, torch.float32), k.to(images.device, torch.float32)

        tokens = self.img_encoder(images.reshape(b * v, h, w, 3))
        feat_vol = self.build_feature_volume(tokens, w2c.reshape(-1, 4, 4), k.reshape(-1, 3, 3), w, h)
        f = cfg.feat_volume_size
        feat_vol = feat_vol.reshape(b, v, -1, f, f, f)
        embed = self.view_embed[:, :v].expand(b, -1, -1, f, f, f).to(feat_vol.dtype)
        feat_vol = torch.cat([feat_vol, embed], dim=2)

        volume = self.vol_decoder(feat_vol)  # (B, G, G, G, C)
        voxel_features = volume.reshape(b, -1, volume.shape[-1])
        offset, sh, opacity, scale, quats = self.decoder.coarse(voxel_features)
        means = self.group_centers + (2 * torch.sigmoid(offset) - 1) * cfg.offset_bound
        return LaRaCoarse(
            means=means, quats=quats, log_scales=scale + cfg.log_scale_shift,
            opacity_logits=opacity[..., 0] + cfg.opacity_shift, sh=sh.reshape(b, -1, cfg.num_sh_coeffs, 3),
            voxel_features=voxel_features, world_to_camera=w2c, intrinsics=k, image_size=(w, h),
        )

    # ------------------------------------------------------------------ step 10
    def point_features(
        self, means: Float[Tensor, "m 3"], images: Float[Tensor, "v h w 3"], rgb: Float[Tensor, "v h w 3"],
        alpha: Float[Tensor, "v h w 1"], depth: Float[Tensor, "v h w 1"], w2c: Float[Tensor, "v 4 4"],
        k: Float[Tensor, "v 3 3"],
    ) -> Float[Tensor, "m v 8"]:
        """Per view: [input RGB, coarse RGB, coarse alpha, |coarse depth − point camera z|] at the projected means
        (`view_tokens.sample_view_tokens`, zero padding, the config's pixel shift)."""
        return sample_view_tokens(means, w2c, k, token_maps(images, rgb, alpha, depth),
                                  self.config.sample_pixel_shift, padding="zeros")

    def refine(
        self, coarse: LaRaCoarse, images: Float[Tensor, "b v h w 3"], rgb: Float[Tensor, "b v h w 3"],
        alpha: Float[Tensor, "b v h w *one"], depth: Float[Tensor, "b v h w *one"],
        masks: Bool[Tensor, "b n"] | Sequence[Tensor] | None = None,
    ) -> list[LaRaRefined]:
        """LaRa refinement of the visible coarse Gaussians of every object (one batched pass over all of them).

        `rgb`, `alpha`, `depth`: the coarse Gaussians rendered into the same V input views at the images'
        resolution (depth = Σ wᵢ zᵢ, not divided by alpha); keep them in the autograd graph to train through them.
        `masks`: per object, a bool mask over the N coarse Gaussians (e.g. `visible_masks`); None = all."""
        b, v, h, w, _ = images.shape
        if (w, h) != tuple(coarse.image_size) or coarse.world_to_camera.shape[:2] != (b, v):
            raise ValueError(f"images {tuple(images.shape)} do not match the coarse pass "
                             f"({tuple(coarse.world_to_camera.shape[:2])} views at {coarse.image_size})")
        alpha = alpha if alpha.ndim == 5 else alpha[..., None]
        depth = depth if depth.ndim == 5 else depth[..., None]
        for name, t, c in (("rgb", rgb, 3), ("alpha", alpha, 1), ("depth", depth, 1)):
            if tuple(t.shape) != (b, v, h, w, c):
                raise ValueError(f"{name} must have shape {(b, v, h, w, c)}, got {tuple(t.shape)}")
        n = coarse.means.shape[1]
        indices = []
        for i in range(b):
            m = None if masks is None else masks[i]
            if m is None:
                indices.append(torch.arange(n, device=coarse.means.device))
            else:
                if m.shape != (n,) or m.dtype != torch.bool:
                    raise ValueError(f"mask {i} must be a bool tensor of shape ({n},), got {m.dtype} {tuple(m.shape)}")
                indices.append(m.nonzero()[:, 0])
        point_feats = torch.cat([
            self.point_features(coarse.means[i, idx], images[i], rgb[i], alpha[i], depth[i],
                                coarse.world_to_camera[i], coarse.intrinsics[i])
            for i, idx in enumerate(indices)])
        voxel = torch.cat([coarse.voxel_features[i, idx] for i, idx in enumerate(indices)])
        refined, sh_res = self.decoder.fine(voxel, point_feats.to(voxel.dtype))
        features = torch.cat([refined, voxel.float()], dim=-1)
        k_sh = self.config.num_sh_coeffs
        out, start = [], 0
        for i, idx in enumerate(indices):
            sl = slice(start, start + len(idx))
            start += len(idx)
            res = sh_res[sl].reshape(-1, k_sh, 3)
            g = Gaussians(coarse.means[i, idx], coarse.quats[i, idx], coarse.log_scales[i, idx],
                          coarse.opacity_logits[i, idx], coarse.sh[i, idx] + res)
            out.append(LaRaRefined(index=idx, gaussians=g, features=features[sl], sh_residual=res))
        return out


    # ------------------------------------------------------------------ the backbone contract
    def forward(self, batch: ViewBatch, generator: torch.Generator | None = None) -> Coarse:
        """`encode` on the batch's input views; candidates = the visible set (`visible_masks`, randomly thinned in
        training with `generator`); one group per object."""
        lara = self.encode(batch.input_images, batch.input_cameras)
        b, n = lara.means.shape[:2]
        gaussians = Gaussians(lara.means.reshape(b * n, 3), lara.quats.reshape(b * n, 4),
                              lara.log_scales.reshape(b * n, 3), lara.opacity_logits.reshape(b * n),
                              lara.sh.reshape(b * n, *lara.sh.shape[2:]))
        item = torch.arange(b, device=lara.means.device).repeat_interleave(n)
        visible = visible_masks(lara, training=self.training, generator=generator)
        return Coarse(gaussians, item, item, b, b, candidates=visible.reshape(-1), state=lara)

    def condition(self, coarse: Coarse, batch: ViewBatch, render: list[RenderOutput], index: Int[Tensor, " S"],
                  conditioning: nn.Module | None = None) -> Conditioned:
        """LaRa refinement of every visible Gaussian from the coarse render: the selected ones' GD features, and
        the coarse set with the refined SH (what the fine set keeps of the non-selected ones)."""
        lara: LaRaCoarse = coarse.state
        b, n = lara.means.shape[:2]
        refined = self.refine(lara, batch.input_images, torch.stack([r.image for r in render]),
                              torch.stack([r.alpha for r in render]), torch.stack([r.depth for r in render]),
                              coarse.candidates.reshape(b, n))
        visible = torch.cat([r.index + i * n for i, r in enumerate(refined)])  # ascending flat indices
        features = torch.cat([r.features for r in refined])
        sh = coarse.gaussians.sh.index_copy(0, visible, torch.cat([r.gaussians.sh for r in refined]))
        kept = dataclasses.replace(coarse.gaussians, sh=sh)
        return Conditioned(features[torch.searchsorted(visible, index)], kept)


# ---------------------------------------------------------------------------------------------------- utilities
def visible_masks(
    coarse: LaRaCoarse | Float[Tensor, "b n"], threshold: float = 0.005, training: bool = False,
    min_ratio: float = 1e-3, dense_ratio: float = 0.5, generator: torch.Generator | None = None,
) -> Bool[Tensor, "b n"]:
    """Visible set per object, LaRa/GD `_check_mask` (`lightning/network.py`): σ(opacity logit) > threshold, detached.

    If fewer than `min_ratio` of an object's Gaussians pass, each failing one is added with probability 0.2
    (training and evaluation). In training only, if more than `dense_ratio` pass, each passing one is kept with
    probability 0.5. Random draws (on the CPU) use `generator`; without one, a generator seeded 0 is used so that
    evaluation is deterministic — pass your own in training, or every step drops the same Gaussians."""
    logits = coarse.opacity_logits if isinstance(coarse, LaRaCoarse) else coarse
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    mask = torch.sigmoid(logits.detach()) > threshold
    out = []
    for m in mask:
        ratio = m.float().mean().item()
        if ratio < min_ratio:
            r = torch.rand(m.shape, generator=generator, device="cpu").to(m.device)
            m = m | (r > 0.8)
        elif ratio > dense_ratio and training:
            r = torch.rand(m.shape, generator=generator, device="cpu").to(m.device)
            m = m & (r > 0.5)
        out.append(m)
    return torch.stack(out)


_OFFICIAL_IGNORED = ("volume_grid", "group_centers", "dense_grid", "centers")


def load_official_state_dict(model: LaRaBackbone, state: dict[str, Tensor]) -> LaRaBackbone:
    """Load the backbone part of an official GD checkpoint's `state_dict` (keys `net.*`) strictly.

    The densifier (`net.dec.*`) and the persistent grid buffers are skipped; anything else must match exactly,
    otherwise `WeightLoadingError` lists the differences."""
    def key(name: str) -> str | None:
        name = name[4:] if name.startswith("net.") else name
        return None if name.startswith("dec.") or name in _OFFICIAL_IGNORED else name

    load_mapped(model, state, key, source="official GD checkpoint (backbone)")
    return model

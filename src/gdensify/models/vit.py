"""A plain Vision Transformer image encoder whose parameter names are timm's, so DINO ViT-B/16 loads by name.

`VisionTransformer` is the timm `VisionTransformer` layout without a classification head: patch embedding
(`patch_embed.proj`, a strided Conv2d), a class token (`cls_token`), a learned absolute position embedding
(`pos_embed`, one entry for the class token plus one per patch of the `img_size` grid), pre-norm blocks
(`blocks.{i}.norm1`, `blocks.{i}.attn.qkv`, `blocks.{i}.attn.proj`, `blocks.{i}.norm2`, `blocks.{i}.mlp.fc1`,
`blocks.{i}.mlp.fc2`) and a final LayerNorm (`norm`). Attention uses `F.scaled_dot_product_attention`.

Images of any size divisible by the patch size are accepted: the patch part of `pos_embed` is resampled to the
token grid exactly as timm's `dynamic_img_size=True` does it (bicubic, `antialias=True`, class-token entry kept),
which is what LaRa/GD rely on to run DINO (trained at 224²) on 512² inputs (32² tokens).

Weights come only from a local file (`load_vit_weights`): safetensors or a torch state dict (optionally nested under
"state_dict"/"model"/"module", optionally under a key prefix such as "net.img_encoder.model."). Keys are checked
strictly; a mismatch raises `WeightLoadingError` listing missing and unexpected keys and shape mismatches. A file
`pos_embed` for another grid is resampled to the model's grid. Nothing is ever downloaded and timm is not needed.
Obtaining DINO weights offline: with timm installed somewhere, `timm.create_model("vit_base_patch16_224.dino",
pretrained=True).state_dict()` saved with `safetensors.torch.save_file`; the original
`dino_vitbase16_pretrain.pth` from facebookresearch/dino uses the same key names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from ..config import Presets
from ..io.weights import WeightLoadingError, load_mapped, read_state_dict

__all__ = [
    "ViTConfig", "VisionTransformer", "WeightLoadingError", "load_vit_weights", "read_state_dict",
    "resample_pos_embed",
]


@dataclass
class ViTConfig(Presets):
    """Shapes of a plain ViT. `img_size` is the resolution the position embedding grid is stored for."""

    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    ln_eps: float = 1e-6
    in_chans: int = 3

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} must be a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    PRESETS = {
        "paper": {},  # DINO ViT-B/16 (timm `vit_base_patch16_224.dino`): 768 ch, 12 blocks, 12 heads, 14² grid
        "tiny": dict(img_size=128, patch_size=8, embed_dim=128, depth=4, num_heads=4),  # 128² on CPU, 16² tokens
    }


# ---------------------------------------------------------------------------------------------------- modules
class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Float[Tensor, "n c h w"]) -> Float[Tensor, "n gh gw d"]:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {self.patch_size}")
        return self.proj(x).permute(0, 2, 3, 1)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Float[Tensor, "n l d"]) -> Float[Tensor, "n l d"]:
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (timm `Block` without layer scale / drop path)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def resample_pos_embed(
    pos_embed: Float[Tensor, "1 l d"], new_grid: tuple[int, int], num_prefix_tokens: int = 1,
    old_grid: tuple[int, int] | None = None,
) -> Float[Tensor, "1 l2 d"]:
    """Resample the patch part of an absolute position embedding to `new_grid` (rows, cols).

    Same arithmetic as timm's `resample_abs_pos_embed`: bicubic with `antialias=True`, computed in float32,
    prefix (class) tokens untouched; the old grid is assumed square when not given."""
    num_patches = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(f"pos_embed has {num_patches} patch entries, not a square grid; pass old_grid")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = pos_embed.shape[-1]
    grid = patches.float().reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", antialias=True, align_corners=False)
    patches = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, patches], dim=1)


class VisionTransformer(nn.Module):
    """Plain ViT, timm parameter names, no head. Input: images already normalised, (N, 3, H, W)."""

    def __init__(self, config: ViTConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ViTConfig()
        d = config.embed_dim
        self.num_prefix_tokens = 1
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.grid_size ** 2 + 1, d))
        self.blocks = nn.ModuleList(
            [Block(d, config.num_heads, config.mlp_ratio, config.qkv_bias, config.ln_eps) for _ in range(config.depth)]
        )
        self.norm = nn.LayerNorm(d, eps=config.ln_eps)
        self.reset_parameters()

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def reset_parameters(self) -> None:
        """timm's default ViT init: trunc-normal(0.02) position embedding and Linear weights, zero biases,
        class token N(0, 1e-6), PyTorch default init for the patch convolution, unit LayerNorms."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if not self.cls_token.is_meta:  # meta tensors: values are undefined anyway, and normal_ is slow there
            nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: Float[Tensor, "n c h w"]) -> Float[Tensor, "n l d"]:
        """All tokens after the final norm: class token first, then patches row-major. l = 1 + (H/p)(W/p)."""
        x = self.patch_embed(x)
        n, gh, gw, d = x.shape
        pos = resample_pos_embed(self.pos_embed, (gh, gw), self.num_prefix_tokens)
        x = torch.cat([self.cls_token.expand(n, -1, -1), x.reshape(n, gh * gw, d)], dim=1) + pos
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: Float[Tensor, "n c h w"]) -> Float[Tensor, "n d gh gw"]:
        """Patch-token feature map (class token dropped), channels first."""
        n, _, h, w = x.shape
        p = self.config.patch_size
        tokens = self.forward_features(x)[:, self.num_prefix_tokens:]
        return tokens.transpose(1, 2).reshape(n, self.embed_dim, h // p, w // p)


# ---------------------------------------------------------------------------------------------------- loading
def load_vit_weights(
    model: VisionTransformer, source: str | Path | Mapping[str, Tensor], prefix: str = "",
    ignore_prefixes: tuple[str, ...] = (),
) -> VisionTransformer:
    """Load timm-named ViT weights into `model` strictly (in place; returns the model).

    `prefix`: only keys starting with it are used, with it removed (e.g. "net.img_encoder.model." for a GD
    Lightning checkpoint, "module." for a DDP one). `ignore_prefixes`: keys (after removing `prefix`) to skip,
    e.g. ("head.",) for a file that includes a classifier. A `pos_embed` stored for another grid is resampled."""
    state = read_state_dict(source) if isinstance(source, (str, Path)) else dict(source)
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise WeightLoadingError(f"no key starts with prefix {prefix!r}")
    state = {k: v for k, v in state.items() if not any(k.startswith(p) for p in ignore_prefixes)}
    own = model.state_dict()
    if "pos_embed" in state and state["pos_embed"].shape != own["pos_embed"].shape:
        pe = state["pos_embed"]
        if pe.ndim != 3 or pe.shape[-1] != own["pos_embed"].shape[-1]:
            raise WeightLoadingError(
                f"pos_embed has shape {tuple(pe.shape)}, cannot resample to {tuple(own['pos_embed'].shape)}")
        g = model.config.grid_size
        state["pos_embed"] = resample_pos_embed(pe, (g, g), model.num_prefix_tokens)
    load_mapped(model, state, source="ViT weights (timm key names, e.g. 'blocks.0.attn.qkv.weight')")
    return model

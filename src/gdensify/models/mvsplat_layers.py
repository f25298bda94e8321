"""Network blocks of the MVSplat-style scene backbone: CNN encoder, multi-view transformer, cross-view U-Net.

Written from the architecture description of MVSplat (Chen et al., ECCV 2024; MIT-licensed reference code
`donydchen/mvsplat`), which itself builds on UniMatch/GMFlow (feature backbone) and the LDM U-Net (refinement).
The structure and channel sizes follow the published model so that the `paper` preset has its parameter count;
the code is our own.

Module and parameter names of `CNNEncoder` and `MultiViewTransformer` mirror UniMatch's (`conv1`, `layer1.0.conv1`,
`downsample.0`, `layers.3.cross_attn_ffn.mlp.0`, ...), so a UniMatch/MVSplat state dict loads by a plain prefix
mapping (see `gdensify.models.mvsplat.MVSplatBackbone.load_feature_backbone`).

Tensor layout inside this file: channels first, `(B·V, C, h, w)` with the view index fastest within a scene
(b-major, "(b v)"), unlike the reference code's "(v b)".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

# ImageNet statistics: the UniMatch backbone was trained on images normalised this way.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------------------------------
# CNN encoder (UniMatch style): conv7×7/2 → 3 stages of 2 residual blocks, InstanceNorm, output at 1/4 resolution
# ---------------------------------------------------------------------------------------------------------------------
class ResidualBlock(nn.Module):
    """Two 3×3 convs with InstanceNorm (no affine parameters) and ReLU; 1×1 conv shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.norm1 = nn.InstanceNorm2d(planes)
        self.norm2 = nn.InstanceNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        if stride == 1 and in_planes == planes:
            self.downsample = None
        else:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride), nn.InstanceNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class CNNEncoder(nn.Module):
    """Images (N, 3, H, W) (already normalised) → features (N, out_channels, H/4, W/4).

    Strides: conv1 /2, layer1 /1, layer2 /2, layer3 /1 (UniMatch's `num_output_scales=0` configuration)."""

    def __init__(self, channels: tuple[int, int, int] = (64, 96, 128), out_channels: int = 128) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = nn.Conv2d(3, c1, 7, stride=2, padding=3, bias=False)
        self.norm1 = nn.InstanceNorm2d(c1)
        self.relu1 = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(ResidualBlock(c1, c1, 1), ResidualBlock(c1, c1))
        self.layer2 = nn.Sequential(ResidualBlock(c1, c2, 2), ResidualBlock(c2, c2))
        self.layer3 = nn.Sequential(ResidualBlock(c2, c3, 1), ResidualBlock(c3, c3))
        self.conv2 = nn.Conv2d(c3, out_channels, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Float[Tensor, "N 3 H W"]) -> Float[Tensor, "N C h w"]:
        x = self.relu1(self.norm1(self.conv1(x)))
        return self.conv2(self.layer3(self.layer2(self.layer1(x))))


# ---------------------------------------------------------------------------------------------------------------------
# Multi-view transformer: 6 × (self-attention, cross-view attention + FFN) in Swin-style (shifted) local windows
# ---------------------------------------------------------------------------------------------------------------------
def sine_position_encoding(height: int, width: int, channels: int, dtype=torch.float32, device=None,
                           temperature: float = 10000.0) -> Float[Tensor, "h w C"]:
    """DETR/GMFlow 2-D sine encoding (normalised to [0, 2π]); first half of the channels encode y, second half x."""
    if channels % 4 != 0:
        raise ValueError(f"sine position encoding needs channels divisible by 4, got {channels}")
    npf = channels // 2
    scale = 2 * math.pi
    y = (torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + 1e-6) * scale)
    x = (torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + 1e-6) * scale)
    dim_t = temperature ** (2 * (torch.arange(npf, dtype=torch.float32, device=device) // 2) / npf)
    py = y[:, None] / dim_t  # h npf
    px = x[:, None] / dim_t  # w npf
    py = torch.stack([py[:, 0::2].sin(), py[:, 1::2].cos()], dim=2).flatten(1)
    px = torch.stack([px[:, 0::2].sin(), px[:, 1::2].cos()], dim=2).flatten(1)
    pos = torch.cat([py[:, None, :].expand(height, width, npf), px[None, :, :].expand(height, width, npf)], dim=-1)
    return pos.to(dtype)


def _window_partition(x: Tensor, splits: int) -> Tensor:
    """(N, h, w, C) → (N, S², L, C) with S = splits windows per side and L = (h/S)·(w/S) tokens per window."""
    n, h, w, c = x.shape
    x = x.reshape(n, splits, h // splits, splits, w // splits, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, splits * splits, (h // splits) * (w // splits), c)


def _window_merge(x: Tensor, h: int, w: int, splits: int) -> Tensor:
    """Inverse of `_window_partition`: (N, S², L, C) → (N, h, w, C)."""
    n, _, _, c = x.shape
    x = x.reshape(n, splits, splits, h // splits, w // splits, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h, w, c)


def shifted_window_mask(h: int, w: int, splits: int, device=None) -> Tensor:
    """Boolean (S², L, L) mask (True = may attend) for Swin's shifted windows (shift = half a window).

    After rolling the map by −shift, a window may hold pixels that were not adjacent before the roll (up to 4
    regions); the labels are laid out in the rolled map and tokens attend only within their own region, as in
    Swin/GMFlow."""
    wh, ww = h // splits, w // splits
    sh, sw = wh // 2, ww // 2
    labels = torch.zeros(h, w, dtype=torch.long, device=device)
    count = 0
    for hs in (slice(0, h - wh), slice(h - wh, h - sh), slice(h - sh, h)):
        for ws in (slice(0, w - ww), slice(w - ww, w - sw), slice(w - sw, w)):
            labels[hs, ws] = count
            count += 1
    windows = _window_partition(labels[None, :, :, None], splits)[0, :, :, 0]  # S² L
    return windows[:, :, None] == windows[:, None, :]


def window_attention(q: Float[Tensor, "N h w C"], k: Float[Tensor, "N M h w C"], v: Float[Tensor, "N M h w C"],
                     splits: int, shift: bool, num_heads: int,
                     masked_logit: float | None = None) -> Float[Tensor, "N h w C"]:
    """Attention of every query token to the keys of M maps in the same (optionally shifted) local window.

    `splits` = windows per side (1 = global attention over the whole map of every key view). Tokens of a shifted
    window that were not adjacent before the shift are kept apart by a mask: `masked_logit` None excludes them
    exactly (boolean mask); a number is added to their logits instead (UniMatch/MVSplat add −100, which leaks
    when logits exceed ~100)."""
    n, h, w, c = q.shape
    m = k.shape[1]
    mask = None
    if shift and splits > 1:
        sh, sw = (h // splits) // 2, (w // splits) // 2
        q = torch.roll(q, shifts=(-sh, -sw), dims=(1, 2))
        k = torch.roll(k, shifts=(-sh, -sw), dims=(2, 3))
        v = torch.roll(v, shifts=(-sh, -sw), dims=(2, 3))
        mask = shifted_window_mask(h, w, splits, device=q.device).repeat(1, 1, m)  # S² L (M·L)
        mask = mask[:, None]  # S² 1 L (M·L): broadcast over heads
        if masked_logit is not None:
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, masked_logit)
    qw = _window_partition(q, splits)  # N S² L C
    kw = _window_partition(k.reshape(n * m, h, w, c), splits)  # (N M) S² L C
    vw = _window_partition(v.reshape(n * m, h, w, c), splits)
    s2, length = qw.shape[1], qw.shape[2]
    # keys of all M maps of a window side by side: N S² (M·L) C
    kw = kw.reshape(n, m, s2, length, c).permute(0, 2, 1, 3, 4).reshape(n, s2, m * length, c)
    vw = vw.reshape(n, m, s2, length, c).permute(0, 2, 1, 3, 4).reshape(n, s2, m * length, c)
    d = c // num_heads
    heads = lambda t: t.reshape(*t.shape[:-1], num_heads, d).transpose(-2, -3)  # noqa: E731  N S² H T d
    out = F.scaled_dot_product_attention(heads(qw), heads(kw), heads(vw), attn_mask=mask)
    out = out.transpose(-2, -3).reshape(n, s2, length, c)
    out = _window_merge(out, h, w, splits)
    if shift and splits > 1:
        out = torch.roll(out, shifts=(sh, sw), dims=(1, 2))
    return out


class TransformerLayer(nn.Module):
    """GMFlow layer: message = LN(merge(attn(q(x), k(ctx), v(ctx)))); with FFN: LN(MLP([x, message])); x + message."""

    def __init__(self, dim: int, num_heads: int = 1, ffn: bool = True, ffn_expansion: int = 4,
                 masked_logit: float | None = None) -> None:
        super().__init__()
        self.num_heads, self.masked_logit = num_heads, masked_logit
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.merge = nn.Linear(dim, dim, bias=False)
        self.norm1 = nn.LayerNorm(dim)
        self.has_ffn = ffn
        if ffn:
            hidden = 2 * dim * ffn_expansion
            self.mlp = nn.Sequential(nn.Linear(2 * dim, hidden, bias=False), nn.GELU(),
                                     nn.Linear(hidden, dim, bias=False))
            self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Float[Tensor, "N h w C"], context: Float[Tensor, "N M h w C"], splits: int,
                shift: bool) -> Float[Tensor, "N h w C"]:
        message = window_attention(self.q_proj(x), self.k_proj(context), self.v_proj(context), splits, shift,
                                   self.num_heads, self.masked_logit)
        message = self.norm1(self.merge(message))
        if self.has_ffn:
            message = self.norm2(self.mlp(torch.cat([x, message], dim=-1)))
        return x + message


class TransformerBlock(nn.Module):
    """Self-attention (no FFN), then cross-view attention with FFN."""

    def __init__(self, dim: int, num_heads: int, ffn_expansion: int, masked_logit: float | None = None) -> None:
        super().__init__()
        self.self_attn = TransformerLayer(dim, num_heads, ffn=False, masked_logit=masked_logit)
        self.cross_attn_ffn = TransformerLayer(dim, num_heads, ffn=True, ffn_expansion=ffn_expansion,
                                               masked_logit=masked_logit)

    def forward(self, x: Tensor, others: Tensor, splits: int, shift: bool) -> Tensor:
        x = self.self_attn(x, x[:, None], splits, shift)
        return self.cross_attn_ffn(x, others, splits, shift)


class MultiViewTransformer(nn.Module):
    """V feature maps per scene attend to themselves and to the V−1 other views of the same scene.

    Every layer updates all views from the previous layer's features (the cross-view keys are the other views'
    features before this layer's self-attention, as in GMFlow/MVSplat). Odd layers use shifted windows.
    Sine position encodings (per window) are added to the input first. `masked_logit`: see `window_attention`."""

    def __init__(self, dim: int = 128, num_layers: int = 6, num_heads: int = 1, ffn_expansion: int = 4,
                 attn_splits: int = 2, masked_logit: float | None = None) -> None:
        super().__init__()
        self.dim, self.attn_splits = dim, attn_splits
        self.layers = nn.ModuleList([TransformerBlock(dim, num_heads, ffn_expansion, masked_logit)
                                     for _ in range(num_layers)])
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, features: Float[Tensor, "B V C h w"]) -> Float[Tensor, "B V C h w"]:
        b, v, c, h, w = features.shape
        s = self.attn_splits
        x = features.permute(0, 1, 3, 4, 2)  # B V h w C
        pos = sine_position_encoding(h // s, w // s, c, dtype=x.dtype, device=x.device).repeat(s, s, 1)
        x = x + pos
        # for each view, the indices of the other views
        others = torch.tensor([[u for u in range(v) if u != i] for i in range(v)], device=x.device)
        for i, layer in enumerate(self.layers):
            ctx = x[:, others].reshape(b * v, v - 1, h, w, c)  # (B V) (V−1) h w C
            x = layer(x.reshape(b * v, h, w, c), ctx, s, shift=(i % 2 == 1)).reshape(b, v, h, w, c)
        return x.permute(0, 1, 4, 2, 3)


# ---------------------------------------------------------------------------------------------------------------------
# LDM-style 2-D U-Net (post-norm residual blocks, cross-view self-attention at chosen levels)
# ---------------------------------------------------------------------------------------------------------------------
def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 8 groups, or 4 when the channel count is not a multiple of 8 (as in MVSplat)."""
    return nn.GroupNorm(8 if channels % 8 == 0 else 4, channels)


def _zero_init_norm(norm: nn.GroupNorm, zero: bool) -> nn.GroupNorm:
    if zero:
        nn.init.zeros_(norm.weight)
        nn.init.zeros_(norm.bias)
    return norm


class ResBlock(nn.Module):
    """Post-norm residual block: skip(x) + SiLU(GN(conv(SiLU(GN(conv(x))))))."""

    def __init__(self, in_channels: int, out_channels: int, zero_init: bool) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), group_norm(out_channels),
                                       nn.SiLU())
        self.out_layers = nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1),
                                        _zero_init_norm(group_norm(out_channels), zero_init), nn.SiLU())
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, num_views: int) -> Tensor:
        return self.skip(x) + self.out_layers(self.in_layers(x))


class CrossViewAttention(nn.Module):
    """Post-norm self-attention over the tokens of all V views of a scene together: x + GN(proj(attn(qkv(x))))."""

    def __init__(self, channels: int, head_channels: int, zero_init: bool) -> None:
        super().__init__()
        if channels % head_channels != 0:
            raise ValueError(f"U-Net attention: {channels} channels not divisible by head size {head_channels}")
        self.num_heads = channels // head_channels
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        self.norm = _zero_init_norm(group_norm(channels), zero_init)

    def forward(self, x: Tensor, num_views: int) -> Tensor:
        bv, c, h, w = x.shape
        b = bv // num_views
        tokens = x.reshape(b, num_views, c, h * w).permute(0, 2, 1, 3).reshape(b, c, num_views * h * w)
        q, k, v = self.qkv(tokens).chunk(3, dim=1)  # B C T each
        heads = lambda t: t.reshape(b, self.num_heads, c // self.num_heads, -1).transpose(-1, -2)  # noqa: E731
        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))  # B H T d
        out = out.transpose(-1, -2).reshape(b, c, -1)
        out = self.norm(self.proj_out(out))
        out = out.reshape(b, c, num_views, h * w).permute(0, 2, 1, 3).reshape(bv, c, h, w)
        return x + out


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, num_views: int) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, num_views: int) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Stage(nn.ModuleList):
    def forward(self, x: Tensor, num_views: int) -> Tensor:  # type: ignore[override]
        for module in self:
            x = module(x, num_views)
        return x


class UNet(nn.Module):
    """LDM U-Net without time embedding: one residual block per level going down, two going up, two in the middle.

    `attention_levels` lists down-sampling factors (1, 2, 4, ...) at which a cross-view attention block follows
    the residual block. Input and output have `channels` channels; H and W must be divisible by
    2^(len(channel_mult) − 1)."""

    def __init__(self, channels: int, channel_mult: tuple[int, ...], attention_levels: tuple[int, ...],
                 head_channels: int, zero_init: bool = True) -> None:
        super().__init__()
        self.depth = len(channel_mult)
        self.input_blocks = nn.ModuleList([_Stage([_Conv(channels, channels)])])
        skip_channels = [channels]
        ch, ds = channels, 1
        for level, mult in enumerate(channel_mult):
            stage: list[nn.Module] = [ResBlock(ch, mult * channels, zero_init)]
            ch = mult * channels
            if ds in attention_levels:
                stage.append(CrossViewAttention(ch, head_channels, zero_init))
            self.input_blocks.append(_Stage(stage))
            skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(_Stage([Downsample(ch)]))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = _Stage([ResBlock(ch, ch, zero_init), ResBlock(ch, ch, zero_init)])
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(2):
                stage = [ResBlock(ch + skip_channels.pop(), mult * channels, zero_init)]
                ch = mult * channels
                if ds in attention_levels:
                    stage.append(CrossViewAttention(ch, head_channels, zero_init))
                if level and i == 1:
                    stage.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(_Stage(stage))
        self.out = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), group_norm(channels), nn.SiLU())

    def forward(self, x: Float[Tensor, "N C H W"], num_views: int) -> Float[Tensor, "N C H W"]:
        skips = []
        for block in self.input_blocks:
            x = block(x, num_views)
            skips.append(x)
        x = self.middle_block(x, num_views)
        for block in self.output_blocks:
            x = block(torch.cat([x, skips.pop()], dim=1), num_views)
        return self.out(x)


class _Conv(nn.Conv2d):
    """3×3 conv that ignores the `num_views` argument (U-Net input layer)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor, num_views: int = 1) -> Tensor:  # type: ignore[override]
        return super().forward(x)


class RefinementNet(nn.Module):
    """conv3×3 → GroupNorm → GELU → U-Net: the stem + U-Net used for both cost-volume and depth refinement."""

    def __init__(self, in_channels: int, channels: int, channel_mult: tuple[int, ...],
                 attention_levels: tuple[int, ...], head_channels: int, norm_groups: int,
                 zero_init: bool = True) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1), nn.GroupNorm(norm_groups, channels),
                                  nn.GELU())
        self.unet = UNet(channels, channel_mult, attention_levels, head_channels, zero_init)

    def forward(self, x: Tensor, num_views: int) -> Tensor:
        return self.unet(self.stem(x), num_views)

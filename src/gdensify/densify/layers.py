"""The three per-layer operations of the Generative Densification module: UP, SPLIT and HEAD.

- `Upsample` (UP): every point makes R children. Δx = s·g·tanh(MLP_x(f)) (s = 0.5 in the object model, 0.1 in the
  scene model; g the layer's grid size), Δf = MLP_f([PE(Δx), f]) with PE = [sin(2^k Δx), cos(2^k Δx)], k < 15,
  and f_child = Linear_skip(f) + DropPath(Δf); x_child = x + Δx.
- `LearnableMask` (SPLIT): p = σ(MLP(f)) (or a per-object softmax, the released residual model); the top
  ceil(ratio·n) points of every object by p continue to the next layer, the others are finalised here (leaves).
  Straight-through estimator: the features are multiplied by p in the backward pass only.
- `GaussianHead` (HEAD): MLP → raw [SH | opacity | scale | rotation]; `attributes_to_gaussians` applies the
  released default shifts.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor, nn

from ..gaussians import Gaussians
from ._ops import segment_softmax, take, top_ratio_mask
from .point_transformer import DropPath, GlobalAdaptiveLayerNorm

# Released object-model defaults (GD `configs/base.yaml`; GD paper, Appendix A).
OPACITY_SHIFT = -2.1792  # σ(−2.1792) ≈ 0.1016
FINE_LOG_SCALE_SHIFT = math.log(0.03125 / 48)  # ln(0.5·voxel/24), voxel = 2/64: −7.3369


def positional_encoding(x: Float[Tensor, "N 3"], frequencies: Tensor) -> Float[Tensor, "N F"]:
    """[sin(f_k·x_a)]_{k,a} then [cos(f_k·x_a)]_{k,a}, index k·3 + a (no π), 6·K dims."""
    arg = (x[:, None, :] * frequencies.to(x.dtype)[None, :, None]).flatten(1)
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


def _repeat_rows(x: Tensor, r: int) -> Tensor:
    """Each row repeated r times in place (rows i·r … i·r + r − 1); the backward is a plain sum over r."""
    return x.unsqueeze(1).expand(x.shape[0], r, *x.shape[1:]).reshape(x.shape[0] * r, *x.shape[1:])


class Upsample(nn.Module):
    """UP: R = `factor` children per point with bounded offsets and offset-conditioned features.

    Parameter names and shapes follow the released `UpscaleModule` (delta_x.{0,2}, skip, delta_f.{1,3},
    frequencies buffer)."""

    def __init__(self, in_channels: int, out_channels: int, factor: int, n_frequencies: int = 15,
                 offset_scale: float = 0.5, drop_path: float = 0.0, global_dim: int | None = None) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError(f"up-sampling factor must be >= 1, got {factor}")
        self.in_channels, self.out_channels, self.factor = in_channels, out_channels, int(factor)
        self.offset_scale = float(offset_scale)
        self.register_buffer("frequencies", 2.0 ** torch.arange(n_frequencies, dtype=torch.float32))
        pe_dim = 6 * n_frequencies
        self.in_norm = GlobalAdaptiveLayerNorm(in_channels, global_dim)
        self.delta_x = nn.Sequential(nn.Linear(in_channels, in_channels), nn.GELU(),
                                     nn.Linear(in_channels, 3 * self.factor))
        self.skip = nn.Linear(in_channels, out_channels)
        self.delta_f = nn.ModuleList([GlobalAdaptiveLayerNorm(in_channels + pe_dim, global_dim),
                                      nn.Linear(in_channels + pe_dim, in_channels), nn.GELU(),
                                      nn.Linear(in_channels, out_channels)])
        self.out_norm = GlobalAdaptiveLayerNorm(out_channels, global_dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, coord: Tensor, feat: Tensor, batch: Tensor, grid_size: float,
                global_feat: Tensor | None = None, generator: torch.Generator | None = None,
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Returns (child coords, child features, child batch, parent index, Δx); children of point i are rows
        i·R … i·R + R − 1."""
        n, r = feat.shape[0], self.factor
        f = self.in_norm(feat, batch, global_feat)
        parent = torch.arange(n, device=feat.device).repeat_interleave(r)
        dx = (self.offset_scale * grid_size) * torch.tanh(self.delta_x(f).reshape(n * r, 3))
        b_rep = _repeat_rows(batch, r)
        pe = positional_encoding(dx, self.frequencies).to(f.dtype)
        _, _, act, lin2 = self.delta_f
        df = lin2(act(self._delta_f_hidden(pe, f, batch, b_rep, global_feat)))
        # skip(f_rep) = repeat(skip(f)): the Linear runs on the parents, not on the R× more children
        out = _repeat_rows(self.skip(f), r) + self.drop_path(df, generator)
        out = self.out_norm(out, b_rep, global_feat)
        return _repeat_rows(coord, r) + dx.to(coord.dtype), out, b_rep, parent, dx

    def _delta_f_hidden(self, pe: Tensor, f: Tensor, batch: Tensor, b_rep: Tensor,
                        global_feat: Tensor | None) -> Tensor:
        """Linear₁(N([PE, f_rep])) without building the (N·R, C_in + 6K) concatenation.

        With N = LayerNorm (optionally scaled by s per object) and W = [W_pe | W_f]:
        Linear₁(N(h)) = (W_pe·(s_pe ⊙ PE) + repeat(W_f·(s_f ⊙ f)) − μ·(W·s)) / σ + b, where μ, σ² are
        the mean and (biased) variance of h = [PE, f_rep] per row, assembled from per-part sums. The W_f product
        runs on the parents only. Equal to the direct formula up to rounding (tested)."""
        norm, lin1 = self.delta_f[0], self.delta_f[1]
        r, d = self.factor, pe.shape[1] + f.shape[1]
        k = pe.shape[1]
        w = lin1.weight.to(f.dtype)
        w_pe, w_f = w[:, :k], w[:, k:]
        s = norm.scale(global_feat, f.dtype)  # (B, D) or None
        f32 = f.float() if f.dtype in (torch.float16, torch.bfloat16) else f
        pe32 = pe.float() if pe.dtype in (torch.float16, torch.bfloat16) else pe
        total = pe32.sum(1) + _repeat_rows(f32.sum(1), r)
        total_sq = pe32.square().sum(1) + _repeat_rows(f32.square().sum(1), r)
        mu = total / d
        rstd = torch.rsqrt((total_sq / d - mu.square()).clamp_min(0) + norm.eps)
        if s is None:
            a = pe @ w_pe.T + _repeat_rows(f @ w_f.T, r)
            ws = w.sum(1)[None, :]  # W·1
            centred = a - mu.to(a.dtype)[:, None] * ws
        else:
            s_row = s if s.shape[0] == 1 else take(s, batch)
            a_f = (f * s_row[:, k:]) @ w_f.T
            s_child = s if s.shape[0] == 1 else take(s, b_rep)
            a = (pe * s_child[:, :k]) @ w_pe.T + _repeat_rows(a_f, r)
            ws = s @ w.T  # (B, C_hidden): W·s per object
            ws = ws if ws.shape[0] == 1 else take(ws, b_rep)
            centred = a - mu.to(a.dtype)[:, None] * ws
        out = centred * rstd.to(a.dtype)[:, None]
        return out + lin1.bias.to(out.dtype) if lin1.bias is not None else out


class LearnableMask(nn.Module):
    """SPLIT: per-point probability p, deterministic per-object top-ratio, straight-through estimator.

    - ``activation="sigmoid"`` (the paper; the released "Ours"): p = σ(MLP(f)); STE f' = f + (f·p − sg(f·p)),
      so the forward value is exactly f and ∂L/∂f = p·∂L/∂f', ∂L/∂p = Σ_c f_c·∂L/∂f'_c.
    - ``activation="softmax"`` (the released residual model): p = softmax over the object's points of
      MLP(f)/T; STE f' = sg(f·1[kept]) + (f·p − sg(f·p)), so leaves' features are zero in the forward pass.

    Ties in p are broken by the lower point index."""

    def __init__(self, channels: int, keep_ratio: float, activation: str = "sigmoid",
                 temperature: float = 1.0) -> None:
        super().__init__()
        if activation not in ("sigmoid", "softmax"):
            raise ValueError(f"mask activation must be 'sigmoid' or 'softmax', got {activation!r}")
        if not 0.0 <= keep_ratio <= 1.0:
            raise ValueError(f"keep ratio must be in [0, 1], got {keep_ratio}")
        self.keep_ratio, self.activation, self.temperature = float(keep_ratio), activation, float(temperature)
        self.net = nn.Sequential(nn.Linear(channels, channels), nn.GELU(), nn.Linear(channels, 1))

    def probabilities(self, feat: Tensor, batch: Tensor, num_objects: int) -> Tensor:
        logit = self.net(feat).squeeze(-1)
        if self.activation == "sigmoid":
            return torch.sigmoid(logit)
        return segment_softmax(logit, batch, num_objects, self.temperature).to(feat.dtype)

    def forward(self, feat: Tensor, batch: Tensor, num_objects: int) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (features through the STE, keep mask (True = continues to the next layer), p)."""
        p = self.probabilities(feat, batch, num_objects)
        keep = top_ratio_mask(p, batch, num_objects, self.keep_ratio)
        fp = feat * p[:, None]
        base = feat.detach() if self.activation == "sigmoid" else (feat * keep[:, None].to(feat.dtype)).detach()
        return base + (fp - fp.detach()), keep, p


class GaussianHead(nn.Module):
    """HEAD: MLP(C → C → 3·(d+1)² + 1 + 3 + 4) giving raw [SH | opacity | log-scale | quaternion]."""

    def __init__(self, channels: int, sh_degree: int = 1) -> None:
        super().__init__()
        self.sh_degree = int(sh_degree)
        self.num_outputs = 3 * (self.sh_degree + 1) ** 2 + 8
        self.feat2attr = nn.Sequential(nn.Linear(channels, channels), nn.GELU(),
                                       nn.Linear(channels, self.num_outputs))

    def forward(self, feat: Tensor) -> Tensor:
        return self.feat2attr(feat)


def attributes_to_gaussians(means: Tensor, attributes: Tensor, sh_degree: int,
                            opacity_shift: float = OPACITY_SHIFT,
                            log_scale_shift: float = FINE_LOG_SCALE_SHIFT) -> Gaussians:
    """Raw head outputs → `Gaussians` (float32 or the means' dtype): SH viewed as (N, (d+1)², 3),
    opacity logit = raw + shift, log-scale = raw + shift, raw wxyz quaternion."""
    k = (sh_degree + 1) ** 2
    if attributes.shape[-1] != 3 * k + 8:
        raise ValueError(f"expected {3 * k + 8} attributes for SH degree {sh_degree}, got {attributes.shape[-1]}")
    a = attributes.to(means.dtype)
    n = a.shape[0]
    sh = a[:, : 3 * k].reshape(n, k, 3)
    return Gaussians(means=means, quats=a[:, 3 * k + 4: 3 * k + 8], log_scales=a[:, 3 * k + 1: 3 * k + 4] +
                     log_scale_shift, opacity_logits=a[:, 3 * k] + opacity_shift, sh=sh)


def split_opacity_logits(logits: Float[Tensor, " N"], copies: Tensor) -> Float[Tensor, " N"]:
    """Opacity logit of one of n coincident copies that together are as opaque as the original:
    1 − (1 − σ(out))^n = σ(logits), i.e. −log(1 − σ(out)) = softplus(logits)/n. `copies` (N,) ≥ 1."""
    x = torch.nn.functional.softplus(logits) / copies.to(logits.dtype)
    return torch.log((-torch.expm1(-x)).clamp_min(torch.finfo(logits.dtype).tiny)) + x

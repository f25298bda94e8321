"""The 8-D per-view token GD conditions on, and the scene model's cross-attention over those tokens.

For a point and an input view: [input RGB (3), coarse-render RGB (3), coarse alpha (1), |coarse depth − the
point's camera z| (1)], sampled bilinearly at the point's projection (`grid_sample`, align_corners=False, pixel
centres at +0.5). The rendered depth is Σ w·z (not divided by alpha). Two padding rules, both from the releases:
- ``"zeros"`` (LaRa / GD object): outside the image, and for points at or behind the camera (z ≤ 1e-6), every
  sample is zero;
- ``"border"`` (GD scene): samples clamp to the image border; a point behind the camera is projected at z = 1e-6.
`pixel_shift` is added to the projected pixel coordinates before sampling (LaRa's official +0.5 px quirk).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

VIEW_TOKEN_DIM = 8  # input RGB 3 + coarse-render RGB 3 + alpha 1 + |rendered depth − z| 1


def project_points(
    points: Float[Tensor, "*batch n 3"], world_to_camera: Float[Tensor, "*batch 4 4"],
    intrinsics: Float[Tensor, "*batch 3 3"], min_depth: float | None = None,
) -> tuple[Float[Tensor, "*batch n 2"], Float[Tensor, "*batch n"]]:
    """Pixel coordinates (u, v) and camera depth z of world points, for each camera of the batch; with
    `min_depth`, (u, v) are computed at max(z, min_depth)."""
    cam = points @ world_to_camera[..., :3, :3].transpose(-1, -2) + world_to_camera[..., None, :3, 3]
    pix = cam @ intrinsics.transpose(-1, -2)
    z = pix[..., 2]
    divisor = z if min_depth is None else z.clamp_min(min_depth)
    return pix[..., :2] / divisor[..., None], cam[..., 2]


def grid_coordinates(uv: Float[Tensor, "*batch 2"], z: Float[Tensor, "*batch"], width: int, height: int,
                     pixel_shift: float = 0.0, behind_outside: bool = True) -> Float[Tensor, "*batch 2"]:
    """`grid_sample` coordinates (align_corners=False) of pixel positions `uv` (+ `pixel_shift`); with
    `behind_outside`, points at or behind the camera (z ≤ 1e-6) are sent outside the image."""
    grid = (uv + pixel_shift) / uv.new_tensor([width, height]) * 2 - 1
    if behind_outside:
        grid = torch.where((z > 1e-6)[..., None], grid, torch.full_like(grid, 2.0))
    return grid


def token_maps(images: Float[Tensor, "v h w 3"], rgb: Float[Tensor, "v h w 3"], alpha: Float[Tensor, "v h w 1"],
               depth: Float[Tensor, "v h w 1"]) -> Float[Tensor, "v 8 h w"]:
    """The per-view maps the tokens are sampled from (channels first, float32)."""
    return torch.cat([images.float(), rgb.float(), alpha.float(), depth.float()], dim=-1).permute(0, 3, 1, 2)


def sample_view_tokens(
    points: Float[Tensor, "s 3"], world_to_camera: Float[Tensor, "v 4 4"], intrinsics: Float[Tensor, "v 3 3"],
    maps: Float[Tensor, "v 8 h w"], pixel_shift: float = 0.0, padding: Literal["zeros", "border"] = "zeros",
) -> Float[Tensor, "s v 8"]:
    """The token of every point in every view (module docstring); camera geometry in float32."""
    v, _, h, w = maps.shape
    with torch.autocast(points.device.type, enabled=False):
        uv, z = project_points(points.float()[None], world_to_camera.float(), intrinsics.float(),
                               min_depth=1e-6 if padding == "border" else None)
        grid = grid_coordinates(uv, z, w, h, pixel_shift, behind_outside=padding == "zeros")
    s = F.grid_sample(maps, grid[:, None], mode="bilinear", padding_mode=padding, align_corners=False)[:, :, 0]
    s = torch.cat([s[:, :7], (s[:, 7:] - z[:, None]).abs()], dim=1)  # (V, 8, S)
    return s.permute(2, 0, 1)


@dataclass
class ConditioningConfig:
    """Widths of the view conditioning; the densifier's input has 2·`width` channels."""

    width: int = 160
    heads: int = 16

    def __post_init__(self) -> None:
        if self.width <= 0 or self.heads <= 0 or self.width % self.heads:
            raise ValueError(f"ConditioningConfig needs positive width divisible by heads, got width={self.width}, "
                             f"heads={self.heads}")


def _xavier_mlp(in_dim: int, width: int) -> nn.Sequential:
    """Linear → ReLU → Linear, Xavier-uniform weights and zero biases (as the release initialises them)."""
    mlp = nn.Sequential(nn.Linear(in_dim, width), nn.ReLU(), nn.Linear(width, width))
    for layer in (mlp[0], mlp[2]):
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)
    return mlp


class ViewConditioning(nn.Module):
    """features (S, F) and per-view tokens (S, V, 8) → densifier input (S, 2·width) = [MLP(features) ‖
    MLP(cross-attention(LayerNorm(MLP(features)), tokens))] (the GD scene model's conditioning)."""

    def __init__(self, feature_dim: int, width: int, heads: int) -> None:
        super().__init__()
        self.project = _xavier_mlp(feature_dim, width)
        self.norm = nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, bias=False, kdim=VIEW_TOKEN_DIM, vdim=VIEW_TOKEN_DIM,
                                               batch_first=True)
        self.mlp = _xavier_mlp(width, width)

    def forward(self, features: Float[Tensor, "S F"], tokens: Float[Tensor, "S V 8"]) -> Float[Tensor, "S D"]:
        projected = self.project(features)
        query = self.norm(projected)[:, None]
        attended = self.attention(query, tokens, tokens, need_weights=False)[0][:, 0]
        return torch.cat([projected, self.mlp(attended)], dim=-1)

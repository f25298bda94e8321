"""`DensifierConfig`: every shape and switch of the Generative Densification module.

Defaults follow the paper; the released code's behaviour is available through switches:

- ``norm``: ``"adaptive"`` (paper: global adaptive normalization, the per-object pooled input feature scales
  every LayerNorm) | ``"layernorm"`` (released: plain no-affine LayerNorm; the pooled feature is unused).
- ``head_before_split``: ``False`` (paper, and the released "Ours": UP → SPLIT → HEAD, the head runs on the
  leaves) | ``True`` (the released residual model's UP → HEAD → SPLIT, head on every point).
- ``residual_attributes``: ``False`` | ``True`` (released "Ours (w/ residual)" and the scene model: children add
  their head output to the parent's attributes).
- ``mask``: ``"sigmoid"`` (paper) | ``"softmax"`` over the object's points (released residual model).
- ``shuffle_orders_eval``: ``False`` (evaluation is deterministic) | ``True`` (the released code shuffles the
  curves at test time too).
- ``serialization_ties``: ``"stable"`` (points sharing a cell keep their input order along every curve) |
  ``"released"`` (the released code's unstable ``torch.argsort`` of the stacked curve codes; see
  `serialization`).
- ``cpe_duplicates``: how the sparse-conv CPE treats several points in one cell: ``"mean"`` (one output per cell
  from the mean feature) | ``"spconv_cpu"`` (the rule of spconv 2.3.8's CPU build that the released code runs on
  CPU; see `point_transformer`).

Presets: ``paper_object`` (the released object decoder: 160/256 channels, 2 blocks per layer, factors [2, 4],
keep ratio 0.8; 12,000 points → 4,800 + 76,800 = 81,600 fine Gaussians; 7,946,555 parameters with
``norm="layernorm"``), ``paper_scene`` (the released scene decoder: 320/256/128 channels, factors [2, 2, 2], keep
ratios 0.5/0.8/1.0, residual attributes, softmax mask, SH degree 4, offsets 0.1·grid, grid 0.01) and ``tiny``
(for tests and 2-core training).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import Presets
from .point_transformer import DUPLICATE_RULES
from .serialization import ORDERS, TIES

@dataclass
class DensifierConfig(Presets):
    in_channels: int = 160  # feature size of the selected Gaussians
    channels: tuple[int, ...] = (160, 256)  # block width of every layer
    num_blocks: tuple[int, ...] = (2, 2)
    up_factors: tuple[int, ...] = (2, 4)  # R per layer
    keep_ratios: tuple[float, ...] = (0.8, 1.0)  # fraction of each object's points that continue; last must be 1
    grid_size: float = 1.0 / 64  # serialization / sparse-conv cell of layer 0, halved every layer
    head_dim: int = 8  # attention heads = channels / head_dim
    patch_size: int = 48
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path: float = 0.3  # linearly decayed to 0 over all blocks; UP uses its layer's last block rate
    upsample_drop_path: bool = True
    n_frequencies: int = 15
    offset_scale: float = 0.5  # Δx = offset_scale · grid · tanh(·)
    norm: Literal["adaptive", "layernorm"] = "adaptive"  # paper | released
    mask: Literal["sigmoid", "softmax"] = "sigmoid"
    mask_temperature: float = 1.0
    head_before_split: bool = False
    residual_attributes: bool = False
    coord_scale: float = 1.0  # released residual object model works on 2× coordinates (PE sees 2·Δx)
    sh_degree: int = 1
    opacity_shift: float = -2.1792
    log_scale_shift: float = math.log(0.03125 / 48)
    orders: tuple[str, ...] = field(default_factory=lambda: tuple(ORDERS))
    shuffle_orders: bool = True  # in training, with the forward's generator
    shuffle_orders_eval: bool = False
    serialization_ties: Literal["stable", "released"] = "stable"
    cpe_duplicates: Literal["mean", "spconv_cpu"] = "mean"
    row_chunk: int = 0  # UP and HEAD in blocks of about this many output rows (0: all at once); same result

    def __post_init__(self) -> None:
        for name in ("channels", "num_blocks", "up_factors", "keep_ratios", "orders"):
            setattr(self, name, tuple(getattr(self, name)))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> "DensifierConfig":
        n = len(self.channels)
        if n == 0:
            raise ValueError("DensifierConfig needs at least one layer")
        for name in ("num_blocks", "up_factors", "keep_ratios"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"DensifierConfig.{name} has {len(getattr(self, name))} entries for {n} layers")
        for c in (self.in_channels, *self.channels):
            if c <= 0:
                raise ValueError(f"channel counts must be positive, got {c}")
        for c in self.channels:
            if c % self.head_dim:
                raise ValueError(f"channels {c} not divisible by head_dim {self.head_dim}")
        if any(r < 1 for r in self.up_factors):
            raise ValueError(f"up_factors must be >= 1, got {self.up_factors}")
        if any(b < 0 for b in self.num_blocks):
            raise ValueError(f"num_blocks must be >= 0, got {self.num_blocks}")
        if any(not 0.0 < k <= 1.0 for k in self.keep_ratios):
            raise ValueError(f"keep_ratios must be in (0, 1], got {self.keep_ratios}")
        if self.keep_ratios[-1] != 1.0:
            raise ValueError("the last layer's keep ratio must be 1.0 (every remaining point becomes a leaf)")
        if not self.grid_size > 0 or not self.coord_scale > 0:
            raise ValueError("grid_size and coord_scale must be positive")
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path}")
        if self.norm not in ("adaptive", "layernorm"):
            raise ValueError(f"norm must be 'adaptive' or 'layernorm', got {self.norm!r}")
        if self.mask not in ("sigmoid", "softmax"):
            raise ValueError(f"mask must be 'sigmoid' or 'softmax', got {self.mask!r}")
        if self.residual_attributes and not self.head_before_split:
            raise ValueError("residual_attributes needs head_before_split=True (UP → HEAD → SPLIT)")
        if not 0 <= self.sh_degree <= 4:
            raise ValueError(f"sh_degree must be in [0, 4], got {self.sh_degree}")
        if self.serialization_ties not in TIES:
            raise ValueError(f"serialization_ties must be one of {TIES}, got {self.serialization_ties!r}")
        if self.cpe_duplicates not in DUPLICATE_RULES:
            raise ValueError(f"cpe_duplicates must be one of {DUPLICATE_RULES}, got {self.cpe_duplicates!r}")
        bad = [o for o in self.orders if o not in ORDERS]
        if bad or not self.orders:
            raise ValueError(f"orders must be a non-empty subset of {ORDERS}, got {self.orders}")
        return self

    # ------------------------------------------------------------------ derived
    @property
    def num_layers(self) -> int:
        return len(self.channels)

    @property
    def num_attributes(self) -> int:
        return 3 * (self.sh_degree + 1) ** 2 + 8

    def out_channels(self, layer: int) -> int:
        """Width after UP of `layer` (the next layer's width; the last layer keeps its own)."""
        return self.channels[layer + 1] if layer + 1 < self.num_layers else self.channels[layer]

    def drop_path_rates(self) -> list[list[float]]:
        total = sum(self.num_blocks)
        # torch.linspace(drop_path, 0, total): [0.3, 0.2, 0.1, 0.0] for the object decoder
        if total > 1:
            rates = [self.drop_path * (1 - i / (total - 1)) for i in range(total)]
        else:
            rates = [self.drop_path] * total
        out, i = [], 0
        for nb in self.num_blocks:
            out.append(rates[i: i + nb])
            i += nb
        return out

    def fine_count(self, n: int) -> int:
        """Fine Gaussians made from n selected points of one object."""
        total = 0
        for r, keep in zip(self.up_factors, self.keep_ratios):
            n = n * r
            kept = min(math.ceil(n * keep - 1e-6), n)
            total += n - kept if keep < 1.0 else n
            n = kept if keep < 1.0 else 0
        return total

    # ------------------------------------------------------------------ presets
    PRESETS = {
        "paper_object": {},  # the released object decoder (160/256 channels, factors 2/4, keep 0.8)
        "paper_scene": dict(in_channels=320, channels=(320, 256, 128), num_blocks=(2, 2, 2), up_factors=(2, 2, 2),
                            keep_ratios=(0.5, 0.8, 1.0), grid_size=0.01, offset_scale=0.1, mask="softmax",
                            head_before_split=True, residual_attributes=True, sh_degree=4, opacity_shift=0.0,
                            log_scale_shift=math.log(0.01 / 8)),
        "tiny": dict(in_channels=32, channels=(32, 32), num_blocks=(1, 1), up_factors=(2, 4), keep_ratios=(0.8, 1.0),
                     grid_size=1.0 / 32, patch_size=16, mlp_ratio=2.0, drop_path=0.1),
    }

    def replace(self, **changes: Any) -> "DensifierConfig":
        return dataclasses.replace(self, **changes)


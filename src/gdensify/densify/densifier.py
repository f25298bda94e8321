"""`GenerativeDensifier`: L densification layers over the selected coarse Gaussians, and the merge with the
non-selected ones.

Per layer l (grid g_l = grid_size / 2^l):

1. serialize the points (per-object anchor, curve orders shuffled in training with the forward's generator);
2. the layer's point-transformer blocks (sparse-conv CPE, serialized patch attention, MLP; adaptive norms);
3. UP: R_l children per point;
4. SPLIT (not in the last layer): per-object top keep_ratio_l by the learnable mask continue, the rest are leaves;
5. HEAD on the leaves (or, with ``head_before_split``, on every point before SPLIT, residually accumulated with
   ``residual_attributes``).

The fine set is the union of every layer's leaves; `merge_with_coarse` adds the non-selected coarse Gaussians
(final set = non-selected coarse ∪ every layer's leaves).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from ..gaussians import Gaussians
from ._ops import counts_of, segment_mean, take
from .config import DensifierConfig
from .layers import GaussianHead, LearnableMask, Upsample, attributes_to_gaussians
from .point_transformer import Block, PointBatch


@dataclass
class LayerStats:
    """Per-object counts (int64, (B,)) of one layer and its mask probabilities."""

    points_in: Tensor
    points_up: Tensor
    leaves: Tensor
    passed: Tensor
    mask_probs: Tensor | None = None  # (points_up,) p of every up-sampled point, None in the last layer
    keep: Tensor | None = None  # (points_up,) True = continued to the next layer


@dataclass
class DensifierResult:
    """Fine Gaussians of all leaves of all layers, grouped by object, then layer, then creation order."""

    gaussians: Gaussians
    batch: Tensor  # (M,) object of every fine Gaussian
    layer: Tensor  # (M,) layer that finalised it
    parent: Tensor  # (M,) index of the selected input point it descends from
    attributes: Tensor  # (M, A) raw head outputs (residually summed with ``residual_attributes``)
    num_objects: int
    layers: list[LayerStats] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.gaussians)

    @property
    def counts(self) -> Tensor:
        """Fine Gaussians per object."""
        return counts_of(self.batch, self.num_objects)

    @property
    def mask_probs(self) -> list[Tensor]:
        return [s.mask_probs for s in self.layers if s.mask_probs is not None]

    def layer_counts(self) -> list[dict[str, int]]:
        """Totals over the batch per layer: points in, after UP, leaves, passed on."""
        return [{k: int(getattr(s, k).sum()) for k in ("points_in", "points_up", "leaves", "passed")}
                for s in self.layers]


class DensifierLayer(nn.Module):
    def __init__(self, cfg: DensifierConfig, index: int, drop_rates: list[float]) -> None:
        super().__init__()
        c, c_out = cfg.channels[index], cfg.out_channels(index)
        global_dim = cfg.in_channels if cfg.norm == "adaptive" else None
        self.blocks = nn.ModuleList([
            Block(c, c // cfg.head_dim, cfg.patch_size, cfg.mlp_ratio, rate, global_dim, cfg.qkv_bias)
            for rate in drop_rates])
        up_drop = (drop_rates[-1] if drop_rates else 0.0) if cfg.upsample_drop_path else 0.0
        self.up = Upsample(c, c_out, cfg.up_factors[index], cfg.n_frequencies, cfg.offset_scale, up_drop, global_dim)
        last = index == cfg.num_layers - 1
        self.mask = None if last else LearnableMask(c_out, cfg.keep_ratios[index], cfg.mask, cfg.mask_temperature)
        self.head = GaussianHead(c_out, cfg.sh_degree)


class GenerativeDensifier(nn.Module):
    """forward(coords (N, 3), features (N, C), batch (N,) long) → `DensifierResult`."""

    def __init__(self, config: DensifierConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = (config or DensifierConfig()).validate()
        self.embed = nn.Linear(cfg.in_channels, cfg.channels[0]) if cfg.in_channels != cfg.channels[0] else None
        rates = cfg.drop_path_rates()
        self.layers = nn.ModuleList([DensifierLayer(cfg, i, rates[i]) for i in range(cfg.num_layers)])

    # ------------------------------------------------------------------ checks
    def _check_inputs(self, coords: Tensor, features: Tensor, batch: Tensor, num_objects: int | None) -> int:
        cfg = self.config
        if not isinstance(coords, Tensor) or coords.ndim != 2 or coords.shape[1] != 3:
            raise ValueError(f"coords must have shape (N, 3), got {tuple(getattr(coords, 'shape', ()))}")
        if not coords.is_floating_point():
            raise ValueError(f"coords must be floating point, got {coords.dtype}")
        n = coords.shape[0]
        if features.ndim != 2 or features.shape[0] != n or features.shape[1] != cfg.in_channels:
            raise ValueError(f"features must have shape ({n}, {cfg.in_channels}), got {tuple(features.shape)}")
        if not isinstance(batch, Tensor) or batch.ndim != 1 or batch.shape[0] != n:
            raise ValueError(f"batch must have shape ({n},), got {tuple(batch.shape)}")
        if batch.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"batch must be an integer (long) tensor, got {batch.dtype}")
        if len({coords.device, features.device, batch.device}) != 1:
            raise ValueError(f"coords, features and batch must share one device, got {coords.device}, "
                             f"{features.device}, {batch.device}")
        if n == 0:
            raise ValueError("empty selection: the densifier needs at least one selected point")
        if not torch.isfinite(coords).all():
            raise ValueError("coords contain NaN or Inf")
        if not torch.isfinite(features).all():
            raise ValueError("features contain NaN or Inf")
        if int(batch.min()) < 0:
            raise ValueError("batch indices must be non-negative")
        b = int(batch.max()) + 1
        if num_objects is None:
            return b
        if num_objects < b:
            raise ValueError(f"num_objects={num_objects} but batch holds index {b - 1}")
        return int(num_objects)

    def _check_initial_attributes(self, attributes: Tensor, n: int) -> None:
        cfg = self.config
        if not (cfg.residual_attributes and cfg.head_before_split):
            raise ValueError("initial_attributes need a densifier with residual_attributes=True and "
                             "head_before_split=True (the attributes are summed down the layers)")
        width = 3 * (cfg.sh_degree + 1) ** 2 + 8
        if not isinstance(attributes, Tensor) or attributes.shape != (n, width):
            raise ValueError(f"initial_attributes must have shape ({n}, {width}) for SH degree {cfg.sh_degree}, "
                             f"got {tuple(getattr(attributes, 'shape', ()))}")
        if not torch.isfinite(attributes).all():
            raise ValueError("initial_attributes contain NaN or Inf")

    # ------------------------------------------------------------------ forward
    def forward(self, coords: Float[Tensor, "N 3"], features: Float[Tensor, "N C"], batch: Int[Tensor, " N"],
                num_objects: int | None = None, generator: torch.Generator | None = None,
                initial_attributes: Float[Tensor, "N A"] | None = None) -> DensifierResult:
        """Densify N selected points of B objects. `generator` drives the curve shuffle and drop-path in training;
        in evaluation mode the output is deterministic (no shuffle unless ``shuffle_orders_eval``).

        `initial_attributes` (raw, in the HEAD's layout) start the residual sum, so that every leaf's attributes
        are its selected ancestor's plus the heads' corrections; it needs ``residual_attributes`` and
        ``head_before_split``. Without it the sum starts at zero."""
        cfg = self.config
        B = self._check_inputs(coords, features, batch, num_objects)
        if initial_attributes is not None:
            self._check_initial_attributes(initial_attributes, coords.shape[0])
        batch = batch.long()
        global_feat = segment_mean(features, batch, B) if cfg.norm == "adaptive" else None
        point = PointBatch(coords * cfg.coord_scale, features if self.embed is None else self.embed(features), batch,
                           B, cfg.grid_size * cfg.coord_scale, global_feat, cfg.cpe_duplicates,
                           cfg.serialization_ties, origin=torch.arange(coords.shape[0], device=coords.device),
                           attr=initial_attributes)
        shuffle = cfg.shuffle_orders and (self.training or cfg.shuffle_orders_eval)
        leaves, stats = [], []
        for index, layer in enumerate(self.layers):
            if len(point) == 0:
                break
            points_in = point.counts
            point.serialize(cfg.orders, shuffle=shuffle, generator=generator)
            for i, block in enumerate(layer.blocks):
                point = block(point, i, generator)
            coord, feat, batch, parent = _chunked_up(layer.up, point.coord, point.feat, point.batch, point.grid_size,
                                                     global_feat, generator, cfg.row_chunk)
            point = point.select(parent, coord=coord, feat=feat, batch=batch)  # the children, with their payload
            if cfg.head_before_split:
                a = _chunked_rows(layer.head, point.feat, cfg.row_chunk)
                point.attr = point.attr + a if (point.attr is not None and cfg.residual_attributes) else a
            points_up = point.counts
            probs = None
            if layer.mask is None:
                keep = torch.zeros(len(point), dtype=torch.bool, device=point.coord.device)
            else:
                point.feat, keep, probs = layer.mask(point.feat, point.batch, B)
            leaf = point.select(torch.nonzero(~keep, as_tuple=False).flatten())
            if not cfg.head_before_split:
                leaf.attr = _chunked_rows(layer.head, leaf.feat, cfg.row_chunk)
            leaves.append((leaf, index))
            point = point.select(torch.nonzero(keep, as_tuple=False).flatten(), grid_size=point.grid_size / 2)
            stats.append(LayerStats(points_in, points_up, leaf.counts, point.counts,
                                    None if probs is None else probs.detach(), None if probs is None else keep))

        all_batch = torch.cat([leaf.batch for leaf, _ in leaves])
        order = torch.argsort(all_batch, stable=True)  # object, then layer, then creation order
        means = take(torch.cat([leaf.coord for leaf, _ in leaves]) / cfg.coord_scale, order)
        attributes = take(torch.cat([leaf.attr for leaf, _ in leaves]), order)
        layers = torch.cat([torch.full((len(leaf),), i, dtype=torch.long, device=means.device) for leaf, i in leaves])
        gaussians = attributes_to_gaussians(means, attributes, cfg.sh_degree, cfg.opacity_shift,
                                            cfg.log_scale_shift)
        return DensifierResult(gaussians, take(all_batch, order), take(layers, order),
                               take(torch.cat([leaf.origin for leaf, _ in leaves]), order), attributes, B, stats)

    def zero_init_heads(self) -> None:
        """Zero the last linear layer of every HEAD: the heads' corrections start at exactly zero (used with
        `initial_attributes`, so that every leaf starts as a copy of its ancestor)."""
        for layer in self.layers:
            nn.init.zeros_(layer.head.feat2attr[-1].weight)
            nn.init.zeros_(layer.head.feat2attr[-1].bias)

    def extra_repr(self) -> str:
        c = self.config
        return (f"channels={c.channels}, up_factors={c.up_factors}, keep_ratios={c.keep_ratios}, norm={c.norm}, "
                f"mask={c.mask}, residual={c.residual_attributes}")


def _chunked_rows(fn, x: Tensor, chunk: int) -> Tensor:
    """fn applied to row blocks of x (fn must act on every row independently)."""
    if chunk <= 0 or x.shape[0] <= chunk:
        return fn(x)
    return torch.cat([fn(x[a: a + chunk]) for a in range(0, x.shape[0], chunk)])


def _chunked_up(up: Upsample, coord: Tensor, feat: Tensor, batch: Tensor, grid: float,
                global_feat: Tensor | None, generator: torch.Generator | None, chunk: int):
    """UP over blocks of parents making about `chunk` children each: the same result (UP is per parent), with
    small intermediate tensors. Returns (coords, features, batch, parent index)."""
    n, r = feat.shape[0], up.factor
    step = max(1, chunk // r) if chunk > 0 else n
    if n <= step:
        c, f, b, parent, _ = up(coord, feat, batch, grid, global_feat, generator)
        return c, f, b, parent
    parts = [up(coord[a: a + step], feat[a: a + step], batch[a: a + step], grid, global_feat, generator)
             for a in range(0, n, step)]
    parent = torch.cat([p[3] + a for p, a in zip(parts, range(0, n, step))])
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts]), \
        parent


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------- merge
def merge_with_coarse(coarse: Gaussians, coarse_batch: Tensor, selected: Tensor, result: DensifierResult,
                      keep: Tensor | None = None, num_objects: int | None = None) -> tuple[Gaussians, Tensor]:
    """Final set per object = every layer's leaves ∪ the non-selected coarse Gaussians.

    `selected` is the index (or boolean mask) of the coarse Gaussians that went into the densifier; `keep` (bool,
    optional) restricts which non-selected coarse Gaussians are retained (e.g. the released code drops
    Gaussians with opacity ≤ 0.005). Per object the fine Gaussians come first, then the coarse ones, as in the
    released code. Returns (Gaussians, batch index per Gaussian)."""
    n = len(coarse)
    if coarse_batch.shape != (n,):
        raise ValueError(f"coarse_batch must have shape ({n},), got {tuple(coarse_batch.shape)}")
    is_selected = torch.zeros(n, dtype=torch.bool, device=coarse.device)
    if selected.dtype == torch.bool:
        if selected.shape != (n,):
            raise ValueError(f"boolean `selected` must have shape ({n},)")
        is_selected = selected
    else:
        is_selected[selected.long()] = True
    retained = ~is_selected if keep is None else (~is_selected & keep)
    rest = coarse[retained]
    fine = result.gaussians.to(dtype=coarse.dtype)
    merged = Gaussians.cat([fine, rest])
    batch = torch.cat([result.batch.to(coarse_batch.device), coarse_batch[retained].long()])
    order = torch.argsort(batch, stable=True)
    return merged[order], batch[order]

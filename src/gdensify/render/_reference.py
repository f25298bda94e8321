"""Pure-PyTorch tile compositing: the readable reference backend and the test oracle.

`composite_reference` alpha-composites projected Gaussians exactly as the render contract prescribes (16×16 tiles,
depth order within a tile, skip α < 1/255, α clamped at 0.99, per-pixel stop when T would drop below 1e-4), with
the tile-rectangle and α-clamp-gradient choices of `RasterRules`.

Memory stays bounded: the forward runs under no_grad over chunks of tiles × chunks of depth-sorted Gaussians and
keeps only the per-pixel transmittance entering each chunk; the backward recomputes one chunk at a time with
autograd (a hand-written checkpoint), going back to front over the depth chunks of a tile group. The per-(pixel,
Gaussian) gradient of the 2D mean is available there, which gives AbsGS's absgrad: Σ_pixels |∂L_pixel/∂mean2d|
(x and y separately), attached as `.absgrad` to the very `means2d` tensor passed in (as gsplat does).

Clarity first; speed is secondary (the `cpu` backend is the fast path): 10k Gaussians at 128² take about 1 s
forward+backward on 2 cores, 50k at 256² about 8 s; peak memory stays near 0.6 GB (most of it `import torch`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.autograd.function import once_differentiable

from .projection import TILE_SIZE, check_composite_inputs, tile_rect
from .rules import DEFAULT_RULES, RasterRules

ALPHA_MIN = 1.0 / 255.0  # α below this: the pair is skipped
ALPHA_MAX = 0.99  # α is clamped here (zero derivative where the clamp is active, unless rules.alpha_clamp_grad)
T_MIN = 1e-4  # a pixel stops before the Gaussian that would bring T below this

PIXELS_PER_TILE = TILE_SIZE * TILE_SIZE
MAX_CHUNK_GAUSSIANS = 256  # depth-sorted Gaussians per step
MAX_CHUNK_PAIRS = 1 << 20  # (pixel, Gaussian) pairs evaluated per step; bounds the memory of one step


# --------------------------------------------------------------------------------------------------- binning
@dataclass
class _TileGroup:
    """A group of non-empty tiles processed together."""

    tiles: Tensor  # (T,) global tile index c·tiles_y·tiles_x + ty·tiles_x + tx
    starts: Tensor  # (T,) offset of each tile's list in `_Plan.flat_ids`
    counts: Tensor  # (T,) list lengths
    k: int  # Gaussians per depth chunk
    num_k: int  # depth chunks needed for the longest list


@dataclass
class _Plan:
    flat_ids: Tensor  # (I,) camera-flattened Gaussian index c·N + n, sorted by (camera, tile, depth, n)
    groups: list[_TileGroup]
    tiles_x: int
    tiles_y: int


def _bin(
    means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int, max_pairs: int = MAX_CHUNK_PAIRS,
    rect_rule: str = "mean",
) -> _Plan:
    """Tile-Gaussian intersections, sorted per tile by depth (ties by Gaussian index), grouped into work chunks."""
    num_cams, n = radii.shape
    device = means2d.device
    tiles_x = (width + TILE_SIZE - 1) // TILE_SIZE
    tiles_y = (height + TILE_SIZE - 1) // TILE_SIZE
    x0, x1, y0, y1 = tile_rect(means2d, radii, width, height, rule=rect_rule)
    w = (x1 - x0).clamp_min(0)
    h = (y1 - y0).clamp_min(0)
    ntiles = torch.where(radii > 0, w * h, torch.zeros_like(w))  # C N

    # Gaussians in (camera, depth, index) order: a stable sort by depth within each camera.
    order = torch.sort(depths.detach(), dim=1, stable=True).indices  # C N
    flat_order = (order + torch.arange(num_cams, device=device)[:, None] * n).reshape(-1)
    counts = ntiles.reshape(-1)[flat_order]
    total = int(counts.sum())
    if total == 0:
        return _Plan(torch.zeros(0, dtype=torch.long, device=device), [], tiles_x, tiles_y)
    ids = torch.repeat_interleave(flat_order, counts)  # (I,) in (camera, depth) order
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(total, device=device) - torch.repeat_interleave(first, counts)
    wi = w.reshape(-1)[ids]
    tx = x0.reshape(-1)[ids] + local % wi
    ty = y0.reshape(-1)[ids] + local // wi
    cam = ids // n
    tile = (cam * tiles_y + ty) * tiles_x + tx
    perm = torch.sort(tile, stable=True).indices  # stable: keeps the depth order within a tile
    tile, flat_ids = tile[perm], ids[perm]

    uniq, per_tile = torch.unique_consecutive(tile, return_counts=True)
    starts = torch.cumsum(per_tile, 0) - per_tile
    # Longest lists first, so that tiles grouped together need similar numbers of depth chunks.
    by_len = torch.sort(per_tile, descending=True, stable=True).indices
    uniq, starts, per_tile = uniq[by_len], starts[by_len], per_tile[by_len]
    lengths = per_tile.tolist()
    groups, i = [], 0
    while i < len(lengths):
        k = min(MAX_CHUNK_GAUSSIANS, lengths[i])
        size = max(1, max_pairs // (PIXELS_PER_TILE * k))
        sl = slice(i, i + size)
        groups.append(_TileGroup(uniq[sl], starts[sl], per_tile[sl], k, math.ceil(lengths[i] / k)))
        i += size
    return _Plan(flat_ids, groups, tiles_x, tiles_y)


def _group_pixels(group: _TileGroup, tiles_x: int, tiles_y: int, width: int, height: int, dtype) -> tuple:
    """Pixel centres (T, 256, 2), validity (T, 256) and flat output index c·H·W + y·W + x (T, 256)."""
    device = group.tiles.device
    cam = group.tiles // (tiles_x * tiles_y)
    rest = group.tiles % (tiles_x * tiles_y)
    ty, tx = rest // tiles_x, rest % tiles_x
    local = torch.arange(PIXELS_PER_TILE, device=device)
    px = tx[:, None] * TILE_SIZE + local % TILE_SIZE
    py = ty[:, None] * TILE_SIZE + local // TILE_SIZE
    valid = (px < width) & (py < height)
    index = (cam[:, None] * height + py.clamp(max=height - 1)) * width + px.clamp(max=width - 1)
    centres = torch.stack([px, py], dim=-1).to(dtype) + 0.5
    return centres, valid, index, cam


def _gather_ids(plan: _Plan, group: _TileGroup, kc: int) -> tuple[Tensor, Tensor]:
    """Gaussian flat ids (T, K) of depth chunk `kc` of every tile in the group, and their validity."""
    offs = kc * group.k + torch.arange(group.k, device=group.starts.device)
    valid = offs[None, :] < group.counts[:, None]
    pos = (group.starts[:, None] + offs[None, :]).clamp(max=plan.flat_ids.numel() - 1)
    return plan.flat_ids[pos], valid


# --------------------------------------------------------------------------------------------------- one step
def _step(
    d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor, depths: Tensor, valid: Tensor, t_in: Tensor,
    done_in: Tensor, clamp_grad: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Composite one depth chunk of K Gaussians over the P = 256 pixels of T tiles.

    d (T,P,K,2) = mean2d − pixel centre for every (pixel, Gaussian) pair (so dL/dd is the per-pixel term of
    dL/dmean2d), conics (T,K,3), colors (T,K,3), opacities (T,K), depths (T,K), valid (T,K) bool (padding),
    t_in (T,P) transmittance entering the chunk, done_in (T,P) pixels already stopped (or outside the image).
    clamp_grad: differentiate α = min(0.99, o·G) as if it were o·G (straight through the clamp; same values).
    Returns the chunk's colour (T,P,3) and depth (T,P) contributions, T leaving the chunk (T,P) and the new done.
    """
    dx, dy = d[..., 0], d[..., 1]
    a, b, c = (x[:, None, :] for x in conics.unbind(-1))
    power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy  # T P K
    raw_alpha = opacities[:, None, :] * torch.exp(torch.clamp(power, max=0.0))
    alpha = raw_alpha.clamp(max=ALPHA_MAX)
    if clamp_grad:  # value of the clamp, derivative of o·G (exact: 0.99 − x is exact for x in [0.99, 1.98])
        alpha = raw_alpha + (alpha - raw_alpha).detach()
    with torch.no_grad():
        contrib = valid[:, None, :] & (power <= 0) & (alpha >= ALPHA_MIN)
        raw = torch.where(contrib, alpha, torch.zeros_like(alpha))
        t_after = t_in.detach()[..., None] * torch.cumprod(1.0 - raw, dim=-1)  # T before the stop test, inclusive
        keep = contrib & (t_after >= T_MIN) & ~done_in[..., None]
        done_out = done_in | (t_after[..., -1] < T_MIN)
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    trans = torch.cumprod(1.0 - alpha, dim=-1)  # inclusive
    t_excl = t_in[..., None] * torch.cat([torch.ones_like(trans[..., :1]), trans[..., :-1]], dim=-1)
    weight = alpha * t_excl  # T P K
    color = torch.einsum("tpk,tkc->tpc", weight, colors)
    depth = torch.einsum("tpk,tk->tp", weight, depths)
    t_out = t_in * trans[..., -1]
    return color, depth, t_out, done_out


# --------------------------------------------------------------------------------------------------- autograd
class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, depths, background, radii, width, height, max_pairs, rules):
        num_cams = radii.shape[0]
        dtype, device = means2d.dtype, means2d.device
        plan = _bin(means2d, radii, depths, width, height, max_pairs, rules.tile_rect)
        flat = _flat_inputs(means2d, conics, colors, opacities, depths)
        hw = height * width
        t_final = torch.ones(num_cams * hw, dtype=dtype, device=device)
        color_acc = torch.zeros(num_cams * hw, 3, dtype=dtype, device=device)
        depth_acc = torch.zeros(num_cams * hw, dtype=dtype, device=device)
        states = []  # per group: list of (t_in, done_in) for every depth chunk processed
        for group in plan.groups:
            pixels, pvalid, index, _ = _group_pixels(group, plan.tiles_x, plan.tiles_y, width, height, dtype)
            t = torch.ones(pvalid.shape, dtype=dtype, device=device)
            done = ~pvalid
            color = torch.zeros(*pvalid.shape, 3, dtype=dtype, device=device)
            depth = torch.zeros(pvalid.shape, dtype=dtype, device=device)
            group_states = []
            for kc in range(group.num_k):
                if bool(done.all()):
                    break
                ids, gvalid = _gather_ids(plan, group, kc)
                group_states.append((t, done))
                m, cn, col, op, z = (x[ids] for x in flat)
                d = m[:, None, :, :] - pixels[:, :, None, :]
                dcol, ddep, t, done = _step(d, cn, col, op, z, gvalid, t, done)
                color, depth = color + dcol, depth + ddep
            states.append(group_states)
            sel = index[pvalid]
            t_final[sel] = t[pvalid]
            color_acc[sel] = color[pvalid]
            depth_acc[sel] = depth[pvalid]
        t_final = t_final.reshape(num_cams, height, width)
        image = color_acc.reshape(num_cams, height, width, 3) + t_final[..., None] * background[:, None, None, :]
        alpha = 1.0 - t_final[..., None]
        depth_img = depth_acc.reshape(num_cams, height, width, 1)

        ctx.save_for_backward(means2d, conics, colors, opacities, depths, background, t_final)
        ctx.plan, ctx.states, ctx.size, ctx.clamp_grad = plan, states, (width, height), rules.alpha_clamp_grad
        ctx.means2d = means2d  # the very tensor object: backward attaches `.absgrad` to it
        return image, alpha, depth_img

    @staticmethod
    @once_differentiable
    def backward(ctx, g_image, g_alpha, g_depth):
        means2d, conics, colors, opacities, depths, background, t_final = ctx.saved_tensors
        plan, states = ctx.plan, ctx.states
        width, height = ctx.size
        num_cams, n = means2d.shape[:2]
        dtype = means2d.dtype
        g_image, g_alpha, g_depth = g_image.contiguous(), g_alpha.contiguous(), g_depth.contiguous()  # never None

        g_background = (g_image * t_final[..., None]).sum(dim=(1, 2))  # C 3
        g_t_final = (g_image * background[:, None, None, :]).sum(-1) - g_alpha[..., 0]  # C H W
        g_color_flat = g_image.reshape(-1, 3)
        g_depth_flat = g_depth.reshape(-1)
        g_t_flat = g_t_final.reshape(-1)

        flat = _flat_inputs(means2d, conics, colors, opacities, depths)
        grads = [torch.zeros_like(x) for x in flat]  # means2d, conics, colors, opacities, depths (flattened)
        absgrad = torch.zeros_like(flat[0])

        for group, group_states in zip(plan.groups, states):
            if not group_states:
                continue
            pixels, pvalid, index, _ = _group_pixels(group, plan.tiles_x, plan.tiles_y, width, height, dtype)
            mask = pvalid.to(dtype)
            g_col = g_color_flat[index] * mask[..., None]  # T P 3 (zero outside the image)
            g_dep = g_depth_flat[index] * mask
            g_t = g_t_flat[index] * mask
            for kc in reversed(range(len(group_states))):
                t_in, done_in = group_states[kc]
                ids, gvalid = _gather_ids(plan, group, kc)
                with torch.enable_grad():
                    d = (flat[0][ids][:, None, :, :] - pixels[:, :, None, :]).requires_grad_(True)
                    leaves = [x[ids].detach().requires_grad_(True) for x in flat[1:]]
                    t_leaf = t_in.detach().requires_grad_(True)
                    dcol, ddep, t_out, _ = _step(d, *leaves, gvalid, t_leaf, done_in, ctx.clamp_grad)
                    g_pair, *g_leaves, g_t = torch.autograd.grad(
                        (dcol, ddep, t_out), (d, *leaves, t_leaf), (g_col, g_dep, g_t), allow_unused=True)
                sel = ids[gvalid]  # g_pair (T,P,K,2): the per-pixel terms of dL/dmean2d
                grads[0].index_add_(0, sel, g_pair.sum(1)[gvalid])
                absgrad.index_add_(0, sel, g_pair.abs().sum(1)[gvalid])
                for acc, g in zip(grads[1:], g_leaves):
                    if g is not None:
                        acc.index_add_(0, sel, g[gvalid])

        g_means2d, g_conics, g_colors, g_opacities, g_depths = (
            g.reshape(num_cams, n, *g.shape[1:]) for g in grads)
        if ctx.needs_input_grad[0]:
            ctx.means2d.absgrad = absgrad.reshape(num_cams, n, 2)
        return g_means2d, g_conics, g_colors, g_opacities, g_depths, g_background, None, None, None, None, None


def _flat_inputs(means2d, conics, colors, opacities, depths) -> list[Tensor]:
    """Camera-flattened (C·N, ...) views of the per-camera Gaussian attributes, indexed by c·N + n."""
    return [means2d.reshape(-1, 2), conics.reshape(-1, 3), colors.reshape(-1, 3), opacities.reshape(-1),
            depths.reshape(-1)]


# --------------------------------------------------------------------------------------------------- public
def composite_reference(
    means2d: Float[Tensor, "C N 2"],
    conics: Float[Tensor, "C N 3"],
    colors: Float[Tensor, "C N 3"],
    opacities: Float[Tensor, "C N"],
    depths: Float[Tensor, "C N"],
    radii: Int[Tensor, "C N"],
    background: Float[Tensor, "C 3"] | Float[Tensor, "3"] | None,
    width: int,
    height: int,
    max_pairs: int = MAX_CHUNK_PAIRS,
    rules: RasterRules | None = None,
) -> tuple[Float[Tensor, "C H W 3"], Float[Tensor, "C H W 1"], Float[Tensor, "C H W 1"]]:
    """Alpha-composite projected Gaussians into C images of `height` × `width` pixels.

    Inputs come from `projection.project` (pixels, pixels⁻², camera z); entries with radius 0 are ignored.
    `background` is (C, 3), (3,) or None (black). Returns image = Σ w·colour + T·background, alpha = 1 − T and
    depth = Σ w·z (not divided by alpha). Differentiable w.r.t. means2d, conics, colors, opacities, depths and
    background; after backward, `means2d.absgrad` (C, N, 2) holds Σ_pixels |per-pixel dL/dmean2d| (pixel units).
    `max_pairs` bounds the (pixel, Gaussian) pairs evaluated per step (memory ≈ 30 floats per pair in backward).
    `rules` (default `RasterRules()`): only `tile_rect` and `alpha_clamp_grad` concern compositing.
    """
    background = check_composite_inputs("composite_reference", means2d, conics, colors, opacities, depths, radii,
                                        background)
    return _Composite.apply(means2d, conics, colors, opacities, depths, background, radii, int(width), int(height),
                            int(max_pairs), DEFAULT_RULES if rules is None else rules)

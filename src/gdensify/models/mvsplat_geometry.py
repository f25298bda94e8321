"""Geometry of the MVSplat-style backbone: plane-sweep cost volume, Gaussian adapter, SH rotation, quaternions.

Conventions are the library's: OpenCV camera axes, `world_to_camera` matrices, intrinsics in pixels with pixel
centres at +0.5, quaternions wxyz, SH coefficients (..., K, 3) evaluated by `gdensify.sh`.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ..sh import sh_basis


# ---------------------------------------------------------------------------------------------------------------------
# Plane sweep
# ---------------------------------------------------------------------------------------------------------------------
def disparity_candidates(near: Float[Tensor, " B"], far: Float[Tensor, " B"], num: int) -> Float[Tensor, "B D"]:
    """`num` disparities (1/depth) spaced uniformly from 1/far to 1/near (inclusive), ascending."""
    t = torch.linspace(0.0, 1.0, num, dtype=near.dtype, device=near.device)
    lo, hi = 1.0 / far, 1.0 / near
    return lo[:, None] + t[None, :] * (hi - lo)[:, None]


def pixel_centers(height: int, width: int, dtype=torch.float32, device=None) -> Float[Tensor, "h w 2"]:
    """(x + 0.5, y + 0.5) of every pixel."""
    y, x = torch.meshgrid(torch.arange(height, dtype=dtype, device=device) + 0.5,
                          torch.arange(width, dtype=dtype, device=device) + 0.5, indexing="ij")
    return torch.stack([x, y], dim=-1)


def warp_to_reference(
    source_features: Float[Tensor, "N C h w"],
    ref_intrinsics: Float[Tensor, "N 3 3"],
    src_intrinsics: Float[Tensor, "N 3 3"],
    ref_to_src: Float[Tensor, "N 4 4"],
    depths: Float[Tensor, "N D"],
) -> Float[Tensor, "N C D h w"]:
    """Sample the source view's features at the projection of every reference pixel placed at every z-depth.

    Pixel (x, y) of the reference map is back-projected to z = depth (a fronto-parallel plane of the reference
    camera), moved into the source camera by `ref_to_src` (= source world_to_camera @ reference camera_to_world)
    and projected with the source intrinsics; the source map is sampled bilinearly there (pixel centres at +0.5,
    `align_corners=False`), zeros outside the map or behind the source camera. Intrinsics are those of the feature
    maps. The sampling grid carries no gradient (cameras are inputs); features do."""
    n, c, h, w = source_features.shape
    d = depths.shape[1]
    with torch.no_grad():
        pix = pixel_centers(h, w, dtype=source_features.dtype, device=source_features.device).reshape(-1, 2)
        pix = torch.cat([pix, torch.ones_like(pix[:, :1])], dim=-1)  # hw 3
        rays = torch.einsum("nij,pj->nip", torch.linalg.inv(ref_intrinsics), pix)  # N 3 hw (z = 1)
        rot, trans = ref_to_src[:, :3, :3], ref_to_src[:, :3, 3]
        rays_src = torch.einsum("nij,njp->nip", rot, rays)  # N 3 hw
        points = rays_src[:, :, None, :] * depths[:, None, :, None] + trans[:, :, None, None]  # N 3 D hw
        proj = torch.einsum("nij,njdp->nidp", src_intrinsics, points)
        z = proj[:, 2]
        valid = z > 1e-6
        z = torch.where(valid, z, torch.ones_like(z))
        gx = 2.0 * proj[:, 0] / z / w - 1.0
        gy = 2.0 * proj[:, 1] / z / h - 1.0
        outside = torch.full_like(gx, -4.0)  # well outside [-1, 1]: zero padding
        grid = torch.stack([torch.where(valid, gx, outside), torch.where(valid, gy, outside)], dim=-1)
        grid = grid.reshape(n, d * h, w, 2)
    warped = F.grid_sample(source_features, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped.reshape(n, c, d, h, w)


def plane_sweep_correlation(
    features: Float[Tensor, "B V C h w"],
    intrinsics: Float[Tensor, "B V 3 3"],
    world_to_camera: Float[Tensor, "B V 4 4"],
    disparities: Float[Tensor, "B D"],
    depth_chunk: int | None = None,
) -> Float[Tensor, "B V D h w"]:
    """MVSplat's plane-sweep cost volume: for every view as reference and every candidate depth 1/disparity, the
    dot product of the reference features with each other view's warped features, divided by sqrt(C), averaged
    over the other views. `intrinsics` are those of the feature maps (pixels). `depth_chunk` bounds the number of
    depth planes warped at once (memory)."""
    b, v, c, h, w = features.shape
    if v < 2:
        raise ValueError(f"the plane-sweep cost volume needs at least 2 views, got {v}")
    pairs = [(r, s) for r in range(v) for s in range(v) if s != r]
    ref_idx = torch.tensor([p[0] for p in pairs], device=features.device)
    src_idx = torch.tensor([p[1] for p in pairs], device=features.device)
    p = len(pairs)
    ref_feat = features[:, ref_idx].reshape(b * p, c, h, w)
    src_feat = features[:, src_idx].reshape(b * p, c, h, w)
    k_ref = intrinsics[:, ref_idx].reshape(b * p, 3, 3)
    k_src = intrinsics[:, src_idx].reshape(b * p, 3, 3)
    with torch.no_grad():
        ref_to_src = (world_to_camera[:, src_idx] @ torch.linalg.inv(world_to_camera[:, ref_idx])).reshape(b * p, 4, 4)
    depths = (1.0 / disparities)[:, None, :].expand(b, p, -1).reshape(b * p, -1)
    chunk = depths.shape[1] if depth_chunk is None else max(1, int(depth_chunk))
    scale = 1.0 / math.sqrt(c)
    out = []
    for start in range(0, depths.shape[1], chunk):
        warped = warp_to_reference(src_feat, k_ref, k_src, ref_to_src, depths[:, start:start + chunk])
        out.append(torch.einsum("nchw,ncdhw->ndhw", ref_feat, warped) * scale)
    corr = torch.cat(out, dim=1).reshape(b, v, v - 1, -1, h, w)  # pairs are grouped by reference view
    return corr.mean(dim=2)


# ---------------------------------------------------------------------------------------------------------------------
# Quaternions and SH rotation
# ---------------------------------------------------------------------------------------------------------------------
def rotmat_to_quat(matrix: Float[Tensor, "*batch 3 3"]) -> Float[Tensor, "*batch 4"]:
    """Unit wxyz quaternion of a rotation matrix (the inverse of `gdensify.gaussians.quat_to_rotmat`), w ≥ 0."""
    m = matrix
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # four candidate solutions, each well conditioned where its leading term is large
    sq = lambda t: 0.5 * torch.sqrt(t.clamp_min(1e-12))  # noqa: E731
    qw, qx = sq(1 + m00 + m11 + m22), sq(1 + m00 - m11 - m22)
    qy, qz = sq(1 - m00 + m11 - m22), sq(1 - m00 - m11 + m22)
    cand = torch.stack([
        torch.stack([qw, (m21 - m12) / (4 * qw), (m02 - m20) / (4 * qw), (m10 - m01) / (4 * qw)], -1),
        torch.stack([(m21 - m12) / (4 * qx), qx, (m01 + m10) / (4 * qx), (m02 + m20) / (4 * qx)], -1),
        torch.stack([(m02 - m20) / (4 * qy), (m01 + m10) / (4 * qy), qy, (m12 + m21) / (4 * qy)], -1),
        torch.stack([(m10 - m01) / (4 * qz), (m02 + m20) / (4 * qz), (m12 + m21) / (4 * qz), qz], -1),
    ], dim=-2)  # ... 4 4
    best = torch.stack([qw, qx, qy, qz], dim=-1).argmax(dim=-1)
    q = torch.gather(cand, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    q = F.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def quat_multiply(a: Float[Tensor, "*batch 4"], b: Float[Tensor, "*batch 4"]) -> Float[Tensor, "*batch 4"]:
    """Hamilton product a ⊗ b of wxyz quaternions: R(a ⊗ b) = R(a) R(b)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], dim=-1)


@functools.lru_cache(maxsize=None)
def _sh_fit(degree: int) -> tuple[Tensor, Tensor, Tensor]:
    """Fixed sample directions S (M, 3), pinv(Y(S)) (K, M) and the block-diagonal mask (K, K), float64 CPU."""
    k = (degree + 1) ** 2
    m = max(4 * k, 16)
    i = torch.arange(m, dtype=torch.float64) + 0.5  # Fibonacci sphere
    z = 1 - 2 * i / m
    r = torch.sqrt(1 - z * z)
    phi = math.pi * (1 + math.sqrt(5.0)) * i
    dirs = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)
    pinv = torch.linalg.pinv(sh_basis(degree, dirs))
    band = torch.cat([torch.full((2 * l + 1,), l) for l in range(degree + 1)])
    return dirs, pinv, band[:, None] == band[None, :]


def sh_rotation_matrices(rotations: Float[Tensor, "*batch 3 3"], degree: int) -> Float[Tensor, "*batch K K"]:
    """Matrices D(R) with coefficients c' = D(R) c such that f'(d) = f(Rᵀ d): the SH function rotated by R.

    Computed exactly (up to float64 round-off) by fitting on fixed sample directions: each degree-l band is
    invariant under rotation, so Y(Rᵀ S) lies in the span of Y(S) and D = pinv(Y(S)) · Y(Rᵀ S). Any SH degree
    that `gdensify.sh` supports (0–4) works. Block-diagonal by band."""
    dirs, pinv, mask = _sh_fit(degree)
    r64 = rotations.to(torch.float64)
    dirs = dirs.to(r64.device)
    rotated = torch.einsum("mi,...ij->...mj", dirs, r64)  # rows (Rᵀ s)ᵀ = sᵀ R
    d = pinv.to(r64.device) @ sh_basis(degree, rotated)
    d = torch.where(mask.to(r64.device), d, torch.zeros_like(d))
    return d.to(rotations.dtype)


# (x, y, z) → (z, x, y): makes y the polar axis of e3nn's spherical harmonics.
_E3NN_AXES = ((0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0))


def e3nn_wigner_matrices(rotations: Float[Tensor, "*batch 3 3"], degree: int) -> Float[Tensor, "*batch K K"]:
    """The block-diagonal matrices that MVSplat's released `rotate_sh` applies to 3DGS-ordered coefficients:
    e3nn's real Wigner D-matrices ``wigner_D(l, *matrix_to_angles(R))`` for l = 0…degree.

    e3nn's degree-l real harmonics are the real spherical harmonics without the Condon–Shortley phase, with y as
    the polar axis: Y^e3nn_lm(d) ∝ (−1)^m · Y^3DGS_lm(Q d), Q d = (z, x, y) (the 3DGS basis carries the (−1)^m
    phase). Since Q is a rotation and Y^3DGS(R d) = D(R) Y^3DGS(d) with D the exact matrices of
    `sh_rotation_matrices`, e3nn's representation of R is S · D(Q R Qᵀ) · S with S = diag((−1)^m) per band.
    These matrices rotate e3nn's basis, not the 3DGS one, so applying them to 3DGS coefficients does NOT rotate the
    colour function (degrees ≥ 1 change); they are provided to reproduce checkpoints trained that way."""
    q = torch.tensor(_E3NN_AXES, dtype=torch.float64, device=rotations.device)
    d = sh_rotation_matrices(q @ rotations.to(torch.float64) @ q.T, degree).to(torch.float64)
    m = torch.cat([torch.arange(-l, l + 1) for l in range(degree + 1)]).to(rotations.device)
    sign = 1.0 - 2.0 * (m.abs() % 2).to(torch.float64)  # (−1)^m
    return (sign[:, None] * d * sign[None, :]).to(rotations.dtype)


SH_ROTATIONS = ("exact", "e3nn")


def rotate_sh(sh: Float[Tensor, "*batch K 3"], rotations: Float[Tensor, "*batch 3 3"],
              convention: str = "exact") -> Float[Tensor, "*batch K 3"]:
    """Coefficients of the SH colour function rotated by R: eval_sh(rotate_sh(sh, R), R d) = eval_sh(sh, d).

    `rotations` broadcasts against the batch dimensions of `sh` (e.g. one rotation per view for all its pixels).
    ``convention="e3nn"`` applies `e3nn_wigner_matrices` instead (MVSplat's released convention, not a rotation of
    the colour function)."""
    if convention not in SH_ROTATIONS:
        raise ValueError(f"SH rotation convention must be one of {SH_ROTATIONS}, got {convention!r}")
    k = sh.shape[-2]
    degree = math.isqrt(k) - 1
    if (degree + 1) ** 2 != k:
        raise ValueError(f"SH coefficient count {k} is not a square (d+1)^2")
    if degree == 0:
        return sh
    if convention == "e3nn":
        d = e3nn_wigner_matrices(rotations, degree)
    else:
        d = sh_rotation_matrices(rotations, degree)
    return torch.einsum("...ij,...jc->...ic", d, sh)


# ---------------------------------------------------------------------------------------------------------------------
# Gaussian adapter
# ---------------------------------------------------------------------------------------------------------------------
def sh_mask(degree: int, dtype=torch.float32, device=None) -> Float[Tensor, " K"]:
    """MVSplat's SH coefficient scaling: 1 for the DC term, 0.1·0.25^l for degree l ≥ 1."""
    return torch.cat([torch.full((2 * l + 1,), 1.0 if l == 0 else 0.1 * 0.25 ** l, dtype=dtype, device=device)
                      for l in range(degree + 1)])


def pixel_footprint(intrinsics: Float[Tensor, "*batch 3 3"]) -> Float[Tensor, " *batch"]:
    """Sum over x and y of K[:2,:2]⁻¹·(1, 1): the size of one pixel on the plane at unit depth (≈ 1/fx + 1/fy)."""
    inv = torch.linalg.inv(intrinsics[..., :2, :2])
    return inv.sum(dim=(-1, -2)).clamp_min(1e-12)


def adapt_attributes(
    raw_scales: Float[Tensor, "*batch 3"],
    raw_quats: Float[Tensor, "*batch 4"],
    raw_sh: Float[Tensor, "*batch K 3"],
    distance: Float[Tensor, " *batch"],
    camera_to_world: Float[Tensor, "*#batch 4 4"],
    intrinsics: Float[Tensor, "*#batch 3 3"],
    scale_min: float = 0.5,
    scale_max: float = 15.0,
    scale_multiplier: float = 0.1,
    sh_rotation: str = "exact",
) -> tuple[Float[Tensor, "*batch 3"], Float[Tensor, "*batch 4"], Float[Tensor, "*batch K 3"]]:
    """MVSplat's activation of raw per-Gaussian attributes predicted in a camera's axes → world-space
    (log_scales, quats wxyz, sh), usable for the coarse Gaussians and for GD's fine ones.

    - scale = (scale_min + (scale_max − scale_min)·sigmoid(raw))·distance·scale_multiplier·pixel_footprint(K),
      returned as its log; `distance` is the depth along the ray for the coarse Gaussians, ‖mean − camera
      centre‖ for GD's fine ones;
    - quaternion: q_world = q(R_c2w) ⊗ raw (left unnormalised, as the library stores quaternions raw);
    - SH: multiplied by MVSplat's mask (1, then 0.1·0.25^l) and rotated from camera to world axes (`rotate_sh`
      with `sh_rotation` = "exact" or "e3nn", MVSplat's released convention).
    `camera_to_world` and `intrinsics` broadcast against the batch dimensions (e.g. one camera for all pixels)."""
    rot = camera_to_world[..., :3, :3]
    s = scale_min + (scale_max - scale_min) * torch.sigmoid(raw_scales)
    log_footprint = torch.log(scale_multiplier * pixel_footprint(intrinsics))[..., None]
    log_scales = torch.log(s) + torch.log(distance)[..., None] + log_footprint
    q_c2w = rotmat_to_quat(rot)
    quats = quat_multiply(q_c2w.expand(*raw_quats.shape[:-1], 4), raw_quats)
    degree = math.isqrt(raw_sh.shape[-2]) - 1
    sh = raw_sh * sh_mask(degree, raw_sh.dtype, raw_sh.device)[:, None]
    return log_scales, quats, rotate_sh(sh, rot, sh_rotation)

"""Optional gsplat backend (CUDA only): `gsplat>=1.5.3,<1.6`, the `[gpu]` extra.

VALIDATED ONLY ON CUDA MACHINES. This module is written from gsplat's documented `rasterization()` API; on a
machine without a GPU it is only exercised for its error paths (tests/test_render_api.py). Run the parity tests
against the `reference` backend on a CUDA machine before relying on it.

How it maps onto `gsplat.rasterization`: viewmats = world_to_camera, Ks = intrinsics, post-activation scales and
opacities, SH coefficients with `sh_degree`, `packed=False`, `absgrad=True`, `render_mode="RGB+D"` (depth = Σ w·z,
the last channel), `rasterize_mode="classic"`, eps2d = 0.3. `meta["means2d"]` (C, N, 2, pixels) is returned with
`retain_grad()`, so after backward it carries `.grad` and gsplat's `.absgrad`, like the other backends.

Known, documented differences from the reference semantics (expect small numeric differences, not identity):
gsplat 1.5.x bounds the 2D extent with per-axis, opacity-aware radii rather than 3·sqrt(λ_max), clamps J with
0.3·tan(fov) margins around the principal point, and culls slightly differently at the image border. Its radii are
(C, N, 2); they are reduced here to (C, N) int32 (0 unless both axes are positive, else the larger one).
gsplat's CUDA kernels take float32 only.

Renderer rules (`RasterRules`): gsplat follows `far_cull` (far_plane = ∞ when False) and `clamp_image` (applied by
`rasterize` after the kernel); it cannot follow a non-default `tile_rect`, `radius_floor`, `alpha_clamp_grad` or
`sh_view_origin`, and `rasterize_gsplat` raises ValueError naming them (`backend="auto"` then picks `reference`).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians
from .rules import DEFAULT_RULES, RasterRules

MIN_VERSION = (1, 5, 3)
MAX_VERSION = (1, 6, 0)  # exclusive


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (3 - len(parts)))


def _import_gsplat():
    """Import gsplat and check its version; ImportError with an install hint otherwise."""
    try:
        import gsplat  # noqa: PLC0415
    except Exception as exc:  # ImportError, or errors raised while gsplat initialises
        raise ImportError(
            "the gsplat backend needs `pip install 'gdensify[gpu]'` (gsplat>=1.5.3,<1.6) and a CUDA build of "
            f"PyTorch; importing gsplat failed: {type(exc).__name__}: {exc}") from exc
    version = _version_tuple(getattr(gsplat, "__version__", "0"))
    if not MIN_VERSION <= version < MAX_VERSION:
        raise ImportError(f"gsplat {gsplat.__version__} is not supported; need >=1.5.3,<1.6")
    return gsplat


@functools.lru_cache(maxsize=None)
def _probe(device_key: str) -> tuple[bool, str]:
    """Import gsplat and run one tiny guarded render on `device_key` (cached). gsplat JIT-builds its CUDA code on
    the first call and may fail there even when `import gsplat` works, so only a real call tells."""
    device = torch.device(device_key)
    if device.type != "cuda":
        return False, f"gsplat needs CUDA tensors, got device {device}"
    if not torch.cuda.is_available():
        return False, "CUDA is not available to this PyTorch build"
    try:
        gsplat = _import_gsplat()
        f32 = dict(dtype=torch.float32, device=device)
        colors, alphas, _ = gsplat.rasterization(
            means=torch.tensor([[0.0, 0.0, 2.0]], **f32), quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]], **f32),
            scales=torch.full((1, 3), 0.1, **f32), opacities=torch.full((1,), 0.9, **f32),
            colors=torch.zeros(1, 1, 3, **f32), viewmats=torch.eye(4, **f32)[None],
            Ks=torch.tensor([[[16.0, 0.0, 8.0], [0.0, 16.0, 8.0], [0.0, 0.0, 1.0]]], **f32),
            width=16, height=16, sh_degree=0, packed=False, render_mode="RGB+D")
        torch.cuda.synchronize(device)
        if colors.shape != (1, 16, 16, 4) or not bool(torch.isfinite(colors).all()) or float(alphas.max()) <= 0:
            return False, "gsplat's test render gave an unexpected result"
    except Exception as exc:  # build errors, missing toolkit, driver problems...
        return False, f"{type(exc).__name__}: {exc}"
    return True, "ok"


def unsupported_rules(rules: RasterRules) -> list[str]:
    """Names of the fields of `rules` that gsplat's kernel cannot follow (non-default values only)."""
    return [name for name in ("tile_rect", "radius_floor", "alpha_clamp_grad", "sh_view_origin")
            if getattr(rules, name) != getattr(DEFAULT_RULES, name)]


def gsplat_status(device: torch.device | str) -> tuple[bool, str]:
    """(usable, reason) for the gsplat backend on `device`; the first call on a CUDA device renders a test image."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return _probe(str(device))


def rasterize_gsplat(
    gaussians: Gaussians, cameras: Cameras, background: Tensor, sh_degree: int, means2d_grad: bool = False,
    rules: RasterRules | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Render with gsplat. background (C, 3). Returns image (C,H,W,3) (not clamped: `rasterize` applies
    `rules.clamp_image`), alpha (C,H,W,1), depth (C,H,W,1), radii (C,N) int32 and means2d (C,N,2) (with
    retain_grad when it requires grad). ValueError for rules gsplat cannot follow."""
    rules = DEFAULT_RULES if rules is None else rules
    bad = unsupported_rules(rules)
    if bad:
        values = ", ".join(f"{name}={getattr(rules, name)!r}" for name in bad)
        raise ValueError(f"the gsplat backend cannot follow RasterRules {values}; use backend='reference' (CUDA or "
                         "CPU) or 'cpu'")
    device = gaussians.device
    if device.type != "cuda":
        raise ValueError(f"the gsplat backend needs CUDA tensors; these Gaussians are on {device}")
    if gaussians.dtype != torch.float32:
        raise ValueError(f"the gsplat backend renders float32 only, got {gaussians.dtype}; use backend='reference'")
    ok, reason = gsplat_status(device)
    if not ok:
        raise RuntimeError(f"the gsplat backend is not usable on {device}: {reason}")
    gsplat = _import_gsplat()
    num_cams, n = len(cameras), len(gaussians)
    width, height = cameras.width, cameras.height
    if n == 0:
        image = background[:, None, None, :].expand(num_cams, height, width, 3).clone()
        zeros = background.new_zeros(num_cams, height, width, 1)
        means2d = background.new_zeros(num_cams, 0, 2)
        return image, zeros, zeros.clone(), torch.zeros(num_cams, 0, dtype=torch.int32, device=device), means2d
    means = gaussians.means
    if means2d_grad and torch.is_grad_enabled() and not means.requires_grad:
        means = means.detach().requires_grad_(True)  # makes meta["means2d"] differentiable
    render, alphas, meta = gsplat.rasterization(
        means=means, quats=gaussians.quats, scales=gaussians.scales, opacities=gaussians.opacities,
        colors=gaussians.sh, viewmats=cameras.world_to_camera.to(torch.float32),
        Ks=cameras.intrinsics.to(torch.float32), width=width, height=height,
        near_plane=float(cameras.near), far_plane=float(cameras.far) if rules.far_cull else float("inf"), eps2d=0.3,
        sh_degree=int(sh_degree),
        packed=False, tile_size=16, backgrounds=background.to(torch.float32).contiguous(),
        render_mode="RGB+D", absgrad=True, rasterize_mode="classic")
    means2d = meta["means2d"]
    if means2d.requires_grad:
        means2d.retain_grad()
    radii = meta["radii"]
    if radii.dim() == 3:  # gsplat 1.5: per-axis radii (C, N, 2)
        radii = torch.where((radii > 0).all(-1), radii.max(-1).values, torch.zeros_like(radii[..., 0]))
    return render[..., :3], alphas, render[..., 3:4], radii.to(torch.int32), means2d

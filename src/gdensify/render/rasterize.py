"""The public renderer: `rasterize(gaussians, cameras, ...) -> RenderOutput`, with runtime backend selection.

Backends (all follow the render contract; `reference` is the oracle the others are tested against):
- ``"reference"``: pure PyTorch (`_reference.composite_reference`), CPU or CUDA, float32/float64; slow but exact.
- ``"cpu"``: the C++/OpenMP kernel (`_cpu.composite_cpu`, built on first use); CPU tensors only.
- ``"gsplat"``: gsplat's CUDA rasterizer (optional extra; float32, CUDA tensors only).
- ``"auto"``: CUDA tensors → gsplat when it imports, a guarded first call works, the dtype is float32 and it can
  follow the `rules`, else reference; CPU tensors → cpu when the extension builds/loads, else reference with a
  one-time warning.

Renderer rules: `rules=RasterRules.inria()` switches the reference and cpu backends to the Inria/GDM CUDA kernel's
tile rectangle, radius, culling, α-clamp gradient and [0, 1] image clamp; `RasterRules.gd_object_release()` adds
the released GD object model's SH view origin (see `rules.py`). The default `RasterRules()` is gdensify's contract.

Projection: the `cpu` backend projects in C++ (`_cpu.project_cpu`) by default; `projection="torch"` selects the
PyTorch twin (`projection.project`, which the `reference` backend always uses unless `projection="cpp"`).

View-space gradients: `out.means2d` is the projected-means tensor itself. When it requires grad, `loss.backward()`
fills `out.means2d.grad` (dL/dmeans2d, pixels) and `out.means2d.absgrad` (Σ_pixels |per-pixel dL/dmeans2d|,
pixels). `means2d_grad_to_ndc` converts them to the NDC units of the Inria/official-GD code (×W/2, ×H/2).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians
from ._reference import composite_reference
from .projection import project
from .rules import DEFAULT_RULES, RasterRules

BACKENDS = ("auto", "reference", "cpu", "gsplat")
PROJECTIONS = ("auto", "torch", "cpp")


@dataclass
class RenderOutput:
    """Renders of C cameras; N Gaussians."""

    image: Float[Tensor, "C H W 3"]  # Σ w·colour + T·background
    alpha: Float[Tensor, "C H W 1"]  # 1 − T
    depth: Float[Tensor, "C H W 1"]  # Σ w·z (camera z, not divided by alpha)
    radii: Int[Tensor, "C N"]  # int32 pixels, 0 = not rendered in that camera
    means2d: Float[Tensor, "C N 2"]  # pixels; `.grad` / `.absgrad` after backward when it requires grad
    backend: str  # the backend that rendered ("reference", "cpu" or "gsplat")

    @property
    def visible(self) -> Tensor:
        """(C, N) bool: Gaussians rendered in each camera."""
        return self.radii > 0

    def view_space_grad(self, absolute: bool = True, ndc: bool = False) -> Float[Tensor, "C N 2"]:
        """`means2d.absgrad` (or `.grad`) after backward, in pixels or (ndc=True) in NDC units; RuntimeError if the
        backward has not produced it."""
        grad = getattr(self.means2d, "absgrad" if absolute else "grad", None)
        if grad is None:
            raise RuntimeError("no view-space gradient: render with differentiable Gaussians (or means2d_grad=True) "
                               "and call backward first")
        if not ndc:
            return grad
        height, width = self.image.shape[1:3]
        return means2d_grad_to_ndc(grad, width, height)


def means2d_grad_to_ndc(grad: Float[Tensor, "*batch 2"], width: int, height: int) -> Float[Tensor, "*batch 2"]:
    """Pixel-unit gradients w.r.t. 2D means → NDC units (x × W/2, y × H/2), as the Inria rasterizer used by the
    official GD code reports them (and as gsplat's DefaultStrategy normalises them). Works for grad and absgrad."""
    scale = grad.new_tensor([0.5 * width, 0.5 * height])
    return grad * scale


# ------------------------------------------------------------------------------------------- backend loading
_cpu_state: tuple[Callable | None, str] | None = None
_warned_fallback = False


def _load_cpu() -> tuple[Callable | None, str]:
    """(composite_cpu, "ok") when the C++ extension imports/builds, else (None, reason). Cached."""
    global _cpu_state
    if _cpu_state is None:
        try:
            from . import _cpu  # noqa: PLC0415  (lazy: building the extension takes a while)

            check = getattr(_cpu, "is_available", None)
            if callable(check) and not check():
                reason = getattr(_cpu, "unavailable_reason", None)
                _cpu_state = (None, reason() if callable(reason) else "the C++ extension is unavailable")
            else:
                _cpu_state = (_cpu.composite_cpu, "ok")
        except Exception as exc:  # missing module, compiler errors, ...
            _cpu_state = (None, f"{type(exc).__name__}: {exc}")
    return _cpu_state


def available_backends(device: torch.device | str = "cpu") -> dict[str, str]:
    """Backend name → "ok" or the reason it cannot run on `device` (tries to load/build the cpu extension and to
    run gsplat once on CUDA devices)."""
    device = torch.device(device)
    status = {"reference": "ok"}
    if device.type == "cpu":
        status["cpu"] = _load_cpu()[1]
    else:
        status["cpu"] = f"the cpu backend needs CPU tensors, got device {device}"
    from ._gsplat import gsplat_status  # noqa: PLC0415

    status["gsplat"] = gsplat_status(device)[1]
    return status


def _resolve_backend(backend: str, device: torch.device, dtype: torch.dtype,
                     rules: RasterRules = DEFAULT_RULES) -> str:
    global _warned_fallback
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"the cpu backend needs CPU tensors, got device {device}; use 'auto', 'reference' or "
                         "'gsplat'")
    if backend == "gsplat" and device.type != "cuda":
        raise ValueError(f"the gsplat backend needs CUDA tensors, got device {device}; use 'auto', 'reference' "
                         "or 'cpu'")
    if backend != "auto":
        return backend
    if device.type == "cuda":
        from ._gsplat import gsplat_status, unsupported_rules  # noqa: PLC0415

        usable = dtype == torch.float32 and not unsupported_rules(rules) and gsplat_status(device)[0]
        return "gsplat" if usable else "reference"
    if device.type == "cpu":
        fn, reason = _load_cpu()
        if fn is not None:
            return "cpu"
        if not _warned_fallback:
            _warned_fallback = True
            warnings.warn(f"gdensify: the cpu rasterizer is unavailable ({reason}); falling back to the slow "
                          "pure-PyTorch reference backend", RuntimeWarning, stacklevel=3)
    return "reference"


# ------------------------------------------------------------------------------------------- public API
def rasterize(
    gaussians: Gaussians,
    cameras: Cameras,
    background: Float[Tensor, "3"] | Float[Tensor, "C 3"] | None = None,
    backend: str = "auto",
    sh_degree: int | None = None,
    *,
    means2d_grad: bool = False,
    rules: RasterRules | None = None,
    projection: str = "auto",
) -> RenderOutput:
    """Render `gaussians` into every camera of `cameras`.

    Args:
        gaussians: N Gaussians (raw parameters; NaN/Inf → ValueError).
        cameras: C pinhole cameras (OpenCV axes, world-to-camera, intrinsics in pixels); same device as the
            Gaussians. Their matrices are cast to the Gaussians' dtype and are not differentiated.
        background: RGB behind the Gaussians, (3,) or (C, 3); None = black. May require grad.
        backend: "auto", "reference", "cpu" or "gsplat" (see the module docstring).
        sh_degree: active SH degree, ≤ the Gaussians' degree; None = all of it.
        means2d_grad: make `out.means2d` differentiable even when the Gaussians are not (a detached leaf), so that a
            backward gives the view-space gradients used for densification without gradients to the Gaussians.
        rules: renderer rules (`RasterRules`); None = `RasterRules()`. gsplat raises ValueError for the rules its
            kernel cannot follow.
        projection: "auto" (C++ for the cpu backend, PyTorch otherwise), "torch" (the PyTorch twin) or "cpp" (the
            C++ projection; CPU tensors, reference or cpu backend). Same results up to float rounding.

    Returns:
        RenderOutput with image (C,H,W,3), alpha (C,H,W,1), depth (C,H,W,1), radii (C,N) int32, means2d (C,N,2).
    """
    if not isinstance(gaussians, Gaussians):
        raise TypeError(f"rasterize needs a Gaussians, got {type(gaussians).__name__}")
    if not isinstance(cameras, Cameras):
        raise TypeError(f"rasterize needs a Cameras, got {type(cameras).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if projection not in PROJECTIONS:
        raise ValueError(f"unknown projection {projection!r}; choose one of {', '.join(PROJECTIONS)}")
    if rules is None:
        rules = DEFAULT_RULES
    elif not isinstance(rules, RasterRules):
        raise TypeError(f"rules must be a RasterRules, got {type(rules).__name__}")
    gaussians.validate()
    device, dtype = gaussians.device, gaussians.dtype
    if cameras.world_to_camera.device != device:
        raise ValueError(f"Gaussians are on {device} but Cameras are on {cameras.world_to_camera.device}")
    if sh_degree is None:
        sh_degree = gaussians.sh_degree
    elif not 0 <= int(sh_degree) <= gaussians.sh_degree:
        raise ValueError(f"sh_degree={sh_degree} but these Gaussians have SH up to degree {gaussians.sh_degree}")
    sh_degree = int(sh_degree)
    num_cams = len(cameras)
    background = _check_background(background, num_cams, dtype, device)
    name = _resolve_backend(backend, device, dtype, rules)

    if name == "gsplat":
        if projection == "cpp":
            raise ValueError("projection='cpp' needs the reference or cpu backend (gsplat projects on CUDA itself)")
        from ._gsplat import rasterize_gsplat  # noqa: PLC0415

        image, alpha, depth, radii, means2d = rasterize_gsplat(gaussians, cameras, background, sh_degree,
                                                               means2d_grad, rules)
        return RenderOutput(_clamp(image, rules), alpha, depth, radii, means2d, name)

    use_cpp = projection == "cpp" or (projection == "auto" and name == "cpu")
    if use_cpp and device.type != "cpu":
        raise ValueError(f"projection='cpp' needs CPU tensors, got device {device}; use projection='torch'")
    composite = composite_reference
    if name == "cpu" or use_cpp:
        composite_cpu, reason = _load_cpu()
        if composite_cpu is None:
            raise RuntimeError(f"the cpu backend is unavailable: {reason}")
        if name == "cpu":
            composite = composite_cpu
    if use_cpp:
        from ._cpu import project_cpu  # noqa: PLC0415

        proj = project_cpu(gaussians, cameras.to(dtype), sh_degree, rules)
    else:
        proj = project(gaussians, cameras.to(dtype), sh_degree, rules)
    means2d = proj.means2d
    if torch.is_grad_enabled():
        if means2d.requires_grad:
            means2d.retain_grad()
        elif means2d_grad:
            means2d = means2d.detach().requires_grad_(True)
    image, alpha, depth = composite(means2d, proj.conics, proj.colors, proj.opacities, proj.depths, proj.radii,
                                    background, cameras.width, cameras.height, rules=rules)
    return RenderOutput(_clamp(image, rules), alpha, depth, proj.radii, means2d, name)


def _clamp(image: Tensor, rules: RasterRules) -> Tensor:
    """The image clamped to [0, 1] when `rules.clamp_image` (zero gradient outside), else unchanged."""
    return image.clamp(0.0, 1.0) if rules.clamp_image else image


def _check_background(background, num_cams: int, dtype, device) -> Tensor:
    """None → zeros (C, 3); (3,) → expanded to (C, 3); anything else → ValueError."""
    if background is None:
        return torch.zeros(num_cams, 3, dtype=dtype, device=device)
    if not isinstance(background, Tensor):
        background = torch.as_tensor(background, dtype=dtype, device=device)
    if background.device != device:
        raise ValueError(f"background is on {background.device} but the Gaussians are on {device}")
    if tuple(background.shape) == (3,):
        background = background[None].expand(num_cams, 3)
    elif tuple(background.shape) != (num_cams, 3):
        raise ValueError(f"background must have shape (3,) or ({num_cams}, 3), got {tuple(background.shape)}")
    if not background.is_floating_point() or not bool(torch.isfinite(background).all()):
        raise ValueError("background must be finite floating point")
    return background.to(dtype).contiguous()

"""The `cpu` backend: C++/OpenMP projection and tile rasterizer behind torch.autograd.Functions.

`composite_cpu` has exactly the signature and semantics of `_reference.composite_reference` (see the render
contract); it is 10-100× faster and its memory is a few bytes per pixel plus ~100 bytes per Gaussian, because the
backward recomputes alphas back to front instead of storing per-(pixel, Gaussian) values.

`project_cpu` is the C++ twin of `projection.project` (same outputs, hand-written backward instead of autograd;
tested against it), the cpu backend's default projection.

The kernels (`gdensify/csrc/rasterize.cpp` and `project.cpp`, with two headers; shipped as package data) are
compiled on first use with `torch.utils.cpp_extension.load` into one library, cached in the torch extensions
directory (`$TORCH_EXTENSIONS_DIR`, default `~/.cache/torch_extensions/pyXY_cpu`) as `gdensify_raster_<hash>.so`,
the hash covering the sources, the compiler flags and the torch version: an edited source rebuilds, and builds for
different instruction sets live side by side. An existing library is loaded directly; a missing one is built in a
private temporary folder and published with an atomic rename, so concurrent processes never wait on a lock (torch's
own lock file is left behind forever when a build is killed, and every later process would then hang).

Compiler flags: `-O3 -fopenmp -ffp-contract=off`, plus `-mavx2 -mfma` when this CPU has AVX2 and FMA (as detected by
PyTorch's own dispatcher, `torch.backends.cpu.get_cpu_capability()`, which `ATEN_CPU_CAPABILITY` can lower). Not
`-march=native`: the extensions cache may be shared between machines (home directories, images, CI caches) and a
cached library is reused whenever the source and flags match, so a native build made on one CPU could crash with an
illegal instruction on another; with the ISA in the flags, and so in the name, each CPU family gets its own build.
The kernel's hand-written SIMD path only needs AVX2+FMA, so -march=native would gain little. `-ffp-contract=off`
keeps the forward's and the backward's recomputation of alpha bit-identical. `GDENSIFY_CPU_SIMD=0` forces the
portable build. The kernel uses torch's own OpenMP runtime and `torch.get_num_threads()` threads.

Threads on a busy machine: with libgomp's default wait policy idle OpenMP threads spin, and when other processes
compete for the cores every parallel region (PyTorch's and this kernel's) can wait a scheduler time slice; on the
2-vCPU VM used for development a 50k-Gaussian render then took ~3.7 s instead of ~0.12 s. Launching with
`OMP_WAIT_POLICY=PASSIVE` (set before torch is imported) avoids this.

Memory: first-touch page faults are expensive on small VMs, so the kernel keeps its large blocks (tile lists,
packed Gaussians, per-thread gradient buffers, outputs) in a small cache instead of returning them to the OS after
every call: at most `GDENSIFY_CPU_POOL_MB` MB of idle blocks (default 512, oldest evicted first; 0 disables it).
`release_cpu_cache()` empties it.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..cameras import Cameras
from ..gaussians import Gaussians
from ..io.staging import owned_temp_prefix, remove_stale
from .projection import Projection, check_composite_inputs, sh_view_origins
from .rules import DEFAULT_RULES, RasterRules

_CSRC = Path(__file__).resolve().parent.parent / "csrc"
_SOURCES = (_CSRC / "rasterize.cpp", _CSRC / "project.cpp")
_HEADERS = (_CSRC / "exp_avx2.h", _CSRC / "pool.h")
_lock = threading.Lock()
# Stage timings (seconds) of the latest call, for profiling: pack_s, bin_s (depth sort + tile lists), forward_s
# (compositing), isects (tile-Gaussian pairs); after a backward also backward_setup_s, backward_s, backward_reduce_s.
last_stats: dict = {}
_module = None
_name: str | None = None  # the loaded build's name (gdensify_raster_<hash of source and flags>)
_error: str | None = None


def _compiler() -> str | None:
    """The C++ compiler torch.utils.cpp_extension will call ($CXX, else c++), if it can be found."""
    cxx = os.environ.get("CXX", "").strip() or "c++"
    exe = cxx.split()[0]
    found = shutil.which(exe)
    if found is None and "CXX" not in os.environ:
        found = shutil.which("g++") or shutil.which("clang++")
        if found is not None:
            os.environ["CXX"] = found  # torch reads $CXX
    return found


def _simd_flags() -> list[str]:
    if os.environ.get("GDENSIFY_CPU_SIMD", "1").strip() in ("0", "false", "no", "off"):
        return []
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    try:
        capability = torch.backends.cpu.get_cpu_capability()  # "AVX2" implies AVX2 + FMA for PyTorch
    except Exception:  # pragma: no cover - very old torch
        return []
    return ["-mavx2", "-mfma"] if capability in ("AVX2", "AVX512") else []


def _build_flags() -> list[str]:
    return ["-O3", "-fopenmp", "-ffp-contract=off", *_simd_flags()]


def _load():
    """Compile (once per source/flags) and import the extension; RuntimeError with the reason otherwise."""
    global _module, _name, _error
    if _module is not None:
        return _module
    with _lock:
        if _module is not None:
            return _module
        missing = [str(src) for src in (*_SOURCES, *_HEADERS) if not src.is_file()]
        if missing:
            raise RuntimeError(f"gdensify cpu backend: kernel source {missing[0]} is missing from the installation")
        if _compiler() is None:
            cxx = os.environ.get("CXX", "c++")
            _error = (f"gdensify cpu backend: no C++ compiler found ({cxx!r} is not on PATH, nor g++/clang++); "
                      "install one (e.g. `apt-get install g++`) or set $CXX, or use backend='reference'")
            raise RuntimeError(_error)
        flags = _build_flags()
        sources = b"".join(src.read_bytes() for src in (*_SOURCES, *_HEADERS))
        digest = hashlib.sha256(sources + " ".join(flags).encode() + torch.__version__.encode())
        name = f"gdensify_raster_{digest.hexdigest()[:16]}"
        try:
            build_dir = _build_directory(name)
            library = build_dir / f"{name}.so"
            if library.is_file():
                torch.ops.load_library(str(library))
            else:
                _build(name, flags, build_dir, library)
            _module = getattr(torch.ops, name)
            _name = name
        except Exception as exc:  # compiler errors, missing headers, ninja problems
            _error = f"gdensify cpu backend: building the C++ extension failed: {exc}"
            raise RuntimeError(_error) from exc
        return _module


def _build_directory(name: str) -> Path:
    """The torch extensions cache folder for `name` ($TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions/pyXY_cpu)."""
    from torch.utils import cpp_extension

    try:
        path = Path(cpp_extension._get_build_directory(name, verbose=False))
    except Exception:  # noqa: BLE001  (private helper; fall back to the public root)
        path = Path(cpp_extension.get_default_build_root()) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _build(name: str, flags: list[str], build_dir: Path, library: Path) -> None:
    """Compile in a private temporary folder (which also loads the library), then publish the .so atomically.

    torch's own scheme builds in the shared folder under a lock file that is never cleaned up when a build is
    killed (every later process then waits forever), so concurrent processes here each build privately and the
    last `os.replace` wins; an existing library is loaded directly, without any lock."""
    from torch.utils import cpp_extension

    print(f"gdensify: compiling the CPU rasterizer into {build_dir} (once; about 1-2 min)...", file=sys.stderr,
          flush=True)
    remove_stale(build_dir, "build", (".build",))  # private folders of killed builds
    tmp = Path(tempfile.mkdtemp(prefix=owned_temp_prefix("build"), suffix=".build", dir=build_dir))
    try:
        # The kernel registers its functions as torch.ops.<name>.* (TORCH_LIBRARY), not as a pybind module: it
        # then needs only light ATen headers and compiles several times faster.
        cpp_extension.load(name=name, sources=[str(src) for src in _SOURCES], extra_cflags=flags,
                           extra_ldflags=["-fopenmp"],
                           build_directory=str(tmp), is_python_module=False, verbose=False)
        os.replace(tmp / f"{name}.so", library)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cpu_backend_available() -> bool:
    """Whether the C++ backend can be used here (compiles it on the first call; never raises)."""
    try:
        _load()
        return True
    except Exception as exc:  # noqa: BLE001
        global _error
        _error = _error or str(exc)
        return False


def cpu_backend_error() -> str | None:
    """Why `cpu_backend_available()` returned False (None when it did not)."""
    return _error


def release_cpu_cache() -> int:
    """Free the kernel's cached idle memory blocks now; returns the number of bytes that were cached."""
    if _module is None:
        return 0
    return int(_module.release_cache())


# Names the backend selector in rasterize.py looks for.
is_available = cpu_backend_available
unavailable_reason = cpu_backend_error


def cpu_backend_simd() -> bool:
    """Whether the loaded kernel uses the AVX2/FMA path (float32 only; float64 always uses the portable path)."""
    return bool(_load().has_avx2())


class _CompositeCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, depths, background, radii, width, height, rules):
        ext = _load()
        num_cams, n = radii.shape
        image, alpha, depth, t_final, n_contrib, offsets, isect, packed, stats = ext.forward(
            means2d.detach().contiguous(), conics.detach().contiguous(), colors.detach().contiguous(),
            opacities.detach().contiguous(), depths.detach().contiguous(), radii.to(torch.int32).contiguous(),
            background.detach().contiguous(), int(width), int(height), rules.tile_rect == "pixel")
        pack_s, bin_s, raster_s, isects = stats.tolist()
        last_stats.clear()
        last_stats.update(pack_s=pack_s, bin_s=bin_s, forward_s=raster_s, isects=int(isects))
        ctx.save_for_backward(background.detach().contiguous(), packed, offsets, isect, t_final, n_contrib)
        ctx.dims = (num_cams, n, int(width), int(height))
        ctx.clamp_grad = rules.alpha_clamp_grad
        ctx.means2d = means2d  # the very tensor object: backward attaches `.absgrad` to it (as gsplat does)
        return image, alpha, depth

    @staticmethod
    @once_differentiable
    def backward(ctx, g_image, g_alpha, g_depth):
        background, packed, offsets, isect, t_final, n_contrib = ctx.saved_tensors
        num_cams, n, width, height = ctx.dims
        dtype = packed.dtype

        def ready(g, shape):
            if g is None:
                return torch.zeros(shape, dtype=dtype)
            return g.to(dtype).contiguous()

        g_image = ready(g_image, (num_cams, height, width, 3))
        g_alpha = ready(g_alpha, (num_cams, height, width, 1))
        g_depth = ready(g_depth, (num_cams, height, width, 1))
        g_means2d, g_conics, g_colors, g_opacities, g_depths, g_background, absgrad, stats = _load().backward(
            g_image, g_alpha, g_depth, background, packed, offsets, isect, t_final, n_contrib,
            num_cams, n, width, height, ctx.clamp_grad)
        zero_s, raster_s, reduce_s = stats.tolist()
        last_stats.update(backward_setup_s=zero_s, backward_s=raster_s, backward_reduce_s=reduce_s)
        needs = ctx.needs_input_grad
        if needs[0]:
            ctx.means2d.absgrad = absgrad
        return (g_means2d if needs[0] else None, g_conics if needs[1] else None, g_colors if needs[2] else None,
                g_opacities if needs[3] else None, g_depths if needs[4] else None,
                g_background if needs[5] else None, None, None, None, None)


def composite_cpu(
    means2d: Float[Tensor, "C N 2"],
    conics: Float[Tensor, "C N 3"],
    colors: Float[Tensor, "C N 3"],
    opacities: Float[Tensor, "C N"],
    depths: Float[Tensor, "C N"],
    radii: Int[Tensor, "C N"],
    background: Float[Tensor, "C 3"] | Float[Tensor, "3"] | None,
    width: int,
    height: int,
    rules: RasterRules | None = None,
) -> tuple[Float[Tensor, "C H W 3"], Float[Tensor, "C H W 1"], Float[Tensor, "C H W 1"]]:
    """Alpha-composite projected Gaussians into C images of `height` × `width` pixels (C++ kernel, CPU only).

    Same contract as `composite_reference`: entries with radius 0 are ignored; `background` is (C, 3), (3,) or None
    (black); returns image = Σ w·colour + T·background, alpha = 1 − T, depth = Σ w·z. Differentiable w.r.t.
    means2d, conics, colors, opacities, depths and background; after backward, `means2d.absgrad` (C, N, 2) holds
    Σ_pixels |per-pixel dL/dmean2d| (pixel units). float32 or float64. `rules` (default `RasterRules()`): only
    `tile_rect` and `alpha_clamp_grad` concern compositing."""
    tensors = {"means2d": means2d, "conics": conics, "colors": colors, "opacities": opacities, "depths": depths,
               "radii": radii}
    if background is not None:
        tensors["background"] = background
    for name, x in tensors.items():
        if x.device.type != "cpu":
            raise ValueError(f"composite_cpu: the cpu backend needs CPU tensors, but {name} is on {x.device}; "
                             "use backend='reference' or 'gsplat' for CUDA tensors")
    dtype = means2d.dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"composite_cpu: float32 or float64 only, got {dtype}")
    for name in ("conics", "colors", "opacities", "depths"):
        if tensors[name].dtype != dtype:
            raise ValueError(f"composite_cpu: {name} is {tensors[name].dtype} but means2d is {dtype}")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"composite_cpu: image size must be positive, got {width}x{height}")
    background = check_composite_inputs("composite_cpu", means2d, conics, colors, opacities, depths, radii,
                                        background)
    return _CompositeCPU.apply(means2d, conics, colors, opacities, depths, background, radii, int(width),
                               int(height), DEFAULT_RULES if rules is None else rules)


# ------------------------------------------------------------------------------------------------ projection
class _ProjectCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, log_scales, sh, w2c, intrinsics, origins, settings):
        width, height, near, far, far_cull, radius_floor, pixel_rect, sh_degree = settings
        inputs = [x.detach().contiguous() for x in (means, quats, log_scales, sh)]
        cams = [x.contiguous() for x in (w2c, intrinsics, origins)]
        means2d, conics, depths, radii, colors = _load().project_forward(
            *inputs, *cams, width, height, near, far, far_cull, radius_floor, pixel_rect, sh_degree)
        ctx.save_for_backward(*inputs, *cams, radii)
        ctx.settings = (width, height, near, far, far_cull, sh_degree)
        ctx.mark_non_differentiable(radii)
        return means2d, conics, depths, radii, colors

    @staticmethod
    @once_differentiable
    def backward(ctx, g_means2d, g_conics, g_depths, _g_radii, g_colors):
        means, quats, log_scales, sh, w2c, intrinsics, origins, radii = ctx.saved_tensors
        width, height, near, far, far_cull, sh_degree = ctx.settings
        num_cams, n = radii.shape
        dtype = means.dtype

        def ready(g, *shape):
            return torch.zeros(shape, dtype=dtype) if g is None else g.to(dtype).contiguous()

        g_means, g_quats, g_log_scales, g_sh = _load().project_backward(
            means, quats, log_scales, sh, w2c, intrinsics, origins, radii, width, height, near, far, far_cull,
            sh_degree, ready(g_means2d, num_cams, n, 2), ready(g_conics, num_cams, n, 3),
            ready(g_depths, num_cams, n), ready(g_colors, num_cams, n, 3))
        needs = ctx.needs_input_grad
        return (g_means if needs[0] else None, g_quats if needs[1] else None, g_log_scales if needs[2] else None,
                g_sh if needs[3] else None, None, None, None, None)


def project_cpu(
    gaussians: Gaussians, cameras: Cameras, sh_degree: int | None = None, rules: RasterRules | None = None,
) -> Projection:
    """The C++ twin of `projection.project`: same arguments, same `Projection` (up to float rounding), CPU tensors
    (float32 or float64) only. Differentiable w.r.t. every Gaussian parameter (not the cameras); the backward is
    hand-written in C++ and recomputes the projection instead of storing it."""
    rules = DEFAULT_RULES if rules is None else rules
    sh_degree = gaussians.sh_degree if sh_degree is None else int(sh_degree)
    if not 0 <= sh_degree <= gaussians.sh_degree:
        raise ValueError(f"sh_degree must be in [0, {gaussians.sh_degree}] for these Gaussians, got {sh_degree}")
    if gaussians.device.type != "cpu" or cameras.world_to_camera.device.type != "cpu":
        raise ValueError(f"project_cpu needs CPU tensors, got Gaussians on {gaussians.device} and Cameras on "
                         f"{cameras.world_to_camera.device}; use projection.project")
    dtype = gaussians.dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"project_cpu: float32 or float64 only, got {dtype}")
    settings = (cameras.width, cameras.height, float(cameras.near), float(cameras.far), bool(rules.far_cull),
                float(rules.radius_floor), rules.tile_rect == "pixel", sh_degree)
    means2d, conics, depths, radii, colors = _ProjectCPU.apply(
        gaussians.means, gaussians.quats, gaussians.log_scales, gaussians.sh, cameras.world_to_camera.to(dtype),
        cameras.intrinsics.to(dtype), sh_view_origins(cameras, rules, dtype), settings)
    opacities = gaussians.opacities[None].expand(len(cameras), len(gaussians))
    return Projection(means2d, conics, depths, radii, colors, opacities)

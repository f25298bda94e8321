"""Renderer part of the GPU check (`benchmarks/gpu_check.sh`): the gsplat backend against the PyTorch reference.

For a few random scenes (scales, opacities, SH degree 1 colours; one OpenCV camera looking at a box of Gaussians)
it renders with `backend="gsplat"` and `backend="reference"` on the same device, and compares the images, alphas
and depths and the gradients of a fixed random-weighted image loss with respect to every Gaussian parameter
(relative: max |Δ| / max |reference|). Then it times forward and forward + backward of both backends (medians,
CUDA-synchronised) for the throughput table. Without gsplat, the comparison is reported as not available and only
the reference is timed. Writes one JSON file.

    python benchmarks/gpu_check.py --device cuda --json render.json
    python benchmarks/gpu_check.py --device cpu --quick          # a smoke run of this script (no gsplat)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import gdensify  # noqa: E402,F401
import torch  # noqa: E402

from gdensify import Cameras, Gaussians  # noqa: E402
from gdensify.render import rasterize  # noqa: E402


def scene(n: int, size: int, device: str, seed: int = 0) -> tuple[Gaussians, Cameras]:
    """n Gaussians in x, y ∈ [−0.5, 0.5], z ∈ [2, 3] before an identity camera with f = 2·size."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g) - torch.tensor([0.5, 0.5, -2.0])
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    log_scales = torch.log(0.01 + 0.02 * torch.rand(n, 3, generator=g))
    opacity_logits = torch.logit(0.05 + 0.9 * torch.rand(n, generator=g))
    sh = 0.3 * torch.randn(n, 4, 3, generator=g)
    k = torch.tensor([[2.0 * size, 0.0, size / 2], [0.0, 2.0 * size, size / 2], [0.0, 0.0, 1.0]])
    cams = Cameras(torch.eye(4)[None], k[None], size, size)
    gs = Gaussians(means, quats, log_scales, opacity_logits, sh)
    return gs.to(device), cams.to(device)


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def render_and_grads(gs: Gaussians, cams: Cameras, backend: str, weights: torch.Tensor):
    leaves = [t.detach().clone().requires_grad_(True) for t in (gs.means, gs.quats, gs.log_scales,
                                                               gs.opacity_logits, gs.sh)]
    out = rasterize(Gaussians(*leaves), cams, background=torch.ones(3, device=gs.means.device), backend=backend)
    (out.image * weights).sum().backward()
    return out, [t.grad for t in leaves]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def compare(n: int, size: int, device: str, backend: str) -> dict:
    gs, cams = scene(n, size, device)
    weights = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(1)).to(device)
    ref, ref_grads = render_and_grads(gs, cams, "reference", weights)
    out, grads = render_and_grads(gs, cams, backend, weights)
    names = ("means", "quats", "log_scales", "opacity_logits", "sh")
    return {"n": n, "size": size,
            "image_max_abs": (out.image - ref.image).abs().max().item(),
            "alpha_max_abs": (out.alpha - ref.alpha).abs().max().item(),
            "depth_max_rel": _rel(out.depth, ref.depth),
            "grad_max_rel": {k: _rel(a, b) for k, a, b in zip(names, grads, ref_grads)}}


def throughput(n: int, size: int, device: str, backend: str, repeats: int) -> dict:
    gs, cams = scene(n, size, device)
    weights = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(1)).to(device)
    fwd, fb = [], []
    for i in range(repeats + 1):
        _sync(device)
        t = time.perf_counter()
        with torch.no_grad():
            rasterize(gs, cams, background=torch.ones(3, device=device), backend=backend)
        _sync(device)
        t1 = time.perf_counter()
        render_and_grads(gs, cams, backend, weights)
        _sync(device)
        t2 = time.perf_counter()
        if i:  # the first round warms up
            fwd.append(t1 - t)
            fb.append(t2 - t1)
    return {"backend": backend, "n": n, "size": size, "forward_s": statistics.median(fwd),
            "forward_backward_s": statistics.median(fb)}


def backend_available(backend: str, device: str) -> tuple[bool, str]:
    if backend != "gsplat":
        return True, f"backend {backend!r}"
    try:
        from gdensify.render._gsplat import gsplat_status
    except ImportError as exc:
        return False, f"gdensify.render._gsplat missing ({exc})"
    return gsplat_status(device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--backend", default="gsplat", help="the backend checked against the reference (cpu on CPU)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small scenes (a smoke run)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available to torch", file=sys.stderr)
        return 2
    ok, reason = backend_available(args.backend, args.device)
    result: dict = {"device": args.device, "torch": torch.__version__, "backend": args.backend, "available": ok,
                    "status": reason,
                    "parity": [], "throughput": []}
    if args.device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name(0)
    parity_cells = [(2_000, 64)] if args.quick else [(10_000, 256), (50_000, 512)]
    speed_cells = [(2_000, 64)] if args.quick else [(50_000, 512), (1_000_000, 1024)]
    name = args.backend
    print(f"{name}: {'available' if ok else 'not available'} ({reason})")
    if ok:
        for n, size in parity_cells:
            r = compare(n, size, args.device, name)
            result["parity"].append(r)
            grads = ", ".join(f"{k} {v:.1e}" for k, v in r["grad_max_rel"].items())
            print(f"{name} vs reference, {n:,} Gaussians at {size}²: image {r['image_max_abs']:.1e}, alpha "
                  f"{r['alpha_max_abs']:.1e}, depth {r['depth_max_rel']:.1e} rel; gradients (max rel) {grads}")
    else:
        print(f"{name} vs reference: not available (gsplat: install the [gpu] extra, pip install -e '.[gpu]')")
    print(f"{'backend':10s} {'Gaussians':>10s} {'size':>6s} {'forward s':>10s} {'fwd+bwd s':>10s}")
    for n, size in speed_cells:
        for backend in ([name] if ok else []) + ["reference"]:
            if backend == "reference" and n > 50_000 and not args.quick:
                continue  # the PyTorch reference is too slow and large there
            r = throughput(n, size, args.device, backend, args.repeats)
            result["throughput"].append(r)
            print(f"{backend:10s} {n:10,d} {size:6d} {r['forward_s']:10.4f} {r['forward_backward_s']:10.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Rasterizer benchmark: the `cpu` (C++) backend against the pure-PyTorch `reference`, through `rasterize`.

Scene (as in the rasterizer research note §3.1): N Gaussians in the box x, y ∈ [−0.5, 0.5], z ∈ [2, 3] in front of
one identity OpenCV camera with f = 2·W (the box's front face fills the image), scales U(0.01, 0.03), random
quaternions, opacity U(0, 1), SH degree 0 colours U(0, 1); float32.

For every (N, resolution, backend) cell a fresh subprocess (threads fixed, default 2) renders once cold, then
times `--runs` warm forward passes (under no_grad) and `--runs` warm forward+backward passes (loss = a fixed
random-weighted sum of the image, gradients to every Gaussian parameter); the table reports medians. Peak memory is
that process's VmHWM (peak RSS) at the end minus its VmHWM just before the first render (after imports, the
extension build/load and the scene construction). Timings are never asserted; the targets are only reported.

    python benchmarks/rasterizer.py                    # full grid: N ∈ {10k, 50k, 200k} × {128², 256², 512²}
    python benchmarks/rasterizer.py --quick            # small grid, seconds (CI smoke)
    python benchmarks/rasterizer.py --reference-limit 50000x256   # skip slow reference cells, marked "skipped"
    python benchmarks/rasterizer.py --profile          # also the cpu backend's stage breakdown
    python benchmarks/rasterizer.py --omp-passive      # OMP_WAIT_POLICY=PASSIVE in the cells (busy machines)
    python benchmarks/rasterizer.py --projection       # C++ projection vs its PyTorch twin, 200k @ 512², 1 thread

`projection_benchmark()` (also importable: `benchmarks/published_models.py` calls it) times forward+backward of
the whole cpu-backend render with the PyTorch projection twin (`projection="torch"`) and with the C++ projection
(`projection="cpp"`, the default), alternating the two in one process.

The header line records the OpenMP wait policy and the load average: on a machine shared with other work, the
default (spinning) policy can make every PyTorch/OpenMP parallel region wait a scheduler time slice.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL_SIZES = [10_000, 50_000, 200_000]
FULL_RES = [128, 256, 512]
QUICK_SIZES = [2_000]
QUICK_RES = [64]
TARGETS = {
    "speedup_50k_256": 20.0,  # cpu ≥ 20× reference, forward+backward, 50k @ 256²
    "cpu_fb_50k_256": 0.21,  # seconds
    "cpu_fb_200k_256": 0.34,  # seconds
    "cpu_mem_200k_512": 1024.0,  # MB
}


# ------------------------------------------------------------------------------------------------ worker
def _hwm_mb() -> float:
    """Peak resident set size of this process so far (MB): VmHWM, else getrusage."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_scene(n: int, res: int, seed: int = 0):
    import torch

    from gdensify import Cameras, Gaussians

    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    means = torch.stack([rand(n) - 0.5, rand(n) - 0.5, 2.0 + rand(n)], dim=-1)
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1)
    log_scales = torch.log(0.01 + 0.02 * rand(n, 3))
    opacity_logits = torch.logit(rand(n).clamp(1e-4, 1 - 1e-4))
    sh_c0 = 0.28209479177387814
    sh = ((rand(n, 3) - 0.5) / sh_c0)[:, None, :]  # degree 0: colour = C0·sh + 0.5 = U(0, 1)
    params = [means, quats, log_scales, opacity_logits, sh]
    f = 2.0 * res
    k = torch.tensor([[f, 0.0, res / 2], [0.0, f, res / 2], [0.0, 0.0, 1.0]])
    cameras = Cameras(torch.eye(4)[None], k[None], res, res)
    weights = torch.randn(1, res, res, 3, generator=gen)
    return params, cameras, weights, Gaussians


def worker(backend: str, n: int, res: int, runs: int, threads: int, profile: bool) -> dict:
    import torch

    torch.set_num_threads(threads)
    from gdensify.render import rasterize

    params, cameras, weights, gaussians_cls = make_scene(n, res)
    if backend == "cpu":
        from gdensify.render import _cpu

        _cpu._load()  # build/load outside the measurements
    leaves = [p.clone().requires_grad_(True) for p in params]

    def forward():
        with torch.no_grad():
            return rasterize(gaussians_cls(*params), cameras, backend=backend).image

    def forward_backward():
        for leaf in leaves:
            leaf.grad = None
        out = rasterize(gaussians_cls(*leaves), cameras, backend=backend)
        (out.image * weights).sum().backward()
        return out

    base = _hwm_mb()
    t = time.perf_counter()
    forward_backward()
    cold = time.perf_counter() - t
    fwd, fb, stages = [], [], []
    for _ in range(runs):
        t = time.perf_counter()
        forward()
        fwd.append(time.perf_counter() - t)
    for _ in range(runs):
        t = time.perf_counter()
        forward_backward()
        fb.append(time.perf_counter() - t)
        if profile and backend == "cpu":
            stages.append(_profile_once(leaves, cameras, weights, gaussians_cls))
    result = {"backend": backend, "n": n, "res": res, "cold_s": cold, "fwd_s": statistics.median(fwd),
              "fb_s": statistics.median(fb), "fwd_min_s": min(fwd), "fb_min_s": min(fb),
              "peak_mb": _hwm_mb() - base, "runs": runs, "threads": threads,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")}
    if backend == "cpu":
        from gdensify.render import _cpu

        result["isects"] = _cpu.last_stats.get("isects")
    if stages:
        result["stages"] = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
    return result


def projection_benchmark(n: int = 200_000, size: int = 512, repeats: int = 5, threads: int = 1) -> dict:
    """Median seconds of one forward+backward of the cpu-backend render (the scene above, float32, loss = a fixed
    random-weighted image sum, gradients to every Gaussian parameter) with the PyTorch projection twin and with the
    C++ projection, measured alternately in this process after one warm-up each; also the projection alone
    (forward, then backward of fixed random output gradients). Prints a table; returns
    {"torch_projection_s": …, "cpp_projection_s": …} (whole render), plus "ratio", "torch_projection_only_s",
    "cpp_projection_only_s", "projection_only_ratio", "n", "size", "threads", "repeats"."""
    import torch

    from gdensify.render import _cpu, project, rasterize

    _cpu._load()
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        params, cameras, weights, gaussians_cls = make_scene(n, size)
        leaves = [p.clone().requires_grad_(True) for p in params]

        def forward_backward(projection: str) -> float:
            for leaf in leaves:
                leaf.grad = None
            t = time.perf_counter()
            out = rasterize(gaussians_cls(*leaves), cameras, backend="cpu", projection=projection)
            (out.image * weights).sum().backward()
            return time.perf_counter() - t

        projectors = {"torch": project, "cpp": _cpu.project_cpu}
        gen = torch.Generator().manual_seed(1)
        out_grads = [torch.randn(1, n, k, generator=gen) for k in (2, 3, 3)] + [torch.randn(1, n, generator=gen)
                                                                                 for _ in range(2)]

        def projection_only(projection: str) -> float:
            for leaf in leaves:
                leaf.grad = None
            t = time.perf_counter()
            proj = projectors[projection](gaussians_cls(*leaves), cameras, 0)
            outputs = [proj.means2d, proj.conics, proj.colors, proj.depths, proj.opacities]
            torch.autograd.backward(outputs, out_grads)
            return time.perf_counter() - t

        times: dict[str, list[float]] = {"torch": [], "cpp": []}
        alone: dict[str, list[float]] = {"torch": [], "cpp": []}
        for projection in times:
            forward_backward(projection)  # warm-up (allocator, caches)
            projection_only(projection)
        for _ in range(repeats):
            for projection in times:
                times[projection].append(forward_backward(projection))
                alone[projection].append(projection_only(projection))
    finally:
        torch.set_num_threads(saved_threads)
    result = {"torch_projection_s": statistics.median(times["torch"]),
              "cpp_projection_s": statistics.median(times["cpp"])}
    ratio = result["torch_projection_s"] / result["cpp_projection_s"]
    only = {"torch_projection_only_s": statistics.median(alone["torch"]),
            "cpp_projection_only_s": statistics.median(alone["cpp"])}
    only_ratio = only["torch_projection_only_s"] / only["cpp_projection_only_s"]
    target = ""
    if (n, size, threads) == (200_000, 512, 1):  # the speed target is set for this cell
        target = f" (target ≥ 2×: {'met' if ratio >= 2 else 'NOT met'})"
    print(f"cpu backend forward+backward, {_fmt_n(n)} Gaussians @ {size}², {threads} thread(s), median of {repeats} "
          f"(alternating), float32, torch {torch.__version__}, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'default')}, load average {_loadavg()}\n\n"
          "| projection | render fwd+bwd s (median) | min s | max s | projection alone fwd+bwd s (median) |\n"
          "|---|---|---|---|---|\n"
          + "".join(f"| {name} | {statistics.median(times[k]):.3f} | {min(times[k]):.3f} | {max(times[k]):.3f} | "
                    f"{statistics.median(alone[k]):.4f} |\n" for name, k in (("PyTorch twin", "torch"),
                                                                             ("C++", "cpp")))
          + f"\nwhole render with the C++ projection: {ratio:.2f}× faster{target}; the projection alone: "
          f"{only_ratio:.1f}× faster", flush=True)
    return {**result, "ratio": ratio, **only, "projection_only_ratio": only_ratio, "n": n, "size": size,
            "threads": threads, "repeats": repeats}


def _profile_once(leaves, cameras, weights, gaussians_cls) -> dict:
    """One forward+backward of the cpu backend split into stages (PyTorch projection, C++ binning, compositing)."""
    import torch

    from gdensify.render import _cpu
    from gdensify.render.projection import project

    for leaf in leaves:
        leaf.grad = None
    t0 = time.perf_counter()
    proj = project(gaussians_cls(*leaves), cameras, 0)
    t1 = time.perf_counter()
    image, _, _ = _cpu.composite_cpu(proj.means2d, proj.conics, proj.colors, proj.opacities, proj.depths,
                                     proj.radii, None, cameras.width, cameras.height)
    t2 = time.perf_counter()
    loss = (image * weights).sum()
    # backward of the compositing alone, then of the projection
    grads = torch.autograd.grad(loss, [proj.means2d, proj.conics, proj.colors, proj.opacities], retain_graph=True)
    t3 = time.perf_counter()
    torch.autograd.backward([proj.means2d, proj.conics, proj.colors, proj.opacities], grads)
    t4 = time.perf_counter()
    s = _cpu.last_stats
    return {"projection_fwd": t1 - t0, "composite_fwd_total": t2 - t1, "pack": s["pack_s"], "bin": s["bin_s"],
            "raster_fwd": s["forward_s"], "composite_bwd_total": t3 - t2, "raster_bwd": s["backward_s"],
            "bwd_setup": s["backward_setup_s"], "bwd_reduce": s["backward_reduce_s"], "projection_bwd": t4 - t3}


# ------------------------------------------------------------------------------------------------ driver
def _run_cell(backend, n, res, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", backend, str(n), str(res),
           "--runs", str(args.runs), "--threads", str(args.threads)]
    if args.profile:
        cmd.append("--profile")
    env = dict(os.environ)
    if args.omp_passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH", "")]))
    res_ = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    lines = [ln for ln in res_.stdout.splitlines() if ln.startswith("{")]
    if res_.returncode != 0 or not lines:
        tail = (res_.stderr or res_.stdout).strip().splitlines()[-3:]
        return {"backend": backend, "n": n, "res": res, "error": " / ".join(tail) or f"exit {res_.returncode}"}
    return json.loads(lines[-1])


def _run_in_process(backend, n, res, args) -> dict:
    result = worker(backend, n, res, args.runs, args.threads, args.profile)
    if not args.memory:
        result["peak_mb"] = None
    return result


def _parse_limit(text: str | None):
    if not text:
        return None
    n, _, res = text.lower().partition("x")
    return int(float(n)), int(res or 10**9)


def _fmt_count(x) -> str:
    if x is None:
        return "—"
    return f"{x / 1e6:.2f}M" if x >= 1e5 else f"{x / 1e3:.1f}k" if x >= 1e3 else str(int(x))


def _fmt_n(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _cell(r: dict | None, key: str, fmt: str) -> str:
    if r is None:
        return "—"
    if r.get("skipped"):
        return "skipped"
    if "error" in r:
        return "error"
    v = r.get(key)
    return "n/a" if v is None else format(v, fmt)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small grid for a CI smoke run")
    p.add_argument("--backends", default="cpu,reference", help="comma list (cpu, reference)")
    p.add_argument("--sizes", default=None, help="comma list of Gaussian counts (default 10000,50000,200000)")
    p.add_argument("--res", default=None, help="comma list of square resolutions (default 128,256,512)")
    p.add_argument("--runs", type=int, default=5, help="warm runs per measurement (median reported)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--reference-limit", default=None, metavar="NxRES",
                   help="skip reference cells with N > this or resolution > RES (e.g. 50000x256)")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="run every cell in this process (faster; no peak-memory column)")
    p.add_argument("--profile", action="store_true", help="also print the cpu backend's stage breakdown")
    p.add_argument("--omp-passive", action="store_true",
                   help="run the cells with OMP_WAIT_POLICY=PASSIVE (idle OpenMP threads sleep instead of spinning; "
                        "much faster when other processes compete for the cores)")
    p.add_argument("--projection", action="store_true",
                   help="only run projection_benchmark (C++ projection vs its PyTorch twin); --sizes, --res, "
                        "--runs, --threads (default 1 here) pick N, the resolution, the repeats and the threads")
    p.add_argument("--json", default=None, help="also write the raw results to this file")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per cell")
    p.add_argument("--_worker", nargs=3, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._worker:
        backend, n, res = args._worker
        print(json.dumps(worker(backend, int(n), int(res), args.runs, args.threads, args.profile)), flush=True)
        return []

    if args.projection:
        n = int(float(args.sizes.split(",")[0])) if args.sizes else 200_000
        size = int(args.res.split(",")[0]) if args.res else 512
        threads = args.threads if "--threads" in (argv if argv is not None else sys.argv) else 1
        result = projection_benchmark(n, size, args.runs, threads)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
        return [result]

    default_sizes = QUICK_SIZES if args.quick else FULL_SIZES
    sizes = [int(float(x)) for x in args.sizes.split(",")] if args.sizes else default_sizes
    resolutions = [int(x) for x in args.res.split(",")] if args.res else (QUICK_RES if args.quick else FULL_RES)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in ("cpu", "reference"):
            p.error(f"unknown backend {b!r}")
    limit = _parse_limit(args.reference_limit)

    results = []
    load_before = _loadavg()
    for n in sizes:
        for res in resolutions:
            for backend in backends:
                if backend == "reference" and limit and (n > limit[0] or res > limit[1]):
                    results.append({"backend": backend, "n": n, "res": res, "skipped": True})
                    continue
                run_cell = _run_cell if args.memory else _run_in_process
                r = run_cell(backend, n, res, args)
                results.append(r)
                print(f"  measured {backend:9s} N={n:>7} {res}²: " + (
                    f"fwd {r['fwd_s']:.3f} s, fwd+bwd {r['fb_s']:.3f} s" if "fb_s" in r else r.get("error", "")),
                    file=sys.stderr, flush=True)

    print(render_table(results, backends, args, load_before, _loadavg()))
    if args.profile:
        print(render_profile(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


def _loadavg() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def render_table(results: list[dict], backends: list[str], args, load_before="n/a", load_after="n/a") -> str:
    by = {(r["backend"], r["n"], r["res"]): r for r in results}
    import torch

    policy = "PASSIVE" if args.omp_passive and args.memory else os.environ.get("OMP_WAIT_POLICY", "default")
    lines = [f"Rasterizer benchmark — {args.threads} threads, median of {args.runs} warm runs, float32, "
             f"torch {torch.__version__}, {os.cpu_count()} CPUs, OMP_WAIT_POLICY={policy}, load average "
             f"{load_before} before / {load_after} after; times in seconds, peak = peak RSS increase (MB)", ""]
    head = ["N", "res"]
    if "cpu" in backends:
        head += ["isects", "cpu fwd", "cpu fwd+bwd", "cpu peak MB"]
    if "reference" in backends:
        head += ["ref fwd", "ref fwd+bwd", "ref peak MB"]
    if "cpu" in backends and "reference" in backends:
        head += ["speed-up fwd", "speed-up fwd+bwd"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    cells = sorted({(r["n"], r["res"]) for r in results})
    for n, res in cells:
        c, ref = by.get(("cpu", n, res)), by.get(("reference", n, res))
        row = [_fmt_n(n), f"{res}²"]
        if "cpu" in backends:
            isects = c.get("isects") if c else None
            row += [_fmt_count(isects), _cell(c, "fwd_s", ".3f"), _cell(c, "fb_s", ".3f"),
                    _cell(c, "peak_mb", ".0f")]
        if "reference" in backends:
            row += [_cell(ref, "fwd_s", ".3f"), _cell(ref, "fb_s", ".3f"), _cell(ref, "peak_mb", ".0f")]
        if "cpu" in backends and "reference" in backends:
            for key in ("fwd_s", "fb_s"):
                if c and ref and key in c and key in ref:
                    row.append(f"{ref[key] / c[key]:.1f}×")
                else:
                    row.append("skipped" if ref and ref.get("skipped") else "—")
        lines.append("| " + " | ".join(row) + " |")

    def get(backend, n, res, key):
        r = by.get((backend, n, res))
        return None if r is None or key not in r or r[key] is None else r[key]

    lines += ["", "Targets (2 cores):"]
    c_fb, r_fb = get("cpu", 50_000, 256, "fb_s"), get("reference", 50_000, 256, "fb_s")
    lines.append(_target(f"cpu ≥ {TARGETS['speedup_50k_256']:.0f}× faster than reference, fwd+bwd, 50k @ 256²",
                         None if c_fb is None or r_fb is None else r_fb / c_fb,
                         lambda v: v >= TARGETS["speedup_50k_256"], "{:.1f}×"))
    lines.append(_target(f"cpu fwd+bwd ≤ {TARGETS['cpu_fb_50k_256']} s at 50k @ 256²", c_fb,
                         lambda v: v <= TARGETS["cpu_fb_50k_256"], "{:.3f} s"))
    v = get("cpu", 200_000, 256, "fb_s")
    lines.append(_target(f"cpu fwd+bwd ≤ {TARGETS['cpu_fb_200k_256']} s at 200k @ 256²", v,
                         lambda x: x <= TARGETS["cpu_fb_200k_256"], "{:.3f} s"))
    v = get("cpu", 200_000, 512, "peak_mb")
    lines.append(_target("cpu peak memory < 1 GB at 200k @ 512²", v, lambda x: x < TARGETS["cpu_mem_200k_512"],
                         "{:.0f} MB"))
    return "\n".join(lines)


def _target(text, value, ok, fmt) -> str:
    if value is None:
        return f"- {text}: not measured"
    return f"- {text}: {fmt.format(value)} — {'met' if ok(value) else 'NOT met'}"


def render_profile(results: list[dict]) -> str:
    rows = [r for r in results if r.get("backend") == "cpu" and "stages" in r]
    if not rows:
        return ""
    keys = list(rows[0]["stages"])
    lines = ["", "cpu backend stages (median seconds of one forward+backward):", "",
             "| N | res | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 2)]
    for r in rows:
        lines.append(f"| {_fmt_n(r['n'])} | {r['res']}² | " + " | ".join(f"{r['stages'][k]:.4f}" for k in keys)
                     + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

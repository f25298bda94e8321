"""Benchmark of the paper_object Generative Densifier: forward and forward+backward time and peak memory for
N selected points ∈ {3k, 6k, 12k, 24k} on CPU (and CUDA when available). Prints a Markdown table.

    python benchmarks/densifier.py                 # CPU (+ CUDA if available), median of 3 runs
    python benchmarks/densifier.py --devices cpu --sizes 3000 6000 --repeats 1

Inputs: one object; the N selected coarse Gaussians sit one per voxel of the 64³ grid of [-0.5, 0.5]³, jittered
inside their cell, on a sphere shell two voxels thick whose radius grows with √N (so the point density, hence the
sparse-convolution neighbourhood, is the same for every N; 24k points give a radius of ≈ 0.48). 160-dim random
features. Forward: `eval()` under `torch.no_grad()`; forward+backward: `train()` (drop-path, curve shuffle) and
the backward of a scalar of all outputs.

Every (device, mode, N) runs in its own subprocess: one warm-up run at 1,000 points, then the timed runs (median
of `--repeats`, 3 by default; wall time and process CPU time of all threads). Peak memory is the growth of the
process's peak RSS during the timed runs over its value after the warm-up (weights, inputs and the interpreter
excluded); on CUDA, `max_memory_allocated` over the allocated memory after the warm-up. A float32 matmul probe
(GFLOP/s, the smaller of one before and one after the timed runs) shows how much of the machine the worker got.

By default the workers run with glibc told to keep freed memory (``--allocator retain``): with the stock settings
every large tensor is returned to the OS and re-faulted on the next run, which on a small VM costs seconds of
system time per run and grows faster than N. ``--allocator default`` measures the stock behaviour.
Cost must grow about linearly: the table prints t(2N)/t(N), which should be ≤ 2.3.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

SIZES = (3_000, 6_000, 12_000, 24_000)


def make_points(n: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    radius = math.sqrt(n / (2 * 64 * 64 * 4 * math.pi))
    idx = torch.stack(torch.meshgrid(*[torch.arange(64)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centres = (idx + 0.5) / 64 - 0.5
    dist = (centres.norm(dim=-1) - radius).abs()
    nearest = torch.argsort(dist, stable=True)[:n]
    pts = centres[nearest] + (torch.rand(n, 3, generator=g) - 0.5) / 64
    feats = torch.randn(n, 160, generator=g)
    return pts, feats


def _peak_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def matmul_gflops(device) -> float:
    """A 4096×1024×1024 float32 product, best of 5: how much of the machine this process gets right now."""
    import torch

    a = torch.randn(4096, 1024, device=device)
    w = torch.randn(1024, 1024, device=device)
    best = float("inf")
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ w
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * 4096 * 1024 * 1024 / best / 1e9


def worker(device_name: str, n: int, mode: str, repeats: int, warmup: int) -> dict:
    import torch

    from gdensify.densify import DensifierConfig, GenerativeDensifier

    device = torch.device(device_name)
    torch.manual_seed(0)
    model = GenerativeDensifier(DensifierConfig.preset("paper_object")).to(device)
    pts, feats = make_points(n)
    pts, feats = pts.to(device), feats.to(device)
    batch = torch.zeros(n, dtype=torch.long, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run(x, f, b):
        if mode == "forward":
            model.eval()
            with torch.no_grad():
                res = model(x, f, b)
            return len(res)
        model.train()
        gen = torch.Generator(device=device).manual_seed(0)
        res = model(x, f, b, generator=gen)
        g = res.gaussians
        loss = g.means.sum() + g.sh.square().mean() + g.opacity_logits.mean() + g.log_scales.mean() + g.quats.mean()
        loss.backward()
        model.zero_grad(set_to_none=True)
        return len(res)

    if warmup:
        wx, wf = make_points(warmup, seed=1)
        run(wx.to(device), wf.to(device), torch.zeros(warmup, dtype=torch.long, device=device))
        sync()
    gflops_before = matmul_gflops(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _peak_bytes(device)
    times, cpu_times, fine = [], [], 0
    for _ in range(repeats):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        fine = run(pts, feats, batch)
        sync()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    peak = _peak_bytes(device) - base
    gflops = min(gflops_before, matmul_gflops(device))
    return {"gflops": gflops, "device": device_name, "n": n, "mode": mode, "times": times,
            "median_s": statistics.median(times), "cpu_times": cpu_times,
            "median_cpu_s": statistics.median(cpu_times), "peak_mib": peak / 2**20, "fine": fine,
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    parser.add_argument("--modes", nargs="+", default=["forward", "forward+backward"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1000, help="points of the warm-up run (0: none)")
    parser.add_argument("--allocator", choices=["retain", "default"], default="retain",
                        help="retain: glibc keeps freed memory (GLIBC_TUNABLES mmap_max=0, no trimming), so repeated "
                             "runs do not re-fault GBs of pages; default: glibc as configured")
    parser.add_argument("--json", default=None, help="also write the raw results to this file")
    parser.add_argument("--worker", nargs=3, metavar=("DEVICE", "N", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        device, n, mode = args.worker
        print(json.dumps(worker(device, int(n), mode, args.repeats, args.warmup)))
        return

    import torch

    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# paper_object densifier benchmark — torch {torch.__version__}, {platform.processor() or 'cpu'}, "
          f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, load average {load:.1f}, "
          f"allocator {args.allocator}, {args.repeats} runs per point")
    if "cuda" in devices:
        print(f"# CUDA device: {torch.cuda.get_device_name(0)}")
    results = []
    for device in devices:
        for mode in args.modes:
            for n in args.sizes:
                cmd = [sys.executable, __file__, "--worker", device, str(n), mode, "--repeats", str(args.repeats),
                       "--warmup", str(args.warmup)]
                env = dict(os.environ)
                if args.allocator == "retain":
                    env["GLIBC_TUNABLES"] = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
                out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    print(f"# {device} {mode} N={n} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results.append(r)
                print(f"#   {device:4s} {mode:16s} N={n:6d}: {r['median_s']:.3f} s "
                      f"(runs {', '.join(f'{t:.2f}' for t in r['times'])}), peak {r['peak_mib']:.0f} MiB, "
                      f"matmul {r['gflops']:.0f} GFLOP/s",
                      flush=True)

    print()
    print("| device | mode | N selected | fine Gaussians | median wall time (s) | × per doubling | "
          "median process CPU time (s) | × per doubling | peak memory (MiB) | matmul GFLOP/s at the time |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    worst = 0.0
    for device in devices:
        for mode in args.modes:
            rows = sorted((r for r in results if r["device"] == device and r["mode"] == mode), key=lambda r: r["n"])
            prev = None
            for r in rows:
                ratio = cpu_ratio = ""
                if prev is not None and r["n"] == 2 * prev["n"]:
                    q = r["median_s"] / prev["median_s"]
                    worst = max(worst, q)
                    ratio = f"{q:.2f}"
                    cpu_ratio = f"{r['median_cpu_s'] / prev['median_cpu_s']:.2f}"
                print(f"| {device} | {mode} | {r['n']:,} | {r['fine']:,} | {r['median_s']:.3f} | {ratio} | "
                      f"{r['median_cpu_s']:.2f} | {cpu_ratio} | {r['peak_mib']:.0f} | {r['gflops']:.0f} |")
                prev = r
    if worst:
        verdict = "OK" if worst <= 2.3 else "ABOVE the 2.3 limit"
        print(f"\nlargest wall-time growth per doubling of N: {worst:.2f}× ({verdict}). On a shared machine a "
              "time is only meaningful if the matmul probe (the smaller of a probe before and after the runs) "
              "stayed at the same level for every row.")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()

"""Shared by `object_quality.py` and `scene_quality.py`: the quality table (GD fine vs its coarse render, random
selection, a coarse-only model, the background-only image) and the forward cost of one item per preset, each
measured in a fresh subprocess (peak memory = VmHWM increase over the forward calls)."""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Iterable, Sequence


def hwm_mb() -> float:
    """Peak resident set size of this process so far (MB), from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def time_forward(model, batch, runs: int) -> dict:
    """Median eval-mode forward time, peak memory increase and Gaussian counts of one batch."""
    import torch

    model.eval()
    before = hwm_mb()
    times, out = [], None
    for _ in range(runs):
        start = time.perf_counter()
        with torch.no_grad():
            out = model(batch)
        times.append(time.perf_counter() - start)
    from gdensify.evaluation.evaluate import gaussian_counts

    return {"params": sum(p.numel() for p in model.parameters()), "seconds": statistics.median(times),
            "runs": runs, "peak_mb": hwm_mb() - before, **gaussian_counts(out)}


def cost_table(script: str, presets: Iterable[str], runs: dict[str, int], threads: int) -> str:
    """Runs `script --cost-worker PRESET --runs N` per preset and tabulates its JSON line."""
    from gdensify.evaluation.evaluate import COUNTS_HEADER, format_counts

    rows = [f"| preset | parameters | input | {COUNTS_HEADER} | forward (s) | peak memory (MB) |",
            "|---|---|---|---|---|---|"]
    for preset in presets:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        cmd = [sys.executable, script, "--cost-worker", preset, "--runs", str(runs.get(preset, 1))]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output"
            rows.append(f"| {preset} | failed: {last} | | | | |")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(f"| {preset} | {r['params']:,} | {r['input']} | {format_counts(r)} | "
                    f"{r['seconds']:.2f} (median of {r['runs']}) | {r['peak_mb']:.0f} |")
    return "\n".join(rows)


def evaluate_checkpoint(path: str, selection: str | None, examples: Callable[..., Sequence], data: str,
                        limit: int | None, label: str) -> dict:
    """`summarize` of the model at `path` (selection method overridden when given) on `examples(model,
    checkpoint, data)`, the first `limit` of them."""
    from gdensify.evaluation.evaluate import evaluate, summarize
    from gdensify.models.loading import load_model

    model, checkpoint = load_model(path, overrides=[f"selection.method={selection}"] if selection else ())
    items = examples(model, checkpoint, data)
    n = len(items) if limit is None else min(limit, len(items))
    return summarize(evaluate(model, (items[i] for i in range(n)), total=n, progress=False), label)


def quality_table(evaluate_checkpoint: Callable[[str, str | None], dict], gd: str, coarse_only: str | None,
                  label: str, target: float) -> str:
    """`evaluate_checkpoint(path, selection)` → a `summarize` dict. Prints GD (gradient / random selection),
    its coarse render, the coarse-only model and the background-only image."""
    gradient, random = evaluate_checkpoint(gd, None), evaluate_checkpoint(gd, "random")
    base = evaluate_checkpoint(coarse_only, None) if coarse_only else None

    def f(v, d=2):
        return "—" if v is None else f"{v:.{d}f}"

    from gdensify.evaluation.evaluate import COUNTS_HEADER, format_counts

    lines = [f"Held-out {label}: {gradient[f'n_{label}']}; LPIPS: {gradient['lpips_status']}", "",
             f"| model / render | PSNR | SSIM | {COUNTS_HEADER} (mean per item) |", "|---|---|---|---|",
             f"| GD, fine (gradient selection) | {f(gradient['psnr_fine'])} | {f(gradient['ssim_fine'], 4)} | "
             f"{format_counts(gradient)} |",
             f"| GD, fine (random selection) | {f(random['psnr_fine'])} | {f(random['ssim_fine'], 4)} | "
             f"{format_counts(random)} |",
             f"| GD, coarse render (same forward) | {f(gradient['psnr_coarse'])} | {f(gradient['ssim_coarse'], 4)} | "
             f"{format_counts(gradient)} |"]
    if base:
        lines.append(f"| coarse-only model, same budget | {f(base['psnr_coarse'])} | {f(base['ssim_coarse'], 4)} | "
                     f"{format_counts(base)} |")
    lines.append(f"| background colour only | {f(gradient['psnr_background'])} | — | — |")
    lines += ["", f"GD fine − GD coarse: {gradient['psnr_fine'] - gradient['psnr_coarse']:+.2f} dB "
              f"(target ≥ +{target}); gradient − random selection: "
              f"{gradient['psnr_fine'] - random['psnr_fine']:+.2f} dB (target ≥ 0)"]
    if base:
        lines[-1] += (f"; GD fine − coarse-only model: {gradient['psnr_fine'] - base['psnr_coarse']:+.2f} dB "
                      f"(target ≥ +{target})")
    return "\n".join(lines)


def main(doc: str, script: str, cost_worker: Callable[[str, int], dict], examples: Callable[..., Sequence],
         label: str, target: float) -> None:
    """The command line shared by the two quality benchmarks; `examples(model, checkpoint, data)` gives the
    held-out items."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gd", help="GD model.safetensors")
    parser.add_argument("--coarse-only", help="coarse-only model.safetensors trained with the same budget")
    parser.add_argument("--data", help="held-out data (see above)")
    parser.add_argument("--limit", type=int, default=None, help=f"at most this many {label}")
    parser.add_argument("--cost-only", action="store_true")
    parser.add_argument("--presets", nargs="+", default=["tiny", "paper"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cost-worker", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cost_worker:
        print(json.dumps(cost_worker(args.cost_worker, args.runs)))
        return
    if not args.cost_only:
        if not (args.gd and args.data):
            parser.error("--gd and --data are needed (or --cost-only)")
        run = functools.partial(evaluate_checkpoint, examples=examples, data=args.data, limit=args.limit,
                                label=label)
        print(quality_table(run, args.gd, args.coarse_only, label, target))
        print()
    print(f"Forward cost of one item ({label[:-1]}), CPU, {args.threads} threads, random weights:")
    print(cost_table(script, args.presets, {"tiny": 3, "paper": 1}, args.threads))

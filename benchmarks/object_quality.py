"""Object-level quality and cost benchmark. Prints Markdown tables; asserts nothing.

Quality, on held-out generated objects (never seen in training), with the evaluation protocol of `gdensify eval`
(4 spread train-split inputs, every test-split view as a target, white background):
  * GD model, fine render (gradient selection) and coarse render of the same forward pass;
  * the same GD model with random instead of gradient selection (fine render);
  * a coarse-only model trained with the same budget (steps, batch, schedule);
  * the trivial image (background colour everywhere).
Cost: forward time and peak memory of one object for the `tiny` and `paper` presets (random weights) on CPU,
each in a fresh subprocess (peak = VmHWM increase over the forward calls).

    python benchmarks/object_quality.py --gd outputs/tiny/model.safetensors \\
        --coarse-only outputs/tiny_coarse/model.safetensors --data data/objects/heldout
    python benchmarks/object_quality.py --cost-only          # only the forward time / memory table
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


def _hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def cost_worker(preset: str, runs: int) -> dict:
    """One object (4 views at the preset's resolution) through a randomly initialised model, eval mode."""
    import torch

    from gdensify.builtin_scene import orbit_cameras
    from gdensify.data.batch import ViewBatch, ViewExample
    from gdensify.models.object_gd import ObjectGD, ObjectGDConfig

    torch.manual_seed(0)
    model = ObjectGD(ObjectGDConfig.preset(preset)).eval()
    size = model.config.backbone.image_size
    cams = orbit_cameras(4, size, size)
    g = torch.Generator().manual_seed(0)
    example = ViewExample(torch.rand(4, size, size, 3, generator=g), cams, torch.rand(1, size, size, 3, generator=g),
                          cams[:1], torch.ones(1, 3), "random")
    batch = ViewBatch.collate([example])
    before = _hwm_mb()
    times, out = [], None
    for _ in range(runs):
        start = time.perf_counter()
        with torch.no_grad():
            out = model(batch)
        times.append(time.perf_counter() - start)
    return {"preset": preset, "params": sum(p.numel() for p in model.parameters()), "resolution": size,
            "seconds": statistics.median(times), "runs": runs, "peak_mb": _hwm_mb() - before,
            "n_coarse": len(out.coarse[0]), "n_fine": len(out.fine[0])}


def cost_table(presets: list[str], runs: dict[str, int], threads: int) -> str:
    rows = ["| preset | parameters | input | coarse → fine Gaussians | forward (s) | peak memory (MB) |",
            "|---|---|---|---|---|---|"]
    for preset in presets:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        cmd = [sys.executable, __file__, "--cost-worker", preset, "--runs", str(runs[preset])]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            rows.append(f"| {preset} | failed: {done.stderr.strip().splitlines()[-1] if done.stderr else '?'} |")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(f"| {preset} | {r['params']:,} | 4 × {r['resolution']}² | {r['n_coarse']:,} → {r['n_fine']:,} | "
                    f"{r['seconds']:.2f} (median of {r['runs']}) | {r['peak_mb']:.0f} |")
    return "\n".join(rows)


def quality_table(gd: str, coarse_only: str | None, data: str, limit: int | None) -> str:
    import torch

    from gdensify.data.object_dataset import ObjectEvaluationDataset
    from gdensify.evaluation.evaluate import evaluate, summarize
    from gdensify.models.loading import load_model

    def run(path: str, selection: str | None = None) -> dict:
        model, _ = load_model(path, "object")
        if selection:
            model.config.selection.method = selection
        dataset = ObjectEvaluationDataset(data, model.config.backbone.image_size)
        n = len(dataset) if limit is None else min(limit, len(dataset))
        rows = evaluate(model, (dataset[i] for i in range(n)), total=n, progress=False)
        return summarize(rows, "objects")

    torch.manual_seed(0)
    gradient, random = run(gd), run(gd, "random")
    base = run(coarse_only) if coarse_only else None

    def f(v, d=2):
        return "—" if v is None else f"{v:.{d}f}"

    lines = [f"Held-out objects: {gradient['n_objects']} ({data}); LPIPS: {gradient['lpips_status']}", "",
             "| model / render | PSNR | SSIM | Gaussians |", "|---|---|---|---|",
             f"| GD, fine (gradient selection) | {f(gradient['psnr_fine'])} | {f(gradient['ssim_fine'], 4)} | "
             f"{gradient['n_fine']:,.0f} |",
             f"| GD, fine (random selection) | {f(random['psnr_fine'])} | {f(random['ssim_fine'], 4)} | "
             f"{random['n_fine']:,.0f} |",
             f"| GD, coarse (same forward) | {f(gradient['psnr_coarse'])} | {f(gradient['ssim_coarse'], 4)} | "
             f"{gradient['n_coarse']:,.0f} |"]
    if base:
        lines.append(f"| coarse-only model, same budget | {f(base['psnr_coarse'])} | {f(base['ssim_coarse'], 4)} | "
                     f"{base['n_coarse']:,.0f} |")
    lines.append(f"| background only | {f(gradient['psnr_background'])} | — | 0 |")
    lines += ["", "Differences (dB): fine − coarse (same model) "
              f"{gradient['psnr_fine'] - gradient['psnr_coarse']:+.2f} (target ≥ +0.5); gradient − random selection "
              f"{gradient['psnr_fine'] - random['psnr_fine']:+.2f} (target ≥ 0)"]
    if base:
        lines[-1] += f"; GD fine − coarse-only model {gradient['psnr_fine'] - base['psnr_coarse']:+.2f} (target ≥ +0.5)"
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gd", help="GD model.safetensors")
    parser.add_argument("--coarse-only", help="coarse-only model.safetensors trained with the same budget")
    parser.add_argument("--data", help="held-out Blender-layout objects")
    parser.add_argument("--limit", type=int, default=None, help="at most this many objects")
    parser.add_argument("--cost-only", action="store_true")
    parser.add_argument("--presets", nargs="+", default=["tiny", "paper"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cost-worker", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cost_worker:
        print(json.dumps(cost_worker(args.cost_worker, args.runs or 1)))
        return
    if not args.cost_only:
        if not (args.gd and args.data):
            parser.error("--gd and --data are needed (or --cost-only)")
        print(quality_table(args.gd, args.coarse_only, args.data, args.limit))
        print()
    print(f"Forward cost of one object, CPU, {args.threads} threads, random weights:")
    print(cost_table(args.presets, {"tiny": 3, "paper": 1}, args.threads))


if __name__ == "__main__":
    if not Path("/proc/self/status").exists():
        sys.exit("this benchmark reads peak memory from /proc/self/status (Linux)")
    main()

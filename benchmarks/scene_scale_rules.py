"""Which rule recovers a scene's scale robustly? Measured on generated scenes (`gdensify make-data scenes` rooms).

The scene model only works at the scale it was trained at, so `gdensify.data.formats.scenes` rescales a user's
capture by REFERENCE[rule] / statistic(rule). For each rule this script
  1. measures REFERENCE: the median statistic over context pairs of generated scenes (seed 0, default
     `SceneGenConfig`, context gaps drawn uniformly in 10..30 frames as the scene training sampler does);
  2. measures robustness on other scenes (seed 1): each scene's world is multiplied by a known factor k
     (0.1, 1, 10) and the rule's estimated scale s is compared with the true 1/k; the error factor is
     exp(|log(s·k)|) (1 = exact);
  3. prints a Markdown table (median, 90th percentile and maximum error factor per rule and k);
  4. with --model CHECKPOINT: the scene model's PSNR on a few seed-1 scenes rendered at 64² and written 0.25×,
     1× and 4× too large, read as they are (scale 1) and rescaled automatically (`capture_to_scene_example`,
     depth rule, automatic context pair and targets).
Sparse points are simulated as SfM would give them: surface points hit by rays through 64 random pixels of every
frame; LLFF-style bounds are the 0.1 / 99.9 percentiles of a 32×32 grid of z-depths per frame (LLFF's percentiles).

    python benchmarks/scene_scale_rules.py [--scenes 64] [--pairs 4] [--model src/gdensify/assets/scene_tiny.safetensors]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from gdensify.cameras import Cameras
from PIL import Image

from gdensify.data.formats import Capture, CaptureFrame, capture_to_scene_example
from gdensify.data.formats.scenes import SCALE_RULES, scale_statistic
from gdensify.synthetic.scenes import SceneGenConfig, _scene_rng, render_views, sample_scene, trace


def _scene_data(seed: int, index: int, cfg: SceneGenConfig, rng: np.random.Generator):
    scene, c2w, normalized = sample_scene(_scene_rng(seed, index), cfg)
    v = len(c2w)
    k = np.zeros((v, 3, 3))
    k[:, 0, 0], k[:, 1, 1] = normalized[:, 0] * cfg.width, normalized[:, 1] * cfg.height
    k[:, 0, 2], k[:, 1, 2], k[:, 2, 2] = normalized[:, 2] * cfg.width, normalized[:, 3] * cfg.height, 1.0
    points, bounds = [], []
    for f in range(v):
        o = c2w[f, :3, 3]
        kinv = np.linalg.inv(k[f])
        for kind, (uu, vv) in (("points", (rng.uniform(0, cfg.width, 64), rng.uniform(0, cfg.height, 64))),
                               ("bounds", np.meshgrid(np.linspace(0.5, cfg.width - 0.5, 32),
                                                      np.linspace(0.5, cfg.height - 0.5, 32)))):
            d_cam = kinv @ np.stack([uu.ravel(), vv.ravel(), np.ones(uu.size)])
            d_cam /= np.linalg.norm(d_cam, axis=0)
            d = c2w[f, :3, :3] @ d_cam
            t = trace(scene, o, d[0].astype(np.float32), d[1].astype(np.float32), d[2].astype(np.float32),
                      details=False).t.astype(np.float64)
            if kind == "points":
                points.append((o[:, None] + d * t).T)
            else:
                z = t * d_cam[2]
                bounds.append([np.percentile(z, 0.1), np.percentile(z, 99.9)])
    cams = Cameras(torch.from_numpy(np.linalg.inv(c2w)), torch.from_numpy(k), cfg.width, cfg.height)
    return cams, torch.from_numpy(np.concatenate(points)), torch.tensor(bounds, dtype=torch.float64)


def _scaled(cams: Cameras, points: torch.Tensor, bounds: torch.Tensor, k: float):
    w2c = cams.world_to_camera.clone()
    w2c[:, :3, 3] *= k
    return Cameras(w2c, cams.intrinsics, cams.width, cams.height), points * k, bounds * k


def _pairs(v: int, count: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    out = []
    for _ in range(count):
        gap = int(rng.integers(10, min(30, v - 1) + 1))
        i = int(rng.integers(0, v - gap))
        out.append((i, i + gap))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=4, help="context pairs per scene")
    parser.add_argument("--model", default=None, help="a scene checkpoint: also measure the model's PSNR")
    parser.add_argument("--model-scenes", type=int, default=4)
    args = parser.parse_args()
    cfg = SceneGenConfig()
    rng = np.random.default_rng(0)
    ref_stats = {r: [] for r in SCALE_RULES}
    for i in range(args.scenes):
        cams, pts, bnd = _scene_data(0, i, cfg, rng)
        for pair in _pairs(len(cams), args.pairs, rng):
            for r in SCALE_RULES:
                ref_stats[r].append(scale_statistic(r, cams, pair, pts, bnd))
    reference = {r: float(np.median(v)) for r, v in ref_stats.items()}
    print("REFERENCE (seed 0, %d scenes x %d pairs): %s" % (args.scenes, args.pairs,
          {r: round(v, 4) for r, v in reference.items()}))
    print("training baseline / depth ratio: %.4f" % (reference["baseline"] / reference["depth"]))
    errors = {(r, k): [] for r in SCALE_RULES for k in (0.1, 1.0, 10.0)}
    for i in range(args.scenes):
        cams, pts, bnd = _scene_data(1, i, cfg, rng)
        for pair in _pairs(len(cams), args.pairs, rng):
            for k in (0.1, 1.0, 10.0):
                c, p, b = _scaled(cams, pts, bnd, k)
                for r in SCALE_RULES:
                    s = reference[r] / scale_statistic(r, c, pair, p, b)
                    errors[(r, k)].append(math.exp(abs(math.log(s * k))))
    print()
    print("| rule | true scale k | pairs | median error factor | 90th percentile | max |")
    print("|---|---|---|---|---|---|")
    for r in SCALE_RULES:
        for k in (0.1, 1.0, 10.0):
            e = np.array(errors[(r, k)])
            print(f"| {r} | {k:g} | {len(e)} | {np.median(e):.3f} | {np.percentile(e, 90):.3f} | {e.max():.3f} |")
    if args.model:
        model_check(args.model, args.model_scenes)


def model_check(checkpoint: str, count: int) -> None:
    from gdensify.evaluation.evaluate import evaluate_example
    from gdensify.models.loading import load_model

    model, _ = load_model(checkpoint, "scene")
    cfg = SceneGenConfig(width=64, height=64)
    rng = np.random.default_rng(2)
    scales = (0.25, 1.0, 4.0)
    psnr = {(k, how): [] for k in scales for how in ("as written", "rescaled")}
    chosen = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(count):
            cams, pts, _ = _scene_data(1, i, cfg, rng)
            c2w = cams.camera_to_world.numpy()
            images, _, _ = render_views(sample_scene(_scene_rng(1, i), cfg)[0], c2w, cams.intrinsics.numpy(), 64, 64)
            frames = []
            for f, im in enumerate(images):
                path = Path(tmp) / f"s{i}_{f:03d}.png"
                Image.fromarray(np.round(im * 255).astype(np.uint8)).save(path)
                frames.append(CaptureFrame(path.name, path))
            for k in scales:
                c, p, _ = _scaled(cams, pts, torch.zeros(len(cams), 2), k)
                cap = Capture(c, frames, "colmap", Path(tmp) / f"scene{i}", p)
                for how, scale in (("as written", 1.0), ("rescaled", None)):
                    ex = capture_to_scene_example(cap, image_size=64, scene_scale=scale)
                    chosen[(i, k, how)] = ex.scale * k
                    row = evaluate_example(model, ex.example, None, torch.Generator().manual_seed(0)).row
                    psnr[(k, how)].append(row["psnr_fine"])
    print()
    print(f"scene model {checkpoint}: PSNR (fine) over {count} scenes at 64², automatic context and targets")
    print()
    print("| written at k × true scale | read as written | rescaled (depth rule) | rescaled / true scale (median) |")
    print("|---|---|---|---|")
    for k in scales:
        ratio = np.median([chosen[(i, k, "rescaled")] for i in range(count)])
        print(f"| {k:g} | {np.mean(psnr[(k, 'as written')]):.2f} dB | {np.mean(psnr[(k, 'rescaled')]):.2f} dB | "
              f"{ratio:.3f} |")


if __name__ == "__main__":
    main()

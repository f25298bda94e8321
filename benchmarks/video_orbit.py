"""Timing of an orbit video on the CPU: 120 frames at 512² of a reconstructed object (the shipped object model's
fine.ply of the first shipped sample object unless --ply is given). Prints a Markdown table.

    python benchmarks/video_orbit.py [--ply FINE.ply [--coarse COARSE.ply]] [--frames 120] [--size 512]

Rows: rendering the frames alone (cpu backend, one camera at a time), encoding those frames to mp4 (libx264 via
imageio-ffmpeg) and the whole `render_orbit_video` call; with a coarse set as well, the coarse | GD side-by-side
video. Wall times of one run each, with the machine's torch thread count.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from gdensify.io import load_ply
from gdensify.io.video import orbit_around, render_frames, render_orbit_video, write_video


def _reconstruct_sample(folder: Path) -> tuple[Path, Path]:
    from gdensify.assets import sample_data
    from gdensify.cli import main

    data = sorted(p for p in sample_data("object").iterdir() if p.is_dir())[0]
    if main(["reconstruct", "--data", str(data), "--out", str(folder), "--no-progress"]) != 0:
        raise SystemExit("reconstruct failed")
    item = next(p for p in folder.iterdir() if (p / "fine.ply").is_file())
    return item / "fine.ply", item / "coarse.ply"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ply", default=None)
    parser.add_argument("--coarse", default=None)
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.ply is None:
            fine_path, coarse_path = _reconstruct_sample(tmp / "recon")
        else:
            fine_path, coarse_path = Path(args.ply), Path(args.coarse) if args.coarse else None
        fine = load_ply(fine_path)
        coarse = load_ply(coarse_path) if coarse_path is not None else None
        cams = orbit_around(fine, args.frames, args.size, args.size)
        list(render_frames(fine, cams[:1], backend="cpu", progress=False))  # build/load the kernel, warm up

        rows = []
        start = time.perf_counter()
        frames = list(render_frames(fine, cams, backend="cpu", progress=False))
        rows.append(("render frames (GD)", time.perf_counter() - start))
        start = time.perf_counter()
        write_video(frames, tmp / "encode.mp4", fps=30)
        rows.append(("encode mp4", time.perf_counter() - start))
        start = time.perf_counter()
        render_orbit_video([fine], None, cams, tmp / "gd.mp4", backend="cpu", progress=False)
        rows.append(("render_orbit_video (GD)", time.perf_counter() - start))
        if coarse is not None:
            start = time.perf_counter()
            render_orbit_video([coarse, fine], ["coarse", "GD"], cams, tmp / "both.mp4", backend="cpu",
                               progress=False)
            rows.append(("render_orbit_video (coarse | GD)", time.perf_counter() - start))
        size_mb = (tmp / "gd.mp4").stat().st_size / 1e6

    print(f"{args.frames} frames at {args.size}², GD {len(fine):,} Gaussians"
          + (f", coarse {len(coarse):,}" if coarse is not None else "")
          + f"; torch threads {torch.get_num_threads()}; GD mp4 {size_mb:.2f} MB")
    print("| step | wall s | frames/s |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} | {args.frames / seconds:.1f} |")


if __name__ == "__main__":
    main()

"""Reconstruct objects or scenes with a trained model: `.ply` files, comparison images and metrics.

Per item, in `OUT/<name>/`:
    coarse.ply, fine.ply    the backbone's Gaussians and the densified set (objects: in the dataset's own units
                            and frame; scenes: in the chunk's world frame)
    comparison.png          one row per target view (up to 4): nearest input | coarse | GD (fine) | ground truth
Objects: the evaluation protocol's 4 spread train views are the inputs and the test split's views (the train
split's when there is no test split) the targets. Scenes: the evaluation index's context and target frames.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .cameras import Cameras
from .data.batch import ViewExample
from .evaluation.evaluate import evaluate_example
from .evaluation.metrics import load_lpips_vgg
from .gaussians import Gaussians
from .io import save_ply, save_png, side_by_side
from .io.video import orbit_around, render_orbit_video
from .render.camera_paths import interpolate


def _fit_height(image: torch.Tensor, height: int) -> torch.Tensor:
    if image.shape[0] == height:
        return image
    width = round(image.shape[1] * height / image.shape[0])
    x = image.permute(2, 0, 1)[None]
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)[0] \
        .permute(1, 2, 0).clamp(0, 1)


def comparison_image(example: ViewExample, coarse: torch.Tensor, fine: torch.Tensor | None, nearest: list[int],
                     max_rows: int = 4) -> torch.Tensor:
    """Rows (nearest input | coarse | GD | truth) for up to `max_rows` evenly spaced target views."""
    v = len(example.target_cameras)
    rows_shown = min(v, max_rows)
    picks = sorted({round(i * (v - 1) / max(1, rows_shown - 1)) for i in range(rows_shown)})
    h = example.target_images.shape[1]
    rows = []
    for t in picks:
        cells = [_fit_height(example.input_images[nearest[t]].cpu(), h), coarse[t]]
        cells += [fine[t]] if fine is not None else []
        rows.append(side_by_side(cells + [example.target_images[t].cpu()]))
    gap = torch.ones(4, rows[0].shape[1], 3)
    return torch.cat([x for r in rows for x in (r, gap)][:-1])


def scene_up(cameras: Cameras) -> torch.Tensor:
    """The world's up direction as the input cameras see it: minus their mean image-y axis (OpenCV y points down)."""
    y_axes = cameras.camera_to_world[:, :3, 1].double()
    up = -y_axes.mean(dim=0)
    return up / up.norm().clamp_min(1e-12)


def video_cameras(inputs: Cameras, object_centric: bool, gaussians: Gaussians, frames: int,
                  size: int | None = None) -> Cameras:
    """The camera path of an item's video, in the model's frame: an orbit around the object (up as the input
    cameras see it; `size`² frames, default 256), or for scenes a smooth path through the input cameras (SLERP
    rotations, spline positions; frames `size` wide, default the inputs' resolution: pixel-aligned Gaussians
    leave gaps at finer resolutions)."""
    if object_centric:
        return orbit_around(gaussians, frames, size or 256, size or 256, up=scene_up(inputs).tolist())
    path = interpolate(inputs, frames)
    return path if size is None else path.resized(size, round(size * inputs.height / inputs.width))


def reconstruct_examples(model: nn.Module, examples: Iterable[ViewExample], out_dir: str | os.PathLike,
                         nearest: Callable[[Cameras, Cameras], list[int]], total: int | None = None,
                         progress: bool = True, video_frames: int = 0, video_size: int | None = None,
                         object_centric: bool = True, precision: str = "fp32") -> list[dict[str, Any]]:
    """Every example through the model: `.ply` files (in the dataset's frame: `example.to_dataset_frame`), a
    comparison image and the metric row (`evaluate_example`) per item; with `video_frames`, also `video.mp4`
    (coarse | GD side by side along `video_cameras`; a GIF without imageio-ffmpeg)."""
    out_dir = Path(out_dir)
    lpips_model = load_lpips_vgg()
    device = next(model.parameters()).device
    rows = []
    for i, example in enumerate(tqdm(examples, total=total, desc="reconstruct", unit="item", disable=not progress)):
        to_output_frame = example.to_dataset_frame or (lambda g: g)
        result = evaluate_example(model, example, lpips_model, torch.Generator(device).manual_seed(i), precision)
        target, out = out_dir / example.name, result.reconstruction
        for which, sets in (("coarse", out.coarse), ("fine", out.fine)):
            if sets is not None:
                save_ply(to_output_frame(sets[0].to(device="cpu", dtype=torch.float32)), target / f"{which}.ply")
        fine = result.renders["fine"]
        image = comparison_image(example, result.renders["coarse"].cpu(), None if fine is None else fine.cpu(),
                                 nearest(example.input_cameras, example.target_cameras))
        save_png(image, target / "comparison.png")
        if video_frames and out.fine is not None:
            sets = [g.detach().to(device="cpu", dtype=torch.float32) for g in (out.coarse[0], out.fine[0])]
            path = video_cameras(example.input_cameras.to("cpu"), object_centric, sets[1], video_frames, video_size)
            bg = example.target_backgrounds[0].tolist()
            render_orbit_video(sets, ["coarse", "GD"], path, target / "video.mp4", background=bg,
                               progress=False, overwrite=True)
        rows.append(result.row)
    return rows

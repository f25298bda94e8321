"""Reconstruct Blender-layout objects with a trained model: `.ply` files, comparison images and metrics.

Per object folder, in `OUT/<name>/`:
    coarse.ply, fine.ply    the backbone's Gaussians and the densified set, in the dataset's own units and frame
    comparison.png          one row per target view: nearest input | coarse | GD (fine) | ground truth
The inputs are the evaluation protocol's 4 spread train views (`gdensify.data.protocol`); targets are the test
split's views (the train split's when there is no test split).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .cameras import Cameras
from .data import blender_splits, find_blender_objects
from .data.batch import ViewExample
from .data.protocol import evaluation_views
from .evaluation.evaluate import evaluate_example
from .evaluation.metrics import load_lpips_vgg
from .io import save_ply, save_png, side_by_side


def _nearest_input(inputs: Cameras, targets: Cameras) -> list[int]:
    """For every target camera, the input camera with the closest viewing direction (towards the origin)."""
    a = F.normalize(inputs.centers.double(), dim=-1)
    b = F.normalize(targets.centers.double(), dim=-1)
    return (b @ a.T).argmax(dim=1).tolist()


def _fit_height(image: torch.Tensor, height: int) -> torch.Tensor:
    if image.shape[0] == height:
        return image
    width = round(image.shape[1] * height / image.shape[0])
    x = image.permute(2, 0, 1)[None]
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)[0] \
        .permute(1, 2, 0).clamp(0, 1)


def comparison_image(example: ViewExample, coarse: torch.Tensor, fine: torch.Tensor | None,
                     max_rows: int = 4) -> torch.Tensor:
    """Rows (nearest input | coarse | GD | truth) for up to `max_rows` evenly spaced target views."""
    v = len(example.target_cameras)
    picks = sorted({round(i * (v - 1) / max(1, max_rows - 1)) for i in range(min(v, max_rows))})
    nearest = _nearest_input(example.input_cameras, example.target_cameras)
    rows = []
    for t in picks:
        h = example.target_images.shape[1]
        cells = [_fit_height(example.input_images[nearest[t]], h), coarse[t]]
        cells += [fine[t]] if fine is not None else []
        rows.append(side_by_side(cells + [example.target_images[t]]))
    gap = torch.ones(4, rows[0].shape[1], 3)
    return torch.cat([x for r in rows for x in (r, gap)][:-1])


def reconstruct_objects(model: nn.Module, data: str | os.PathLike, out_dir: str | os.PathLike,
                        resolution: int, n_inputs: int = 4, background: Sequence[float] = (1.0, 1.0, 1.0),
                        progress: bool = True) -> list[dict[str, Any]]:
    """Reconstruct every object under `data` into `out_dir`; returns the per-object metric rows."""
    out_dir = Path(out_dir)
    lpips_model = load_lpips_vgg()
    device = next(model.parameters()).device
    rows = []
    for i, folder in enumerate(tqdm(find_blender_objects(data), desc="reconstruct", unit="obj",
                                    disable=not progress)):
        target_split = "test" if "test" in blender_splits(folder) else "train"
        ev = evaluation_views(folder, n_inputs, resolution, background, target_split=target_split)
        bg = torch.tensor([float(c) for c in background])
        example = ViewExample(ev.inputs.images, ev.inputs.cameras, ev.targets.images, ev.targets.cameras,
                              bg.expand(len(ev.targets), 3).clone(), ev.name, bg)
        result = evaluate_example(model, example, lpips_model, torch.Generator(device).manual_seed(i))
        target, out = out_dir / ev.name, result.reconstruction
        for which, sets in (("coarse", out.coarse), ("fine", out.fine)):
            if sets is not None:
                gaussians = sets[0].to(device="cpu", dtype=torch.float32)
                save_ply(ev.normalization.invert_gaussians(gaussians), target / f"{which}.ply")
        fine = result.renders["fine"]
        save_png(comparison_image(example, result.renders["coarse"].cpu(), None if fine is None else fine.cpu()),
                 target / "comparison.png")
        rows.append(result.row)
    return rows

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
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .cameras import Cameras
from .data.batch import ViewExample
from .data.blender_objects import BlenderDataConfig, BlenderObjects
from .data.re10k_scenes import RE10KDataConfig, RE10KScenes
from .evaluation.evaluate import evaluate_example
from .evaluation.metrics import load_lpips_vgg
from .gaussians import Gaussians
from .io import save_ply, save_png, side_by_side


def nearest_by_direction(inputs: Cameras, targets: Cameras) -> list[int]:
    """For every target camera, the input camera with the closest viewing direction towards the origin (objects)."""
    a = F.normalize(inputs.centers.double(), dim=-1)
    b = F.normalize(targets.centers.double(), dim=-1)
    return (b @ a.T).argmax(dim=1).tolist()


def nearest_by_position(inputs: Cameras, targets: Cameras) -> list[int]:
    """For every target camera, the input camera with the closest centre (scenes)."""
    return torch.cdist(targets.centers.double(), inputs.centers.double()).argmin(dim=1).tolist()


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


def reconstruct_examples(model: nn.Module, examples: Iterable[tuple[ViewExample, Callable[[Gaussians], Gaussians]]],
                         out_dir: str | os.PathLike, nearest: Callable[[Cameras, Cameras], list[int]],
                         total: int | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Every (example, to_output_frame) through the model: `.ply` files (moved by `to_output_frame`), a comparison
    image and the metric row (`evaluate_example`) per item."""
    out_dir = Path(out_dir)
    lpips_model = load_lpips_vgg()
    device = next(model.parameters()).device
    rows = []
    for i, (example, to_output_frame) in enumerate(tqdm(examples, total=total, desc="reconstruct", unit="item",
                                                        disable=not progress)):
        result = evaluate_example(model, example, lpips_model, torch.Generator(device).manual_seed(i))
        target, out = out_dir / example.name, result.reconstruction
        for which, sets in (("coarse", out.coarse), ("fine", out.fine)):
            if sets is not None:
                save_ply(to_output_frame(sets[0].to(device="cpu", dtype=torch.float32)), target / f"{which}.ply")
        fine = result.renders["fine"]
        image = comparison_image(example, result.renders["coarse"].cpu(), None if fine is None else fine.cpu(),
                                 nearest(example.input_cameras, example.target_cameras))
        save_png(image, target / "comparison.png")
        rows.append(result.row)
    return rows


def object_examples(data: str | os.PathLike, resolution: int, n_inputs: int = 4,
                    background: Sequence[float] = (1.0, 1.0, 1.0)):
    """(example, back-to-dataset-frame) per Blender-layout object under `data` (the evaluation protocol)."""
    config = BlenderDataConfig(root=str(data), n_inputs=n_inputs, background=tuple(background))
    for example in BlenderObjects(config, resolution).evaluation_examples():
        yield example, example.to_dataset_frame


def scene_examples(data: str | os.PathLike, index: str | os.PathLike | None = None, image_size: int = 64,
                   near: float = 1.0, far: float = 100.0):
    """(example, identity) per entry of the evaluation index of the RE10K-layout root `data` (test split)."""
    config = RE10KDataConfig(root=str(data), image_size=image_size, near=near, far=far,
                             index=None if index is None else str(index))
    for example in RE10KScenes(config).evaluation_examples():
        yield example, _identity


def _identity(gaussians: Gaussians) -> Gaussians:
    return gaussians

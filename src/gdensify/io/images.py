"""PNG output of rendered images (float [0, 1], shape (H, W, 3) or (H, W, 1)), written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .atomic import atomic_path


def to_uint8(image: torch.Tensor) -> np.ndarray:
    image = image.detach().to("cpu", torch.float32)
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an image of shape (H, W, 1|3|4), got {tuple(image.shape)}")
    if image.shape[-1] == 1:
        image = image.expand(*image.shape[:2], 3)
    return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def save_png(image: torch.Tensor, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(image)).save(tmp, format="PNG")
    return path


def side_by_side(images: Sequence[torch.Tensor], gap: int = 4, gap_value: float = 1.0) -> torch.Tensor:
    """Concatenate same-height (H, W, 3) images horizontally with a `gap`-pixel separator."""
    h = images[0].shape[0]
    if any(im.shape[0] != h for im in images):
        raise ValueError("side_by_side needs images of one height")
    sep = torch.full((h, gap, 3), gap_value)
    parts = []
    for i, im in enumerate(images):
        im = im.detach().cpu().float()
        parts.append(im.expand(*im.shape[:2], 3) if im.shape[-1] == 1 else im)
        if i + 1 < len(images):
            parts.append(sep)
    return torch.cat(parts, dim=1)

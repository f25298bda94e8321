"""Shims: what turns a stored frame into a model input without breaking its camera (MVSplat's `shims/`).

  * `crop_transform` / `CropTransform`: resize to cover the output shape, then centre crop (MVSplat's
    `crop_shim`), with the intrinsics following the pixels exactly (``intrinsics_mode="exact"``) or as MVSplat
    computes them (``"mvsplat"``: the principal point left unchanged, off by half a pixel when the crop removes an
    odd number of pixels);
  * `flip_views`: the left-right mirror augmentation of images and cameras.
Intrinsics here are normalized (fx/W, fy/H, cx/W, cy/H) with pixel centres at +0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from PIL import Image
from torch import Tensor

__all__ = ["IntrinsicsMode", "CropTransform", "crop_transform", "flip_views"]

IntrinsicsMode = Literal["exact", "mvsplat"]


@dataclass(frozen=True)
class CropTransform:
    """Resize (in_hw -> scaled_hw) then centre crop (offset row, col) to out_hw, in (height, width) order.

    Continuous pixel coordinates (pixel centres at +0.5) map as ``u' = u·w_s/w_in - col``,
    ``v' = v·h_s/h_in - row`` (Pillow's resize aligns the image edges)."""

    in_hw: tuple[int, int]
    scaled_hw: tuple[int, int]
    offset: tuple[int, int]
    out_hw: tuple[int, int]

    @property
    def resizes(self) -> bool:
        return self.scaled_hw != self.in_hw

    def map_pixels(self, uv: Tensor) -> Tensor:
        """Pixel coordinates (..., 2) in the input image -> in the output image."""
        scale = uv.new_tensor([self.scaled_hw[1] / self.in_hw[1], self.scaled_hw[0] / self.in_hw[0]])
        offset = uv.new_tensor([self.offset[1], self.offset[0]])
        return uv * scale - offset

    def map_normalized_intrinsics(self, normalized: Tensor, mode: IntrinsicsMode = "exact") -> Tensor:
        """Normalized (fx/W, fy/H, cx/W, cy/H) of the input -> of the output image."""
        (h_s, w_s), (row, col), (h_o, w_o) = self.scaled_hw, self.offset, self.out_hw
        out = normalized.clone()
        out[..., 0] = normalized[..., 0] * w_s / w_o
        out[..., 1] = normalized[..., 1] * h_s / h_o
        if mode == "exact":
            out[..., 2] = (normalized[..., 2] * w_s - col) / w_o
            out[..., 3] = (normalized[..., 3] * h_s - row) / h_o
        elif mode != "mvsplat":
            raise ValueError(f"intrinsics_mode must be 'exact' or 'mvsplat', got {mode!r}")
        return out

    def apply(self, image: Image.Image) -> Image.Image:
        if image.size != (self.in_hw[1], self.in_hw[0]):
            raise ValueError(f"image is {image.size[0]}x{image.size[1]}, transform expects "
                             f"{self.in_hw[1]}x{self.in_hw[0]}")
        if self.resizes:
            image = image.resize((self.scaled_hw[1], self.scaled_hw[0]), Image.LANCZOS)
        (row, col), (h, w) = self.offset, self.out_hw
        if (row, col) != (0, 0) or self.scaled_hw != self.out_hw:
            image = image.crop((col, row, col + w, row + h))
        return image


def crop_transform(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> CropTransform:
    """MVSplat's rescale-and-centre-crop geometry for an input of `in_hw` and an output of `out_hw` (H, W)."""
    (h_in, w_in), (h_out, w_out) = (int(in_hw[0]), int(in_hw[1])), (int(out_hw[0]), int(out_hw[1]))
    if min(h_in, w_in, h_out, w_out) <= 0:
        raise ValueError(f"image shapes must be positive, got {in_hw} -> {out_hw}")
    scale = max(h_out / h_in, w_out / w_in)
    h_s, w_s = max(h_out, round(h_in * scale)), max(w_out, round(w_in * scale))
    return CropTransform((h_in, w_in), (h_s, w_s), ((h_s - h_out) // 2, (w_s - w_out) // 2), (h_out, w_out))


def flip_views(images: Tensor, world_to_camera: Tensor, normalized: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mirror images left-right and the world in x (MVSplat's augmentation, with the exact cx' = 1 - cx).

    w2c' = F·w2c·F with F = diag(-1, 1, 1, 1): the camera sees the mirrored world as the mirrored image."""
    f = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=world_to_camera.dtype))
    norm = normalized.clone()
    norm[..., 2] = 1.0 - normalized[..., 2]
    return images.flip(-2), f @ world_to_camera @ f, norm

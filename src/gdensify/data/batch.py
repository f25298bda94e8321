"""`ViewExample` (what every dataset returns) and `ViewBatch` (what every model consumes): posed input views plus
supervision/target views, per item."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians


@dataclass
class ViewExample:
    """One object or scene: V_in input views and V_t target views (images float32 in [0, 1]).

    input_indices / target_indices: the views' frame numbers in their source split or sequence (None: unknown).
    to_dataset_frame: maps Gaussians from the frame the cameras are given in back to the dataset's own units and
    frame (objects are normalised, `blender.SceneNormalization`); None: the frames are the same."""

    input_images: Float[Tensor, "view h w 3"]
    input_cameras: Cameras
    target_images: Float[Tensor, "view h w 3"]
    target_cameras: Cameras
    target_backgrounds: Float[Tensor, "view 3"]
    name: str
    input_background: Float[Tensor, "3"] | None = None
    input_indices: Int[Tensor, " view"] | None = None
    target_indices: Int[Tensor, " view"] | None = None
    to_dataset_frame: Callable[[Gaussians], Gaussians] | None = None

    def __post_init__(self) -> None:
        vi, vt = len(self.input_cameras), len(self.target_cameras)
        if self.input_images.ndim != 4 or self.input_images.shape[0] != vi or self.input_images.shape[-1] != 3:
            raise ValueError(f"{self.name}: input_images must be ({vi}, H, W, 3), got {tuple(self.input_images.shape)}")
        if self.target_images.ndim != 4 or self.target_images.shape[0] != vt or self.target_images.shape[-1] != 3:
            raise ValueError(f"{self.name}: target_images must be ({vt}, H, W, 3), got "
                             f"{tuple(self.target_images.shape)}")
        if tuple(self.target_backgrounds.shape) != (vt, 3):
            raise ValueError(f"{self.name}: target_backgrounds must be ({vt}, 3)")
        if self.input_background is None:
            self.input_background = torch.ones(3)


@dataclass
class ViewBatch:
    """B examples with equal view counts and image sizes (stacked images, per-item cameras)."""

    input_images: Float[Tensor, "batch view h w 3"]
    input_cameras: list[Cameras]
    target_images: Float[Tensor, "batch view h w 3"]
    target_cameras: list[Cameras]
    target_backgrounds: Float[Tensor, "batch view 3"]
    input_backgrounds: Float[Tensor, "batch 3"]
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def input_world_to_camera(self) -> Float[Tensor, "batch view 4 4"]:
        """The input cameras' OpenCV world-to-camera matrices, batched."""
        return torch.stack([c.world_to_camera for c in self.input_cameras])

    @property
    def input_intrinsics(self) -> Float[Tensor, "batch view 3 3"]:
        """The input cameras' intrinsics in pixels of `input_images` (pixel centres at +0.5), batched."""
        return torch.stack([c.intrinsics for c in self.input_cameras])

    @property
    def input_near_far(self) -> Float[Tensor, "batch 2"]:
        """Each item's input (near, far) depth range."""
        return self.input_images.new_tensor([[c.near, c.far] for c in self.input_cameras])

    @staticmethod
    def collate(examples: Sequence[ViewExample]) -> "ViewBatch":
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        return ViewBatch(torch.stack([e.input_images for e in examples]), [e.input_cameras for e in examples],
                         torch.stack([e.target_images for e in examples]), [e.target_cameras for e in examples],
                         torch.stack([e.target_backgrounds for e in examples]),
                         torch.stack([e.input_background for e in examples]), [e.name for e in examples])

    def to(self, device: torch.device | str) -> "ViewBatch":
        return ViewBatch(self.input_images.to(device), [c.to(device) for c in self.input_cameras],
                         self.target_images.to(device), [c.to(device) for c in self.target_cameras],
                         self.target_backgrounds.to(device), self.input_backgrounds.to(device), self.names)

"""Differentiable Gaussian rasterization: one public `rasterize(...)` over three backends.

- `reference`: pure PyTorch, the test oracle (`_reference.py`);
- `cpu`: C++/OpenMP kernel compiled on first use (`_cpu.py`);
- `gsplat`: gsplat on CUDA, optional (`_gsplat.py`).

`projection.project` (EWA projection) is shared by `reference` and `cpu`.
"""

from ._reference import composite_reference
from .projection import Projection, project, tile_rect
from .rasterize import BACKENDS, RenderOutput, available_backends, means2d_grad_to_ndc, rasterize

__all__ = [
    "BACKENDS",
    "Projection",
    "RenderOutput",
    "available_backends",
    "composite_reference",
    "means2d_grad_to_ndc",
    "project",
    "rasterize",
    "tile_rect",
]

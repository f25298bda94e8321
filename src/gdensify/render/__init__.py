"""Differentiable Gaussian rasterization: one public `rasterize(...)` over three backends.

- `reference`: pure PyTorch, the test oracle (`_reference.py`);
- `cpu`: C++/OpenMP kernel compiled on first use (`_cpu.py`);
- `gsplat`: gsplat on CUDA, optional (`_gsplat.py`).

`projection.project` (EWA projection, PyTorch) is the reference backend's projection and the twin of the C++
projection the cpu backend uses by default. `RasterRules` selects gdensify's or the Inria CUDA kernel's rules.
"""

from ._reference import composite_reference
from .projection import Projection, project, tile_rect
from .rasterize import BACKENDS, RenderOutput, available_backends, means2d_grad_to_ndc, rasterize
from .rules import RasterRules

__all__ = [
    "BACKENDS",
    "Projection",
    "RasterRules",
    "RenderOutput",
    "available_backends",
    "composite_reference",
    "means2d_grad_to_ndc",
    "project",
    "rasterize",
    "tile_rect",
]

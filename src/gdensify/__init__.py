"""gdensify: Generative Densification for feed-forward 3D Gaussian reconstruction, on CPU and GPU."""

from .cameras import Cameras
from .gaussians import Gaussians

__version__ = "0.1.0"
__all__ = ["Cameras", "Gaussians", "__version__"]

"""gdensify: Generative Densification for feed-forward 3D Gaussian reconstruction, on CPU and GPU."""

from .runtime import set_default_wait_policy as _set_default_wait_policy

_set_default_wait_policy()  # before torch is imported: OpenMP reads OMP_WAIT_POLICY once, when it loads

from .cameras import Cameras  # noqa: E402
from .gaussians import Gaussians  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Cameras", "Gaussians", "__version__"]

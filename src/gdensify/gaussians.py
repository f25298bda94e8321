"""The `Gaussians` container: one set of 3D Gaussians with raw (pre-activation) parameters.

Conventions (fixed for the whole library):
- `quats` are wxyz and stored raw; `rotations` normalises them.
- `log_scales` are natural logs of the per-axis standard deviations (world units); `scales` exponentiates.
- `opacity_logits` are pre-sigmoid; `opacities` applies the sigmoid.
- `sh` has shape (N, K, 3) with K = (degree + 1)², coefficient-major, RGB innermost; colour = SH·basis + 0.5,
  clamped at 0 (see `gdensify.sh`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor


def sh_degree_from_coeffs(num_coeffs: int) -> int:
    """Degree d such that (d + 1)² == num_coeffs; ValueError otherwise."""
    degree = math.isqrt(num_coeffs) - 1
    if degree < 0 or (degree + 1) ** 2 != num_coeffs:
        raise ValueError(f"SH coefficient count {num_coeffs} is not a square (d+1)^2")
    return degree


@dataclass
class Gaussians:
    """N Gaussians. All tensors share one floating dtype and one device."""

    means: Float[Tensor, "N 3"]
    quats: Float[Tensor, "N 4"]
    log_scales: Float[Tensor, "N 3"]
    opacity_logits: Float[Tensor, " N"]
    sh: Float[Tensor, "N K 3"]

    def __post_init__(self) -> None:
        self.validate(check_finite=False)

    # ------------------------------------------------------------------ validation
    def validate(self, check_finite: bool = True) -> "Gaussians":
        """Check shapes, dtypes and devices (and NaN/Inf when `check_finite`); raise ValueError naming the field."""
        tensors = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in tensors.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"Gaussians.{name} must be a torch.Tensor, got {type(value).__name__}")
            if not value.is_floating_point():
                raise ValueError(f"Gaussians.{name} must be floating point, got {value.dtype}")
        n = self.means.shape[0] if self.means.ndim == 2 else -1
        expected = {"means": (n, 3), "quats": (n, 4), "log_scales": (n, 3), "opacity_logits": (n,)}
        if self.means.ndim != 2 or self.means.shape[1] != 3:
            raise ValueError(f"Gaussians.means must have shape (N, 3), got {tuple(self.means.shape)}")
        for name, shape in expected.items():
            if tuple(tensors[name].shape) != shape:
                raise ValueError(f"Gaussians.{name} must have shape {shape}, got {tuple(tensors[name].shape)}")
        if self.sh.ndim != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3:
            raise ValueError(f"Gaussians.sh must have shape ({n}, K, 3), got {tuple(self.sh.shape)}")
        sh_degree_from_coeffs(self.sh.shape[1])
        dtypes = {v.dtype for v in tensors.values()}
        if len(dtypes) != 1:
            raise ValueError(f"Gaussians tensors must share one dtype, got {sorted(map(str, dtypes))}")
        devices = {v.device for v in tensors.values()}
        if len(devices) != 1:
            raise ValueError(f"Gaussians tensors must share one device, got {sorted(map(str, devices))}")
        if check_finite:
            for name, value in tensors.items():
                if not torch.isfinite(value).all():
                    raise ValueError(f"Gaussians.{name} contains NaN or Inf")
        return self

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return sh_degree_from_coeffs(self.sh.shape[1])

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    @property
    def scales(self) -> Float[Tensor, "N 3"]:
        """Per-axis standard deviations, world units."""
        return self.log_scales.exp()

    @property
    def opacities(self) -> Float[Tensor, " N"]:
        """Opacities in (0, 1)."""
        return torch.sigmoid(self.opacity_logits)

    @property
    def rotations(self) -> Float[Tensor, "N 4"]:
        """Unit quaternions, wxyz."""
        return torch.nn.functional.normalize(self.quats, dim=-1)

    @property
    def rotation_matrices(self) -> Float[Tensor, "N 3 3"]:
        return quat_to_rotmat(self.quats)

    @property
    def covariances(self) -> Float[Tensor, "N 3 3"]:
        """World-space covariances R·diag(s²)·Rᵀ."""
        r = self.rotation_matrices
        m = r * self.scales[:, None, :]
        return m @ m.transpose(-1, -2)

    # ------------------------------------------------------------------ manipulation
    def _map(self, fn) -> "Gaussians":
        return Gaussians(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def __getitem__(self, index) -> "Gaussians":
        """Index by slice, integer tensor or boolean mask; always returns a `Gaussians`."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return self._map(lambda t: t[index])

    def to(self, *args, **kwargs) -> "Gaussians":
        return self._map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> "Gaussians":
        return self._map(lambda t: t.detach())

    def with_sh_degree(self, degree: int) -> "Gaussians":
        """Truncate or zero-pad the SH coefficients to `degree`."""
        k = (degree + 1) ** 2
        sh = self.sh[:, :k]
        if sh.shape[1] < k:
            sh = torch.cat([sh, sh.new_zeros(len(self), k - sh.shape[1], 3)], dim=1)
        return Gaussians(self.means, self.quats, self.log_scales, self.opacity_logits, sh)

    @staticmethod
    def cat(parts: Sequence["Gaussians"]) -> "Gaussians":
        """Concatenate; SH of lower degree is zero-padded to the highest degree present."""
        if len(parts) == 0:
            raise ValueError("Gaussians.cat needs at least one Gaussians")
        degree = max(p.sh_degree for p in parts)
        parts = [p.with_sh_degree(degree) for p in parts]
        return Gaussians(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Gaussians)})

    @staticmethod
    def empty(sh_degree: int = 0, dtype=torch.float32, device=None) -> "Gaussians":
        k = (sh_degree + 1) ** 2
        z = lambda *s: torch.zeros(*s, dtype=dtype, device=device)  # noqa: E731
        return Gaussians(z(0, 3), z(0, 4), z(0, 3), z(0), z(0, k, 3))

    @staticmethod
    def from_activated(
        means: Tensor, rotations: Tensor, scales: Tensor, opacities: Tensor, sh: Tensor, eps: float = 1e-6
    ) -> "Gaussians":
        """Build from activated values (scales > 0, opacities in (0, 1))."""
        opacities = opacities.clamp(eps, 1 - eps)
        return Gaussians(means, rotations, scales.clamp_min(eps).log(), torch.logit(opacities), sh)


def quat_to_rotmat(quats: Float[Tensor, "*batch 4"]) -> Float[Tensor, "*batch 3 3"]:
    """Rotation matrices from (unnormalised) wxyz quaternions."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(*quats.shape[:-1], 3, 3)

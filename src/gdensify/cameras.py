"""The `Cameras` batch: pinhole cameras in OpenCV axes.

Conventions: camera axes x right, y down, z forward; `world_to_camera` maps world points to camera points;
`intrinsics` are in pixels, with pixel centres at integer + 0.5 (pixel (0, 0) covers [0, 1)²).
Converters from Blender/OpenGL camera-to-world matrices (x right, y up, z backward) and from normalized
intrinsics (RealEstate10K style) live here and nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

# Flips y and z: OpenGL/Blender camera axes <-> OpenCV camera axes.
_GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


@dataclass
class Cameras:
    """C cameras sharing one image size and one near/far range."""

    world_to_camera: Float[Tensor, "C 4 4"]
    intrinsics: Float[Tensor, "C 3 3"]
    width: int
    height: int
    near: float = 0.01
    far: float = 1e10

    def __post_init__(self) -> None:
        w2c, k = self.world_to_camera, self.intrinsics
        if w2c.ndim != 3 or w2c.shape[1:] != (4, 4):
            raise ValueError(f"Cameras.world_to_camera must have shape (C, 4, 4), got {tuple(w2c.shape)}")
        if k.ndim != 3 or k.shape[1:] != (3, 3) or k.shape[0] != w2c.shape[0]:
            raise ValueError(f"Cameras.intrinsics must have shape ({w2c.shape[0]}, 3, 3), got {tuple(k.shape)}")
        if not (w2c.is_floating_point() and k.is_floating_point()):
            raise ValueError("Cameras matrices must be floating point")
        if w2c.device != k.device:
            raise ValueError(f"Cameras matrices on different devices: {w2c.device} and {k.device}")
        if not (torch.isfinite(w2c).all() and torch.isfinite(k).all()):
            raise ValueError("Cameras matrices contain NaN or Inf")
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"Cameras.{name} must be a whole number of pixels, got {value}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"Cameras image size must be positive, got {self.width}x{self.height}")
        if len(k) and not bool((k[:, 0, 0] > 0).all() and (k[:, 1, 1] > 0).all()):
            bad = int(torch.nonzero((k[:, 0, 0] <= 0) | (k[:, 1, 1] <= 0))[0, 0])
            raise ValueError(f"Cameras.intrinsics: focal lengths must be > 0, camera {bad} has fx={float(k[bad, 0, 0])}, "
                             f"fy={float(k[bad, 1, 1])}")
        if len(w2c) and not bool((torch.linalg.det(w2c[:, :3, :3].double()).abs() > 1e-12).all()):
            bad = int(torch.nonzero(torch.linalg.det(w2c[:, :3, :3].double()).abs() <= 1e-12)[0, 0])
            raise ValueError(f"Cameras.world_to_camera: camera {bad} has a singular rotation block (e.g. all zeros)")
        if not (0 < self.near < self.far):
            raise ValueError(f"Cameras need 0 < near < far, got near={self.near}, far={self.far}")
        self.width, self.height = int(self.width), int(self.height)

    # ------------------------------------------------------------------ constructors
    @staticmethod
    def from_camera_to_world(
        camera_to_world: Float[Tensor, "C 4 4"], intrinsics: Float[Tensor, "C 3 3"], width: int, height: int,
        near: float = 0.01, far: float = 1e10,
    ) -> "Cameras":
        """From OpenCV camera-to-world matrices."""
        return Cameras(torch.linalg.inv(camera_to_world), intrinsics, width, height, near, far)

    @staticmethod
    def from_fov(
        camera_to_world: Float[Tensor, "C 4 4"], fov_x: float, width: int, height: int,
        fov_y: float | None = None, near: float = 0.01, far: float = 1e10,
    ) -> "Cameras":
        """From OpenCV camera-to-world matrices and horizontal (and optionally vertical) FOV in radians.

        With no `fov_y` the pixels are square. The principal point is the image centre."""
        fx = 0.5 * width / math.tan(0.5 * fov_x)
        fy = fx if fov_y is None else 0.5 * height / math.tan(0.5 * fov_y)
        k = intrinsics_matrix(fx, fy, width / 2, height / 2).to(camera_to_world)
        return Cameras.from_camera_to_world(camera_to_world, k.expand(len(camera_to_world), 3, 3), width, height,
                                            near, far)

    @staticmethod
    def from_normalized_intrinsics(
        camera_to_world: Float[Tensor, "C 4 4"], normalized: Float[Tensor, "C 4"], width: int, height: int,
        near: float = 0.01, far: float = 1e10,
    ) -> "Cameras":
        """From OpenCV camera-to-world matrices and (fx/W, fy/H, cx/W, cy/H) per camera (RealEstate10K style)."""
        fx, fy, cx, cy = normalized.unbind(-1)
        k = torch.zeros(len(normalized), 3, 3, dtype=normalized.dtype, device=normalized.device)
        k[:, 0, 0], k[:, 1, 1] = fx * width, fy * height
        k[:, 0, 2], k[:, 1, 2], k[:, 2, 2] = cx * width, cy * height, 1.0
        return Cameras.from_camera_to_world(camera_to_world, k, width, height, near, far)

    @staticmethod
    def from_blender(
        camera_to_world_gl: Float[Tensor, "C 4 4"], intrinsics: Float[Tensor, "C 3 3"], width: int, height: int,
        near: float = 0.01, far: float = 1e10,
    ) -> "Cameras":
        """From Blender/OpenGL camera-to-world matrices (camera x right, y up, z backward)."""
        return Cameras.from_camera_to_world(opengl_to_opencv(camera_to_world_gl), intrinsics, width, height,
                                            near, far)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return self.world_to_camera.shape[0]

    def __getitem__(self, index) -> "Cameras":
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Cameras(self.world_to_camera[index], self.intrinsics[index], self.width, self.height,
                       self.near, self.far)

    def to(self, *args, **kwargs) -> "Cameras":
        return Cameras(self.world_to_camera.to(*args, **kwargs), self.intrinsics.to(*args, **kwargs),
                       self.width, self.height, self.near, self.far)

    @staticmethod
    def cat(parts: list["Cameras"]) -> "Cameras":
        first = parts[0]
        for p in parts[1:]:
            if (p.width, p.height, p.near, p.far) != (first.width, first.height, first.near, first.far):
                raise ValueError("Cameras.cat needs one image size and one near/far range")
        return Cameras(torch.cat([p.world_to_camera for p in parts]), torch.cat([p.intrinsics for p in parts]),
                       first.width, first.height, first.near, first.far)

    def resized(self, width: int, height: int) -> "Cameras":
        """The same cameras rendering at another resolution (intrinsics scaled per axis)."""
        k = self.intrinsics.clone()
        k[:, 0] *= width / self.width
        k[:, 1] *= height / self.height
        return Cameras(self.world_to_camera, k, width, height, self.near, self.far)

    @property
    def camera_to_world(self) -> Float[Tensor, "C 4 4"]:
        return torch.linalg.inv(self.world_to_camera)

    @property
    def centers(self) -> Float[Tensor, "C 3"]:
        """Camera centres in world coordinates."""
        r, t = self.world_to_camera[:, :3, :3], self.world_to_camera[:, :3, 3]
        return -(r.transpose(-1, -2) @ t[..., None])[..., 0]

    # ------------------------------------------------------------------ rays
    def rays(self) -> tuple[Float[Tensor, "C H W 3"], Float[Tensor, "C H W 3"]]:
        """World-space ray origins and unit directions through every pixel centre."""
        dtype, device = self.intrinsics.dtype, self.intrinsics.device
        v, u = torch.meshgrid(torch.arange(self.height, dtype=dtype, device=device) + 0.5,
                              torch.arange(self.width, dtype=dtype, device=device) + 0.5, indexing="ij")
        pixels = torch.stack([u, v, torch.ones_like(u)], dim=-1)  # H W 3
        dirs_cam = torch.einsum("cij,hwj->chwi", torch.linalg.inv(self.intrinsics), pixels)
        c2w = self.camera_to_world
        dirs = torch.nn.functional.normalize(torch.einsum("cij,chwj->chwi", c2w[:, :3, :3], dirs_cam), dim=-1)
        origins = c2w[:, None, None, :3, 3].expand_as(dirs)
        return origins, dirs

    def plucker(self) -> Float[Tensor, "C H W 6"]:
        """Plücker coordinates (d, o × d) of every pixel ray, d a unit vector."""
        origins, dirs = self.rays()
        return torch.cat([dirs, torch.cross(origins, dirs, dim=-1)], dim=-1)


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> Float[Tensor, "3 3"]:
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def opengl_to_opencv(camera_to_world_gl: Float[Tensor, "*batch 4 4"]) -> Float[Tensor, "*batch 4 4"]:
    """Camera-to-world in OpenGL camera axes -> OpenCV camera axes (flip the camera's y and z)."""
    return camera_to_world_gl @ _GL_TO_CV.to(camera_to_world_gl)


def look_at(
    eyes: Float[Tensor, "C 3"], targets: Float[Tensor, "C 3"], up: Float[Tensor, "3"] | None = None
) -> Float[Tensor, "C 4 4"]:
    """OpenCV camera-to-world matrices looking from `eyes` at `targets`; `up` is the world up vector (+z default).

    The camera's -y axis (image up) is aligned as well as possible with `up`."""
    up = torch.tensor([0.0, 0.0, 1.0]) if up is None else up
    up = up.to(eyes).expand_as(eyes)
    forward = torch.nn.functional.normalize(targets - eyes, dim=-1)
    right = torch.cross(forward, up, dim=-1)
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    fallback = torch.cross(forward, torch.roll(up, 1, dims=-1), dim=-1)
    right = torch.nn.functional.normalize(torch.where(degenerate, fallback, right), dim=-1)
    down = torch.cross(forward, right, dim=-1)
    c2w = torch.eye(4, dtype=eyes.dtype, device=eyes.device).repeat(len(eyes), 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, down, forward, eyes
    return c2w


def stack_cameras(
    cameras: Cameras | Sequence[Cameras], batch: int, views: int, width: int, height: int, rescale: bool = True,
) -> tuple[Float[Tensor, "b v 4 4"], Float[Tensor, "b v 3 3"]]:
    """(world_to_camera, intrinsics) as (B, V, ·, ·) from a list of B `Cameras` of V views each, or one `Cameras`
    of B·V views (item-major). Intrinsics of cameras sized differently from width × height are rescaled to it
    (`rescale=True`) or refused."""
    if isinstance(cameras, Cameras):
        if len(cameras) != batch * views:
            raise ValueError(f"expected {batch}·{views} = {batch * views} cameras (item-major), got {len(cameras)}")
        parts = [cameras[i * views:(i + 1) * views] for i in range(batch)]
    else:
        parts = list(cameras)
        if len(parts) != batch:
            raise ValueError(f"got {len(parts)} Cameras for a batch of {batch}")
    w2c, ks = [], []
    for i, cams in enumerate(parts):
        if not isinstance(cams, Cameras):
            raise TypeError(f"cameras must be Cameras, got {type(cams).__name__} for item {i}")
        if len(cams) != views:
            raise ValueError(f"Cameras of item {i} holds {len(cams)} views, expected {views} (one per image)")
        k = cams.intrinsics
        if (cams.width, cams.height) != (width, height):
            if not rescale:
                raise ValueError(f"Cameras of item {i} are {cams.width}x{cams.height}, images are {width}x{height} "
                                 "(intrinsics must be in pixels of the input images)")
            k = k.clone()
            k[:, 0] = k[:, 0] * (width / cams.width)
            k[:, 1] = k[:, 1] * (height / cams.height)
        w2c.append(cams.world_to_camera)
        ks.append(k)
    return torch.stack(w2c), torch.stack(ks)


def nearest_by_direction(inputs: Cameras, targets: Cameras) -> list[int]:
    """For every target camera, the input camera with the closest viewing direction from the origin (object-centric
    captures, whose frame is centred on the object)."""
    a = torch.nn.functional.normalize(inputs.centers.double(), dim=-1)
    b = torch.nn.functional.normalize(targets.centers.double(), dim=-1)
    return (b @ a.T).argmax(dim=1).tolist()


def nearest_by_position(inputs: Cameras, targets: Cameras) -> list[int]:
    """For every target camera, the input camera with the closest centre (scenes)."""
    return torch.cdist(targets.centers.double(), inputs.centers.double()).argmin(dim=1).tolist()

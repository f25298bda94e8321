"""Standard 3DGS `.ply` files (the layout of the original 3DGS code, read by every splat viewer).

One binary little-endian `vertex` element of float32 properties, in this order:
`x y z nx ny nz f_dc_0..2 f_rest_0..M-1 opacity scale_0..2 rot_0..3`, with normals written as zeros,
`f_rest` channel-major (all red higher-order coefficients, then green, then blue; M = 3·((d+1)² − 1)),
`opacity` the pre-sigmoid logit, `scale_*` log standard deviations and `rot_*` a raw wxyz quaternion.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from ..gaussians import Gaussians, sh_degree_from_coeffs
from .atomic import atomic_path


def _attribute_names(num_rest: int) -> list[str]:
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(num_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def save_ply(gaussians: Gaussians, path: str | os.PathLike, sh_degree: int | None = None) -> Path:
    """Write `gaussians` to `path` atomically; `sh_degree` pads or truncates the SH (default: as stored)."""
    g = gaussians.detach().to("cpu", torch.float32)
    g.validate()
    if sh_degree is not None:
        g = g.with_sh_degree(sh_degree)
    n, k = len(g), g.sh.shape[1]
    rest = g.sh[:, 1:].transpose(1, 2).reshape(n, 3 * (k - 1))  # channel-major
    columns = torch.cat([g.means, torch.zeros(n, 3), g.sh[:, 0], rest, g.opacity_logits[:, None],
                         g.log_scales, g.quats], dim=1).numpy()
    names = _attribute_names(3 * (k - 1))
    vertices = np.empty(n, dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        vertices[name] = columns[:, i]
    path = Path(path)
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(vertices, "vertex")], text=False, byte_order="<").write(str(tmp))
    return path


def load_ply(path: str | os.PathLike) -> Gaussians:
    """Read a standard 3DGS `.ply` (any SH degree; normals ignored). Raises ValueError on a malformed file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no .ply file at {path}")
    try:
        ply = PlyData.read(str(path))
    except Exception as err:  # plyfile raises several exception types for corrupt files
        raise ValueError(f"{path}: not a readable .ply file ({err})") from err
    if "vertex" not in ply:
        raise ValueError(f"{path}: no 'vertex' element")
    v = ply["vertex"].data
    present = set(v.dtype.names)
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [name for name in required if name not in present]
    if missing:
        raise ValueError(f"{path}: missing 3DGS properties {missing}")
    rest_names = sorted((n for n in present if n.startswith("f_rest_")), key=lambda n: int(n.split("_")[-1]))
    if len(rest_names) % 3:
        raise ValueError(f"{path}: {len(rest_names)} f_rest properties is not a multiple of 3")
    k = 1 + len(rest_names) // 3
    sh_degree_from_coeffs(k)

    def col(*names: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(v[name], dtype=np.float32) for name in names], axis=1))

    n = len(v)
    rest = col(*rest_names).reshape(n, 3, k - 1).transpose(1, 2) if k > 1 else torch.zeros(n, 0, 3)
    sh = torch.cat([col("f_dc_0", "f_dc_1", "f_dc_2")[:, None], rest], dim=1)
    return Gaussians(col("x", "y", "z"), col("rot_0", "rot_1", "rot_2", "rot_3"),
                     col("scale_0", "scale_1", "scale_2"), col("opacity")[:, 0], sh.contiguous())

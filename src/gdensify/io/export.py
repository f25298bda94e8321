"""`gdensify export IN.ply OUT.splat|OUT.spz|OUT.ply`: convert a 3DGS `.ply` to the formats viewers read.

Formats by the output's suffix: `.splat` (`io.splat`), `.spz` (`io.spz`, version 3, RUB axes in the file),
`.ply` (the standard layout, `io.ply`; with `compressed=True` the chunk-compressed layout of SuperSplat/PlayCanvas,
written by gsplat's `export_splats`, the optional `gpu` extra). `min_opacity` drops Gaussians whose opacity is below
it first. A JSON sidecar `OUT.json` records what a viewer needs to place the result: the source, the count, the
pruning and the coordinate frame (OpenCV camera axes; the world frame and units of the dataset the `.ply` came
from; scale 1, i.e. no rescaling by the export; the axes stored in the file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..gaussians import Gaussians
from .atomic import atomic_path
from .ply import load_ply, save_ply
from .splat import save_splat
from .spz import save_spz

__all__ = ["FORMATS", "prune_by_opacity", "export_gaussians", "sidecar_path"]

FORMATS = (".splat", ".spz", ".ply")


def prune_by_opacity(gaussians: Gaussians, min_opacity: float) -> Gaussians:
    """The Gaussians with opacity ≥ `min_opacity` (in [0, 1))."""
    if not 0.0 <= min_opacity < 1.0:
        raise ValueError(f"--min-opacity must be in [0, 1), got {min_opacity}")
    return gaussians[gaussians.opacities >= min_opacity] if min_opacity > 0 else gaussians


def sidecar_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".json")


def _write_compressed_ply(gaussians: Gaussians, path: Path) -> None:
    try:
        from gsplat import export_splats  # noqa: PLC0415
    except ImportError as err:
        raise RuntimeError("the compressed PLY layout is written by gsplat's exporter: pip install "
                           f"'gdensify[gpu]' (gsplat >= 1.5.3) ({err})") from err
    g = gaussians.detach().to("cpu", torch.float32)
    data = export_splats(means=g.means, scales=g.log_scales, quats=g.quats, opacities=g.opacity_logits,
                         sh0=g.sh[:, :1], shN=g.sh[:, 1:], format="ply_compressed")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def export_gaussians(source: str | os.PathLike, out: str | os.PathLike, min_opacity: float = 0.0,
                     compressed: bool = False, overwrite: bool = False) -> tuple[Path, Path, int]:
    """Convert the `.ply` at `source` into `out` (format from its suffix) plus the sidecar; returns
    (out, sidecar, Gaussians written)."""
    source, out = Path(source), Path(out)
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{out}: unknown export format {suffix!r}; use one of {', '.join(FORMATS)}")
    if compressed and suffix != ".ply":
        raise ValueError(f"{out}: --compressed applies to .ply outputs only")
    if out.resolve() == source.resolve():
        raise ValueError(f"{out}: the output would replace the input")
    sidecar = sidecar_path(out)
    for path in (out, sidecar):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    gaussians = load_ply(source)
    kept = prune_by_opacity(gaussians, min_opacity)
    if len(kept) == 0:
        raise ValueError(f"{source}: no Gaussian has opacity >= {min_opacity}")
    if suffix == ".splat":
        save_splat(kept, out)
        stored, axes = "position, linear scale, RGBA (SH DC colour + opacity), rotation; no higher SH", "as the .ply"
    elif suffix == ".spz":
        save_spz(kept, out, from_rdf=True)
        stored = f"spz version 3, SH degree {kept.sh_degree}"
        axes = "RUB (x right, y up, z back): y and z of the .ply's frame are negated; spz readers asked for RDF " \
               "output restore them"
    elif compressed:
        _write_compressed_ply(kept, out)
        stored, axes = "SuperSplat/PlayCanvas chunk-compressed PLY (gsplat's writer)", "as the .ply"
    else:
        save_ply(kept, out)
        stored, axes = f"standard 3DGS .ply, SH degree {kept.sh_degree}", "as the .ply"
    meta = {
        "source": str(source),
        "output": str(out),
        "format": suffix.lstrip(".") + (" (compressed)" if compressed else ""),
        "stored": stored,
        "count": len(kept),
        "count_before_pruning": len(gaussians),
        "min_opacity": min_opacity,
        "coordinate_frame": {
            "camera_axes": "OpenCV: x right, y down, z forward (world-to-camera matrices)",
            "world": "the frame of the dataset the .ply was reconstructed from (objects: the Blender object's world "
                     "frame, z up; scenes: the RE10K chunk's world frame)",
            "units": "the dataset's units",
            "scale": 1.0,
            "axes_in_file": axes,
        },
    }
    with atomic_path(sidecar) as tmp:
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
    return out, sidecar, len(kept)

"""Files shipped with the package: the small trained checkpoints and sample data that `gdensify demo` uses.

    object_tiny.safetensors   `gdensify train --config tiny` (recipe in its metadata and in README)
    objects/obj_*             held-out generated objects (Blender layout) for the object demo
    scene_tiny.safetensors    `gdensify train --config scene-tiny`
    scenes/                   held-out generated scenes (RE10K layout: test/ chunks + evaluation_index.json)
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent


def shipped_checkpoint(kind: str = "object") -> Path:
    path = ASSETS / f"{kind}_tiny.safetensors"
    if not path.is_file():
        preset = "tiny" if kind == "object" else f"{kind}-tiny"
        raise FileNotFoundError(f"the shipped {kind} checkpoint is missing ({path}); pass --checkpoint, or train one "
                                f"with `gdensify train --config {preset}`")
    return path


def sample_data(kind: str = "object") -> Path:
    path = ASSETS / f"{kind}s"
    if not path.is_dir():
        raise FileNotFoundError(f"the shipped sample {kind}s are missing ({path}); pass --data")
    return path

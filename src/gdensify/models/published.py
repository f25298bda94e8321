"""Where the published checkpoints live, and `gdensify download NAME` (optional extra `hub`: huggingface_hub).

Nothing here runs at import time or without being asked. Offline, or for files that are not on the Hugging Face
Hub, `download_published` raises an error that says where to get the file by hand; any downloaded or hand-placed
`.ckpt` loads with `gdensify.models.load_official_checkpoint` (or `--checkpoint FILE` on the command line).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..io.cache import cache_dir


@dataclass(frozen=True)
class Published:
    """One published checkpoint: its official kind (`models.official.KINDS`), where it is, and what it is."""

    kind: str
    repo: str | None  # Hugging Face Hub repository, None when the file is not on the hub
    filenames: tuple[str, ...]  # candidate paths inside the repository (first that exists wins)
    what: str
    by_hand: str  # where a person gets it without the hub


PUBLISHED: dict[str, Published] = {
    "gd-object": Published("gd-object", "Xiang12yu/GDM-object", ("epoch=49.ckpt", "checkpoints/epoch=49.ckpt"),
                           "GD object model (LaRa backbone, Gobjaverse), the paper's 'Ours'",
                           "the GD project's object README links the Hugging Face repository Xiang12yu/GDM-object"),
    "gd-object-residual": Published(
        "gd-object-residual", "Xiang12yu/GDM-object",
        ("epoch=49_residual.ckpt", "checkpoints/epoch=49_residual.ckpt"),
        "GD object model with residual attributes, the paper's 'Ours (w/ residual)'",
        "the GD project's object README links the Hugging Face repository Xiang12yu/GDM-object"),
    "gd-scene": Published("gd-scene", "Xiang12yu/GDM-scene", ("final_model.ckpt", "checkpoints/final_model.ckpt"),
                          "GD scene model (MVSplat backbone, RE10K; 300k + 150k steps)",
                          "the GD project's `scene` branch README links the Hugging Face repository "
                          "Xiang12yu/GDM-scene"),
    "gd-scene-fast": Published("gd-scene", "Xiang12yu/GDM-scene", ("fast_model.ckpt", "checkpoints/fast_model.ckpt"),
                               "GD scene model after the first 300k steps",
                               "the GD project's `scene` branch README links the Hugging Face repository "
                               "Xiang12yu/GDM-scene"),
    "mvsplat-re10k": Published("mvsplat", None, ("re10k.ckpt",), "MVSplat trained on RealEstate10K",
                               "MVSplat's README (donydchen/mvsplat) links re10k.ckpt outside the hub"),
    "mvsplat-acid": Published("mvsplat", None, ("acid.ckpt",), "MVSplat trained on ACID",
                              "MVSplat's README (donydchen/mvsplat) links acid.ckpt outside the hub"),
}


def published_path(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Where `download_published(name)` puts the file: `<cache>/checkpoints/<name>/<file name>`."""
    entry = _entry(name)
    root = Path(cache).expanduser() if cache else cache_dir()
    return root / "checkpoints" / name / Path(entry.filenames[0]).name


def _entry(name: str) -> Published:
    if name not in PUBLISHED:
        raise ValueError(f"unknown published checkpoint {name!r}; expected one of {sorted(PUBLISHED)}")
    return PUBLISHED[name]


def download_published(name: str, cache: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Fetch a published checkpoint into the cache with huggingface_hub and return its path (an existing copy is
    returned as is unless `overwrite`). Errors say where to get the file by hand when it is not on the hub, when
    huggingface_hub is missing, or when the hub cannot be reached."""
    entry = _entry(name)
    target = published_path(name, cache)
    if target.is_file() and not overwrite:
        return target
    manual = (f"get {entry.filenames[0]} by hand ({entry.by_hand}) and pass its path as --checkpoint, or place it "
              f"at {target}")
    if entry.repo is None:
        raise ValueError(f"{name}: not on the Hugging Face Hub; {manual}")
    try:
        from huggingface_hub import hf_hub_download  # noqa: PLC0415
    except ModuleNotFoundError:
        raise ValueError(f"{name}: downloading needs huggingface_hub (pip install 'gdensify[hub]'); or {manual}") \
            from None
    errors = []
    for filename in entry.filenames:
        try:
            fetched = Path(hf_hub_download(entry.repo, filename, local_dir=str(target.parent)))
        except Exception as err:  # noqa: BLE001  (offline, missing file, auth: all reported with the manual route)
            errors.append(f"{filename}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            continue
        if fetched != target:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(fetched, target)
        return target
    raise ValueError(f"{name}: could not fetch from {entry.repo} ({'; '.join(errors)}); {manual}")

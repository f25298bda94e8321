"""The user cache folder: `$GDENSIFY_CACHE`, else `$XDG_CACHE_HOME/gdensify`, else `~/.cache/gdensify` (downloaded
or converted weights: LPIPS, published checkpoints)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "GDENSIFY_CACHE"


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "gdensify"

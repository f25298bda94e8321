"""Atomic file writes: write to a temporary file in the destination folder, then rename over the target.

The temporary is `.NAME.<pid>@<host>.<random>.tmp`; a killed writer's leftover is removed by the next write of
`NAME` (`gdensify.io.staging.remove_stale`)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from glob import escape as glob_escape
from pathlib import Path
from typing import Iterator

from .staging import owned_temp_prefix, remove_stale


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` atomically, on error it is removed.
    The file gets the permissions a plain `open(path, "w")` would give (0666 minus the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, glob_escape(path.name), (".tmp",))
    fd, tmp = tempfile.mkstemp(prefix=owned_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise

"""Owned temporary names, stale-leftover cleanup and staged output folders.

Every temporary file or folder gdensify makes beside a result carries its owner, `<pid>@<host>`, in its name
(`.NAME.<pid>@<host>.<random>.tmp`, `.partial`, `.staging`, ...). A later run removes the leftovers whose owner
is a process of this host that no longer exists (a killed run); leftovers of live processes, or of other hosts,
are kept.

`staged_folder(out, overwrite)` is how a command writes a results folder: it refuses a non-empty `out` unless
`overwrite`, claims `out` with a lock file (a second concurrent run into the same folder refuses), writes into a
hidden staging folder beside it and renames that into place at the end, so `out` holds one whole run or nothing new.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
from glob import escape as glob_escape
from pathlib import Path
from typing import Iterator

__all__ = ["owner_tag", "owned_temp_prefix", "remove_stale", "staged_folder", "check_output_file"]

_HOST = socket.gethostname().replace("/", "_")
_OWNER = re.compile(r"\.(\d+)@(.+?)\.[^.]*\.[A-Za-z]+$")


def owner_tag() -> str:
    """`<pid>@<host>` of this process."""
    return f"{os.getpid()}@{_HOST}"


def owned_temp_prefix(name: str) -> str:
    """The prefix of a temporary beside `name`: `.NAME.<pid>@<host>.` (then a random part and a suffix)."""
    return f".{name}.{owner_tag()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(path: Path) -> bool:
    """Whether `path` is an owned temporary whose owner was a process of this host that has ended."""
    match = _OWNER.search(path.name)
    return bool(match) and match.group(2) == _HOST and not _alive(int(match.group(1)))


def remove_stale(folder: str | os.PathLike, name: str, suffixes: tuple[str, ...]) -> list[Path]:
    """Remove the stale owned temporaries `.NAME.<owner>.*<suffix>` in `folder` (`name` may be a glob); returns
    what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for suffix in suffixes:
        for path in folder.glob(f".{name}.*@*.*{suffix}"):
            if path.name.endswith(suffix) and is_stale(path):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                removed.append(path)
    return removed


def check_output_file(path: str | os.PathLike, overwrite: bool, flag: str = "--out") -> Path:
    """`path` as a Path if a file may be written there: ValueError when it is a folder, FileExistsError when it
    exists and `overwrite` is False."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path}: is a folder; expected a file name")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{flag} {path}: exists; pass --overwrite to replace it")
    return path


def _listing(folder: Path, limit: int = 3) -> str:
    names = sorted(p.name for p in folder.iterdir())
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def _claim(lock: Path, out: Path) -> None:
    """Create `lock` (holding our owner tag) or raise naming the live run that holds it; a lock of an ended
    process of this host is taken over."""
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = lock.read_text().strip()
            except FileNotFoundError:
                continue
            pid, _, host = owner.partition("@")
            if host == _HOST and pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            raise FileExistsError(f"--out {out}: another gdensify run ({owner or 'unknown'}) is writing there "
                                  f"(lock {lock}; delete it if no such run is active)") from None
        with os.fdopen(fd, "w") as f:
            f.write(owner_tag() + "\n")
        return
    raise FileExistsError(f"--out {out}: could not take the lock {lock}")


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike, overwrite: bool = False, flag: str = "--out") -> Iterator[Path]:
    """Yield a staging folder for the results that belong in `out`; on success it replaces `out` as a whole.

    Refuses (FileExistsError) when `out` is not empty and `overwrite` is False, and when another live run holds
    `out` (a `.NAME.lock` beside it). On error the staging folder is removed and `out` is left as it was."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out}: is a file; expected a folder")

    def refuse_if_full() -> None:
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"{flag} {out}: not empty ({_listing(out)}); pass --overwrite to replace it or "
                                  f"choose another {flag}")

    refuse_if_full()
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    lock = parent / f".{out.name}.lock"
    _claim(lock, out)
    try:
        remove_stale(parent, glob_escape(out.name), (".staging", ".old"))
        staging = Path(tempfile.mkdtemp(prefix=owned_temp_prefix(out.name), suffix=".staging", dir=parent))
        try:
            os.chmod(staging, 0o755)
            yield staging
            refuse_if_full()  # something else wrote there meanwhile
            old = None
            if out.exists():
                old = Path(tempfile.mkdtemp(prefix=owned_temp_prefix(out.name), suffix=".old", dir=parent))
                os.replace(out, old / out.name)
            try:
                os.replace(staging, out)
            except OSError as err:
                if old is not None and err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    os.replace(old / out.name, out)
                raise
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()

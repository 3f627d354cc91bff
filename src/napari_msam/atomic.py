"""Atomic file writes: every file the project writes goes through :func:`atomic_write`.

A crash or a full disk mid-write must never leave a half-written checkpoint or mask behind, so data go
to a temporary file in the destination folder first and replace the target with ``os.replace``. A
process killed mid-write (SIGKILL, power loss) leaves only its temporary; :func:`stale_temporaries`
finds those so a later run can remove them, and a later write of the same file removes the ones of that
file that are older than any write takes (:data:`STALE_AFTER_S`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

#: the temporary's name keeps at most this many characters of the target's name, so a target name of
#: up to NAME_MAX (255) characters still gets a temporary that fits: "." + 64 + "." + 8 random + ".tmp"
_TEMP_NAME_CHARS = 64
_TEMP_RE = re.compile(rf"^\..{{1,{_TEMP_NAME_CHARS}}}\.[a-z0-9_]{{8}}\.tmp$")
#: a temporary untouched for this long belongs to a killed writer (no mask or checkpoint write takes an hour)
STALE_AFTER_S = 3600.0


def _temp_prefix(name: str) -> str:
    return f".{name[:_TEMP_NAME_CHARS]}."


def stale_temporaries(folder: str | Path) -> list[Path]:
    """Temporaries :func:`atomic_write` left in ``folder`` when its process was killed mid-write.

    Only call this while no other process may be writing there (e.g. holding the folder's run lock).
    """
    try:
        return sorted(p for p in Path(folder).iterdir() if _TEMP_RE.match(p.name) and p.is_file())
    except OSError:
        return []


def _remove_stale_of(target: Path, folder: Path) -> None:
    """Remove the temporaries of ``target`` that a killed writer left behind (old enough to be dead)."""
    prefix, now = _temp_prefix(target.name), time.time()
    for tmp in stale_temporaries(folder):
        if tmp.name.startswith(prefix):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > STALE_AFTER_S:
                    tmp.unlink()


def _user_error(exc: OSError, target: Path) -> OSError:
    """The same error, naming the user's path instead of the hidden temporary."""
    return OSError(exc.errno, exc.strerror or str(exc), str(target))


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success it atomically replaces ``path``.

    ``mode`` must be a write mode ("wb", "w", ...). Text modes use UTF-8. On an exception the
    temporary file is removed and ``path`` is left untouched. Errors of the file system (read-only
    folder, a folder in the way) name ``path``, not the temporary.
    """
    if "w" not in mode or "r" in mode or "a" in mode:
        raise ValueError(f"atomic_write needs a plain write mode such as 'wb' or 'w', got {mode!r}")
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(target))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(target.name), suffix=".tmp", dir=folder)
    except OSError as exc:
        raise _user_error(exc, target) from None
    _remove_stale_of(target, folder)
    kwargs: dict[str, Any] = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            with contextlib.suppress(OSError):
                os.fsync(fh.fileno())
        # mkstemp creates 0600 files; give the result ordinary permissions (respecting the umask).
        umask = os.umask(0)
        os.umask(umask)
        with contextlib.suppress(OSError):
            os.chmod(tmp_name, 0o666 & ~umask)
        try:
            os.replace(tmp_name, target)
        except OSError as exc:
            raise _user_error(exc, target) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise

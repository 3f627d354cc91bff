"""Atomic file writes: every file the project writes goes through :func:`atomic_write`.

A crash or a full disk mid-write must never leave a half-written checkpoint or mask behind, so data go
to a temporary file in the destination folder first and replace the target with ``os.replace``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success it atomically replaces ``path``.

    ``mode`` must be a write mode ("wb", "w", ...). Text modes use UTF-8. On an exception the
    temporary file is removed and ``path`` is left untouched.
    """
    if "w" not in mode or "r" in mode or "a" in mode:
        raise ValueError(f"atomic_write needs a plain write mode such as 'wb' or 'w', got {mode!r}")
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
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
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise

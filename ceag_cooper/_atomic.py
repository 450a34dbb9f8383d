"""Atomic, durable file writes: a unique temporary file, fsync, rename, fsync of the folder."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["STALE_AFTER_S", "atomic_write"]

STALE_AFTER_S = 3600.0
"""Temporary files of a target older than this are leftovers of a crashed writer and are removed."""


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> Path:
    """Write ``path`` through ``write(handle)`` so that readers see the old file or the new one, whole.

    The data goes to a temporary file with a unique name in the same folder (so concurrent writers
    never share one), is flushed and fsynced, then renamed over ``path``, and the folder is fsynced
    so that the rename survives a power loss. A failed write removes its temporary file; temporary
    files of the same target left by crashed writers more than :data:`STALE_AFTER_S` ago are removed.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> atomic_write(target, lambda f: f.write(b"hello")).read_text()
        'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    _fsync_folder(path.parent)
    return path


def _remove_stale(path: Path) -> None:
    now = time.time()
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if now - leftover.stat().st_mtime > STALE_AFTER_S:
                leftover.unlink()


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms that cannot open folders
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)

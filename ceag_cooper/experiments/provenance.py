"""Where a result comes from: the code version, and paths that mean the same on every machine."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

__all__ = ["code_version", "portable_path"]

_ROOT = Path(__file__).resolve().parents[2]  # the checkout holding the package


def portable_path(path: str | Path) -> str:
    """``path`` relative to the repository when it lies inside it (committed results hold no machine paths)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(_ROOT)) if resolved.is_relative_to(_ROOT) else str(path)


@functools.cache
def code_version() -> str:
    """The git commit of the code that runs (``+dirty`` with uncommitted changes), or ``"unknown"``.

    Read once per process (the first run calls it when it starts): later commits to the checkout do
    not change what the loaded code is.
    """
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=_ROOT, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "ceag_cooper"],
            cwd=_ROOT, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+dirty" if dirty else commit

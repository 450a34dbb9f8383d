"""Where a result comes from: the code version, the machine, and paths that mean the same on every machine."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from pathlib import Path

import torch

__all__ = ["code_version", "machine", "portable_path", "weights_digest"]

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


@functools.cache
def machine() -> str:
    """The CPU a result was computed on: model name, family and model numbers, the kernels torch picked, cores.

    Recorded because training is reproducible on one machine but not across them: the same dense
    settings, code, data and torch version have given a different dense model on another machine
    (most likely its floating-point kernels, which torch picks by instruction set: the
    ``torch.backends.cpu.get_cpu_capability()`` named here).

    Example:
        >>> from ceag_cooper.experiments import machine
        >>> "torch kernels" in machine() and machine().endswith("cores")
        True
    """
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux
        lines = []
    fields: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first processor's
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    cores = len(usable) if usable else os.cpu_count()
    return f"{name}, torch kernels {torch.backends.cpu.get_cpu_capability()}, {cores or 'unknown'} cores"


def weights_digest(module: torch.nn.Module) -> str:
    """A short SHA-256 of a module's state (every tensor's name, dtype, shape and bytes, in state-dict order).

    Two cells started from the same dense model exactly when their digests match: unlike the dense
    model's accuracies, it tells apart models that score the same, and it names the model a result
    started from across machines (each cell records its ``dense_weights``).

    Example:
        >>> import torch
        >>> from ceag_cooper.experiments import weights_digest
        >>> torch.manual_seed(0); a = torch.nn.Linear(3, 2); b = torch.nn.Linear(3, 2)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> b.load_state_dict(a.state_dict())  # doctest: +ELLIPSIS
        <All keys matched successfully>
        >>> weights_digest(a) == weights_digest(b), len(weights_digest(a))
        (True, 16)
        >>> with torch.no_grad():
        ...     _ = b.bias.add_(1e-7)
        >>> weights_digest(a) == weights_digest(b)
        False
    """
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]

"""Optional fused CPU kernels for the per-step bookkeeping: ``backend="native"``.

On a CPU each PyTorch operator call costs a few microseconds whatever its size, and the
vectorized bookkeeping of a step (group statistics, replay-buffer update and query) is about
twenty of them. The native backend does the same work in three C++ calls with a plain loop over
the samples of the batch (``ceag_cooper/csrc/bookkeeping.cpp``); ``benchmarks/overhead.py``
measures both backends against a naive Python implementation.

The kernels are compiled with :func:`torch.utils.cpp_extension.load` on first use, which needs
a C++ compiler and ``ninja`` (about half a minute, once; the build is cached under
``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``). They run on CPU tensors only;
the default ``"torch"`` backend is the reference and the one to use on accelerators, where the
operator calls are queued asynchronously and the vectorized kernels are the fast path.

Example:
    >>> from ceag_cooper import native
    >>> native.check_backend("torch", "cpu")
    'torch'
    >>> native.check_backend("numpy", "cpu")
    Traceback (most recent call last):
    ...
    ValueError: `backend` must be one of ('torch', 'native'), got 'numpy'.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import ModuleType
from typing import Literal

import torch

__all__ = ["BACKENDS", "Backend", "check_backend", "is_available", "load"]

Backend = Literal["torch", "native"]
"""How the bookkeeping runs: ``"torch"`` (vectorized operators, any device) or ``"native"``."""

BACKENDS: tuple[str, ...] = ("torch", "native")
"""The accepted values of ``backend`` arguments."""

_SOURCE = Path(__file__).parent / "csrc" / "bookkeeping.cpp"
_MODULE_NAME = "ceag_cooper_bookkeeping"
_log = logging.getLogger(__name__)
_module: ModuleType | None = None
_failure: str | None = None


def load() -> ModuleType:
    """The compiled kernels, building them on first call (cached on disk afterwards).

    Raises:
        RuntimeError: if the extension cannot be built here (no compiler or ``ninja``), with the
            compiler's message and the fix (use ``backend="torch"``).
    """
    global _module, _failure
    if _module is not None:
        return _module
    if _failure is not None:
        raise RuntimeError(_failure)
    from torch.utils import cpp_extension

    _log.info("building the native bookkeeping kernels (once; cached in TORCH_EXTENSIONS_DIR)")
    try:
        _module = cpp_extension.load(
            name=_MODULE_NAME,
            sources=[str(_SOURCE)],
            extra_cflags=["-O3"],
            verbose=os.environ.get("CEAG_NATIVE_VERBOSE") == "1",
        )
    except Exception as error:  # any build failure means the same thing to the user
        _failure = (
            f"the native backend could not be built here ({type(error).__name__}: {error}). It needs a "
            "C++ compiler and `ninja` (pip install ninja); or use backend='torch', which is always available."
        )
        raise RuntimeError(_failure) from error
    return _module


def is_available() -> bool:
    """Whether the native kernels are built or can be built here (builds them if needed)."""
    try:
        load()
    except RuntimeError:
        return False
    return True


def check_backend(backend: object, device: torch.device | str | None) -> str:
    """Validate a ``backend`` argument for tensors on ``device``; loads the native kernels if asked.

    Args:
        backend: ``"torch"`` or ``"native"``.
        device: where the bookkeeping tensors live (``None`` means the CPU).

    Returns:
        ``backend``, checked.

    Raises:
        ValueError: for an unknown backend, or ``"native"`` on a non-CPU device.
        RuntimeError: if ``"native"`` is asked for and cannot be built.
    """
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}.")
    if backend == "native":
        device = torch.device(device) if device is not None else torch.device("cpu")
        if device.type != "cpu":
            raise ValueError(
                f"backend='native' runs on CPU tensors only, got device {device}; use backend='torch' there."
            )
        load()
    return str(backend)

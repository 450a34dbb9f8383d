"""Checkpoints that resume a run bit-identically, written atomically, loadable with weights_only.

One call saves everything a fine-tuning run needs (model, pruner masks and schedule position,
primal optimizer and LR scheduler, Cooper optimizer, the problem's multipliers, buffers and
reference, counters, and the RNG states of torch, numpy and Python), one call restores it into
freshly built objects. Files contain only tensors and plain Python values, so they load with
``torch.load(weights_only=True)``; writes go to a temporary file renamed into place, so a crash
while saving never destroys the previous checkpoint.
"""

from __future__ import annotations

import os
import random
import zipfile
from pathlib import Path
from typing import Any

import cooper
import numpy as np
import torch

from ceag_cooper._atomic import atomic_write

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint"]

FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (missing, truncated, or from another format)."""


def _rng_state(generator: torch.Generator | None) -> dict[str, Any]:
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    python = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": python[0], "state": list(python[1]), "gauss": python[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["loader"] = generator.get_state()
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["kind"], keys, numpy["position"], numpy["has_gauss"], numpy["gauss"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"])


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    problem: Any,
    optimizer: Any,
    pruner: Any = None,
    scheduler: Any = None,
    generator: torch.Generator | None = None,
    counters: dict[str, int] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write everything a run needs to continue, atomically.

    Args:
        path: the checkpoint file.
        model: the model (its ``state_dict``).
        problem: a :class:`~ceag_cooper.GroupFairnessProblem`.
        optimizer: the Cooper optimizer (primal and dual states) or a torch optimizer.
        pruner: a pruner with ``state_dict`` (masks, schedule position), if any.
        scheduler: an LR scheduler, if any.
        generator: the data loader's ``torch.Generator``, if any.
        counters: e.g. ``{"epoch": 3, "step": 1200}``.
        extra: anything else to keep (tensors and plain Python values only), returned by
            :func:`load_checkpoint` under ``"extra"``.

    Returns:
        The path written.
    """
    path = Path(path)
    payload = {
        "format": FORMAT,
        "model": model.state_dict(),
        "problem": problem.state_dict(),
        "optimizer": optimizer.state_dict(),
        "pruner": pruner.state_dict() if pruner is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": _rng_state(generator),
        "counters": dict(counters or {}),
        "extra": dict(extra or {}),
    }
    # A unique temporary file, fsynced, renamed into place: concurrent writers cannot corrupt it,
    # and a crash leaves the previous checkpoint. Under torch.distributed save from rank 0 only.
    return atomic_write(path, lambda handle: torch.save(payload, handle))


def _check_integrity(path: Path) -> None:
    """Every member's CRC (torch's files are zips): flipped bytes would otherwise load silently."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(error).__name__}: {error}); it may be truncated. "
            "Delete it to start over, or restore an earlier copy."
        ) from error
    if bad is not None:
        raise CheckpointError(
            f"{path} is corrupt: {bad} fails its checksum. Delete it to start over, or restore an earlier copy."
        )


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    problem: Any,
    optimizer: Any,
    pruner: Any = None,
    scheduler: Any = None,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Restore a :func:`save_checkpoint` file into freshly built objects.

    Returns:
        The saved counters, plus ``"extra"`` when extra values were saved.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, or of another format; the
            message names the file and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; check the path (or start the run afresh).")
    _check_integrity(path)
    try:
        # nuPI's optimizer state names its initialization scheme by an enum: allowed, nothing else.
        with torch.serialization.safe_globals([cooper.optim.nuPIInitType]):
            payload = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # truncated zip, foreign pickle...
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(error).__name__}: {error}); it may be truncated. "
            "Delete it to start over, or restore an earlier copy."
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} was not written by this version of ceag-cooper's save_checkpoint.")
    if payload["pruner"] is not None and pruner is None:
        raise CheckpointError(
            f"{path} holds pruning masks: pass the run's pruner (load_checkpoint(..., pruner=pruner)), or the "
            "restored model's pruned weights would grow back at the next step."
        )
    if payload["pruner"] is None and pruner is not None:
        raise CheckpointError(f"{path} was saved without a pruner: drop `pruner=`, or load the run that pruned.")
    try:
        model.load_state_dict(payload["model"])
        problem.load_state_dict(payload["problem"])
        optimizer.load_state_dict(payload["optimizer"])
        if pruner is not None:
            pruner.load_state_dict(payload["pruner"])
        if scheduler is not None:
            scheduler.load_state_dict(payload["scheduler"])
    except (RuntimeError, KeyError, ValueError) as error:  # shapes or keys of another model / problem
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(
            f"{path} was saved by a run with another model, problem or optimizer ({first[:300]}); build them "
            "exactly as that run did, or start afresh."
        ) from error
    _set_rng_state(payload["rng"], generator)
    return {**payload["counters"], "extra": payload["extra"]} if payload["extra"] else payload["counters"]

"""CIFAR-100 from its official "python version" pickles (``cifar-100-python/``)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from ceag_cooper.data.base import GroupDataset, resolve_data_dir

__all__ = ["load_cifar100"]

_MEAN = torch.tensor([0.507, 0.487, 0.441]).view(1, 3, 1, 1)
_STD = torch.tensor([0.267, 0.256, 0.276]).view(1, 3, 1, 1)


_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
}
"""All that the official pickles need (dicts, lists, bytes and numpy arrays); nothing that runs code."""


class _SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers and numpy arrays (``pickle.load`` runs any code)."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-100 file")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: CIFAR-100 needs the official 'python version' folder cifar-100-python/ "
            "(files train, test, meta) under --data-dir / CEAG_DATA_DIR."
        )
    try:
        with path.open("rb") as handle:
            return _SafeUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise ValueError(
            f"{path} is not an official CIFAR-100 'python version' file ({error}); refusing to load it. "
            "Download cifar-100-python.tar.gz again."
        ) from error


def load_cifar100(
    data_dir: str | os.PathLike | None = None, *, groups: str = "coarse"
) -> tuple[GroupDataset, GroupDataset]:
    """CIFAR-100 (target: the 100 fine classes); groups are the 20 superclasses or the 100 classes.

    Args:
        data_dir: folder holding ``cifar-100-python/`` (default ``$CEAG_DATA_DIR`` or ``../shared/data``).
        groups: ``"coarse"`` (20 superclasses) or ``"fine"`` (the 100 classes).

    Returns:
        ``(train, test)`` :class:`GroupDataset` of normalized ``(3, 32, 32)`` images.
    """
    if groups not in ("coarse", "fine"):
        raise ValueError(f"`groups` must be 'coarse' or 'fine', got {groups!r}.")
    folder = resolve_data_dir(data_dir) / "cifar-100-python"
    meta = _unpickle(folder / "meta")
    fine_names = tuple(n.decode() for n in meta[b"fine_label_names"])
    coarse_names = tuple(n.decode() for n in meta[b"coarse_label_names"])

    def build(split: str) -> GroupDataset:
        raw = _unpickle(folder / split)
        data = np.asarray(raw[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{folder / split}: expected data of shape (N, 3072), got {data.shape}.")
        images = (torch.from_numpy(data).view(-1, 3, 32, 32).float() / 255.0 - _MEAN) / _STD
        fine = torch.tensor(raw[b"fine_labels"], dtype=torch.long)
        coarse = torch.tensor(raw[b"coarse_labels"], dtype=torch.long)
        attribute, names = (coarse, coarse_names) if groups == "coarse" else (fine, fine_names)
        return GroupDataset(
            inputs=images,
            targets=fine,
            attributes=attribute.unsqueeze(1),
            attribute_names=("superclass" if groups == "coarse" else "class",),
            value_names=(names,),
            class_names=fine_names,
            name=f"CIFAR-100-{split}",
        )

    return build("train"), build("test")

"""Every data set the same way: :func:`load_splits` returns ``(train, test)`` :class:`GroupDataset` s."""

from __future__ import annotations

import os
from typing import Any

from ceag_cooper.data.adult import load_adult
from ceag_cooper.data.base import GroupDataset
from ceag_cooper.data.cifar100 import load_cifar100
from ceag_cooper.data.fairface import load_fairface
from ceag_cooper.data.omniglot import load_omniglot
from ceag_cooper.data.synthetic import load_synthetic
from ceag_cooper.data.utkface import load_utkface

__all__ = ["DATA_SETS", "load_splits"]

DATA_SETS = ("utkface", "fairface", "adult", "omniglot", "cifar100", "synthetic")
"""The names :func:`load_splits` knows."""


def load_splits(
    name: str, data_dir: str | os.PathLike | None = None, **options: Any
) -> tuple[GroupDataset, GroupDataset]:
    """The ``(train, test)`` splits of data set ``name``, whatever its loader's own form.

    ``utkface``: the paper's 80/20 split (:func:`load_utkface` twice, one progress bar);
    ``fairface``: its ``train`` and ``val`` files; ``adult``, ``omniglot``, ``cifar100``: their
    loaders, which return both; ``synthetic``: :func:`load_synthetic` (no files, ``data_dir``
    ignored). ``options`` go to the data set's loader (``target``, ``protected``, ``size``...).

    Example:
        >>> train, test = load_splits("synthetic", num_samples=200)
        >>> len(train), len(test)
        (160, 40)
    """
    if name == "utkface":
        progress = options.pop("progress", True)
        train = load_utkface(data_dir, split="train", progress=progress, **options)
        return train, load_utkface(data_dir, split="test", progress=False, **options)
    if name == "fairface":
        return load_fairface(data_dir, split="train", **options), load_fairface(data_dir, split="val", **options)
    if name == "adult":
        return load_adult(data_dir, **options)
    if name == "omniglot":
        return load_omniglot(data_dir, **options)
    if name == "cifar100":
        return load_cifar100(data_dir, **options)
    if name == "synthetic":
        return load_synthetic(**options)
    raise ValueError(f"unknown data set {name!r}; choose among {', '.join(DATA_SETS)}.")

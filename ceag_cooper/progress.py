"""Progress bars through tqdm when it is installed (the ``progress`` extra), silence otherwise."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

__all__ = ["progress_bar"]

T = TypeVar("T")


def progress_bar(iterable: Iterable[T], *, description: str, total: int | None = None) -> Iterable[T]:
    """Wrap ``iterable`` in a tqdm bar labelled ``description``, or return it unchanged.

    Example:
        >>> list(progress_bar(range(3), description="demo"))
        [0, 1, 2]
    """
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - depends on the environment
        return iterable
    return tqdm(iterable, desc=description, total=total, leave=False)

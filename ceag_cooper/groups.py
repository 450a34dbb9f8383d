"""Protected groups: from one or several protected attributes to flat group ids.

Two ways to combine attributes:

* ``"intersectional"``: one group per combination of values (``race x gender`` gives
  ``5 * 2 = 10`` groups), numbered in row-major order exactly like
  :func:`numpy.ravel_multi_index`. Each sample belongs to one group; ids have shape ``(N,)``.
* ``"marginal"``: each value of each attribute is its own group (``5 + 2 = 7`` groups). A sample
  belongs to one group per attribute; ids have shape ``(N, A)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

import torch

from ceag_cooper._validation import check_positive_int

__all__ = ["GroupSpec"]

GroupMode = Literal["intersectional", "marginal"]


class GroupSpec:
    """How protected attributes map to the groups that the constraints are written over.

    Args:
        attribute_sizes: number of values of each protected attribute, e.g. ``[5, 2]``.
        attribute_names: a name per attribute (default ``attr0``, ``attr1``, ...).
        value_names: per attribute, a name per value (default the value itself).
        mode: ``"intersectional"`` (product of values) or ``"marginal"`` (each value separately).

    Example:
        >>> import torch
        >>> spec = GroupSpec([2, 3], attribute_names=["sex", "race"], mode="intersectional")
        >>> spec.num_groups
        6
        >>> spec.group_ids(torch.tensor([[1, 2], [0, 1]])).tolist()
        [5, 1]
        >>> spec.group_names[5]
        'sex=1, race=2'
        >>> GroupSpec([2, 3], mode="marginal").group_ids(torch.tensor([[1, 2]])).tolist()
        [[1, 4]]
    """

    def __init__(
        self,
        attribute_sizes: Sequence[int],
        *,
        attribute_names: Sequence[str] | None = None,
        value_names: Sequence[Sequence[str]] | None = None,
        mode: GroupMode = "intersectional",
    ) -> None:
        if isinstance(attribute_sizes, int):
            attribute_sizes = [attribute_sizes]
        sizes = [check_positive_int(size, f"attribute_sizes[{i}]") for i, size in enumerate(attribute_sizes)]
        if not sizes:
            raise ValueError("`attribute_sizes` is empty: give the number of values of each protected attribute.")
        if mode not in ("intersectional", "marginal"):
            raise ValueError(f"`mode` must be 'intersectional' or 'marginal', got {mode!r}.")
        names = list(attribute_names) if attribute_names is not None else [f"attr{i}" for i in range(len(sizes))]
        if len(names) != len(sizes):
            raise ValueError(f"`attribute_names` has {len(names)} names for {len(sizes)} attributes.")
        if value_names is None:
            values = [[str(v) for v in range(size)] for size in sizes]
        else:
            values = [[str(v) for v in per_attr] for per_attr in value_names]
            for i, (per_attr, size) in enumerate(zip(values, sizes, strict=False)):
                if len(per_attr) != size:
                    raise ValueError(f"`value_names[{i}]` has {len(per_attr)} names for {size} values.")
            if len(values) != len(sizes):
                raise ValueError(f"`value_names` has {len(values)} entries for {len(sizes)} attributes.")
        self.attribute_sizes: tuple[int, ...] = tuple(sizes)
        self.attribute_names: tuple[str, ...] = tuple(names)
        self.value_names: tuple[tuple[str, ...], ...] = tuple(tuple(v) for v in values)
        self.mode: GroupMode = mode
        strides = [1] * len(sizes)
        for i in range(len(sizes) - 2, -1, -1):
            strides[i] = strides[i + 1] * sizes[i + 1]
        self._strides = torch.tensor(strides, dtype=torch.long)
        offsets = [0]
        for size in sizes[:-1]:
            offsets.append(offsets[-1] + size)
        self._offsets = torch.tensor(offsets, dtype=torch.long)
        self._sizes = torch.tensor(sizes, dtype=torch.long)

    @property
    def fingerprint(self) -> str:
        """A short hash of sizes, names, value names and mode: which groups ids and statistics refer to.

        :func:`evaluate_groups` stores it in the :class:`GroupMetrics` it returns, and comparisons of
        statistics with different fingerprints are refused.
        """
        text = repr((self.attribute_sizes, self.attribute_names, self.value_names, self.mode))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def num_attributes(self) -> int:
        """Number of protected attributes ``A``."""
        return len(self.attribute_sizes)

    @property
    def num_groups(self) -> int:
        """Number of groups ``G`` (product of sizes, or their sum for marginal groups)."""
        if self.mode == "marginal":
            return sum(self.attribute_sizes)
        return int(torch.tensor(self.attribute_sizes).prod())

    @property
    def group_names(self) -> list[str]:
        """Readable name of each group, indexed by group id."""
        if self.mode == "marginal":
            return [
                f"{attr}={value}"
                for attr, values in zip(self.attribute_names, self.value_names, strict=True)
                for value in values
            ]
        names = [""]
        for attr, values in zip(self.attribute_names, self.value_names, strict=True):
            names = [f"{prefix}{', ' if prefix else ''}{attr}={value}" for prefix in names for value in values]
        return names

    def _as_matrix(self, attributes: torch.Tensor) -> torch.Tensor:
        if not isinstance(attributes, torch.Tensor):
            raise TypeError(f"`attributes` must be a torch.Tensor, got {type(attributes).__name__}.")
        if attributes.dtype.is_floating_point or attributes.dtype.is_complex or attributes.dtype == torch.bool:
            raise TypeError(f"`attributes` must hold integer values (torch.long), got dtype {attributes.dtype}.")
        if attributes.dim() == 1 and self.num_attributes == 1:
            attributes = attributes.unsqueeze(1)
        if attributes.dim() != 2 or attributes.shape[1] != self.num_attributes:
            raise ValueError(
                f"`attributes` must have shape (N, {self.num_attributes}) for attributes "
                f"{list(self.attribute_names)}, got shape {tuple(attributes.shape)}."
            )
        if attributes.shape[0] == 0:
            raise ValueError("`attributes` is empty: a batch needs at least one sample.")
        return attributes.long()

    def check_attributes(self, attributes: torch.Tensor) -> None:
        """Raise a clear error if any attribute value is negative or ``>=`` its declared count."""
        matrix = self._as_matrix(attributes)
        sizes = self._sizes.to(matrix.device)
        bad = (matrix < 0) | (matrix >= sizes)
        if matrix.device.type == "cpu" and bool(bad.any()):
            column = int(bad.any(0).nonzero()[0])
            value = int(matrix[bad[:, column].nonzero()[0, 0], column])
            raise ValueError(
                f"attribute {self.attribute_names[column]!r} has value {value}, outside [0, "
                f"{self.attribute_sizes[column]}); fix the data or declare more values in `attribute_sizes`."
            )
        if matrix.device.type != "cpu":  # pragma: no cover - accelerators only
            torch._assert_async(~bad.any(), "a protected attribute value is outside its declared range")

    def group_ids(self, attributes: torch.Tensor) -> torch.Tensor:
        """Flat group ids of each sample, on the device of ``attributes``.

        Args:
            attributes: integer tensor ``(N, A)`` (or ``(N,)`` for a single attribute).

        Returns:
            ``(N,)`` long ids for intersectional groups, ``(N, A)`` for marginal groups.
        """
        matrix = self._as_matrix(attributes)
        self.check_attributes(matrix)
        if self.mode == "marginal":
            return matrix + self._offsets.to(matrix.device)
        return (matrix * self._strides.to(matrix.device)).sum(dim=1)

    def __repr__(self) -> str:
        return (
            f"GroupSpec(attribute_sizes={list(self.attribute_sizes)}, "
            f"attribute_names={list(self.attribute_names)}, mode={self.mode!r}, num_groups={self.num_groups})"
        )

    def to_dict(self) -> dict:
        """A plain-Python description, enough to rebuild the spec with ``GroupSpec.from_dict``."""
        return {
            "attribute_sizes": list(self.attribute_sizes),
            "attribute_names": list(self.attribute_names),
            "value_names": [list(v) for v in self.value_names],
            "mode": self.mode,
        }

    @classmethod
    def from_dict(cls, spec: dict) -> GroupSpec:
        """Rebuild a spec from :meth:`to_dict` output."""
        return cls(
            spec["attribute_sizes"],
            attribute_names=spec["attribute_names"],
            value_names=spec["value_names"],
            mode=spec["mode"],
        )

"""In-memory data sets that yield ``(inputs, targets, protected_attributes)``."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ceag_cooper.groups import GroupMode, GroupSpec

__all__ = ["DEFAULT_DATA_DIR", "GroupDataset", "resolve_data_dir"]

DEFAULT_DATA_DIR = Path("../shared/data")
"""Where the shared data sets live, relative to the repository root (see ``CEAG_DATA_DIR``)."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data root: ``data_dir`` if given, else ``$CEAG_DATA_DIR``, else ``../shared/data``."""
    if data_dir is not None:
        return Path(data_dir)
    return Path(os.environ.get("CEAG_DATA_DIR", DEFAULT_DATA_DIR))


@dataclass
class GroupDataset(torch.utils.data.Dataset):
    """Tensors of a data set with protected attributes, held in memory.

    Indexing gives ``(input, target, attributes)``; :meth:`batches` yields shuffled mini-batches
    without a ``DataLoader`` (fast for in-memory tensors), and :meth:`group_spec` builds the
    :class:`GroupSpec` that turns the attribute columns into group ids.

    Attributes:
        inputs: ``(N, ...)`` model inputs.
        targets: ``(N,)`` class indices.
        attributes: ``(N, A)`` integer protected attributes.
        attribute_names: a name per attribute column.
        value_names: per attribute, a name per value (their number is the attribute's size).
        class_names: a name per class.
        name: the data set's name (for messages and results).

    Example:
        >>> data = GroupDataset(torch.randn(6, 2), torch.tensor([0, 1] * 3), torch.tensor([[0], [1], [1]] * 2),
        ...                     attribute_names=("sex",), value_names=(("male", "female"),), class_names=("no", "yes"))
        >>> data.group_spec().group_names
        ['sex=male', 'sex=female']
        >>> [len(x) for x, _, _ in data.batches(4, seed=0)]
        [4, 2]
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    attributes: torch.Tensor
    attribute_names: tuple[str, ...]
    value_names: tuple[tuple[str, ...], ...]
    class_names: tuple[str, ...]
    name: str = "data"

    def __post_init__(self) -> None:
        n = self.targets.shape[0]
        if self.inputs.shape[0] != n or self.attributes.shape[0] != n:
            raise ValueError(
                f"{self.name}: inputs ({self.inputs.shape[0]}), targets ({n}) and attributes "
                f"({self.attributes.shape[0]}) must have the same number of rows."
            )
        if self.attributes.dim() != 2 or self.attributes.shape[1] != len(self.attribute_names):
            raise ValueError(f"{self.name}: attributes must have shape (N, {len(self.attribute_names)}).")

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.targets[index], self.attributes[index]

    def fingerprint(self) -> str:
        """A hash of the contents (inputs, targets, attributes and names): which data a result used.

        Computed once per object (a pass over the tensors' bytes) and then cached.
        """
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            digest = hashlib.sha256()
            for tensor in (self.inputs, self.targets, self.attributes):
                tensor = tensor.detach().cpu().contiguous()
                digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
                digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
            digest.update(repr((self.attribute_names, self.value_names, self.class_names)).encode())
            cached = self.__dict__["_fingerprint"] = digest.hexdigest()[:16]
        return cached

    @property
    def num_classes(self) -> int:
        """Number of target classes."""
        return len(self.class_names)

    @property
    def attribute_sizes(self) -> tuple[int, ...]:
        """Number of values of each attribute."""
        return tuple(len(v) for v in self.value_names)

    def _columns(self, attributes: Sequence[str] | None) -> list[int]:
        if attributes is None:
            return list(range(len(self.attribute_names)))
        if isinstance(attributes, str):
            attributes = [attributes]
        columns = []
        for attribute in attributes:
            if attribute not in self.attribute_names:
                raise ValueError(
                    f"{self.name} has no attribute {attribute!r}; choose among {list(self.attribute_names)}."
                )
            columns.append(self.attribute_names.index(attribute))
        return columns

    def with_attributes(self, attributes: Sequence[str]) -> GroupDataset:
        """The same data keeping only the named attribute columns, in that order."""
        columns = self._columns(attributes)
        return replace(
            self,
            attributes=self.attributes[:, columns],
            attribute_names=tuple(self.attribute_names[c] for c in columns),
            value_names=tuple(self.value_names[c] for c in columns),
        )

    def group_spec(self, attributes: Sequence[str] | None = None, *, mode: GroupMode = "intersectional") -> GroupSpec:
        """The :class:`GroupSpec` over the named attributes (default: all, in column order).

        Use it on a dataset restricted with :meth:`with_attributes` to the same attributes, so that
        the attribute columns it receives match the spec.
        """
        columns = self._columns(attributes)
        return GroupSpec(
            [self.attribute_sizes[c] for c in columns],
            attribute_names=[self.attribute_names[c] for c in columns],
            value_names=[self.value_names[c] for c in columns],
            mode=mode,
        )

    def subset(self, indices: torch.Tensor) -> GroupDataset:
        """The rows at ``indices``."""
        return replace(
            self, inputs=self.inputs[indices], targets=self.targets[indices], attributes=self.attributes[indices]
        )

    def split_by_group(self, fraction: float, *, seed: int = 0) -> tuple[GroupDataset, GroupDataset]:
        """Split off ``fraction`` of every group (intersection of all attributes): ``(rest, held_out)``.

        Each group contributes ``round(fraction * n_g)`` samples to the held-out part (at least one
        when it has two or more), chosen at random with ``seed``.
        """
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"`fraction` must be in (0, 1), got {fraction}.")
        ids = self.group_spec().group_ids(self.attributes)
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=gen)
        held = []
        for group in torch.unique(ids).tolist():  # a one-off split, not a training step
            members = order[ids[order] == group]
            count = round(fraction * len(members)) if len(members) < 2 else max(1, round(fraction * len(members)))
            held.append(members[:count])
        held_index = torch.cat(held).sort().values
        keep = torch.ones(len(self), dtype=torch.bool)
        keep[held_index] = False
        return self.subset(keep.nonzero().flatten()), self.subset(held_index)

    def batches(
        self, batch_size: int, *, seed: int | None = None, drop_last: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Mini-batches ``(inputs, targets, attributes)``; shuffled with ``seed``, in order if ``None``."""
        n = len(self)
        order = torch.arange(n) if seed is None else torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            yield self.inputs[index], self.targets[index], self.attributes[index]

    def num_batches(self, batch_size: int, *, drop_last: bool = False) -> int:
        """How many batches :meth:`batches` yields."""
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)

"""A small synthetic task on which pruning hurts minority groups: for tests, demos, benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ceag_cooper.data.base import GroupDataset

__all__ = ["SyntheticGroupTask", "load_synthetic", "make_group_imbalanced_task"]


@dataclass
class SyntheticGroupTask:
    """Tensors of a synthetic task.

    Attributes:
        inputs: ``(N, features + G)`` Gaussian features followed by a one-hot group indicator.
        targets: ``(N,)`` binary labels.
        attributes: ``(N, 1)`` the protected attribute (the group).
        num_groups: ``G``.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    attributes: torch.Tensor
    num_groups: int

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def batches(self, batch_size: int = 128, *, seed: int | None = 0) -> list[tuple[torch.Tensor, ...]]:
        """Mini-batches ``(inputs, targets, attributes)``, shuffled by ``seed`` (``None``: in order)."""
        n = len(self)
        order = torch.arange(n) if seed is None else torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        return [(self.inputs[i], self.targets[i], self.attributes[i]) for i in order.split(batch_size)]


def make_group_imbalanced_task(
    num_samples: int = 4000,
    *,
    shares: Sequence[float] = (0.8, 0.15, 0.05),
    features: int = 16,
    seed: int = 0,
) -> SyntheticGroupTask:
    """A task whose groups (of unequal sizes) each follow their own labelling rule.

    Each group labels points by the sign of its *own* random linear score (plus a shared
    non-linearity), so a small model must spend capacity on every group, and a pruned model
    fine-tuned without constraints sacrifices the small groups first.

    Args:
        num_samples: number of samples.
        shares: probability of each group (their number is ``G``).
        features: number of Gaussian features.
        seed: seed of the sampling (the groups' score directions are fixed).

    Example:
        >>> task = make_group_imbalanced_task(100, seed=0)
        >>> task.inputs.shape, task.num_groups
        (torch.Size([100, 19]), 3)
    """
    probabilities = torch.tensor(shares, dtype=torch.float64)
    if probabilities.dim() != 1 or len(probabilities) < 1 or (probabilities <= 0).any():
        raise ValueError(f"`shares` must be positive group probabilities, got {list(shares)}.")
    num_groups = len(probabilities)
    gen = torch.Generator().manual_seed(seed)
    groups = torch.multinomial(probabilities / probabilities.sum(), num_samples, replacement=True, generator=gen)
    x = torch.randn(num_samples, features, generator=gen)
    directions = torch.randn(num_groups, features, generator=torch.Generator().manual_seed(1))
    y = ((x * directions[groups]).sum(1) + 0.5 * torch.sin(3 * x[:, 0]) > 0).long()
    inputs = torch.cat([x, F.one_hot(groups, num_groups).float()], dim=1)
    return SyntheticGroupTask(inputs=inputs, targets=y, attributes=groups.unsqueeze(1), num_groups=num_groups)


def load_synthetic(
    num_samples: int = 4000, *, seed: int = 0, train_fraction: float = 0.8
) -> tuple[GroupDataset, GroupDataset]:
    """:func:`make_group_imbalanced_task` as ``(train, test)`` :class:`GroupDataset` s, like every loader.

    The first ``train_fraction`` of the samples train, the rest test; the groups are named
    ``majority``, ``minority`` and ``rare`` (shares 80/15/5%).

    Example:
        >>> train, test = load_synthetic(100)
        >>> len(train), len(test), train.value_names
        (80, 20, (('majority', 'minority', 'rare'),))
    """
    task = make_group_imbalanced_task(num_samples, seed=seed)
    common = {
        "attribute_names": ("group",),
        "value_names": (("majority", "minority", "rare"),),
        "class_names": ("0", "1"),
    }
    cut = int(train_fraction * num_samples)
    train = GroupDataset(task.inputs[:cut], task.targets[:cut], task.attributes[:cut], name="synthetic-train", **common)
    test = GroupDataset(task.inputs[cut:], task.targets[cut:], task.attributes[cut:], name="synthetic-test", **common)
    return train, test

"""The problems' multiplier: Cooper's ``IndexedMultiplier``, with a dense gradient where that is cheaper.

Every step of a :class:`~ceag_cooper.problems.GroupFairnessProblem` observes all ``C``
constraints (those a batch cannot estimate get a violation of exactly 0), so that shapes never
depend on the data. The gradient Cooper's ``IndexedMultiplier`` produces is then a sparse COO
tensor with ``C`` entries, and a plain SGD step on it coalesces and scatters them: at 100,000
groups most of CEAG's extra cost per step. Plain SGD applies exactly the same update from the
dense gradient (entries of 0 leave their multipliers unchanged), so :func:`ceag_cooper.build_optimizer`
switches the gradient to dense for it. nuPI (also used for any dual weight decay) keeps Cooper's
sparse gradient: Cooper's sparse and dense nuPI paths initialise the smoothed violation
differently, so switching would change its numbers.
"""

from __future__ import annotations

import cooper
import torch

__all__ = ["GroupMultiplier"]


class GroupMultiplier(cooper.multipliers.IndexedMultiplier):
    """An :class:`~cooper.multipliers.IndexedMultiplier` whose gradient is dense when :attr:`dense_gradient` is set.

    Example:
        >>> import torch
        >>> multiplier = GroupMultiplier(num_constraints=3)
        >>> multiplier.dense_gradient = True
        >>> multiplier(torch.arange(3)).sum().backward()
        >>> multiplier.weight.grad.is_sparse, multiplier.weight.grad.flatten().tolist()
        (False, [1.0, 1.0, 1.0])
    """

    dense_gradient: bool = False

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """The multipliers at ``indices`` (``(num_indices,)`` of dtype long), as Cooper's."""
        if not self.dense_gradient:
            return super().forward(indices)
        if indices.dtype != torch.long:
            raise ValueError("Indices must be of type torch.long.")
        # index_select, not a dense embedding: its backward is one index_add (embedding's sorts the indices)
        return torch.flatten(torch.index_select(self.weight, 0, indices))

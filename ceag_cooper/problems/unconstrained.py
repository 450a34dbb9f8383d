"""Naive fine-tuning (NFT): the same statistics and reporting, no constraint."""

from __future__ import annotations

from typing import ClassVar

import cooper

from ceag_cooper.problems.base import GroupFairnessProblem

__all__ = ["NaiveFineTuning", "Unconstrained"]


class Unconstrained(GroupFairnessProblem):
    """Plain empirical risk minimization on the sparse model (the paper's NFT baseline).

    It computes the same :class:`BatchStatistics` as the constrained problems (so logging and
    reports are identical) but observes no constraint and has no multiplier; use it with
    :func:`build_optimizer`, which returns a :class:`cooper.optim.UnconstrainedOptimizer`.

    Example:
        >>> import torch
        >>> problem = Unconstrained(num_groups=2)
        >>> state = problem.compute_cmp_state(logits=torch.randn(4, 3), targets=torch.tensor([0, 1, 2, 0]),
        ...                                   group_ids=torch.tensor([0, 1, 1, 0]))
        >>> state.observed_constraints
        {}
    """

    constraint_type: ClassVar[cooper.ConstraintType | None] = None


NaiveFineTuning = Unconstrained
"""Alias of :class:`Unconstrained`, the name the paper uses (NFT)."""

"""Build the Cooper optimizer that drives a problem: the whole integration in one call."""

from __future__ import annotations

from typing import Literal

import cooper
import torch

from ceag_cooper.problems.base import GroupFairnessProblem

__all__ = ["StepOrder", "build_optimizer"]

StepOrder = Literal["dual_primal", "simultaneous"]


def build_optimizer(
    problem: GroupFairnessProblem,
    primal_optimizer: torch.optim.Optimizer | list[torch.optim.Optimizer],
    *,
    dual_lr: float = 1e-2,
    order: StepOrder = "dual_primal",
) -> cooper.optim.CooperOptimizer:
    """The Cooper optimizer for ``problem``, as the paper runs it.

    The multipliers are updated by plain projected gradient ascent (``torch.optim.SGD`` with
    ``maximize=True``, no momentum), so that one step is exactly
    ``lambda <- relu(lambda + dual_lr * strict_violation)`` for observed constraints and leaves
    unobserved ones unchanged. ``order="dual_primal"`` (default, as the paper) updates the
    multipliers first and then the model with the new multipliers, from one forward pass;
    ``"simultaneous"`` uses the old multipliers for the model step. An unconstrained problem
    gets a :class:`cooper.optim.UnconstrainedOptimizer`.

    Args:
        problem: a :class:`GroupFairnessProblem` (``CEAG``, ``EqualizedLoss``, ``Unconstrained``...).
        primal_optimizer: the model's optimizer(s), built as usual.
        dual_lr: multiplier step size (> 0).
        order: ``"dual_primal"`` or ``"simultaneous"``.

    Returns:
        A Cooper optimizer; call ``optimizer.roll(compute_cmp_state_kwargs=...)`` once per batch.

    Example:
        >>> import torch
        >>> from ceag_cooper import EqualizedLoss
        >>> model = torch.nn.Linear(4, 2)
        >>> problem = EqualizedLoss(num_groups=3)
        >>> optimizer = build_optimizer(problem, torch.optim.SGD(model.parameters(), lr=0.1), dual_lr=1e-2)
        >>> type(optimizer).__name__
        'AlternatingDualPrimalOptimizer'
    """
    if not isinstance(problem, GroupFairnessProblem):
        raise TypeError(f"`problem` must be a GroupFairnessProblem, got {type(problem).__name__}.")
    if isinstance(dual_lr, bool) or not isinstance(dual_lr, (int, float)) or not dual_lr > 0:
        raise ValueError(f"`dual_lr` must be a float > 0, got {dual_lr!r}.")
    classes = {
        "dual_primal": cooper.optim.AlternatingDualPrimalOptimizer,
        "simultaneous": cooper.optim.SimultaneousOptimizer,
    }
    if order not in classes:
        raise ValueError(f"`order` must be 'dual_primal' or 'simultaneous', got {order!r}.")
    if problem.constraint_type is None:
        return cooper.optim.UnconstrainedOptimizer(cmp=problem, primal_optimizers=primal_optimizer)
    dual_optimizer = torch.optim.SGD(problem.dual_parameters(), lr=float(dual_lr), maximize=True)
    return classes[order](cmp=problem, primal_optimizers=primal_optimizer, dual_optimizers=dual_optimizer)

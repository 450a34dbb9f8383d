"""Equalized loss (Tran et al., 2022), the paper's main baseline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import cooper
import torch

from ceag_cooper._validation import check_non_negative_float, check_positive_int
from ceag_cooper.metrics.functional import weighted_overall
from ceag_cooper.metrics.group_metrics import GroupMetrics
from ceag_cooper.problems.base import BatchStatistics, GroupFairnessProblem, ProblemOptions
from ceag_cooper.problems.buffers import ReplayBufferStore, TensorState

if TYPE_CHECKING:  # annotations only: no runtime dependency
    from typing_extensions import Unpack

__all__ = ["EqualizedLoss"]


class EqualizedLoss(GroupFairnessProblem):
    r"""Constrain every group's loss to equal the overall loss: :math:`L_g - L = 0`.

    The model step uses the batch's differentiable :math:`L_g - L` on the groups present. The
    multiplier step uses the same quantity, detached, or, with ``buffer_size=k`` (``EL + RB``),
    each group's mean of its last ``k`` per-sample losses (groups with full buffers only), the
    overall loss being their population-weighted mean: weights are the reference's population
    shares when ``reference`` is given, else the group counts seen so far in training.

    With ``absolute=True`` the constraints become inequalities :math:`|L_g - L| \le \epsilon`
    (non-negative multipliers); otherwise they are equalities (multipliers of either sign).

    ``form="paper"`` is what the paper's official code runs in every configuration
    (``abs_equality_constraint=True``): *equality* constraints whose violation is
    :math:`|L_g - L|` (always :math:`\ge 0`, so every observed multiplier only grows), and, with
    buffers, an *unweighted* overall: the mean of the observed groups' buffered losses.
    ``form="signed"`` (default) is :math:`L_g - L` with the population-weighted overall above. The
    experiment harness (``ExperimentConfig.el_form``) defaults to ``"paper"`` instead, since its
    tables compare with the paper; this class keeps ``"signed"``, the textbook equality.

    With ``distillation=``, the losses are the distilled ones wherever the training pass is read (the
    model step, and the multiplier step and buffers with ``constraint_estimate="train"``); an eval-mode
    or held-out multiplier step has no teacher output and reads plain losses, so its constraints are on
    the plain loss while the model step follows the distilled one.

    Args:
        num_groups: number of groups (or give ``reference``).
        reference: optional dense :class:`GroupMetrics` (only its population shares are used).
        buffer_size: ``k`` for loss replay buffers; ``None`` (default) uses the batch.
        absolute: use :math:`|L_g - L| - \epsilon \le 0` instead of equalities.
        tolerance: :math:`\epsilon` for ``absolute=True`` (must stay 0 otherwise).
        form: ``"signed"`` (default) or ``"paper"`` (see above; not with ``absolute=True``).
        **options: :class:`ProblemOptions`, see :class:`GroupFairnessProblem` (held-out batches
            then drive the multiplier step).

    Example:
        >>> import torch
        >>> problem = EqualizedLoss(num_groups=3)
        >>> state = problem.compute_cmp_state(logits=torch.randn(6, 2), targets=torch.tensor([0, 1] * 3),
        ...                                   group_ids=torch.tensor([0, 1, 2, 0, 1, 2]))
        >>> state.observed_constraints[problem.fairness].violation.shape
        torch.Size([3])
    """

    def __init__(
        self,
        *,
        num_groups: int | None = None,
        reference: GroupMetrics | None = None,
        buffer_size: int | None = None,
        absolute: bool = False,
        tolerance: float = 0.0,
        form: Literal["signed", "paper"] = "signed",
        **options: Unpack[ProblemOptions],
    ) -> None:
        if form not in ("signed", "paper"):
            raise ValueError(f"`form` must be 'signed' or 'paper', got {form!r}.")
        if form == "paper" and absolute:
            raise ValueError("`form='paper'` is the paper's |L_g - L| = 0 equality form; it excludes `absolute=True`.")
        self.form = form
        self.tolerance = check_non_negative_float(tolerance, "tolerance")
        if not absolute and self.tolerance != 0.0:
            raise ValueError("`tolerance` needs `absolute=True`: equality constraints L_g - L = 0 have no tolerance.")
        if buffer_size is not None:
            check_positive_int(buffer_size, "buffer_size")
        self.absolute = absolute
        self.buffer_size = buffer_size
        self.constraint_type = cooper.ConstraintType.INEQUALITY if absolute else cooper.ConstraintType.EQUALITY
        super().__init__(num_groups=num_groups, reference=reference, **options)
        store = ReplayBufferStore(self.num_groups, buffer_size, device=self.device) if buffer_size else None
        self.buffers: ReplayBufferStore | None = self.register_state("buffers", store)
        # Samples seen per group: the overall's weights when no reference gives population shares.
        self.seen_counts = self.register_state(
            "seen_counts", TensorState(torch.zeros(self.num_groups, device=self.device))
        )

    def _shape(self, gaps: torch.Tensor) -> torch.Tensor:
        if self.form == "paper":
            return gaps.abs()
        return gaps.abs() - self.tolerance if self.absolute else gaps

    def update_estimates(self, stats: BatchStatistics) -> None:
        """Feed per-sample losses to the buffers and count the groups seen."""
        self.seen_counts.value += stats.group_count.detach()
        if self.buffers is not None:
            self.buffers.update(stats.group_ids, stats.per_sample_loss.detach())

    def proxy_violations(self, stats: BatchStatistics) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable ``L_g - L`` on the present groups."""
        return self._shape(stats.group_loss - stats.loss), stats.present

    def strict_violations(self, stats: BatchStatistics) -> tuple[torch.Tensor, torch.Tensor]:
        """``L_g - L`` from the loss buffers (full groups) or the batch, detached."""
        if self.buffers is None:
            return self._shape(stats.group_loss.detach() - stats.loss.detach()), stats.present
        group_loss, observed = self.buffers.query()
        if self.form == "paper":  # the official code: unweighted mean over the observed groups
            shares = torch.ones_like(self.seen_counts.value)
        else:
            shares = self.reference.population_share if self.reference is not None else self.seen_counts.value
        overall = weighted_overall(group_loss, observed.to(group_loss.dtype) * shares.to(group_loss.dtype))
        return self._shape(group_loss - overall), observed

    def config(self) -> dict[str, Any]:
        """See :meth:`GroupFairnessProblem.config`; adds buffer size, tolerance and form."""
        return {
            **super().config(),
            "buffer_size": self.buffer_size,
            "absolute": self.absolute,
            "tolerance": self.tolerance,
            "form": self.form,
        }

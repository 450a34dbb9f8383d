"""CEAG: constrained excess accuracy gaps (Hashemizadeh, Ramirez et al., ICLR 2024)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

import torch

from ceag_cooper._validation import check_non_negative_float, check_positive_int
from ceag_cooper.metrics.functional import binomial_standard_error, weighted_overall
from ceag_cooper.metrics.group_metrics import GroupMetrics
from ceag_cooper.problems.base import BatchStatistics, GroupFairnessProblem, ProblemOptions
from ceag_cooper.problems.buffers import ReplayBufferStore

if TYPE_CHECKING:  # annotations only: no runtime dependency
    from typing_extensions import Unpack

__all__ = ["CEAG", "DualStepScale", "OverallMode", "TwoSidedCEAG"]

OverallMode = Literal["population", "balanced"]
DualStepScale = Literal["uniform", "share"]
"""How CEAG's multiplier steps differ between groups: one step for all, or one in proportion to group size."""


class CEAG(GroupFairnessProblem):
    r"""Fine-tune a sparse model with a bound on each group's excess accuracy gap.

    With :math:`\Delta_g = acc_{dense}(g) - acc_{sparse}(g)` and
    :math:`\Delta = acc_{dense} - acc_{sparse}`, the constraints are
    :math:`\psi_g = \Delta_g - \Delta \le \epsilon` for every group ``g``.

    * Model step (``violation``): the cross-entropy proxy
      :math:`\tilde\psi_g = (L_g - L^{dense}_g) - (L - L^{dense}) - \epsilon` on the groups
      present in the batch.
    * Multiplier step (``strict_violation``): the accuracy gap :math:`\hat\psi_g - \epsilon`.
      With replay buffers (``buffer_size=k``), :math:`acc_{sparse}(g)` is the mean of the
      group's last ``k`` per-sample accuracies and only groups with full buffers are observed;
      the overall gap is then the population-weighted mean of the observed groups' gaps
      (weights = reference shares renormalized over those groups). Once every buffer is full,
      its dense side is exactly the reference's whole-data accuracy and its sparse side a
      share-weighted estimate of the whole-data sparse accuracy; while a single group is
      observed, that group's estimate is 0 by construction. Without buffers the batch is used: group
      accuracies of the present groups, overall sparse accuracy of the batch, overall dense
      accuracy of the reference.

    ``detach_overall=True`` treats the overall term :math:`L - L^{dense}` of the proxy as a
    constant in the model step, whose gradient is then :math:`\nabla L + \sum_g \lambda_g
    \nabla L_g` instead of :math:`(1 - \sum_g \lambda_g) \nabla L + \sum_g \lambda_g \nabla L_g`.
    Use it with many groups: once the multipliers sum to more than 1 (tens of groups with small
    multipliers suffice), the paper's proxy *rewards* raising the loss of every group whose
    multiplier is below its population share times that sum, and training can collapse (measured
    on UTKFace with 90 groups and Omniglot with 242: accuracy fell to 17% and 1%). The multiplier
    step is unchanged.

    ``overall="balanced"`` reproduces the paper's code: the overall sparse accuracy is the
    *unweighted* mean of the observed groups' accuracies, compared with the reference's
    overall dense accuracy. It is biased when groups are imbalanced; use it only to reproduce.

    ``margin=m`` enforces the stricter target :math:`\psi_g \le \epsilon - m` in the multiplier
    step, while :attr:`tolerance` stays the requirement that reports check. A Lagrangian method
    settles *on* the boundary it enforces, and the estimate it enforces (a replay buffer of
    ``k`` samples, a training-mode pass) differs from the final measurement by noise of a point or
    more on small groups: without a margin about half of the final models land just above ε.

    Args:
        reference: the dense model's :class:`GroupMetrics` on the training set (required).
        tolerance: :math:`\epsilon \ge 0`, as a fraction (0.01 = one accuracy point): the
            requirement.
        margin: :math:`m \ge 0`, as a fraction: the multipliers enforce :math:`\epsilon - m`
            (default 0, the paper).
        buffer_size: ``k``, per-group replay buffer length; ``None`` disables the buffers.
        fit_buffers_to_groups: give a group with fewer than ``k`` samples in the reference a
            buffer of its size, so that a full buffer holds each of its samples once (its exact
            whole-group accuracy from the latest pass) instead of repeats spanning several epochs.
            Default ``False`` (the paper).
        resolution_z: :math:`z \ge 0`: per-group tolerances
            :math:`\epsilon_g = \epsilon + z \cdot SE_g`, with :math:`SE_g` the binomial standard
            error of group ``g``'s dense accuracy at its size in the reference (Laplace-smoothed, as
            :attr:`DisparityReport.standard_error`). A group whose accuracy the data cannot resolve
            to within ε then gets a looser bound instead of a multiplier driven by noise. Default 0
            (one ε for every group, the paper). Reports still check the plain ε.
        overall: ``"population"`` (default) or ``"balanced"`` (see above).
        dual_step_scale: ``"uniform"`` (default, the paper): one multiplier step size for every group.
            ``"share"``: group ``g``'s step is multiplied by :math:`n_g / \bar n`, its size over the mean
            group size in the reference (the training data; mean factor 1), see :meth:`dual_step_weights`.
        detach_overall: no gradient through the proxy's overall term (see above); default
            ``False``, the paper's proxy.
        **options: :class:`ProblemOptions` (``loss_fn``, ``start_step``, ``device``, ``heldout``,
            ``constraint_estimate``...), see :class:`GroupFairnessProblem`.

    Example:
        >>> import torch
        >>> from ceag_cooper import CEAG, GroupMetrics, build_optimizer
        >>> ref = GroupMetrics(torch.tensor([0.9, 0.8]), torch.tensor([0.3, 0.5]), torch.tensor([60.0, 40.0]),
        ...                    torch.tensor(0.86), torch.tensor(0.38), torch.tensor(100.0))
        >>> problem = CEAG(reference=ref, tolerance=0.01, buffer_size=4)
        >>> model = torch.nn.Linear(4, 3)
        >>> optimizer = build_optimizer(problem, torch.optim.SGD(model.parameters(), lr=0.1), dual_lr=0.01)
        >>> x, y, g = torch.randn(8, 4), torch.randint(0, 3, (8,)), torch.tensor([0, 1] * 4)
        >>> _ = optimizer.roll(compute_cmp_state_kwargs=dict(model=model, inputs=x, targets=y, group_ids=g))
        >>> bool((problem.multiplier_values >= 0).all())
        True
    """

    requires_reference: ClassVar[bool] = True
    config_added: ClassVar[dict[str, Any]] = {
        "resolution_z": 0.0,
        "fit_buffers_to_groups": False,
        "dual_step_scale": "uniform",
    }

    def __init__(
        self,
        *,
        reference: GroupMetrics,
        tolerance: float = 0.01,
        margin: float = 0.0,
        buffer_size: int | None = 40,
        fit_buffers_to_groups: bool = False,
        resolution_z: float = 0.0,
        overall: OverallMode = "population",
        detach_overall: bool = False,
        dual_step_scale: DualStepScale = "uniform",
        **options: Unpack[ProblemOptions],
    ) -> None:
        if options.get("heldout") is not None and options.get("heldout_reference") is None:
            raise ValueError(
                "held-out estimation compares with the dense model on the held-out data: pass `heldout_reference`, "
                "e.g. evaluate_groups(dense_model, heldout_loader, groups=spec)."
            )
        self.tolerance = check_non_negative_float(tolerance, "tolerance")
        self.margin = check_non_negative_float(margin, "margin")
        self.resolution_z = check_non_negative_float(resolution_z, "resolution_z")
        # derived from the reference on first use, dropped by _forget_derived (after to() and loading)
        self._group_target: torch.Tensor | None = None
        self._constraint_target: torch.Tensor | None = None
        if not isinstance(fit_buffers_to_groups, bool):
            raise TypeError(f"`fit_buffers_to_groups` must be a bool, got {type(fit_buffers_to_groups).__name__}.")
        self.fit_buffers_to_groups = fit_buffers_to_groups
        if self.tolerance > 0.5:
            warnings.warn(
                f"tolerance={tolerance} allows each group to lose {100 * self.tolerance:g} accuracy points more than "
                "average: tolerances are fractions (0.01 = one point). Pass tolerance=0.01 for one point.",
                stacklevel=2,
            )
        if self.margin > self.tolerance:
            warnings.warn(
                f"margin={margin} exceeds tolerance={tolerance}: the multipliers then demand that every group do "
                f"better than average by {100 * (self.margin - self.tolerance):g} points (a negative target).",
                stacklevel=2,
            )
        if buffer_size is not None:
            check_positive_int(buffer_size, "buffer_size")
        if overall not in ("population", "balanced"):
            raise ValueError(f"`overall` must be 'population' or 'balanced', got {overall!r}.")
        if not isinstance(detach_overall, bool):
            raise TypeError(f"`detach_overall` must be a bool, got {type(detach_overall).__name__}.")
        if dual_step_scale not in get_args(DualStepScale):
            raise ValueError(f"`dual_step_scale` must be 'uniform' or 'share', got {dual_step_scale!r}.")
        self.dual_step_scale = dual_step_scale
        self._step_weights: torch.Tensor | None = None  # (C,), derived like _group_target
        self.buffer_size = buffer_size
        self.overall = overall
        self.detach_overall = detach_overall
        super().__init__(reference=reference, **options)
        capacity = None
        if buffer_size and fit_buffers_to_groups:  # the data the buffers see: held-out or training
            sizes = self.strict_reference.group_count.round().long()
            capacity = sizes.clamp(min=1, max=buffer_size)
        store = (
            # 0/1 accuracies: running sums are exact (and O(batch) per step instead of O(G k))
            ReplayBufferStore(
                self.num_groups, buffer_size, device=self.device, group_capacity=capacity, running_sums=True
            )
            if buffer_size
            else None
        )
        self.buffers: ReplayBufferStore | None = self.register_state("buffers", store)

    def update_estimates(self, stats: BatchStatistics) -> None:
        """Feed each sample's 0/1 accuracy to its groups' replay buffers."""
        if self.buffers is not None:
            self.buffers.update(stats.group_ids, stats.per_sample_correct)

    def proxy_gaps(self, stats: BatchStatistics) -> torch.Tensor:
        r"""Differentiable :math:`\tilde\psi_g` (without the tolerance), from the training batch."""
        ref = self.reference
        overall = stats.loss.detach() if self.detach_overall else stats.loss
        return (stats.group_loss - ref.group_loss) - (overall - ref.loss)

    def _forget_derived(self) -> None:
        """The bounds and step factors come from the reference, device and dtype: rebuilt on next use."""
        self._group_target = self._constraint_target = self._step_weights = None

    @property
    def target(self) -> float:
        """The bound the multipliers enforce: ``tolerance - margin`` (see :attr:`group_target`)."""
        return self.tolerance - self.margin

    @property
    def group_target(self) -> torch.Tensor | float:
        r"""Each group's enforced bound :math:`\epsilon_g - m`, ``(G,)``; :attr:`target` when ``resolution_z == 0``."""
        if self.resolution_z == 0:
            return self.target
        if self._group_target is None:
            self._group_target = self.group_tolerance - self.margin
        return self._group_target

    @property
    def constraint_target(self) -> torch.Tensor | float:
        """:attr:`group_target` laid out as the constraints are: ``(C,)``, or the float :attr:`target`."""
        if self.resolution_z == 0:
            return self.target
        if self._constraint_target is None:
            self._constraint_target = self._per_constraint(self.group_target)
        return self._constraint_target

    @property
    def group_tolerance(self) -> torch.Tensor:
        r"""``(G,)`` :math:`\epsilon_g = \epsilon + z \cdot SE_g` from the reference's group sizes and accuracies."""
        ref = self.strict_reference  # a held-out reference may have empty groups: counted as one sample
        return self.tolerance + self.resolution_z * binomial_standard_error(
            ref.group_accuracy, ref.group_count.clamp(min=1)
        )

    def dual_step_weights(self) -> torch.Tensor | None:
        r"""``(C,)`` per-constraint :math:`n_g / \bar n` with ``dual_step_scale="share"``; else ``None`` (one step).

        Why in proportion to size: in the model step, multiplier :math:`\lambda_g` weighs the group's
        *mean* loss next to the overall mean loss of the training batch, in which the group already counts
        with its share :math:`n_g / N`; re-weighting a group by the same factor therefore takes a
        multiplier in proportion to its size. With one step for every group, a group ten times the size
        of another needs ten times as many violated steps before its multiplier matters as much, while
        the smallest groups, whose estimates are the noisiest, gain weight fastest. With these factors
        :math:`\lambda_g / n_g` moves by ``dual_lr`` :math:`\cdot\, \hat\psi_g / \bar n` per step, the same
        rate for every group at the same violation, and when every group violates alike the sum of the
        multipliers grows as with one step (the factors average 1), so ``dual_lr="auto"`` keeps its
        meaning. Sizes are those of :attr:`reference` (the training data the model step sees, also when
        the multiplier side is estimated on held-out data). With ``dual_weight_decay=d`` the decay is not
        scaled, so group ``g``'s multiplier is bounded by :math:`(n_g / \bar n)` ``* max_violation / d``.
        """
        if self.dual_step_scale == "uniform":
            return None
        if self._step_weights is None:
            counts = self.reference.group_count.double()  # every group has samples (checked at construction)
            dtype = self.fairness.multiplier.weight.dtype  # the strict violation's: no cast per step
            self._step_weights = self._per_constraint(counts / counts.mean()).to(dtype)
        return self._step_weights

    @staticmethod
    def _per_constraint(per_group: torch.Tensor | float) -> torch.Tensor | float:
        """A per-group value laid out as the constraints are (one per group here)."""
        return per_group

    def proxy_violations(self, stats: BatchStatistics) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy excess gaps of the present groups, minus the enforced target."""
        return self.proxy_gaps(stats) - self.constraint_target, stats.present

    def excess_accuracy_gaps(self, stats: BatchStatistics) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Estimated :math:`\hat\psi_g` (without the tolerance) and which groups are observed."""
        ref = self.strict_reference
        if self.buffers is not None:
            group_acc, observed = self.buffers.query()
            weights = observed.to(group_acc.dtype)
            if self.overall == "population":
                weights = weights * ref.population_share
                dense = weighted_overall(ref.group_accuracy, weights)
            else:
                dense = ref.accuracy
            sparse = weighted_overall(group_acc, weights)
        else:
            observed = stats.present
            group_acc = stats.group_accuracy
            dense = ref.accuracy
            if self.overall == "population":
                sparse = stats.accuracy
            else:
                sparse = weighted_overall(group_acc, observed.to(group_acc.dtype))
        gaps = (ref.group_accuracy - group_acc) - (dense - sparse)
        return gaps, observed

    def strict_violations(self, stats: BatchStatistics) -> tuple[torch.Tensor, torch.Tensor]:
        """Accuracy excess gaps minus the enforced target, from buffers or the batch."""
        gaps, observed = self.excess_accuracy_gaps(stats)
        return gaps - self.constraint_target, observed

    def config(self) -> dict[str, Any]:
        """See :meth:`GroupFairnessProblem.config`; adds tolerance, margin, buffers and mode."""
        return {
            **super().config(),
            "tolerance": self.tolerance,
            "margin": self.margin,
            "buffer_size": self.buffer_size,
            "overall": self.overall,
            "resolution_z": self.resolution_z,
            "fit_buffers_to_groups": self.fit_buffers_to_groups,
            "dual_step_scale": self.dual_step_scale,
        }


class TwoSidedCEAG(CEAG):
    r"""CEAG with two-sided constraints :math:`|\psi_g| \le \epsilon`.

    Plain CEAG only bounds groups that lose *more* than average; a group that gains much more than
    average still widens :math:`\Psi_{PW} = \max_g \psi_g - \min_g \psi_g`. Here each group has two
    constraints, :math:`\psi_g - \epsilon \le 0` (rows ``0..G-1`` of the multiplier) and
    :math:`-\psi_g - \epsilon \le 0` (rows ``G..2G-1``), all in one indexed multiplier.

    Example:
        >>> import torch
        >>> from ceag_cooper import GroupMetrics
        >>> ref = GroupMetrics(torch.tensor([0.9, 0.8]), torch.ones(2), torch.tensor([6.0, 4.0]),
        ...                    torch.tensor(0.86), torch.tensor(1.0), torch.tensor(10.0))
        >>> TwoSidedCEAG(reference=ref, tolerance=0.01).num_constraints()
        4
    """

    def num_constraints(self) -> int:
        """Two constraints per group."""
        return 2 * self.num_groups

    def proxy_violations(self, stats: BatchStatistics) -> tuple[torch.Tensor, torch.Tensor]:
        """``[psi~ - eps, -psi~ - eps]`` on the present groups."""
        gaps = self.proxy_gaps(stats)
        return torch.cat([gaps, -gaps]) - self.constraint_target, stats.present.repeat(2)

    def strict_violations(self, stats: BatchStatistics) -> tuple[torch.Tensor, torch.Tensor]:
        """``[psi^ - eps, -psi^ - eps]`` on the observed groups."""
        gaps, observed = self.excess_accuracy_gaps(stats)
        return torch.cat([gaps, -gaps]) - self.constraint_target, observed.repeat(2)

    @staticmethod
    def _per_constraint(target: torch.Tensor | float) -> torch.Tensor | float:
        """Both sides of each group: rows ``0..G-1`` and ``G..2G-1``."""
        return target.repeat(2) if isinstance(target, torch.Tensor) else target

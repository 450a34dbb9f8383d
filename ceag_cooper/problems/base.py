"""The base class of every problem: per-group batch statistics plus one indexed constraint.

A new fairness constraint is a small subclass that says what its violations are (see
``examples/custom_constraint.py``); the base class handles the model call, validation, the
estimators' feeding order and state, the Cooper plumbing, distributed training and checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import cooper
import torch

from ceag_cooper import distributed
from ceag_cooper._validation import check_finite, check_group_ids, check_hook_output, check_same_device
from ceag_cooper.groups import GroupSpec
from ceag_cooper.metrics.evaluation import call_model
from ceag_cooper.metrics.functional import LossFn
from ceag_cooper.metrics.group_metrics import GroupMetrics
from ceag_cooper.problems import sync
from ceag_cooper.problems.distillation import Distillation
from ceag_cooper.problems.estimates import HeldoutBatches, eval_logits, multiplier_statistics
from ceag_cooper.problems.multiplier import GroupMultiplier
from ceag_cooper.problems.options import ConstraintEstimate, ProblemOptions, check_options
from ceag_cooper.problems.state import RegisteredState
from ceag_cooper.problems.statistics import (
    BatchStatistics,
    batch_statistics,
    gather_batch_statistics,
    warn_if_attributes,
)

__all__ = ["BatchStatistics", "ConstraintEstimate", "GroupFairnessProblem", "ProblemOptions"]


class GroupFairnessProblem(RegisteredState, cooper.ConstrainedMinimizationProblem):
    """Fine-tuning under one constraint per group, as a Cooper problem.

    Subclasses set :attr:`constraint_type` (``None`` for an unconstrained problem) and
    implement :meth:`proxy_violations` (differentiable, drives the model step) and
    :meth:`strict_violations` (may be non-differentiable, drives the multiplier step); they may
    override :meth:`update_estimates` (called once per batch, before the violations, e.g. to
    feed replay buffers) and :meth:`num_constraints` (default: one per group).

    All constraints share one indexed multiplier (:class:`~ceag_cooper.problems.multiplier.GroupMultiplier`,
    a :class:`cooper.multipliers.IndexedMultiplier`). Every step observes
    all ``C`` constraint indices with fixed shapes; entries a hook marks as unobserved get a
    violation of exactly 0, so their gradient is 0 and their multiplier is left unchanged by
    plain SGD. This keeps the step free of data-dependent shapes and host syncs.

    Args:
        num_groups: number of groups ``G`` (may be omitted when ``reference`` is given).
        reference: the dense model's :class:`GroupMetrics` on the training data.
        loss_fn: per-sample loss ``loss_fn(logits, targets) -> (N,)`` (default cross-entropy).
        start_step: first step (0-based count of :meth:`compute_cmp_state` calls) at which
            the constraints are observed; before it the problem is plain fine-tuning (replay
            buffers are still fed). The paper mitigates only after pruning ends.
        device: device of the multipliers and buffers (default: the reference's, else CPU).
        check_finite: raise when the batch loss is NaN/inf (default on).
        heldout: estimate the constraints for the multiplier step on held-out data (Cotter et al.,
            2019): an iterable of ``(inputs, targets, group_ids)`` batches, cycled; each step
            evaluates the model on the next one (eval mode, no gradient). The model step still
            uses the training batch's proxy. Requires calling with ``model`` and ``inputs``.
        heldout_reference: the dense model's :class:`GroupMetrics` on the held-out data (used
            by accuracy-gap constraints on the multiplier side).
        heldout_spec: a :class:`GroupSpec` to turn held-out attribute batches into group ids.
        skip_nonfinite: instead of raising, skip a batch whose loss is NaN/inf: no model step,
            no multiplier step, nothing fed to the buffers; counted in ``skipped_steps``. This
            reads one value back to the host per step (a sync on accelerators).
        constraint_estimate: what the multiplier step (and the replay buffers) see. ``"train"``
            (default, the paper): the statistics of the training forward pass, i.e. training-mode
            BatchNorm/dropout on the (possibly augmented) batch. ``"eval"``: one extra forward,
            without gradient and with the model in eval mode, of ``estimate_inputs`` (the clean,
            unaugmented batch; default ``inputs``): the same kind of measurement as the final
            report (eval mode on the unaugmented data), at the cost of one forward pass per step.
            The model step always uses the training pass's differentiable proxy. Requires calling
            with ``model`` and ``inputs``. Held-out estimation (``heldout=``) is always eval mode.
        distillation: a :class:`~ceag_cooper.problems.distillation.Distillation` (teacher, weight,
            temperature): the model step's per-sample loss mixes in the teacher's outputs on the same
            inputs (one extra no-grad forward per step), so that the sparse model keeps its dense
            model's predictions; accuracies and everything built on them are unchanged.

    These options are :class:`ProblemOptions`: every subclass takes them as ``**options`` and
    forwards them here, so they are written (and documented) once.

    State: subclasses :meth:`register_state` their estimators (e.g. a
    :class:`~ceag_cooper.problems.buffers.ReplayBufferStore`, any :class:`torch.nn.Module` whose
    tensors are registered buffers); :meth:`state_dict`, :meth:`load_state_dict`, :meth:`to` and
    the distributed broadcast then handle them with the multipliers.

    Example:
        >>> import torch
        >>> from ceag_cooper import CEAG, GroupMetrics
        >>> ref = GroupMetrics(torch.tensor([0.9, 0.8]), torch.tensor([0.3, 0.5]), torch.tensor([60.0, 40.0]),
        ...                    torch.tensor(0.86), torch.tensor(0.38), torch.tensor(100.0))
        >>> problem = CEAG(reference=ref, tolerance=0.01, buffer_size=None)
        >>> model = torch.nn.Linear(4, 3)
        >>> state = problem.compute_cmp_state(model, torch.randn(6, 4), torch.randint(0, 3, (6,)),
        ...                                   torch.tensor([0, 1, 0, 1, 1, 0]))
        >>> state.observed_constraints[problem.fairness].violation.shape
        torch.Size([2])
    """

    constraint_type: ClassVar[cooper.ConstraintType | None] = cooper.ConstraintType.INEQUALITY
    requires_reference: ClassVar[bool] = False
    config_added: ClassVar[dict[str, Any]] = {"distillation": None}
    """:meth:`config` keys added after checkpoints were already written, with the value a checkpoint
    without the key implies (the old behaviour): :meth:`load_state_dict` reads them in, so older
    checkpoints keep loading while ``config()`` always says everything. A subclass lists only its own
    keys: those of every base class count too."""

    def __init__(
        self,
        *,
        num_groups: int | None = None,
        reference: GroupMetrics | None = None,
        loss_fn: LossFn | None = None,
        start_step: int = 0,
        device: torch.device | str | None = None,
        check_finite: bool = True,
        skip_nonfinite: bool = False,
        heldout: Iterable | None = None,
        heldout_reference: GroupMetrics | None = None,
        heldout_spec: GroupSpec | None = None,
        constraint_estimate: ConstraintEstimate = "train",
        distillation: Distillation | None = None,
    ) -> None:
        super().__init__()
        num_groups = check_options(
            type(self), num_groups=num_groups, reference=reference, start_step=start_step,
            constraint_estimate=constraint_estimate, heldout_reference=heldout_reference, heldout_spec=heldout_spec,
        )  # fmt: skip
        if device is None:
            device = reference.device if reference is not None else torch.device("cpu")
        self.num_groups = num_groups
        self.device = torch.empty(0, device=device).device  # "cuda" -> "cuda:0", as tensors report it
        self.constraint_estimate = constraint_estimate
        self.reference = reference.to(self.device) if reference is not None else None
        self.loss_fn = loss_fn
        if distillation is not None and not isinstance(distillation, Distillation):
            raise TypeError(
                f"`distillation` must be a Distillation(teacher, weight=..., temperature=...), "
                f"got {type(distillation).__name__}."
            )
        self.distillation = distillation
        self.start_step = start_step
        self.num_steps = 0
        self.check_finite = check_finite
        self.skip_nonfinite = skip_nonfinite
        self.skipped_steps = 0
        self._heldout = HeldoutBatches(heldout, heldout_spec) if heldout is not None else None
        self.heldout_reference = heldout_reference.to(self.device) if heldout_reference is not None else None
        self._estimators: dict[str, torch.nn.Module | None] = {}  # subclass state: see register_state
        self._synchronized_world = 1  # world size at the last distributed set-up
        self._ids_checked = False  # whether (N, M) ids were checked for looking like raw attributes
        if self.constraint_type is not None:
            count = self.num_constraints()
            multiplier = GroupMultiplier(num_constraints=count, device=self.device)
            self.fairness = cooper.Constraint(constraint_type=self.constraint_type, multiplier=multiplier)
            self._indices = torch.arange(count, device=self.device)

    # ----------------------------------------------------------------- hooks for subclasses
    def num_constraints(self) -> int:
        """Number of constraints ``C`` (default: one per group)."""
        return self.num_groups

    def update_estimates(self, stats: BatchStatistics) -> None:
        """Called once per batch before the violation hooks (e.g. to feed replay buffers)."""

    def dual_step_weights(self) -> torch.Tensor | None:
        """``(C,)`` non-negative factors on each constraint's multiplier step, or ``None`` (every factor 1).

        They multiply the strict violation that Cooper's dual step ascends along, and nothing else:
        plain SGD then moves multiplier ``c`` by ``dual_lr * weight_c * strict_violation_c`` (a diagonal
        preconditioner of the dual step; nuPI's proportional term is scaled too, its weight decay is not),
        while the model step, ``misc["strict_violation"]`` and the constraints themselves (without decay,
        a multiplier stops growing where its violation is 0) are unchanged. Called every step: return a
        cached tensor in the multiplier's dtype (see ``CEAG.dual_step_weights``).
        """
        return None

    def proxy_violations(self, stats: BatchStatistics) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable violations for the model step.

        Returns:
            ``(values, observed)``: ``(C,)`` violations and a ``(C,)`` bool mask of the
            constraints this batch can estimate (others are zeroed).
        """
        raise NotImplementedError

    def strict_violations(self, stats: BatchStatistics) -> tuple[torch.Tensor, torch.Tensor]:
        """Violations for the multiplier step (no gradient needed), same format as the proxy."""
        raise NotImplementedError

    # ----------------------------------------------------------------------- machinery
    @property
    def mitigation_active(self) -> bool:
        """Whether the next :meth:`compute_cmp_state` call observes the constraints."""
        return self.constraint_type is not None and self.num_steps >= self.start_step

    @property
    def multiplier_values(self) -> torch.Tensor | None:
        """``(C,)`` current multipliers (a detached copy), or ``None`` if unconstrained."""
        if self.constraint_type is None:
            return None
        return self.fairness.multiplier.weight.detach().flatten().clone()

    @property
    def heldout(self) -> Iterable | None:
        """The held-out batches the multiplier step is estimated on (``None``: the training batches)."""
        return self._heldout.batches if self._heldout is not None else None

    @property
    def heldout_spec(self) -> GroupSpec | None:
        """The :class:`GroupSpec` of the held-out batches' attributes (``None``: they carry group ids)."""
        return self._heldout.spec if self._heldout is not None else None

    @property
    def strict_reference(self) -> GroupMetrics | None:
        """The dense statistics the multiplier side compares with (held-out ones if given)."""
        return self.heldout_reference if self._heldout is not None else self.reference

    def batch_statistics(
        self, logits: torch.Tensor, targets: torch.Tensor, group_ids: torch.Tensor, *, loss_fn: LossFn | None = None
    ) -> BatchStatistics:
        """Per-group loss and accuracy of one batch (vectorized, differentiable; ``loss_fn``: default the problem's)."""
        group_ids = check_group_ids(group_ids, self.num_groups)
        check_same_device(group_ids, self.device, "group_ids")
        if group_ids.dim() == 2 and not self._ids_checked:  # once: a host read, off the hot path after
            self._ids_checked = True
            warn_if_attributes(group_ids)
        return batch_statistics(logits, targets, group_ids, self.num_groups, loss_fn or self.loss_fn)

    def compute_cmp_state(
        self,
        model: torch.nn.Module | None = None,
        inputs: Any = None,
        targets: torch.Tensor | None = None,
        group_ids: torch.Tensor | None = None,
        *,
        logits: torch.Tensor | None = None,
        estimate_inputs: Any = None,
        teacher_logits: torch.Tensor | None = None,
    ) -> cooper.CMPState:
        """Loss and constraint states of one batch.

        Args:
            model: the model being fine-tuned (called as ``model(inputs)``), or ``None``
                when ``logits`` are given.
            inputs: the batch inputs.
            targets: ``(N,)`` class indices.
            group_ids: ``(N,)`` or ``(N, M)`` group ids (see :class:`GroupSpec`).
            logits: precomputed ``(N, C)`` outputs, instead of ``model`` and ``inputs``.
            estimate_inputs: with ``constraint_estimate="eval"``, the unaugmented version of
                ``inputs`` (same samples, same order) that the eval-mode estimate evaluates;
                default ``inputs``.
            teacher_logits: with ``distillation=``, the teacher's outputs on this batch, instead of
                calling the teacher on ``inputs`` (e.g. with precomputed ``logits``).

        Returns:
            A :class:`cooper.CMPState`; ``misc["stats"]`` holds the :class:`BatchStatistics`,
            and ``misc["strict_violation"]`` / ``misc["observed"]`` the multiplier-side values.
        """
        if logits is None:
            if model is None or inputs is None:
                raise ValueError("pass either `model` and `inputs`, or precomputed `logits`.")
            logits = call_model(model, inputs)
        if targets is None or group_ids is None:
            raise ValueError("`targets` and `group_ids` are required.")
        loss_fn = self._model_step_loss(inputs, teacher_logits)
        step = self.step_label()
        stats = distributed.run_together(
            lambda: self.batch_statistics(logits, targets, group_ids, loss_fn=loss_fn), step
        )
        if self.skip_nonfinite and sync.any_rank_nonfinite(stats.loss):
            # No loss and no constraint: Cooper computes no gradient, and torch optimizers skip
            # parameters without gradients, so neither the model nor the multipliers move.
            self.skipped_steps += 1
            return cooper.CMPState(loss=None, misc={"stats": stats, "skipped": True})
        dual_stats = distributed.run_together(
            lambda: multiplier_statistics(self, stats, model, inputs, targets, estimate_inputs), step
        )
        if distributed.is_distributed():  # the multiplier side sees the union of all ranks' batches
            sync.synchronize_once(self)
            dual_stats = gather_batch_statistics(dual_stats, self.num_groups)
        return self._constraint_state(stats, dual_stats)

    def _model_step_loss(self, inputs: Any, teacher_logits: torch.Tensor | None) -> LossFn | None:
        """The per-sample loss of the model step: the problem's, or with ``distillation`` that of this batch."""
        if self.distillation is None:
            if teacher_logits is not None:
                raise ValueError(
                    "`teacher_logits` were given, but the problem has no `distillation=` option to use them: "
                    "construct it with distillation=Distillation(teacher, ...) or drop `teacher_logits`."
                )
            return self.loss_fn
        if teacher_logits is None:
            if inputs is None:
                raise ValueError(
                    "distillation calls the teacher on the batch: call compute_cmp_state with `model` and "
                    "`inputs`, or pass the teacher's outputs as `teacher_logits`."
                )
            teacher_logits = eval_logits(self.distillation.teacher, inputs)
        return self.distillation.loss_fn(teacher_logits, self.loss_fn)

    def _constraint_state(self, stats: BatchStatistics, global_stats: BatchStatistics) -> cooper.CMPState:
        """Feed the estimates, then the Cooper state from the local (proxy) and all-rank (strict) statistics."""
        active = self.mitigation_active
        self.update_estimates(global_stats)
        self.num_steps += 1
        misc: dict[str, Any] = {"stats": stats}
        if not active:
            return cooper.CMPState(loss=stats.loss, misc=misc)
        count, owner = self.num_constraints(), type(self).__name__
        proxy, proxy_observed = check_hook_output(self.proxy_violations(stats), count, f"{owner}.proxy_violations")
        strict, strict_observed = check_hook_output(
            self.strict_violations(global_stats), count, f"{owner}.strict_violations"
        )
        dtype = self.fairness.multiplier.weight.dtype  # e.g. float32 buffers under a float64 problem
        violation = torch.where(proxy_observed, proxy, torch.zeros_like(proxy)).to(dtype)
        strict_violation = torch.where(strict_observed, strict, torch.zeros_like(strict)).detach().to(dtype)
        if self.check_finite:
            check_finite(strict_violation, f"the strict violation at {self.step_label(-1)}")
        misc.update(strict_violation=strict_violation, observed=strict_observed)
        step_weights = self.dual_step_weights()
        state = cooper.ConstraintState(
            violation=violation,
            constraint_features=self._indices,
            strict_violation=strict_violation if step_weights is None else strict_violation * step_weights.to(dtype),
            strict_constraint_features=self._indices,
        )
        return cooper.CMPState(loss=stats.loss, observed_constraints={self.fairness: state}, misc=misc)

    def broadcast_state(self, src: int = 0) -> None:
        """Copy rank ``src``'s multipliers and registered state (e.g. buffers) to every rank.

        Called automatically at the first distributed step and after :meth:`load_state_dict`;
        a no-op without a process group.
        """
        sync.broadcast_state(self, src)

    def config(self) -> dict[str, Any]:
        """Plain description of the problem, stored in checkpoints and checked on load."""
        return {
            "class": type(self).__name__,
            "num_groups": self.num_groups,
            "num_constraints": self.num_constraints() if self.constraint_type is not None else 0,
            "start_step": self.start_step,
            "constraint_estimate": self.constraint_estimate,
            "distillation": self.distillation.config() if self.distillation is not None else None,
        }

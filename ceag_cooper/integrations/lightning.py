"""Pruning + CEAG inside a Lightning ``Trainer``, with Lightning's own optimizer stepping.

The obvious recipe (manual optimization, Cooper stepping the raw torch optimizer) trains but
Lightning never sees a step: ``global_step`` stays 0, step-based schedules and checkpointing never
fire. :class:`FairnessCallback` builds the Cooper optimizer around ``LightningModule.optimizers()``
(whose ``step`` Lightning counts), advances a pruner once per epoch, logs the violations and
multipliers through ``self.log``, and keeps the problem's, the pruner's and the dual optimizer's
state in Lightning checkpoints (it is a stateful callback), so ``Trainer.fit(ckpt_path=...)``
resumes with the same multipliers and masks.

Use it from a module with ``automatic_optimization = False`` whose ``training_step`` calls
:meth:`FairnessCallback.roll` (see ``docs/integration.md#lightning``). Needs ``lightning``
(``pip install 'ceag-cooper[lightning]'``).
"""

from __future__ import annotations

from typing import Any

import torch

try:
    import lightning as L
except ImportError as error:  # pragma: no cover - exercised where lightning is absent
    raise ImportError(
        "ceag_cooper.integrations.lightning needs lightning: pip install 'ceag-cooper[lightning]'"
    ) from error

from ceag_cooper.optim import build_optimizer
from ceag_cooper.problems.base import GroupFairnessProblem

__all__ = ["FairnessCallback"]


class FairnessCallback(L.Callback):
    """Run a :class:`~ceag_cooper.GroupFairnessProblem` (and optionally a pruner) in a Lightning fit.

    Args:
        problem: the problem (``CEAG``, ``EqualizedLoss``, ``Unconstrained``...), built on the model's device.
        pruner: a ``MagnitudePruner`` / ``ChannelPruner`` of the module's model, stepped at the start of
            every epoch (``pruner.step(epoch + 1)``, as the pipeline does) and attached to the optimizer.
        log_every_n_steps: how often :meth:`roll` logs multipliers and violations (0: never).
        **optimizer_kwargs: for :func:`ceag_cooper.build_optimizer` (``dual_lr``, ``dual_optimizer``...).

    Example:
        >>> import torch
        >>> from ceag_cooper import Unconstrained
        >>> callback = FairnessCallback(Unconstrained(num_groups=2), dual_lr=0.01)
        >>> sorted(callback.state_dict())
        ['cooper', 'problem', 'pruner']
    """

    def __init__(
        self,
        problem: GroupFairnessProblem,
        *,
        pruner: Any = None,
        log_every_n_steps: int = 50,
        **optimizer_kwargs: Any,
    ) -> None:
        if not isinstance(problem, GroupFairnessProblem):
            raise TypeError(f"`problem` must be a GroupFairnessProblem, got {type(problem).__name__}.")
        self.problem = problem
        self.pruner = pruner
        self.log_every_n_steps = log_every_n_steps
        self.optimizer_kwargs = optimizer_kwargs
        self.cooper_optimizer: Any = None
        self._pending_cooper_state: dict[str, Any] | None = None
        self._attached_to: Any = None

    # ------------------------------------------------------------------ the step
    def roll(self, module: L.LightningModule, **compute_cmp_state_kwargs: Any) -> torch.Tensor:
        """One Cooper step on this batch (call it in ``training_step``); returns the batch loss.

        The keyword arguments are those of :meth:`GroupFairnessProblem.compute_cmp_state`
        (``model``, ``inputs``, ``targets``, ``group_ids``, ``estimate_inputs``, ``logits``).
        """
        primal = module.optimizers()
        if self.cooper_optimizer is None or self._attached_to is not primal:
            self._build(primal)
        rollout = self.cooper_optimizer.roll(compute_cmp_state_kwargs=compute_cmp_state_kwargs)
        stats = rollout.cmp_state.misc["stats"]
        module.log("train_loss", stats.loss.detach(), prog_bar=True)
        step = module.trainer.global_step
        if self.log_every_n_steps and step % self.log_every_n_steps == 0:  # a copy of C values: only when logged
            values = self.problem.multiplier_values
        else:
            values = None
        if values is not None:
            module.log("fairness/multiplier_sum", values.sum())
            module.log("fairness/multiplier_max", values.max())
            violation = rollout.cmp_state.misc.get("strict_violation")
            if violation is not None:
                module.log("fairness/max_violation", violation.max())
                module.log("fairness/violated", (violation > 0).sum().float())
        return stats.loss.detach()

    def _build(self, primal: Any) -> None:
        self.cooper_optimizer = build_optimizer(self.problem, primal, **self.optimizer_kwargs)
        self._attached_to = primal
        if self._pending_cooper_state is not None:
            self.cooper_optimizer.load_state_dict(self._pending_cooper_state)
            self._pending_cooper_state = None

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """Attach the pruner's mask hooks to the raw optimizer(s) Lightning built."""
        if self.pruner is not None:
            self.pruner.attach([getattr(o, "optimizer", o) for o in trainer.optimizers])

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """Advance the pruning schedule; log the sparsity."""
        if self.pruner is not None:
            sparsity = self.pruner.step(trainer.current_epoch + 1)
            module.log("sparsity", float(sparsity))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Problem (multipliers, buffers, counters), pruner (masks, schedule) and dual optimizer state."""
        cooper_state = self.cooper_optimizer.state_dict() if self.cooper_optimizer is not None else None
        return {
            "problem": self.problem.state_dict(),
            "pruner": self.pruner.state_dict() if self.pruner is not None else None,
            "cooper": cooper_state if cooper_state is not None else self._pending_cooper_state,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (Lightning calls it when resuming from a checkpoint)."""
        self.problem.load_state_dict(state_dict["problem"])
        if self.pruner is not None:
            if state_dict["pruner"] is None:
                raise ValueError("the checkpoint holds no pruner state, but this callback has a pruner.")
            self.pruner.load_state_dict(state_dict["pruner"])
        self._pending_cooper_state = state_dict["cooper"]  # applied when the Cooper optimizer is built

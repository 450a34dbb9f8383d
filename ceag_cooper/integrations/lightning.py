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

from ceag_cooper.integrations._cooper import DualOptimizerCache, allow_dual_state_unpickling
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
        ['dual', 'problem', 'pruner']
    """

    def __init__(
        self,
        problem: GroupFairnessProblem,
        *,
        pruner: Any = None,
        log_every_n_steps: int = 50,
        **optimizer_kwargs: Any,
    ) -> None:
        self._duals = DualOptimizerCache(problem, optimizer_kwargs)
        self.problem = problem
        self.pruner = pruner
        self.log_every_n_steps = log_every_n_steps

    @property
    def cooper_optimizer(self) -> Any:
        """The Cooper optimizer around the module's optimizer (``None`` before the first :meth:`roll`)."""
        return self._duals.optimizer

    # ------------------------------------------------------------------ the step
    def roll(self, module: L.LightningModule, **compute_cmp_state_kwargs: Any) -> torch.Tensor:
        """One Cooper step on this batch (call it in ``training_step``); returns the batch loss.

        The keyword arguments are those of :meth:`GroupFairnessProblem.compute_cmp_state`
        (``model``, ``inputs``, ``targets``, ``group_ids``, ``estimate_inputs``, ``logits``).
        """
        rollout = self._duals.around(module.optimizers()).roll(compute_cmp_state_kwargs=compute_cmp_state_kwargs)
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

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        """Before Lightning restores a checkpoint: allow nuPI's dual state in its ``weights_only`` load."""
        allow_dual_state_unpickling()

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
        """Problem (multipliers, buffers, counters), pruner (masks, schedule) and dual optimizer state.

        The primal optimizer's state is Lightning's own (it saves and restores its optimizers).
        """
        return {
            "problem": self.problem.state_dict(),
            "pruner": self.pruner.state_dict() if self.pruner is not None else None,
            "dual": self._duals.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (Lightning calls it when resuming from a checkpoint).

        Everything is checked before anything is loaded. Checkpoints of ceag-cooper 0.2.0 before the
        ``"dual"`` entry held the whole Cooper optimizer state under ``"cooper"``; its dual part is used.
        """
        if "dual" in state_dict:
            dual = state_dict["dual"]
        elif "cooper" in state_dict:  # the earlier layout: primal (Lightning restores it itself) and dual states
            dual = None if state_dict["cooper"] is None else state_dict["cooper"].get("dual_optimizer_states")
        else:
            raise ValueError(
                f"this callback state has keys {sorted(state_dict)}, not those FairnessCallback writes "
                "('problem', 'pruner', 'dual'): resume from a checkpoint of a fit with this callback."
            )
        if self.pruner is not None and state_dict.get("pruner") is None:
            raise ValueError("the checkpoint holds no pruner state, but this callback has a pruner.")
        if self.pruner is None and state_dict.get("pruner") is not None:
            raise ValueError(
                "the checkpoint holds pruning masks: pass the run's pruner (FairnessCallback(..., pruner=...)), or "
                "the pruned weights would grow back at the next step."
            )
        self.problem.load_state_dict(state_dict["problem"])
        if self.pruner is not None:
            self.pruner.load_state_dict(state_dict["pruner"])
        self._duals.load_state_dict(dual)  # loaded when the Cooper optimizer is built

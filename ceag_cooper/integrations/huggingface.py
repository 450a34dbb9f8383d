"""CEAG inside a Hugging Face ``transformers.Trainer``, with the Trainer's own optimizer stepping.

:class:`FairnessTrainer` is a ``Trainer`` whose training loss is the problem's primal
Lagrangian. Each training batch (a dict with ``labels`` and a group-id column, default
``"group_ids"``) runs :meth:`GroupFairnessProblem.compute_cmp_state`, then the dual step (the
paper's order: multipliers first, from the strict violations), and returns the Lagrangian at the
new multipliers; the Trainer then does what it always does (backward, gradient accumulation and
clipping, the primal optimizer and scheduler steps, logging, checkpoints). Evaluation batches
get the plain loss (the problem's ``loss_fn``, cross-entropy by default).
The problem's state (multipliers, buffers, counters) is saved in every
checkpoint folder as ``ceag_problem.pt`` and restored by ``train(resume_from_checkpoint=...)``.

Models may take dict inputs and return ``.logits`` outputs (``SequenceClassifierOutput``): the
problems call them through :func:`ceag_cooper.metrics.call_model`. Needs ``transformers`` and
``accelerate`` (``pip install 'ceag-cooper[huggingface]'``). See ``docs/integration.md#hugging-face``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

try:
    import transformers
except ImportError as error:  # pragma: no cover - exercised where transformers is absent
    raise ImportError(
        "ceag_cooper.integrations.huggingface needs transformers: pip install 'ceag-cooper[huggingface]'"
    ) from error

from ceag_cooper.metrics import call_model, per_sample_loss_and_correct
from ceag_cooper.optim import build_optimizer
from ceag_cooper.problems.base import GroupFairnessProblem

__all__ = ["PROBLEM_STATE_FILE", "FairnessTrainer"]

PROBLEM_STATE_FILE = "ceag_problem.pt"
"""The file in each checkpoint folder that holds the problem's state and the dual optimizer's."""


class FairnessTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` that fine-tunes under a :class:`~ceag_cooper.GroupFairnessProblem`.

    Args:
        *args: the ``Trainer``'s (``model``, ``args``, ``train_dataset``...).
        problem: the problem (``CEAG``, ``EqualizedLoss``...), on the model's device.
        group_ids_key: the batch column with each sample's group id(s); it is taken out of the
            batch before the model sees it. Keep it from being dropped as an unknown column:
            ``TrainingArguments(remove_unused_columns=False)``.
        dual_lr, dual_optimizer, ...: keyword arguments of :func:`ceag_cooper.build_optimizer`,
            given as ``cooper_kwargs={...}``.
        **kwargs: the ``Trainer``'s.

    The model's device placement, mixed precision and distributed set-up are the Trainer's; the
    problem must live on the model's device.
    """

    def __init__(
        self,
        *args: Any,
        problem: GroupFairnessProblem,
        group_ids_key: str = "group_ids",
        cooper_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(problem, GroupFairnessProblem):
            raise TypeError(f"`problem` must be a GroupFairnessProblem, got {type(problem).__name__}.")
        super().__init__(*args, **kwargs)
        self.problem = problem
        self.group_ids_key = group_ids_key
        self.cooper_kwargs = dict(cooper_kwargs or {})
        self._cooper: Any = None
        self._cooper_for: Any = None
        self._pending_dual_state: dict[str, Any] | None = None

    def _cooper_optimizer(self) -> Any:
        """Cooper's optimizer around the Trainer's primal optimizer (rebuilt if the Trainer made a new one)."""
        if self._cooper is None or self._cooper_for is not self.optimizer:
            self._cooper = build_optimizer(self.problem, self.optimizer, **self.cooper_kwargs)
            self._cooper_for = self.optimizer
            if self._pending_dual_state is not None and hasattr(self._cooper, "dual_optimizers"):
                for optimizer, state in zip(self._cooper.dual_optimizers, self._pending_dual_state, strict=True):
                    optimizer.load_state_dict(state)
                self._pending_dual_state = None
        return self._cooper

    def compute_loss(
        self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False, **kwargs: Any
    ) -> Any:
        """Training: dual step, then the primal Lagrangian; evaluation: the plain loss."""
        inputs = dict(inputs)
        if self.group_ids_key not in inputs:
            raise ValueError(
                f"the batch has no {self.group_ids_key!r} column: add each sample's group id to the dataset and pass "
                "TrainingArguments(remove_unused_columns=False) so that the Trainer keeps it."
            )
        group_ids = inputs.pop(self.group_ids_key)
        targets = inputs.pop("labels")
        if not model.training:  # evaluation: no multiplier step, no buffer update
            logits = call_model(model, inputs)
            loss = per_sample_loss_and_correct(logits, targets, self.problem.loss_fn)[0].mean()
            return (loss, {"logits": logits}) if return_outputs else loss
        state = self.problem.compute_cmp_state(model, inputs, targets, group_ids)
        cooper_optimizer = self._cooper_optimizer()
        if state.observed_constraints and hasattr(cooper_optimizer, "dual_step"):
            for parameter in self.problem.dual_parameters():
                parameter.grad = None
            state.compute_dual_lagrangian().backward()
            cooper_optimizer.dual_step()  # the multipliers move first (and are projected), as the paper's order
        lagrangian = state.compute_primal_lagrangian().lagrangian
        self._log_fairness(state)
        return (lagrangian, {"logits": state.misc["stats"].logits}) if return_outputs else lagrangian

    def _log_fairness(self, state: Any) -> None:
        if not self.args.logging_steps or self.state.global_step % self.args.logging_steps:
            return
        values = self.problem.multiplier_values
        violation = state.misc.get("strict_violation")
        if values is not None and violation is not None:
            self._fairness_log = {
                "fairness/multiplier_sum": float(values.sum()),
                "fairness/max_violation": float(violation.max()),
            }

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """The Trainer's log, plus the multipliers' sum and the largest violation when training."""
        logs = {**logs, **getattr(self, "_fairness_log", {})}
        super().log(logs, *args, **kwargs)

    def _save_checkpoint(self, model: Any, trial: Any, *args: Any, **kwargs: Any) -> None:
        super()._save_checkpoint(model, trial, *args, **kwargs)
        folder = (
            Path(self.args.output_dir) / f"{transformers.trainer_utils.PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        )
        duals = getattr(self._cooper, "dual_optimizers", None) or []
        state = {"problem": self.problem.state_dict(), "dual": [optimizer.state_dict() for optimizer in duals]}
        torch.save(state, folder / PROBLEM_STATE_FILE)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``; resuming also restores the problem and the dual optimizer from the checkpoint."""
        if resume_from_checkpoint:
            folder = resume_from_checkpoint
            if folder is True:
                folder = transformers.trainer_utils.get_last_checkpoint(self.args.output_dir)
            path = Path(os.fspath(folder)) / PROBLEM_STATE_FILE
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} not found: the checkpoint was not written by FairnessTrainer, so the multipliers and "
                    "buffers cannot be restored."
                )
            saved = torch.load(path, weights_only=True)
            self.problem.load_state_dict(saved["problem"])
            self._pending_dual_state = saved["dual"] or None
            self._cooper = None
        return super().train(resume_from_checkpoint, *args, **kwargs)

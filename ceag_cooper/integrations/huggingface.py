"""CEAG inside a Hugging Face ``transformers.Trainer``, with the Trainer's own optimizer stepping.

:class:`FairnessTrainer` is a ``Trainer`` whose training loss is the problem's primal
Lagrangian. Each training batch (a dict with ``labels`` and a group-id column, default
``"group_ids"``) runs :meth:`GroupFairnessProblem.compute_cmp_state`, then the dual step (with
``order="dual_primal"``, the default and the paper's order: multipliers first, from the strict
violations), and returns the Lagrangian at the new multipliers; with ``order="simultaneous"`` the
Lagrangian uses the old multipliers and the dual step follows the batch's backward pass. The
Trainer then does what it always does (backward, gradient accumulation and clipping, the primal
optimizer and scheduler steps, logging, checkpoints). Evaluation batches
get the plain loss (the problem's ``loss_fn``, cross-entropy by default).
With ``pruner=`` (a :class:`~ceag_cooper.MagnitudePruner` or :class:`~ceag_cooper.ChannelPruner` of
the model) the pruning schedule advances at the start of every epoch (``pruner.step(epoch + 1)``,
as the pipeline and the Lightning callback do) and the masks are re-applied after every optimizer
step. The problem's state (multipliers, buffers, counters), the dual optimizer's and the pruner's
(masks, schedule position) are saved in every checkpoint folder as ``ceag_problem.pt`` and
restored by ``train(resume_from_checkpoint=...)``.

Models may take dict inputs and return ``.logits`` outputs (``SequenceClassifierOutput``): the
problems call them through :func:`ceag_cooper.metrics.call_model`. Needs ``transformers`` and
``accelerate`` (``pip install 'ceag-cooper[huggingface]'``). See ``docs/integration.md#hugging-face``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

try:
    import transformers
except ImportError as error:  # pragma: no cover - exercised where transformers is absent
    raise ImportError(
        "ceag_cooper.integrations.huggingface needs transformers: pip install 'ceag-cooper[huggingface]'"
    ) from error

from ceag_cooper.integrations._cooper import DUAL_STATE_GLOBALS, DualOptimizerCache
from ceag_cooper.metrics import call_model, per_sample_loss_and_correct
from ceag_cooper.problems.base import GroupFairnessProblem

__all__ = ["PROBLEM_STATE_FILE", "FairnessTrainer"]

PROBLEM_STATE_FILE = "ceag_problem.pt"
"""The file in each checkpoint folder that holds the problem's state and the dual optimizer's."""


class FairnessTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` that fine-tunes under a :class:`~ceag_cooper.GroupFairnessProblem`.

    Args:
        *args: the ``Trainer``'s (``model``, ``args``, ``train_dataset``...).
        problem: the problem (``CEAG``, ``EqualizedLoss``...), on the model's device.
        pruner: a pruner of ``model`` (masks and schedule) to run inside the Trainer's loop, or ``None``.
        group_ids_key: the batch column with each sample's group id(s); it is taken out of the
            batch before the model sees it. Keep it from being dropped as an unknown column:
            ``TrainingArguments(remove_unused_columns=False)``.
        cooper_kwargs: keyword arguments of :func:`ceag_cooper.build_optimizer` (``dual_lr``,
            ``dual_optimizer``, ``order``...).
        **kwargs: the ``Trainer``'s.

    The model's device placement, mixed precision and distributed set-up are the Trainer's; the
    problem must live on the model's device.
    """

    def __init__(
        self,
        *args: Any,
        problem: GroupFairnessProblem,
        pruner: Any = None,
        group_ids_key: str = "group_ids",
        cooper_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        duals = DualOptimizerCache(problem, cooper_kwargs or {})  # checks `problem` before the Trainer starts
        super().__init__(*args, **kwargs)
        self.problem = problem
        self.group_ids_key = group_ids_key
        self._duals = duals
        self._deferred: Any = None  # the batch's CMP state, for the dual step after backward (simultaneous)
        # compute_loss returns a mean over the micro-batch: the Trainer must divide it for gradient
        # accumulation (it skips that for models whose forward takes **kwargs, expecting num_items_in_batch).
        self.model_accepts_loss_kwargs = False
        steps = self.args.gradient_accumulation_steps
        if steps > 1:
            warnings.warn(
                f"FairnessTrainer takes one dual step per micro-batch: with gradient_accumulation_steps={steps} the "
                f"multipliers move {steps} times per optimizer step (divide dual_lr by {steps} for the rate of one "
                "step per update), and under order='simultaneous' the later micro-batches of an update see "
                "multipliers already moved in it.",
                UserWarning,
                stacklevel=2,
            )
        self.pruner = pruner
        if pruner is not None:
            self.add_callback(_PruningCallback(pruner))

    def compute_loss(
        self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False, **kwargs: Any
    ) -> Any:
        """Training: the primal Lagrangian (after the dual step, in the default order); evaluation: the plain loss."""
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
        if self._duals.order == "dual_primal":
            self._dual_step(state)  # the multipliers move first (and are projected), as the paper's order
            self._log_fairness(state)
        else:  # simultaneous: the Lagrangian takes the old multipliers; training_step steps, logs them after backward
            self._deferred = state
        lagrangian = state.compute_primal_lagrangian().lagrangian
        return (lagrangian, {"logits": state.misc["stats"].logits}) if return_outputs else lagrangian

    def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The Trainer's step (forward and backward); with ``order="simultaneous"`` the dual step follows."""
        loss = super().training_step(*args, **kwargs)
        state, self._deferred = self._deferred, None
        if state is not None:
            self._dual_step(state)
            self._log_fairness(state)  # the multipliers after their step, as under the default order
        return loss

    def _dual_step(self, state: Any) -> None:
        cooper_optimizer = self._duals.around(self.optimizer)
        if state.observed_constraints and hasattr(cooper_optimizer, "dual_step"):
            for parameter in self.problem.dual_parameters():
                parameter.grad = None
            state.compute_dual_lagrangian().backward()
            cooper_optimizer.dual_step()

    def _log_fairness(self, state: Any) -> None:
        # Kept as tensors (no host sync on the training step); read when the Trainer logs, so the logged
        # values are the latest step's whatever `logging_steps` is.
        values = self.problem.multiplier_values
        violation = state.misc.get("strict_violation")
        if values is not None and violation is not None:
            self._fairness_latest = (values.detach().sum(), violation.detach().max())

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """The Trainer's log, plus the multipliers' sum and the largest violation when training."""
        latest = getattr(self, "_fairness_latest", None)
        if latest is not None and "loss" in logs:  # a training log
            logs = {**logs, "fairness/multiplier_sum": float(latest[0]), "fairness/max_violation": float(latest[1])}
        if self.pruner is not None and "loss" in logs:
            logs["sparsity"] = float(self.pruner.sparsity)
        super().log(logs, *args, **kwargs)

    def _save_checkpoint(self, model: Any, trial: Any, *args: Any, **kwargs: Any) -> None:
        super()._save_checkpoint(model, trial, *args, **kwargs)
        folder = (
            Path(self.args.output_dir) / f"{transformers.trainer_utils.PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        )
        state = {"problem": self.problem.state_dict(), "dual": self._duals.state_dict()}
        if self.pruner is not None:
            state["pruner"] = self.pruner.state_dict()
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
            with torch.serialization.safe_globals(DUAL_STATE_GLOBALS):
                saved = torch.load(path, weights_only=True)
            self.problem.load_state_dict(saved["problem"])
            self._duals.load_state_dict(saved["dual"])
            if self.pruner is not None and saved.get("pruner") is None:
                raise ValueError(f"{path} holds no pruner state, but this FairnessTrainer has a pruner.")
            if self.pruner is None and saved.get("pruner") is not None:
                raise ValueError(
                    f"{path} holds pruning masks: pass the run's pruner (FairnessTrainer(..., pruner=...)), or the "
                    "pruned weights would grow back at the next step."
                )
            if self.pruner is not None:
                self.pruner.load_state_dict(saved["pruner"])
        return super().train(resume_from_checkpoint, *args, **kwargs)


class _PruningCallback(transformers.TrainerCallback):
    """Attaches a pruner's masks to the Trainer's optimizer and advances its schedule once per epoch."""

    def __init__(self, pruner: Any) -> None:
        self.pruner = pruner
        self._attached: list[Any] = []
        self._epochs_done = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        raw = getattr(optimizer, "optimizer", optimizer)  # the torch optimizer under accelerate's wrapper
        if not any(raw is seen for seen in self._attached):  # a second train() must not stack hooks
            self.pruner.attach(raw)
            self._attached.append(raw)
        # Counted here, not read from state.epoch at each epoch start: with a streaming data set that
        # float ends each pass short of a whole number. A resumed run starts from the epochs it had done.
        self._epochs_done = int(state.epoch + 1e-6) if state.epoch else 0

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.pruner.step(self._epochs_done + 1)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._epochs_done += 1

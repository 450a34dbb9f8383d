"""Where the multiplier step's statistics come from: the training pass, held-out batches, or an eval pass.

Held-out batches follow Cotter et al. (2019): cycled, resumable, checked. The eval-mode estimate is
one extra no-grad forward of the clean batch (issue #13: the final report is eval mode too).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ceag_cooper._modes import eval_mode
from ceag_cooper._validation import check_finite
from ceag_cooper.groups import GroupSpec
from ceag_cooper.metrics.evaluation import call_model, move_to
from ceag_cooper.problems.statistics import BatchStatistics

if TYPE_CHECKING:
    from ceag_cooper.problems.base import GroupFairnessProblem

__all__ = ["HeldoutBatches", "eval_logits", "multiplier_statistics"]


class HeldoutBatches:
    """An endless cycle over ``(inputs, targets, group_ids_or_attributes)`` batches.

    A sequence (a list of batches) is indexed by position, so that :attr:`position` in a
    checkpoint resumes it exactly; any other re-iterable (a ``DataLoader``) is iterated again
    whenever it runs out.

    Args:
        batches: a re-iterable of batches (not a one-shot iterator or generator).
        spec: turns the third element (attributes) into group ids; ``None``: it already is ids.

    Example:
        >>> import torch
        >>> source = HeldoutBatches([(torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([1, 0]))])
        >>> _ = source.next(torch.device("cpu")); _, _, ids = source.next(torch.device("cpu"))
        >>> ids.tolist(), source.position
        ([1, 0], 2)
    """

    def __init__(self, batches: Iterable, spec: GroupSpec | None = None) -> None:
        if hasattr(batches, "__len__") and len(batches) == 0:
            raise ValueError("`heldout` is empty: give at least one held-out batch.")
        if iter(batches) is batches:
            raise ValueError(
                "`heldout` must be re-iterable (a list, a DataLoader...): it is iterated again whenever it runs "
                "out, and a one-shot iterator or generator would run dry."
            )
        self.batches = batches
        self.spec = spec
        self.position = 0  # batches drawn so far
        self._iterator: Iterator | None = None

    def next(self, device: torch.device) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """The next batch: inputs as stored, targets and group ids on ``device``."""
        if isinstance(self.batches, Sequence):
            batch = self.batches[self.position % len(self.batches)]
        else:
            if self._iterator is None:
                self._iterator = iter(self.batches)
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._iterator = iter(self.batches)
                batch = next(self._iterator)
        self.position += 1
        inputs, targets, third = batch[0], batch[1], batch[2]
        ids = self.spec.group_ids(third.to(device)) if self.spec is not None else third
        return inputs, targets.to(device), ids.to(device)


@torch.no_grad()
def eval_logits(model: torch.nn.Module, inputs: Any) -> torch.Tensor:
    """``model(inputs)`` in eval mode, without gradient (the model's mode is restored)."""
    with eval_mode(model):
        return call_model(model, inputs)


def multiplier_statistics(
    problem: GroupFairnessProblem,
    stats: BatchStatistics,
    model: torch.nn.Module | None,
    inputs: Any,
    targets: torch.Tensor,
    estimate_inputs: Any,
) -> BatchStatistics:
    """The multiplier side's statistics of this rank's batch, once the batch loss is checked.

    The training pass itself (``constraint_estimate="train"``), the next held-out batch
    (``heldout=``), or one eval-mode, no-grad pass of the clean batch (``"eval"``).
    """
    if problem.check_finite:
        check_finite(stats.loss, f"the batch loss at {problem.step_label()}")
    if problem._heldout is not None:
        if model is None or inputs is None:
            raise ValueError(
                "held-out estimation evaluates the model: call compute_cmp_state with `model` and `inputs`."
            )
        x, held_targets, held_ids = problem._heldout.next(problem.device)
        device = inputs.device if isinstance(inputs, torch.Tensor) else problem.device
        return problem.batch_statistics(eval_logits(model, move_to(x, device)), held_targets, held_ids)
    if problem.constraint_estimate != "eval":
        return stats
    if model is None:
        raise ValueError(
            "constraint_estimate='eval' evaluates the model on the clean batch: call compute_cmp_state "
            "with `model` and `inputs` (not precomputed `logits`)."
        )
    clean_logits = eval_logits(model, inputs if estimate_inputs is None else estimate_inputs)
    if clean_logits.shape[0] != stats.logits.shape[0]:
        raise ValueError(
            f"`estimate_inputs` gave {clean_logits.shape[0]} outputs for a batch of {stats.logits.shape[0]}: "
            "pass the same samples as `inputs`, unaugmented, in the same order."
        )
    return problem.batch_statistics(clean_logits, targets, stats.group_ids)

"""What one mini-batch says about each group (:class:`BatchStatistics`), on one rank or all of them."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from ceag_cooper import distributed
from ceag_cooper.metrics.functional import LossFn, group_loss_accuracy, per_sample_loss_and_correct

__all__ = ["BatchStatistics", "batch_statistics", "gather_batch_statistics", "warn_if_attributes"]


@dataclass
class BatchStatistics:
    """What one mini-batch says about each group; the input of every violation hook.

    Attributes:
        logits: ``(N, C)`` model outputs.
        group_ids: ``(N,)`` or ``(N, M)`` group ids.
        per_sample_loss: ``(N,)`` differentiable per-sample loss.
        per_sample_correct: ``(N,)`` 0/1 accuracy (float).
        loss: batch mean loss (differentiable; the objective).
        accuracy: batch accuracy.
        group_loss: ``(G,)`` differentiable mean loss per group (0 where absent).
        group_accuracy: ``(G,)`` accuracy per group (0 where absent).
        group_count: ``(G,)`` samples per group in the batch.
        present: ``(G,)`` bool, groups with at least one sample in the batch.
    """

    logits: torch.Tensor
    group_ids: torch.Tensor
    per_sample_loss: torch.Tensor
    per_sample_correct: torch.Tensor
    loss: torch.Tensor
    accuracy: torch.Tensor
    group_loss: torch.Tensor
    group_accuracy: torch.Tensor
    group_count: torch.Tensor
    present: torch.Tensor


def _from_samples(
    logits: torch.Tensor, group_ids: torch.Tensor, loss: torch.Tensor, correct: torch.Tensor, num_groups: int
) -> BatchStatistics:
    group_loss, group_accuracy, counts = group_loss_accuracy(loss, correct, group_ids, num_groups)
    return BatchStatistics(
        logits=logits,
        group_ids=group_ids,
        per_sample_loss=loss,
        per_sample_correct=correct,
        loss=loss.mean(),
        accuracy=correct.mean(),
        group_loss=group_loss,
        group_accuracy=group_accuracy,
        group_count=counts,
        present=counts > 0,
    )


def batch_statistics(
    logits: torch.Tensor,
    targets: torch.Tensor,
    group_ids: torch.Tensor,
    num_groups: int,
    loss_fn: LossFn | None = None,
) -> BatchStatistics:
    """Per-group loss and accuracy of one batch (vectorized, differentiable loss).

    ``group_ids`` must already be validated (``check_group_ids``); the row count is checked here.

    Example:
        >>> import torch
        >>> stats = batch_statistics(torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]),
        ...                          torch.tensor([0, 0, 0]), torch.tensor([0, 1, 1]), num_groups=3)
        >>> stats.group_accuracy.tolist(), stats.present.tolist()
        ([1.0, 0.5, 0.0], [True, True, False])
    """
    if group_ids.shape[0] != logits.shape[0]:
        raise ValueError(f"`group_ids` has {group_ids.shape[0]} rows but the batch has {logits.shape[0]} samples.")
    loss, correct = per_sample_loss_and_correct(logits, targets, loss_fn)
    return _from_samples(logits, group_ids, loss, correct, num_groups)


def gather_batch_statistics(stats: BatchStatistics, num_groups: int) -> BatchStatistics:
    """The statistics of every rank's batch together (detached), identical on every rank.

    The per-sample (group ids, correct, loss) rows are all-gathered in rank order; ``logits`` stay
    this rank's. Without a process group the rows are this rank's only.
    """
    ids = stats.group_ids
    members = 1 if ids.dim() == 1 else ids.shape[1]
    rows = torch.cat(
        [
            ids.reshape(ids.shape[0], members).double(),
            stats.per_sample_correct.detach().double().unsqueeze(1),
            stats.per_sample_loss.detach().double().unsqueeze(1),
        ],
        dim=1,
    )
    rows = distributed.all_gather_rows(rows)
    dtype = stats.per_sample_loss.dtype
    all_ids = rows[:, :members].long()
    all_ids = all_ids[:, 0] if ids.dim() == 1 else all_ids
    correct, loss = rows[:, members].to(dtype), rows[:, members + 1].to(dtype)
    return _from_samples(stats.logits, all_ids, loss, correct, num_groups)


def warn_if_attributes(group_ids: torch.Tensor) -> None:
    """Warn when ``(N, M)`` ids look like raw attribute values rather than marginal group ids.

    ``GroupSpec(..., mode="marginal").group_ids`` gives column ``j`` ids in its own range, above every
    id of column ``j - 1``; raw attributes (values ``0..size-1`` per column) overlap between columns.
    Reads two values back to the host: call it once, not every step.
    """
    low = group_ids.min(dim=0).values
    high = group_ids.max(dim=0).values
    if bool((low[1:] <= high[:-1]).any()):
        warnings.warn(
            "`group_ids` of shape (N, M) whose columns overlap look like protected *attributes*, not group ids: "
            "convert them with spec.group_ids(attributes) (GroupSpec). (N, M) ids mean each sample is in M groups.",
            stacklevel=6,  # the caller of compute_cmp_state (through run_together and its lambda)
        )

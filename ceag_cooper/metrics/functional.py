"""Functional per-group reductions of one batch: vectorized, differentiable, on the input's device.

All functions accept group ids of shape ``(N,)`` (one group per sample) or ``(N, M)`` (each
sample in ``M`` groups, e.g. marginal groups); a value then counts once in each of its groups.
Everything is ``index_add`` on the input's device: no Python loop over groups, no host read.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ceag_cooper._validation import _assert_values

__all__ = [
    "LossFn",
    "binomial_cdf",
    "binomial_standard_error",
    "flatten_membership",
    "group_loss_accuracy",
    "group_means",
    "group_sums",
    "per_sample_loss_and_correct",
    "weighted_overall",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A per-sample loss: ``loss_fn(logits, targets) -> (N,)`` (no reduction)."""


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets, reduction="none")


def per_sample_loss_and_correct(
    logits: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample loss (cross-entropy by default) and 0/1 correctness (``argmax == target``).

    Returns:
        ``(loss, correct)``, both of shape ``(N,)``; ``correct`` is a float tensor of 0s and 1s.
    """
    if logits.dim() != 2:
        raise ValueError(f"`logits` must have shape (N, num_classes), got {tuple(logits.shape)}.")
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"`targets` must have shape ({logits.shape[0]},), got {tuple(targets.shape)}.")
    if targets.numel() and not targets.dtype.is_floating_point:
        low, high = torch.aminmax(targets)
        _assert_values(
            (low >= 0) & (high < logits.shape[1]),
            f"`targets` must be class indices in [0, {logits.shape[1]}); a sample with another value (e.g. an "
            "ignore_index of -100) would count as a wrong prediction in its group. Drop such samples from the batch.",
        )
    loss = (loss_fn or _cross_entropy)(logits, targets)
    if loss.shape != targets.shape:
        raise ValueError(
            f"`loss_fn` must return one loss per sample, shape {tuple(targets.shape)}, got {tuple(loss.shape)}; "
            "use reduction='none'."
        )
    correct = (logits.detach().argmax(dim=1) == targets).to(logits.dtype)
    return loss, correct


def flatten_membership(values: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair each value with each of its groups, in sample-major order.

    Args:
        values: ``(N,)`` or ``(N, C)`` per-sample values.
        group_ids: ``(N,)`` or ``(N, M)`` group ids.

    Returns:
        ``(flat_ids, flat_values)`` with ``N`` or ``N * M`` rows.
    """
    if group_ids.dim() == 1:
        return group_ids, values
    members = group_ids.shape[1]
    expanded = values.unsqueeze(1).expand(values.shape[0], members, *values.shape[1:])
    return group_ids.reshape(-1), expanded.reshape(-1, *values.shape[1:])


def group_sums(
    values: torch.Tensor,
    group_ids: torch.Tensor,
    num_groups: int,
    *,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group (weighted) sums and counts; differentiable with respect to ``values``.

    Args:
        values: ``(N,)`` per-sample values, or ``(N, C)`` for ``C`` statistics at once.
        group_ids: ``(N,)`` or ``(N, M)`` ids in ``[0, num_groups)``.
        num_groups: number of groups ``G``.
        weights: optional ``(N,)`` non-negative sample weights (default 1).

    Returns:
        ``(sums, counts)``: sums of shape ``(G,)`` (or ``(G, C)``) and counts of shape ``(G,)``,
        in the dtype of ``values``.

    Example:
        >>> import torch
        >>> sums, counts = group_sums(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0, 2, 0]), 3)
        >>> sums.tolist(), counts.tolist()
        ([5.0, 0.0, 2.0], [2.0, 0.0, 1.0])
    """
    if values.dim() not in (1, 2) or values.shape[0] != group_ids.shape[0]:
        raise ValueError(
            f"`values` must have shape ({group_ids.shape[0]},) or ({group_ids.shape[0]}, C) to match "
            f"`group_ids`, got {tuple(values.shape)}."
        )
    if weights is not None and weights.shape != values.shape[:1]:
        raise ValueError(f"`weights` must have shape {tuple(values.shape[:1])}, got {tuple(weights.shape)}.")
    ones = torch.ones_like(values[:, :1]) if values.dim() == 2 else torch.ones_like(values).unsqueeze(1)
    columns = values if values.dim() == 2 else values.unsqueeze(1)
    if weights is not None:
        w = weights.to(values.dtype).unsqueeze(1)
        columns, ones = columns * w, w.detach()
    # One index_add for the sums and the counts together.
    ids, flat = flatten_membership(torch.cat([columns, ones.expand(-1, 1)], dim=1), group_ids)
    totals = values.new_zeros(num_groups, flat.shape[1]).index_add(0, ids, flat)
    sums = totals[:, :-1] if values.dim() == 2 else totals[:, 0]
    return sums, totals[:, -1].detach()


def group_loss_accuracy(
    loss: torch.Tensor,
    correct: torch.Tensor,
    group_ids: torch.Tensor,
    num_groups: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch's per-group mean loss (differentiable), mean accuracy (detached) and counts.

    The batch statistics of every training step: one :func:`group_means` call on the stacked
    values (one ``index_add`` for the sums and counts of both).

    Args:
        loss: ``(N,)`` per-sample loss.
        correct: ``(N,)`` per-sample 0/1 accuracy.
        group_ids: ``(N,)`` or ``(N, M)`` ids in ``[0, num_groups)`` (validated by the caller).
        num_groups: number of groups ``G``.

    Returns:
        ``(group_loss, group_accuracy, counts)``, each of shape ``(G,)``, 0 for absent groups.

    Example:
        >>> import torch
        >>> loss = torch.tensor([1.0, 3.0, 2.0], requires_grad=True)
        >>> group_loss, group_acc, counts = group_loss_accuracy(
        ...     loss, torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 2]), 3)
        >>> group_loss.tolist(), group_acc.tolist(), counts.tolist()
        ([2.0, 0.0, 2.0], [0.5, 0.0, 1.0], [2.0, 0.0, 1.0])
    """
    means, counts = group_means(torch.stack([loss, correct], dim=1), group_ids, num_groups)
    return means[:, 0], means[:, 1].detach(), counts


def group_means(values: torch.Tensor, group_ids: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group means (0 for groups without samples) and counts; differentiable.

    Args:
        values: ``(N,)`` or ``(N, C)`` per-sample values.
        group_ids: ``(N,)`` or ``(N, M)`` group ids.
        num_groups: number of groups ``G``.

    Returns:
        ``(means, counts)``: means of shape ``(G,)`` (or ``(G, C)``), counts ``(G,)``.
    """
    sums, counts = group_sums(values, group_ids, num_groups)
    denominator = counts.clamp(min=1.0)
    return sums / (denominator if sums.dim() == 1 else denominator.unsqueeze(1)), counts


def weighted_overall(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum(w * v) / sum(w)``, and 0 when every weight is 0 (e.g. no group observed yet).

    Example:
        >>> import torch
        >>> weighted_overall(torch.tensor([0.5, 1.0]), torch.tensor([3.0, 1.0])).item()
        0.625
        >>> weighted_overall(torch.tensor([0.5, 1.0]), torch.zeros(2)).item()
        0.0
    """
    return (weights * values).sum() / weights.sum().clamp(min=torch.finfo(values.dtype).tiny)


def binomial_standard_error(accuracy: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    r"""Standard error of accuracies measured on ``count`` samples each, Laplace-smoothed.

    :math:`SE = \sqrt{\tilde p (1 - \tilde p) / n}` with :math:`\tilde p = (n p + 1) / (n + 2)`,
    so that an accuracy of 0 or 1 does not look exact; nan where ``count`` is 0. Used for the
    reports' resolvability and for CEAG's per-group tolerances (``resolution_z``).

    Example:
        >>> import torch
        >>> [round(v, 4) for v in binomial_standard_error(torch.tensor([0.9, 1.0]), torch.tensor([10000, 8])).tolist()]
        [0.003, 0.1061]
    """
    n = torch.where(count > 0, count.to(accuracy.dtype), torch.nan)
    smoothed = (n * accuracy + 1.0) / (n + 2.0)
    return torch.sqrt(smoothed * (1.0 - smoothed) / n)


def binomial_cdf(k: torch.Tensor, n: torch.Tensor, p: float) -> torch.Tensor:
    r""":math:`P(K \le k)` for :math:`K \sim \mathrm{Bin}(n, p)`, entry by entry, exactly.

    The sum of the probability mass terms :math:`0..k` of every entry, in float64 and without a
    loop over entries (all terms in one tensor: memory grows with :math:`\sum k`). ``k`` is
    floored and may be negative (probability 0) or at least ``n`` (probability 1).

    Args:
        k: the bounds, any shape.
        n: the numbers of trials (whole numbers >= 0), broadcastable with ``k``.
        p: the success probability, strictly between 0 and 1.

    Returns:
        A float64 tensor of the broadcast shape.

    Example:
        >>> import torch
        >>> [round(v, 4) for v in binomial_cdf(torch.tensor([0, 1, 2, -1]), torch.tensor([2, 2, 2, 2]), 0.5).tolist()]
        [0.25, 0.75, 1.0, 0.0]
    """
    if not 0 < p < 1:
        raise ValueError(f"`p` must be strictly between 0 and 1, got {p!r}.")
    k, n = torch.broadcast_tensors(torch.as_tensor(k, dtype=torch.float64), torch.as_tensor(n, dtype=torch.float64))
    shape, n = k.shape, n.reshape(-1)
    k = torch.minimum(torch.floor(k.reshape(-1)), n)
    terms = (k + 1).clamp(min=0).to(torch.int64)
    owner = torch.repeat_interleave(torch.arange(terms.numel()), terms)
    j = (torch.arange(owner.numel()) - (torch.cumsum(terms, 0) - terms)[owner]).to(torch.float64)
    pmf = torch.distributions.Binomial(n[owner], probs=torch.tensor(p, dtype=torch.float64)).log_prob(j).exp()
    cdf = torch.zeros(terms.numel(), dtype=torch.float64).index_add_(0, owner, pmf)
    return torch.where(k >= n, 1.0, cdf.clamp(max=1.0)).reshape(shape)

"""Which samples a pruned model flips against its dense model, and the max ψ that flipping alone leaves.

:meth:`DisparityReport.feasible_by_chance` judges ε against a null model that only *loses* samples,
at the net overall gap Δ, from accuracies alone. A pruned model also *gains* samples its dense model
got wrong, and ψ_g's sampling spread grows with the total churn (lost + gained), not with the net
gap. With both models' per-sample correctness, :func:`group_churn` counts each group's flips and
:func:`null_max_psi` simulates the max ψ of a model *without* disparate impact that flips at those
rates: if it rarely meets ε, neither will an honest constrained model (issue #15's UTKFace
measurements, ``benchmarks/churn.py``).

Example:
    >>> import numpy as np, torch
    >>> from ceag_cooper.metrics.churn import group_churn, null_max_psi
    >>> dense = torch.tensor([True, True, False, True, True, False])
    >>> sparse = torch.tensor([True, False, True, True, False, False])
    >>> flips = group_churn(dense, sparse, torch.tensor([0, 0, 0, 1, 1, 1]), num_groups=2)
    >>> flips["lost"].tolist(), flips["gained"].tolist(), flips["dense_errors"].tolist()
    ([1.0, 1.0], [1.0, 0.0], [1.0, 1.0])
    >>> counts = np.array([300, 500])
    >>> null = null_max_psi(counts, gap=0.03, gained=0.015, draws=10_000, rng=np.random.default_rng(0))
    >>> bool(0.0 < np.median(null) < 0.05)
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ceag_cooper.metrics.functional import group_sums

__all__ = ["ChurnSummary", "group_churn", "null_max_psi", "summarize_churn"]


def group_churn(
    dense_correct: torch.Tensor, correct: torch.Tensor, group_ids: torch.Tensor, num_groups: int
) -> dict[str, torch.Tensor]:
    """Per group: ``count``, ``dense_errors``, ``lost`` (dense right, sparse wrong) and ``gained`` (the reverse).

    Args:
        dense_correct: ``(N,)`` bool, whether the dense model gets each sample right.
        correct: ``(N,)`` bool, the same for the pruned model, on the same samples in the same order.
        group_ids: ``(N,)`` or ``(N, M)`` group ids (as everywhere in :mod:`ceag_cooper.metrics`).
        num_groups: ``G``.

    Returns:
        ``(G,)`` float64 tensors. The net loss ``lost - gained`` over ``count`` is the group's accuracy
        gap Δ_g, so ψ_g is that minus the overall net loss rate (what a :class:`DisparityReport` of the
        two models' accuracies says), but the two counts say how much of it is churn.

    Example:
        >>> import torch
        >>> flips = group_churn(torch.tensor([True, False, True]), torch.tensor([False, True, True]),
        ...                     torch.tensor([0, 0, 1]), num_groups=2)
        >>> flips["lost"].tolist(), flips["gained"].tolist(), flips["count"].tolist()
        ([1.0, 0.0], [1.0, 0.0], [2.0, 1.0])
    """
    dense_correct, correct = dense_correct.bool(), correct.bool()
    if dense_correct.shape != correct.shape or dense_correct.dim() != 1:
        raise ValueError(
            f"`dense_correct` and `correct` must be (N,) flags of the same samples, got shapes "
            f"{tuple(dense_correct.shape)} and {tuple(correct.shape)}."
        )
    flags = torch.stack([~dense_correct, dense_correct & ~correct, ~dense_correct & correct], dim=1)
    sums, counts = group_sums(flags.double(), group_ids, num_groups)
    return {"count": counts, "dense_errors": sums[:, 0], "lost": sums[:, 1], "gained": sums[:, 2]}


def null_max_psi(
    counts: np.ndarray,
    *,
    gap: float,
    gained: float = 0.0,
    dense_errors: np.ndarray | None = None,
    draws: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``(draws,)`` max ψ over groups of a model without disparate impact: ψ_g centred on 0 in every group.

    Args:
        counts: ``(G,)`` group sizes (the groups to judge, e.g. those with at least 100 samples).
        gap: the net overall gap Δ (lost minus gained, as a fraction of all samples).
        gained: the overall rate of gained samples (0: a loss-only null, the one
            :meth:`DisparityReport.feasible_by_chance` computes exactly).
        dense_errors: ``(G,)`` the dense model's errors per group, e_g. Without it, group g loses
            Bin(n_g, Δ + gained) and gains Bin(n_g, gained) samples. With it, only those errors can be
            gained and only the other samples lost: gained ~ Bin(e_g, q_g) with
            q_g = min(gained / (e_g / n_g), 1), lost ~ Bin(n_g - e_g, p_g) with p_g set so that the
            expected net loss is n_g Δ (so E[ψ_g] = 0), clipped to [0, 1].
        draws: number of simulated models.
        rng: the numpy generator to draw from.

    Raises:
        ValueError: a group without samples, or (without ``dense_errors``) a loss rate outside [0, 1].

    Returns:
        Each draw's max ψ over the groups, as a fraction. ``(null <= eps).mean()`` is the chance that
        such a model meets ε by luck; a model's own max ψ ranks among the draws as its percentile.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> loss_only = null_max_psi(np.array([400] * 20), gap=0.03, draws=20_000, rng=rng)
        >>> churning = null_max_psi(np.array([400] * 20), gap=0.03, gained=0.015, draws=20_000, rng=rng)
        >>> print(f"P(max psi <= 2 points): {(loss_only <= 0.02).mean():.2f} losses only, "
        ...       f"{(churning <= 0.02).mean():.2f} with gains")  # gains widen the spread
        P(max psi <= 2 points): 0.67 losses only, 0.28 with gains
    """
    counts = np.asarray(counts)
    if counts.size and counts.min() < 1:
        raise ValueError("`counts` must be >= 1 for every group: judge only groups with samples (min_count >= 1).")
    if dense_errors is None and not 0 <= gap + gained <= 1:
        raise ValueError(
            f"the loss rate gap + gained = {gap + gained} is not a probability; with a sparse model more accurate "
            "than its dense one, pass `dense_errors` (only those can be gained)."
        )
    shape = (draws, counts.size)
    if dense_errors is None:
        lost_g = rng.binomial(counts, gap + gained, size=shape)
        gained_g = rng.binomial(counts, gained, size=shape) if gained > 0 else 0
    else:
        errors = np.asarray(dense_errors)
        right = counts - errors
        share = np.divide(gained * counts, errors, out=np.zeros(counts.size), where=errors > 0)
        q = np.minimum(share, 1.0)
        p = np.clip(np.divide(gap * counts + errors * q, right, out=np.zeros(counts.size), where=right > 0), 0, 1)
        lost_g, gained_g = rng.binomial(right, p, size=shape), rng.binomial(errors, q, size=shape)
    return ((lost_g - gained_g) / counts - gap).max(axis=1)


@dataclass(frozen=True)
class ChurnSummary:
    """Overall flip rates of a pruned model against its dense one, and its max ψ over the judged groups.

    Attributes:
        lost: share of all samples the dense model gets right and the pruned one wrong.
        gained: share of all samples the dense model gets wrong and the pruned one right.
        gained_share_of_dense_errors: ``gained`` over the dense model's error rate.
        max_psi: the pruned model's max ψ over the judged groups (a fraction).
        counts: ``(J,)`` sizes of the judged groups.
        dense_errors: ``(J,)`` the dense model's errors in each judged group.
    """

    lost: float
    gained: float
    gained_share_of_dense_errors: float
    max_psi: float
    counts: np.ndarray
    dense_errors: np.ndarray

    @property
    def gap(self) -> float:
        """The net overall gap Δ = lost - gained."""
        return self.lost - self.gained

    def null(self, *, draws: int, rng: np.random.Generator, gains: bool = True) -> np.ndarray:
        """:func:`null_max_psi` over the judged groups at these rates (``gains=False``: the loss-only null)."""
        options = {"gained": self.gained, "dense_errors": self.dense_errors} if gains else {}
        return null_max_psi(self.counts, gap=self.gap, draws=draws, rng=rng, **options)


def summarize_churn(flips: dict[str, torch.Tensor], *, min_count: int = 1) -> ChurnSummary:
    """:func:`group_churn`'s counts as overall rates, judged over the groups with at least ``min_count`` samples.

    Example:
        >>> import numpy as np, torch
        >>> flips = group_churn(torch.tensor([True, True, False, True]), torch.tensor([False, True, True, True]),
        ...                     torch.tensor([0, 0, 1, 1]), num_groups=2)
        >>> summary = summarize_churn(flips)
        >>> summary.lost, summary.gained, summary.max_psi  # group 0 lost 1 of 2, group 1 gained 1 of 2
        (0.25, 0.25, 0.5)
        >>> chance = (summary.null(draws=1_000, rng=np.random.default_rng(0)) <= 0.02).mean()
    """
    churn = {k: v.double().cpu().numpy() for k, v in flips.items()}
    total = churn["count"].sum()
    lost, gained = churn["lost"].sum() / total, churn["gained"].sum() / total
    judged = churn["count"] >= max(min_count, 1)
    if not judged.any():
        raise ValueError(f"no group has at least {min_count} samples: lower `min_count`.")
    net = (churn["lost"] - churn["gained"])[judged] / churn["count"][judged]
    return ChurnSummary(
        lost=float(lost),
        gained=float(gained),
        gained_share_of_dense_errors=float(gained * total / churn["dense_errors"].sum()),
        max_psi=float(net.max() - (lost - gained)),
        counts=churn["count"][judged].astype(int),
        dense_errors=churn["dense_errors"][judged].astype(int),
    )

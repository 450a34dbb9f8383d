"""Disparity report: per-group accuracy gaps of a sparse model against its dense reference."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ceag_cooper.metrics.functional import binomial_cdf, binomial_standard_error
from ceag_cooper.metrics.group_metrics import GroupMetrics

__all__ = ["DisparityReport"]


def _as_array(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


@dataclass
class DisparityReport:
    r"""How unevenly pruning changed each group's accuracy, on one data split.

    :math:`\Delta_g = acc_{dense}(g) - acc_{sparse}(g)`, :math:`\Delta = acc_{dense} -
    acc_{sparse}` (whole split), :math:`\psi_g = \Delta_g - \Delta`; ``max_psi`` is
    :math:`\max_g \psi_g` and ``psi_pw`` is :math:`\Psi_{PW} = \max_g \psi_g - \min_g \psi_g`.
    Groups with no sample in the split have ``psi = nan`` and are left out of both.

    Attributes:
        group_names: a name per group.
        dense_accuracy: ``(G,)`` dense accuracy per group.
        sparse_accuracy: ``(G,)`` sparse accuracy per group.
        count: ``(G,)`` samples per group in the split.
        dense_overall: dense accuracy on the whole split.
        sparse_overall: sparse accuracy on the whole split.
        tolerance: :math:`\epsilon` used for :attr:`feasible` (``None``: not judged).
        never_feasible: names of the groups whose constraint was violated at every check during
            training (from :meth:`ceag_cooper.FeasibilityMonitor.never_feasible`; ``None``: not
            tracked). Shown by :meth:`to_markdown` and in ``overall``.

    Example:
        >>> r = DisparityReport(["a", "b"], [0.9, 0.8], [0.88, 0.70], [50, 50], 0.85, 0.79, tolerance=0.01)
        >>> round(r.max_psi, 4), round(r.psi_pw, 4), r.feasible
        (0.04, 0.08, False)
    """

    group_names: list[str]
    dense_accuracy: np.ndarray
    sparse_accuracy: np.ndarray
    count: np.ndarray
    dense_overall: float
    sparse_overall: float
    tolerance: float | None = None
    never_feasible: list[str] | None = None

    def __post_init__(self) -> None:
        self.dense_accuracy = _as_array(self.dense_accuracy)
        self.sparse_accuracy = _as_array(self.sparse_accuracy)
        self.count = _as_array(self.count)
        self.dense_overall = float(self.dense_overall)
        self.sparse_overall = float(self.sparse_overall)
        self.group_names = [str(n) for n in self.group_names]
        sizes = {len(self.group_names), self.dense_accuracy.size, self.sparse_accuracy.size, self.count.size}
        if len(sizes) != 1:
            raise ValueError(
                f"group_names, dense_accuracy, sparse_accuracy and count must have one entry per group, "
                f"got lengths {len(self.group_names)}, {self.dense_accuracy.size}, "
                f"{self.sparse_accuracy.size}, {self.count.size}."
            )
        if self.tolerance is not None and not self.tolerance >= 0:
            raise ValueError(f"`tolerance` must be >= 0, got {self.tolerance}.")
        if self.never_feasible is not None:
            self.never_feasible = [str(n) for n in self.never_feasible]
            unknown = sorted(set(self.never_feasible) - set(self.group_names))
            if unknown:
                raise ValueError(f"`never_feasible` names groups that are not in `group_names`: {unknown}.")

    @classmethod
    def from_metrics(
        cls,
        dense: GroupMetrics,
        sparse: GroupMetrics,
        *,
        group_names: Sequence[str] | None = None,
        tolerance: float | None = None,
        never_feasible: Sequence[str] | None = None,
    ) -> DisparityReport:
        """Build from the dense and sparse models' :class:`GroupMetrics` on the same split."""
        dense.check_same_groups(sparse, "the dense and the sparse statistics")
        names = list(group_names) if group_names is not None else [str(g) for g in range(dense.num_groups)]
        return cls(
            group_names=names,
            dense_accuracy=dense.group_accuracy,
            sparse_accuracy=sparse.group_accuracy,
            count=sparse.group_count,
            dense_overall=float(dense.accuracy),
            sparse_overall=float(sparse.accuracy),
            tolerance=tolerance,
            never_feasible=list(never_feasible) if never_feasible is not None else None,
        )

    @property
    def group_gap(self) -> np.ndarray:
        r"""``(G,)`` :math:`\Delta_g` (nan for groups absent from the split)."""
        gap = self.dense_accuracy - self.sparse_accuracy
        return np.where(self.count > 0, gap, np.nan)

    @property
    def overall_gap(self) -> float:
        r""":math:`\Delta`, the whole-split accuracy drop."""
        return self.dense_overall - self.sparse_overall

    @property
    def psi(self) -> np.ndarray:
        r"""``(G,)`` excess accuracy gaps :math:`\psi_g` (nan for absent groups)."""
        return self.group_gap - self.overall_gap

    @property
    def max_psi(self) -> float:
        r""":math:`\max_g \psi_g` over the groups present."""
        return float(np.nanmax(self.psi)) if np.any(self.count > 0) else math.nan

    @property
    def min_psi(self) -> float:
        r""":math:`\min_g \psi_g` over the groups present."""
        return float(np.nanmin(self.psi)) if np.any(self.count > 0) else math.nan

    @property
    def psi_pw(self) -> float:
        r""":math:`\Psi_{PW} = \max_g \psi_g - \min_g \psi_g`."""
        return self.max_psi - self.min_psi

    @property
    def feasible(self) -> bool | None:
        r"""``max_psi <= tolerance`` (``None`` when no tolerance was given)."""
        return None if self.tolerance is None else bool(self.max_psi <= self.tolerance)

    def is_feasible(self, tolerance: float) -> bool:
        r"""Whether every present group has :math:`\psi_g \le` ``tolerance``."""
        return bool(self.max_psi <= tolerance)

    @property
    def standard_error(self) -> np.ndarray:
        r"""``(G,)`` binomial standard error of each group's accuracy at its size in this split.

        :func:`~ceag_cooper.metrics.functional.binomial_standard_error` of the dense accuracy at the
        group's count (Laplace-smoothed; nan for groups absent from the split). A difference of ψ_g
        smaller than this is not something the split can tell apart from noise.

        Example:
            >>> r = DisparityReport(["big", "small"], [0.9, 1.0], [0.9, 1.0], [10000, 8], 0.9, 0.9, tolerance=0.01)
            >>> [round(float(se), 4) for se in r.standard_error], r.resolvable.tolist()
            ([0.003, 0.1061], [True, False])
        """
        accuracy, count = torch.as_tensor(self.dense_accuracy), torch.as_tensor(self.count)
        return binomial_standard_error(accuracy, count).numpy()

    @property
    def resolvable(self) -> np.ndarray | None:
        r"""``(G,)`` bool: whether a group's ψ_g can be judged against ε at its size: :math:`SE_g \le \epsilon`.

        ``None`` when the report has no tolerance. Groups absent from the split are not resolvable.
        """
        if self.tolerance is None:
            return None
        return np.nan_to_num(self.standard_error, nan=np.inf) <= self.tolerance

    def max_psi_among(self, *, min_count: int) -> float:
        r""":math:`\max_g \psi_g` over the groups with at least ``min_count`` samples in the split (nan if none)."""
        keep = self.count >= max(1, min_count)
        return float(np.nanmax(self.psi[keep])) if np.any(keep) else math.nan

    def feasible_by_chance(self, *, min_count: int = 1, tolerance: float | None = None) -> float:
        r"""How likely a model *without* disparate impact meets max ψ ≤ ε on these groups, by sampling luck.

        The null model changes each sample with the same probability in every group, independently:
        it loses each of a group's :math:`n_g` samples with probability :math:`p = \Delta`, this
        report's overall gap (gains each with probability :math:`|\Delta|` when the sparse model is
        the more accurate one). With :math:`\Delta` held at its observed value, :math:`\psi_g \le
        \epsilon` is a bound on the group's binomial count of changed samples, and the result is
        :math:`\prod_g P(K_g \le \lfloor n_g (p + \epsilon) \rfloor)`, :math:`K_g \sim
        \mathrm{Bin}(n_g, p)`, exactly (gains: :math:`\prod_g P(K_g \ge \lceil n_g (|\Delta| -
        \epsilon) \rceil)`), over the groups with at least ``min_count`` samples. An approximation
        of the null's chance in two ways: the groups are treated as independent and the overall gap
        as fixed, though it moves with them (little when no group is a large share of the split).

        A value far below 1 says ε is finer than the split can resolve over that many groups: even
        a model that spreads its losses evenly in expectation rarely passes, and one that passes has
        fitted which samples it gets wrong. Cost: one term per sample at most (no loop over groups).

        The value is optimistic for a pruned model: such a model also *gains* samples the dense model
        got wrong, so its groups' changes are two-sided and spread wider than a loss-only null at the
        net gap (a report holds accuracies, not which samples changed). :mod:`ceag_cooper.metrics.churn`
        simulates both from the two models' per-sample correctness: on UTKFace's 90 groups (held-out
        selection, last epochs, without distillation; ``benchmarks/churn.py``) the pruned models lost
        3.3-7.3% of the training samples and gained 1.5-1.7%, and the chance fell from 0.2-21%
        (loss-only, as here) to 0.02-0.8% (with those gains).

        Args:
            min_count: count only the groups with at least this many samples in the split.
            tolerance: ε; default the report's own.

        Returns:
            The probability, in ``[0, 1]``; 1 when no group is counted or when ψ cannot exceed ε
            (no sample changes, every sample is lost, or the gain is at most ε); nan when the
            overall gap is nan.

        Raises:
            ValueError: no tolerance (neither given nor in the report), or a negative one.

        Example:
            >>> r = DisparityReport(["a", "b"], [0.9, 0.9], [0.86, 0.86], [100, 10000], 0.9, 0.86, tolerance=0.02)
            >>> round(r.feasible_by_chance(), 3), round(r.feasible_by_chance(min_count=1000), 3)
            (0.894, 1.0)
        """
        epsilon = self.tolerance if tolerance is None else tolerance
        if epsilon is None or not epsilon >= 0:
            raise ValueError(
                f"feasible_by_chance needs a tolerance >= 0: pass tolerance=... or build the report with one, "
                f"got {epsilon!r}."
            )
        gap = self.overall_gap
        if math.isnan(gap):
            return math.nan
        counts = np.rint(self.count[self.count >= max(1, min_count)]).astype(np.int64)
        change = min(abs(gap), 1.0)
        if counts.size == 0 or not 0 < change < 1 or (gap < 0 and change <= epsilon):
            return 1.0
        if gap > 0:  # at most floor(n (p + eps)) of a group's samples lost
            most = torch.as_tensor(np.floor(counts * (change + epsilon) + 1e-9))
            return float(binomial_cdf(most, torch.as_tensor(counts), change).prod())
        # at least ceil(n (q - eps)) gained, i.e. at most n - that many not gained (each with 1 - q)
        least = np.ceil(counts * (change - epsilon) - 1e-9)
        return float(binomial_cdf(torch.as_tensor(counts - least), torch.as_tensor(counts), 1 - change).prod())

    @property
    def by_group(self) -> dict[str, dict[str, Any]]:
        """Per-group rows (fairlearn-style): accuracies, gap, psi, count, standard error, resolvable.

        ``resolvable`` (see :attr:`resolvable`) only when the report has a tolerance.
        """
        rows = {}
        standard_error, resolvable = self.standard_error, self.resolvable
        for g, name in enumerate(self.group_names):
            rows[name] = {
                "dense_accuracy": float(self.dense_accuracy[g]),
                "sparse_accuracy": float(self.sparse_accuracy[g]),
                "gap": float(self.group_gap[g]),
                "psi": float(self.psi[g]),
                "count": float(self.count[g]),
                "standard_error": float(standard_error[g]),
            }
            if resolvable is not None:
                rows[name]["resolvable"] = bool(resolvable[g])
        return rows

    @property
    def overall(self) -> dict[str, Any]:
        """Whole-split numbers: accuracies, overall gap, max psi, Psi_PW, feasibility."""
        return {
            "dense_accuracy": self.dense_overall,
            "sparse_accuracy": self.sparse_overall,
            "gap": self.overall_gap,
            "max_psi": self.max_psi,
            "psi_pw": self.psi_pw,
            "tolerance": self.tolerance,
            "feasible": self.feasible,
            "never_feasible": self.never_feasible,
        }

    def to_dict(self) -> dict[str, Any]:
        """``{"overall": ..., "by_group": ...}`` with plain Python values (nan as ``None``)."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and math.isnan(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return value

        return {"overall": clean(self.overall), "by_group": clean(self.by_group)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DisparityReport:
        """Rebuild a report from :meth:`to_dict` output (e.g. a split of a results JSON's ``reports``).

        Example:
            >>> r = DisparityReport(["a", "b"], [0.9, 0.8], [0.88, 0.70], [50, 50], 0.85, 0.79, tolerance=0.01)
            >>> DisparityReport.from_dict(r.to_dict()).max_psi == r.max_psi
            True
        """
        try:
            rows, overall = data["by_group"], data["overall"]
            return cls(
                group_names=list(rows),
                dense_accuracy=[r["dense_accuracy"] for r in rows.values()],
                sparse_accuracy=[r["sparse_accuracy"] for r in rows.values()],
                count=[r["count"] for r in rows.values()],
                dense_overall=overall["dense_accuracy"],
                sparse_overall=overall["sparse_accuracy"],
                tolerance=overall.get("tolerance"),
                never_feasible=overall.get("never_feasible"),
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(
                f"not a DisparityReport dict (missing or malformed {error}); expected "
                "{'overall': ..., 'by_group': ...} as written by to_dict() / to_json()."
            ) from error

    @classmethod
    def from_json(cls, source: str | Path) -> DisparityReport:
        """Rebuild a report from :meth:`to_json` text or a file holding it."""
        text = (
            Path(source).read_text() if isinstance(source, Path) or not str(source).lstrip().startswith("{") else source
        )
        return cls.from_dict(json.loads(text))

    def group_max(self) -> float:
        """The largest sparse group accuracy (fairlearn's ``MetricFrame.group_max``)."""
        return float(np.nanmax(np.where(self.count > 0, self.sparse_accuracy, np.nan)))

    def group_min(self) -> float:
        """The smallest sparse group accuracy (fairlearn's ``MetricFrame.group_min``)."""
        return float(np.nanmin(np.where(self.count > 0, self.sparse_accuracy, np.nan)))

    def difference(self) -> float:
        """``group_max() - group_min()`` of the sparse accuracies (fairlearn's ``MetricFrame.difference``)."""
        return self.group_max() - self.group_min()

    def to_frame(self) -> Any:
        """The per-group rows as a ``pandas.DataFrame`` indexed by group name (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as error:
            raise ImportError("to_frame() needs pandas: pip install pandas") from error
        frame = pd.DataFrame.from_dict(self.by_group, orient="index")
        frame.index.name = "group"
        return frame

    def to_json(self, path: str | Path | None = None) -> str:
        """The report as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def to_markdown(self, *, title: str | None = None) -> str:
        """A markdown table (percentages), one row per group, then the overall numbers."""
        from ceag_cooper.metrics._markdown import report_markdown

        return report_markdown(self, title=title)

    def plot(self, path: str | Path, *, title: str | None = None, top: int = 30) -> Path:
        """Save a PNG of ψ_g per group (with ε) and dense vs sparse accuracy; see :func:`plot_report`.

        Above ``top`` groups, only the ``top`` largest ψ_g are drawn, sorted, as horizontal bars.
        Needs the ``plot`` extra (matplotlib).
        """
        from ceag_cooper.metrics.plots import plot_report  # matplotlib only when plotting

        return plot_report(self, path, title=title, top=top)

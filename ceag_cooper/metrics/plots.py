"""Figures of disparity reports: ψ_g per group, readable from 2 to thousands of groups.

Up to ``top`` groups every group is a vertical bar in group order. Beyond that a strip of bars
is unreadable (242 groups made a 30-inch figure), so only the ``top`` groups with the largest
ψ_g are drawn, sorted, as horizontal bars with their names, and the title says how many groups
were left out. Needs the ``plot`` extra (matplotlib).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ceag_cooper.metrics.report import DisparityReport

__all__ = ["plot_comparison", "plot_report", "shown_groups"]


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'ceag-cooper[plot]'.") from error
    return plt


def shown_groups(psi: np.ndarray, top: int) -> np.ndarray:
    """Indices of the groups a figure draws: all (in order) up to ``top``, else the ``top`` largest ψ_g, largest first.

    ``psi`` may be ``(G,)`` or ``(M, G)`` (several methods: ranked by each group's largest ψ_g).
    NaN (a group absent from the split) ranks last.

    Example:
        >>> shown_groups(np.array([0.1, 0.5, np.nan, 0.3]), top=2).tolist()
        [1, 3]
        >>> shown_groups(np.array([0.1, 0.5]), top=2).tolist()
        [0, 1]
    """
    if top < 1:
        raise ValueError(f"`top` must be >= 1, got {top}.")
    worst = np.nan_to_num(np.atleast_2d(psi), nan=-np.inf).max(axis=0)
    if worst.shape[0] <= top:
        return np.arange(worst.shape[0])
    return np.argsort(-worst, kind="stable")[:top]


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _tolerance_line(axis: Any, tolerance: float | None, *, horizontal: bool) -> None:
    if tolerance is None:
        return
    line = axis.axvline if horizontal else axis.axhline
    line(100 * tolerance, color="tab:red", linestyle="--", label=f"ε = {100 * tolerance:g}")


def plot_report(report: DisparityReport, path: str | Path, *, title: str | None = None, top: int = 30) -> Path:
    """Save a PNG of one report: ψ_g per group with ε, and dense vs sparse accuracy.

    Args:
        report: the report.
        path: where the PNG goes.
        title: figure title (default: max ψ and Ψ_PW).
        top: above this many groups, draw only the ``top`` largest ψ_g, sorted, horizontally.

    Example:
        >>> import tempfile, pathlib
        >>> from ceag_cooper.metrics import DisparityReport
        >>> names = [f"g{i}" for i in range(50)]
        >>> r = DisparityReport(names, [0.9] * 50, np.linspace(0.6, 0.9, 50), [5] * 50, 0.9, 0.75, tolerance=0.01)
        >>> plot_report(r, pathlib.Path(tempfile.mkdtemp()) / "r.png").exists()
        True
    """
    plt = _pyplot()
    psi = 100 * report.psi
    shown = shown_groups(report.psi, top)
    names = [report.group_names[i] for i in shown]
    colors = ["tab:red" if report.tolerance is not None and p > 100 * report.tolerance else "tab:blue" for p in psi]
    headline = f"max ψ = {100 * report.max_psi:.2f}, Ψ_PW = {100 * report.psi_pw:.2f} points"
    if len(shown) < len(psi):  # many groups: the largest ψ_g, sorted, one readable row each
        fig, ax = plt.subplots(figsize=(8, 0.28 * len(shown) + 1.5))
        y = np.arange(len(shown))[::-1]
        ax.barh(y, np.nan_to_num(psi[shown]), color=[colors[i] for i in shown])
        ax.set_yticks(y)
        ax.set_yticklabels(names, fontsize=8)
        ax.axvline(0, color="black", linewidth=0.8)
        _tolerance_line(ax, report.tolerance, horizontal=True)
        ax.set_xlabel("ψ_g (accuracy points)")
        ax.set_title(title or f"{headline}\nthe {len(shown)} largest ψ_g of {len(psi)} groups")
        if report.tolerance is not None:
            ax.legend(loc="lower right")
        return _save(fig, plt, path)
    x = np.arange(len(shown))
    fig, (ax_psi, ax_acc) = plt.subplots(2, 1, figsize=(max(6.0, 0.45 * len(x) + 2), 7), sharex=True)
    ax_psi.bar(x, np.nan_to_num(psi), color=colors)
    ax_psi.axhline(0, color="black", linewidth=0.8)
    _tolerance_line(ax_psi, report.tolerance, horizontal=False)
    if report.tolerance is not None:
        ax_psi.legend(loc="best")
    ax_psi.set_ylabel("ψ_g (accuracy points)")
    ax_psi.set_title(title or headline)
    ax_acc.bar(x - 0.2, 100 * report.dense_accuracy, width=0.4, label="dense", color="tab:gray")
    ax_acc.bar(x + 0.2, 100 * report.sparse_accuracy, width=0.4, label="sparse", color="tab:green")
    low = float(np.nanmin(np.concatenate([report.dense_accuracy, report.sparse_accuracy])))
    ax_acc.set_ylim(max(0.0, 100 * low - 5), 100.5)
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.legend(loc="lower right")
    ax_acc.set_xticks(x)
    ax_acc.set_xticklabels(names, rotation=45 if len(x) > 4 else 0, ha="right" if len(x) > 4 else "center")
    return _save(fig, plt, path)


def plot_comparison(
    reports: dict[str, DisparityReport], path: str | Path, *, title: str | None = None, top: int = 30
) -> Path:
    """Save one PNG with the ψ_g bars of several methods side by side (e.g. NFT vs CEAG).

    Args:
        reports: method name -> report, all over the same groups.
        path: where the PNG goes.
        title: figure title (default: what is drawn; each method's max ψ is in the legend).
        top: above this many groups, draw only the ``top`` groups whose largest ψ_g (over the
            methods) is largest, sorted, as horizontal bars.

    Example:
        >>> import tempfile, pathlib
        >>> from ceag_cooper.metrics import DisparityReport
        >>> a = DisparityReport(["x", "y"], [0.9, 0.8], [0.8, 0.6], [5, 5], 0.85, 0.7, tolerance=0.01)
        >>> b = DisparityReport(["x", "y"], [0.9, 0.8], [0.8, 0.7], [5, 5], 0.85, 0.75, tolerance=0.01)
        >>> out = plot_comparison({"NFT": a, "CEAG": b}, pathlib.Path(tempfile.mkdtemp()) / "c.png")
        >>> out.exists()
        True
    """
    if not reports:
        raise ValueError("`reports` is empty: give at least one method's DisparityReport.")
    first = next(iter(reports.values()))
    for name, report in reports.items():
        if report.group_names != first.group_names:
            raise ValueError(f"report {name!r} has other groups than the first report; compare like with like.")
    plt = _pyplot()
    shown = shown_groups(np.stack([r.psi for r in reports.values()]), top)
    names = [first.group_names[i] for i in shown]
    many = len(shown) < len(first.group_names)
    width = 0.8 / len(reports)
    if many:
        fig, ax = plt.subplots(figsize=(8, 0.22 * len(shown) * len(reports) + 1.5))
    else:
        fig, ax = plt.subplots(figsize=(min(max(6.0, 0.5 * len(shown) * len(reports) + 2), 30), 4.5))
    position = np.arange(len(shown))[::-1] if many else np.arange(len(shown))
    for i, (name, report) in enumerate(reports.items()):
        label = f"{name} (max ψ {100 * report.max_psi:.1f})"
        values = np.nan_to_num(100 * report.psi[shown])
        # Bars of one group side by side; top to bottom in method order when horizontal.
        offset = position + 0.4 - width * (i + 0.5) if many else position - 0.4 + width * (i + 0.5)
        (ax.barh if many else ax.bar)(offset, values, width, label=label)
    _tolerance_line(ax, first.tolerance, horizontal=many)
    (ax.axvline if many else ax.axhline)(0, color="black", linewidth=0.8)
    if many:
        ax.set_xlabel("ψ_g (accuracy points)")
        ax.set_yticks(position)
        ax.set_yticklabels(names, fontsize=8)
        default = f"excess accuracy gap: the {len(shown)} groups with the largest ψ_g of {len(first.group_names)}"
    else:
        ax.set_ylabel("ψ_g (accuracy points)")
        ax.set_xticks(position)
        ax.set_xticklabels(names, rotation=45 if len(shown) > 4 else 0, ha="right" if len(shown) > 4 else "center")
        default = "excess accuracy gap per group"
    ax.set_title(title or default)
    ax.legend(loc="best")
    return _save(fig, plt, path)

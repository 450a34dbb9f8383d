"""The markdown table of a :class:`~ceag_cooper.metrics.report.DisparityReport`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ceag_cooper.metrics.report import DisparityReport

__all__ = ["report_markdown"]


def report_markdown(report: DisparityReport, *, title: str | None = None) -> str:
    """A markdown table (percentages), one row per group, then the overall numbers."""
    lines = [f"### {title}", ""] if title else []
    judged = report.tolerance is not None
    lines += [
        "| group | n | dense acc | sparse acc | Δ_g | ψ_g | SE |" + (" resolvable at ε |" if judged else ""),
        "|---|---:|---:|---:|---:|---:|---:|" + ("---|" if judged else ""),
    ]
    for name, row in report.by_group.items():
        cells = [
            f"{100 * row[k]:.2f}" if not math.isnan(row[k]) else "–"
            for k in ("dense_accuracy", "sparse_accuracy", "gap", "psi", "standard_error")
        ]
        verdict = (" yes |" if row["resolvable"] else " no |") if judged else ""
        lines.append(f"| {name} | {int(row['count'])} | " + " | ".join(cells) + " |" + verdict)
    feasible = "" if report.tolerance is None else f", feasible at ε = {100 * report.tolerance:.2f}: {report.feasible}"
    lines += [
        "",
        f"Overall: dense {100 * report.dense_overall:.2f}%, sparse {100 * report.sparse_overall:.2f}%, "
        f"Δ = {100 * report.overall_gap:.2f}, max ψ = {100 * report.max_psi:.2f}, "
        f"Ψ_PW = {100 * report.psi_pw:.2f} (points){feasible}.",
    ]
    if report.never_feasible is not None:
        names = ", ".join(report.never_feasible) if report.never_feasible else "none"
        lines.append(f"Groups never feasible during training: {names}.")
    return "\n".join(lines)

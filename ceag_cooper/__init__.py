"""ceag-cooper: prune a PyTorch model without failing some groups much more than others.

CEAG (Hashemizadeh, Ramirez et al., ICLR 2024) fine-tunes a sparse model under one constraint
per group, bounding each group's *excess accuracy gap*, solved with Cooper's Lagrangian
optimizers. See ``docs/index.md``.
"""

from ceag_cooper._validation import NonFiniteError
from ceag_cooper.buffers import ReplayBufferStore
from ceag_cooper.groups import GroupSpec
from ceag_cooper.optim import StepOrder, build_optimizer
from ceag_cooper.problems import (
    CEAG,
    BatchStatistics,
    EqualizedLoss,
    GroupFairnessProblem,
    NaiveFineTuning,
    OverallMode,
    TwoSidedCEAG,
    Unconstrained,
)
from ceag_cooper.report import DisparityReport, plot_comparison
from ceag_cooper.selection import Candidate, FeasibilityMonitor, IterateSelector, average_state_dicts, select_iterate
from ceag_cooper.stats import (
    GroupMetrics,
    GroupMetricsAccumulator,
    evaluate_groups,
    group_loss_accuracy,
    group_means,
    group_sums,
    per_sample_loss_and_correct,
)

__version__ = "0.1.0"

__all__ = [
    "CEAG",
    "BatchStatistics",
    "Candidate",
    "DisparityReport",
    "EqualizedLoss",
    "FeasibilityMonitor",
    "GroupFairnessProblem",
    "GroupMetrics",
    "GroupMetricsAccumulator",
    "GroupSpec",
    "IterateSelector",
    "NaiveFineTuning",
    "NonFiniteError",
    "OverallMode",
    "ReplayBufferStore",
    "StepOrder",
    "TwoSidedCEAG",
    "Unconstrained",
    "__version__",
    "average_state_dicts",
    "build_optimizer",
    "evaluate_groups",
    "group_loss_accuracy",
    "group_means",
    "group_sums",
    "per_sample_loss_and_correct",
    "plot_comparison",
    "select_iterate",
]

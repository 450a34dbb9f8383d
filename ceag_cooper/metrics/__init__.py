"""Per-group metrics: functional batch reductions, the :class:`GroupMetrics` record, evaluation, reports.

Layers, bottom up: :mod:`~ceag_cooper.metrics.functional` (differentiable reductions of one
batch), :mod:`~ceag_cooper.metrics.group_metrics` (per-group accuracy and loss of a model on a
data set, and their streaming accumulator), :mod:`~ceag_cooper.metrics.evaluation` (a model over a
loader), :mod:`~ceag_cooper.metrics.report` (dense vs sparse: the paper's ψ_g and Ψ_PW),
:mod:`~ceag_cooper.metrics.churn` (the samples a pruned model flips, and the max ψ flipping alone leaves) and
:mod:`~ceag_cooper.metrics.plots` (its figures, readable at hundreds of groups).
"""

from ceag_cooper.metrics.evaluation import call_model, evaluate_groups, model_logits, move_to, predict_groups
from ceag_cooper.metrics.functional import (
    LossFn,
    flatten_membership,
    group_loss_accuracy,
    group_means,
    group_sums,
    per_sample_loss_and_correct,
    weighted_overall,
)
from ceag_cooper.metrics.group_metrics import GroupMetrics, GroupMetricsAccumulator
from ceag_cooper.metrics.plots import plot_comparison, plot_report
from ceag_cooper.metrics.report import DisparityReport

__all__ = [
    "DisparityReport",
    "GroupMetrics",
    "GroupMetricsAccumulator",
    "LossFn",
    "call_model",
    "evaluate_groups",
    "flatten_membership",
    "group_loss_accuracy",
    "group_means",
    "group_sums",
    "model_logits",
    "move_to",
    "per_sample_loss_and_correct",
    "plot_comparison",
    "plot_report",
    "predict_groups",
    "weighted_overall",
]

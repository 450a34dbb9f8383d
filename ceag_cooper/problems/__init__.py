"""Cooper problems: CEAG, equalized loss, naive fine-tuning, their base class and estimators.

Layers: :mod:`~ceag_cooper.problems.statistics` (what a batch says per group),
:mod:`~ceag_cooper.problems.buffers` (replay buffers and other registered state),
:mod:`~ceag_cooper.problems.estimates` (the multiplier side: training pass, held-out batches or an
eval pass), :mod:`~ceag_cooper.problems.options` (the shared options), :mod:`~ceag_cooper.problems.distillation`
(the model step's distillation from the dense model),
:mod:`~ceag_cooper.problems.state` (registered state), :mod:`~ceag_cooper.problems.multiplier`
(the indexed multiplier), :mod:`~ceag_cooper.problems.sync`
(distributed), :mod:`~ceag_cooper.problems.base` (the Cooper plumbing), then one file per method.
"""

from ceag_cooper.problems.base import ConstraintEstimate, GroupFairnessProblem, ProblemOptions
from ceag_cooper.problems.buffers import ReplayBufferStore, TensorState
from ceag_cooper.problems.ceag import CEAG, DualStepScale, OverallMode, TwoSidedCEAG
from ceag_cooper.problems.distillation import Distillation, distillation_loss
from ceag_cooper.problems.equalized_loss import EqualizedLoss
from ceag_cooper.problems.statistics import BatchStatistics
from ceag_cooper.problems.unconstrained import NaiveFineTuning, Unconstrained

__all__ = [
    "CEAG",
    "BatchStatistics",
    "ConstraintEstimate",
    "Distillation",
    "DualStepScale",
    "EqualizedLoss",
    "GroupFairnessProblem",
    "NaiveFineTuning",
    "OverallMode",
    "ProblemOptions",
    "ReplayBufferStore",
    "TensorState",
    "TwoSidedCEAG",
    "Unconstrained",
    "distillation_loss",
]

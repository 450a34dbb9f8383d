"""Cooper problems: CEAG, equalized loss, naive fine-tuning, and their base class."""

from ceag_cooper.problems.base import BatchStatistics, GroupFairnessProblem
from ceag_cooper.problems.ceag import CEAG, OverallMode, TwoSidedCEAG, weighted_overall
from ceag_cooper.problems.equalized_loss import EqualizedLoss
from ceag_cooper.problems.unconstrained import NaiveFineTuning, Unconstrained

__all__ = [
    "CEAG",
    "BatchStatistics",
    "EqualizedLoss",
    "GroupFairnessProblem",
    "NaiveFineTuning",
    "OverallMode",
    "TwoSidedCEAG",
    "Unconstrained",
    "weighted_overall",
]

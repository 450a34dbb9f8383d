"""ceag-cooper: prune a PyTorch model without failing some groups much more than others.

CEAG (Hashemizadeh, Ramirez et al., ICLR 2024) fine-tunes a sparse model under one constraint
per group, bounding each group's *excess accuracy gap*, solved with Cooper's Lagrangian
optimizers. See ``docs/index.md``.

The top level holds what a training loop needs; the subpackages are the namespaces for the rest:
:mod:`ceag_cooper.metrics` (reductions, evaluation, reports), :mod:`ceag_cooper.problems` (the
problems, their base class and estimators), :mod:`ceag_cooper.pruning`, :mod:`ceag_cooper.data`,
:mod:`ceag_cooper.models`. The experiment harness (:mod:`ceag_cooper.experiments`, the CLI) is
built on them and is not imported here.
"""

from ceag_cooper import data, metrics, models, problems, pruning
from ceag_cooper._validation import NonFiniteError
from ceag_cooper.checkpoint import load_checkpoint, save_checkpoint
from ceag_cooper.groups import GroupSpec
from ceag_cooper.metrics import DisparityReport, GroupMetrics, evaluate_groups
from ceag_cooper.optim import build_optimizer
from ceag_cooper.problems import (
    CEAG,
    BatchStatistics,
    Distillation,
    EqualizedLoss,
    GroupFairnessProblem,
    TwoSidedCEAG,
    Unconstrained,
)
from ceag_cooper.pruning import GradualSchedule, MagnitudePruner
from ceag_cooper.selection import FeasibilityMonitor, IterateSelector

__version__ = "0.2.0"

__all__ = [
    "CEAG",
    "BatchStatistics",
    "DisparityReport",
    "Distillation",
    "EqualizedLoss",
    "FeasibilityMonitor",
    "GradualSchedule",
    "GroupFairnessProblem",
    "GroupMetrics",
    "GroupSpec",
    "IterateSelector",
    "MagnitudePruner",
    "NonFiniteError",
    "TwoSidedCEAG",
    "Unconstrained",
    "__version__",
    "build_optimizer",
    "data",
    "evaluate_groups",
    "load_checkpoint",
    "metrics",
    "models",
    "problems",
    "pruning",
    "save_checkpoint",
]

"""Sparsity: gradual or one-shot magnitude pruning with masks that keep pruned weights at zero."""

from ceag_cooper.pruning.masks import MagnitudePruner, Scope, default_prunable_parameters
from ceag_cooper.pruning.schedules import GradualSchedule, OneShotSchedule, SparsitySchedule, check_sparsity

__all__ = [
    "GradualSchedule",
    "MagnitudePruner",
    "OneShotSchedule",
    "Scope",
    "SparsitySchedule",
    "check_sparsity",
    "default_prunable_parameters",
]

"""Sparsity: gradual or one-shot magnitude pruning with masks that keep pruned weights at zero."""

from ceag_cooper.pruning.batchnorm import recalibrate_batchnorm
from ceag_cooper.pruning.engine import MaskEngine
from ceag_cooper.pruning.masks import MagnitudePruner, Scope, default_prunable_parameters
from ceag_cooper.pruning.report import LayerSparsity, SparsityReport, sparsity_report
from ceag_cooper.pruning.schedules import GradualSchedule, OneShotSchedule, SparsitySchedule, check_sparsity
from ceag_cooper.pruning.structured import ChannelImportance, ChannelPruner

__all__ = [
    "ChannelImportance",
    "ChannelPruner",
    "GradualSchedule",
    "LayerSparsity",
    "MagnitudePruner",
    "MaskEngine",
    "OneShotSchedule",
    "Scope",
    "SparsityReport",
    "SparsitySchedule",
    "check_sparsity",
    "default_prunable_parameters",
    "recalibrate_batchnorm",
    "sparsity_report",
]

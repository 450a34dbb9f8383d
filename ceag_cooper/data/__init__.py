"""Data sets that return ``(inputs, targets, protected_attributes)``."""

from ceag_cooper.data.synthetic import SyntheticGroupTask, make_group_imbalanced_task

__all__ = ["SyntheticGroupTask", "make_group_imbalanced_task"]

"""Sparsity schedules: the cubic gradual schedule of Zhu & Gupta (2017) and one-shot pruning."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["GradualSchedule", "OneShotSchedule", "SparsitySchedule", "check_sparsity"]


def check_sparsity(value: float, name: str = "sparsity") -> float:
    """Return ``value`` as a float after checking it lies in ``[0, 1)``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"`{name}` must be a fraction in [0, 1) (0.9 = 90% of weights removed), got {value!r}.")
    return float(value)


class SparsitySchedule:
    """Target sparsity as a function of the pruning step (an epoch or a batch, your choice)."""

    def sparsity_at(self, step: int) -> float:
        """Target sparsity at ``step``."""
        raise NotImplementedError

    @property
    def last_step(self) -> int:
        """The step at which the final sparsity is reached; later steps keep it."""
        raise NotImplementedError

    def is_update_step(self, step: int) -> bool:
        """Whether the target changes at ``step`` (pruners act whenever the target exceeds what they applied)."""
        return step == 0 or self.sparsity_at(step) != self.sparsity_at(step - 1)


@dataclass(frozen=True)
class GradualSchedule(SparsitySchedule):
    r"""Cubic gradual magnitude pruning (Zhu & Gupta, 2017).

    .. math:: s(t) = s_f + (s_i - s_f)\,\bigl(1 - \tfrac{t - t_0}{n\,\Delta t}\bigr)^3

    updated every ``frequency`` (:math:`\Delta t`) steps from ``start`` (:math:`t_0`), reaching
    ``final_sparsity`` after ``num_updates`` (:math:`n`) updates; constant outside that range.
    The paper prunes over 15 epochs with one update per epoch, from 0 to :math:`s_f`.

    Args:
        final_sparsity: :math:`s_f \in [0, 1)`.
        initial_sparsity: :math:`s_i \in [0, s_f]`.
        start: first step :math:`t_0`.
        num_updates: number of updates :math:`n \ge 1`.
        frequency: steps between updates :math:`\Delta t \ge 1`.

    Example:
        >>> schedule = GradualSchedule(0.9, num_updates=3)
        >>> [round(schedule.sparsity_at(t), 4) for t in range(5)]
        [0.0, 0.6333, 0.8667, 0.9, 0.9]
    """

    final_sparsity: float
    initial_sparsity: float = 0.0
    start: int = 0
    num_updates: int = 15
    frequency: int = 1

    def __post_init__(self) -> None:
        check_sparsity(self.final_sparsity, "final_sparsity")
        check_sparsity(self.initial_sparsity, "initial_sparsity")
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError(
                f"`initial_sparsity` ({self.initial_sparsity}) exceeds `final_sparsity` ({self.final_sparsity}): "
                "masks only shrink."
            )
        for name in ("num_updates", "frequency"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {value!r}.")
        if isinstance(self.start, bool) or not isinstance(self.start, int) or self.start < 0:
            raise ValueError(f"`start` must be an int >= 0, got {self.start!r}.")

    @property
    def last_step(self) -> int:
        """``start + num_updates * frequency``."""
        return self.start + self.num_updates * self.frequency

    def sparsity_at(self, step: int) -> float:
        """Target sparsity at ``step`` (constant between updates)."""
        updates_done = math.floor((step - self.start) / self.frequency)
        progress = min(max(updates_done, 0), self.num_updates) / self.num_updates
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - progress) ** 3


@dataclass(frozen=True)
class OneShotSchedule(SparsitySchedule):
    """Prune to ``sparsity`` at once, at step ``at``.

    Example:
        >>> [OneShotSchedule(0.5, at=1).sparsity_at(t) for t in range(3)]
        [0.0, 0.5, 0.5]
    """

    sparsity: float
    at: int = 0

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)

    @property
    def last_step(self) -> int:
        """The pruning step."""
        return self.at

    def sparsity_at(self, step: int) -> float:
        """``sparsity`` from step ``at`` on, 0 before."""
        return self.sparsity if step >= self.at else 0.0

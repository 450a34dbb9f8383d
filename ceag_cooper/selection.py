"""Choosing the final iterate (feasibility first), and warning when the constraints look infeasible."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["Candidate", "FeasibilityMonitor", "IterateSelector", "average_state_dicts", "select_iterate"]


@dataclass(frozen=True)
class Candidate:
    """One iterate's held-out numbers.

    Attributes:
        name: e.g. ``"epoch 7"``.
        accuracy: held-out accuracy.
        max_psi: held-out largest excess accuracy gap (max over groups of psi_g).
    """

    name: str
    accuracy: float
    max_psi: float


def select_iterate(candidates: Sequence[Candidate], *, tolerance: float) -> int:
    """Index of the iterate to keep: constrained model selection on held-out data.

    The most accurate candidate among those with ``max_psi <= tolerance``; if none is feasible,
    the one with the smallest ``max_psi`` (ties: the more accurate, then the earlier).

    Example:
        >>> runs = [Candidate("a", 0.90, 0.05), Candidate("b", 0.85, 0.01), Candidate("c", 0.87, 0.009)]
        >>> select_iterate(runs, tolerance=0.01)
        2
        >>> select_iterate(runs, tolerance=0.001)
        2
    """
    if not candidates:
        raise ValueError("`candidates` is empty: evaluate at least one iterate on the held-out data.")
    feasible = [i for i, c in enumerate(candidates) if c.max_psi <= tolerance]
    if feasible:
        return max(feasible, key=lambda i: (candidates[i].accuracy, -i))
    return min(range(len(candidates)), key=lambda i: (candidates[i].max_psi, -candidates[i].accuracy, i))


@torch.no_grad()
def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Uniform average of several iterates' ``state_dict`` (floating tensors; others from the last).

    With pruning masks fixed over the averaged iterates (e.g. after the last pruning step), a
    weight pruned in all of them is 0 in the average, so the average keeps the sparsity; averaging
    across a pruning step would revive weights that were pruned later. BatchNorm statistics are
    averaged too; recalibrate them afterwards (``recalibrate_batchnorm``) for an exact match.

    Example:
        >>> average_state_dicts([{"w": torch.tensor([0.0, 2.0])}, {"w": torch.tensor([0.0, 4.0])}])["w"].tolist()
        [0.0, 3.0]
    """
    if not states:
        raise ValueError("`states` is empty.")
    averaged = {}
    for key, last in states[-1].items():
        if last.is_floating_point():
            averaged[key] = torch.stack([s[key].to(last.dtype) for s in states]).mean(0)
        else:
            averaged[key] = last.clone()
    return averaged


@dataclass
class FeasibilityMonitor:
    """Warns when a multiplier keeps growing while its violation does not decrease.

    Call :meth:`update` at a logging interval (e.g. every epoch) with the problem's multipliers and
    a violation estimate (e.g. ``rollout.cmp_state.misc["strict_violation"]`` or held-out ``psi -
    eps``). After ``patience`` consecutive updates in which a constraint's multiplier grew and its
    violation stayed positive without decreasing, it warns once for that constraint, with numbers:
    the tolerance is likely infeasible at this sparsity.

    Example:
        >>> monitor = FeasibilityMonitor(names=["a", "b"], patience=2)
        >>> for step in range(3):
        ...     monitor.update(torch.tensor([0.1 * step, 0.0]), torch.tensor([0.05, -0.01]))
        >>> monitor.never_feasible()
        ['a']
    """

    names: Sequence[str]
    patience: int = 5
    _last: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False, init=False)
    _streak: torch.Tensor | None = field(default=None, repr=False, init=False)
    _ever_feasible: torch.Tensor | None = field(default=None, repr=False, init=False)
    _warned: set[int] = field(default_factory=set, repr=False, init=False)

    def update(self, multipliers: torch.Tensor, violations: torch.Tensor) -> None:
        """Record one observation of all constraints (1-D tensors of equal length)."""
        multipliers, violations = multipliers.detach().cpu().flatten(), violations.detach().cpu().flatten()
        feasible = violations <= 0
        self._ever_feasible = feasible if self._ever_feasible is None else self._ever_feasible | feasible
        if self._last is None:
            self._streak = torch.zeros_like(multipliers, dtype=torch.long)
        else:
            growing = (multipliers > self._last[0]) & (violations > 0) & (violations >= self._last[1])
            self._streak = torch.where(growing, self._streak + 1, torch.zeros_like(self._streak))
            for index in (self._streak >= self.patience).nonzero().flatten().tolist():
                if index not in self._warned:
                    self._warned.add(index)
                    warnings.warn(
                        f"constraint {self.names[index % len(self.names)]!r}: multiplier grew to "
                        f"{multipliers[index]:.4g} over {self.patience} updates while its violation stayed at "
                        f"{violations[index]:.4g} (> 0, not decreasing); the tolerance is likely infeasible at this "
                        "sparsity: raise it, prune less, or train longer.",
                        stacklevel=2,
                    )
        self._last = (multipliers, violations)

    def state_dict(self) -> dict[str, object]:
        """What the monitor has seen, for checkpoints (``torch.load(weights_only=True)``-safe)."""
        return {
            "last": list(self._last) if self._last is not None else None,
            "streak": self._streak,
            "ever_feasible": self._ever_feasible,
            "warned": sorted(self._warned),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`state_dict` output, so that a resumed run reports the same groups."""
        last = state["last"]
        self._last = (last[0], last[1]) if last is not None else None  # type: ignore[index]
        self._streak = state["streak"]  # type: ignore[assignment]
        self._ever_feasible = state["ever_feasible"]  # type: ignore[assignment]
        self._warned = set(state["warned"])  # type: ignore[arg-type]

    def never_feasible(self) -> list[str]:
        """Names of the constraints never observed feasible (violation <= 0)."""
        if self._ever_feasible is None:
            return []
        return [self.names[i % len(self.names)] for i in (~self._ever_feasible).nonzero().flatten().tolist()]


class IterateSelector:
    """Feasibility-first choice of the final model, online: keeps one state, the best so far.

    Call :meth:`consider` with each candidate iterate (e.g. at the end of every fine-tuning
    epoch, the model evaluated in eval mode on the data its constraints were estimated on) and
    load :attr:`best_state` at the end. The rule is :func:`select_iterate`'s (TFCO's best-iterate
    rule): the most accurate iterate with ``max_psi <= tolerance``; if none is feasible, the one
    with the smallest ``max_psi`` (ties: the more accurate, then the earlier). Only the best
    state is held in memory, so the cost is one ``state_dict`` copy per improvement.

    Args:
        tolerance: ε, the requirement (not a stricter enforced target).

    Example:
        >>> selector = IterateSelector(tolerance=0.01)
        >>> for epoch, (acc, psi) in enumerate([(0.90, 0.03), (0.86, 0.008), (0.88, 0.012)]):
        ...     _ = selector.consider(f"epoch {epoch}", acc, psi, {"w": torch.tensor([float(epoch)])})
        >>> selector.best_name, selector.best_state["w"].item()
        ('epoch 1', 1.0)
        >>> selector.reason()
        'epoch 1: the most accurate of 1 feasible iterate(s) (max psi <= 0.01) among 3 evaluated'
    """

    def __init__(self, *, tolerance: float) -> None:
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
            raise ValueError(f"`tolerance` must be a float >= 0, got {tolerance!r}.")
        self.tolerance = float(tolerance)
        self.candidates: list[Candidate] = []
        self.best_index: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    @property
    def best_name(self) -> str | None:
        """Name of the chosen iterate so far (``None`` before the first :meth:`consider`)."""
        return self.candidates[self.best_index].name if self.best_index is not None else None

    def consider(self, name: str, accuracy: float, max_psi: float, state: dict[str, torch.Tensor]) -> bool:
        """Record a candidate; keep a copy of ``state`` if it is the best so far (returned)."""
        self.candidates.append(Candidate(str(name), float(accuracy), float(max_psi)))
        chosen = select_iterate(self.candidates, tolerance=self.tolerance)
        if chosen != self.best_index:
            self.best_index = chosen
            self.best_state = {k: v.detach().clone() for k, v in state.items()}
            return True
        return False

    def reason(self) -> str:
        """Which iterate was chosen and why, in words (for reports)."""
        if self.best_index is None:
            return "no iterate evaluated"
        feasible = sum(c.max_psi <= self.tolerance for c in self.candidates)
        total = len(self.candidates)
        if feasible:
            why = f"the most accurate of {feasible} feasible iterate(s) (max psi <= {self.tolerance:g})"
        else:
            why = f"no iterate was feasible (max psi <= {self.tolerance:g}): the least infeasible"
        return f"{self.best_name}: {why} among {total} evaluated"

    def state_dict(self) -> dict[str, object]:
        """Candidates and the best state, for checkpoints (``torch.load(weights_only=True)``-safe)."""
        return {
            "candidates": [[c.name, c.accuracy, c.max_psi] for c in self.candidates],
            "best_index": self.best_index,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`state_dict` output."""
        self.candidates = [Candidate(str(n), float(a), float(p)) for n, a, p in state["candidates"]]  # type: ignore[union-attr]
        self.best_index = state["best_index"]  # type: ignore[assignment]
        self.best_state = state["best_state"]  # type: ignore[assignment]

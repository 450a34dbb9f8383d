"""Cooper's optimizer around a framework's primal optimizer: what the Lightning and HF integrations share."""

from __future__ import annotations

from typing import Any, get_args

import cooper
import torch

from ceag_cooper.optim import StepOrder, build_optimizer
from ceag_cooper.problems.base import GroupFairnessProblem

__all__ = ["DUAL_STATE_GLOBALS", "DualOptimizerCache", "allow_dual_state_unpickling"]

DUAL_STATE_GLOBALS = [cooper.optim.nuPIInitType]
"""nuPI's optimizer state names its initialization scheme by an enum; ``torch.load(weights_only=True)``
refuses it unless allowed (nothing else is)."""


def allow_dual_state_unpickling() -> None:
    """Allow :data:`DUAL_STATE_GLOBALS` in ``weights_only`` loads (idempotent).

    Called again right before a framework loads a checkpoint: a ``torch.serialization.safe_globals``
    context elsewhere may have reset the process-wide list since this module was imported.
    """
    torch.serialization.add_safe_globals(DUAL_STATE_GLOBALS)


allow_dual_state_unpickling()


class DualOptimizerCache:
    """Builds :func:`~ceag_cooper.build_optimizer` around the primal optimizer a framework made.

    Frameworks build (and may rebuild) their own optimizers, and restore them from their own
    checkpoints. This builds Cooper's optimizer on first use, rebuilds it when the framework hands
    over a different primal optimizer, and keeps only the *dual* optimizers' state for checkpoints
    (the primal state is the framework's to save): restored state waits until the next build.

    Args:
        problem: the problem the Cooper optimizer steps.
        optimizer_kwargs: keyword arguments of :func:`~ceag_cooper.build_optimizer`.
    """

    def __init__(self, problem: GroupFairnessProblem, optimizer_kwargs: dict[str, Any]) -> None:
        if not isinstance(problem, GroupFairnessProblem):
            raise TypeError(f"`problem` must be a GroupFairnessProblem, got {type(problem).__name__}.")
        self.problem = problem
        self.optimizer_kwargs = dict(optimizer_kwargs)
        self.order: str = self.optimizer_kwargs.get("order", "dual_primal")
        if self.order not in get_args(StepOrder):  # checked now, not after the first batch's forward pass
            raise ValueError(f"`order` must be one of {list(get_args(StepOrder))}, got {self.order!r}.")
        self.optimizer: Any = None
        self._primal: Any = None
        self._pending: list[dict[str, Any]] | None = None

    def around(self, primal: Any) -> Any:
        """The Cooper optimizer for ``primal`` (built now if ``primal`` is new); pending state is loaded."""
        if self.optimizer is None or self._primal is not primal:
            self.optimizer = build_optimizer(self.problem, primal, **self.optimizer_kwargs)
            self._primal = primal
            if self._pending is not None:
                duals = getattr(self.optimizer, "dual_optimizers", None) or []
                if len(duals) != len(self._pending):
                    raise ValueError(
                        f"the checkpoint holds {len(self._pending)} dual optimizer state(s) but this problem has "
                        f"{len(duals)} dual optimizer(s): resume with the problem and options that wrote it."
                    )
                for optimizer, state in zip(duals, self._pending, strict=True):
                    optimizer.load_state_dict(state)
                self._pending = None
        return self.optimizer

    def state_dict(self) -> list[dict[str, Any]] | None:
        """The dual optimizers' states (or the restored ones not loaded yet); ``None`` before any."""
        if self.optimizer is None:
            return self._pending
        return [optimizer.state_dict() for optimizer in getattr(self.optimizer, "dual_optimizers", None) or []]

    def load_state_dict(self, state: list[dict[str, Any]] | None) -> None:
        """Restore :meth:`state_dict` output; it is loaded into the next optimizer :meth:`around` builds."""
        self._pending = list(state) if state is not None else None
        self.optimizer = None

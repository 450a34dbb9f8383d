"""The mask engine shared by every pruner: boolean masks that keep pruned entries at zero."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["MaskEngine"]


class MaskEngine:
    """Boolean masks over some parameters of a model, enforced through training.

    The model keeps its parameters and ``state_dict`` keys (unlike ``torch.nn.utils.prune``,
    which renames ``weight`` to ``weight_orig``). A gradient hook zeroes the gradients of masked
    entries (so no optimizer state builds up for them, and DDP all-reduces zeros), and
    :meth:`attach` re-applies the masks after every ``optimizer.step()``, so momentum, weight
    decay and Adam cannot revive a pruned entry. Masks only shrink.

    Args:
        model: the model (masked in place).
        parameter_names: names (as in ``model.named_parameters()``) of the masked parameters.

    Example:
        >>> net = nn.Linear(3, 2)
        >>> engine = MaskEngine(net, ["weight"])
        >>> engine.restrict("weight", torch.tensor([[True, False, True], [True, True, False]]))
        >>> engine.apply_masks()
        >>> int((net.weight == 0).sum()), round(engine.measured_sparsity(), 3)
        (2, 0.333)
    """

    def __init__(self, model: nn.Module, parameter_names: Sequence[str]) -> None:
        params = dict(model.named_parameters())
        if not parameter_names:
            raise ValueError(
                "no prunable parameter: nothing is left to prune after the defaults; "
                "pass `parameters=[...]` or `prune_first_conv=True` / `prune_last_linear=True`."
            )
        for name in parameter_names:
            if name not in params:
                raise ValueError(f"`parameters` names {name!r}, which is not a parameter of the model.")
            if not params[name].requires_grad:
                raise ValueError(
                    f"parameter {name!r} is frozen (requires_grad=False) but selected for pruning; "
                    "unfreeze it or leave it out with `keep_dense=[...]`."
                )
        self.model = model
        self.parameter_names = list(parameter_names)
        self._params = {n: params[n] for n in self.parameter_names}
        self.masks: dict[str, torch.Tensor] = {n: torch.ones_like(p, dtype=torch.bool) for n, p in self._params.items()}
        # The same masks in each parameter's dtype: multiplying by a float mask is ~4x faster than
        # by a bool one on CPU (no dtype conversion), and it is what the hooks use every step.
        self._multipliers: dict[str, torch.Tensor] = {n: torch.ones_like(p) for n, p in self._params.items()}
        self._handles: list[Any] = [p.register_hook(self._gradient_hook(n)) for n, p in self._params.items()]

    def _gradient_hook(self, name: str):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            return grad * self._multipliers[name]

        return hook

    def restrict(self, name: str, keep: torch.Tensor) -> None:
        """Intersect the mask of ``name`` with ``keep`` (masks never grow back)."""
        self.masks[name] = self.masks[name] & keep.to(self.masks[name].device)
        self._multipliers[name] = self.masks[name].to(self._params[name].dtype)

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero every masked entry (idempotent)."""
        if self._params:
            torch._foreach_mul_([p.data for p in self._params.values()], list(self._multipliers.values()))

    def attach(self, optimizers: torch.optim.Optimizer | Iterable[torch.optim.Optimizer]) -> None:
        """Re-apply the masks after every step of ``optimizers`` (e.g. Cooper's primal optimizers)."""
        if isinstance(optimizers, torch.optim.Optimizer):
            optimizers = [optimizers]
        for optimizer in optimizers:
            self._handles.append(optimizer.register_step_post_hook(lambda *_: self.apply_masks()))

    def remove(self) -> None:
        """Detach all hooks (the weights stay as they are)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def step(self, step: int | None = None) -> float:
        """Advance the pruner's schedule to ``step`` (default: the next one) and prune if it says so.

        Prunes whenever the schedule's target exceeds what was last applied, so skipped steps are
        caught up. Needs the subclass's ``schedule``, ``current_step``, ``_applied_target``,
        ``sparsity`` and ``prune_to`` (both pruners have them).

        Returns:
            The pruner's sparsity after this step.
        """
        step = (0 if self.current_step is None else self.current_step + 1) if step is None else step
        self.current_step = step
        target = self.schedule.sparsity_at(step)
        if target > self._applied_target:
            self.prune_to(target)
            self._applied_target = target
        return self.sparsity

    def measured_sparsity(self) -> float:
        """Fraction of masked entries over all masked parameters."""
        total = sum(m.numel() for m in self.masks.values())
        kept = sum(int(m.sum()) for m in self.masks.values())
        return 1.0 - kept / total

    def state_dict(self) -> dict[str, Any]:
        """Masks and parameter names (loads with ``torch.load(weights_only=True)``)."""
        return {"masks": {n: m.clone() for n, m in self.masks.items()}, "parameter_names": list(self.parameter_names)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore masks and zero the masked entries."""
        if list(state["parameter_names"]) != self.parameter_names:
            raise ValueError(
                f"pruner state is for parameters {state['parameter_names']}, this pruner masks {self.parameter_names}."
            )
        for name, mask in state["masks"].items():
            self.masks[name] = mask.to(device=self.masks[name].device, dtype=torch.bool).clone()
            self._multipliers[name] = self.masks[name].to(self._params[name].dtype)
        self.apply_masks()

"""Unstructured magnitude pruning (layer-wise or global) on top of the :class:`MaskEngine`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from ceag_cooper.pruning.engine import MaskEngine
from ceag_cooper.pruning.schedules import SparsitySchedule, check_sparsity

__all__ = ["MagnitudePruner", "Scope", "default_prunable_parameters"]

Scope = Literal["layerwise", "global"]


def default_prunable_parameters(
    model: nn.Module,
    *,
    keep_dense: Sequence[str] = (),
    prune_first_conv: bool = False,
    prune_last_linear: bool = False,
) -> list[str]:
    """Names of the weights the paper's GMP prunes.

    Every conv and linear weight except the first conv and the last linear layer; biases and
    normalization layers are never pruned.

    Args:
        model: the model.
        keep_dense: module or parameter names to leave dense (each must exist).
        prune_first_conv: also prune the first convolution.
        prune_last_linear: also prune the last linear layer.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8, 4), nn.Linear(4, 2))
        >>> default_prunable_parameters(net)
        ['1.weight', '3.weight']
    """
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    for name in keep_dense:
        if name not in modules and name not in params:
            raise ValueError(
                f"`keep_dense` names {name!r}, which is neither a module nor a parameter of the model; "
                f"modules look like {[n for n in modules if n][:5]}."
            )
    convs = [n for n, m in modules.items() if isinstance(m, nn.modules.conv._ConvNd)]
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    skipped = set()
    if convs and not prune_first_conv:
        skipped.add(convs[0])
    if linears and not prune_last_linear:
        skipped.add(linears[-1])
    names = []
    for module_name in [n for n in modules if n in set(convs) | set(linears)]:
        param_name = f"{module_name}.weight" if module_name else "weight"
        if module_name in skipped or module_name in keep_dense or param_name in keep_dense:
            continue
        names.append(param_name)
    return names


class MagnitudePruner(MaskEngine):
    """Keeps the largest-magnitude weights, layer by layer or globally, following a schedule.

    Args:
        model: the model to prune (pruned in place; parameter names are unchanged).
        schedule: a :class:`SparsitySchedule` (e.g. ``GradualSchedule(0.9, num_updates=15)``).
        scope: ``"layerwise"`` (same sparsity in every layer, the paper's GMP) or ``"global"``
            (one magnitude threshold across layers).
        max_layer_sparsity: with ``scope="global"``, no layer exceeds this sparsity (the excess is
            taken from the other layers), so that no layer collapses.
        parameters: names of the weights to prune (default :func:`default_prunable_parameters`).
        keep_dense, prune_first_conv, prune_last_linear: passed to
            :func:`default_prunable_parameters` when ``parameters`` is not given.

    Example:
        >>> from ceag_cooper.pruning import GradualSchedule
        >>> net = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
        >>> pruner = MagnitudePruner(net, schedule=GradualSchedule(0.5, num_updates=1))
        >>> optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        >>> pruner.attach(optimizer)
        >>> round(pruner.step(1), 2)  # call once per epoch (or batch); returns the sparsity now
        0.5
        >>> int((net[0].weight == 0).sum())
        50
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        schedule: SparsitySchedule,
        scope: Scope = "layerwise",
        max_layer_sparsity: float | None = None,
        parameters: Sequence[str] | None = None,
        keep_dense: Sequence[str] = (),
        prune_first_conv: bool = False,
        prune_last_linear: bool = False,
    ) -> None:
        if not isinstance(schedule, SparsitySchedule):
            raise TypeError(f"`schedule` must be a SparsitySchedule, got {type(schedule).__name__}.")
        if scope not in ("layerwise", "global"):
            raise ValueError(f"`scope` must be 'layerwise' or 'global', got {scope!r}.")
        if max_layer_sparsity is not None:
            check_sparsity(max_layer_sparsity, "max_layer_sparsity")
            if scope != "global":
                raise ValueError("`max_layer_sparsity` only applies to scope='global'.")
        self.model = model
        self.schedule = schedule
        self.scope: Scope = scope
        self.max_layer_sparsity = max_layer_sparsity
        names = (
            list(parameters)
            if parameters is not None
            else default_prunable_parameters(
                model, keep_dense=keep_dense, prune_first_conv=prune_first_conv, prune_last_linear=prune_last_linear
            )
        )
        super().__init__(model, names)
        self.current_step: int | None = None
        self.sparsity = 0.0
        self._applied_target = 0.0

    # ------------------------------------------------------------------------- selection
    def _layerwise(self, sparsity: float) -> dict[str, torch.Tensor]:
        new = {}
        for name, param in self._params.items():
            new[name] = _keep_largest(param.detach(), self.masks[name], round(sparsity * param.numel()))
        return new

    def _global(self, sparsity: float) -> dict[str, torch.Tensor]:
        params = self._params
        sizes = {n: p.numel() for n, p in params.items()}
        total = round(sparsity * sum(sizes.values()))
        cap = self.max_layer_sparsity
        capped: dict[str, int] = {}
        while True:  # water-filling: layers that would exceed the cap are fixed at it
            free = [n for n in params if n not in capped]
            budget = total - sum(capped.values())
            if not free or budget <= 0:
                counts = dict.fromkeys(free, 0)
                break
            scores = torch.cat([_importance(params[n].detach(), self.masks[n]).flatten() for n in free])
            threshold_idx = torch.topk(scores, k=min(budget, scores.numel()), largest=False).indices
            owner = torch.repeat_interleave(torch.arange(len(free)), torch.tensor([sizes[n] for n in free]))
            per_layer = torch.bincount(owner[threshold_idx.cpu()], minlength=len(free)).tolist()
            counts = dict(zip(free, per_layer, strict=True))
            over = [n for n in free if cap is not None and counts[n] > math.floor(cap * sizes[n])]
            if not over:
                break
            for n in over:
                capped[n] = math.floor(cap * sizes[n])
        counts.update(capped)
        if len(capped) == 0:
            # One global topk, exactly like torch.nn.utils.prune.global_unstructured.
            scores = torch.cat([_importance(p.detach(), self.masks[n]).flatten() for n, p in params.items()])
            drop = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
            if total > 0:
                drop[torch.topk(scores, k=total, largest=False).indices] = True
            new, offset = {}, 0
            for n, p in params.items():
                new[n] = self.masks[n] & ~drop[offset : offset + sizes[n]].view_as(p)
                offset += sizes[n]
            return new
        return {n: _keep_largest(params[n].detach(), self.masks[n], counts[n]) for n in params}

    @torch.no_grad()
    def prune_to(self, sparsity: float) -> float:
        """Shrink the masks to ``sparsity`` (never regrowing weights), zero the pruned weights.

        Returns:
            The overall sparsity of the pruned parameters afterwards.
        """
        check_sparsity(sparsity)
        selected = self._global(sparsity) if self.scope == "global" else self._layerwise(sparsity)
        for name, keep in selected.items():
            self.restrict(name, keep)
        self.apply_masks()
        self.sparsity = self.measured_sparsity()
        return self.sparsity

    @property
    def done(self) -> bool:
        """Whether the schedule has reached its final sparsity."""
        return self.current_step is not None and self.current_step >= self.schedule.last_step

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Masks, parameter names and schedule position."""
        return {**super().state_dict(), "current_step": self.current_step, "applied_target": self._applied_target}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore masks and schedule position, and zero the pruned weights."""
        super().load_state_dict(state)
        self.current_step = state["current_step"]
        self._applied_target = float(state.get("applied_target", 0.0))
        self.sparsity = self.measured_sparsity()


def _importance(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """|w|, with already-pruned entries below everything so they stay pruned first."""
    return torch.where(mask, weight.abs(), torch.full_like(weight, -1.0))


def _keep_largest(weight: torch.Tensor, mask: torch.Tensor, num_pruned: int) -> torch.Tensor:
    """Mask that drops the ``num_pruned`` smallest entries (``torch.topk`` like ``l1_unstructured``)."""
    keep = torch.ones_like(mask)
    if num_pruned > 0:
        idx = torch.topk(_importance(weight, mask).flatten(), k=num_pruned, largest=False).indices
        keep.view(-1)[idx] = False
    return keep

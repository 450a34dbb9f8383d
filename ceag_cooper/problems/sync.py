"""Distributed training for problems: identical multipliers and state on every rank, agreed skips.

Called by :class:`~ceag_cooper.problems.GroupFairnessProblem` only under ``torch.distributed``
(see :mod:`ceag_cooper.distributed` for the collectives and ``docs/distributed.md``).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import torch

from ceag_cooper import distributed
from ceag_cooper.metrics.group_metrics import GroupMetrics

if TYPE_CHECKING:
    from ceag_cooper.problems.base import GroupFairnessProblem

__all__ = ["any_rank_nonfinite", "broadcast_state", "identity", "synchronize_once"]


def _digest(metrics: GroupMetrics) -> str:
    digest = hashlib.sha256()
    for value in metrics.state_dict().values():
        is_tensor = isinstance(value, torch.Tensor)
        digest.update(
            value.detach().cpu().double().contiguous().numpy().tobytes() if is_tensor else str(value).encode()
        )
    return digest.hexdigest()[:16]


def any_rank_nonfinite(loss: torch.Tensor) -> bool:
    """Whether the loss is NaN/inf on this or (under torch.distributed) any rank (one host read)."""
    flag = (~torch.isfinite(loss.detach())).to(torch.float32).reshape(1)
    if distributed.is_distributed():
        flag = distributed.all_reduce_sum(flag)  # every rank skips together, or none does
    return bool(flag.item() > 0)


def synchronize_once(problem: GroupFairnessProblem) -> None:
    """On a new process group: check every rank built the same problem, then broadcast rank 0's state."""
    world = distributed.rank_and_world()[1]
    if problem._synchronized_world != world:
        what = f"the configuration of {type(problem).__name__}"
        distributed.check_same_config_on_all_ranks(identity(problem), what)
        broadcast_state(problem)
        problem._synchronized_world = world


def identity(problem: GroupFairnessProblem) -> dict[str, Any]:
    """What must agree between ranks: the config, every public setting, and the references themselves."""
    counters = {"num_steps", "skipped_steps", "training"}  # state, compared by the broadcast instead
    settings = {
        k: v for k, v in vars(problem).items()
        if not k.startswith("_") and k not in counters and isinstance(v, (bool, int, float, str, type(None)))
    }  # fmt: skip
    references = {"reference": problem.reference, "heldout_reference": problem.heldout_reference}
    digests = {name: _digest(metrics) for name, metrics in references.items() if metrics is not None}
    return {**settings, **problem.config(), **digests}


def broadcast_state(problem: GroupFairnessProblem, src: int = 0) -> None:
    """Copy rank ``src``'s multipliers and registered state to every rank (no-op without a process group)."""
    if not distributed.is_distributed():
        return
    if problem.constraint_type is not None:
        distributed.broadcast_(problem.fairness.multiplier.weight.data, src=src)
    for module in problem._estimators.values():
        for tensor in module.buffers() if module is not None else ():
            distributed.broadcast_(tensor, src=src)

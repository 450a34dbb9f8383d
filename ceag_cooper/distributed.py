"""``torch.distributed`` support: identical multipliers and buffers on every rank.

Cooper has no distributed support: run naively under ``DistributedDataParallel``, each rank would
update its own multipliers from its own mini-batch and they would drift apart while the model
stays in sync. :class:`~ceag_cooper.problems.GroupFairnessProblem` calls these helpers when a
process group with more than one rank is initialized: the per-sample (group id, accuracy, loss)
triples of all ranks are all-gathered in rank order, so every rank feeds the same replay buffers
and computes the same strict violations, hence applies the same multiplier update. The model
side (the differentiable proxy) stays local: DDP averages the model gradients as usual.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "OtherRankError",
    "all_gather_rows",
    "all_reduce_sum",
    "broadcast_",
    "check_same_config_on_all_ranks",
    "check_same_on_all_ranks",
    "fail_together",
    "is_distributed",
    "rank_and_world",
    "run_together",
]

T = TypeVar("T")


class OtherRankError(ValueError):
    """Raised on the ranks whose own step succeeded when another rank's step failed (same step)."""


def is_distributed() -> bool:
    """Whether a process group with more than one rank is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``, or ``(0, 1)`` without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device_for(tensor: torch.Tensor) -> torch.device:
    # NCCL needs CUDA tensors; gloo works with CPU tensors.
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def all_gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``(n_r, C)`` rows in rank order (ranks may have different ``n_r``).

    Two collectives: the row counts, then the rows padded to the largest count.
    """
    if not is_distributed():
        return rows
    device = _device_for(rows)
    local = rows.to(device)
    world = dist.get_world_size()
    count = torch.tensor([local.shape[0]], device=device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    padded = local.new_zeros((max(sizes), *local.shape[1:]))
    padded[: local.shape[0]] = local
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:n] for g, n in zip(gathered, sizes, strict=True)]).to(rows.device)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks (a new tensor; unchanged without a process group)."""
    if not is_distributed():
        return tensor
    device = _device_for(tensor)
    total = tensor.detach().to(device).clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(tensor.device)


@torch.no_grad()
def broadcast_(tensor: torch.Tensor, src: int = 0) -> None:
    """Overwrite ``tensor`` in place with rank ``src``'s value."""
    if not is_distributed():
        return
    device = _device_for(tensor)
    buffer = tensor.detach().to(device).clone()
    dist.broadcast(buffer, src=src)
    tensor.copy_(buffer.to(tensor.device))


def check_same_on_all_ranks(values: dict[str, float], what: str) -> None:
    """Raise on every rank if ``values`` differ between ranks (one small all-gather)."""
    if not is_distributed():
        return
    names = sorted(values)
    local = torch.tensor([[float(values[n]) for n in names]], dtype=torch.float64)
    gathered = all_gather_rows(local)
    mismatched = [n for i, n in enumerate(names) if not torch.all(gathered[:, i] == gathered[0, i])]
    if mismatched:
        detail = ", ".join(f"{n}: {gathered[:, names.index(n)].tolist()}" for n in mismatched)
        raise ValueError(f"{what} differs between ranks ({detail}); build the same problem on every rank.")


def fail_together(error: BaseException | None, where: str) -> None:
    """Agree on a failure: if any rank passes an ``error``, every rank raises at this call.

    The failing ranks re-raise their own error; the others raise :class:`OtherRankError` naming the
    ranks that failed. One small all-reduce per call (a read back to the host), so that no rank is
    left waiting in a collective that the failed rank never reaches, and a caller that catches the
    error and goes on keeps the collectives of all ranks paired.
    """
    if not is_distributed():
        if error is not None:
            raise error
        return
    rank, world = rank_and_world()
    flags = torch.zeros(world, dtype=torch.float64)
    flags[rank] = float(error is not None)
    failed = [r for r, flag in enumerate(all_reduce_sum(flags).tolist()) if flag > 0]
    if error is not None:
        raise error
    if failed:
        raise OtherRankError(
            f"rank(s) {failed} failed at {where} (their error says why); every rank stops here so that none "
            "waits for the others."
        )


def check_same_config_on_all_ranks(config: dict, what: str) -> None:
    """Raise on every rank, naming the keys, if ``config`` (plain, JSON-able values) differs between ranks."""
    if not is_distributed():
        return
    text = json.dumps(config, sort_keys=True, default=str).encode()
    rows = torch.tensor(list(text), dtype=torch.float64).reshape(-1, 1)
    gathered = all_gather_rows(rows)
    counts = all_gather_rows(torch.tensor([[float(len(text))]], dtype=torch.float64)).flatten().long().tolist()
    configs, start = [], 0
    for count in counts:
        configs.append(json.loads(bytes(int(v) for v in gathered[start : start + count, 0].tolist()).decode()))
        start += count
    keys = sorted({k for c in configs for k in c})
    differing = [k for k in keys if any(c.get(k) != configs[0].get(k) for c in configs)]
    if differing:
        detail = "; ".join(f"{k}: {[c.get(k) for c in configs]}" for k in differing)
        raise ValueError(f"{what} differs between ranks ({detail}); build the same problem on every rank.")


def run_together(compute: Callable[[], T], where: str) -> T:
    """``compute()``; under torch.distributed a ``ValueError`` on one rank is raised on every rank.

    Without that, the failing rank stops before the next collective while the others block in it
    until the process group times out (30 minutes by default). No collective without a process group.
    """
    if not is_distributed():
        return compute()
    result, failure = None, None
    try:
        result = compute()
    except ValueError as error:
        failure = error
    fail_together(failure, where)
    return result  # type: ignore[return-value]

"""Per-group replay buffers of the last ``k`` per-sample values, fully vectorized.

Semantics are exactly those of one ``collections.deque(maxlen=k)`` per group fed in batch order:
if a group has more than ``k`` samples in one batch, only its last ``k`` are kept. The store is a
``(G, k)`` ring with one count of values written per group; an update is a stable sort, a
cumulative count and one scatter, with no Python loop and no host round trip.

The store is a :class:`torch.nn.Module` whose ring and counts are registered buffers, so that a
problem's ``state_dict``, ``.to()`` and distributed broadcast treat it like any other state.
"""

from __future__ import annotations

from typing import Any

import torch

from ceag_cooper._validation import check_positive_int
from ceag_cooper.metrics.functional import flatten_membership

__all__ = ["ReplayBufferStore", "TensorState"]


class ReplayBufferStore(torch.nn.Module):
    """The last ``k`` values of every group, e.g. per-sample accuracies (CEAG) or losses (EL).

    Args:
        num_groups: number of groups ``G``.
        capacity: ``k``, values kept per group.
        device: where the ring lives (the model's device).
        dtype: dtype of the stored values.
        group_capacity: optional ``(G,)`` capacities ``1 <= k_g <= k`` (default ``k`` for every
            group). A group with fewer training samples than ``k`` would hold repeats of its own
            samples spanning several epochs; with ``k_g`` = its size, a full buffer holds each of
            its samples once (its exact whole-group estimate from the latest pass).
        running_sums: keep each group's sum up to date on every write (float64) instead of summing
            the ``(G, k)`` ring at each query: O(batch) instead of O(G k) per step, for many groups.
            Exact, and means bit-identical to the ring's, for 0/1 values (CEAG's accuracies); for
            general values (losses) the two sums may differ in the last bit, so leave it off there.

    Example:
        >>> import torch
        >>> store = ReplayBufferStore(num_groups=3, capacity=2)
        >>> store.update(torch.tensor([0, 0, 0, 2]), torch.tensor([1.0, 0.0, 1.0, 1.0]))
        >>> store.is_full().tolist(), store.means()[0].item()
        ([True, False, False], 0.5)
        >>> store.contents(0)
        [0.0, 1.0]
    """

    ring: torch.Tensor
    written: torch.Tensor

    def __init__(
        self,
        num_groups: int,
        capacity: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        group_capacity: torch.Tensor | None = None,
        running_sums: bool = False,
    ) -> None:
        super().__init__()
        self.num_groups = check_positive_int(num_groups, "num_groups")
        self.capacity = check_positive_int(capacity, "capacity")
        device = torch.device(device) if device is not None else torch.device("cpu")
        if group_capacity is not None:
            group_capacity = torch.as_tensor(group_capacity, device=device)
            if group_capacity.shape != (self.num_groups,) or group_capacity.dtype.is_floating_point:
                raise ValueError(
                    f"`group_capacity` must hold {self.num_groups} integers, got shape {tuple(group_capacity.shape)} "
                    f"and dtype {group_capacity.dtype}."
                )
            if bool(((group_capacity < 1) | (group_capacity > self.capacity)).any()):
                raise ValueError(f"every `group_capacity` must be in [1, {self.capacity}] (the capacity).")
        # Per-group k_g, or None: every group holds k (the common case keeps its cheaper arithmetic).
        self.register_buffer("group_capacity", None if group_capacity is None else group_capacity.long())
        # One spare column (index k) takes the writes of values that are not kept, so that the
        # scatter needs no boolean indexing (which would force a device-to-host sync).
        self.register_buffer("ring", torch.zeros(self.num_groups, self.capacity + 1, dtype=dtype, device=device))
        # Values ever written per group: the write slot is written % k, the fill min(written, k).
        self.register_buffer("written", torch.zeros(self.num_groups, dtype=torch.long, device=device))
        # Running sums of the held values (float64: exact for 0/1 values), or None: summed at each query.
        running = torch.zeros(self.num_groups, dtype=torch.float64, device=device) if running_sums else None
        self.register_buffer("running", running)

    @property
    def device(self) -> torch.device:
        """Device of the ring."""
        return self.ring.device

    def _capacity(self) -> torch.Tensor | int:
        """``k`` or the ``(G,)`` per-group capacities."""
        return self.capacity if self.group_capacity is None else self.group_capacity

    @property
    def fill(self) -> torch.Tensor:
        """``(G,)`` number of values held per group (at most its capacity)."""
        return torch.minimum(self.written, torch.as_tensor(self._capacity(), device=self.written.device))

    def reset(self) -> None:
        """Empty every buffer."""
        self.ring.zero_()
        self.written.zero_()
        if self.running is not None:
            self.running.zero_()

    @torch.no_grad()
    def update(self, group_ids: torch.Tensor, values: torch.Tensor) -> None:
        """Append ``values`` to the buffers of their groups, in batch order.

        Args:
            group_ids: ``(N,)`` or ``(N, M)`` ids in ``[0, G)`` (validated by the caller).
            values: ``(N,)`` per-sample values; with ``(N, M)`` ids each value goes to ``M`` groups.
        """
        ids, vals = flatten_membership(values.detach(), group_ids)
        # Work in group-sorted order (stable, so batch order is kept within a group): the i-th
        # sorted value is number i - start[g] of its group g in this batch.
        sorted_ids, order = torch.sort(ids, stable=True)
        # index_add (not bincount, which reads max(ids) back to the host on accelerators).
        counts = torch.zeros_like(self.written).index_add_(0, ids, torch.ones_like(ids))
        ends = torch.cumsum(counts, 0)
        position = torch.arange(ids.shape[0], device=ids.device)
        # Slot of value i: (written[g] + i - start[g]) % k, with start = ends - counts. Only the
        # last k values of each group are kept: i >= ends[g] - k; the others go to the spare column.
        offset = (self.written - ends + counts)[sorted_ids]
        capacity = self._capacity()  # k, or each group's own k_g (its columns above k_g stay 0)
        own = capacity if isinstance(capacity, int) else capacity[sorted_ids]
        kept = position >= (ends - capacity)[sorted_ids]
        slot = torch.where(kept, (position + offset) % own, self.capacity)
        new = vals[order].to(self.ring.dtype)
        if self.running is not None:  # add what is written, take out what it overwrites (0 in the spare column)
            delta = torch.where(kept, new.double() - self.ring[sorted_ids, slot].double(), 0.0)
            self.running.index_add_(0, sorted_ids, delta)
        self.ring.index_put_((sorted_ids, slot), new)
        self.written.add_(counts)

    def _apply(self, fn: Any, recurse: bool = True) -> ReplayBufferStore:
        """``.to()`` / ``.half()`` ...: the running sums stay float64 (exact), whatever the values' dtype."""
        super()._apply(fn, recurse)
        if self.running is not None and self.running.dtype != torch.float64:
            self.running = self.running.double()
        return self

    def is_full(self) -> torch.Tensor:
        """``(G,)`` bool: which groups hold ``k`` (or ``k_g``) values (only those count as estimates)."""
        return self.written >= self._capacity()

    def sums(self) -> torch.Tensor:
        """``(G,)`` sum of the held values of each group."""
        if self.running is not None:
            return self.running.to(self.ring.dtype)
        return self.ring[:, : self.capacity].sum(dim=1)

    def means(self) -> torch.Tensor:
        """``(G,)`` mean of the held values of each group (0 for an empty group)."""
        return self.sums() / self.fill.clamp(min=1).to(self.ring.dtype)

    def query(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(means(), is_full())`` together."""
        return self.means(), self.is_full()

    def contents(self, group: int) -> list[float]:
        """The held values of one group, oldest first (for tests and debugging; syncs)."""
        written = int(self.written[group])
        capacity = self.capacity if self.group_capacity is None else int(self.group_capacity[group])
        fill = min(written, capacity)
        start = (written - fill) % capacity
        idx = [(start + i) % capacity for i in range(fill)]
        return [float(v) for v in self.ring[group, idx].tolist()]

    def state_dict(self, *args: object, **kwargs: object) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Copies of the ring and counts, plus the running sums and per-group capacities when used.

        Loads with ``torch.load(weights_only=True)``.
        """
        return {name: tensor.clone() for name, tensor in super().state_dict(*args, **kwargs).items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True, assign: bool = False) -> None:  # type: ignore[override]
        """Restore from :meth:`state_dict` output; shapes must match ``(G, k)``, counts be ``>= 0``.

        A state saved by version 0.1's optional native backend (with running ``sums``) loads too.
        """
        expected = (self.num_groups, self.capacity + 1)
        if tuple(state["ring"].shape) != expected:
            raise ValueError(
                f"replay buffer state has shape {tuple(state['ring'].shape)}, expected {expected} "
                f"for {self.num_groups} groups and capacity {self.capacity}."
            )
        written = state["written"]
        if tuple(written.shape) != (self.num_groups,) or written.dtype != torch.long or bool((written < 0).any()):
            raise ValueError(
                f"replay buffer state is corrupt: `written` must hold {self.num_groups} int64 counts >= 0, "
                f"got shape {tuple(written.shape)}, dtype {written.dtype}."
            )
        kept = {"ring": state["ring"], "written": written}
        if self.running is not None:  # saved without them (running_sums off, or 0.1): summed from the ring
            running = state.get("running")
            if running is None or tuple(running.shape) != (self.num_groups,):
                running = state["ring"][:, : self.capacity].sum(dim=1, dtype=torch.float64)
            kept["running"] = running
        if self.group_capacity is not None:
            saved = state.get("group_capacity")
            if saved is None or not torch.equal(saved.to(self.group_capacity.device), self.group_capacity):
                raise ValueError("replay buffer state was saved with other per-group capacities; use the same ones.")
            kept["group_capacity"] = saved
        elif state.get("group_capacity") is not None:
            raise ValueError("replay buffer state was saved with per-group capacities; pass the same group_capacity.")
        super().load_state_dict(kept, strict=strict, assign=assign)


class TensorState(torch.nn.Module):
    """One state tensor of a problem (e.g. a running count), registered so that it moves and saves itself.

    Example:
        >>> import torch
        >>> counts = TensorState(torch.zeros(3))
        >>> counts.value += torch.tensor([1.0, 0.0, 2.0])
        >>> counts.state_dict()["value"].tolist()
        [1.0, 0.0, 2.0]
    """

    value: torch.Tensor

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("value", value)

    def load_state_dict(  # type: ignore[override]
        self, state: dict[str, torch.Tensor] | torch.Tensor, strict: bool = True, assign: bool = False
    ) -> None:
        """Restore from :meth:`state_dict` output (or the bare tensor that version 0.1 saved)."""
        if isinstance(state, torch.Tensor):
            state = {"value": state}
        if tuple(state["value"].shape) != tuple(self.value.shape):
            raise ValueError(f"state of shape {tuple(state['value'].shape)}, expected {tuple(self.value.shape)}.")
        super().load_state_dict(state, strict=strict, assign=assign)

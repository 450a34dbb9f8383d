"""Per-group replay buffers of the last ``k`` per-sample values, fully vectorized.

Semantics are exactly those of one ``collections.deque(maxlen=k)`` per group fed in batch order:
if a group has more than ``k`` samples in one batch, only its last ``k`` are kept. The store is a
``(G, k)`` ring with one count of values written per group; an update is a stable sort, a
cumulative count and one scatter, with no Python loop and no host round trip. With
``backend="native"`` (CPU only) the update and the query are one fused C++ call each, which keeps
running per-group sums (see :mod:`ceag_cooper.native`).
"""

from __future__ import annotations

import torch

from ceag_cooper import native
from ceag_cooper._validation import check_positive_int
from ceag_cooper.native import Backend
from ceag_cooper.stats import flatten_membership

__all__ = ["ReplayBufferStore"]


class ReplayBufferStore:
    """The last ``k`` values of every group, e.g. per-sample accuracies (CEAG) or losses (EL).

    Args:
        num_groups: number of groups ``G``.
        capacity: ``k``, values kept per group.
        device: where the ring lives (the model's device).
        dtype: dtype of the stored values.
        backend: ``"torch"`` (default, any device) or ``"native"`` (fused C++ kernels, CPU only;
            see :mod:`ceag_cooper.native`). Same contents either way; the same means for 0/1 values,
            and means within the last bit of each other for general values (e.g. losses).

    Example:
        >>> import torch
        >>> store = ReplayBufferStore(num_groups=3, capacity=2)
        >>> store.update(torch.tensor([0, 0, 0, 2]), torch.tensor([1.0, 0.0, 1.0, 1.0]))
        >>> store.is_full().tolist(), store.means()[0].item()
        ([True, False, False], 0.5)
        >>> store.contents(0)
        [0.0, 1.0]
    """

    def __init__(
        self,
        num_groups: int,
        capacity: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        backend: Backend = "torch",
    ) -> None:
        self.num_groups = check_positive_int(num_groups, "num_groups")
        self.capacity = check_positive_int(capacity, "capacity")
        device = torch.device(device) if device is not None else torch.device("cpu")
        self.backend = native.check_backend(backend, device)
        if self.backend == "native" and dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"backend='native' stores float32 or float64 values, got dtype={dtype}; use backend='torch'."
            )
        # One spare column (index k) takes the writes of values that are not kept, so that the
        # scatter needs no boolean indexing (which would force a device-to-host sync).
        self._ring = torch.zeros(self.num_groups, self.capacity + 1, dtype=dtype, device=device)
        # Values ever written per group: the write slot is written % k, the fill min(written, k).
        self._written = torch.zeros(self.num_groups, dtype=torch.long, device=device)
        # Native backend only: running float64 sums of the held values (exact for 0/1 values).
        self._sums = torch.zeros(self.num_groups, dtype=torch.float64, device=device) if self.native else None

    @property
    def native(self) -> bool:
        """Whether the fused C++ kernels do the work (``backend="native"``)."""
        return self.backend == "native"

    @property
    def device(self) -> torch.device:
        """Device of the ring."""
        return self._ring.device

    @property
    def fill(self) -> torch.Tensor:
        """``(G,)`` number of values held per group (at most ``k``)."""
        return self._written.clamp(max=self.capacity)

    def reset(self) -> None:
        """Empty every buffer."""
        self._ring.zero_()
        self._written.zero_()
        if self._sums is not None:
            self._sums.zero_()

    def update(self, group_ids: torch.Tensor, values: torch.Tensor) -> None:
        """Append ``values`` to the buffers of their groups, in batch order.

        Args:
            group_ids: ``(N,)`` or ``(N, M)`` ids in ``[0, G)`` (validated by the caller).
            values: ``(N,)`` per-sample values; with ``(N, M)`` ids each value goes to ``M`` groups.
        """
        if self._sums is not None:  # the kernel copies raw values: no autograd involved
            ids, vals = flatten_membership(values, group_ids)
            native.load().buffer_update(self._ring, self._written, self._sums, ids, vals)
            return
        with torch.no_grad():
            self._update_vectorized(*flatten_membership(values.detach(), group_ids))

    def _update_vectorized(self, ids: torch.Tensor, vals: torch.Tensor) -> None:
        # Work in group-sorted order (stable, so batch order is kept within a group): the i-th
        # sorted value is number i - start[g] of its group g in this batch.
        sorted_ids, order = torch.sort(ids, stable=True)
        # index_add (not bincount, which reads max(ids) back to the host on accelerators).
        counts = torch.zeros_like(self._written).index_add_(0, ids, torch.ones_like(ids))
        ends = torch.cumsum(counts, 0)
        position = torch.arange(ids.shape[0], device=ids.device)
        # Slot of value i: (written[g] + i - start[g]) % k, with start = ends - counts. Only the
        # last k values of each group are kept: i >= ends[g] - k; the others go to the spare column.
        offset = (self._written - ends + counts)[sorted_ids]
        kept = position >= (ends - self.capacity)[sorted_ids]
        slot = torch.where(kept, (position + offset) % self.capacity, self.capacity)
        self._ring.index_put_((sorted_ids, slot), vals[order].to(self._ring.dtype))
        self._written.add_(counts)

    def is_full(self) -> torch.Tensor:
        """``(G,)`` bool: which groups hold ``k`` values (only those count as estimates)."""
        return self._written >= self.capacity

    def sums(self) -> torch.Tensor:
        """``(G,)`` sum of the held values of each group."""
        if self._sums is not None:
            return self._sums.to(self._ring.dtype)
        return self._ring[:, : self.capacity].sum(dim=1)

    def means(self) -> torch.Tensor:
        """``(G,)`` mean of the held values of each group (0 for an empty group)."""
        if self._sums is not None:
            return native.load().buffer_query(self._ring, self._sums, self._written)[0]
        return self.sums() / self._written.clamp(min=1, max=self.capacity).to(self._ring.dtype)

    def query(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(means(), is_full())`` together: one kernel call with the native backend."""
        if self._sums is not None:
            return native.load().buffer_query(self._ring, self._sums, self._written)
        return self.means(), self.is_full()

    def contents(self, group: int) -> list[float]:
        """The held values of one group, oldest first (for tests and debugging; syncs)."""
        written = int(self._written[group])
        fill = min(written, self.capacity)
        start = (written - fill) % self.capacity
        idx = [(start + i) % self.capacity for i in range(fill)]
        return [float(v) for v in self._ring[group, idx].tolist()]

    def tensors(self) -> list[torch.Tensor]:
        """The state tensors (ring, counts, running sums if native), e.g. to broadcast between ranks."""
        return [self._ring, self._written, *([self._sums] if self._sums is not None else [])]

    def to(self, device: torch.device | str, *, dtype: torch.dtype | None = None) -> ReplayBufferStore:
        """Move the store to ``device`` (and the values to ``dtype``, if given) in place and return it."""
        native.check_backend(self.backend, device)
        self._ring = self._ring.to(device, dtype=dtype if dtype is not None else self._ring.dtype)
        self._written = self._written.to(device)
        if self._sums is not None:
            self._sums = self._sums.to(device)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Ring and counts, plus the running sums with the native backend.

        Loads with ``torch.load(weights_only=True)``; either backend loads either backend's state.
        """
        state = {"ring": self._ring.clone(), "written": self._written.clone()}
        if self._sums is not None:  # so that a resumed native run continues bit for bit
            state["sums"] = self._sums.clone()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from :meth:`state_dict` output; shapes must match ``(G, k)``, counts be ``>= 0``."""
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
        self._ring.copy_(state["ring"])
        self._written.copy_(written)
        if self._sums is not None:
            sums = state.get("sums")
            if sums is None or tuple(sums.shape) != (self.num_groups,):  # e.g. saved by the torch backend
                sums = self._ring[:, : self.capacity].sum(dim=1, dtype=torch.float64)
            self._sums.copy_(sums)

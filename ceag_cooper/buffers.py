"""Per-group replay buffers of the last ``k`` per-sample values, fully vectorized.

Semantics are exactly those of one ``collections.deque(maxlen=k)`` per group fed in batch order:
if a group has more than ``k`` samples in one batch, only its last ``k`` are kept. The store is a
``(G, k)`` ring with one write pointer and one fill count per group; an update is a stable sort,
a ``bincount`` and one scatter, with no Python loop and no host round trip.
"""

from __future__ import annotations

import torch

from ceag_cooper._validation import check_positive_int
from ceag_cooper.stats import flatten_membership

__all__ = ["ReplayBufferStore"]


class ReplayBufferStore:
    """The last ``k`` values of every group, e.g. per-sample accuracies (CEAG) or losses (EL).

    Args:
        num_groups: number of groups ``G``.
        capacity: ``k``, values kept per group.
        device: where the ring lives (the model's device).
        dtype: dtype of the stored values.

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
    ) -> None:
        self.num_groups = check_positive_int(num_groups, "num_groups")
        self.capacity = check_positive_int(capacity, "capacity")
        device = torch.device(device) if device is not None else torch.device("cpu")
        # One spare column (index k) takes the writes of values that are not kept, so that the
        # scatter needs no boolean indexing (which would force a device-to-host sync).
        self._ring = torch.zeros(self.num_groups, self.capacity + 1, dtype=dtype, device=device)
        self._next = torch.zeros(self.num_groups, dtype=torch.long, device=device)
        self._fill = torch.zeros(self.num_groups, dtype=torch.long, device=device)

    @property
    def device(self) -> torch.device:
        """Device of the ring."""
        return self._ring.device

    @property
    def fill(self) -> torch.Tensor:
        """``(G,)`` number of values held per group (at most ``k``)."""
        return self._fill

    def reset(self) -> None:
        """Empty every buffer."""
        self._ring.zero_()
        self._next.zero_()
        self._fill.zero_()

    @torch.no_grad()
    def update(self, group_ids: torch.Tensor, values: torch.Tensor) -> None:
        """Append ``values`` to the buffers of their groups, in batch order.

        Args:
            group_ids: ``(N,)`` or ``(N, M)`` ids in ``[0, G)`` (validated by the caller).
            values: ``(N,)`` per-sample values; with ``(N, M)`` ids each value goes to ``M`` groups.
        """
        ids, vals = flatten_membership(values.detach(), group_ids)
        num_values = ids.shape[0]
        # index_add (not bincount, which reads max(ids) back to the host on accelerators).
        counts = torch.zeros(self.num_groups, dtype=torch.long, device=ids.device).index_add_(
            0, ids, torch.ones_like(ids)
        )
        # Rank of each value among the values of its own group in this batch (0, 1, 2, ...).
        order = torch.sort(ids, stable=True).indices
        starts = torch.cumsum(counts, 0) - counts
        rank_sorted = torch.arange(num_values, device=ids.device) - starts[ids[order]]
        rank = torch.empty_like(rank_sorted).scatter_(0, order, rank_sorted)
        kept = rank >= counts[ids] - self.capacity
        slot = torch.where(kept, (self._next[ids] + rank) % self.capacity, self.capacity)
        self._ring.index_put_((ids, slot), vals.to(self._ring.dtype))
        self._next.add_(counts).remainder_(self.capacity)
        self._fill.add_(counts).clamp_(max=self.capacity)

    def is_full(self) -> torch.Tensor:
        """``(G,)`` bool: which groups hold ``k`` values (only those count as estimates)."""
        return self._fill == self.capacity

    def sums(self) -> torch.Tensor:
        """``(G,)`` sum of the held values of each group."""
        return self._ring[:, : self.capacity].sum(dim=1)

    def means(self) -> torch.Tensor:
        """``(G,)`` mean of the held values of each group (0 for an empty group)."""
        return self.sums() / self._fill.clamp(min=1).to(self._ring.dtype)

    def contents(self, group: int) -> list[float]:
        """The held values of one group, oldest first (for tests and debugging; syncs)."""
        fill, nxt = int(self._fill[group]), int(self._next[group])
        start = (nxt - fill) % self.capacity
        idx = [(start + i) % self.capacity for i in range(fill)]
        return [float(v) for v in self._ring[group, idx].tolist()]

    def to(self, device: torch.device | str) -> ReplayBufferStore:
        """Move the store to ``device`` in place and return it."""
        self._ring = self._ring.to(device)
        self._next = self._next.to(device)
        self._fill = self._fill.to(device)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Ring, pointers and fill counts (loads with ``torch.load(weights_only=True)``)."""
        return {"ring": self._ring.clone(), "next": self._next.clone(), "fill": self._fill.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from :meth:`state_dict` output; shapes must match ``(G, k)``."""
        expected = (self.num_groups, self.capacity + 1)
        if tuple(state["ring"].shape) != expected:
            raise ValueError(
                f"replay buffer state has shape {tuple(state['ring'].shape)}, expected {expected} "
                f"for {self.num_groups} groups and capacity {self.capacity}."
            )
        self._ring.copy_(state["ring"])
        self._next.copy_(state["next"])
        self._fill.copy_(state["fill"])

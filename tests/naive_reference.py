"""Naive reference implementations (Python loops and deques), used only as test oracles."""

from __future__ import annotations

import collections
import math


class NaiveBuffers:
    """One ``collections.deque(maxlen=k)`` per group, fed sample by sample."""

    def __init__(self, num_groups: int, k: int, capacities: list[int] | None = None) -> None:
        self.k = k
        self.capacities = capacities or [k] * num_groups
        self.deques = [collections.deque(maxlen=c) for c in self.capacities]

    def update(self, ids: list, values: list) -> None:
        for sample_ids, value in zip(ids, values, strict=True):
            for g in sample_ids if isinstance(sample_ids, list) else [sample_ids]:
                self.deques[g].append(value)

    def full(self) -> list[bool]:
        return [len(d) == c for d, c in zip(self.deques, self.capacities, strict=True)]

    def means(self) -> list[float]:
        return [sum(d) / len(d) if d else 0.0 for d in self.deques]


def naive_ceag_strict(
    *,
    dense_group_acc: list[float],
    dense_acc: float,
    shares: list[float],
    group_acc: list[float],
    observed: list[bool],
    batch_acc: float | None,
    tolerance: float,
    overall: str,
    buffered: bool,
) -> list[float | None]:
    """psi_g - eps for observed groups (None elsewhere), written from the definitions."""
    groups = [g for g, seen in enumerate(observed) if seen]
    if overall == "balanced":
        sparse = sum(group_acc[g] for g in groups) / len(groups) if groups else 0.0
        dense = dense_acc
    elif buffered:
        total = sum(shares[g] for g in groups)
        sparse = sum(shares[g] * group_acc[g] for g in groups) / total if groups else 0.0
        dense = sum(shares[g] * dense_group_acc[g] for g in groups) / total if groups else 0.0
    else:
        sparse, dense = batch_acc, dense_acc
    out: list[float | None] = []
    for g in range(len(observed)):
        if observed[g]:
            out.append((dense_group_acc[g] - group_acc[g]) - (dense - sparse) - tolerance)
        else:
            out.append(None)
    return out


def naive_group_means(values: list[float], ids: list) -> tuple[dict, dict]:
    """Per-group means and counts with plain dicts."""
    sums: dict = collections.defaultdict(float)
    counts: dict = collections.defaultdict(int)
    for value, sample_ids in zip(values, ids, strict=True):
        for g in sample_ids if isinstance(sample_ids, list) else [sample_ids]:
            sums[g] += value
            counts[g] += 1
    return {g: sums[g] / counts[g] for g in sums}, dict(counts)


def is_close(a: float, b: float, tol: float = 1e-6) -> bool:
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)

"""Held-out batches for the multiplier step (Cotter et al., 2019): cycled, resumable, checked."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from ceag_cooper.groups import GroupSpec
from ceag_cooper.metrics.evaluation import call_model

__all__ = ["HeldoutBatches", "eval_logits"]


class HeldoutBatches:
    """An endless cycle over ``(inputs, targets, group_ids_or_attributes)`` batches.

    A sequence (a list of batches) is indexed by position, so that :attr:`position` in a
    checkpoint resumes it exactly; any other re-iterable (a ``DataLoader``) is iterated again
    whenever it runs out.

    Args:
        batches: a re-iterable of batches (not a one-shot iterator or generator).
        spec: turns the third element (attributes) into group ids; ``None``: it already is ids.

    Example:
        >>> import torch
        >>> source = HeldoutBatches([(torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([1, 0]))])
        >>> _ = source.next(torch.device("cpu")); _, _, ids = source.next(torch.device("cpu"))
        >>> ids.tolist(), source.position
        ([1, 0], 2)
    """

    def __init__(self, batches: Iterable, spec: GroupSpec | None = None) -> None:
        if hasattr(batches, "__len__") and len(batches) == 0:
            raise ValueError("`heldout` is empty: give at least one held-out batch.")
        if iter(batches) is batches:
            raise ValueError(
                "`heldout` must be re-iterable (a list, a DataLoader...): it is iterated again whenever it runs "
                "out, and a one-shot iterator or generator would run dry."
            )
        self.batches = batches
        self.spec = spec
        self.position = 0  # batches drawn so far
        self._iterator: Iterator | None = None

    def next(self, device: torch.device) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """The next batch: inputs as stored, targets and group ids on ``device``."""
        if isinstance(self.batches, Sequence):
            batch = self.batches[self.position % len(self.batches)]
        else:
            if self._iterator is None:
                self._iterator = iter(self.batches)
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._iterator = iter(self.batches)
                batch = next(self._iterator)
        self.position += 1
        inputs, targets, third = batch[0], batch[1], batch[2]
        ids = self.spec.group_ids(third.to(device)) if self.spec is not None else third
        return inputs, targets.to(device), ids.to(device)


@torch.no_grad()
def eval_logits(model: torch.nn.Module, inputs: Any) -> torch.Tensor:
    """``model(inputs)`` in eval mode, without gradient (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        return call_model(model, inputs)
    finally:
        model.train(was_training)

"""Switching a model to eval mode for a while, and giving every submodule its own mode back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["eval_mode", "preserved_modes"]


@contextlib.contextmanager
def preserved_modes(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Restore each submodule's own ``training`` flag on exit, even after an exception.

    ``model.train(was_training)`` would set every submodule to the top-level flag, so a model
    whose BatchNorm layers a user froze in eval mode would come back with them training. This
    records the flag of every submodule and puts each one back through its own ``train()`` (outer
    modules first), so a module whose ``train()`` override does more than set the flag (e.g. keeps
    a frozen part in eval mode) runs it.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
        >>> _ = net[1].eval()  # a frozen BatchNorm inside a training model
        >>> with preserved_modes(net):
        ...     _ = net.train()
        >>> net.training, net[1].training
        (True, False)
    """
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield model
    finally:
        for module, training in modes:  # pre-order: a parent's train() resets its children, fixed next
            if module.training != training:
                module.train(training)
        for module, training in modes:  # exact flags at the end (a submodule shared by two parents)
            module.training = training


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``model`` in eval mode inside the block; every submodule's mode is restored on exit.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Dropout(0.5))
        >>> with eval_mode(net):
        ...     net.training
        False
        >>> net.training
        True
    """
    with preserved_modes(model):
        model.eval()
        yield model

"""BatchNorm recalibration: running statistics that match the pruned weights."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from ceag_cooper._modes import preserved_modes

__all__ = ["recalibrate_batchnorm"]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Any], *, max_batches: int | None = None) -> int:
    """Recompute every BatchNorm layer's running mean and variance with the current weights.

    Pruning and fine-tuning move the weights faster than BatchNorm's running averages follow
    (they average over past batches, computed with past weights), so a model evaluated in
    ``eval()`` mode can be much worse than in training, unevenly across groups. This resets
    the statistics and averages them (equal weight per batch) over ``batches`` in training
    mode, without changing any weight: :func:`torch.optim.swa_utils.update_bn` does the work.
    Momentum and train/eval mode are restored afterwards, also when a batch raises.

    Args:
        model: the model.
        batches: an iterable of batches whose first element is the input (e.g. the training
            loader, without augmentation).
        max_batches: stop after this many batches.

    Returns:
        The number of BatchNorm layers recalibrated (0 if the model has none).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        >>> recalibrate_batchnorm(net, [(torch.randn(8, 3) + 5.0,)])
        1
        >>> bool(net[1].running_mean.abs().sum() > 0)
        True
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    try:
        with preserved_modes(model):  # update_bn puts the whole model in train mode
            device = next(iter(model.parameters()), torch.empty(0)).device  # batches go where the model is
            update_bn(itertools.islice(batches, max_batches), model, device=None if device.type == "cpu" else device)
    finally:  # update_bn restores them when it returns; this covers an exception too
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return len(layers)

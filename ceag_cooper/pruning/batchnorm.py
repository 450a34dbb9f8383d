"""BatchNorm recalibration: running statistics that match the pruned weights."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["recalibrate_batchnorm"]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Any], *, max_batches: int | None = None) -> int:
    """Recompute every BatchNorm layer's running mean and variance with the current weights.

    Pruning and fine-tuning move the weights faster than BatchNorm's running averages follow
    (they average over past batches, computed with past weights), so a model evaluated in
    ``eval()`` mode can be much worse than in training, unevenly across groups. This resets
    the statistics and averages them (equal weight per batch) over ``batches`` in training
    mode, without changing any weight. Momentum and train/eval mode are restored afterwards.

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
    was_training = model.training
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the batches seen
    model.train()
    try:
        for count, batch in enumerate(batches):
            if max_batches is not None and count >= max_batches:
                break
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        model.train(was_training)
    return len(layers)

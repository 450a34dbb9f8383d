"""What :class:`~ceag_cooper.pruning.ChannelPruner` checks, and torch-pruning's importance criteria.

Which layers masking prunes exactly, and that removing the masked channels leaves the model's
outputs as they were.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from ceag_cooper._modes import eval_mode

__all__ = [
    "CHANNEL_MIXING",
    "FINALIZE_TOLERANCE",
    "MASKABLE",
    "channel_importance",
    "check_maskable",
    "check_same_outputs",
    "eval_outputs",
    "max_difference",
]

MASKABLE = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
CHANNEL_MIXING = (nn.LayerNorm, nn.GroupNorm)
"""Norms that average over channels: zeroing a channel's scale and shift still leaves it in their mean
and variance, so the masked model is not the model without that channel (measured: outputs differ by
0.18 for LayerNorm and 0.31 for GroupNorm). Pruning through them is refused."""
FINALIZE_TOLERANCE = 1e-5
"""``finalize`` requires the finalized outputs to equal the masked model's within this (times the
outputs' scale, at least 1) on ``example_inputs``, in eval mode."""


def channel_importance(name: str) -> tp.importance.Importance:
    """torch-pruning's importance criterion named ``name`` (see ``ChannelImportance``)."""
    if name == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    raise ValueError(f"`importance` must be 'magnitude', 'taylor' or 'bn_scale', got {name!r}.")


def check_maskable(module: nn.Module, name: str) -> bool:
    """Whether ``module`` (named ``name`` in messages) has weights to mask; raises for one masking cannot prune."""
    if not isinstance(module, nn.Module) or not any(True for _ in module.parameters(recurse=False)):
        return False  # reshapes, additions, concatenations: nothing to mask
    if isinstance(module, CHANNEL_MIXING):
        raise ValueError(
            f"layer {name!r} ({type(module).__name__}) normalizes over the channels that would be pruned: "
            "masking a channel there is not removing it (it still enters the norm's mean and variance), so the "
            "masked model fine-tuned under CEAG would not be the pruned model. Add the layers that produce these "
            "channels to `ignored_layers`, or use unstructured MagnitudePruner."
        )
    if not isinstance(module, MASKABLE) or (
        isinstance(module, nn.modules.conv._ConvNd) and (module.transposed or 1 < module.groups != module.in_channels)
    ):
        raise ValueError(
            f"layer {name!r} ({type(module).__name__}) is coupled to pruned channels but cannot be masked here; "
            f"add it to `ignored_layers` or use unstructured MagnitudePruner."
        )
    return True


def check_same_outputs(masked: list[torch.Tensor], shrunk: list[torch.Tensor]) -> None:
    """Raise unless the finalized outputs equal the masked ones within :data:`FINALIZE_TOLERANCE` (relative)."""
    difference = max_difference(masked, shrunk)
    scale = max(1.0, max((float(t.abs().max()) for t in masked if t.numel()), default=1.0))
    if not difference <= FINALIZE_TOLERANCE * scale:
        raise ValueError(
            f"removing the masked channels changes the model's outputs on `example_inputs` by up to "
            f"{difference:.3g} (outputs up to {scale:.3g}): a layer coupled to them is not handled exactly. The "
            "model is left masked and unchanged; prune with unstructured MagnitudePruner, or add the layers around "
            "the mismatch to `ignored_layers`."
        )


@torch.no_grad()
def eval_outputs(model: nn.Module, example_inputs: Any) -> list[torch.Tensor]:
    """Every tensor in the model's eval-mode output on ``example_inputs`` (torch-pruning's calling rules)."""
    with eval_mode(model):
        if isinstance(example_inputs, Mapping):
            output = model(**example_inputs)
        elif isinstance(example_inputs, (tuple, list)):
            output = model(*example_inputs)
        else:
            output = model(example_inputs)
    leaves, _ = torch.utils._pytree.tree_flatten(output)
    if not leaves and hasattr(output, "logits"):
        leaves = [output.logits]
    return [leaf.float() for leaf in leaves if isinstance(leaf, torch.Tensor)]


def max_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=False)):
        return float("inf")
    return max((float((x - y).abs().max()) for x, y in zip(a, b, strict=True) if x.numel()), default=0.0)

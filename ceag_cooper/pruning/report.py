"""Per-layer sparsity of a model: parameters, non-zeros, channels kept, MACs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from ceag_cooper._modes import preserved_modes

__all__ = ["LayerSparsity", "SparsityReport", "sparsity_report"]

_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass
class LayerSparsity:
    """One conv or linear layer.

    Attributes:
        name: module name.
        params: weight entries.
        nonzeros: non-zero weight entries.
        channels: output channels (rows of the weight).
        channels_kept: output channels with at least one non-zero weight.
        macs: multiply-accumulates of the dense layer for the example inputs (``None`` without them).
    """

    name: str
    params: int
    nonzeros: int
    channels: int
    channels_kept: int
    macs: int | None = None

    @property
    def sparsity(self) -> float:
        """Fraction of zero weights."""
        return 1.0 - self.nonzeros / self.params if self.params else 0.0


@dataclass
class SparsityReport:
    """Sparsity of every conv and linear layer, and of the whole model.

    ``effective_macs`` counts each layer's MACs scaled by its weight density: the work an
    unstructured-sparse kernel would do. ``macs`` is what a dense kernel does (it drops only
    once channels are removed physically, e.g. by ``ChannelPruner.finalize``).
    """

    layers: list[LayerSparsity] = field(default_factory=list)
    total_params: int = 0
    macs: int | None = None

    @property
    def params(self) -> int:
        """Weight entries of the conv and linear layers."""
        return sum(layer.params for layer in self.layers)

    @property
    def nonzeros(self) -> int:
        """Non-zero weight entries of the conv and linear layers."""
        return sum(layer.nonzeros for layer in self.layers)

    @property
    def sparsity(self) -> float:
        """Fraction of zero weights over the conv and linear layers."""
        return 1.0 - self.nonzeros / self.params if self.params else 0.0

    @property
    def effective_macs(self) -> int | None:
        """Sum over layers of ``macs * density`` (``None`` without example inputs)."""
        if self.macs is None:
            return None
        return round(sum((layer.macs or 0) * (1.0 - layer.sparsity) for layer in self.layers))

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python numbers, per layer and overall."""
        return {
            "layers": [{**vars(layer), "sparsity": layer.sparsity} for layer in self.layers],
            "params": self.params,
            "nonzeros": self.nonzeros,
            "sparsity": self.sparsity,
            "total_params": self.total_params,
            "macs": self.macs,
            "effective_macs": self.effective_macs,
        }

    def to_markdown(self) -> str:
        """A markdown table, one row per layer, then the totals."""
        rows = ["| layer | params | non-zeros | sparsity | channels kept |", "|---|---:|---:|---:|---:|"]
        for layer in self.layers:
            rows.append(
                f"| {layer.name} | {layer.params} | {layer.nonzeros} | {100 * layer.sparsity:.1f}% "
                f"| {layer.channels_kept}/{layer.channels} |"
            )
        rows.append(f"| **all** | {self.params} | {self.nonzeros} | {100 * self.sparsity:.1f}% | |")
        if self.macs is not None:
            rows.append(f"\nMACs: {self.macs:,} dense, {self.effective_macs:,} counting only non-zero weights.")
        return "\n".join(rows)


@torch.no_grad()
def sparsity_report(model: nn.Module, *, example_inputs: Any = None) -> SparsityReport:
    """Measure the sparsity of every conv and linear weight of ``model``.

    Args:
        model: any model (masked, finalized or dense).
        example_inputs: an input batch for torch-pruning's MAC counter (optional; only its first
            example is used, so MACs are per example).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> _ = net[0].weight.data[0].zero_()
        >>> report = sparsity_report(net, example_inputs=torch.randn(1, 4))
        >>> report.layers[0].channels_kept, round(report.layers[0].sparsity, 3), report.macs
        (2, 0.333, 26)
    """
    layer_macs: dict[nn.Module, Any] = {}
    macs = None
    if isinstance(example_inputs, torch.Tensor) and example_inputs.shape[0] > 1:
        example_inputs = example_inputs[:1]  # MACs per example (per-layer counts scale with the batch)
    if example_inputs is not None:
        with preserved_modes(model):  # torch-pruning switches the model to eval mode
            macs, _, layer_macs, _ = tp.utils.count_ops_and_params(model, example_inputs, layer_wise=True)
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, _LAYERS):
            continue
        weight = module.weight
        rows = (
            weight.reshape(weight.shape[0], -1) if not getattr(module, "transposed", False) else weight.transpose(0, 1)
        )
        layers.append(
            LayerSparsity(
                name=name,
                params=weight.numel(),
                nonzeros=int((weight != 0).sum()),
                channels=int(rows.shape[0]),
                channels_kept=int((rows != 0).any(dim=1).sum()),
                macs=int(layer_macs[module]) if layer_macs.get(module) is not None else None,
            )
        )
    return SparsityReport(
        layers=layers,
        total_params=sum(p.numel() for p in model.parameters()),
        macs=int(macs) if macs is not None else None,
    )

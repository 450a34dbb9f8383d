"""A small CNN for 32 px images and an MLP for tabular data."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP", "SmallCNN"]


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU blocks (the first three with max pooling) and a linear classifier.

    About 0.24M parameters at the default width (241,829 with 5 classes).

    Args:
        num_classes: output classes.
        width: channels of the first block (then ``2x``, ``4x``, ``4x``).
        in_channels: input channels.

    Example:
        >>> model = SmallCNN(num_classes=5)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 5])
    """

    def __init__(self, num_classes: int, *, width: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        widths = [width, 2 * width, 4 * width, 4 * width]

        def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            return [*layers, nn.MaxPool2d(2)] if pool else layers

        self.features = nn.Sequential(
            *block(in_channels, widths[0], True),
            *block(widths[0], widths[1], True),
            *block(widths[1], widths[2], True),
            *block(widths[2], widths[3], False),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)``."""
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """Fully connected ReLU network for tabular inputs.

    Example:
        >>> MLP(10, 2, hidden=(32, 32))(torch.randn(4, 10)).shape
        torch.Size([4, 2])
    """

    def __init__(self, in_features: int, num_classes: int, *, hidden: Sequence[int] = (64, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_features
        for size in hidden:
            layers += [nn.Linear(previous, size), nn.ReLU()]
            previous = size
        layers.append(nn.Linear(previous, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)``; inputs are flattened first (images work too)."""
        return self.net(x.flatten(1))

"""CIFAR-style ResNets (He et al., 2016, section 4.2): 6n + 2 layers for 32 px inputs."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "CifarResNet", "cifar_resnet"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block."""
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images: a 3x3 stem, three stages of ``n`` blocks, global pooling.

    Args:
        blocks_per_stage: ``n`` (depth ``6n + 2``: 3 gives ResNet-20, 9 gives ResNet-56).
        num_classes: output classes.
        width: channels of the first stage (doubled at each stage).
        in_channels: input channels.
    """

    def __init__(self, blocks_per_stage: int, num_classes: int, *, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        layers: list[nn.Module] = []
        channels = width
        for stage in range(3):
            out = width * 2**stage
            for block in range(blocks_per_stage):
                layers.append(BasicBlock(channels, out, stride=2 if stage > 0 and block == 0 else 1))
                channels = out
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)``."""
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def cifar_resnet(depth: int = 20, num_classes: int = 10, *, width: int = 16, in_channels: int = 3) -> CifarResNet:
    """A ResNet-``depth`` for 32 px images (``depth = 6n + 2``: 20, 32, 44, 56, 110).

    Example:
        >>> model = cifar_resnet(20, num_classes=5)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 5])
        >>> sum(p.numel() for p in model.parameters())
        272149
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"`depth` must be 6n + 2 (20, 32, 44, 56, 110), got {depth}.")
    return CifarResNet((depth - 2) // 6, num_classes, width=width, in_channels=in_channels)

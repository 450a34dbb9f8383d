"""Models sized for the paper's tasks: CIFAR-style ResNets, a small CNN, an MLP."""

from ceag_cooper.models.cnn import MLP, SmallCNN
from ceag_cooper.models.resnet import BasicBlock, CifarResNet, cifar_resnet

__all__ = ["MLP", "BasicBlock", "CifarResNet", "SmallCNN", "cifar_resnet"]

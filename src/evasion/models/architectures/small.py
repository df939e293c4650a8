"""Small architectures for the zoo's first-use-trained models (MNIST 28x28, sklearn digits 8x8).

Layers are named attributes (``conv1``, ``conv2``, ``fc1`` ...) so that forward hooks, feature
extractors and layer-wise defences can address them by name. Each builder takes a ``seed`` and
initialises the weights from it without touching the global random state, so the same seed gives
the same initial weights bit-for-bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor, nn

__all__ = ["DigitsCNN", "DigitsMLP", "MnistCNN", "digits_cnn", "digits_mlp", "mnist_cnn", "seeded"]

M = TypeVar("M", bound=nn.Module)


def seeded(build: Callable[[], M], seed: int) -> M:
    """Call ``build()`` with the global RNG seeded by ``seed``, restoring the global RNG afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class MnistCNN(nn.Module):
    """conv32-pool-conv64-pool-fc128-fc10 with ReLU for 1x28x28 images (421,642 parameters)."""

    def __init__(self, num_classes: int = 10, hidden: int = 128):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64 * 7 * 7, hidden)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


class DigitsMLP(nn.Module):
    """64-128-64-10 multilayer perceptron with ReLU for 1x8x8 digits."""

    def __init__(self, num_classes: int = 10, hidden: int = 128):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64, hidden)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden // 2)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(hidden // 2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.fc1(self.flatten(x)))
        return self.fc3(self.relu2(self.fc2(x)))


class DigitsCNN(nn.Module):
    """conv16-conv32-pool-fc64-fc10 with ReLU for 1x8x8 digits."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc2(self.relu3(self.fc1(self.flatten(self.pool(x)))))


def mnist_cnn(seed: int = 0, num_classes: int = 10) -> MnistCNN:
    """A freshly initialised :class:`MnistCNN` (weights fixed by ``seed``)."""
    return seeded(lambda: MnistCNN(num_classes), seed)


def digits_mlp(seed: int = 0, num_classes: int = 10) -> DigitsMLP:
    """A freshly initialised :class:`DigitsMLP` (weights fixed by ``seed``)."""
    return seeded(lambda: DigitsMLP(num_classes), seed)


def digits_cnn(seed: int = 0, num_classes: int = 10) -> DigitsCNN:
    """A freshly initialised :class:`DigitsCNN` (weights fixed by ``seed``)."""
    return seeded(lambda: DigitsCNN(num_classes), seed)

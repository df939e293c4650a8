"""Shared fixtures: tiny deterministic models and inputs that make the attack tests fast."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from evasion.models.classifier import Classifier

torch.set_num_threads(min(2, os.cpu_count() or 1))


class TinyCNN(nn.Module):
    """A small conv net with BatchNorm and Dropout, so mode handling is exercised."""

    def __init__(self, channels: int = 1, classes: int = 10, size: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(16 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.pool(torch.relu(self.conv2(h)))
        return self.fc(self.drop(h.flatten(1)))


def make_tiny_cnn(seed: int = 0, channels: int = 1, classes: int = 10, size: int = 8) -> Classifier:
    torch.manual_seed(seed)
    net = TinyCNN(channels, classes, size)
    with torch.no_grad():  # non-trivial running stats so eval and train mode differ
        net.bn1.running_mean.uniform_(-0.1, 0.1)
        net.bn1.running_var.uniform_(0.5, 1.5)
    net.train()  # the wrapper must run it in eval mode and leave it in train mode
    return Classifier(net, classes, input_shape=(channels, size, size), name="tiny-cnn")


@pytest.fixture
def tiny_cnn() -> Classifier:
    return make_tiny_cnn()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(24, 1, 8, 8, generator=g)
    x[:4, :, :2] = 0.0  # pixels on the box edges
    x[4:8, :, -2:] = 1.0
    y = torch.randint(0, 10, (24,), generator=g)
    return x, y


@pytest.fixture
def one_thread():
    """One torch thread: tiny models gain nothing from threads, and on a busy machine they spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

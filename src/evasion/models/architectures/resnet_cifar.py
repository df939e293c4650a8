"""The 32-layer CIFAR-10 ResNet of Metzen et al. (2017, Fig. 1 top), with its attachment points.

conv 16 (32x32) - 5 residual blocks of 16 maps (32x32) - 5 blocks of 32 (16x16) - 5 blocks of 64
(8x8) - global average pooling - dense: 1 + 3 * 5 * 2 + 1 = 32 layers (He et al. 2016). Every
3x3 convolution is followed by batch norm and ReLU; the first block of a stage halves the
resolution with a strided convolution and widens its shortcut with a strided 1x1 convolution.
The CIFAR-10 per-channel normalisation is the first layer, so the model takes pixels in [0, 1].

The detector attachment points AD(0)-AD(4) are named layers, so a detector can attach by name
(see :data:`ATTACHMENT_POINTS`): AD(0) the (normalised) input, AD(1) the first convolution,
AD(2) the end of the first stage (still 32x32), AD(3) of the second (16x16), AD(4) of the third
(8x8). The paper's text fixes AD(2) at full resolution, AD(3) at 16x16 and AD(4) at 8x8; the
positions of AD(0) and AD(1) are this module's reading of its Fig. 1.

Importing this module registers the zoo entry ``resnet32-cifar`` (architecture only: weights
come from ``evasion train``).
"""

from __future__ import annotations

from torch import Tensor, nn

from ...errors import ModelError
from ..classifier import Classifier, Normalize
from ..io import load_file
from ..registry import Device, ModelInfo, register
from .small import seeded

__all__ = [
    "ATTACHMENT_POINTS",
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "BasicBlock",
    "ResNetCifar",
    "resnet32_cifar",
    "zoo_factory",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

#: the paper's detector positions -> layer names of :class:`ResNetCifar`
ATTACHMENT_POINTS: dict[str, str] = {
    "AD(0)": "input",
    "AD(1)": "stem",
    "AD(2)": "stage1",
    "AD(3)": "stage2",
    "AD(4)": "stage3",
}


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus the shortcut, then ReLU (no in-place operations)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(h)) + self.shortcut(x))


def _stage(c_in: int, c_out: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(c_in, c_out, stride)] + [BasicBlock(c_out, c_out) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNetCifar(nn.Module):
    """ResNet-(6n+2) for 3x32x32 images; ``blocks=5`` is the paper's 32-layer network."""

    def __init__(self, num_classes: int = 10, blocks: int = 5, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        self.input = Normalize(CIFAR10_MEAN, CIFAR10_STD)
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        self.stage1 = _stage(widths[0], widths[0], blocks, 1)
        self.stage2 = _stage(widths[0], widths[1], blocks, 2)
        self.stage3 = _stage(widths[1], widths[2], blocks, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[2], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        h = self.stage3(self.stage2(self.stage1(self.stem(self.input(x)))))
        return self.fc(self.flatten(self.pool(h)))


def resnet32_cifar(seed: int = 0, num_classes: int = 10) -> ResNetCifar:
    """A freshly initialised 32-layer CIFAR ResNet (weights fixed by ``seed``)."""
    return seeded(lambda: ResNetCifar(num_classes, blocks=5), seed)


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def zoo_factory(device: Device = None, weights: str | None = None) -> Classifier:
    """The zoo entry ``resnet32-cifar``: weights trained by the user (``evasion train``) are loaded.

    There are no bundled weights; ``weights`` is the state dict file ``evasion train`` wrote.
    """
    if weights is None:
        raise ModelError(
            "resnet32-cifar ships without weights: train it with `evasion train resnet32-cifar --data "
            "PATH/cifar-10-batches-py --out resnet32.pt`, then load it with "
            "models.load('resnet32-cifar', weights='resnet32.pt')"
        )
    return load_file(
        weights,
        architecture=resnet32_cifar,
        input_shape=(3, 32, 32),
        num_classes=10,
        class_names=list(CIFAR10_CLASSES),
        name="resnet32-cifar",
        device=device,
    )


register(
    ModelInfo(
        name="resnet32-cifar",
        description="ResNet-32 of Metzen et al. 2017 for CIFAR-10 32x32 (0.47 M parameters)",
        input_shape=(3, 32, 32),
        num_classes=10,
        dataset="cifar10",
        source="architecture only: `evasion train`",
        factory=zoo_factory,
        architecture=resnet32_cifar,
    )
)

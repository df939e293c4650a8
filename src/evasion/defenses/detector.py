"""Detector subnetworks (Metzen et al. 2017): a small binary network on a classifier's feature map.

:meth:`Detector.attach` hooks a detector onto any named layer of a :class:`Classifier`. The
classifier stays frozen and untouched: a forward hook is registered only for the duration of one
forward pass, copies the layer's output and returns nothing, so the classifier's outputs and
gradients are exactly those it has without a detector. The detector outputs the logit of
``p_adv``, the probability that the input carries an adversarial perturbation.

The default architecture is the paper's (Fig. 1 bottom): conv 96 - maxpool - conv 192 - maxpool
- conv 192 - conv 1x1 to 2 - global average pooling, with batch norm and ReLU after the 3x3
convolutions. It is scaled to the feature map: a max-pooling layer is kept only while the map is
larger than 8x8 (on the paper's 32x32 ResNet this skips the second pooling at AD(3) and both at
AD(4), exactly as in the paper), and ``width`` scales the channel counts.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, InputError, ModelError, UnknownNameError
from ..models.architectures.small import seeded
from ..models.classifier import Classifier, eval_mode

__all__ = [
    "Detector",
    "PaperDetector",
    "detector_logit",
    "feature_shape",
    "find_layer",
    "layer_names",
    "logit_of",
    "paper_pools",
    "threshold_for_fpr",
]

#: ``architecture(feature_shape) -> nn.Module`` builds a detector for a layer's output shape
ArchitectureFactory = Callable[[tuple[int, ...]], nn.Module]

#: finite stand-in for logit(0) / logit(1), so that thresholds 0 and 1 keep every score finite
_LOGIT_LIMIT = 1e4


def logit_of(p: float) -> float:
    """``log(p / (1 - p))`` in float64, clipped to +-1e4 at p = 0 and p = 1."""
    if p <= 0.0:
        return -_LOGIT_LIMIT
    if p >= 1.0:
        return _LOGIT_LIMIT
    return max(-_LOGIT_LIMIT, min(_LOGIT_LIMIT, math.log(p) - math.log1p(-p)))


def paper_pools(size: int, limit: int = 8, most: int = 2) -> int:
    """How many 2x2 max-poolings the paper's detector keeps for a ``size`` x ``size`` feature map.

    Pool while the map is larger than ``limit`` (at most ``most`` times): 32 -> 2 (AD(0)-AD(2)),
    16 -> 1 (AD(3)), 8 -> 0 (AD(4)); MNIST maps 28 -> 2, 14 -> 1, 7 -> 0.
    """
    pools = 0
    while size > limit and pools < most:
        size //= 2
        pools += 1
    return pools


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class PaperDetector(nn.Sequential):
    """The detector of Metzen et al. (Fig. 1 bottom) for a ``(C, H, W)`` feature map; 2 logits out.

    ``width`` scales the 96/192/192 channels (e.g. 0.25 gives 24/48/48 for small CPU models).
    """

    def __init__(self, feature_shape: tuple[int, ...], width: float = 1.0):
        if len(feature_shape) != 3:
            raise ConfigError(
                f"the paper's detector needs a feature map (C, H, W), got a layer output of shape {feature_shape}"
            )
        if not (isinstance(width, (int, float)) and 0 < width <= 16):
            raise ConfigError(f"width must be a number in (0, 16], got {width!r}")
        c, h, w = feature_shape
        c1, c2 = max(2, round(96 * width)), max(2, round(192 * width))
        pools = paper_pools(min(h, w))
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["block1"] = _conv_block(c, c1)
        layers["pool1"] = nn.MaxPool2d(2) if pools >= 1 else nn.Identity()
        layers["block2"] = _conv_block(c1, c2)
        layers["pool2"] = nn.MaxPool2d(2) if pools >= 2 else nn.Identity()
        layers["block3"] = _conv_block(c2, c2)
        layers["logits"] = nn.Conv2d(c2, 2, 1)
        layers["gap"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        super().__init__(layers)
        self.feature_shape = tuple(feature_shape)
        self.pools = pools


def detector_logit(out: Tensor) -> Tensor:
    """The logit of ``p_adv`` from a detector network's output.

    ``(N, 2)`` is a two-class softmax (logit = z_adv - z_clean); ``(N, 1)`` or ``(N,)`` is the
    logit itself.
    """
    if out.dim() == 2 and out.shape[1] == 2:
        return out[:, 1] - out[:, 0]
    if out.dim() == 2 and out.shape[1] == 1:
        return out[:, 0]
    if out.dim() == 1:
        return out
    raise ModelError(
        f"a detector network must return (N, 2) logits or one logit (N,) / (N, 1), got {tuple(out.shape)}"
    )


class _Stop(Exception):
    """Raised by the capture hook to end a forward pass once the features are known."""


class Detector(nn.Module):
    """A detector network fed by one named layer of a frozen classifier (through a forward hook).

    The classifier is *not* a submodule: ``detector.parameters()`` are only the detector's, and
    saving the detector saves only its own weights. ``forward(x)`` returns the logit of
    ``p_adv``; :meth:`probability` gives ``p_adv`` itself; :meth:`scores_and_logit` gives the
    classifier's scores and the detector's logit from one forward pass.
    """

    def __init__(self, classifier: Classifier, layer: str, net: nn.Module):
        super().__init__()
        if not isinstance(classifier, Classifier):
            raise ConfigError(f"classifier must be an evasion Classifier, got {type(classifier).__name__}")
        # tuples keep the classifier and its layer out of the detector's registered submodules
        self._host = (classifier, find_layer(classifier, layer))
        self.layer = layer
        self.net = net

    @property
    def classifier(self) -> Classifier:
        clf = self._host[0]
        assert isinstance(clf, Classifier)
        return clf

    @classmethod
    def attach(
        cls,
        classifier: Classifier,
        layer: str,
        architecture: nn.Module | ArchitectureFactory | None = None,
        *,
        width: float = 1.0,
        seed: int = 0,
        example: Tensor | None = None,
    ) -> Detector:
        """A new detector on ``classifier``'s layer ``layer``.

        ``architecture``: ``None`` for :class:`PaperDetector` (with ``width``), an ``nn.Module``,
        or a factory called with the layer's output shape (without the batch dimension). The
        layer's output shape is probed with one forward pass on ``example`` (default: a
        mid-grey image of ``classifier.input_shape``); the weights are seeded by ``seed``.
        """
        find_layer(classifier, layer)
        shape = feature_shape(classifier, layer, example)
        if architecture is None:
            if len(shape) != 3:
                raise ConfigError(
                    f"layer {layer!r} outputs shape {shape} per input, not a feature map (C, H, W): the "
                    "paper's detector needs a convolutional layer; pick another layer or pass architecture="
                )
            net: nn.Module = seeded(lambda: PaperDetector(shape, width), seed)
        elif isinstance(architecture, nn.Module):
            net = architecture
        elif callable(architecture):
            net = seeded(lambda: architecture(shape), seed)
        else:
            raise ConfigError(
                f"architecture must be None, an nn.Module or a factory, got {type(architecture).__name__}"
            )
        _check_net(net, layer, shape, classifier.device)
        return cls(classifier, layer, net.to(classifier.device))

    # -- forward -----------------------------------------------------------------------------
    @contextmanager
    def _capture(self, store: list[Tensor], stop: bool) -> Iterator[None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, Tensor):
                raise ModelError(f"layer {self.layer!r} returned {type(output).__name__}, not a tensor")
            store.append(output.clone())  # a copy: later in-place ops of the classifier cannot alter it
            if stop:
                raise _Stop

        handle = self._host[1].register_forward_hook(hook)
        try:
            yield
        except _Stop:
            pass
        finally:
            handle.remove()

    def scores_and_logit(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The classifier's scores and the detector's logit of ``p_adv``, from one forward pass."""
        store: list[Tensor] = []
        with self._capture(store, stop=False):
            scores = self.classifier(x)
        return scores, self.head(_single(store, self.layer))

    def features(self, x: Tensor) -> Tensor:
        """The attached layer's output (the classifier's forward pass stops right after it)."""
        store: list[Tensor] = []
        clf = self.classifier
        with self._capture(store, stop=True), eval_mode(clf.module), eval_mode(clf.preprocess):
            clf.module(clf.module_input(x))
        return _single(store, self.layer)

    def head(self, features: Tensor) -> Tensor:
        """The detector's logit of ``p_adv`` for precomputed features of the attached layer."""
        dtype = next((t.dtype for t in self.net.parameters() if t.is_floating_point()), features.dtype)
        logit = detector_logit(self.net(features.to(dtype)))
        return logit.float() if logit.dtype in (torch.bfloat16, torch.float16) else logit

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    @torch.no_grad()
    def probability(self, x: Tensor, batch_size: int = 512) -> Tensor:
        """``p_adv`` per input (the detector in eval mode, no gradients, in chunks)."""
        x = self.classifier.check_inputs(x)
        with eval_mode(self):
            return torch.cat([torch.sigmoid(self(chunk)) for chunk in x.split(batch_size)])

    @torch.no_grad()
    def logits(self, x: Tensor, batch_size: int = 512) -> Tensor:
        """The logit of ``p_adv`` per input (eval mode, no gradients, in chunks)."""
        x = self.classifier.check_inputs(x)
        with eval_mode(self):
            return torch.cat([self(chunk) for chunk in x.split(batch_size)])

    def copy(self) -> Detector:
        """A detector with a deep copy of the network, attached to the same classifier."""
        return Detector(self.classifier, self.layer, copy.deepcopy(self.net))

    def extra_repr(self) -> str:
        return f"classifier={self.classifier.name!r}, layer={self.layer!r}"


def _single(store: list[Tensor], layer: str) -> Tensor:
    if len(store) != 1:
        raise ModelError(
            f"layer {layer!r} ran {len(store)} times in one forward pass; attach the detector to a "
            "layer that runs exactly once"
        )
    return store[0]


def layer_names(classifier: Classifier) -> list[str]:
    """The names of the wrapped module's layers a detector can attach to."""
    return [name for name, _ in classifier.module.named_modules() if name]


def find_layer(classifier: Classifier, layer: str) -> nn.Module:
    """The submodule ``layer`` of ``classifier.module``; an error listing the valid names otherwise."""
    modules = dict(classifier.module.named_modules())
    if not isinstance(layer, str) or not layer or layer not in modules:
        raise UnknownNameError("layer", layer, layer_names(classifier))
    return modules[layer]


def feature_shape(classifier: Classifier, layer: str, example: Tensor | None = None) -> tuple[int, ...]:
    """The output shape (without the batch dimension) of ``layer`` for one input."""
    if example is None:
        if classifier.input_shape is None:
            raise ConfigError(
                f"classifier {classifier.name!r} has no input_shape: pass example= (one input batch)"
            )
        lo, hi = classifier.bounds
        example = torch.full((1, *classifier.input_shape), (lo + hi) / 2)
    if not isinstance(example, Tensor):
        raise InputError(f"example must be a tensor, got {type(example).__name__}")
    probe = Detector(classifier, layer, nn.Identity())
    with torch.no_grad():
        features = probe.features(classifier.check_inputs(example[:1]))
    return tuple(int(s) for s in features.shape[1:])


def _check_net(net: nn.Module, layer: str, shape: tuple[int, ...], device: torch.device) -> None:
    """Run the detector network once on zero features of ``shape``: a clear error if it cannot."""
    probe = torch.zeros((2, *shape), device=device)
    try:
        with torch.no_grad(), eval_mode(net):
            out = net.to(device)(probe)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"the detector architecture cannot take the output of layer {layer!r} "
            f"(shape {shape} per input): {type(exc).__name__}: {str(exc)[:200]}"
        ) from None
    if not isinstance(out, Tensor):
        raise ConfigError(f"the detector architecture returned {type(out).__name__}, not a tensor")
    try:
        detector_logit(out)
    except ModelError as exc:
        raise ConfigError(str(exc)) from None


def threshold_for_fpr(p_clean: Tensor, fpr: float) -> float:
    """The smallest threshold ``t`` with ``mean(p_clean > t) <= fpr`` (reject iff ``p_adv > t``)."""
    if not 0.0 <= fpr <= 1.0:
        raise ConfigError(f"the target false-positive rate must lie in [0, 1], got {fpr}")
    p = p_clean.detach().double().flatten().sort(descending=True).values
    if p.numel() == 0:
        raise InputError("no clean scores to calibrate the threshold on")
    k = math.floor(fpr * p.numel() + 1e-9)
    if k >= p.numel():
        return 0.0
    return float(p[k])

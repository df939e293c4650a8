"""`DeepFeatureClassifier`: a frozen feature extractor with a learned head on top (the iCub pipeline).

The robot extracts deep features with a network trained on ImageNet and never retrains it; only
the head (one-vs-all SVMs, RLS) is fit, and updated online when a human corrects the robot. The
classifier is one differentiable module (pixels -> extractor -> head), so every attack in
`evasion` goes through the extractor to the pixels. Features for fitting can be computed once
and cached on disk (:func:`extract_features`), keyed by the data's checksum and the extractor.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .._cache import atomic_write, cache_dir
from ..errors import InputError, ModelError, UnknownNameError
from .classifier import Classifier, eval_mode
from .heads import Head

__all__ = ["DeepFeatureClassifier", "LayerFeatures", "default_extractor", "extract_features", "extractor_key"]


class _Captured(Exception):
    """Carries a layer's output out of the forward pass (stops the rest of the network)."""

    def __init__(self, output: Tensor) -> None:
        super().__init__()
        self.output = output


class LayerFeatures(nn.Module):
    """The output of one named layer of ``model`` as features ``(N, D)``.

    Convolutional maps are average-pooled over space (``pool=True``) or flattened. The rest of the
    network after ``layer`` is not run. The model is run in eval mode; its own mode is untouched.
    """

    def __init__(self, model: nn.Module, layer: str, pool: bool = True) -> None:
        super().__init__()
        names = dict(model.named_modules())
        if not layer or layer not in names:
            shown = [n for n in names if n][:40]
            raise UnknownNameError("layer", layer, shown + (["..."] if len(names) > 41 else []))
        self.model, self.layer, self.pool = model, layer, pool
        self._target = names[layer]

    def forward(self, x: Tensor) -> Tensor:
        def hook(module: nn.Module, args: object, output: object) -> None:
            raise _Captured(output if isinstance(output, Tensor) else torch.as_tensor(output))

        handle = self._target.register_forward_hook(hook)
        try:
            with eval_mode(self.model):
                self.model(x)
        except _Captured as captured:
            out = captured.output
        else:  # pragma: no cover - a hook that does not fire means the layer is not on the path
            raise ModelError(f"layer {self.layer!r} was not reached by the forward pass")
        finally:
            handle.remove()
        if out.dim() > 2:
            out = out.mean(dim=tuple(range(2, out.dim()))) if self.pool else out.flatten(1)
        return out


def default_extractor() -> nn.Module:
    """EfficientNet-Lite0's 1280-d penultimate features (ImageNet weights, ``evasion[zoo]``)."""
    from .architectures.efficientnet_lite import FeatureExtractor, efficientnet_lite0

    return FeatureExtractor(efficientnet_lite0(pretrained=True))


def extractor_key(extractor: nn.Module) -> str:
    """A digest of an extractor's identity: its class and every parameter and buffer value."""
    h = hashlib.sha256(type(extractor).__qualname__.encode())
    for name, t in list(extractor.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def extract_features(
    extractor: nn.Module,
    x: Tensor,
    *,
    batch_size: int = 64,
    cache_key: str | None = None,
) -> Tensor:
    """Features ``(N, D)`` of images ``x`` in batches, without gradients.

    With ``cache_key`` (e.g. the dataset's sha256), they are stored in
    ``<cache>/features/<cache_key>-<extractor_key>.npz`` and read back next time.
    """
    path: Path | None = None
    if cache_key is not None:
        path = cache_dir("features") / f"{cache_key}-{extractor_key(extractor)}-{x.shape[0]}.npz"
        try:
            with np.load(path, allow_pickle=False) as npz:
                z = torch.from_numpy(npz["z"])
            if z.shape[0] == x.shape[0]:
                return z
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass
    device = next((p.device for p in extractor.parameters()), torch.device("cpu"))
    with eval_mode(extractor):
        z = torch.cat([extractor(b.to(device)).float().cpu() for b in x.split(batch_size)])
    if path is not None:
        atomic_write(path, lambda f: np.savez(f, z=z.numpy()))
    return z


class _Pipeline(nn.Module):
    def __init__(self, extractor: nn.Module, head: Head) -> None:
        super().__init__()
        self.extractor, self.head = extractor, head

    def forward(self, x: Tensor) -> Tensor:
        z = self.extractor(x)
        # a low-precision extractor (bfloat16 on a GPU) feeds the head float32 features
        return self.head(z.float() if z.dtype in (torch.bfloat16, torch.float16) else z)


class DeepFeatureClassifier(Classifier):
    """Frozen ``extractor`` (any module, or ``layer`` of one) + a fitted :class:`Head`.

    Args:
        head: e.g. ``LinearSVMHead()``, ``RBFSVMHead()``, ``RLSHead()`` (fitted or not).
        extractor: a module mapping pixel images to features; default EfficientNet-Lite0.
        layer: a named layer of ``extractor`` to take the features from instead of its output.
        input_shape, class_names, name: as for :class:`Classifier`.

    :meth:`fit` fits the head on images (or precomputed features); :meth:`learn` adds examples
    or a new class online, as the robot does after a human correction.
    """

    def __init__(
        self,
        head: Head,
        extractor: nn.Module | None = None,
        *,
        layer: str | None = None,
        input_shape: Sequence[int] | None = (3, 128, 128),
        class_names: Sequence[str] | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(head, Head):
            raise ModelError(f"head must be an evasion.models.heads.Head, got {type(head).__name__}")
        base = extractor if extractor is not None else default_extractor()
        features = LayerFeatures(base, layer) if layer is not None else base
        classes = head.num_classes if head.fitted else 1
        if head.fitted and class_names is not None and len(class_names) != classes:
            raise ModelError(f"class_names has {len(class_names)} names for a head of {classes} classes")
        names = class_names if head.fitted else None
        super().__init__(
            _Pipeline(features, head), classes, input_shape=input_shape, class_names=names, name=name
        )
        self.name = name or f"{type(head).__name__}"
        #: names given before the head was fitted, used once it is
        self._pending_names = None if head.fitted or class_names is None else list(class_names)

    @property
    def extractor(self) -> nn.Module:
        assert isinstance(self.module, _Pipeline)
        return self.module.extractor

    @property
    def head(self) -> Head:
        assert isinstance(self.module, _Pipeline)
        return self.module.head

    def forward(self, x: Tensor) -> Tensor:
        self.head.require_fitted()
        return super().forward(x)

    def features(self, x: Tensor, batch_size: int = 64, cache_key: str | None = None) -> Tensor:
        """Deep features of images ``x`` (no gradients), optionally cached on disk."""
        return extract_features(
            self.extractor, self.check_inputs(x), batch_size=batch_size, cache_key=cache_key
        )

    def fit(
        self,
        x: Tensor | None,
        y: Tensor,
        *,
        features: Tensor | None = None,
        class_names: Sequence[str] | None = None,
    ) -> DeepFeatureClassifier:
        """Fit the head on images ``x`` (or on their ``features``) with labels ``y``."""
        if features is None:
            if x is None:
                raise InputError("fit() needs images x or precomputed features=")
            features = self.features(x)
        self.head.fit(features, torch.as_tensor(y))
        self._sync_classes(class_names)
        return self

    def learn(self, x: Tensor, label: int | str, *, features: Tensor | None = None) -> DeepFeatureClassifier:
        """Online update after a human correction: ``label`` is a known class (index or name) or
        a new class name, which adds a class."""
        z = features if features is not None else self.features(x)
        names = list(self.class_names)
        if isinstance(label, str):
            index = names.index(label) if label in names else len(names)
            if index == len(names):
                names.append(label)
        elif isinstance(label, int) and 0 <= label < self.num_classes:
            index = label
        else:
            raise InputError(
                f"label must be a class index in [0, {self.num_classes}) or a class name, got {label!r}"
            )
        self.head.learn(z, torch.full((z.shape[0],), index, dtype=torch.long))
        self._sync_classes(names)
        return self

    def _sync_classes(self, class_names: Sequence[str] | None) -> None:
        self.num_classes = self.head.num_classes
        class_names = class_names if class_names is not None else self._pending_names
        self._pending_names = None
        if class_names is not None and len(class_names) == self.num_classes:
            self.class_names = list(class_names)
        elif len(self.class_names) != self.num_classes:
            self.class_names = [str(i) for i in range(self.num_classes)]

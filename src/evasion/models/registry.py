"""The registry of named models: what the zoo and the architectures register into.

A leaf module (it imports only :mod:`.classifier`), so that :mod:`.io` can resolve zoo
architecture names, and the architectures can register their zoo entries, without importing
:mod:`.zoo`: the zoo imports them, not the other way round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError, UnknownNameError
from .classifier import Classifier

__all__ = ["Device", "ModelInfo", "architectures", "list_models", "model_info", "register"]

#: where a factory puts the model (``None``: where it was built, the CPU)
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

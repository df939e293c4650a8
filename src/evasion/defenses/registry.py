"""The registry of defences: ``make(name, classifier, train=..., **params)`` -> a defended Classifier.

Each defence has a frozen parameter dataclass (checked on construction; unknown keys are named)
and a builder that wraps the classifier. Defences that train take a ``cache`` (see
:class:`~evasion.defenses.base.TrainingJob`), so that callers can keep their training runs.

>>> from evasion import defenses
>>> defended = defenses.make("reject", clf, train=train_data, fnr_increase=0.05)
>>> defended = defenses.make("detector", clf, train=train_data, layer="pool1", fpr=0.05)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..datasets.base import Dataset
from ..errors import UnknownNameError
from ..models.classifier import Classifier
from .base import Cache, parse_params
from .reject import RejectParams, make_reject
from .static_detector import DetectorParams, make_detector

__all__ = ["DEFENCES", "Builder", "DefenceInfo", "DefenceParams", "list_defences", "make", "parameters"]

#: the parameter records of the registered defences
DefenceParams = RejectParams | DetectorParams


class Builder(Protocol):
    """Wraps ``classifier`` in a defence set up on the training data ``train``."""

    def __call__(
        self, classifier: Classifier, train: Dataset, params: Any, *, label: str | None, cache: Cache | None
    ) -> Classifier: ...


@dataclass(frozen=True)
class DefenceInfo:
    """A registry entry: the defence's name, its parameter dataclass and its builder."""

    name: str
    description: str
    params: type[RejectParams] | type[DetectorParams]
    build: Builder


DEFENCES: dict[str, DefenceInfo] = {
    info.name: info
    for info in (
        DefenceInfo(
            "reject",
            "reject when no class score beats its threshold (Melis et al. 2017); thresholds for +FNR",
            RejectParams,
            make_reject,
        ),
        DefenceInfo(
            "detector",
            "reject what a detector subnetwork on a layer flags (Metzen et al. 2017), static training",
            DetectorParams,
            make_detector,
        ),
    )
}


def list_defences() -> list[DefenceInfo]:
    """Every registered defence, sorted by name."""
    return [DEFENCES[name] for name in sorted(DEFENCES)]


def _info(name: str) -> DefenceInfo:
    info = DEFENCES.get(name)
    if info is None:
        raise UnknownNameError("defence", name, list(DEFENCES))
    return info


def parameters(name: str, params: Mapping[str, Any]) -> DefenceParams:
    """The checked parameter record of defence ``name`` (unknown keys and bad values raise ConfigError)."""
    return parse_params(_info(name).params, params, name)


def make(
    name: str,
    classifier: Classifier,
    /,
    *,
    train: Dataset,
    label: str | None = None,
    cache: Cache | None = None,
    **params: Any,
) -> Classifier:
    """``classifier`` wrapped in the defence ``name``, set up (calibrated, trained) on ``train``.

    ``params`` are the defence's parameters (see :func:`parameters`); ``label`` names the
    defended model (default: the defence's own naming); ``cache`` may store and reload what the
    defence trains. An unknown name raises :class:`UnknownNameError` listing the valid ones.
    """
    info = _info(name)
    return info.build(classifier, train, parse_params(info.params, params, name), label=label, cache=cache)

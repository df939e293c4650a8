"""What every defence of the registry shares: parameter parsing and the training-job record.

A defence that learns something (a detector's weights, a threshold) describes that training as a
:class:`TrainingJob` and hands it to a :data:`Cache`, if it was given one: the cache decides
whether to run it or to load an earlier result. Defences themselves never touch files; the
caller that owns the cache folder (``evasion.build``) keys the job and stores its payload.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from torch import Tensor

from ..errors import ConfigError
from ..models.classifier import Classifier

__all__ = ["WHERE", "Cache", "Payload", "TrainingJob", "parse_params"]

#: how parameter errors name the parameters (``defense_params.fpr``), as configs spell them
WHERE = "defense_params"

#: what a training job returns: tensors, numbers, strings and dicts / lists of them
Payload = dict[str, Any]

P = TypeVar("P")


def parse_params(cls: type[P], params: Mapping[str, Any], defence: str) -> P:
    """``cls(**params)`` for a parameter dataclass, naming unknown keys and the valid ones."""
    valid = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(f"unknown {WHERE} {', '.join(unknown)} for {defence!r}; valid: {', '.join(valid)}")
    return cls(**params)


@dataclass(frozen=True)
class TrainingJob:
    """A defence's training run, for a cache to key and to run or load.

    The result depends on the ``classifier``'s weights, the training ``data``, the ``params``, the
    training ``attack`` (its repr) and the recipe ``version``; ``run()`` trains and returns the
    payload; ``check(payload)`` raises if a stored payload cannot be used; ``describe(payload)``
    is what to store beside it for people to read, ``summary(payload)`` a one-line account.
    ``folder`` names the kind of entry (``"detectors"``), ``what`` the entry in messages and
    ``detail`` the size of the run.
    """

    folder: str
    version: int
    classifier: Classifier
    data: tuple[Tensor, Tensor]
    params: dict[str, Any]
    attack: str
    what: str
    detail: str
    run: Callable[[], Payload]
    check: Callable[[Payload], object]
    describe: Callable[[Payload], dict[str, Any]]
    summary: Callable[[Payload], str]


#: runs a training job or loads its stored result; returns the payload
Cache = Callable[[TrainingJob], Payload]

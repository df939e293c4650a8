"""From a validated config to the inputs of :func:`evasion.evaluation.evaluate`.

:func:`build` resolves every name of a :class:`~evasion.config.Config` before anything runs: the
dataset (optionally shuffled, first ``samples``), the models with their defences (through
:func:`evasion.defenses.make`, set up on the dataset's train split), and one
:class:`~evasion.evaluation.AttackSpec` per attack with its targets and patch mask. What a
defence trains (a detector's weights and threshold) is kept in the user cache under a digest of
the classifier's weights, the training data and every parameter, so that re-running or resuming
an evaluation loads it instead of training again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from . import attacks, datasets, defenses, models
from ._cache import Payload, digest, load_or_train
from .config import AttackConfig, Config, ModelConfig
from .datasets.base import Dataset
from .defenses import Cache, TrainingJob
from .errors import ConfigError, MissingFileError, UnknownNameError
from .evaluation import AttackSpec
from .evaluation.engine import data_fingerprint, fingerprint
from .evaluation.suite import suites
from .models.classifier import Classifier

__all__ = ["attack_specs", "build", "check_applicable", "dataset", "defend", "model", "patch", "targets"]

log = logging.getLogger("evasion")

Targets = Callable[[torch.Tensor], torch.Tensor]


def dataset(config: Config) -> Dataset:
    """The evaluation data: the split, a fixed shuffle if asked (files are often sorted by class), ``samples``."""
    data = datasets.load(config.data.name, split=config.data.split)
    if config.data.shuffle:
        data = data.shuffled(config.data.shuffle_seed)
    if config.data.samples:
        data = data.head(config.data.samples)
    return data


def _cache(mc: ModelConfig, config: Config) -> Cache:
    """Runs a defence's training job once and keeps its payload in the user cache (``<folder>/<key>``)."""

    def run(job: TrainingJob) -> Payload:
        key = digest(
            job.version, fingerprint(job.classifier), data_fingerprint(*job.data), job.params, job.attack
        )

        def train() -> Payload:
            log.info("training the %s (%s; cached afterwards)", job.what, job.detail)
            started = time.perf_counter()
            payload = job.run()
            log.info(
                "trained the %s in %.1f s: %s", job.what, time.perf_counter() - started, job.summary(payload)
            )
            return payload

        def meta(payload: Payload) -> dict[str, Any]:
            facts = {"model": mc.model or mc.name, "data": config.data.name, "params": job.params}
            return {**facts, "attack": job.attack, **job.describe(payload)}

        payload, _ = load_or_train(
            job.folder, key, train, identity={"key": key}, meta=meta, what=job.what, check=job.check
        )
        return payload

    return run


def defend(clf: Classifier, mc: ModelConfig, config: Config) -> Classifier:
    """``clf`` in the defence of ``mc``, set up on the train split of the config's dataset.

    Bad ``defense_params`` raise a :class:`ConfigError` that names the model and the key.
    """
    try:
        params = defenses.parameters(mc.defense, mc.defense_params)
    except UnknownNameError as exc:
        raise exc.at(f"{_where(mc, config)}.defense") from None
    except ConfigError as exc:
        raise ConfigError(f"model {mc.name!r}: {exc}") from None
    train = datasets.load(config.data.name, split="train")
    try:
        return defenses.make(
            mc.defense, clf, train=train, label=mc.name, cache=_cache(mc, config), **asdict(params)
        )
    except ConfigError as exc:
        raise ConfigError(f"model {mc.name!r}: {exc}") from None


def _where(mc: ModelConfig, config: Config) -> str:
    """The config key of a ``[[models]]`` table, ``models[i]`` (as the config's own errors say)."""
    index = next((i for i, m in enumerate(config.models) if m.name == mc.name), None)
    return f"models[{index}]" if index is not None else f"model {mc.name!r}"


def model(mc: ModelConfig, device: torch.device, config: Config) -> Classifier:
    """The model of ``mc`` (zoo name or file, with its options) on ``device``, in its defence if any.

    An unknown name (model, architecture) names the key of the ``[[models]]`` table it came from."""
    kwargs: dict[str, Any] = dict(mc.options)
    if mc.architecture:
        kwargs["architecture"] = mc.architecture
    if mc.input_shape:
        kwargs["input_shape"] = mc.input_shape
    try:
        clf = models.load(mc.model, device=device, **kwargs)
    except UnknownNameError as exc:
        key = {"model": "model" if mc.model != mc.name else "name", "architecture": "architecture"}
        raise exc.at(f"{_where(mc, config)}.{key.get(exc.kind, 'options')}") from None
    except MissingFileError as exc:
        raise MissingFileError(f"{_where(mc, config)}.model: {exc}") from None
    if config.run.compile:
        clf.use_compile()
    return defend(clf, mc, config) if mc.defense else clf


def targets(ac: AttackConfig, num_classes: int) -> Targets | None:
    """The target classes of a targeted attack as a function of the labels (``None``: untargeted)."""
    if ac.target is None:
        return None
    if ac.target == "next":
        return lambda y: (y + 1) % num_classes
    if not isinstance(ac.target, int) or ac.target >= num_classes:
        raise ConfigError(f"attack {ac.name!r}: target {ac.target!r} is not a class index < {num_classes}")
    target = int(ac.target)
    return lambda y: torch.full_like(y, target)


def patch(ac: AttackConfig, shape: tuple[int, int, int]) -> torch.Tensor | None:
    """The boolean ``(H, W)`` mask of an attack's patch (``None``: the whole image)."""
    if not ac.patch:
        return None
    top, left, height, width = ac.patch
    _, h, w = shape
    if height < 1 or width < 1 or top + height > h or left + width > w:
        raise ConfigError(f"attack {ac.name!r}: patch {list(ac.patch)} does not fit in {h}x{w} images")
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[top : top + height, left : left + width] = True
    return mask


def attack_specs(config: Config, data: Dataset) -> list[AttackSpec]:
    """One :class:`AttackSpec` per ``[[attacks]]`` table, in order."""
    specs = []
    for ac in config.attacks:
        chosen = targets(ac, data.num_classes)
        specs.append(
            AttackSpec(
                attacks.make(ac.attack, **ac.params),
                ac.norm,
                list(ac.epsilons),
                name=ac.name,
                targeted=chosen is not None,
                targets=chosen,
                mask=patch(ac, data.input_shape),
                models=ac.models or None,
            )
        )
    return specs


def check_applicable(specs: list[AttackSpec], models: dict[str, Classifier]) -> None:
    """Refuse an attack that cannot say anything about a model it is set to run on, and say why."""
    for spec in specs:
        attack = spec.attack
        for name, clf in models.items():
            if not spec.applies_to(name):
                continue
            if spec.targeted and not attack.supports_targeted:
                raise ConfigError(f"attack {spec.name!r}: {type(attack).__name__} has no targeted version")
            if clf.rejects and not attack.reject_aware and not attack.black_box:
                others = [m for m, c in models.items() if not c.rejects]
                where = (
                    f"run it on the undefended models only (models = {others!r} in its [[attacks]] table)"
                    if others
                    else "evaluate it on an undefended model"
                )
                raise ConfigError(
                    f"attack {spec.name!r} cannot evaluate model {name!r}: {type(attack).__name__}'s "
                    "objective ignores the model's reject option, so its failures would be failures of "
                    f"the attack, not evidence about the defence; {where} or use a reject-aware attack "
                    "(apgd, pgd, cw-l2, max-confidence, dynamic)"
                )


def build(config: Config, device: torch.device) -> tuple[dict[str, Classifier], Dataset, list[AttackSpec]]:
    """Resolve every name of a config (data, models, defences, attacks) before anything runs.

    A config without ``[[attacks]]`` gets each model's default suite over its ``[epsilons]``
    (:func:`evasion.evaluation.suite.suites`); with ``[run] default_suite = true`` its
    ``[[attacks]]`` are added to the default suites."""
    data = dataset(config)
    clfs = {mc.name: model(mc, device, config) for mc in config.models}
    specs = attack_specs(config, data) if config.attacks else []
    if config.run.default_suite or not config.attacks:
        suite = suites(clfs, config.epsilons)
        taken = sorted({str(s.name) for s in suite} & {str(s.name) for s in specs})
        if taken:
            raise ConfigError(
                f"attack name {taken[0]!r} is taken by the default suite; name the attack otherwise"
            )
        specs = suite + specs
    check_applicable(specs, clfs)
    return clfs, data, specs

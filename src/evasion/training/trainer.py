"""`AdversarialTrainer`: train any classifier on the points an evasion attack finds.

Recipes (``TrainConfig.recipe``):

* ``none``: standard training (cross-entropy on clean batches);
* ``fgsm``: Goodfellow et al. 2015, ``(1 - w) CE(x) + w CE(x_fgsm)`` with ``w = adv_weight``;
* ``fgsm-rs``: Wong et al. 2020, "fast" training: one step of ``1.25 eps`` from a uniform random
  start; a PGD check of a held-out batch after every epoch detects *catastrophic overfitting*
  (PGD accuracy collapses while FGSM accuracy stays high), logs it as an event, rolls the
  weights back to the previous epoch and stops (Wong et al.'s early stopping);
* ``pgd``: Madry et al. 2018, CE on the PGD examples of each batch;
* ``trades``: Zhang et al. 2019, ``CE(x) + beta KL(f(x) || f(x'))``, with its own inner step
  maximising the KL term;
* ``ibp``: Gowal et al. 2018, certified training, ``kappa CE(x) + (1 - kappa) CE(z_worst)`` with the
  worst-case logits of interval bounds (:mod:`.certified`); ``kappa`` falls from 1 to
  ``1 - adv_weight`` as epsilon warms up (L∞ only, no attack).

The inner maximisation of ``fgsm``, ``fgsm-rs`` and ``pgd`` is any :class:`~evasion.attacks.Attack`
(the attack is a parameter; defaults are the library's FGSM and PGD, which run through the shared
gradient loop). It runs on the model's device, through a :class:`~evasion.models.Classifier`, so it
sees the model in eval mode: BatchNorm statistics are updated only by the training forward pass.
The trainer puts every submodule back in the mode it found it in.

Everything random draws from generators derived from ``seed`` (inside a forked global RNG), so
the same module, data and config give the same weights bit-for-bit; with a
:class:`~.checkpoint.CheckpointDir` every epoch is checkpointed and a killed run resumes to the
same final weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import FGSM, PGD, Attack
from ..datasets.base import Dataset
from ..errors import ConfigError, InputError
from ..models.classifier import Classifier, eval_mode
from ..models.training import _threads, random_shift
from ..perturbations import direction, project, project_box, random_start
from ..threat_model import ThreatModel
from ._checks import check_counts, check_finite
from .checkpoint import CheckpointDir

__all__ = [
    "OPTIMIZERS",
    "RECIPES",
    "SCHEDULES",
    "AdversarialTrainer",
    "EpochRecord",
    "TrainConfig",
    "TrainingResult",
    "collapsed",
]

RECIPES = ("none", "fgsm", "fgsm-rs", "pgd", "trades", "ibp")
SCHEDULES = ("cosine", "cyclic", "step", "constant")
OPTIMIZERS = ("adam", "sgd")

#: checkpoint format; a checkpoint of another version is not resumed from
_FORMAT = 1


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how; every field is part of a run's identity (checkpoints must match).

    Args:
        recipe: one of :data:`RECIPES`.
        epsilon: the training budget in ``norm`` (``0`` makes every recipe standard training).
        norm: ``"linf"`` or ``"l2"`` (``"l1"`` with an attack that supports it).
        epochs, lr, batch_size, seed, weight_decay: the usual; ``optimizer`` is ``"adam"`` or
            ``"sgd"`` (momentum 0.9).
        schedule: learning rate per step: ``"cosine"`` (to 0), ``"cyclic"`` (Wong et al.'s
            triangle: 0 up to ``lr`` at 40% of the steps, back to 0), ``"step"`` (x0.1 at 50% and
            75%) or ``"constant"``.
        warmup_epochs: epsilon grows linearly from 0 to ``epsilon`` over this many epochs
            (per step); robust training of small models often fails without it.
        adv_weight: ``fgsm``: the weight of the adversarial term.
        beta: ``trades``: the weight of the KL term.
        steps, step_size: inner steps of ``pgd`` and ``trades`` (step default ``2.5 eps / steps``).
        rs_step: ``fgsm-rs``: step size in units of epsilon (Wong et al.: 1.25).
        rs_init: ``fgsm-rs``: radius of the uniform random start in units of epsilon (Wong et
            al.: 1; N-FGSM, de Jorge et al. 2022: 2).
        rs_clip: ``fgsm-rs``: project the step back onto the epsilon-ball (Wong et al.); ``False``
            keeps the whole ``(rs_init + rs_step) eps`` perturbation (N-FGSM: noise plus a step of
            ``eps``, clipped to the box only), which avoids catastrophic overfitting at large eps.
        temperature: softmax temperature of the training loss (defensive distillation).
        augment_shift: random shifts of up to this many pixels (zero fill) before the attack.
        bounds: the valid input box (the data must lie in it).
        check_size, check_steps: the held-out batch and PGD steps of the per-epoch check.
        overfit_drop: ``fgsm-rs``: catastrophic overfitting is a PGD accuracy that falls by at
            least this much below the best earlier epoch while FGSM accuracy stays at least this
            much above it, or an FGSM accuracy :data:`FGSM_GAP` (0.5) above the PGD accuracy.
        num_threads: torch CPU threads for the run (``None``: leave the setting alone).
        stop_on_overfit: ``fgsm-rs``: on catastrophic overfitting roll back and stop (Wong et
            al.'s early stopping); ``False`` only logs the event and trains on (to watch it happen).
    """

    recipe: str = "pgd"
    epsilon: float = 0.3
    norm: str = "linf"
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 128
    seed: int = 0
    optimizer: str = "adam"
    schedule: str = "cosine"
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0
    adv_weight: float = 0.5
    beta: float = 6.0
    steps: int = 10
    step_size: float | None = None
    rs_step: float = 1.25
    rs_init: float = 1.0
    rs_clip: bool = True
    temperature: float = 1.0
    augment_shift: int = 0
    bounds: tuple[float, float] = (0.0, 1.0)
    check_size: int = 256
    check_steps: int = 10
    overfit_drop: float = 0.2
    num_threads: int | None = None
    stop_on_overfit: bool = True

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {self.recipe!r}; valid recipes: {', '.join(RECIPES)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        ThreatModel(self.norm, self.epsilon, self.bounds)  # validates norm, epsilon >= 0, bounds
        object.__setattr__(self, "norm", ThreatModel(self.norm, 0.0).norm)
        object.__setattr__(self, "bounds", (float(self.bounds[0]), float(self.bounds[1])))
        if math.isinf(self.epsilon):
            raise ConfigError("epsilon must be finite for adversarial training")
        check_counts(self, ("epochs", "batch_size", "steps", "check_size", "check_steps"))
        for flag in ("rs_clip", "stop_on_overfit"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        for name in ("lr", "rs_step", "temperature"):
            check_finite(name, getattr(self, name), positive=True)
        for name in ("weight_decay", "warmup_epochs", "beta", "overfit_drop", "rs_init"):
            check_finite(name, getattr(self, name), positive=False)
        check_finite("adv_weight", self.adv_weight, positive=False)
        if self.adv_weight > 1:
            raise ConfigError(f"adv_weight must be in [0, 1], got {self.adv_weight!r}")
        if self.step_size is not None:
            check_finite("step_size", self.step_size, positive=True)
        if self.num_threads is not None and (
            isinstance(self.num_threads, bool)
            or not isinstance(self.num_threads, int)
            or self.num_threads < 1
        ):
            raise ConfigError(f"num_threads must be a positive integer or None, got {self.num_threads!r}")

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able description (stored in checkpoints and logs)."""
        out = asdict(self)
        out["bounds"] = list(self.bounds)
        # fields added later are left out at their defaults: cached models and checkpoints written
        # before them keep their identity
        for name, default in _LATER_DEFAULTS.items():
            if out[name] == default:
                del out[name]
        return out


#: fields added after format 1 checkpoints and zoo caches were written, with their defaults
_LATER_DEFAULTS: dict[str, Any] = {"rs_init": 1.0, "rs_clip": True, "stop_on_overfit": True}


@dataclass
class EpochRecord:
    """What one epoch did: mean loss, learning rate and epsilon at its end, validation accuracies."""

    epoch: int
    loss: float
    lr: float
    epsilon: float
    seconds: float
    val_clean: float | None = None
    val_robust: float | None = None  # PGD (check_steps) on the check batch at the full epsilon
    val_fgsm: float | None = None  # FGSM on the check batch (fgsm-rs only)


@dataclass
class TrainingResult:
    """The trained classifier, the per-epoch log and the events (catastrophic overfitting ...)."""

    classifier: Classifier
    history: list[EpochRecord]
    events: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int | None = None
    stopped_early: bool = False

    def log(self) -> dict[str, Any]:
        """JSON-able training log."""
        return {
            "history": [asdict(r) for r in self.history],
            "events": list(self.events),
            "resumed_from": self.resumed_from,
            "stopped_early": self.stopped_early,
        }


#: FGSM accuracy this far above PGD accuracy is catastrophic overfitting even without a drop
FGSM_GAP = 0.5


def collapsed(
    best_robust: float | None, robust: float, fgsm: float, drop: float, gap: float = FGSM_GAP
) -> bool:
    """Catastrophic overfitting: the model defends against the one-step attack only.

    Either PGD accuracy fell by ``drop`` below the best earlier epoch while FGSM accuracy stays
    ``drop`` above it (Wong et al.'s collapse), or FGSM accuracy is ``gap`` above PGD accuracy (the
    collapse happened before PGD robustness ever built up, e.g. during the epsilon warm-up).
    """
    if fgsm - robust >= gap:
        return True
    if best_robust is None:
        return False
    return best_robust - robust >= drop and fgsm - robust >= drop


#: ``progress(record)`` after each epoch
Progress = Callable[[EpochRecord], None]


@contextmanager
def _kept_modes(module: nn.Module) -> Iterator[None]:
    """Put back exactly the train/eval mode of every submodule when the block ends."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based) of ``total``."""
    if schedule == "cyclic":
        peak = 0.4 * total
        return step / peak if step < peak else max(0.0, (total - step) / (total - peak))
    if schedule == "step":
        return 1.0 if step < 0.5 * total else 0.1 if step < 0.75 * total else 0.01
    return 1.0


class AdversarialTrainer:
    """Train a classifier with one of the :data:`RECIPES`.

    Args:
        config: the :class:`TrainConfig`.
        attack: the inner maximisation for ``fgsm``, ``fgsm-rs`` and ``pgd`` (default: FGSM, PGD
            with one step of ``rs_step * eps`` from a random start, PGD with ``steps`` steps; all
            without early stop, returning the last iterate). It must support ``config.norm``.
        checkpoints: a :class:`CheckpointDir` to save every epoch to and to resume from.
        progress: called with each epoch's :class:`EpochRecord`.
    """

    def __init__(
        self,
        config: TrainConfig,
        attack: Attack | None = None,
        *,
        checkpoints: CheckpointDir | None = None,
        progress: Progress | None = None,
    ):
        if not isinstance(config, TrainConfig):
            raise ConfigError(f"config must be a TrainConfig, got {type(config).__name__}")
        if config.recipe == "ibp" and config.norm != "linf":
            raise ConfigError(f"ibp trains against L-inf balls only, not {config.norm}")
        if attack is not None:
            if not isinstance(attack, Attack):
                raise ConfigError(f"attack must be an evasion Attack, got {type(attack).__name__}")
            if config.recipe in ("none", "trades", "ibp"):
                raise ConfigError(
                    f"recipe {config.recipe!r} takes no attack (trades has its own KL inner step)"
                )
            if config.norm not in attack.norms:
                raise ConfigError(
                    f"{type(attack).__name__} cannot run in the {config.norm} norm; it supports "
                    f"{', '.join(attack.norms)}"
                )
        elif config.recipe == "trades" and config.norm not in ("linf", "l2", "l1"):
            raise ConfigError(f"trades runs in linf, l2 or l1, not {config.norm}")
        elif config.recipe != "none" and config.norm not in PGD.norms:
            raise ConfigError(f"the default attacks cannot run in the {config.norm} norm")
        self.config = config
        self.attack = attack
        self.checkpoints = checkpoints
        self.progress = progress

    # -- the inner maximisation ------------------------------------------------------------
    def inner_attack(self, epsilon: float) -> Attack:
        """The attack whose points a batch is trained on at budget ``epsilon``."""
        c = self.config
        if self.attack is not None:
            if c.recipe == "fgsm-rs" and isinstance(self.attack, PGD) and self.attack.step_size is None:
                return replace(self.attack, step_size=c.rs_step * epsilon)
            return self.attack
        if c.recipe == "fgsm":
            return FGSM(early_stop=False, keep="last")
        if c.recipe == "fgsm-rs":
            return PGD(steps=1, step_size=c.rs_step * epsilon, early_stop=False, keep="last")
        return PGD(steps=c.steps, step_size=c.step_size, early_stop=False, keep="last")

    def threat(self, epsilon: float) -> ThreatModel:
        return ThreatModel(self.config.norm, epsilon, self.config.bounds)

    def single_step_points(
        self, clf: Classifier, x: Tensor, y: Tensor, epsilon: float, generator: torch.Generator
    ) -> Tensor:
        """``fgsm-rs`` with ``rs_init`` / ``rs_clip`` off Wong et al.'s values: one FGSM step.

        Start uniformly in the ``rs_init eps`` ball (clipped to the box), take one step of
        ``rs_step eps`` along the gradient direction of the cross-entropy, then project onto the
        ``eps``-ball (``rs_clip``) or onto the box only (N-FGSM: the point may lie up to
        ``(rs_init + rs_step) eps`` from ``x``; it is a training point, not an attack result).
        """
        c = self.config
        lower = torch.full_like(x, c.bounds[0])
        upper = torch.full_like(x, c.bounds[1])
        start = random_start(x, c.rs_init * epsilon, c.norm, lower, upper, generator).detach()
        start.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(clf(start), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, start)
        g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
        stepped = start.detach() + c.rs_step * epsilon * direction(g, c.norm)
        if c.rs_clip:
            return project(stepped, x, epsilon, c.norm, lower, upper).detach()
        return project_box(stepped, lower, upper).detach()

    def trades_points(self, clf: Classifier, x: Tensor, epsilon: float, generator: torch.Generator) -> Tensor:
        """TRADES' inner step: ascend ``KL(f(x) || f(x'))`` from ``x + 0.001 N(0, 1)`` in ball ∩ box."""
        c = self.config
        lower = torch.full_like(x, c.bounds[0])
        upper = torch.full_like(x, c.bounds[1])
        step = c.step_size if c.step_size is not None else 2.5 * epsilon / c.steps
        noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
        xa = project(x + 0.001 * noise, x, epsilon, c.norm, lower, upper)
        with torch.no_grad():
            p_clean = F.softmax(clf(x) / c.temperature, dim=1)
        for _ in range(c.steps):
            xa = xa.detach().requires_grad_(True)
            with torch.enable_grad():
                kl = F.kl_div(F.log_softmax(clf(xa) / c.temperature, dim=1), p_clean, reduction="sum")
                (g,) = torch.autograd.grad(kl, xa)
            g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
            xa = project(xa.detach() + step * direction(g, c.norm), x, epsilon, c.norm, lower, upper)
        return xa.detach()

    # -- training --------------------------------------------------------------------------
    def fit(
        self,
        model: nn.Module,
        train: Dataset,
        val: Dataset | None = None,
        *,
        teacher: nn.Module | None = None,
    ) -> TrainingResult:
        """Train ``model`` (a :class:`Classifier` or a module returning logits) on ``train``.

        ``val`` gives the per-epoch clean and robust accuracies (and ``fgsm-rs``'s overfitting
        check); without it, ``fgsm-rs`` holds out ``check_size`` training samples (seeded). With
        ``teacher``, the targets are the teacher's softmax at ``temperature`` (distillation).
        """
        c = self.config
        clf = self._classifier(model, train)
        _check_data(train, clf, "training", c)
        if val is None and c.recipe == "fgsm-rs":
            train, val = _hold_out(train, c.check_size, c.seed)
        if val is not None:
            _check_data(val, clf, "validation", c, need_classes=False)
        device = clf.device
        net, pre = clf.module, clf.preprocess
        with _kept_modes(clf), _threads(c.num_threads):
            forked = [device.index or 0] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=forked):
                return self._fit(clf, net, pre, train, val, teacher, device)

    def _classifier(self, model: nn.Module, train: Dataset) -> Classifier:
        if isinstance(model, Classifier):
            if model.rejects:
                raise ConfigError(
                    "adversarial training of a classifier with a reject option is not supported"
                )
            if tuple(model.bounds) != tuple(self.config.bounds):
                raise ConfigError(
                    f"the classifier's bounds {model.bounds} differ from the config's {self.config.bounds}"
                )
            return model
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        return Classifier(model, train.num_classes, input_shape=train.input_shape, bounds=self.config.bounds)

    def _fit(
        self,
        clf: Classifier,
        net: nn.Module,
        pre: nn.Module,
        train: Dataset,
        val: Dataset | None,
        teacher: nn.Module | None,
        device: torch.device,
    ) -> TrainingResult:
        c = self.config
        batches = -(-len(train) // c.batch_size)
        total = c.epochs * batches
        optimizer: torch.optim.Optimizer
        if c.optimizer == "adam":
            optimizer = torch.optim.Adam(net.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        else:
            optimizer = torch.optim.SGD(net.parameters(), lr=c.lr, momentum=0.9, weight_decay=c.weight_decay)
        schedule: torch.optim.lr_scheduler.LRScheduler
        if c.schedule == "cosine":  # the same schedule object as models.training: same numbers
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        else:
            schedule = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda s: _lr_factor(c.schedule, s, total)
            )
        torch.manual_seed(c.seed)
        data_gen = torch.Generator().manual_seed(c.seed)
        attack_gen = torch.Generator().manual_seed(c.seed + 7919)
        history: list[EpochRecord] = []
        events: list[dict[str, Any]] = []
        start_epoch, resumed_from, stopped = 1, None, False
        state = self.checkpoints.load_latest() if self.checkpoints is not None else None
        if state is not None:
            self._check_checkpoint(state, net)
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["scheduler"])
            data_gen.set_state(state["rng"]["data"])
            attack_gen.set_state(state["rng"]["attack"])
            torch.set_rng_state(state["rng"]["torch"])
            if device.type == "cuda" and state["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(state["rng"]["cuda"], device)
            history = [EpochRecord(**r) for r in state["history"]]
            events = list(state["events"])
            resumed_from = int(state["epoch"])
            start_epoch = resumed_from + 1
            stopped = bool(state["stopped"])
        for epoch in range(start_epoch, c.epochs + 1):
            if stopped:
                break
            before = copy.deepcopy(net.state_dict()) if c.recipe == "fgsm-rs" else None
            started = time.perf_counter()
            loss, eps_now = self._epoch(
                clf,
                net,
                pre,
                train,
                teacher,
                optimizer,
                schedule,
                data_gen,
                attack_gen,
                epoch,
                batches,
                device,
            )
            record = EpochRecord(
                epoch=epoch,
                loss=loss,
                lr=float(optimizer.param_groups[0]["lr"]),
                epsilon=eps_now,
                seconds=round(time.perf_counter() - started, 3),
            )
            if val is not None:
                self._validate(clf, val, record)
            if before is not None and record.val_robust is not None and record.val_fgsm is not None:
                earlier = [r.val_robust for r in history if r.val_robust is not None]
                best = max(earlier) if earlier else None
                if collapsed(best, record.val_robust, record.val_fgsm, c.overfit_drop):
                    if c.stop_on_overfit:
                        net.load_state_dict(before)
                        stopped = True
                        action = f"rolled back to the weights of epoch {epoch - 1} and stopped"
                    else:
                        action = "logged only (stop_on_overfit=False): training went on"
                    events.append(
                        {
                            "event": "catastrophic_overfitting",
                            "epoch": epoch,
                            "val_robust": record.val_robust,
                            "val_fgsm": record.val_fgsm,
                            "best_val_robust": best,
                            "action": action,
                        }
                    )
            history.append(record)
            if self.checkpoints is not None:
                self.checkpoints.save(
                    epoch,
                    self._state(
                        epoch,
                        net,
                        optimizer,
                        schedule,
                        data_gen,
                        attack_gen,
                        device,
                        history,
                        events,
                        stopped,
                    ),
                )
            if self.progress is not None:
                self.progress(record)
        return TrainingResult(clf, history, events, resumed_from, stopped)

    def _state(
        self,
        epoch: int,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler,
        data_gen: torch.Generator,
        attack_gen: torch.Generator,
        device: torch.device,
        history: list[EpochRecord],
        events: list[dict[str, Any]],
        stopped: bool,
    ) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly where this epoch ended."""
        return {
            "format": _FORMAT,
            "epoch": epoch,
            "config": self.config.fingerprint(),
            "attack": None if self.attack is None else self.attack.describe(),
            "model": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "rng": {
                "data": data_gen.get_state(),
                "attack": attack_gen.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            },
            "history": [asdict(r) for r in history],
            "events": events,
            "stopped": stopped,
        }

    def _check_checkpoint(self, state: dict[str, Any], net: nn.Module) -> None:
        """Refuse to resume from a checkpoint of another architecture or another configuration."""
        if state.get("format") != _FORMAT:
            raise ConfigError(
                f"checkpoint format {state.get('format')!r} is not {_FORMAT}; use a fresh folder"
            )
        ours, theirs = net.state_dict(), state["model"]
        groups = {
            "keys only in the checkpoint": sorted(set(theirs) - set(ours)),
            "keys only in the model": sorted(set(ours) - set(theirs)),
            "shapes differ": sorted(
                f"{k} {tuple(theirs[k].shape)} vs {tuple(ours[k].shape)}"
                for k in set(ours) & set(theirs)
                if tuple(ours[k].shape) != tuple(theirs[k].shape)
            ),
        }
        problems = [
            f"{label} ({len(keys)}): {', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''}"
            for label, keys in groups.items()
            if keys
        ]
        if problems:
            raise ConfigError(f"the checkpoint is of another architecture: {'; '.join(problems)}")
        config = self.config.fingerprint()
        other = sorted(k for k in config if state["config"].get(k) != config[k])
        attack = None if self.attack is None else self.attack.describe()
        if state.get("attack") != attack:
            other.append("attack")
        if other:
            raise ConfigError(
                f"the checkpoint was written by another training configuration ({', '.join(other)} differ); "
                "use a fresh folder"
            )

    def _epoch(
        self,
        clf: Classifier,
        net: nn.Module,
        pre: nn.Module,
        train: Dataset,
        teacher: nn.Module | None,
        optimizer: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler,
        data_gen: torch.Generator,
        attack_gen: torch.Generator,
        epoch: int,
        batches: int,
        device: torch.device,
    ) -> tuple[float, float]:
        """One pass over a seeded permutation of ``train``: (mean loss, epsilon at the end)."""
        c = self.config
        order = torch.randperm(len(train), generator=data_gen)
        warm = c.warmup_epochs * batches
        total, count, eps = 0.0, 0, c.epsilon
        for b, start in enumerate(range(0, len(train), c.batch_size)):
            step = (epoch - 1) * batches + b
            eps = c.epsilon * min(1.0, (step + 1) / warm) if warm > 0 else c.epsilon
            index = order[start : start + c.batch_size]
            x = random_shift(train.x[index], c.augment_shift, data_gen).to(device)
            y = train.y[index].to(device)
            loss = self._loss(clf, net, pre, x, y, eps, teacher, attack_gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(index)
            count += len(index)
        return total / count, eps

    def _loss(
        self,
        clf: Classifier,
        net: nn.Module,
        pre: nn.Module,
        x: Tensor,
        y: Tensor,
        eps: float,
        teacher: nn.Module | None,
        attack_gen: torch.Generator,
    ) -> Tensor:
        """The recipe's training loss on one batch (the attack first, in eval mode)."""
        c = self.config
        recipe = c.recipe if eps > 0 else "none"  # a zero budget: every recipe is standard training
        if teacher is not None:
            with torch.no_grad(), eval_mode(teacher):
                soft = F.softmax(teacher(x) / c.temperature, dim=1)

        def criterion(logits: Tensor) -> Tensor:
            scaled = logits / c.temperature if c.temperature != 1 else logits
            if teacher is not None:
                return -(soft * F.log_softmax(scaled, dim=1)).sum(1).mean()
            return F.cross_entropy(scaled, y)

        def forward(inputs: Tensor) -> Tensor:
            net.train()
            pre.train()
            return net(pre(inputs))

        if recipe == "none":
            return criterion(forward(x))
        if recipe == "trades":
            x_adv = self.trades_points(clf, x, eps, attack_gen)
            logits = forward(x)
            logits_adv = forward(x_adv)
            kl = F.kl_div(
                F.log_softmax(logits_adv / c.temperature, dim=1),
                F.softmax(logits / c.temperature, dim=1),
                reduction="batchmean",
            )
            return criterion(logits) + c.beta * kl
        if recipe == "ibp":  # Gowal et al.: kappa follows the epsilon warm-up from 1 to 1 - adv_weight
            from .certified import ibp_loss

            net.train()
            pre.train()
            kappa = 1.0 - c.adv_weight * eps / c.epsilon
            return ibp_loss(nn.Sequential(pre, net), x, y, eps, kappa, c.bounds)[0]
        if recipe == "fgsm-rs" and self.attack is None and (c.rs_init != 1 or not c.rs_clip):
            x_adv = self.single_step_points(clf, x, y, eps, attack_gen)
        else:
            result = self.inner_attack(eps)(clf, x, y, threat=self.threat(eps), generator=attack_gen)
            x_adv = result.adversarial.detach()
        if recipe == "fgsm":
            return (1 - c.adv_weight) * criterion(forward(x)) + c.adv_weight * criterion(forward(x_adv))
        return criterion(forward(x_adv))

    def _validate(self, clf: Classifier, val: Dataset, record: EpochRecord) -> None:
        """Clean accuracy on ``val``; PGD (and for fgsm-rs FGSM) accuracy on its check batch."""
        c = self.config
        device = clf.device
        with torch.no_grad():
            correct = sum(
                int((clf(xb.to(device)).argmax(1) == yb.to(device)).sum()) for xb, yb in val.batches(512)
            )
        record.val_clean = correct / len(val)
        if c.epsilon == 0:
            record.val_robust = record.val_clean
            return
        x, y = val.x[: c.check_size].to(device), val.y[: c.check_size].to(device)
        threat = self.threat(c.epsilon)
        gen = torch.Generator().manual_seed(c.seed + 104729 + record.epoch)
        pgd = PGD(steps=c.check_steps)(clf, x, y, threat=threat, generator=gen)
        record.val_robust = pgd.robust_accuracy
        if c.recipe == "fgsm-rs":
            record.val_fgsm = FGSM()(clf, x, y, threat=threat, generator=gen).robust_accuracy


def _check_data(
    data: Dataset, clf: Classifier, what: str, c: TrainConfig, *, need_classes: bool = True
) -> None:
    """Refuse empty, single-class, out-of-range or mis-shaped data and budgets beyond the data range."""
    if len(data) == 0:
        raise ConfigError(f"the {what} set {data.name!r} is empty")
    if need_classes and int(data.y.unique().numel()) < 2:
        raise ConfigError(f"the {what} set {data.name!r} has a single class: nothing to learn")
    if clf.input_shape is not None and tuple(data.input_shape) != tuple(clf.input_shape):
        raise InputError(f"the {what} set has images {data.input_shape}, the model expects {clf.input_shape}")
    if int(data.y.max()) >= clf.num_classes:
        raise InputError(
            f"the {what} set has labels up to {int(data.y.max())}, the model has {clf.num_classes} classes"
        )
    lo, hi = c.bounds
    if float(data.x.min()) < lo - 1e-6 or float(data.x.max()) > hi + 1e-6:
        raise InputError(f"the {what} set has values outside the bounds {c.bounds}")
    span = hi - lo
    largest = {"linf": span, "l2": span * math.sqrt(data.x[0].numel()), "l1": span * data.x[0].numel()}
    if c.epsilon > largest.get(c.norm, math.inf):
        raise ConfigError(
            f"epsilon {c.epsilon} is beyond the data range: the largest {c.norm} distance in {c.bounds} is "
            f"{largest[c.norm]:.4g}"
        )


def _hold_out(train: Dataset, size: int, seed: int) -> tuple[Dataset, Dataset]:
    """A seeded split of ``train`` into (rest, ``size`` held-out samples)."""
    if len(train) <= size:
        raise ConfigError(
            f"fgsm-rs holds out {size} training samples for its overfitting check, but the training set has "
            f"only {len(train)}; pass a validation set or a smaller check_size"
        )
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 15485863))
    return train.subset(order[size:].sort().values), train.subset(order[:size])

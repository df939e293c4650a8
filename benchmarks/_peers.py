"""Adapters: one attack configuration run by `evasion`, torchattacks, foolbox or ART on one model.

Every adapter returns a callable ``run(x, y) -> adversarial`` (torch tensors on the CPU) built
outside the timed region, or ``None`` where a library has no such attack (reported as n/a).
All runners get the same `Classifier` (an ``nn.Module`` returning logits for inputs in [0, 1]).

Scoring is the same for every library (:func:`score`): one fresh forward of the model on the
returned points; a sample counts as broken when its returned point is misclassified *and* lies
within ``epsilon`` of the clean one. Fixed-budget attacks must stay inside their budget (points
outside are counted and reported, never credited). Minimum-norm attacks (DeepFool, C&W) return
their smallest adversarial point, unprojected (`evasion` runs them with an unbounded threat), so
robust accuracy at ``epsilon`` is "no adversarial example of norm <= epsilon found" for all four
libraries; projecting larger points onto the ball instead would credit whichever happen to stay
adversarial after the projection (and foolbox's all-zero failures).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import evasion
from evasion.attacks import APGD, FGSM, PGD, CarliniWagnerL2, DeepFool
from evasion.perturbations import norm as perturbation_norm

__all__ = [
    "CONFIGS",
    "LIBRARIES",
    "PEERS",
    "TEXTBOOK",
    "AttackConfig",
    "Runner",
    "Score",
    "make_runner",
    "peer_versions",
    "score",
    "seed_everything",
]

Runner = Callable[[Tensor, Tensor], Tensor]

#: the peer libraries and the module each is imported as
PEERS: dict[str, str] = {"torchattacks": "torchattacks", "foolbox": "foolbox", "art": "art"}
#: a plain loop written here, outside every library's code path (FGSM and PGD only): the floor a
#: loop with nothing but the attack's arithmetic reaches on this machine
TEXTBOOK = "textbook"
#: rows of the comparison: evasion with its defaults, evasion run to the end like the peers, peers
LIBRARIES: tuple[str, ...] = ("evasion", "evasion-full", TEXTBOOK, *PEERS)

#: C&W budget: ``CW_SEARCH x CW_STEPS = 100`` gradient steps, from ``c = CW_CONST`` (see CONFIGS)
CW_SEARCH, CW_STEPS, CW_CONST, CW_LR = 1, 100, 1.0, 0.01


@dataclass(frozen=True)
class AttackConfig:
    """One attack setting shared by every library.

    ``steps`` is the number of gradient steps the ratio divides by (the maximum for attacks
    that stop early: DeepFool's iterations, C&W's total Adam steps over the binary search).
    """

    key: str
    title: str
    norm: str
    epsilon: float
    steps: int
    step_size: float | None = None
    minimum_norm: bool = False

    @property
    def threat(self) -> evasion.ThreatModel:
        return evasion.ThreatModel(self.norm, self.epsilon)


#: Budgets: L∞ 0.1 and L2 2.0 on MNIST (undefended models; 0.3 / 3.0 break every such model, which
#: would hide any difference in strength). PGD/BIM step = 2.5 * eps / steps (evasion's default,
#: passed explicitly to every library); APGD's initial step is 2 * eps in every library.
CONFIGS: dict[str, AttackConfig] = {
    c.key: c
    for c in (
        AttackConfig("fgsm", "FGSM (L∞ 0.1)", "linf", 0.1, 1, 0.1),
        AttackConfig("pgd-linf-10", "PGD-L∞ 10 (0.1)", "linf", 0.1, 10, 2.5 * 0.1 / 10),
        AttackConfig("pgd-linf-40", "PGD-L∞ 40 (0.1)", "linf", 0.1, 40, 2.5 * 0.1 / 40),
        AttackConfig("pgd-l2-10", "PGD-L2 10 (2.0)", "l2", 2.0, 10, 2.5 * 2.0 / 10),
        AttackConfig("deepfool", "DeepFool-L2 50 max (@2.0)", "l2", 2.0, 50, minimum_norm=True),
        AttackConfig(
            "cw-l2",
            f"C&W-L2 {CW_SEARCH}x{CW_STEPS} (@2.0)",
            "l2",
            2.0,
            CW_SEARCH * CW_STEPS,
            minimum_norm=True,
        ),
        AttackConfig("apgd-ce", "APGD-CE 100 (L∞ 0.1)", "linf", 0.1, 100),
    )
}


def peer_versions() -> dict[str, str | None]:
    """Installed version of each peer, ``None`` where it cannot be imported."""
    out: dict[str, str | None] = {}
    for name, module in PEERS.items():
        try:
            out[name] = str(getattr(importlib.import_module(module), "__version__", "?"))
        except Exception:  # a broken peer install is skipped like a missing one
            out[name] = None
    return out


def seed_everything(seed: int = 0) -> None:
    """Seed the global RNGs the peers draw their random starts from (torch, numpy)."""
    torch.manual_seed(seed)
    np.random.seed(seed)


# -- evasion ------------------------------------------------------------------------------------
def _evasion(cfg: AttackConfig, model: nn.Module, full: bool) -> Runner | None:
    """``full``: run to the end like the peers (``early_stop=False``; C&W ``abort_early=False``)."""
    attack: Any
    early = not full
    if cfg.key == "fgsm":
        attack = FGSM(early_stop=early)
    elif cfg.key.startswith("pgd"):
        attack = PGD(steps=cfg.steps, step_size=cfg.step_size, early_stop=early)
    elif cfg.key == "apgd-ce":
        attack = APGD(steps=cfg.steps, loss="ce", early_stop=early)
    elif cfg.key == "deepfool":
        if full:
            return None  # DeepFool has no early-stop switch: the same run as "evasion"
        attack = DeepFool(steps=cfg.steps, candidates=10, overshoot=0.02)
    elif cfg.key == "cw-l2":
        attack = CarliniWagnerL2(
            steps=CW_STEPS,
            binary_search_steps=CW_SEARCH,
            initial_const=CW_CONST,
            learning_rate=CW_LR,
            abort_early=early,
        )
    else:
        return None
    # minimum-norm attacks return their smallest adversarial point, unprojected, like the peers
    threat = evasion.ThreatModel(cfg.norm, math.inf) if cfg.minimum_norm else cfg.threat

    def run(x: Tensor, y: Tensor) -> Tensor:
        return attack(model, x, y, threat=threat, generator=torch.Generator().manual_seed(0)).adversarial

    return run


# -- torchattacks -------------------------------------------------------------------------------
def _torchattacks(cfg: AttackConfig, model: nn.Module) -> Runner | None:
    import torchattacks as ta

    attack: Any
    if cfg.key == "fgsm":
        attack = ta.FGSM(model, eps=cfg.epsilon)
    elif cfg.key.startswith("pgd-linf"):
        attack = ta.PGD(model, eps=cfg.epsilon, alpha=cfg.step_size, steps=cfg.steps, random_start=True)
    elif cfg.key == "pgd-l2-10":
        attack = ta.PGDL2(model, eps=cfg.epsilon, alpha=cfg.step_size, steps=cfg.steps, random_start=True)
    elif cfg.key == "deepfool":
        attack = ta.DeepFool(model, steps=cfg.steps, overshoot=0.02)
    elif cfg.key == "cw-l2":  # no binary search in torchattacks: one run of all the steps at c
        attack = ta.CW(model, c=CW_CONST, kappa=0, steps=cfg.steps, lr=CW_LR)
    elif cfg.key == "apgd-ce":
        attack = ta.APGD(
            model, norm="Linf", eps=cfg.epsilon, steps=cfg.steps, n_restarts=1, loss="ce", seed=0
        )
    else:
        return None

    def run(x: Tensor, y: Tensor) -> Tensor:
        return attack(x, y)

    return run


def rescale_into_l2_ball(delta: Tensor, eps: float) -> Tensor:
    """``delta`` scaled down to L2 norm ``eps`` per sample where it is longer (torchattacks' step;
    followed by a clamp to the box it is not the projection onto ball ∩ box)."""
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (delta.dim() - 1))
    return delta * (eps / norms).clamp(max=1.0)


# -- textbook -----------------------------------------------------------------------------------
def _textbook(cfg: AttackConfig, model: nn.Module) -> Runner | None:
    """FGSM / PGD as the papers write them, without any library: random start (PGD), gradient of
    the summed cross-entropy, sign (L∞) or unit-L2 step, then the ball and the [0, 1] box by
    clamping (L2: rescale into the ball, then clamp, as torchattacks; not the exact projection).
    Returns the last iterate, unchecked (the benchmark credits it with the one checking forward).
    """
    if not (cfg.key == "fgsm" or cfg.key.startswith("pgd")):
        return None
    eps, steps, alpha = cfg.epsilon, cfg.steps, cfg.step_size
    linf = cfg.norm == "linf"

    def grad(x_adv: Tensor, y: Tensor) -> Tensor:
        x_adv = x_adv.detach().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x_adv), y, reduction="sum")
        return torch.autograd.grad(loss, x_adv)[0]

    def into_ball(delta: Tensor) -> Tensor:
        return delta.clamp(-eps, eps) if linf else rescale_into_l2_ball(delta, eps)

    def run(x: Tensor, y: Tensor) -> Tensor:
        if cfg.key == "fgsm":
            return (x + eps * grad(x, y).sign()).clamp(0.0, 1.0)
        if linf:
            delta = torch.empty_like(x).uniform_(-eps, eps)
        else:  # a uniform direction, a radius uniform in [0, eps]
            d = torch.randn_like(x)
            r = torch.rand(x.shape[0], device=x.device).view(-1, *[1] * (x.dim() - 1))
            delta = d / d.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1)) * r * eps
        x_adv = (x + delta).clamp(0.0, 1.0)
        for _ in range(steps):
            g = grad(x_adv, y)
            if linf:
                step = g.sign()
            else:
                step = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (g.dim() - 1))
            x_adv = (x + into_ball(x_adv + alpha * step - x)).clamp(0.0, 1.0)
        return x_adv.detach()

    return run


# -- foolbox ------------------------------------------------------------------------------------
def _foolbox(cfg: AttackConfig, model: nn.Module) -> Runner | None:
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device="cpu")
    attack: Any
    if cfg.key == "fgsm":
        attack = fb.attacks.FGSM()
    elif cfg.key.startswith("pgd-linf"):
        attack = fb.attacks.LinfPGD(abs_stepsize=cfg.step_size, steps=cfg.steps, random_start=True)
    elif cfg.key == "pgd-l2-10":
        attack = fb.attacks.L2PGD(abs_stepsize=cfg.step_size, steps=cfg.steps, random_start=True)
    elif cfg.key == "deepfool":
        attack = fb.attacks.L2DeepFoolAttack(steps=cfg.steps, candidates=10, overshoot=0.02)
    elif cfg.key == "cw-l2":
        attack = fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=CW_SEARCH,
            steps=CW_STEPS,
            stepsize=CW_LR,
            initial_const=CW_CONST,
            abort_early=True,
        )
    else:
        return None  # foolbox 3.3.4 has no APGD
    minimum = cfg.minimum_norm

    def run(x: Tensor, y: Tensor) -> Tensor:
        raw, clipped, _ = attack(fmodel, x, y, epsilons=cfg.epsilon)
        return raw if minimum else clipped

    return run


# -- ART ----------------------------------------------------------------------------------------
_ART_ESTIMATORS: dict[int, Any] = {}  # one PyTorchClassifier wrapper per model


def _art(cfg: AttackConfig, model: nn.Module, batch_size: int) -> Runner | None:
    from art.attacks import evasion as aev
    from art.estimators.classification import PyTorchClassifier

    clf = _ART_ESTIMATORS.get(id(model))
    if clf is None:
        shape = tuple(getattr(model, "input_shape", None) or (1, 28, 28))
        clf = PyTorchClassifier(
            model=model,
            loss=nn.CrossEntropyLoss(),
            input_shape=shape,
            nb_classes=int(getattr(model, "num_classes", 10)),
            clip_values=(0.0, 1.0),
            device_type="cpu",
        )
        _ART_ESTIMATORS[id(model)] = clf
    norm = np.inf if cfg.norm == "linf" else 2
    attack: Any
    if cfg.key == "fgsm":
        attack = aev.FastGradientMethod(clf, norm=norm, eps=cfg.epsilon, batch_size=batch_size)
    elif cfg.key.startswith("pgd"):
        attack = aev.ProjectedGradientDescent(
            clf,
            norm=norm,
            eps=cfg.epsilon,
            eps_step=cfg.step_size,
            max_iter=cfg.steps,
            num_random_init=1,
            batch_size=batch_size,
            verbose=False,
        )
    elif cfg.key == "deepfool":  # ART's `epsilon` is the overshoot; it attacks the predicted class
        attack = aev.DeepFool(
            clf, max_iter=cfg.steps, epsilon=0.02, nb_grads=10, batch_size=batch_size, verbose=False
        )
    elif cfg.key == "cw-l2":
        attack = aev.CarliniL2Method(
            clf,
            confidence=0.0,
            learning_rate=CW_LR,
            binary_search_steps=CW_SEARCH,
            max_iter=CW_STEPS,
            initial_const=CW_CONST,
            batch_size=batch_size,
            verbose=False,
        )
    elif cfg.key == "apgd-ce":
        attack = aev.AutoProjectedGradientDescent(
            clf,
            norm=norm,
            eps=cfg.epsilon,
            eps_step=2 * cfg.epsilon,
            max_iter=cfg.steps,
            nb_random_init=1,
            batch_size=batch_size,
            loss_type="cross_entropy",
            verbose=False,
        )
    else:
        return None

    def run(x: Tensor, y: Tensor) -> Tensor:
        adv = attack.generate(x.numpy(), y.numpy())
        return torch.from_numpy(np.asarray(adv, dtype=np.float32))

    return run


def make_runner(library: str, cfg: AttackConfig, model: nn.Module, batch_size: int) -> Runner | None:
    """The runner of ``cfg`` in ``library`` (``None``: the library has no such attack)."""
    if library in ("evasion", "evasion-full"):
        return _evasion(cfg, model, full=library == "evasion-full")
    if library == TEXTBOOK:
        return _textbook(cfg, model)
    if library == "torchattacks":
        return _torchattacks(cfg, model)
    if library == "foolbox":
        return _foolbox(cfg, model)
    if library == "art":
        return _art(cfg, model, batch_size)
    raise ValueError(f"unknown library {library!r}; known: {', '.join(LIBRARIES)}")


# -- scoring ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Score:
    """How a library's returned points fare under one fresh forward of the model."""

    robust_accuracy: float  # fraction of samples without a misclassified returned point within epsilon
    median_norm: float  # of the returned points that are misclassified (nan if none)
    max_norm: float  # of the returned points
    outside_budget: int  # fixed-budget attacks: returned points farther than epsilon (never credited)


@torch.no_grad()
def score(
    model: nn.Module, x: Tensor, y: Tensor, adversarial: Tensor, cfg: AttackConfig, *, library: str = ""
) -> Score:
    """Robust accuracy of ``adversarial`` at ``cfg.epsilon`` (one fresh forward; see the module doc)."""
    adv = adversarial.detach().to(x.dtype).reshape(x.shape).clone()
    if not bool(torch.isfinite(adv).all()):
        adv = torch.where(torch.isfinite(adv), adv, x)
    if library == "foolbox" and cfg.key == "cw-l2":
        # foolbox's C&W returns an all-zero image where it failed: put the clean image back there
        failed = (model(adv).argmax(1) == y) | (adv.flatten(1).abs().amax(1) == 0)
        adv[failed] = x[failed]
    norms = perturbation_norm(adv - x, cfg.norm)
    wrong = model(adv).argmax(1) != y
    outside = int((norms > cfg.epsilon * (1 + 1e-5) + 1e-6).sum())
    broken = wrong & (norms <= cfg.epsilon * (1 + 1e-5) + 1e-6)
    med = float(norms[wrong].median()) if bool(wrong.any()) else math.nan
    return Score(
        robust_accuracy=float((~broken).float().mean()),
        median_norm=med,
        max_norm=float(norms.max()),
        outside_budget=0 if cfg.minimum_norm else outside,
    )

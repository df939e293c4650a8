"""Cross-checks against the reference implementations in torchattacks, foolbox and ART.

Deterministic attacks (FGSM, BIM) must return the same points as the peers for the same settings
(`evasion` with ``early_stop=False, keep="last"``, the peers' semantics); the other attacks must
be at least as strong (robust accuracy no higher than the peer's, up to ``SLACK`` samples).
Every peer is optional: each test skips when its library is not installed (CI installs them
with ``pip install foolbox==3.3.4 adversarial-robustness-toolbox==1.20.1 packaging`` and
``pip install --no-deps torchattacks==3.5.1``).

Model and data: the zoo's ``digits-cnn`` on 64 images of sklearn digits (1x8x8), budgets L∞ 0.1
and L2 0.5 (where it keeps ~55-60 % accuracy under PGD, so differences in strength show).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import evasion
from evasion.attacks import APGD, BIM, FGSM, PGD, CarliniWagnerL2, DeepFool
from evasion.perturbations import norm as perturbation_norm

pytestmark = pytest.mark.peers

N = 64  # a power of two: peers average the loss over the batch, and 1/64 scales gradients exactly
EPS_INF, EPS_L2 = 0.1, 0.5
SLACK = 2 / N  # "at least as strong": up to two samples of slack for random-start noise


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[nn.Module, Tensor, Tensor]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is fastest, and robust to a busy machine
    model = evasion.models.load("digits-cnn").eval()
    data = evasion.datasets.load("digits", split="test")
    yield model, data.x[:N].contiguous(), data.y[:N].contiguous()
    torch.set_num_threads(threads)


def _linf() -> evasion.ThreatModel:
    return evasion.ThreatModel("linf", EPS_INF)


def _l2() -> evasion.ThreatModel:
    return evasion.ThreatModel("l2", EPS_L2)


@torch.no_grad()
def robust_accuracy(model: nn.Module, x: Tensor, y: Tensor, adv: Any, norm: str, eps: float) -> float:
    """Fraction of samples whose returned point is not a misclassified point within ``eps`` (one fresh forward)."""
    a = torch.as_tensor(np.asarray(adv) if not isinstance(adv, Tensor) else adv, dtype=x.dtype).reshape(
        x.shape
    )
    assert bool(((a >= 0) & (a <= 1)).all()), "points outside the box [0, 1]"
    inside = perturbation_norm(a - x, norm) <= eps * (1 + 1e-5) + 1e-6
    return float((~((model(a).argmax(1) != y) & inside)).float().mean())


def _unbounded() -> evasion.ThreatModel:
    """Minimum-norm attacks return their smallest adversarial point, unprojected, like the peers."""
    return evasion.ThreatModel("l2", math.inf)


def _art_classifier(model: nn.Module) -> Any:
    art_est = pytest.importorskip("art.estimators.classification")
    return art_est.PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=(1, 8, 8),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )


def _foolbox_model(model: nn.Module) -> Any:
    fb = pytest.importorskip("foolbox")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    return fb, fb.PyTorchModel(model, bounds=(0.0, 1.0), device="cpu")


def _last(attack_cls: type, **kw: Any) -> Any:
    """An evasion attack configured with the peers' semantics: every step, the last iterate."""
    return attack_cls(early_stop=False, keep="last", **kw)


# -- same outputs -------------------------------------------------------------------------------
def test_fgsm_matches_torchattacks(setup: tuple[nn.Module, Tensor, Tensor]) -> None:
    ta = pytest.importorskip("torchattacks")
    model, x, y = setup
    ours = _last(FGSM)(model, x, y, threat=_linf()).adversarial
    theirs = ta.FGSM(model, eps=EPS_INF)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_fgsm_matches_foolbox(setup: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = setup
    fb, fmodel = _foolbox_model(model)
    ours = _last(FGSM)(model, x, y, threat=_linf()).adversarial
    _, theirs, _ = fb.attacks.FGSM()(fmodel, x, y, epsilons=EPS_INF)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_fgsm_matches_art(setup: tuple[nn.Module, Tensor, Tensor]) -> None:
    aev = pytest.importorskip("art.attacks.evasion")
    model, x, y = setup
    ours = _last(FGSM)(model, x, y, threat=_linf()).adversarial
    attack = aev.FastGradientMethod(_art_classifier(model), norm=np.inf, eps=EPS_INF, batch_size=N)
    theirs = torch.from_numpy(attack.generate(x.numpy(), y.numpy()))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_fgsm_default_keeps_points_that_are_already_wrong(setup: tuple[nn.Module, Tensor, Tensor]) -> None:
    """evasion's default early stop leaves a misclassified input unchanged (the peers perturb it)."""
    model, x, y = setup
    wrong = model.predict(x) != y
    result = FGSM()(model, x, y, threat=_linf())
    assert torch.equal(result.adversarial[wrong], x[wrong])


def test_bim_matches_torchattacks(setup: tuple[nn.Module, Tensor, Tensor]) -> None:
    ta = pytest.importorskip("torchattacks")
    model, x, y = setup
    alpha = 2.5 * EPS_INF / 10
    ours = _last(BIM, steps=10, step_size=alpha)(model, x, y, threat=_linf()).adversarial
    theirs = ta.BIM(model, eps=EPS_INF, alpha=alpha, steps=10)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_bim_matches_art(setup: tuple[nn.Module, Tensor, Tensor]) -> None:
    """ART clips to the box, then projects the difference onto the ball (equal up to one rounding)."""
    aev = pytest.importorskip("art.attacks.evasion")
    model, x, y = setup
    alpha = 2.5 * EPS_INF / 10
    ours = _last(BIM, steps=10, step_size=alpha)(model, x, y, threat=_linf()).adversarial
    attack = aev.BasicIterativeMethod(
        _art_classifier(model), eps=EPS_INF, eps_step=alpha, max_iter=10, batch_size=N, verbose=False
    )
    theirs = torch.from_numpy(attack.generate(x.numpy(), y.numpy()))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_bim_matches_foolbox(setup: tuple[nn.Module, Tensor, Tensor]) -> None:
    """foolbox projects as x0 + clip(x - x0): equal up to one rounding of the pixel value."""
    model, x, y = setup
    fb, fmodel = _foolbox_model(model)
    alpha = 2.5 * EPS_INF / 10
    ours = _last(BIM, steps=10, step_size=alpha)(model, x, y, threat=_linf()).adversarial
    attack = fb.attacks.LinfBasicIterativeAttack(abs_stepsize=alpha, steps=10, random_start=False)
    _, theirs, _ = attack(fmodel, x, y, epsilons=EPS_INF)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


# -- at least as strong ---------------------------------------------------------------------------
def _assert_as_strong(ours: float, theirs: float, who: str) -> None:
    assert ours <= theirs + SLACK + 1e-9, f"evasion robust accuracy {ours:.3f} > {who} {theirs:.3f}"


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_as_strong_as_peers(setup: tuple[nn.Module, Tensor, Tensor], norm: str) -> None:
    model, x, y = setup
    eps = EPS_INF if norm == "linf" else EPS_L2
    steps, alpha = 20, 2.5 * eps / 20
    threat = evasion.ThreatModel(norm, eps)
    ours = {
        "default": PGD(steps=steps, step_size=alpha)(model, x, y, threat=threat).adversarial,
        "full": PGD(steps=steps, step_size=alpha, early_stop=False)(model, x, y, threat=threat).adversarial,
    }
    peers: dict[str, Tensor] = {}
    torch.manual_seed(0)
    np.random.seed(0)
    try:
        import torchattacks as ta

        cls = ta.PGD if norm == "linf" else ta.PGDL2
        peers["torchattacks"] = cls(model, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y)
    except ImportError:
        pass
    try:
        fb, fmodel = _foolbox_model(model)
        fcls = fb.attacks.LinfPGD if norm == "linf" else fb.attacks.L2PGD
        peers["foolbox"] = fcls(abs_stepsize=alpha, steps=steps)(fmodel, x, y, epsilons=eps)[1]
    except pytest.skip.Exception:
        pass
    try:
        from art.attacks.evasion import ProjectedGradientDescent

        attack = ProjectedGradientDescent(
            _art_classifier(model),
            norm=np.inf if norm == "linf" else 2,
            eps=eps,
            eps_step=alpha,
            max_iter=steps,
            num_random_init=1,
            batch_size=N,
            verbose=False,
        )
        peers["art"] = torch.from_numpy(attack.generate(x.numpy(), y.numpy()))
    except (ImportError, pytest.skip.Exception):
        pass
    if not peers:
        pytest.skip("no peer library installed")
    for name, adv in ours.items():
        acc = robust_accuracy(model, x, y, adv, norm, eps)
        for who, theirs in peers.items():
            _assert_as_strong(acc, robust_accuracy(model, x, y, theirs, norm, eps), f"{who} ({name})")


def test_apgd_as_strong_as_peers(setup: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = setup
    ours = robust_accuracy(
        model, x, y, APGD(steps=50)(model, x, y, threat=_linf()).adversarial, "linf", EPS_INF
    )
    checked = 0
    try:
        import torchattacks as ta

        adv = ta.APGD(model, norm="Linf", eps=EPS_INF, steps=50, n_restarts=1, loss="ce", seed=0)(x, y)
        _assert_as_strong(ours, robust_accuracy(model, x, y, adv, "linf", EPS_INF), "torchattacks")
        checked += 1
    except ImportError:
        pass
    try:
        from art.attacks.evasion import AutoProjectedGradientDescent

        np.random.seed(0)
        attack = AutoProjectedGradientDescent(
            _art_classifier(model),
            norm=np.inf,
            eps=EPS_INF,
            eps_step=2 * EPS_INF,
            max_iter=50,
            nb_random_init=1,
            batch_size=N,
            loss_type="cross_entropy",
            verbose=False,
        )
        adv = attack.generate(x.numpy(), y.numpy())
        _assert_as_strong(ours, robust_accuracy(model, x, y, adv, "linf", EPS_INF), "ART")
        checked += 1
    except (ImportError, pytest.skip.Exception):
        pass
    if not checked:
        pytest.skip("neither torchattacks nor ART installed")


def test_deepfool_as_strong_as_peers(setup: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = setup
    result = DeepFool(steps=50, candidates=10, overshoot=0.02)(model, x, y, threat=_unbounded())
    ours = robust_accuracy(model, x, y, result.adversarial, "l2", EPS_L2)
    checked = 0
    try:
        fb, fmodel = _foolbox_model(model)
        raw, _, _ = fb.attacks.L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02)(
            fmodel, x, y, epsilons=EPS_L2
        )
        _assert_as_strong(ours, robust_accuracy(model, x, y, raw, "l2", EPS_L2), "foolbox")
        checked += 1
    except pytest.skip.Exception:
        pass
    try:
        from art.attacks.evasion import DeepFool as ArtDeepFool

        attack = ArtDeepFool(
            _art_classifier(model), max_iter=50, epsilon=0.02, nb_grads=10, batch_size=N, verbose=False
        )
        adv = attack.generate(x.numpy(), y.numpy())
        _assert_as_strong(ours, robust_accuracy(model, x, y, adv, "l2", EPS_L2), "ART")
        checked += 1
    except (ImportError, pytest.skip.Exception):
        pass
    try:  # torchattacks' DeepFool runs one image at a time: 16 images keep it fast
        import torchattacks as ta

        k = 16
        sub = DeepFool(steps=50, overshoot=0.02)(model, x[:k], y[:k], threat=_unbounded()).adversarial
        adv = ta.DeepFool(model, steps=50, overshoot=0.02)(x[:k], y[:k])
        acc_ours = robust_accuracy(model, x[:k], y[:k], sub, "l2", EPS_L2)
        acc_theirs = robust_accuracy(model, x[:k], y[:k], adv, "l2", EPS_L2)
        assert acc_ours <= acc_theirs + 1 / k + 1e-9, (
            f"evasion {acc_ours:.3f} > torchattacks {acc_theirs:.3f}"
        )
        checked += 1
    except ImportError:
        pass
    if not checked:
        pytest.skip("no peer library installed")


def test_cw_as_strong_as_peers(setup: tuple[nn.Module, Tensor, Tensor]) -> None:
    """100 Adam steps at c = 1 (one binary-search round), learning rate 0.01, in every library."""
    model, x, y = setup
    cw = CarliniWagnerL2(steps=100, binary_search_steps=1, initial_const=1.0, learning_rate=0.01)
    found = cw(model, x, y, threat=_unbounded()).adversarial
    ours = robust_accuracy(model, x, y, found, "l2", EPS_L2)
    checked = 0
    try:
        import torchattacks as ta

        adv = ta.CW(model, c=1.0, kappa=0, steps=100, lr=0.01)(x, y)
        _assert_as_strong(ours, robust_accuracy(model, x, y, adv, "l2", EPS_L2), "torchattacks")
        checked += 1
    except ImportError:
        pass
    try:
        fb, fmodel = _foolbox_model(model)
        attack = fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=1, steps=100, stepsize=0.01, initial_const=1.0, abort_early=True
        )
        raw, _, _ = attack(fmodel, x, y, epsilons=None)
        failed = raw.flatten(1).abs().amax(1) == 0  # foolbox returns zeros where it failed
        raw = torch.where(failed[:, None, None, None], x, raw)
        _assert_as_strong(ours, robust_accuracy(model, x, y, raw, "l2", EPS_L2), "foolbox")
        checked += 1
    except pytest.skip.Exception:
        pass
    try:
        from art.attacks.evasion import CarliniL2Method

        k = N // 2  # ART's C&W line-searches every step (about 13x the cost): half the images
        attack = CarliniL2Method(
            _art_classifier(model),
            learning_rate=0.01,
            binary_search_steps=1,
            max_iter=100,
            initial_const=1.0,
            batch_size=k,
            verbose=False,
        )
        adv = attack.generate(x[:k].numpy(), y[:k].numpy())
        acc_ours = robust_accuracy(model, x[:k], y[:k], found[:k], "l2", EPS_L2)
        acc_theirs = robust_accuracy(model, x[:k], y[:k], adv, "l2", EPS_L2)
        assert acc_ours <= acc_theirs + 2 / k + 1e-9, f"evasion {acc_ours:.3f} > ART {acc_theirs:.3f}"
        checked += 1
    except (ImportError, pytest.skip.Exception):
        pass
    if not checked:
        pytest.skip("no peer library installed")

"""The fast paths of the attacks give the answers of the slow ones.

Full-batch steps skip gathers and scatters, projections reuse precomputed bounds, the L2
projection solves its scale without a sort, DeepFool takes one backward per class: each is
checked against a plain reference (a textbook PGD loop, the indexed code path, the sort-based
projection in float64, per-sample autograd).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from evasion import ThreatModel, perturbations
from evasion.attacks import APGD, FGSM, MIFGSM, PGD, CarliniWagnerL2, DeepFool
from evasion.attacks.minimum_norm import class_gradients
from evasion.attacks.steps import StepContext
from evasion.errors import ConfigError
from evasion.perturbations import BallBox, norm, project, random_start

from .conftest import make_tiny_cnn

pytestmark = pytest.mark.usefixtures("one_thread")


def _magnitude_problem(seed: int, n: int = 16, d: int = 300, dtype: torch.dtype = torch.float32):
    """``(a, cap, eps)`` like an attack's: in the first half of the rows many coordinates are
    pinned at the box (cap 0) and the box binds; in the second half it cannot bind."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=dtype) * (torch.rand(n, d, generator=g, dtype=dtype) > 0.6)
    delta = torch.randn(n, d, generator=g, dtype=dtype) * (0.05 + float(torch.rand(1, generator=g)) * 0.4)
    cap = torch.where(delta > 0, 1 - x, x)
    cap[n // 2 :] = 10.0
    eps = (torch.rand(n, 1, generator=g, dtype=dtype) * 3).clamp_min(0.05)
    return delta.abs(), cap, eps


@pytest.mark.parametrize("seed", range(8))
def test_l2_scale_solver_equals_the_sort_in_float64(seed):
    a, cap, eps = _magnitude_problem(seed, dtype=torch.float64)
    fast = perturbations._project_l2_magnitudes(a, cap, eps)
    exact = perturbations._project_l2_magnitudes_sorted(a, cap, eps)
    assert torch.allclose(fast, exact, rtol=0, atol=1e-12)
    binds = (a * (eps / a.norm(dim=1, keepdim=True)).clamp(max=1) > cap).any(1)
    outside = torch.minimum(a, cap).norm(dim=1) > eps[:, 0]
    assert bool((binds & outside).any())  # rows where the box binds and the ball is active
    assert bool((~binds[a.shape[0] // 2 :]).all())  # rows where it cannot


def test_l2_scale_solver_where_the_box_cannot_bind():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(10, 50, generator=g, dtype=torch.float64)
    cap = torch.full_like(a, 10.0)  # never reached
    eps = torch.full((10, 1), 0.5, dtype=torch.float64)
    out = perturbations._project_l2_magnitudes(a, cap, eps)
    assert torch.allclose(out, a * 0.5 / a.norm(dim=1, keepdim=True), rtol=0, atol=1e-15)


@pytest.mark.parametrize("seed", range(4))
def test_l2_projection_in_float32_is_accurate(seed):
    """The float32 result is the float64 one to float32 precision. The sort-based solver used
    ``total - cumsum`` for the remaining mass, which lost 1e-2 per coordinate on such inputs."""
    a, cap, eps = _magnitude_problem(seed, n=32, d=784)
    truth = perturbations._project_l2_magnitudes_sorted(a.double(), cap.double(), eps.double())
    for solver in (perturbations._project_l2_magnitudes, perturbations._project_l2_magnitudes_sorted):
        assert (solver(a, cap, eps).double() - truth).abs().max() < 1e-5


def test_l2_rows_the_iteration_does_not_settle_take_the_sort(monkeypatch):
    a, cap, eps = _magnitude_problem(5, dtype=torch.float64)
    exact = perturbations._project_l2_magnitudes_sorted(a, cap, eps)
    for iterations in (1, 2):
        monkeypatch.setattr(perturbations, "_L2_ITERATIONS", iterations)
        assert torch.allclose(perturbations._project_l2_magnitudes(a, cap, eps), exact, rtol=0, atol=1e-12)


def _box_problem(seed: int, n: int = 10):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 4, 4, generator=g)
    x[:3] = (x[:3] > 0.5).float()  # pixels on the box edges
    mask = torch.rand(x.shape, generator=g) < 0.8
    lo = torch.where(mask, torch.zeros_like(x), x)
    hi = torch.where(mask, torch.ones_like(x), x)
    z = x + torch.randn(x.shape, generator=g) * 0.6
    return x, z, lo, hi


@pytest.mark.parametrize("p", ["linf", "l2", "l1", "l0"])
@pytest.mark.parametrize("eps", [0.3, 2.0, math.inf])
def test_ball_box_equals_project_bit_for_bit(p, eps):
    if p == "l0" and math.isfinite(eps):
        eps = 5.0
    x, z, lo, hi = _box_problem(1)
    box = BallBox(x, eps, p, lo, hi)
    assert torch.equal(box.project(z), project(z, x, eps, p, lo, hi))
    rows = torch.tensor([7, 2, 5])
    assert torch.equal(box.project(z[rows], rows), project(z[rows], x[rows], eps, p, lo[rows], hi[rows]))


def test_ball_box_unknown_norm():
    x, _, lo, hi = _box_problem(2)
    with pytest.raises(Exception, match="norm"):
        BallBox(x, 0.1, "l3", lo, hi)


def _reference_pgd_linf(model, x, y, eps, alpha, steps, generator):
    """Textbook PGD-L∞ (every step, last iterate) from the library's own random start."""
    adv = random_start(x, eps, "linf", torch.zeros_like(x), torch.ones_like(x), generator)
    for _ in range(steps):
        adv = adv.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(adv), y, reduction="none").sum(), adv)
        adv = adv.detach() + alpha * torch.sign(g)
        adv = torch.maximum(
            torch.minimum(adv, torch.minimum(x + eps, torch.ones_like(x))), (x - eps).clamp_min(0)
        )
    return adv


def test_full_mode_pgd_is_the_textbook_loop_bit_for_bit(batch):
    model = make_tiny_cnn(seed=2)
    x, y = batch
    threat = ThreatModel("linf", 0.1)
    attack = PGD(steps=6, step_size=0.03, early_stop=False, keep="last")
    out = attack(model, x, y, threat=threat, generator=torch.Generator().manual_seed(4))
    ref = _reference_pgd_linf(model, x, y, 0.1, 0.03, 6, torch.Generator().manual_seed(4))
    assert torch.equal(out.adversarial, ref)
    assert torch.equal(out.forwards, torch.full_like(out.forwards, 7))  # steps + the final check
    assert torch.equal(out.backwards, torch.full_like(out.backwards, 6))
    with torch.no_grad():
        assert torch.equal(out.predictions, model(ref).argmax(1))


def test_keep_best_returns_the_best_iterate_of_the_textbook_loop(batch):
    model = make_tiny_cnn(seed=2)
    x, y = batch
    threat = ThreatModel("linf", 0.05)
    attack = PGD(steps=5, step_size=0.02, early_stop=False)
    out = attack(model, x, y, threat=threat, generator=torch.Generator().manual_seed(1))
    # replay: iterate k of the reference loop is its k-step prefix; pick success first, then loss
    g = torch.Generator().manual_seed(1)
    start = random_start(x, 0.05, "linf", torch.zeros_like(x), torch.ones_like(x), g)
    iterates = [start]
    for _ in range(5):
        adv = iterates[-1].detach().requires_grad_(True)
        (gr,) = torch.autograd.grad(F.cross_entropy(model(adv), y, reduction="none").sum(), adv)
        nxt = adv.detach() + 0.02 * torch.sign(gr)
        iterates.append(
            torch.maximum(
                torch.minimum(nxt, torch.minimum(x + 0.05, torch.ones_like(x))), (x - 0.05).clamp_min(0)
            )
        )
    with torch.no_grad():
        losses = torch.stack([F.cross_entropy(model(it), y, reduction="none") for it in iterates])
        wins = torch.stack([model(it).argmax(1) != y for it in iterates])
    key = wins.double() * 1e6 + losses.double()  # success first, then the larger objective
    pick = key.argmax(0)  # the first of equal keys, like the loop's strict comparison
    expected = torch.stack([iterates[int(k)][i] for i, k in enumerate(pick)])
    assert torch.equal(out.adversarial, expected)
    assert torch.equal(out.success, wins.any(0))


@pytest.mark.parametrize(
    ("attack", "threat"),
    [
        (PGD(steps=5, early_stop=False), ThreatModel("linf", 0.1)),
        (PGD(steps=5, early_stop=False), ThreatModel("l2", 0.8)),
        (PGD(steps=4, early_stop=False, l1_fraction=0.1), ThreatModel("l1", 3.0)),
        (APGD(steps=12, early_stop=False), ThreatModel("linf", 0.1)),
        (APGD(steps=12, early_stop=False), ThreatModel("l2", 0.8)),
        (MIFGSM(steps=4, early_stop=False), ThreatModel("linf", 0.1)),
        (FGSM(early_stop=False), ThreatModel("l2", 0.8)),
        (PGD(steps=5), ThreatModel("linf", 0.1)),  # early stop: the batch shrinks on the way
    ],
    ids=["pgd-linf", "pgd-l2", "pgd-l1", "apgd-linf", "apgd-l2", "mifgsm", "fgsm-l2", "pgd-early"],
)
def test_whole_batch_path_equals_the_indexed_path(monkeypatch, batch, attack, threat):
    """Rules and projections given the whole batch use the problem's tensors as they are; forcing
    them to gather every row instead must not change one bit of the result."""
    model = make_tiny_cnn(seed=3)
    x, y = batch
    mask = torch.ones(1, 8, 8, dtype=torch.bool)
    mask[:, :2, :] = False  # a sticker mask: pinned pixels take the masked paths too
    threat = threat.with_mask(mask)
    fast = attack(model, x, y, threat=threat, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(StepContext, "rows", lambda self, idx: idx)
    slow = attack(model, x, y, threat=threat, generator=torch.Generator().manual_seed(0))
    for name in ("adversarial", "success", "predictions", "forwards", "backwards"):
        assert torch.equal(getattr(fast, name), getattr(slow, name)), name
    assert torch.equal(fast.adversarial[:, :, :2], x[:, :, :2])


def test_last_evaluation_builds_no_graph(batch):
    model = make_tiny_cnn(seed=1)
    seen: list[bool] = []
    model.register_forward_hook(lambda *_: seen.append(torch.is_grad_enabled()))
    x, y = batch
    PGD(steps=3, early_stop=False)(model, x, y, threat=ThreatModel("linf", 0.1))
    assert seen == [True, True, True, False]


def test_deepfool_class_gradients_equal_per_sample_autograd():
    model = make_tiny_cnn(seed=4)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(5, 1, 8, 8, generator=g).requires_grad_(True)
    y = torch.randint(0, 10, (5,), generator=g)
    scores = model(x)
    classes = scores.detach().scatter(1, y[:, None], -math.inf).topk(3, dim=1).indices
    grads = class_gradients(x, scores, classes, y)
    assert grads.shape == (5, 3, 1, 8, 8)
    for i in range(5):
        for j in range(3):
            xi = x[i : i + 1].detach().requires_grad_(True)
            s = model(xi)[0]
            (expected,) = torch.autograd.grad(s[classes[i, j]] - s[y[i]], xi)
            assert torch.allclose(grads[i, j], expected[0], atol=1e-6)


def test_cw_full_run_keeps_its_closest_points(batch):
    model = make_tiny_cnn(seed=5)
    x, y = batch
    cw = CarliniWagnerL2(
        steps=15, binary_search_steps=2, initial_const=5.0, learning_rate=0.05, abort_early=False
    )
    out = cw(model, x, y, threat=ThreatModel("l2", math.inf))
    assert torch.equal(out.forwards, torch.full_like(out.forwards, 31))  # 2 x 15 steps + the check
    found = torch.isfinite(out.minimal_norms)
    assert bool(found.any())
    assert torch.equal(out.success, found)
    assert torch.allclose(out.norms[found], out.minimal_norms[found])


def test_deepfool_still_breaks_and_counts(batch):
    model = make_tiny_cnn(seed=6)
    x, y = batch
    out = DeepFool(steps=20, candidates=4)(model, x, y, threat=ThreatModel("l2", math.inf))
    assert bool(out.success.float().mean() > 0.5)
    assert bool(((out.backwards % 3) == 0).all())  # 3 class gradients per iteration


def test_uniform_radius_start_keeps_directions_and_spreads_the_distance():
    x = torch.full((3000, 1, 4, 4), 0.5, dtype=torch.float64)
    lo, hi = torch.zeros_like(x), torch.ones_like(x)
    vol = random_start(x, 0.4, "l2", lo, hi, torch.Generator().manual_seed(1))
    uni = random_start(x, 0.4, "l2", lo, hi, torch.Generator().manual_seed(1), radius="uniform")
    dv, du = (vol - x).flatten(1), (uni - x).flatten(1)
    assert torch.allclose(dv / dv.norm(dim=1, keepdim=True), du / du.norm(dim=1, keepdim=True))
    r = norm(uni - x, "l2") / 0.4
    assert bool((r <= 1 + 1e-12).all())
    for t in (0.25, 0.5, 0.75):  # uniform on [0, 1]; the volume-uniform start has P = t^16
        assert abs(float((r <= t).double().mean()) - t) < 0.04
    with pytest.raises(ConfigError, match="radius"):
        random_start(x, 0.4, "l2", lo, hi, radius="shell")  # type: ignore[arg-type]


def test_attacks_start_at_a_uniform_radius(batch):
    """PGD's own L2 start is ``random_start(radius="uniform")`` drawn from its generator."""
    model = make_tiny_cnn(seed=7)
    x, y = batch
    threat = ThreatModel("l2", 1.0)
    seen: list[torch.Tensor] = []
    model.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].detach().clone()))
    PGD(steps=1, early_stop=False)(model, x, y, threat=threat, generator=torch.Generator().manual_seed(9))
    lo, hi = torch.zeros_like(x), torch.ones_like(x)
    expected = random_start(x, 1.0, "l2", lo, hi, torch.Generator().manual_seed(9), radius="uniform")
    assert torch.equal(seen[0], expected)

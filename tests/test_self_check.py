"""The evaluation's self-check: a stronger re-attack of the points every attack of a norm left."""

from __future__ import annotations

import pytest
import torch

import evasion
from evasion import attacks
from evasion.errors import ConfigError
from evasion.evaluation import AttackSpec
from evasion.evaluation.suite import self_check_specs

from .conftest import make_tiny_cnn

#: tiny models gain nothing from threads, and on a busy machine they spin
pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = "tiny-cnn"


def _data(n: int = 16) -> tuple[torch.Tensor, torch.Tensor, object]:
    clf = make_tiny_cnn()
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    return x, clf.predict(x), clf  # labels = clean predictions: clean accuracy 1


def _weak(eps: list[float], name: str = "weak") -> AttackSpec:
    return AttackSpec(attacks.PGD(steps=1, random_start=False, step_size=1e-4), "linf", eps, name=name)


def _records(ev, attack: str, eps: float) -> dict[int, object]:
    return {r.index: r for r in ev.records if r.attack == attack and r.epsilon == eps}


def test_a_weak_attack_is_caught_and_replaced(one_thread):
    x, y, clf = _data()
    ev = evasion.evaluate(clf, (x, y), [_weak([0.05])])
    assert "self-check-linf" in ev.specs and ev.specs["self-check-linf"].role == "self-check"
    weak = ev.curve(MODEL, "weak")
    worst = ev.worst_case(MODEL, "linf")
    assert weak.epsilons == worst.epsilons == [0.0, 0.05]
    assert weak.accuracy[0] == worst.accuracy[0] == 1.0
    assert weak.accuracy[1] >= 0.9  # the weak attack breaks (almost) nothing ...
    assert worst.accuracy[1] <= weak.accuracy[1] - 0.5  # ... the self-check breaks most
    assert "self-check-linf" in worst.attacks
    assert any(c.attack == "self-check-linf" and c.model == MODEL for c in ev.curves())
    own = ev.curve(MODEL, "self-check-linf")
    assert own.accuracy[1] == pytest.approx(worst.accuracy[1])
    flagged = [c for c in ev.checks if c.code == "self-check"]
    assert len(flagged) == 1
    check = flagged[0]
    assert check.attack == "self-check-linf" and check.model == MODEL and check.level == "warn"
    assert check.epsilon == 0.05 and check.total == len(y)
    assert check.count == round((1.0 - worst.accuracy[1]) * len(y)) - round((1.0 - weak.accuracy[1]) * len(y))
    assert "weak" in check.message  # names the attacks that were too weak


def test_without_self_check_nothing_is_added(one_thread):
    x, y, clf = _data()
    ev = evasion.evaluate(clf, (x, y), [_weak([0.05])], self_check=False)
    assert list(ev.specs) == ["weak"]
    assert all("self-check" not in c.attack for c in ev.curves())
    assert all(c.code != "self-check" for c in ev.checks_run)
    assert ev.worst_case(MODEL, "linf").accuracy == ev.curve(MODEL, "weak").accuracy
    assert all(r.attack == "weak" for r in ev.records)


def test_a_strong_enough_attack_passes_the_self_check(one_thread):
    x, y, clf = _data()
    strong = AttackSpec(attacks.APGD(steps=30, loss="margin"), "linf", [0.1], name="strong")
    ev = evasion.evaluate(clf, (x, y), [strong])
    ran = [c for c in ev.checks_run if c.code == "self-check"]
    assert len(ran) == 1 and ran[0].level == "ok"
    assert not [c for c in ev.checks if c.code == "self-check"]


def test_the_self_check_never_reattacks_what_a_peer_broke(one_thread):
    x, y, clf = _data(24)
    medium = AttackSpec(
        attacks.PGD(steps=2, random_start=False, step_size=0.01), "linf", [0.02, 0.05], name="medium"
    )
    ev = evasion.evaluate(clf, (x, y), [medium, _weak([0.05])])
    peer_sources, attacked = 0, 0
    for eps in (0.02, 0.05):
        peers = [_records(ev, "medium", eps)] + ([_records(ev, "weak", eps)] if eps == 0.05 else [])
        mine = _records(ev, "self-check-linf", eps)
        assert sorted(mine) == list(range(len(y)))
        for i, r in mine.items():
            broken_by_peer = any(p[i].success for p in peers)
            if r.source == "inherited":
                assert eps == 0.05 and r.success  # broken at 0.02 (by the self-check or a peer)
                continue
            if broken_by_peer:
                peer_sources += 1
                assert r.source == "peer" and r.success
                assert r.forwards == 0 and r.backwards == 0
                first = next(p[i] for p in peers if p[i].success)
                assert r.prediction == first.prediction and r.norm_value == pytest.approx(first.norm_value)
            else:
                assert r.source == "attack"
                attacked += 1
                assert r.backwards > 0
    assert peer_sources > 0 and attacked > 0


def test_the_self_check_is_deterministic(one_thread):
    x, y, clf = _data()
    specs = [_weak([0.02, 0.05])]
    a = evasion.evaluate(clf, (x, y), specs, seed=3)
    b = evasion.evaluate(make_tiny_cnn(), (x, y), specs, seed=3)
    assert a.records == b.records
    assert a.curves() == b.curves()
    assert [c.to_dict() for c in a.checks_run] == [c.to_dict() for c in b.checks_run]


def test_self_check_specs_one_per_norm_longer_and_over_the_union_grid():
    specs = [
        AttackSpec(attacks.PGD(steps=15), "linf", [0.1, 0.3], name="a"),
        AttackSpec(attacks.BIM(steps=40), "linf", [0.2], name="b"),
        AttackSpec(attacks.PGD(steps=5), "l2", [1.0], name="c"),
    ]
    checks = {s.name: s for s in self_check_specs(specs)}
    assert set(checks) == {"self-check-linf", "self-check-l2"}
    linf, l2 = checks["self-check-linf"], checks["self-check-l2"]
    assert linf.norm == "linf" and linf.grid == (0.1, 0.2, 0.3) and linf.role == "self-check"
    assert isinstance(linf.attack, attacks.APGD) and linf.attack.loss == "margin"
    assert linf.attack.steps > 40 and l2.attack.steps >= 20
    assert linf.models is None
    restricted = self_check_specs([AttackSpec(attacks.PGD(steps=5), "linf", [0.1], name="a", models=["m"])])
    assert restricted[0].models == ("m",)
    # a minimum-norm attack's iterations (C&W: per binary-search step) do not size the self-check
    cw = attacks.CarliniWagnerL2(steps=500, binary_search_steps=2)
    mixed = self_check_specs([specs[2], AttackSpec(cw, "l2", [1.0], name="cw")])
    assert mixed[0].attack.steps == l2.attack.steps == 20 and mixed[0].after == ("c", "cw")


def test_the_self_check_name_is_reserved():
    x, y, clf = _data(4)
    with pytest.raises(ConfigError, match="self-check-linf"):
        evasion.evaluate(clf, (x, y), [_weak([0.05], name="self-check-linf")])


def test_the_self_check_stays_inside_the_patch_threat_model(one_thread):
    x, y, clf = _data()
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:2, :2] = True
    patch = AttackSpec(attacks.PGD(steps=20), "linf", [0.3], mask=mask, name="patch")
    ev = evasion.evaluate(clf, (x, y), [patch])
    assert "self-check-linf" not in ev.specs  # a patch threat model has no whole-image self-check
    assert not [c for c in ev.checks if c.code == "self-check"]
    # the adversarial examples of every attack, the self-check's included, change only the patch
    outside = ~mask.expand(1, 8, 8)
    examples = [e for e in ev.examples if e.attack == "self-check-linf"]
    for e in examples:
        assert torch.equal(e.adversarial[outside], e.original[outside]), e.index


def test_the_self_check_runs_only_where_the_model_was_attacked(one_thread):
    x, y, _ = _data()
    a = AttackSpec(attacks.PGD(steps=20), "linf", [0.01], models=["p"], name="A")
    b = AttackSpec(attacks.PGD(steps=20), "linf", [0.2], models=["r"], name="B")
    ev = evasion.evaluate({"p": make_tiny_cnn(), "r": make_tiny_cnn()}, (x, y), [a, b])
    assert ev.worst_case("p", "linf").epsilons == [0.0, 0.01]
    assert ev.worst_case("r", "linf").epsilons == [0.0, 0.2]
    assert not [c for c in ev.checks if c.code == "self-check" and c.model == "p" and c.epsilon == 0.2]


# -- a cascade attack that starts from its peers' best points ------------------------------------
INITS: list[torch.Tensor | None] = []


class _RecordingPGD(attacks.PGD):
    """PGD that records the start point it is handed."""

    def __call__(self, model, x, y, *, threat, target=None, generator=None, init=None):  # type: ignore[override]
        INITS.append(None if init is None else init.clone())
        return super().__call__(model, x, y, threat=threat, target=target, generator=generator, init=init)


@pytest.mark.parametrize("from_peers", [True, False])
def test_a_cascade_attack_can_start_from_its_peers_best_points(from_peers):
    x, y, clf = _data()
    first = AttackSpec(attacks.FGSM(), "linf", [0.02], name="first")
    second = AttackSpec(
        _RecordingPGD(steps=2, step_size=1e-4),
        "linf",
        [0.02],
        name="second",
        after=["first"],
        start_from_peers=from_peers,
    )
    INITS.clear()
    ev = evasion.evaluate(clf, (x, y), [first, second], self_check=False)
    fgsm = attacks.FGSM()(clf, x, y, threat=evasion.ThreatModel("linf", 0.02))
    left = (~fgsm.success).nonzero()[:, 0]
    assert 0 < left.numel() < len(y)
    (init,) = INITS
    assert init is not None and init.shape[0] == left.numel()
    if from_peers:  # the FGSM points of the samples FGSM left (its only peer at the first epsilon)
        assert torch.allclose(init, fgsm.adversarial[left])
    else:  # the random start an independent run would give them
        assert not torch.allclose(init, fgsm.adversarial[left])
    assert ev.specs["second"].start_from_peers is from_peers


def test_start_from_peers_needs_peers_and_changes_the_fingerprint():
    with pytest.raises(ConfigError, match="runs after no attack"):
        AttackSpec(attacks.PGD(), "linf", [0.1], name="b", start_from_peers=True)
    a = AttackSpec(attacks.PGD(), "linf", [0.1], name="b", after=["a"])
    b = AttackSpec(attacks.PGD(), "linf", [0.1], name="b", after=["a"], start_from_peers=True)
    assert a.fingerprint() != b.fingerprint()


@pytest.mark.parametrize("from_peers", [False, True])
def test_incomplete_optimisation_is_judged_by_the_self_check_for_attacks_started_from_peers(from_peers):
    x, y, clf = _data()
    first = AttackSpec(attacks.FGSM(), "linf", [0.02], name="first")
    creeping = attacks.PGD(steps=10, step_size=1e-5, random_start=False)  # rises at every step
    second = AttackSpec(creeping, "linf", [0.02], name="second", after=["first"], start_from_peers=from_peers)
    ev = evasion.evaluate(clf, (x, y), [first, second], self_check=False)
    flagged = {c.attack for c in ev.checks if c.code == "incomplete-optimisation"}
    assert ("second" in flagged) is not from_peers

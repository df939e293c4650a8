"""The default attack suite per defence, and configs whose attacks cannot evaluate a model."""

from __future__ import annotations

import functools

import pytest
import torch

import evasion
from evasion import attacks
from evasion.attacks import APGD, CarliniWagnerL2, DeepFool, DynamicAdversary, Noise
from evasion.build import attack_specs, check_applicable
from evasion.config import parse_config
from evasion.datasets.base import Dataset
from evasion.defenses.detected import DetectedClassifier
from evasion.defenses.detector import Detector
from evasion.defenses.reject import ThresholdReject
from evasion.errors import ConfigError, UnknownNameError
from evasion.evaluation import AttackSpec, engine
from evasion.evaluation.suite import SuiteSettings, default_suite, model_kind, suites

from .conftest import make_tiny_cnn

#: tiny models gain nothing from threads, and on a busy machine they spin
pytestmark = pytest.mark.usefixtures("one_thread")

GRIDS = {"linf": [0.05, 0.1], "l2": [0.5]}


def _plain():
    return make_tiny_cnn()


def _reject():
    return ThresholdReject(make_tiny_cnn(seed=1), 0.0)


def _detected():
    clf = make_tiny_cnn(seed=2)
    return DetectedClassifier(clf, Detector.attach(clf, "conv1", width=0.05, seed=1), 0.5)


def _by_name(specs):
    names = [s.name for s in specs]
    assert len(names) == len(set(names)), names
    return {s.name: s for s in specs}


# -- default_suite -------------------------------------------------------------------------------
def test_plain_classifier_suite():
    model = _plain()
    assert model_kind(model) == "plain"
    specs = _by_name(default_suite(model, GRIDS))
    for norm in ("linf", "l2"):
        ce, aimed = specs[f"apgd-ce-{norm}"], specs[f"apgd-t-{norm}"]
        assert isinstance(ce.attack, APGD) and ce.attack.loss == "ce" and ce.norm == norm
        # AutoAttack's APGD-T: the targeted DLR loss aimed at runner-ups, untargeted success
        assert isinstance(aimed.attack, APGD) and aimed.attack.loss == "dlr" and aimed.attack.targets == 2
        assert not aimed.targeted and aimed.after == (f"apgd-ce-{norm}",)
        assert ce.grid == tuple(GRIDS[norm])
    assert isinstance(specs["deepfool-l2"].attack, DeepFool) and specs["deepfool-l2"].norm == "l2"
    assert isinstance(specs["cw-l2"].attack, CarliniWagnerL2) and specs["cw-l2"].norm == "l2"
    assert not any(
        isinstance(s.attack, (DeepFool, CarliniWagnerL2)) and s.norm == "linf" for s in specs.values()
    )
    assert not any(isinstance(s.attack, (Noise, DynamicAdversary)) for s in specs.values())
    assert not any(isinstance(s.attack, APGD) and s.attack.loss == "margin" for s in specs.values())
    assert all(s.role == "attack" and s.models is None and not s.targeted for s in specs.values())


def test_reject_option_suite():
    model = _reject()
    assert model_kind(model) == "reject"
    specs = _by_name(default_suite(model, GRIDS))
    for norm in ("linf", "l2"):
        assert specs[f"apgd-ce-{norm}"].attack.loss == "ce"
        assert f"apgd-t-{norm}" not in specs  # evades no point more than the margin against a rejection
        m = specs[f"apgd-margin-{norm}"]
        assert m.after == (f"apgd-ce-{norm}",)  # a cascade: only what APGD-CE left
        assert isinstance(m.attack, APGD) and m.attack.loss == "margin" and m.norm == norm
        kinds = {s.attack.kind for s in specs.values() if isinstance(s.attack, Noise) and s.norm == norm}
        assert kinds == {"uniform", "gaussian"}
        assert isinstance(specs[f"noise-uniform-{norm}"].attack, Noise)
        assert specs[f"noise-gaussian-{norm}"].attack.kind == "gaussian"
    assert not any(isinstance(s.attack, DeepFool) for s in specs.values())
    assert not any(isinstance(s.attack, DynamicAdversary) for s in specs.values())
    # every attack of the suite can say something about a model with a reject option
    assert all(s.attack.reject_aware or s.attack.black_box for s in specs.values())
    check_applicable(list(specs.values()), {"guarded": model})


def test_detector_suite_adds_the_threshold_aware_dynamic_adversary():
    model = _detected()
    assert model_kind(model) == "detector"
    specs = _by_name(default_suite(model, GRIDS))
    for norm in ("linf", "l2"):
        assert specs[f"apgd-margin-{norm}"].attack.loss == "margin"
        assert {f"noise-uniform-{norm}", f"noise-gaussian-{norm}"} <= set(specs)
        dynamic = [s for s in specs.values() if s.name.startswith("dynamic-hinge-") and s.norm == norm]
        assert bool(dynamic) is (norm == "linf"), norm  # L∞ only by default (SuiteSettings.dynamic_norms)
        for s in dynamic:
            assert isinstance(s.attack, DynamicAdversary) and s.attack.detector_loss == "hinge"
            assert s.name == f"dynamic-hinge-{s.attack.sigma:g}-{norm}"
            assert not s.start_from_peers and s.after == (f"apgd-margin-{norm}",)
        if norm != "linf":  # in L2 the margin attack alone (the self-check follows it)
            assert f"apgd-margin-from-best-{norm}" not in specs
            continue
        # then the margin again, from the best point of the cascade so far
        again = specs[f"apgd-margin-from-best-{norm}"]
        assert isinstance(again.attack, APGD) and again.attack.loss == "margin" and again.start_from_peers
        assert set(again.after) == {f"apgd-margin-{norm}"} | {s.name for s in dynamic}
        assert len({s.attack.sigma for s in dynamic}) == len(dynamic)
    assert not any(isinstance(s.attack, DeepFool) for s in specs.values())
    reject = set(_by_name(default_suite(_reject(), GRIDS)))
    # no APGD-CE on a detector (it creeps on rejected points without evading), the rest of the
    # reject-option suite, plus the threshold-aware dynamic adversary
    assert set(specs) - reject == {
        s for s in specs if s.startswith(("dynamic-hinge-", "apgd-margin-from-best"))
    }
    assert reject - set(specs) == {"apgd-ce-linf", "apgd-ce-l2"}
    check_applicable(list(specs.values()), {"detected": model})


def test_suite_settings_size_the_attacks():
    s = SuiteSettings(
        steps=7,
        targeted_steps=5,
        targets=3,
        dynamic_steps=6,
        sigmas=(0.3,),
        dynamic_norms=("linf", "l2"),
        deepfool_steps=4,
        cw_steps=3,
    )
    plain = _by_name(default_suite(_plain(), GRIDS, s))
    assert plain["apgd-ce-linf"].attack.steps == 7 and plain["apgd-t-l2"].attack.steps == 5
    assert plain["apgd-t-l2"].attack.targets == 3
    assert plain["deepfool-l2"].attack.steps == 4 and plain["cw-l2"].attack.steps == 3
    detected = _by_name(default_suite(_detected(), GRIDS, s))
    assert [n for n in detected if n.startswith("dynamic")] == [
        "dynamic-hinge-0.3-linf",
        "dynamic-hinge-0.3-l2",
    ]
    assert detected["dynamic-hinge-0.3-linf"].attack.steps == 6


def test_only_the_norms_given_and_unknown_norms_are_errors():
    specs = default_suite(_plain(), {"linf": [0.1]})
    assert {s.norm for s in specs} == {"linf"}
    assert not any(isinstance(s.attack, (DeepFool, CarliniWagnerL2)) for s in specs)
    for bad in ({"l1": [0.5]}, {"linf": [0.1], "l0": [2.0]}, {"Linf2": [0.1]}):
        with pytest.raises(ConfigError):
            default_suite(_plain(), bad)
    with pytest.raises(ConfigError):
        default_suite(_plain(), {})
    with pytest.raises(ConfigError):
        model_kind(torch.nn.Linear(2, 2))  # type: ignore[arg-type]


def test_suites_restrict_shared_specs_to_their_models():
    models = {"p": _plain(), "r": _reject(), "d": _detected()}
    specs = _by_name(suites(models, GRIDS))
    for norm in ("linf", "l2"):
        assert specs[f"apgd-ce-{norm}"].models == ("p", "r")  # not on the detector model
        assert specs[f"apgd-t-{norm}"].models == ("p",)
        assert specs[f"apgd-margin-{norm}"].models == ("r", "d")
        assert specs[f"noise-uniform-{norm}"].models == ("r", "d")
        dyn = [s for s in specs.values() if s.name.startswith("dynamic-hinge-") and s.norm == norm]
        assert bool(dyn) is (norm == "linf") and all(s.models == ("d",) for s in dyn)
    assert specs["deepfool-l2"].models == ("p",) and specs["cw-l2"].models == ("p",)
    # each model gets exactly its own default suite
    for name, model in models.items():
        own = {s.name for s in default_suite(model, GRIDS)}
        assert {n for n, s in specs.items() if s.applies_to(name)} == own
    # the restricted specs pass the applicability check that a config build runs
    check_applicable(list(specs.values()), models)
    # one kind of model only: nothing is restricted
    assert all(s.models is None for s in suites({"a": _plain(), "b": _plain()}, GRIDS))


# -- evaluate() without attacks ------------------------------------------------------------------
def _data(n: int = 8):
    clf = make_tiny_cnn()
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    return clf, x, clf.predict(x)


def test_evaluate_without_attacks_runs_the_default_suite(one_thread):
    clf, x, y = _data()
    ev = evasion.evaluate(clf, (x, y), epsilons={"linf": [0.03]})
    expected = {s.name for s in default_suite(clf, {"linf": [0.03]})}
    assert set(ev.specs) == expected | {"self-check-linf"}
    assert ev.norms == ["linf"]
    worst = ev.worst_case(clf.name, "linf")
    assert worst.epsilons == [0.0, 0.03] and worst.accuracy[0] == 1.0
    assert worst.accuracy[1] < 1.0  # the tiny random model is not robust at all
    for name in expected:
        assert ev.curve(clf.name, name).epsilons == [0.0, 0.03]
    with pytest.raises(ConfigError, match="epsilons"):
        evasion.evaluate(clf, (x, y), [AttackSpec(attacks.FGSM(), "linf", [0.1])], epsilons={"linf": [0.1]})


def test_evaluate_without_attacks_adapts_to_each_model(one_thread, monkeypatch):
    small = SuiteSettings(steps=5, targeted_steps=5, dynamic_steps=5, sigmas=(0.5,))
    monkeypatch.setattr(engine, "suites", functools.partial(suites, settings=small))
    clf, x, y = _data()
    models = {"plain": clf, "guarded": _reject(), "detected": _detected()}
    ev = evasion.evaluate(models, (x, y), epsilons={"linf": [0.03]})
    assert set(ev.attacks_of("plain")) == {"apgd-ce-linf", "apgd-t-linf", "self-check-linf"}
    assert "noise-uniform-linf" in ev.attacks_of("guarded")
    assert "dynamic-hinge-0.5-linf" in ev.attacks_of("detected")
    assert "dynamic-hinge-0.5-linf" not in ev.attacks_of("guarded")
    assert ev.specs["apgd-ce-linf"].attack == "APGD(steps=5)"
    cells = {(m, a) for (m, a) in ev.attack_columns}
    assert ("plain", "noise-uniform-linf") not in cells and ("guarded", "noise-uniform-linf") in cells


# -- configs: attacks that cannot evaluate a model ----------------------------------------------
def _config(attack: dict, **top) -> dict:
    raw = {
        "data": {"name": "digits", "samples": 8},
        "models": [
            {"name": "bare", "model": "mnist-cnn"},
            {"name": "guarded", "model": "mnist-cnn", "defense": "reject"},
        ],
        "attacks": [attack],
    }
    raw.update(top)
    return raw


def _tiny_data() -> Dataset:
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return Dataset(x, torch.arange(8) % 10, [str(i) for i in range(10)])


def _tiny_models() -> dict:
    return {"bare": _plain(), "guarded": _reject()}


def _specs(raw: dict) -> list[AttackSpec]:
    return attack_specs(parse_config(raw), _tiny_data())


def test_a_reject_blind_attack_on_a_reject_model_is_refused_with_the_reason():
    specs = _specs(_config({"attack": "deepfool", "norm": "l2", "epsilons": [0.5]}))
    assert [s.name for s in specs] == ["deepfool-l2"] and specs[0].models is None
    with pytest.raises(ConfigError) as info:
        check_applicable(specs, _tiny_models())
    message = str(info.value)
    assert "deepfool-l2" in message and "guarded" in message and "reject option" in message
    assert "'bare'" in message  # it suggests the undefended model


def test_restricting_the_attack_to_the_undefended_model_makes_it_valid():
    specs = _specs(_config({"attack": "deepfool", "norm": "l2", "epsilons": [0.5], "models": ["bare"]}))
    assert specs[0].models == ("bare",)
    assert specs[0].applies_to("bare") and not specs[0].applies_to("guarded")
    check_applicable(specs, _tiny_models())


@pytest.mark.parametrize(
    "attack",
    [
        {"attack": "pgd", "norm": "linf", "epsilons": [0.1], "params": {"steps": 2}},
        {"attack": "noise", "norm": "l2", "epsilons": [0.5]},
        {"attack": "dynamic", "norm": "linf", "epsilons": [0.1], "params": {"detector_loss": "hinge"}},
    ],
)
def test_reject_aware_and_black_box_attacks_may_run_on_a_reject_model(attack):
    check_applicable(_specs(_config(attack)), _tiny_models())


def test_an_unknown_model_in_an_attack_table_is_named():
    with pytest.raises(ConfigError, match="'nope'"):
        parse_config(_config({"attack": "deepfool", "norm": "l2", "epsilons": [0.5], "models": ["nope"]}))
    with pytest.raises(ConfigError):
        parse_config(_config({"attack": "pgd", "norm": "linf", "epsilons": [0.1], "models": "bare"}))


def test_a_config_without_attacks_needs_epsilon_grids():
    raw = _config({"attack": "pgd", "norm": "linf"})
    raw.pop("attacks")
    with pytest.raises(ConfigError, match=r"\[\[attacks\]\]"):
        parse_config(raw)
    config = parse_config({**raw, "epsilons": {"linf": [0.1, 0.2]}})
    assert config.attacks == () and config.epsilons == {"linf": (0.1, 0.2)}
    specs = _by_name(suites(_tiny_models(), config.epsilons))
    assert specs["apgd-margin-linf"].models == ("guarded",)
    check_applicable(list(specs.values()), _tiny_models())


def test_attack_models_restriction_reaches_the_specs():
    raw = _config({"attack": "pgd", "norm": "linf", "epsilons": [0.1], "models": ["guarded"]})
    raw["attacks"].append({"attack": "fgsm", "norm": "linf", "epsilons": [0.1], "name": "fgsm-all"})
    config = parse_config(raw)
    assert config.attacks[0].models == ("guarded",) and config.attacks[1].models == ()
    specs = _by_name(attack_specs(config, _tiny_data()))
    assert specs["pgd-linf"].models == ("guarded",)
    assert specs["fgsm-all"].models is None
    again = parse_config(__import__("tomllib").loads(config.to_toml()))
    assert again.attacks == config.attacks


def test_evaluate_refuses_specs_restricted_to_unknown_models():
    clf, x, y = _data(4)
    spec = AttackSpec(attacks.FGSM(), "linf", [0.1], models=["elsewhere"])
    with pytest.raises(UnknownNameError):
        evasion.evaluate({"here": clf}, (x, y), [spec])

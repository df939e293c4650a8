"""`defenses.make`: the registry of defences, its parameter records, and the reject defence it builds."""

from __future__ import annotations

import pytest
import torch

from evasion import datasets, defenses, models
from evasion.defenses import DetectorParams, RejectParams
from evasion.defenses.reject import ThresholdReject, calibrate_threshold
from evasion.errors import ConfigError, UnknownNameError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_unknown_defence_lists_the_valid_names():
    clf = models.load("digits-mlp")
    train = datasets.load("digits", split="train")
    with pytest.raises(UnknownNameError) as info:
        defenses.make("smoothing", clf, train=train)
    text = str(info.value)
    assert "unknown defence 'smoothing'" in text and "detector" in text and "reject" in text, text
    with pytest.raises(UnknownNameError):
        defenses.parameters("smoothing", {})


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: DetectorParams(fpr=2), ["fpr", "2"]),
        (lambda: DetectorParams(fpr=float("nan")), ["fpr", "nan"]),
        (lambda: DetectorParams(samples=5), ["samples", "20", "5"]),
        (lambda: DetectorParams(epochs=1.5), ["epochs", "1.5"]),
        (lambda: DetectorParams(width=17), ["width", "16"]),
        (lambda: DetectorParams(layer=" "), ["layer"]),
        (lambda: DetectorParams(attack="nope"), ["attack", "unknown attack 'nope'"]),
        (lambda: DetectorParams(attack="cw-l2"), ["attack", "L∞"]),
        (lambda: RejectParams(fnr_increase=1.0), ["fnr_increase", "[0, 1)"]),
        (lambda: RejectParams(samples=True), ["samples", "True"]),
        (lambda: defenses.parameters("reject", {"fnr": 0.1}), ["unknown defense_params fnr", "fnr_increase"]),
    ],
)
def test_bad_parameters_raise_config_errors_that_name_the_key(make, words):
    with pytest.raises(ConfigError) as info:
        make()
    text = str(info.value)
    assert "\n" not in text and all(w in text for w in words), text


def test_parameters_are_frozen_records_with_the_documented_defaults():
    p = DetectorParams()
    assert (p.layer, p.attack, p.epsilon, p.samples, p.fpr, p.epochs, p.width, p.seed) == (
        "pool1",
        "bim",
        0.16,
        1000,
        0.05,
        3,
        0.25,
        0,
    )
    assert p.validation_samples == 250
    assert RejectParams() == RejectParams(fnr_increase=0.05, samples=2000)
    assert isinstance(DetectorParams(epsilon=1).epsilon, float)  # numbers are normalised
    with pytest.raises(AttributeError):
        p.fpr = 0.1  # type: ignore[misc]


def test_registry_builds_the_reject_model_of_the_old_cli_path():
    clf = models.load("digits-mlp")
    train = datasets.load("digits", split="train")
    defended = defenses.make("reject", clf, train=train, label="mlp+reject", fnr_increase=0.1, samples=500)
    # the calibration the CLI did before the registry existed
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:500]
    calibration = train.subset(order)
    scores = clf.class_scores(clf.scores(calibration.x))
    theta = calibrate_threshold(scores, calibration.y.to(scores.device), 0.1)
    old = ThresholdReject(clf, theta, name="mlp+reject")
    assert isinstance(defended, ThresholdReject) and defended.name == "mlp+reject"
    assert torch.equal(defended.theta, old.theta)
    x = datasets.load("digits", split="test").x[:64]
    assert torch.equal(defended(x), old(x)) and torch.equal(defended.predict(x), old.predict(x))

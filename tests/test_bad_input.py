"""Bad input gets a typed, one-line error that names the problem (never a deep torch trace)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from evasion import ThreatModel, attacks
from evasion.errors import ConfigError, InputError, ModelError, UnknownNameError
from evasion.models.classifier import Classifier

from .conftest import make_tiny_cnn

PGD = attacks.PGD(steps=2)


def _assert_one_line(exc: pytest.ExceptionInfo, *words: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


@pytest.fixture
def model():
    return make_tiny_cnn()


@pytest.fixture
def xy():
    return torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])


def test_wrong_rank(model, xy):
    x, y = xy
    with pytest.raises(InputError) as e:
        PGD(model, x[0], y, threat=ThreatModel("linf", 0.1))
    _assert_one_line(e, "shape", "rank")


def test_wrong_channel_count(model, xy):
    _, y = xy
    with pytest.raises(InputError) as e:
        PGD(model, torch.rand(4, 3, 8, 8), y, threat=ThreatModel("linf", 0.1))
    _assert_one_line(e, "channels", "(4, 3, 8, 8)")


def test_integer_images(model, xy):
    _, y = xy
    with pytest.raises(InputError) as e:
        PGD(model, torch.randint(0, 255, (4, 1, 8, 8), dtype=torch.uint8), y, threat=ThreatModel("linf", 0.1))
    _assert_one_line(e, "floating-point", "uint8", "255")


def test_values_outside_bounds(model, xy):
    x, y = xy
    with pytest.raises(InputError) as e:
        PGD(model, x * 255, y, threat=ThreatModel("linf", 0.1))
    _assert_one_line(e, "outside", "bounds", "255")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_and_inf_pixels(model, xy, bad):
    x, y = xy
    x = x.clone()
    x[1, 0, 2, 2] = bad
    with pytest.raises(InputError) as e:
        PGD(model, x, y, threat=ThreatModel("linf", 0.1))
    _assert_one_line(e, "NaN or infinite")


@pytest.mark.parametrize("labels", [torch.tensor([0, 1, 2, 10]), torch.tensor([0, -1, 2, 3])])
def test_labels_out_of_range(model, xy, labels):
    x, _ = xy
    with pytest.raises(InputError) as e:
        PGD(model, x, labels, threat=ThreatModel("linf", 0.1))
    _assert_one_line(e, "labels", "outside [0, 10)")


def test_labels_wrong_shape_or_dtype(model, xy):
    x, y = xy
    with pytest.raises(InputError, match="one label per input"):
        PGD(model, x, y[:3], threat=ThreatModel("linf", 0.1))
    with pytest.raises(InputError, match="integer"):
        PGD(model, x, y.float(), threat=ThreatModel("linf", 0.1))


def test_target_equal_to_label(model, xy):
    x, y = xy
    with pytest.raises(InputError) as e:
        PGD(model, x, y, threat=ThreatModel("linf", 0.1, targeted=True), target=y.clone())
    _assert_one_line(e, "target equals the true label")


def test_targeted_without_target_and_target_without_targeted(model, xy):
    x, y = xy
    with pytest.raises(InputError, match="pass target="):
        PGD(model, x, y, threat=ThreatModel("linf", 0.1, targeted=True))
    with pytest.raises(InputError, match="untargeted"):
        PGD(model, x, y, threat=ThreatModel("linf", 0.1), target=(y + 1) % 10)


@pytest.mark.parametrize("eps", [-0.1, math.nan, "0.1"])
def test_bad_epsilon(eps):
    with pytest.raises(ConfigError) as e:
        ThreatModel("linf", eps)
    _assert_one_line(e, "epsilon")


def test_unknown_norm_lists_valid_ones():
    with pytest.raises(UnknownNameError) as e:
        ThreatModel("l3", 0.1)
    _assert_one_line(e, "unknown norm 'l3'", "linf", "l2", "l1")


def test_unsupported_norm_for_attack(model, xy):
    x, y = xy
    with pytest.raises(ConfigError, match="does not support the l1 norm"):
        attacks.APGD()(model, x, y, threat=ThreatModel("l1", 1.0))


def test_mask_of_wrong_shape(model, xy):
    x, y = xy
    with pytest.raises(InputError) as e:
        PGD(model, x, y, threat=ThreatModel("linf", 0.1, mask=torch.ones(5, 5, dtype=torch.bool)))
    _assert_one_line(e, "mask of shape (5, 5)", "(4, 1, 8, 8)")


def test_mask_that_frees_nothing_or_is_not_boolean():
    with pytest.raises(ConfigError, match="no pixel free"):
        ThreatModel("linf", 0.1, mask=torch.zeros(8, 8, dtype=torch.bool))
    with pytest.raises(ConfigError, match=r"torch\.bool"):
        ThreatModel("linf", 0.1, mask=torch.ones(8, 8))


def test_bounds_inverted():
    with pytest.raises(ConfigError, match="lower <= upper"):
        ThreatModel("linf", 0.1, bounds=(1.0, 0.0))


def test_model_output_not_n_by_k(xy):
    x, y = xy
    bad = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 7)), 10, input_shape=(1, 8, 8))
    with pytest.raises(ModelError) as e:
        PGD(bad, x, y, threat=ThreatModel("linf", 0.1))
    _assert_one_line(e, "(4, 7)", "(N, 10)")


def test_plain_module_in_training_mode(xy):
    x, y = xy
    net = make_tiny_cnn().module.train()
    with pytest.raises(ModelError) as e:
        PGD(net, x, y, threat=ThreatModel("linf", 0.1))
    _assert_one_line(e, "training mode", "eval()")


@pytest.mark.parametrize(
    "make",
    [
        lambda: attacks.PGD(steps=0),
        lambda: attacks.PGD(step_size=-1.0),
        lambda: attacks.PGD(loss="hinge"),
        lambda: attacks.PGD(restarts=3, random_start=False),
        lambda: attacks.FGSM(steps=3),
        lambda: attacks.APGD(step_size=0.1),
        lambda: attacks.CarliniWagnerL2(binary_search_steps=0),
        lambda: attacks.DeepFool(candidates=1),
        lambda: attacks.BIM(keep="first"),
    ],
)
def test_attack_configs_are_validated(make):
    with pytest.raises(ConfigError):
        make()


def test_unknown_attack_name_lists_valid_ones():
    with pytest.raises(UnknownNameError) as e:
        attacks.get("no-such-attack")
    _assert_one_line(e, "unknown attack 'no-such-attack'", "pgd", "deepfool")
    assert attacks.get("CW") is attacks.CarliniWagnerL2

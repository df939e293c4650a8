"""Detectability (Metzen et al. footnote 3), ROC AUC, TPR at 5% FPR and generalisation matrices."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from evasion.defenses.detector import Detector
from evasion.errors import InputError
from evasion.evaluation.detectability import detectability, detectability_from_scores, generalisation_matrix
from evasion.models import Classifier


def test_perfect_and_chance_detectors():
    clean, adv = torch.full((50,), 0.1), torch.full((50,), 0.9)
    d = detectability_from_scores(clean, adv)
    assert d.accuracy == 1.0 and d.roc_auc == 1.0 and d.tpr_at_fpr == 1.0 and d.false_positive_rate == 0.0
    same = detectability_from_scores(clean, clean.clone())
    assert same.accuracy == 0.5 and same.roc_auc == 0.5
    assert detectability_from_scores(adv, clean).roc_auc == 0.0


def test_hand_computed_example():
    clean = torch.tensor([0.1, 0.2, 0.3, 0.6])  # one false positive at 0.5
    adv = torch.tensor([0.4, 0.7, 0.8, 0.9])  # one miss at 0.5
    d = detectability_from_scores(clean, adv, fpr=0.25)
    assert d.accuracy == pytest.approx(6 / 8)
    assert d.roc_auc == pytest.approx(15 / 16)  # only (0.6, 0.4) is ordered wrongly
    assert d.tpr_at_fpr == 1.0  # the threshold 0.3 flags 1 of 4 clean inputs and every adversarial
    assert d.true_positive_rate == 0.75 and d.false_positive_rate == 0.25
    assert d.n_clean == 4 and d.to_dict()["tpr_at_0.25_fpr"] == 1.0


class _Offset(nn.Module):
    """p_adv > 0.5 exactly when the mean pixel exceeds 0.55."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return 50.0 * (h.mean(dim=(1, 2, 3)) - 0.55)


def _offset_detector() -> Detector:
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(input=nn.Identity(), flatten=nn.Flatten(), fc=nn.Linear(64, 10)))
    return Detector.attach(Classifier(net, 10, input_shape=(1, 8, 8)), "input", _Offset())


def test_detectability_of_a_detector_and_keep_filter():
    det = _offset_detector()
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.2 + 0.4  # mean ~0.5
    adv = x + 0.2
    assert detectability(det, x, adv).accuracy == 1.0
    keep = torch.zeros(40, dtype=torch.bool)
    keep[:10] = True
    d = detectability(det, x, x.clone(), keep=keep)
    assert d.n_clean == 10 and d.accuracy == 0.5
    with pytest.raises(InputError, match="no pairs left"):
        detectability(det, x, adv, keep=torch.zeros(40, dtype=torch.bool))
    with pytest.raises(InputError, match="one adversarial example per clean input"):
        detectability(det, x, adv[:5])


def test_generalisation_matrix():
    det = _offset_detector()
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.2 + 0.4
    m = generalisation_matrix({"a": det, "b": det}, {"big": (x, x + 0.2), "none": (x, x.clone())}, title="t")
    assert m.rows == ["a", "b"] and m.columns == ["big", "none"]
    assert m.values == [[1.0, 0.5], [1.0, 0.5]]
    assert m.to_dict()["title"] == "t"

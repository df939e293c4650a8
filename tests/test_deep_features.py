"""Deep-feature classifiers: SVM heads exported from scikit-learn, RLS, online learning, layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evasion import ThreatModel
from evasion.attacks.max_confidence import MaxConfidence
from evasion.errors import InputError, ModelError, UnknownNameError
from evasion.models.deep_features import DeepFeatureClassifier, LayerFeatures, extract_features
from evasion.models.heads import (
    PAPER_C_GRID,
    PAPER_GAMMA_GRID,
    LinearSVMHead,
    RBFSVMHead,
    RLSHead,
    one_vs_all_cv,
    out_of_fold_scores,
)

from .conftest import TinyCNN


def _features(n: int = 25, d: int = 16, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(classes, d, generator=g)
    y = torch.arange(classes).repeat_interleave(n)
    return centres[y] + torch.randn(len(y), d, generator=g), y


@pytest.mark.parametrize("make", [lambda: LinearSVMHead(), lambda: RBFSVMHead(), lambda: LinearSVMHead(0.5)])
def test_torch_export_gives_sklearns_decision_values(make):
    z, y = _features()
    zt, _ = _features(seed=1)
    head = make().fit(z, y)
    ours, theirs = head(zt), head.sklearn_decision_function(zt)
    assert ours.dtype == zt.dtype and ours.shape == (len(zt), 4)
    assert float((ours.double() - theirs).abs().max()) < 1e-4
    assert torch.equal(ours.argmax(1), theirs.argmax(1))


def test_cross_validation_uses_the_papers_grids_and_shares_work():
    z, y = _features(n=15)
    grid = one_vs_all_cv(z, y, PAPER_C_GRID, PAPER_GAMMA_GRID)
    assert set(grid.accuracy) == {(c, g) for c in PAPER_C_GRID for g in PAPER_GAMMA_GRID}
    assert all(grid.reject_accuracy[k] <= grid.accuracy[k] for k in grid.accuracy)
    plain, adv = RBFSVMHead().fit(z, y, cv=grid), RBFSVMHead(cv_threshold=0.0).fit(z, y, cv=grid)
    assert plain.cv is grid and adv.cv is grid
    assert (plain.c_, plain.gamma_) == grid.best() and (adv.c_, adv.gamma_) == grid.best(reject=True)


def test_predicting_before_fitting_is_a_clear_error():
    for head in (LinearSVMHead(), RBFSVMHead(), RLSHead()):
        with pytest.raises(ModelError, match="not fitted"):
            head(torch.zeros(2, 16))
    clf = DeepFeatureClassifier(LinearSVMHead(), nn.Identity(), input_shape=(16,))
    with pytest.raises(ModelError, match="not fitted"):
        clf.predict(torch.zeros(2, 16))


def test_features_of_the_wrong_width_are_refused():
    z, y = _features()
    head = LinearSVMHead(1.0).fit(z, y)
    with pytest.raises(InputError, match=r"\(N, 16\)"):
        head(torch.zeros(3, 5))


def test_rls_online_updates_equal_a_batch_fit():
    z, y = _features()
    batch = RLSHead(0.5).fit(z, y)
    online = RLSHead(0.5).fit(z[::2], y[::2])
    online.learn(z[1::2], y[1::2])
    assert torch.allclose(online.weight, batch.weight, atol=1e-8)


def test_rls_learns_a_new_class_without_refitting():
    z, y = _features()
    head = RLSHead().fit(z, y)
    novel = torch.randn(12, 16, generator=torch.Generator().manual_seed(5)) + 8.0
    head.learn(novel, torch.full((12,), 4))
    assert head.num_classes == 5
    assert bool((head(novel).argmax(1) == 4).all())
    with pytest.raises(InputError):
        head.learn(novel, torch.full((12,), 9))


def test_svm_heads_learn_new_examples_and_classes():
    z, y = _features()
    head = RBFSVMHead(10.0, 0.01).fit(z, y)
    novel = torch.randn(10, 16, generator=torch.Generator().manual_seed(6)) - 8.0
    head.learn(novel, torch.full((10,), 4))
    assert head.num_classes == 5 and head.dual.shape[1] == 5
    assert bool((head(novel).argmax(1) == 4).all())


def test_out_of_fold_scores_keep_the_hyperparameters():
    z, y = _features()
    head = LinearSVMHead(0.1).fit(z, y)
    scores = out_of_fold_scores(head, z, y)
    assert scores.shape == (len(y), 4)
    assert float((scores.argmax(1) == y).float().mean()) > 0.9


@pytest.fixture
def pixel_model() -> tuple[DeepFeatureClassifier, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = TinyCNN(channels=3, classes=10, size=8).eval()
    x = torch.rand(40, 3, 8, 8)
    y = torch.arange(4).repeat(10)
    x[y == 1, 0] *= 0.3
    x[y == 2, 1] *= 0.3
    x[y == 3, 2] *= 0.3
    model = DeepFeatureClassifier(
        RBFSVMHead(), net, layer="conv2", input_shape=(3, 8, 8), class_names=list("abcd")
    )
    return model.fit(x, y), x, y


def test_end_to_end_gradients_reach_the_pixels(pixel_model):
    model, x, y = pixel_model
    xx = x[:4].clone().requires_grad_(True)
    model(xx)[:, 0].sum().backward()
    assert xx.grad is not None and float(xx.grad.abs().sum()) > 0
    r = MaxConfidence(steps=5)(model, x[:8], y[:8], threat=ThreatModel("l2", 1.0))
    assert r.adversarial.shape == (8, 3, 8, 8) and int(r.backwards.min()) >= 1


def test_named_layer_features_and_unknown_layers():
    net = TinyCNN(channels=3, classes=10, size=8).eval()
    feats = LayerFeatures(net, "conv2")(torch.rand(2, 3, 8, 8))
    assert feats.shape == (2, 16)
    flat = LayerFeatures(net, "conv1", pool=False)(torch.rand(2, 3, 8, 8))
    assert flat.shape == (2, 8 * 8 * 8)
    with pytest.raises(UnknownNameError, match=r"layer 'conv9'.*conv1"):
        LayerFeatures(net, "conv9")


@pytest.mark.parametrize("head", [RLSHead(0.1), LinearSVMHead(10.0)])
def test_learn_adds_a_named_class(head):
    z, y = _features()
    x = torch.sigmoid(z / 4)  # "images" in [0, 1] with an identity extractor
    model = DeepFeatureClassifier(head, nn.Identity(), input_shape=(16,), class_names=list("abcd")).fit(x, y)
    novel = torch.full((6, 16), 0.99)
    novel[:, ::2] = 0.01
    model.learn(novel, "checker")
    assert model.num_classes == 5 and model.class_names[-1] == "checker"
    assert bool((model.predict(novel) == 4).all())
    model.learn(novel[:2], 0)  # a correction with a known class index
    with pytest.raises(InputError):
        model.learn(novel[:1], 17)


def test_feature_cache_is_written_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("EVASION_CACHE", str(tmp_path))
    net = LayerFeatures(TinyCNN(channels=3, classes=10, size=8).eval(), "conv2")
    x = torch.rand(6, 3, 8, 8)
    first = extract_features(net, x, batch_size=4, cache_key="abc")
    assert len(list((tmp_path / "features").glob("abc-*.npz"))) == 1

    def broken(x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("should have been read from the cache")

    monkeypatch.setattr(net, "forward", broken)
    assert torch.equal(extract_features(net, x, cache_key="abc"), first)
    with pytest.raises(AssertionError, match="cache"):
        extract_features(net, x, cache_key="other")

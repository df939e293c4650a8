"""`evasion reproduce icub`: intervals over attacked images, verdicts on them, session calibration,
and the faster attacked network (the statistics of issue 14, on synthetic numbers and tiny models)."""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from evasion.attacks.max_confidence import MaxConfidenceObjective
from evasion.cli.main import main
from evasion.defenses.reject import ThresholdReject, calibrate_threshold, false_negative_rates
from evasion.errors import ConfigError
from evasion.experiments import icub, icub_report
from evasion.experiments.icub_records import CurvePoints
from evasion.models.classifier import Classifier
from evasion.models.heads import LinearSVMHead

EPS = [0.0, 0.1, 0.2, 0.3]


def _points(status: np.ndarray) -> CurvePoints:
    """A split's curve from per-image statuses (0 correct, 1 rejected, 2 misclassified)."""
    acc = (status == 0).mean(0)
    rej = (status == 1).mean(0)
    eps = np.asarray(EPS)
    defended = acc + np.where(eps > 0, rej, 0.0)
    return CurvePoints(
        list(EPS),
        acc.tolist(),
        rej.tolist(),
        defended.tolist(),
        (status == 2).mean(0).tolist(),
        status.tolist(),
    )


def _status(n: int, p_correct: list[float], rng: np.random.Generator, p_reject: float = 0.0) -> np.ndarray:
    """Per-image statuses: correct with the given probability per epsilon, else rejected or broken."""
    u = rng.random((n, len(EPS)))
    r = rng.random((n, len(EPS)))
    out = np.where(u < np.asarray(p_correct), 0, np.where(r < p_reject, 1, 2))
    out[:, 0] = np.where(out[:, 0] == 1, 2, out[:, 0])  # no clean rejections here
    return out


def _avg(statuses: list[np.ndarray], resamples: int = 400):
    return icub_report.average_curves([{"a": {"m": _points(s)}} for s in statuses], resamples=resamples)["a"][
        "m"
    ]


def test_intervals_contain_the_estimate_and_shrink_with_more_images():
    rng = np.random.default_rng(0)
    p = [0.95, 0.6, 0.3, 0.1]
    small = _avg([_status(20, p, rng), _status(20, p, rng)])
    large = _avg([_status(400, p, rng), _status(400, p, rng)])
    for c in (small, large):
        assert c.auc_interval is not None and c.auc_defended_interval is not None
        assert c.auc_interval.contains(c.auc) and c.auc_interval.estimate == pytest.approx(c.auc)
        for band, value in zip(c.accuracy_band, c.accuracy):
            assert band.contains(value) and band.estimate == pytest.approx(value)
    assert large.auc_interval.width < small.auc_interval.width / 2
    assert max(b.width for b in large.defended_band) < max(b.width for b in small.defended_band)


def test_unequal_splits_are_averaged_equally_and_resampled_within_splits():
    rng = np.random.default_rng(1)
    a, b = _status(10, [1, 1, 1, 1], rng), _status(50, [0, 0, 0, 0], rng)  # all correct / all broken
    c = _avg([a, b])
    assert c.accuracy == pytest.approx([0.5] * 4)  # mean of the split means, not 10/60
    assert c.auc == pytest.approx(0.5) and c.auc_interval is not None
    # each split is constant, so stratified resampling cannot move the mean: a zero-width interval
    assert c.auc_interval.low == pytest.approx(0.5) and c.auc_interval.high == pytest.approx(0.5)
    assert c.split == [0] * 10 + [1] * 50 and len(c.status) == 60


def test_paired_intervals_and_their_verdicts():
    rng = np.random.default_rng(2)
    s = _status(200, [0.9, 0.5, 0.3, 0.1], rng)
    base = _avg([s])
    better = _avg([np.where(rng.random(s.shape) < 0.5, 0, s)])  # the same images, half of them repaired
    iv = icub_report.paired(base, better, resamples=400)
    assert iv is not None and iv.low > 0 and iv.contains(better.auc_defended - base.auc_defended)
    same = icub_report.paired(base, base, resamples=400)
    assert same is not None and same.low == same.high == 0.0
    with pytest.raises(ValueError, match="same images"):
        icub_report.paired(base, _avg([s[:100]]))


def _results(n: int, gain: float, seed: int = 0):
    """Synthetic results whose SVM-adv beats SVM-RBF by ``gain`` (fraction of images repaired)."""
    from tests.test_reproduce_icub import _results as base_results

    rng = np.random.default_rng(seed)
    per_split = []
    for _ in range(2):
        svm = _status(n, [0.95, 0.4, 0.2, 0.05], rng)
        rbf = _status(n, [0.95, 0.4, 0.2, 0.05], rng)
        adv = np.where((rng.random(rbf.shape) < gain) & (np.arange(len(EPS)) > 0), 1, rbf)
        cons = np.where((rng.random(rbf.shape) < 0.3) & (np.arange(len(EPS)) > 0), 1, adv)
        models = {"SVM": svm, "SVM-RBF": rbf, "SVM-adv": adv, "SVM-adv +5% FNR": cons}
        per_split.append(
            {a: {m: _points(st) for m, st in models.items()} for a in ("error-generic", "error-specific")}
        )
    results = base_results()
    settings = replace(results.settings, resamples=300)
    return replace(
        results, settings=settings, curves={"7 objects": icub_report.average_curves(per_split, 300)}
    )


def _finding(results, start: str):
    return next(i for i in icub_report.findings(results) if i.text.startswith(start))


def test_a_verdict_is_decided_on_the_interval():
    clear = _finding(_results(150, 0.5), "SVM-adv beats SVM-RBF")
    assert clear.status == "holds" and clear.ok
    item = next(i for i in icub_report.findings(_results(150, 0.5)) if "SVM-adv AUC - SVM-RBF AUC" in i.text)
    assert "SVM-adv AUC - SVM-RBF AUC = 0." in item.text and "[" in item.text and item.status == "holds"
    # a small gain on few images: the intervals straddle 0, so the finding is inconclusive, not "holds"
    weak = _finding(_results(12, 0.02, seed=3), "SVM-adv beats SVM-RBF")
    assert weak.status == "inconclusive" and not weak.ok and weak.label == "finding inconclusive"
    # no gain at all on many images: the interval sits at or below 0
    none = [
        i for i in icub_report.findings(_results(200, 0.0, seed=4)) if "SVM-adv AUC - SVM-RBF AUC" in i.text
    ]
    assert all(i.status != "holds" for i in none)


def test_the_per_image_outcomes_are_checked_and_serialised():
    results = _results(30, 0.3)
    checks = [i for i in icub_report.checks(results) if "per-image outcomes" in i.text]
    assert len(checks) == 1 and checks[0].ok
    curve = results.curves["7 objects"]["error-generic"]["SVM-adv"]
    broken = replace(curve, status=[[2] * len(EPS)] * len(curve.status))
    bad = replace(results, curves={"7 objects": {"error-generic": {"SVM-adv": broken}}})
    assert not next(i for i in icub_report.checks(bad) if "per-image outcomes" in i.text).ok
    data = curve.to_dict()
    assert data["auc_interval"]["low"] <= data["auc"] <= data["auc_interval"]["high"]
    assert len(data["status"]) == 60 and len(data["defended_band"]) == len(EPS)
    auc = icub_report.acceptance(results).auc["7 objects|error-generic"]["SVM-adv"]
    assert auc["images"] == 60 and auc["auc_defended_interval"][0] <= auc["auc_defended"]


# -- session calibration -----------------------------------------------------------------------
def _sessions(n: int = 60, classes: int = 3, sessions: int = 4, seed: int = 0):
    """Features with a per-session shift (the drift a new acquisition day brings)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, 8, generator=g) * 3
    shift = torch.randn(sessions, 8, generator=g) * 1.2
    y = torch.arange(classes).repeat_interleave(n)
    y = y.repeat(sessions)
    session = torch.arange(sessions).repeat_interleave(n * classes)
    z = centres[y] + shift[session] + torch.randn(len(y), 8, generator=g)
    return z.float(), y, session


def test_calibration_on_held_out_sessions_gives_five_percent_more_rejection_there():
    z, y, session = _sessions(n=40)
    head = LinearSVMHead(c=1.0).fit(z, y)
    scores = icub.session_scores(head, z, y, session)
    theta = calibrate_threshold(scores, y, 0.05)
    extra = false_negative_rates(scores, y, theta) - false_negative_rates(scores, y, 0.0)
    assert extra.numpy() == pytest.approx([0.05] * 3, abs=0.01)  # per class, over the held-out sessions
    base, cons = icub.reject_rates(scores, y, 0.0), icub.reject_rates(scores, y, theta)
    assert cons[1] - base[1] == pytest.approx(0.05, abs=0.02)
    for k in range(4):  # and on each held-out session, about 5% more (each session's own noise aside)
        rows = session == k
        more = (
            icub.reject_rates(scores[rows], y[rows], theta)[1]
            - icub.reject_rates(scores[rows], y[rows], 0.0)[1]
        )
        assert 0.0 <= more <= 0.12
    # the rule is ThresholdReject's: reject iff max_k (f_k - theta_k) <= 0
    clf = Classifier(nn.Identity(), 3, input_shape=(3,), bounds=(-1e3, 1e3))
    pred = ThresholdReject(clf, theta).predict(scores.float())
    assert cons[1] == pytest.approx(float((pred < 0).double().mean()), abs=1e-9)


def test_fit_split_reports_drift_per_session_and_calibrates_as_asked(monkeypatch):
    grid = {"c_grid": (1.0, 10.0)}  # a small grid: the test is about the drift, not the CV
    monkeypatch.setattr(icub, "PAPER_C_GRID", grid["c_grid"])
    monkeypatch.setattr(icub, "PAPER_GAMMA_GRID", (0.01, 0.1))
    monkeypatch.setattr(icub, "LinearSVMHead", functools.partial(icub.LinearSVMHead, **grid))
    monkeypatch.setattr(
        icub, "RBFSVMHead", functools.partial(icub.RBFSVMHead, gamma_grid=(0.01, 0.1), **grid)
    )
    z, y, session = _sessions(n=8)
    data = icub.SetData(
        "3 objects", "synthetic", torch.zeros(len(y), 3, 4, 4), y, ["a", "b", "c"], session, z, "0", None
    )
    settings = replace(icub.QUICK, cv_per_class=6)
    extractor = nn.Sequential(nn.Flatten(), nn.Linear(48, 8))
    paper = icub.fit_split(data, 3, settings, 0, extractor)
    by_session = icub.fit_split(data, 3, replace(settings, calibrate="sessions"), 0, extractor)
    rows = {d.model: d for d in paper.facts.drift}
    assert set(rows) == {"SVM-adv", "+5% FNR (out-of-fold)", "+5% FNR (sessions)"}
    assert set(rows["SVM-adv"].sessions) == {0, 1, 2, 3} and rows["SVM-adv"].test_session == 3
    assert rows["+5% FNR (out-of-fold)"].attacked and not rows["+5% FNR (sessions)"].attacked
    assert {d.model: d.attacked for d in by_session.facts.drift}["+5% FNR (sessions)"]
    theta = {d.model: d for d in by_session.facts.drift}
    model = by_session.models["SVM-adv +5% FNR"]
    assert isinstance(model, ThresholdReject)
    test_rows = session == 3
    scores = by_session.models["SVM-adv"].base.head(z[test_rows])
    assert theta["+5% FNR (sessions)"].sessions[3] == pytest.approx(
        icub.reject_rates(scores, y[test_rows], model.theta)
    )
    assert by_session.facts.calibrate == "sessions" and paper.facts.to_dict()["calibrate"] == "out-of-fold"
    # the test session's clean rejection in the drift table is the model facts' own
    assert rows["SVM-adv"].sessions[3][1] == pytest.approx(paper.facts.models["SVM-adv"].clean_rejected)


def test_calibration_option_is_checked_before_anything_runs():
    with pytest.raises(ConfigError, match="calibrate must be one of"):
        icub.run_experiment(replace(icub.QUICK, calibrate="by-day"))
    with pytest.raises(SystemExit) as exit_info:  # argparse's own usage error
        main(["reproduce", "icub", "--quick", "--calibrate", "by-day"])
    assert exit_info.value.code == 2


# -- the attacked network -------------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.bn_in = nn.BatchNorm2d(3)
        with torch.no_grad():
            for bn in (self.bn, self.bn_in):
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2)
                bn.weight.uniform_(0.5, 2)
                bn.bias.uniform_(-1, 1)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x))).mean((2, 3))


def test_attack_network_is_the_same_function_and_falls_back_when_folding_is_wrong():
    torch.manual_seed(0)
    net = _Net().eval()
    x = torch.rand(5, 3, 8, 8)
    fast, diff = icub.attack_network(net, x)
    assert fast is not net and diff < 1e-5 and isinstance(fast.bn, nn.Identity) and fast.conv.bias is not None
    xr = x.clone().requires_grad_(True)
    g0 = torch.autograd.grad(net(xr).sum(), xr)[0]
    xr = x.clone().requires_grad_(True)
    g1 = torch.autograd.grad(fast(xr).sum(), xr)[0]
    assert torch.allclose(g0, g1, atol=1e-5)
    assert all(not p.requires_grad for p in fast.parameters())
    bad = _Swapped().eval()  # registered conv -> bn, applied bn -> conv: folding would be wrong
    kept, d = icub.attack_network(bad, x)
    assert kept is bad and d == 0.0


class _Swapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = _Net().bn_in

    def forward(self, x):
        return self.conv(self.bn(x)).mean((2, 3))


def test_attacking_once_for_both_thresholds_would_be_wrong():
    """SVM-adv and SVM-adv +5% FNR share the SVM and the network, but not the attack: the
    reject-aware objective depends on the thresholds, so each model is attacked on its own."""
    clf = Classifier(nn.Identity(), 3, input_shape=(3,), bounds=(-1e3, 1e3))
    scores = torch.tensor([[0.5, 0.2, -1.0], [0.1, 0.4, 0.3]])
    y = torch.tensor([0, 1])
    flat = MaxConfidenceObjective()(ThresholdReject(clf, 0.0), scores, y, None).total
    strict = MaxConfidenceObjective()(ThresholdReject(clf, [0.3, 0.6, 0.0]), scores, y, None).total
    assert not torch.allclose(flat, strict)


@pytest.mark.parametrize("size", [32, 33])
def test_attack_network_of_efficientnet_lite_is_the_same_function_at_even_and_odd_sizes(size):
    """The strided TF-'same' convolutions lose their pad copy (a grown kernel with symmetric
    padding on even sizes); values and input gradients stay those of the original network."""
    from evasion.models.architectures.efficientnet_lite import EfficientNetLite, FeatureExtractor

    torch.manual_seed(0)
    net = EfficientNetLite(num_classes=4)
    for m in net.modules():  # non-trivial running statistics, so the folding is exercised too
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    extractor = FeatureExtractor(net).eval()
    x = torch.rand(2, 3, size, size)
    fast, diff = icub.attack_network(extractor, x)
    assert fast is not extractor and diff < 1e-4
    assert sum(isinstance(m, icub._PaddedConv) for m in fast.modules()) == 5  # the stem + 4 strided blocks
    grads = []
    for model in (extractor, fast):
        xr = x.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(model(xr).square().sum(), xr)[0])
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-5 * float(grads[0].abs().max()))

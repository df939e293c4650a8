"""Certification cells in `evaluate()` and `evasion evaluate`: the sandwich certified <= exact <=
attacked per epsilon, stored per cell and resumable, bad input in one line, the report's band."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from evasion.attacks import PGD
from evasion.cli.main import main
from evasion.config import CERTIFY_METHODS, parse_config
from evasion.errors import ConfigError
from evasion.evaluation import AttackSpec, CertifySpec, evaluate
from evasion.evaluation.curves import CORRECT
from evasion.models import Classifier
from evasion.reports.evaluation_report import build_report, write_report
from evasion.store import RunStore
from evasion.verification import certificate
from evasion.verification.certificate import METHOD_NORMS

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = [0.01, 0.03, 0.06]
REAL_CERTIFY = certificate.certify


def _mlp() -> Classifier:
    """A random 16-12-12-3 ReLU MLP on 4x4 inputs (weights x3: margins vary at small epsilons)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3)
    ).eval()
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(3.0)
    return Classifier(net, 3, input_shape=(1, 4, 4), name="mlp")


def _data(model: Classifier, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = model.predict(x)
    y[:2] = (y[:2] + 1) % 3  # two clean errors: never certified, never robust
    return x, y


def _attacks() -> list[AttackSpec]:
    return [AttackSpec(PGD(steps=20), "linf", EPS)]


def _certs(
    milp: bool = True, time_limit: float = 10.0, milp_eps: list[float] | None = None
) -> list[CertifySpec]:
    """IBP and CROWN at the attacks' epsilons; the MILP (about 0.1 s per sample) at ``milp_eps``."""
    out = [CertifySpec("ibp", "linf"), CertifySpec("crown", "linf")]
    return out + ([CertifySpec("milp", "linf", milp_eps, time_limit=time_limit)] if milp else [])


def _run(store: Any = None, certify: list[CertifySpec] | None = None) -> Any:
    model = _mlp()
    return evaluate(
        {"mlp": model},
        _data(model),
        _attacks(),
        self_check=False,
        batch_size=8,
        store=store,
        certify=_certs() if certify is None else certify,
    )


class Stop(Exception):
    """The interruption of a run (a crash between two cells)."""


class Counter:
    """Wraps ``certify`` to count its calls (and to stop a run after ``stop_after`` of them)."""

    def __init__(self, stop_after: int | None = None):
        self.calls: list[str] = []
        self.stop_after = stop_after

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            raise Stop
        self.calls.append(kwargs["method"])
        return REAL_CERTIFY(*args, **kwargs)


# -- the sandwich through evaluate() ----------------------------------------------------------------
def test_certified_le_exact_le_attacked_per_epsilon_and_per_sample() -> None:
    ev = _run()
    rows = ev.sandwich("mlp", "linf")
    assert [r.epsilon for r in rows] == EPS
    for r in rows:
        assert r.exact_unknown == 0.0, "the MILP settles every sample of this tiny net"
        assert r.exact is not None
        assert r.by_method["ibp"] <= r.by_method["crown"] <= r.certified
        assert r.certified <= r.exact <= r.attacked
        assert r.contradictions == 0
        assert r.samples == 16 and r.attacked <= 14 / 16
    assert rows[-1].by_method["crown"] < rows[0].by_method["crown"], "a larger ball proves less"
    # every sample the attacks left is MILP-robust or a MILP counterexample the attacks missed
    missed = ev.missed_by_attacks("mlp", "linf")
    for r in rows:
        assert r.attacked == pytest.approx(r.exact + len(missed[r.epsilon]) / r.samples)
    # per sample: what any method proves is never broken by the attack
    unbroken = ev.unbroken("mlp", "linf")
    assert np.array_equal(unbroken[0.0], ev.worst_case_status("mlp", "linf")[0.0] == CORRECT)
    assert not unbroken[0.0][:2].any()
    for name in ("ibp-linf", "crown-linf", "milp-linf"):
        for eps, cols in ev.certificate_columns[("mlp", name)].items():
            assert not (cols["certified"] & ~unbroken[eps]).any()
            assert not cols["certified"][:2].any()
    milp = ev.certificate_columns[("mlp", "milp-linf")]
    assert (milp[EPS[-1]]["status"] >= 0).all() and np.isnan(
        ev.certificate_columns[("mlp", "crown-linf")][EPS[0]]["seconds"]
    ).all()
    assert ev.contradictions() == []
    assert {d["epsilon"] for d in ev.to_dict()["sandwich"]} == set(EPS)


def test_store_holds_the_cells_and_a_rerun_recomputes_none(tmp_path: Path, monkeypatch) -> None:
    counter = Counter()
    monkeypatch.setattr(certificate, "certify", counter)
    certs = _certs(milp_eps=[0.03])
    with RunStore(tmp_path / "run") as store:
        first = _run(store, certs)
    # (ibp, crown) x 3 epsilons x 2 batches, milp x 1 epsilon x 2 batches
    assert sorted(counter.calls) == ["crown"] * 6 + ["ibp"] * 6 + ["milp"] * 2
    with RunStore(tmp_path / "run") as store:
        kinds = [c.cell.kind for c in store.cells()]
        assert kinds.count("certify") == 14
        assert store.integrity().ok and not store.missing()
        again = _run(store, certs)
        read = store.evaluation()
    assert len(counter.calls) == 14, "a rerun with the same config recomputes no certification"
    assert read.sandwich("mlp", "linf")[1].exact is not None
    assert again.sandwich("mlp", "linf") == first.sandwich("mlp", "linf") == read.sandwich("mlp", "linf")
    for key, table in first.certificate_columns.items():
        for eps, cols in table.items():
            for column, values in cols.items():
                np.testing.assert_array_equal(
                    values, read.certificate_columns[key][eps][column], err_msg=column
                )


def test_an_interrupted_run_resumes_and_loses_nothing(tmp_path: Path, monkeypatch) -> None:
    certs = _certs(milp=False)
    monkeypatch.setattr(certificate, "certify", Counter(stop_after=5))
    with pytest.raises(Stop), RunStore(tmp_path / "run") as store:
        _run(store, certs)
    with RunStore.open(tmp_path / "run") as store:
        assert sum(c.cell.kind == "certify" for c in store.cells()) == 5
    counter = Counter()
    monkeypatch.setattr(certificate, "certify", counter)
    with RunStore(tmp_path / "run") as store:
        resumed = _run(store, certs)
    assert len(counter.calls) == 12 - 5, "the cells committed before the interruption are reused"
    assert resumed.sandwich("mlp", "linf") == _run(None, certs).sandwich("mlp", "linf")


def test_other_certify_options_recompute_that_method_only(tmp_path: Path, monkeypatch) -> None:
    with RunStore(tmp_path / "run") as store:
        _run(store, _certs(milp_eps=[0.01]))
    counter = Counter()
    monkeypatch.setattr(certificate, "certify", counter)
    with RunStore(tmp_path / "run") as store:
        ev = _run(store, _certs(time_limit=20.0, milp_eps=[0.01]))
    assert counter.calls == ["milp"] * 2
    assert [r.epsilon for r in ev.sandwich("mlp", "linf")] == EPS


# -- bad input: one line ---------------------------------------------------------------------------------
def test_bad_methods_and_norms_are_one_line_errors() -> None:
    with pytest.raises(
        ConfigError, match="unknown verification method 'bogus'; choose from ibp, crown, milp"
    ):
        CertifySpec("bogus", "linf")
    with pytest.raises(ConfigError, match="'milp' cannot certify the l2 norm; it certifies linf"):
        CertifySpec("milp", "l2")
    assert CERTIFY_METHODS == METHOD_NORMS  # the config's copy of the table (no import of verification)

    def cfg(models: str, attacks: str = "[[attacks]]\nattack='pgd'\nnorm='l2'\nepsilons=[0.5]\n") -> None:
        import tomllib

        parse_config(tomllib.loads(f"[[models]]\nname='m'\n{models}\n{attacks}"))

    cases = [
        (
            "certify=['bogus']",
            "models[0].certify[0]: unknown verification method 'bogus'; choose from ibp, crown, milp",
        ),
        ("certify=['milp']", "models[0].certify: milp cannot certify the l2 norm (it certifies linf)"),
        ("certify=['crown']\ncertify_norms=['linf']", "no untargeted linf attack runs on 'm'"),
        ("certify=['milp']\ncertify_options={time_limit=-1}", "time_limit must be a number of seconds > 0"),
        ("certify=['ibp']\ncertify_options={steps=3}", "unknown key models[0].certify_options.steps"),
    ]
    for models, words in cases:
        with pytest.raises(ConfigError) as err:
            cfg(models)
        assert words in str(err.value) and "\n" not in str(err.value), str(err.value)
    cfg("certify=['crown']")  # crown certifies l2: accepted


def test_a_model_that_cannot_be_bounded_is_refused_before_any_cell(tmp_path: Path, tiny_cnn) -> None:
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = tiny_cnn.predict(x)
    with pytest.raises(ConfigError) as err, RunStore(tmp_path / "run") as store:
        evaluate(
            {"cnn": tiny_cnn},
            (x, y),
            [AttackSpec(PGD(steps=2), "linf", [0.1])],
            self_check=False,
            store=store,
            certify=[CertifySpec("crown", "linf")],
        )
    message = str(err.value)
    assert "model 'cnn' cannot be certified (crown-linf)" in message and "cannot bound" in message, message
    assert "\n" not in message
    with RunStore.open(tmp_path / "run") as store:
        assert store.cells() == []


# -- the report ------------------------------------------------------------------------------------------
def test_report_has_the_sandwich_table_and_the_unknown_band(tmp_path: Path) -> None:
    ev = _run(certify=_certs(milp=False))
    assert any(r.unknown > 0 for r in ev.sandwich("mlp", "linf")), "IBP/CROWN leave a band here"
    html = write_report(ev, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Certified vs. attacked, linf" in html
    for header in (
        "certified (ibp)",
        "certified (crown)",
        "certified (any)",
        "attacked (worst case)",
        "unknown (samples)",
    ):
        assert header in html, header
    assert "certified (proof)" in html and ">unknown<" in html.replace(" ", ""), "the plot's band is labelled"
    assert "certified yet broken by" not in html
    # a forged certificate on a broken sample: a loud error, never hidden
    cols = {k: dict(v) for k, v in ev.certificate_columns.items()}
    forged = {**cols[("mlp", "crown-linf")][EPS[0]]}
    forged["certified"] = np.ones_like(forged["certified"])
    cols[("mlp", "crown-linf")][EPS[0]] = forged
    bad = dataclasses.replace(ev, certificate_columns=cols)
    assert bad.contradictions()[0][:3] == ("mlp", "crown-linf", EPS[0])
    text = build_report(bad).render()
    assert "ERROR" in text and "certified yet broken by an attack" in text


# -- the CLI ---------------------------------------------------------------------------------------------
CONFIG = """
[run]
name = "certify"
batch_size = 8
self_check = false

[data]
name = "digits"
samples = 12

[[models]]
name = "digits-mlp"
certify = [{methods}]

[[attacks]]
attack = "pgd"
norm = "linf"
epsilons = [0.005, 0.02]
params = {{ steps = 5 }}
{extra}
"""


def test_cli_prints_the_sandwich_and_resumes(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG.format(methods="'ibp', 'crown'", extra=""))
    out = tmp_path / "run"
    assert main(["evaluate", str(cfg), "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "sandwich linf (certified <= exact <= attacked" in text
    assert "eps 0.005: certified" in text and "unknown" in text and "ERROR" not in text
    assert "hatch" not in text
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "Certified vs. attacked, linf" in report
    assert main(["evaluate", str(cfg), "--out", str(out), "--quiet", "--no-report"]) == 0
    again = capsys.readouterr().out
    cells = 1 * 2 + 1 * 2 * 2 + 2 * 2 * 2  # clean + pgd + (ibp, crown) x 2 eps x 2 batches
    assert f"({cells} cells reused" in again


def test_cli_milp_on_l2_is_one_line_and_writes_nothing(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.toml"
    extra = "[[attacks]]\nattack = 'pgd'\nnorm = 'l2'\nepsilons = [0.5]\nparams = { steps = 5 }\n"
    cfg.write_text(CONFIG.format(methods="'milp'", extra=extra))
    assert main(["evaluate", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("evasion: error:") and "\n" not in err, err
    assert "milp cannot certify the l2 norm" in err and "certify_norms" in err
    assert not (tmp_path / "o").exists()


def test_config_certify_keys_round_trip_and_become_specs() -> None:
    import tomllib

    text = """
[[models]]
name = "a"
certify = ["crown", "milp"]
certify_options = { time_limit = 5, falsify = 0 }
[[models]]
name = "b"
certify = ["crown"]
certify_options = { time_limit = 5, falsify = 0 }
[[models]]
name = "c"
[[attacks]]
attack = "pgd"
norm = "linf"
epsilons = [0.1]
"""
    config = parse_config(tomllib.loads(text))
    assert parse_config(tomllib.loads(config.to_toml())) == dataclasses.replace(config, source="<config>")
    specs = {s.name: s for s in config.certify_specs()}
    assert set(specs) == {"crown-linf", "milp-linf"}
    assert specs["crown-linf"].models == ("a", "b") and specs["milp-linf"].models == ("a",)
    assert specs["milp-linf"].time_limit == 5.0 and specs["milp-linf"].falsify == 0
    other = text.replace(
        'certify = ["crown"]\ncertify_options = { time_limit = 5, falsify = 0 }', 'certify = ["crown"]'
    )
    assert other != text
    with pytest.raises(ConfigError, match="both certify crown-linf but with other certify_options"):
        parse_config(tomllib.loads(other)).certify_specs()

"""The training report (`evasion train ... --out DIR` writes DIR/report.html), and the
attack-failure checks on a defensively distilled model through `evasion evaluate`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from evasion.cli.main import main
from evasion.reports.training_report import build_training_report
from evasion.store import RunStore

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--data", "digits", "-n", "200", "--epochs", "2", "--batch-size", "64", "--val-size", "40", "--quiet"]


def flags(html: str) -> list[tuple[str, str]]:
    """(level, text) of every coloured call-out of a report page."""
    return re.findall(r'class="flag ([a-z]+)">([^<]*)', html)


@pytest.fixture(scope="module")
def standard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("std") / "std.pt"
    assert (
        main(
            [
                "train",
                "digits-mlp",
                "--data",
                "digits",
                "-n",
                "200",
                "--epochs",
                "2",
                "--out",
                str(path),
                "--quiet",
            ]
        )
        == 0
    )
    return path


def test_train_writes_a_report_with_curves_beside_the_standard_model(standard, tmp_path, capsys):
    out = tmp_path / "pgd"
    argv = ["train", "digits-mlp", *TINY, "--adversarial", "pgd", "--epsilon", "0.1", "--steps", "3"]
    assert main([*argv, "--report-samples", "16", "--baseline", str(standard), "--out", str(out)]) == 0
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    html = (out / "report.html").read_text()
    assert "Training report: digits-mlp" in html and "Security evaluation" in html
    assert "digits-mlp-pgd" in html and "std (standard)" in html  # the trained model beside the standard
    assert html.count("<svg") >= 4  # training curves, worst cases side by side, one curve plot per model
    assert "validation accuracy" in html and "worst case over the default attacks" in html
    # the evaluation ran through evasion.evaluate into a run store, with its own full report
    (store,) = (out / "evaluation").iterdir()
    assert (store / "results.sqlite").is_file() and (store / "report.html").is_file()
    ev = RunStore.open(store).evaluation(examples=False)
    assert set(ev.models) == {"digits-mlp-pgd", "std (standard)"} and ev.samples == 16
    assert ev.worst_case("digits-mlp-pgd", "linf").epsilons == [0.0, 0.025, 0.05, 0.1, 0.15, 0.2]
    # the table rows carry the evaluation's worst-case numbers
    worst = ev.worst_case("std (standard)", "linf").accuracy
    assert f"<td>{worst[-1]:.3f}</td>" in html


def test_report_marks_catastrophic_overfitting_and_can_be_skipped(tmp_path):
    summary = {
        "architecture": "mnist-cnn",
        "data": "mnist5k:train",
        "config": {"recipe": "fgsm-rs", "epsilon": 0.3, "norm": "linf", "epochs": 3},
        "log": {
            "history": [
                {
                    "epoch": 1,
                    "loss": 1.0,
                    "lr": 0.1,
                    "epsilon": 0.3,
                    "val_clean": 0.9,
                    "val_robust": 0.4,
                    "val_fgsm": 0.5,
                },
                {
                    "epoch": 2,
                    "loss": 0.5,
                    "lr": 0.1,
                    "epsilon": 0.3,
                    "val_clean": 0.9,
                    "val_robust": 0.02,
                    "val_fgsm": 0.8,
                },
            ],
            "events": [
                {
                    "event": "catastrophic_overfitting",
                    "epoch": 2,
                    "val_robust": 0.02,
                    "val_fgsm": 0.8,
                    "best_val_robust": 0.4,
                    "action": "rolled back to the weights of epoch 1 and stopped",
                }
            ],
        },
    }
    html = build_training_report(summary).render()
    (level, text), *_ = flags(html)
    assert level == "bad" and text.startswith("catastrophic overfitting at epoch 2: PGD accuracy 0.020")
    assert "catastrophic overfitting</text>" in html  # the event's marker in the plot's legend
    assert "Not run." in html
    out = tmp_path / "quiet"
    assert (
        main(
            [
                "train",
                "digits-mlp",
                *TINY,
                "--epochs",
                "1",
                "--adversarial",
                "fgsm",
                "--epsilon",
                "0.1",
                "--no-report",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (
        (out / "model.pt").is_file()
        and not (out / "report.html").exists()
        and not (out / "evaluation").exists()
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--report-samples", "0"], "--report-samples must be >= 1"),
        (
            ["--baseline", "no-such-model"],
            "--baseline 'no-such-model' is neither a zoo model nor a model file",
        ),
        (["--optimizer", "rmsprop"], "unknown optimizer 'rmsprop'"),
        (["--rs-step", "0"], "rs_step must be > 0"),
    ],
)
def test_report_and_recipe_options_bad_input(extra, message, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "digits-mlp", *TINY, "--adversarial", "fgsm-rs", "--epsilon", "0.1", *extra]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_evaluate_flags_gradient_masking_on_a_distilled_model(tmp_path, capsys):
    # defensive distillation at T = 100, deployed at T = 1: logits in the hundreds, a saturated
    # softmax, zero cross-entropy gradients; the white-box numbers must not be trusted
    trained = tmp_path / "distilled"
    distill = ["--data", "digits", "-n", "500", "--epochs", "6", "--lr", "0.01", "--batch-size", "32"]
    assert (
        main(
            [
                "train",
                "digits-mlp",
                *distill,
                "--val-size",
                "40",
                "--distill",
                "100",
                "--no-report",
                "--quiet",
                "--out",
                str(trained),
            ]
        )
        == 0
    )
    config = tmp_path / "distilled.toml"
    config.write_text(
        "[run]\nname = 'distilled'\nbatch_size = 200\n"
        "[data]\nname = 'digits'\nsplit = 'test'\nsamples = 32\nshuffle = true\n"
        f"[[models]]\nname = 'distilled'\nmodel = {json.dumps(str(trained / 'model.pt'))}\narchitecture = 'digits-mlp'\n"
        "[epsilons]\nlinf = [0.1, 0.3]\n"
    )
    run = tmp_path / "run"
    assert main(["evaluate", str(config), "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    summary = json.loads((run / "summary.json").read_text())
    codes = {c["code"] for c in summary["checks"] if c["model"] == "distilled" and c["level"] != "ok"}
    assert "zero-gradients" in codes
    report = (run / "report.html").read_text()
    assert any(
        level == "bad"
        and "gradient masking flagged" in text
        and "white-box numbers are not to be trusted" in text
        for level, text in flags(report)
    )
    # the training report gives the same verdict on the same evaluation
    ev = RunStore.open(run).evaluation(examples=False)
    page = build_training_report(json.loads((trained / "training.json").read_text()), ev, trained="distilled")
    assert any(level == "bad" and "not to be trusted" in text for level, text in flags(page.render()))

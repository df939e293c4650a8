"""The `evasion` command line: outputs, one-line errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evasion.cli.main import main
from evasion.reports.png import write_png


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evasion.cli.main", *args], capture_output=True, text=True, timeout=300
    )


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in ("attack", "zoo", "datasets"):
        assert command in out


_WITHOUT_EXTRAS = """
import sys

class Missing:  # as if the optional extras were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"pybullet", "ray", "matplotlib"}:
            raise ImportError(f"No module named {name!r}")

sys.meta_path.insert(0, Missing())
from evasion.cli.main import main
try:
    main(sys.argv[1:])
finally:
    print("experiments imported:", any(m.startswith("evasion.experiments") for m in sys.modules))
"""


@pytest.mark.parametrize("args", [["--help"], ["reproduce", "--help"], ["reproduce", "icub", "--help"]])
def test_help_needs_no_optional_extras_and_no_experiment(args):
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRAS, *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: evasion" in proc.stdout and "experiments imported: False" in proc.stdout


def test_zoo_and_datasets_list(capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert "mnist-cnn" in out and "efficientnet-lite0" in out
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    assert "mnist5k" in out and "digits" in out


def test_attack_writes_images_and_summary(tmp_path: Path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "attack",
            "--model",
            "digits-mlp",
            "--data",
            "digits",
            "-n",
            "40",
            "--attack",
            "pgd",
            "--param",
            "steps=5",
            "--epsilon",
            "0.2",
            "--out",
            str(out),
            "--save-images",
            "3",
            "--quiet",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 40 and summary["threat"] == {
        "norm": "linf",
        "epsilon": 0.2,
        "targeted": False,
        "target": None,
    }
    assert 0.0 <= summary["robust_accuracy"] <= summary["clean_accuracy"] <= 1.0
    assert summary["forwards"] > 0 and summary["attack"] == "PGD(steps=5)"
    arrays = np.load(out / "adversarial.npz")
    assert arrays["x"].shape == (40, 1, 8, 8) and np.abs(arrays["norms"]).max() <= 0.2 + 1e-6
    assert len(list((out / "images").glob("*_adversarial.png"))) == 3
    assert "robust accuracy" in capsys.readouterr().out


def test_attack_on_a_single_image_file(tmp_path: Path):
    img = tmp_path / "digit.png"
    write_png(img, np.full((16, 16), 200, dtype=np.uint8))
    out = tmp_path / "one"
    assert (
        main(
            [
                "attack",
                "--model",
                "digits-mlp",
                "--image",
                str(img),
                "--attack",
                "fgsm",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 1 and summary["data"] == str(img)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["attack", "--model", "no-such-model"], ["unknown model 'no-such-model'", "mnist-cnn"]),
        (["attack", "--attack", "no-such-attack"], ["unknown attack 'no-such-attack'", "pgd"]),
        (
            ["attack", "--attack", "onepixel", "--norm", "l0", "--param", "population=3"],
            ["population", ">= 4"],
        ),
        (["attack", "--param", "stepz=3"], ["unknown parameter", "stepz"]),
        (["attack", "--param", "steps"], ["KEY=VALUE"]),
        (["attack", "--epsilon", "-1"], ["epsilon must be >= 0"]),
        (["attack", "--model", "digits-mlp", "--data", "mnist5k", "-n", "4"], ["(1, 28, 28)", "(1, 8, 8)"]),
        (["attack", "--data", "/no/such/path"], ["unknown dataset"]),
    ],
)
def test_bad_input_is_one_line_with_exit_code_2(args, words):
    proc = run_cli(*args, "--quiet")
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len([line for line in err if line.startswith("evasion: error:")]) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in proc.stderr, (w, proc.stderr)


def test_argparse_usage_error_exits_2():
    proc = run_cli("attack", "--norm", "l7")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr

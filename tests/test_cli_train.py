"""`evasion train`: a zoo architecture trained on CIFAR-format python batches (a tiny generated copy)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from evasion import models
from evasion.cli.main import main


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("cifar-10-batches-py")
    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1", 16), ("test_batch", 8)):
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist(),
        }
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    return str(root)


def test_train_resnet32_on_cifar_batches(cifar, tmp_path, capsys):
    out = tmp_path / "resnet32.pt"
    args = [
        "train",
        "resnet32-cifar",
        "--data",
        cifar,
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    meta = json.loads(out.with_name("resnet32.pt.json").read_text())
    assert (
        meta["samples"] == 16 and meta["architecture"] == "resnet32-cifar" and 0 <= meta["test_accuracy"] <= 1
    )
    assert "resnet32.pt" in capsys.readouterr().out
    clf = models.load(out, architecture="resnet32-cifar")
    assert clf.num_classes == 10 and clf(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_train_is_deterministic(cifar, tmp_path):
    paths = [tmp_path / f"m{i}.pt" for i in range(2)]
    for p in paths:
        args = [
            "train",
            "digits-mlp",
            "--data",
            "digits",
            "-n",
            "64",
            "--epochs",
            "1",
            "--out",
            str(p),
            "--quiet",
        ]
        assert main(args) == 0
    a, b = (torch.load(p, weights_only=True) for p in paths)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "nope", "--data", "digits"], "unknown architecture 'nope'; valid architectures:"),
        (["train", "mnist-cnn", "--data", "digits"], "expects (1, 28, 28)"),
        (["train", "digits-mlp", "--data", "digits", "--epochs", "0"], "epochs must be a positive integer"),
        (["train", "digits-mlp", "--data", "digits", "-n", "0"], "--num-samples must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


# -- adversarial training (--adversarial / --distill: --out is a folder) -------------------------
ADV = ["--data", "digits", "-n", "200", "--epochs", "2", "--batch-size", "64", "--val-size", "40", "--quiet"]


def test_adversarial_training_writes_model_log_and_checkpoints(tmp_path, capsys):
    out = tmp_path / "pgd"
    argv = ["train", "digits-mlp", *ADV, "--adversarial", "pgd", "--epsilon", "0.1", "--steps", "3"]
    assert main([*argv, "--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert "PGD-20 accuracy at linf 0.1" in first and "model.pt" in first
    log = json.loads((out / "training.json").read_text())
    assert log["config"]["recipe"] == "pgd" and log["config"]["epsilon"] == 0.1
    assert [r["epoch"] for r in log["log"]["history"]] == [1, 2]
    assert all(0 <= r["val_clean"] <= 1 and 0 <= r["val_robust"] <= 1 for r in log["log"]["history"])
    assert log["samples"] == 160 and log["validation_samples"] == 40
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch-0001.pt", "epoch-0002.pt"]
    clf = models.load(out / "model.pt", architecture="digits-mlp")
    weights = torch.load(out / "model.pt", weights_only=True)
    # re-running the finished command resumes from the last checkpoint: the same weights
    assert main([*argv, "--out", str(out)]) == 0
    assert "resumed after epoch 2" in capsys.readouterr().out
    again = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    assert clf(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_adversarial_none_and_distill(tmp_path, capsys):
    assert main(["train", "digits-mlp", *ADV, "--adversarial", "none", "--out", str(tmp_path / "a")]) == 0
    assert main(["train", "digits-mlp", *ADV, "--distill", "20", "--out", str(tmp_path / "d")]) == 0
    log = json.loads((tmp_path / "d" / "training.json").read_text())
    assert log["distilled"] and log["config"]["temperature"] == 20 and log["teacher_log"]["history"]
    assert (tmp_path / "d" / "checkpoints" / "teacher").is_dir()
    models.load(tmp_path / "d" / "model.pt", architecture="digits-mlp")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--adversarial", "madry", "--epsilon", "0.1"], "unknown recipe 'madry' for --adversarial; valid:"),
        (["--adversarial", "pgd", "--epsilon", "0"], "--epsilon must be > 0"),
        (["--adversarial", "pgd", "--epsilon", "-1"], "--epsilon must be > 0"),
        (["--adversarial", "pgd"], "--adversarial pgd needs --epsilon"),
        (["--adversarial", "pgd", "--epsilon", "1.5"], "beyond the data range"),
        (["--adversarial", "pgd", "--epsilon", "0.1", "--norm", "l0"], "--norm must be linf or l2"),
        (["--adversarial", "pgd", "--epsilon", "0.1", "--schedule", "zigzag"], "unknown schedule"),
        (["--adversarial", "fgsm", "--epsilon", "0.1", "--distill", "100"], "--distill trains without"),
        (["--distill", "1"], "--distill T needs a temperature > 1"),
        (["--epsilon", "0.1"], "--epsilon needs --adversarial RECIPE"),
    ],
)
def test_adversarial_bad_input_is_one_line_exit_2_and_writes_nothing(extra, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "digits-mlp", *ADV, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_adversarial_bad_architecture_data_and_out(tmp_path, capsys):
    target = tmp_path / "file.pt"
    target.write_bytes(b"keep me")
    cases = [
        (["train", "nope", *ADV, "--adversarial", "pgd", "--epsilon", "0.1"], "unknown architecture 'nope'"),
        (
            ["train", "digits-mlp", *ADV, "--adversarial", "pgd", "--epsilon", "0.1", "--out", str(target)],
            "is a file",
        ),
    ]
    for argv, message in cases:
        if "--out" not in argv:
            argv = [*argv, "--out", str(tmp_path / "x")]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert target.read_bytes() == b"keep me"


def test_resuming_with_another_architecture_names_the_keys(tmp_path, capsys):
    out = tmp_path / "run"
    base = [*ADV, "--epochs", "1", "--adversarial", "fgsm", "--epsilon", "0.1", "--out", str(out)]
    assert main(["train", "digits-mlp", *base]) == 0
    before = (out / "model.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", "digits-cnn", *base]) == 2
    err = capsys.readouterr().err
    assert "another architecture" in err and "fc3.weight" in err and "conv1.weight" in err
    assert err.count("\n") == 1 and (out / "model.pt").read_bytes() == before


@pytest.mark.parametrize(("labels", "message"), [([3] * 40, "has a single class"), ([], "empty")])
def test_adversarial_single_class_or_empty_data_is_refused_and_writes_nothing(
    labels, message, tmp_path, capsys
):
    data = tmp_path / "one.npz"
    n = len(labels)
    np.savez(
        data,
        x_train=np.random.default_rng(0).random((n, 8, 8)).astype(np.float32),
        y_train=np.array(labels, dtype=np.int64),
        classes=np.array([str(i) for i in range(10)]),
    )
    out = tmp_path / "run"
    argv = ["train", "digits-mlp", "--data", str(data), "--test-split", "none", "--val-size", "0", "--quiet"]
    assert main([*argv, "--adversarial", "pgd", "--epsilon", "0.1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()

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

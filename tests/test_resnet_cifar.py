"""The CIFAR-10 ResNet-32 of Metzen et al. (Fig. 1 top): depth, attachment points, zoo entry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evasion import models
from evasion.defenses.detector import Detector, feature_shape
from evasion.errors import ModelError
from evasion.models.architectures.resnet_cifar import ATTACHMENT_POINTS, resnet32_cifar


@pytest.fixture(scope="module")
def resnet() -> models.Classifier:
    return models.Classifier(resnet32_cifar(seed=0), 10, input_shape=(3, 32, 32), name="resnet32")


def test_thirty_two_weight_layers_and_output(resnet):
    net = resnet.module
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d) and "shortcut" not in n]
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == 32
    assert 0.45e6 < sum(p.numel() for p in net.parameters()) < 0.48e6
    assert resnet(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_attachment_points_have_the_papers_resolutions(resnet):
    shapes = {ad: feature_shape(resnet, layer) for ad, layer in ATTACHMENT_POINTS.items()}
    assert shapes == {
        "AD(0)": (3, 32, 32),
        "AD(1)": (16, 32, 32),
        "AD(2)": (16, 32, 32),
        "AD(3)": (32, 16, 16),
        "AD(4)": (64, 8, 8),
    }
    pools = {
        ad: Detector.attach(resnet, layer, width=0.05).net.pools for ad, layer in ATTACHMENT_POINTS.items()
    }
    assert pools == {
        "AD(0)": 2,
        "AD(1)": 2,
        "AD(2)": 2,
        "AD(3)": 1,
        "AD(4)": 0,
    }  # AD(3): 2nd pool skipped, AD(4): both


def test_seeded_initialisation_is_reproducible():
    a, b = resnet32_cifar(seed=1).state_dict(), resnet32_cifar(seed=1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_zoo_entry_is_an_architecture_without_weights(tmp_path):
    info = next(i for i in models.list_models() if i.name == "resnet32-cifar")
    assert info.input_shape == (3, 32, 32) and info.num_classes == 10 and info.architecture is not None
    with pytest.raises(ModelError, match="evasion train resnet32-cifar"):
        models.load("resnet32-cifar")
    path = tmp_path / "r.pt"
    torch.save(resnet32_cifar(seed=2).state_dict(), path)
    clf = models.load("resnet32-cifar", weights=str(path))
    assert clf.class_names[0] == "airplane" and clf(torch.rand(1, 3, 32, 32)).shape == (1, 10)

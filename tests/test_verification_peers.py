"""Cross-check: evasion's IBP bounds equal ART's interval bound propagation on the same networks.

ART (``art.estimators.certification.interval.PyTorchIBPClassifier``) handles Linear, Conv2d and
ReLU children and infers the flatten between convolutions and dense layers. Skipped when ART is
not installed (``pip install adversarial-robustness-toolbox==1.20.1``).
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from evasion.errors import ConfigError
from evasion.verification import ibp_bounds

pytestmark = pytest.mark.peers
EPS = 0.05


class _ArtCNN(nn.Module):
    """Children ART can convert (the flatten is inferred), forward flattening functionally."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(1, 3, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(3, 4, 3, stride=2), nn.ReLU()
        self.fc = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(h.flatten(1))


def _art_intervals(model: nn.Module, x: Tensor, nb_classes: int) -> tuple[Tensor, Tensor]:
    interval = pytest.importorskip("art.estimators.certification.interval")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = interval.PyTorchIBPClassifier(
            model=copy.deepcopy(model),  # ART leaves hooks on the model it converts
            loss=nn.CrossEntropyLoss(),
            input_shape=tuple(x.shape[1:]),
            nb_classes=nb_classes,
            clip_values=(0.0, 1.0),
            device_type="cpu",
        )
        out = clf.predict_intervals(x.numpy(), bounds=EPS, limits=[0.0, 1.0])
    out = torch.from_numpy(np.asarray(out))
    return out[:, 0], out[:, 1]


def test_ibp_equals_art_on_an_mlp() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    x = torch.rand(8, 16, generator=torch.Generator().manual_seed(1))
    theirs = _art_intervals(model, x, 3)
    ours = ibp_bounds(model, (x - EPS).clamp(0, 1), (x + EPS).clamp(0, 1))
    assert torch.allclose(ours[0].detach(), theirs[0], atol=1e-5)
    assert torch.allclose(ours[1].detach(), theirs[1], atol=1e-5)


def test_ibp_equals_art_on_a_cnn() -> None:
    torch.manual_seed(2)
    art_model = _ArtCNN().eval()
    ours_model = nn.Sequential(
        art_model.conv1, art_model.relu1, art_model.conv2, art_model.relu2, nn.Flatten(), art_model.fc
    ).eval()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    theirs = _art_intervals(art_model, x, 5)
    ours = ibp_bounds(ours_model, (x - EPS).clamp(0, 1), (x + EPS).clamp(0, 1))
    assert torch.allclose(ours[0].detach(), theirs[0], atol=1e-5)
    assert torch.allclose(ours[1].detach(), theirs[1], atol=1e-5)
    with pytest.raises(ConfigError, match="not a plain chain"):  # the functional flatten is refused here
        ibp_bounds(art_model, x, x)

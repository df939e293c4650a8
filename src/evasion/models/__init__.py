"""Models: the :class:`Classifier` wrapper, the model zoo, user-model loading and a small trainer.

>>> from evasion import models
>>> clf = models.load("digits-mlp")                      # trained on first use, then cached
>>> clf = models.load("net.pt", architecture="mypkg.nets:resnet", input_shape=(3, 32, 32))
"""

from __future__ import annotations

from .classifier import REJECT, Classifier, Normalize, as_classifier, eval_mode
from .io import load_file
from .training import accuracy, train_classifier
from .zoo import ModelInfo, list_models, load, register

__all__ = [
    "REJECT",
    "Classifier",
    "ModelInfo",
    "Normalize",
    "accuracy",
    "as_classifier",
    "eval_mode",
    "list_models",
    "load",
    "load_file",
    "register",
    "train_classifier",
]

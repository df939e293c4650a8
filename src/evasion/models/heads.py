"""Classifier heads on deep features: one-vs-all SVMs (linear, RBF) and an online RLS head.

The iCub recognises objects with a one-vs-all scheme of ``c`` binary classifiers on frozen deep
features (Pasquale et al. 2015; Melis et al. 2017). The SVM heads are fit with scikit-learn
(``C`` and ``gamma`` picked by 3-fold cross-validation over the paper's grids) and exported to
torch: the linear head keeps ``w_k`` and ``b_k``, the RBF head the support vectors and dual
coefficients, so ``forward`` gives the same decision values as ``SVC.decision_function`` and is
differentiable (attacks go through it). :class:`RLSHead` is regularised least squares whose
inverse Gram matrix is updated in closed form (Woodbury) when the robot learns a new example.

Every head computes in float64 and returns the input's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from .._validation import finite, positive
from ..errors import InputError, ModelError

__all__ = [
    "PAPER_C_GRID",
    "PAPER_GAMMA_GRID",
    "CVGrid",
    "Head",
    "LinearSVMHead",
    "RBFSVMHead",
    "RLSHead",
    "one_vs_all_cv",
    "out_of_fold_scores",
]

#: Melis et al. 2017: C in {1e-3, ..., 1e3} and gamma in {1e-6, ..., 1e-2}, chosen by 3-fold CV
PAPER_C_GRID: tuple[float, ...] = tuple(10.0**k for k in range(-3, 4))
PAPER_GAMMA_GRID: tuple[float, ...] = tuple(10.0**k for k in range(-6, -1))

_F64 = npt.NDArray[np.float64]


def _as_numpy(z: Tensor | npt.ArrayLike) -> _F64:
    return (
        z.detach().cpu().double().numpy() if isinstance(z, Tensor) else np.asarray(z, dtype=np.float64)
    ).copy()


def _check_fit_data(z: Tensor, y: Tensor) -> tuple[_F64, npt.NDArray[np.int64]]:
    if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[0] == 0:
        raise InputError(
            f"features must be a non-empty (N, D) tensor, got {getattr(z, 'shape', type(z).__name__)}"
        )
    if not isinstance(y, Tensor) or y.shape != (z.shape[0],) or y.is_floating_point():
        raise InputError(f"labels must be an integer tensor of shape ({z.shape[0]},)")
    if not bool(torch.isfinite(z).all()):
        raise InputError("features contain NaN or infinite values")
    labels = y.detach().cpu().long().numpy()
    if labels.min() < 0:
        raise InputError("labels must be >= 0")
    return _as_numpy(z), labels


def _kernel(a: _F64, b: _F64, gamma: float | None) -> _F64:
    """Linear kernel (``gamma=None``) or RBF kernel ``exp(-gamma ||a - b||^2)``."""
    if gamma is None:
        return a @ b.T
    d2 = (a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :]
    return np.exp(-gamma * np.maximum(d2, 0.0))


def _fit_binary(k: _F64, y: npt.NDArray[np.int64], classes: int, c: float) -> list[Any]:
    """One precomputed-kernel SVC per class (class k vs the rest)."""
    from sklearn.svm import SVC

    models = []
    for cls in range(classes):
        target = (y == cls).astype(np.int64)
        if target.min() == target.max():
            raise InputError(
                f"class {cls} has {'no' if target.max() == 0 else 'only'} examples: one-vs-all needs both"
            )
        models.append(SVC(kernel="precomputed", C=c).fit(k, target))
    return models


Key = tuple[float, float | None]


@dataclass(frozen=True)
class CVGrid:
    """Cross-validated scores of one-vs-all SVMs over a ``(C, gamma)`` grid.

    ``accuracy``: accuracy of the argmax rule; ``reject_accuracy``: accuracy of the reject rule
    (a prediction whose top score is ``<= threshold`` counts as an error), as SVM-adv is judged.
    """

    accuracy: dict[Key, float]
    reject_accuracy: dict[Key, float]
    threshold: float
    samples: int

    def best(self, reject: bool = False, keys: Sequence[Key] | None = None) -> Key:
        """The best ``(C, gamma)`` (among ``keys``); ties go to the smaller C and gamma (smoother)."""
        scores = self.reject_accuracy if reject else self.accuracy
        candidates = list(keys) if keys is not None else list(scores)
        return max(candidates, key=lambda key: (scores[key], -key[0], -(key[1] or 0.0)))

    def covers(self, c_grid: Sequence[float], gamma_grid: Sequence[float | None]) -> bool:
        return all((c, g) in self.accuracy for c in c_grid for g in gamma_grid)


def one_vs_all_cv(
    z: Tensor,
    y: Tensor,
    c_grid: Sequence[float] = PAPER_C_GRID,
    gamma_grid: Sequence[float | None] = (None,),
    folds: int = 3,
    seed: int = 0,
    threshold: float = 0.0,
) -> CVGrid:
    """Stratified k-fold scores of one-vs-all SVMs for every ``(C, gamma)`` of the grid.

    ``gamma=None`` means the linear kernel. Kernels are computed once per gamma (precomputed
    SVCs), and both the plain and the reject-rule accuracy come from the same fits.
    """
    from sklearn.model_selection import StratifiedKFold

    x, labels = _check_fit_data(z, y)
    classes = int(labels.max()) + 1
    n_folds = max(2, min(folds, int(np.bincount(labels, minlength=classes).min())))
    splits = list(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(x, labels))
    plain: dict[Key, float] = {}
    reject: dict[Key, float] = {}
    for gamma in gamma_grid:
        k = _kernel(x, x, gamma)
        for c in c_grid:
            right = right_kept = 0
            for tr, va in splits:
                models = _fit_binary(k[np.ix_(tr, tr)], labels[tr], classes, c)
                f = np.stack([m.decision_function(k[np.ix_(va, tr)]) for m in models], 1)
                hit = f.argmax(1) == labels[va]
                right += int(hit.sum())
                right_kept += int((hit & (f.max(1) > threshold)).sum())
            plain[(c, gamma)], reject[(c, gamma)] = right / len(labels), right_kept / len(labels)
    return CVGrid(plain, reject, float(threshold), len(labels))


def out_of_fold_scores(head: Head, z: Tensor, y: Tensor, folds: int = 3, seed: int = 0) -> Tensor:
    """Decision values ``(N, c)`` of every training sample from a copy of ``head`` fit without it.

    The copies keep the fitted head's hyperparameters (no new cross-validation): a validation
    set carved from the training data, e.g. to calibrate a reject threshold.
    """
    from sklearn.model_selection import StratifiedKFold

    head.require_fitted()
    x, labels = _check_fit_data(z, y)
    out = torch.zeros(len(labels), head.num_classes, dtype=torch.float64)
    for tr, va in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, labels):
        part = head.fresh().fit(torch.from_numpy(x[tr]), torch.from_numpy(labels[tr]))
        out[torch.from_numpy(va)] = part(torch.from_numpy(x[va])).double()
    return out


class Head(nn.Module):
    """A head maps features ``(N, D)`` to ``num_classes`` discriminant scores once fitted."""

    num_classes: int = 0

    @property
    def fitted(self) -> bool:
        return self.num_classes > 0

    def require_fitted(self) -> None:
        if not self.fitted:
            raise ModelError(f"{type(self).__name__} is not fitted: call fit(features, labels) first")

    def fit(self, z: Tensor, y: Tensor) -> Head:  # pragma: no cover - abstract
        raise NotImplementedError

    def fresh(self) -> Head:  # pragma: no cover - abstract
        """An unfitted head with this head's (chosen) hyperparameters."""
        raise NotImplementedError

    def learn(self, z: Tensor, y: Tensor) -> Head:  # pragma: no cover - abstract
        """Add examples (labels may name a new class ``num_classes``) without a fresh fit if possible."""
        raise NotImplementedError

    def _check_input(self, z: Tensor) -> None:
        self.require_fitted()
        if z.dim() != 2 or z.shape[1] != self.in_features:
            raise InputError(
                f"{type(self).__name__} expects features (N, {self.in_features}), got {tuple(z.shape)}"
            )

    @property
    def in_features(self) -> int:
        return 0

    def _check_learn(self, z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        self.require_fitted()
        if z.dim() == 1:
            z = z[None]
        y = torch.as_tensor(y).reshape(-1).long()
        if z.shape[0] != y.shape[0] or z.shape[1] != self.in_features:
            raise InputError(f"learn() needs (N, {self.in_features}) features and N labels")
        if int(y.min()) < 0 or int(y.max()) > self.num_classes:
            raise InputError(
                f"learn() labels must be in [0, {self.num_classes}] ({self.num_classes} = a new class)"
            )
        return z.detach().double().cpu(), y.cpu()


class _SVMHead(Head):
    """Shared fitting of the one-vs-all SVM heads (kernel ``gamma=None`` is linear).

    ``c`` (and the RBF head's ``gamma``) are what the caller asked for, ``None`` meaning "choose
    by cross-validation"; :meth:`fit` stores the values it used in ``c_`` / ``gamma_`` and leaves
    ``c`` / ``gamma`` as they were (scikit-learn's convention), so a second ``fit`` chooses again.
    """

    def __init__(
        self, c: float | None, c_grid: Sequence[float], folds: int, seed: int, cv_threshold: float | None
    ) -> None:
        super().__init__()
        if c is not None:
            positive(c, "C")
        if cv_threshold is not None:
            finite(cv_threshold, "cv_threshold")
        self.c, self.c_grid, self.folds, self.seed = c, tuple(c_grid), folds, seed
        self.cv_threshold = cv_threshold
        self.cv: CVGrid | None = None
        #: the C and gamma the last fit used (``gamma_ = None``: the linear kernel)
        self.c_: float | None = None
        self.gamma_: float | None = None
        self.estimators_: list[Any] = []
        self._train: tuple[Tensor, Tensor] | None = None

    def _gamma(self) -> float | None:
        """The caller's gamma (``None``: the linear kernel, or choose by cross-validation)."""
        return None

    def _gamma_grid(self) -> Sequence[float | None]:
        return (None,)

    def _needs_gamma(self) -> bool:
        return False

    def fit(self, z: Tensor, y: Tensor, *, cv: CVGrid | None = None) -> _SVMHead:
        """Choose C (and gamma) by cross-validation unless given, fit, and export to torch.

        ``cv``: a :class:`CVGrid` already computed on the same data (e.g. shared by SVM-RBF and
        SVM-adv, which differ only in the score they are chosen by).
        """
        x, labels = _check_fit_data(z, y)
        c, gamma = self.c, self._gamma()
        if c is None or self._needs_gamma():
            grid = self.c_grid if c is None else (c,)
            threshold = 0.0 if self.cv_threshold is None else self.cv_threshold
            if cv is None or not cv.covers(grid, self._gamma_grid()) or cv.threshold != threshold:
                cv = one_vs_all_cv(z, y, grid, self._gamma_grid(), self.folds, self.seed, threshold)
            self.cv = cv
            keys = [(ck, g) for ck in grid for g in self._gamma_grid()]
            c, gamma = cv.best(reject=self.cv_threshold is not None, keys=keys)
        self.c_, self.gamma_ = c, gamma
        self._train = (torch.from_numpy(x), torch.from_numpy(labels))
        self._refit()
        return self

    def _chosen(self) -> tuple[float | None, float | None]:
        """``(c_, gamma_)`` once fitted, else the caller's ``(c, gamma)`` (for :meth:`fresh`)."""
        return (self.c_, self.gamma_) if self.c_ is not None else (self.c, self._gamma())

    def _refit(self) -> None:
        """Fit one sklearn ``SVC`` per class on the stored features and export them."""
        from sklearn.svm import SVC

        assert self._train is not None and self.c_ is not None
        x, labels = self._train[0].numpy(), self._train[1].numpy()
        classes = int(labels.max()) + 1
        gamma = self.gamma_
        kernel: dict[str, Any] = {"kernel": "linear"} if gamma is None else {"kernel": "rbf", "gamma": gamma}
        self.estimators_ = []
        for cls in range(classes):
            target = (labels == cls).astype(np.int64)
            if target.min() == target.max():
                raise InputError(f"class {cls} has no examples: one-vs-all needs every class")
            self.estimators_.append(SVC(C=self.c_, **kernel).fit(x, target))
        self._export(x)
        self.num_classes = classes

    def _export(self, x: _F64) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def sklearn_decision_function(self, z: Tensor) -> Tensor:
        """The fitted scikit-learn SVMs' own decision values ``(N, c)`` (float64), for checks."""
        self.require_fitted()
        x = _as_numpy(z)
        return torch.from_numpy(np.stack([m.decision_function(x) for m in self.estimators_], 1))

    def learn(self, z: Tensor, y: Tensor) -> _SVMHead:
        """Add examples (or a new class) and refit the one-vs-all SVMs with the chosen C, gamma."""
        zz, yy = self._check_learn(z, y)
        assert self._train is not None
        self._train = (torch.cat([self._train[0], zz]), torch.cat([self._train[1], yy]))
        self._refit()
        return self

    @property
    def support_vectors(self) -> int:
        return sum(len(m.support_) for m in self.estimators_)


class LinearSVMHead(_SVMHead):
    """One-vs-all linear SVMs: ``f_k(z) = w_k . z + b_k`` (``C=None``: 3-fold CV over the grid)."""

    weight: Tensor
    bias: Tensor

    def __init__(
        self,
        c: float | None = None,
        *,
        c_grid: Sequence[float] = PAPER_C_GRID,
        folds: int = 3,
        seed: int = 0,
        cv_threshold: float | None = None,
    ) -> None:
        super().__init__(c, c_grid, folds, seed, cv_threshold)
        self.register_buffer("weight", torch.zeros(0, 0, dtype=torch.float64))
        self.register_buffer("bias", torch.zeros(0, dtype=torch.float64))

    def _export(self, x: _F64) -> None:
        w = np.stack([m.coef_[0] for m in self.estimators_])
        b = np.array([m.intercept_[0] for m in self.estimators_])
        self.weight = torch.from_numpy(w).to(self.weight.device)
        self.bias = torch.from_numpy(b).to(self.bias.device)

    def fresh(self) -> LinearSVMHead:
        return LinearSVMHead(self._chosen()[0])

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    def forward(self, z: Tensor) -> Tensor:
        self._check_input(z)
        return (z.double() @ self.weight.T + self.bias).to(z.dtype)


class RBFSVMHead(_SVMHead):
    """One-vs-all RBF SVMs: ``f_k(z) = sum_i a_ik exp(-gamma ||z - s_i||^2) + b_k``.

    The support vectors of all ``c`` SVMs are stored once (their union) with a dual-coefficient
    matrix ``(n_sv, c)``, so one kernel matrix serves every class. ``C`` / ``gamma`` ``None``:
    chosen by 3-fold CV over :data:`PAPER_C_GRID` x :data:`PAPER_GAMMA_GRID`; ``cv_threshold=0``
    scores the CV by the accuracy of the reject rule (for SVM-adv, see :func:`one_vs_all_cv`).
    """

    support: Tensor
    dual: Tensor
    bias: Tensor

    def __init__(
        self,
        c: float | None = None,
        gamma: float | None = None,
        *,
        c_grid: Sequence[float] = PAPER_C_GRID,
        gamma_grid: Sequence[float] = PAPER_GAMMA_GRID,
        folds: int = 3,
        seed: int = 0,
        cv_threshold: float | None = None,
    ) -> None:
        super().__init__(c, c_grid, folds, seed, cv_threshold)
        if gamma is not None:
            positive(gamma, "gamma")
        self.gamma, self.gamma_grid = gamma, tuple(gamma_grid)
        self.register_buffer("support", torch.zeros(0, 0, dtype=torch.float64))
        self.register_buffer("dual", torch.zeros(0, 0, dtype=torch.float64))
        self.register_buffer("bias", torch.zeros(0, dtype=torch.float64))

    def _gamma(self) -> float | None:
        return self.gamma

    def _needs_gamma(self) -> bool:
        return self.gamma is None

    def _gamma_grid(self) -> Sequence[float | None]:
        return self.gamma_grid if self.gamma is None else (self.gamma,)

    def _export(self, x: _F64) -> None:
        rows = np.unique(np.concatenate([m.support_ for m in self.estimators_]))
        where = {int(r): i for i, r in enumerate(rows)}
        dual = np.zeros((len(rows), len(self.estimators_)))
        for k, m in enumerate(self.estimators_):
            dual[[where[int(r)] for r in m.support_], k] = m.dual_coef_[0]
        self.support = torch.from_numpy(x[rows].copy()).to(self.support.device)
        self.dual = torch.from_numpy(dual).to(self.dual.device)
        self.bias = torch.from_numpy(np.array([m.intercept_[0] for m in self.estimators_])).to(
            self.bias.device
        )

    def fresh(self) -> RBFSVMHead:
        return RBFSVMHead(*self._chosen())

    @property
    def in_features(self) -> int:
        return int(self.support.shape[1])

    def forward(self, z: Tensor) -> Tensor:
        self._check_input(z)
        assert self.gamma_ is not None
        zd, s = z.double(), self.support
        d2 = (zd * zd).sum(1, keepdim=True) - 2 * zd @ s.T + (s * s).sum(1)[None, :]
        return (torch.exp(-self.gamma_ * d2.clamp_min(0.0)) @ self.dual + self.bias).to(z.dtype)


class RLSHead(Head):
    """Regularised least squares, one-vs-all targets +-1: ``W = (Z'Z + lam I)^-1 Z'Y`` (with bias).

    The inverse ``(Z'Z + lam I)^-1`` is kept and updated by the Woodbury identity in
    :meth:`learn`, so adding examples or a class costs ``O(D^2)`` per example, no refit.
    """

    weight: Tensor
    inverse: Tensor
    moments: Tensor
    total: Tensor

    def __init__(self, lam: float = 1.0) -> None:
        super().__init__()
        self.lam = positive(lam, "lam")
        for name in ("weight", "inverse", "moments"):
            self.register_buffer(name, torch.zeros(0, 0, dtype=torch.float64))
        self.register_buffer("total", torch.zeros(0, dtype=torch.float64))

    def fresh(self) -> RLSHead:
        return RLSHead(self.lam)

    @staticmethod
    def _augment(z: Tensor) -> Tensor:
        return torch.cat([z.double(), torch.ones_like(z[:, :1], dtype=torch.float64)], 1)

    @staticmethod
    def _targets(y: Tensor, classes: int) -> Tensor:
        return 2 * torch.nn.functional.one_hot(y, classes).double() - 1

    def fit(self, z: Tensor, y: Tensor) -> RLSHead:
        x, labels = _check_fit_data(z, y)
        za = self._augment(torch.from_numpy(x))
        classes = int(labels.max()) + 1
        gram = za.T @ za + self.lam * torch.eye(za.shape[1], dtype=torch.float64)
        self.inverse = torch.linalg.inv(gram)
        self.moments = za.T @ self._targets(torch.from_numpy(labels), classes)
        self.total = za.sum(0)
        self.num_classes = classes
        self._solve()
        return self

    def _solve(self) -> None:
        self.weight = (self.inverse @ self.moments).T.contiguous()

    def learn(self, z: Tensor, y: Tensor) -> RLSHead:
        """Woodbury update of the inverse Gram matrix; a label ``num_classes`` adds a class."""
        zz, yy = self._check_learn(z, y)
        za = self._augment(zz)
        if int(yy.max()) == self.num_classes:  # a new class: every earlier example is a -1 for it
            self.moments = torch.cat([self.moments, -self.total[:, None]], 1)
            self.num_classes += 1
        a_z = self.inverse @ za.T
        middle = torch.linalg.inv(torch.eye(za.shape[0], dtype=torch.float64) + za @ a_z)
        self.inverse = self.inverse - a_z @ middle @ a_z.T
        self.moments = self.moments + za.T @ self._targets(yy, self.num_classes)
        self.total = self.total + za.sum(0)
        self._solve()
        return self

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1]) - 1

    def forward(self, z: Tensor) -> Tensor:
        self._check_input(z)
        return (self._augment(z) @ self.weight.T).to(z.dtype)

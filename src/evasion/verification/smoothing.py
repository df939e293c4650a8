"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019): certified L2 radii of a *smoothed* classifier.

The base classifier ``f`` is turned into the smoothed classifier

    g(x) = argmax_c P(f(x + d) = c),   d ~ N(0, sigma^2 I),

and if the top class has probability ``p_A >= p_lower > 1/2`` under the noise, ``g`` predicts the
same class everywhere in the L2 ball of radius ``sigma * Phi^-1(p_lower)`` around ``x``.

**What is certified is g, never f.** The base model can be broken by a tiny perturbation while
``g`` provably cannot; the probabilities are Monte-Carlo estimates, so a certificate holds with
probability at least ``1 - alpha`` over the noise draws (Clopper-Pearson bound on ``p_A``), and
``g`` itself is only ever evaluated through :meth:`SmoothedClassifier.predict` (which may
abstain). To measure the *upper* side of the sandwich, attack ``g``, not ``f``:
:meth:`SmoothedClassifier.attackable` is an ``nn.Module`` that averages the softmax of ``f`` over
Monte-Carlo noise (expectation over transformation; Salman et al. 2019's SmoothAdv objective), so
every gradient attack of the toolkit can run through the noise; :func:`attack_smoothed` runs PGD
on it and judges the result with :meth:`~SmoothedClassifier.predict`.

Sampling is batched across images and draws: ``n`` noisy copies of every image go through the
model in chunks of ``batch_size`` and are counted with one ``bincount`` per chunk, so the cost is
the forward passes (no Python loop over individual draws). Everything random comes from the
``generator`` passed in: the same generator state and ``batch_size`` give the same result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor, nn

from ..errors import ConfigError, InputError
from ..models.classifier import Classifier, as_classifier
from ..threat_model import ThreatModel

__all__ = [
    "ABSTAIN",
    "NoisySoftmax",
    "SmoothedAttack",
    "SmoothedClassifier",
    "SmoothingCertificate",
    "attack_smoothed",
    "certified_accuracy_curve",
]

#: the prediction of the smoothed classifier where it abstains (no class is significantly on top)
ABSTAIN = -1


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def _alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}")
    return float(alpha)


@dataclass(frozen=True)
class SmoothingCertificate:
    """Cohen et al.'s CERTIFY for a batch: one entry per image, all on the CPU.

    Attributes:
        prediction: the smoothed classifier's class (int64), :data:`ABSTAIN` (-1) where it abstains.
        radius: certified L2 radius ``sigma * Phi^-1(p_lower)`` (float64; 0 where it abstains).
        abstained: ``p_lower < 1/2``: no certificate (and no prediction) for that image.
        p_lower: the one-sided ``1 - alpha`` Clopper-Pearson lower bound on ``p_A``.
        top_count: ``n_A``, the draws (out of ``n``) that the base model put in the predicted class.
        sigma, n0, n, alpha: the settings that produced it.
    """

    prediction: Tensor
    radius: Tensor
    abstained: Tensor
    p_lower: Tensor
    top_count: Tensor
    sigma: float
    n0: int
    n: int
    alpha: float

    def __len__(self) -> int:
        return int(self.prediction.shape[0])

    def certified(self, y: Tensor, radius: float = 0.0) -> Tensor:
        """Per image: the smoothed prediction is ``y`` and is certified at L2 ``radius`` (or more)."""
        y = torch.as_tensor(y).cpu()
        if y.shape != self.prediction.shape:
            raise InputError(f"y has shape {tuple(y.shape)}, the certificate has {len(self)} images")
        return (self.prediction == y) & ~self.abstained & (self.radius >= radius)

    def certified_accuracy(self, y: Tensor, radius: float = 0.0) -> float:
        """Fraction of images whose smoothed prediction is correct and certified at ``radius``."""
        return float(self.certified(y, radius).double().mean())


def certified_accuracy_curve(
    certificate: SmoothingCertificate, y: Tensor, radii: Sequence[float]
) -> list[tuple[float, float]]:
    """``(radius, certified accuracy)`` pairs: Cohen et al.'s curve of the smoothed classifier."""
    return [(float(r), certificate.certified_accuracy(y, float(r))) for r in radii]


class NoisySoftmax(nn.Module):
    """``log mean_j softmax(f(x + d_j))`` over ``samples`` Gaussian draws per input (an EOT view of g).

    Its argmax is the Monte-Carlo estimate of the *soft* smoothed classifier and its gradient is an
    unbiased estimate of the gradient of the smoothed probabilities, so attacks that maximise the
    cross-entropy of these scores attack the smoothed classifier. Noise comes from the module's own
    generator (seeded at construction), never from the global RNG.
    """

    def __init__(self, base: Classifier, sigma: float, samples: int, seed: int = 0):
        super().__init__()
        self.base = base
        self.sigma = float(sigma)
        self.samples = _positive_int("samples", samples)
        self.generator = torch.Generator().manual_seed(int(seed))

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        noise = torch.randn((n, self.samples, *x.shape[1:]), generator=self.generator, dtype=x.dtype)
        noisy = (x.unsqueeze(1) + self.sigma * noise.to(x.device)).flatten(0, 1)
        probs = F.softmax(self.base(noisy), dim=1).view(n, self.samples, -1).mean(dim=1)
        return probs.clamp_min(1e-30).log()


class SmoothedClassifier:
    """The Gaussian-smoothed classifier ``g`` of a base model ``f`` (Cohen et al. 2019).

    Args:
        model: the base classifier: a :class:`~evasion.models.Classifier` (normalisation inside)
            or a plain ``nn.Module`` in eval mode that returns logits. Noise is added in pixel
            space and noisy inputs are not clipped to the box (as in Cohen et al.).
        sigma: the noise level (> 0); radii scale with it.
        batch_size: noisy inputs per forward pass (memory: ``batch_size`` images at once).

    The guarantees are about ``g``: :meth:`certify` returns radii within which ``g``'s
    prediction is constant (with probability ``>= 1 - alpha`` over the sampling); they say
    nothing about ``f``.
    """

    def __init__(self, model: nn.Module, sigma: float, *, batch_size: int = 10_000):
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma):
            raise ConfigError(f"sigma must be a finite number > 0, got {sigma!r}")
        if sigma <= 0:
            raise ConfigError(f"sigma must be > 0, got {sigma!r}")
        self.model = model
        self.sigma = float(sigma)
        self.batch_size = _positive_int("batch_size", batch_size)
        self._classifier = model if isinstance(model, Classifier) else None
        if self._classifier is not None:
            self._check_classifier(self._classifier)

    # -- the base model ----------------------------------------------------------------------
    @staticmethod
    def _check_classifier(clf: Classifier) -> None:
        if clf.rejects:
            raise ConfigError("smoothing a classifier with a reject option is not supported")
        if clf.num_classes < 2:
            raise ConfigError(f"smoothing needs at least 2 classes, the model has {clf.num_classes}")

    def classifier(self, x: Tensor | None = None) -> Classifier:
        """The base model as a Classifier (a plain module is wrapped on first use, reading ``x``)."""
        if self._classifier is None:
            self._classifier = as_classifier(self.model, x)
            self._check_classifier(self._classifier)
        return self._classifier

    # -- Monte Carlo -------------------------------------------------------------------------
    def _generator(self, generator: torch.Generator | None, device: torch.device) -> torch.Generator:
        """A generator on ``device`` (derived deterministically from ``generator`` if it is elsewhere)."""
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        elif not isinstance(generator, torch.Generator):
            raise ConfigError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type == device.type:
            return generator
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        return torch.Generator(device=device).manual_seed(seed)

    @torch.no_grad()
    def counts(self, x: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``(N, num_classes)`` int64: how often ``f(x_i + d)`` chose each class in ``n`` draws per image.

        All ``N * n`` noisy inputs are streamed through the model in chunks of ``batch_size``
        (a chunk may span several images); the classes are counted per chunk with one bincount.
        """
        n = _positive_int("n", n)
        clf = self.classifier(x)
        x = clf.check_inputs(x)
        num, k, device = x.shape[0], clf.num_classes, x.device
        gen = self._generator(generator, device)
        counts = torch.zeros(num * k, dtype=torch.long, device=device)
        total = num * n
        for start in range(0, total, self.batch_size):
            stop = min(total, start + self.batch_size)
            image = torch.arange(start, stop, device=device) // n
            noise = torch.randn((stop - start, *x.shape[1:]), generator=gen, device=device, dtype=x.dtype)
            noisy = noise.mul_(self.sigma).add_(x[image])
            pred = clf(noisy).argmax(dim=1)
            counts += torch.bincount(image * k + pred, minlength=num * k)
        return counts.view(num, k).cpu()

    def predict(
        self, x: Tensor, n: int, alpha: float = 0.001, generator: torch.Generator | None = None
    ) -> Tensor:
        """Cohen et al.'s PREDICT: ``g(x)`` per image (int64, CPU), :data:`ABSTAIN` where unsure.

        The top two classes of ``n`` draws are compared with a two-sided binomial test; the top
        class is returned when the test rejects a tie at level ``alpha``, so a returned class is
        ``g(x)`` with probability at least ``1 - alpha``.
        """
        n = _positive_int("n", n)
        alpha = _alpha(alpha)
        top = self.counts(x, n, generator).topk(2, dim=1)
        n_a, n_b = top.values[:, 0].numpy(), top.values[:, 1].numpy()
        # two-sided binomial test of n_A successes in n_A + n_B trials against p = 1/2
        p_value = torch.from_numpy(2 * stats.binom.cdf(n_b, n_a + n_b, 0.5)).clamp(max=1.0)
        pred = top.indices[:, 0].clone()
        pred[p_value > alpha] = ABSTAIN
        return pred

    def certify(
        self,
        x: Tensor,
        n0: int,
        n: int,
        alpha: float = 0.001,
        generator: torch.Generator | None = None,
    ) -> SmoothingCertificate:
        """Cohen et al.'s CERTIFY: the top class from ``n0`` draws, its probability bound from ``n`` more.

        ``p_lower`` is the one-sided ``1 - alpha`` Clopper-Pearson bound ``Beta.ppf(alpha, n_A,
        n - n_A + 1)``; the image is certified at radius ``sigma * Phi^-1(p_lower)`` if
        ``p_lower >= 1/2`` and abstains otherwise. The selection draws and the estimation draws
        are separate (both from ``generator``), as the bound requires.
        """
        n0, n = _positive_int("n0", n0), _positive_int("n", n)
        alpha = _alpha(alpha)
        if n0 > n:
            raise ConfigError(f"n0 ({n0}) must not exceed n ({n}): n0 selects the class, n certifies it")
        if generator is None:  # one generator for both rounds: the selection draws stay independent
            generator = torch.Generator().manual_seed(0)
        guess = self.counts(x, n0, generator).argmax(dim=1)
        n_a = self.counts(x, n, generator).gather(1, guess[:, None])[:, 0]
        counts = n_a.numpy()
        with_a = counts > 0
        lower = torch.zeros(len(counts), dtype=torch.float64)
        lower[torch.from_numpy(with_a)] = torch.from_numpy(
            stats.beta.ppf(alpha, counts[with_a], n - counts[with_a] + 1).astype("float64")
        )
        abstained = lower < 0.5
        radius = torch.from_numpy(self.sigma * stats.norm.ppf(lower.clamp(min=0.5).numpy()))
        radius[abstained] = 0.0
        prediction = torch.where(abstained, torch.full_like(guess, ABSTAIN), guess)
        return SmoothingCertificate(
            prediction=prediction,
            radius=radius,
            abstained=abstained,
            p_lower=lower,
            top_count=n_a,
            sigma=self.sigma,
            n0=n0,
            n=n,
            alpha=alpha,
        )

    # -- the attacker's view -------------------------------------------------------------------
    def attackable(self, samples: int = 64, seed: int = 0, x: Tensor | None = None) -> Classifier:
        """A :class:`Classifier` whose scores are :class:`NoisySoftmax` of the base model.

        Hand it to any gradient attack to attack the smoothed classifier (expectation over
        transformation with ``samples`` draws per forward pass). Its own decisions are noisy
        estimates: judge the points an attack returns with :meth:`predict`.
        """
        clf = self.classifier(x)
        return Classifier(
            NoisySoftmax(clf, self.sigma, samples, seed),
            clf.num_classes,
            input_shape=clf.input_shape,
            bounds=clf.bounds,
            name=f"{clf.name}-smoothed-{self.sigma:g}",
        )


@dataclass(frozen=True)
class SmoothedAttack:
    """An L2 attack on the smoothed classifier, judged by Cohen et al.'s PREDICT.

    Attributes:
        adversarial: the attack's points (inside the box and the L2 ball of ``epsilon``).
        prediction: PREDICT of the smoothed classifier there (:data:`ABSTAIN` possible).
        broken: the smoothed classifier predicts a class other than ``y`` (an abstention is not
            a break: it is no wrong answer).
        norms: ``||adversarial - x||_2``.
        epsilon: the attack's L2 budget.
    """

    adversarial: Tensor
    prediction: Tensor
    broken: Tensor
    norms: Tensor
    epsilon: float


def attack_smoothed(
    smoothed: SmoothedClassifier,
    x: Tensor,
    y: Tensor,
    *,
    epsilon: float,
    samples: int = 64,
    steps: int = 20,
    n: int = 1_000,
    alpha: float = 0.001,
    attack: object | None = None,
    generator: torch.Generator | None = None,
) -> SmoothedAttack:
    """Attack the smoothed classifier with PGD (L2, ``steps`` steps) through Monte-Carlo noise.

    The gradient of the cross-entropy of :meth:`SmoothedClassifier.attackable` (``samples`` draws
    per step) drives the attack; the returned points are then classified by PREDICT with ``n``
    fresh draws, and only a confident wrong class counts as broken. ``attack`` replaces the
    default PGD (any :class:`~evasion.attacks.Attack` that runs in L2). A sample certified at a
    radius larger than ``epsilon`` must never come back broken (up to the ``alpha`` of both).
    """
    from ..attacks import PGD, Attack  # lazy: verification does not need the attacks to import

    if attack is None:
        attack = PGD(steps=_positive_int("steps", steps), early_stop=False, keep="last")
    if not isinstance(attack, Attack):
        raise ConfigError(f"attack must be an evasion Attack, got {type(attack).__name__}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    soft = smoothed.attackable(samples, seed, x)
    threat = ThreatModel("l2", epsilon, soft.bounds)
    result = attack(soft, x, y, threat=threat, generator=gen)
    prediction = smoothed.predict(result.adversarial, n, alpha, gen)
    y_cpu = torch.as_tensor(y).cpu()
    broken = (prediction != y_cpu) & (prediction != ABSTAIN)
    return SmoothedAttack(
        adversarial=result.adversarial.detach(),
        prediction=prediction,
        broken=broken,
        norms=result.norms.detach().cpu(),
        epsilon=float(epsilon),
    )

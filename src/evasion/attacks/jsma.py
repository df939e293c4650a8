"""JSMA: the Jacobian-based saliency map attack (Papernot et al. 2016), an L0 attack on pixel pairs.

Each iteration takes the forward derivatives of the target class score ``Z_t`` and of the sum of
the other class scores, and moves the pair of pixels ``(p, q)`` that maximises
``alpha * |beta|`` under ``alpha > 0, beta <= 0`` (``alpha``: the pair's effect on ``Z_t``,
``beta``: on the others) to the end of its box. ``direction="increase"`` is the paper's
``theta = +1`` (pixels go to their upper bound), ``"decrease"`` its ``theta = -1``; the default
``"both"`` sends each channel to whichever end raises ``Z_t - sum_others`` to first order (a
stronger attack: on a linear model one direction alone often cannot reach the target). A moved
pixel leaves the search domain; the attack stops at the target, when the pixel budget is spent,
or when no pair (and no single pixel) qualifies.

Pixels, not channels: a pixel is all its channels (L0 counts pixels here), and moving it sets
every free channel to a bound. The derivatives are taken on the logits (Carlini and Wagner's
"JSMA-Z": softmax probabilities saturate) and weighted by the change each channel would make,
so the map is the first-order effect of the move (for MNIST's near-binary pixels this is the
paper's map). Untargeted mode aims at the runner-up class of the clean input and counts any
wrong class as success. Images with more than ``max_pair_pixels`` candidate pixels search
pairs among that many best single pixels (ranked by ``alpha - beta``), which bounds the
``O(pixels^2)`` pair search; MNIST's 784 pixels are searched exhaustively.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError
from .base import Attack, AttackResult, Problem, check_fraction, check_int

__all__ = ["DIRECTIONS", "JSMA"]

#: where JSMA moves the pixels it picks (the paper's theta = +1 / -1, or either end)
DIRECTIONS: tuple[str, ...] = ("increase", "decrease", "both")

_PAIR_CHUNK = 1 << 24  # pair-saliency entries per chunk of samples (memory bound)


@dataclass(frozen=True)
class JSMA(Attack):
    """Papernot et al.'s saliency-map attack on pixel pairs (white-box, L0).

    Changes at most ``min(floor(threat.epsilon), max(1, floor(gamma * pixels)))`` pixels.

    Args:
        direction: ``"increase"`` (the paper's theta = +1: chosen pixels go to their upper
            bound), ``"decrease"`` (theta = -1) or ``"both"`` (each channel to the helpful end).
        gamma: the largest fraction of the image's pixels the attack may change.
        max_pair_pixels: pairs are searched among at most this many candidate pixels per image.
    """

    name: ClassVar[str] = "jsma"
    norms = ("l0",)
    direction: str = "both"
    gamma: float = 1.0
    max_pair_pixels: int = 1024

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}")
        check_fraction("gamma", self.gamma)
        check_int("max_pair_pixels", self.max_pair_pixels, 2)

    def needs_finite_epsilon(self) -> bool:
        return False

    def _budget(self, problem: Problem, pixels: int) -> int:
        k = max(1, math.floor(self.gamma * pixels))
        eps = problem.threat.epsilon
        return k if math.isinf(eps) else min(k, math.floor(eps))

    def _run(self, problem: Problem) -> AttackResult:
        p = problem
        n = p.n
        c = p.x.shape[1] if p.x.dim() == 4 else 1
        shape = (n, c, p.x[0].numel() // c)
        x, lower, upper = (t.reshape(shape) for t in (p.x, p.lower, p.upper))
        budget = self._budget(p, shape[2])
        dev = p.x.device
        with torch.no_grad():
            clean = p.model(p.x)
        aim = p.target if p.target is not None else _runner_up(p.model.class_scores(clean), p.y)
        cur = x.clone()
        changed = torch.zeros(n, shape[2], dtype=torch.bool, device=dev)
        predictions = p.model.decide(clean)
        forwards = torch.ones(n, dtype=torch.long, device=dev)
        backwards = torch.zeros_like(forwards)
        rows = (~p.success(predictions)).nonzero().squeeze(1)
        while len(rows) and budget > 0:
            cur_a = cur[rows].requires_grad_(True)
            scores = p.model(cur_a.reshape((len(rows), *p.x.shape[1:])))
            pred = p.model.decide(scores.detach())
            predictions[rows] = pred
            forwards[rows] += 1
            left = budget - changed[rows].sum(1)
            go = ~p.success(pred, rows) & (left > 0)
            if not bool(go.any()):
                break
            z = p.model.class_scores(scores)
            z_t = z.gather(1, aim[rows, None]).squeeze(1)
            g_t, g_all = (torch.autograd.grad(v.sum(), cur_a, retain_graph=True)[0] for v in (z_t, z.sum(1)))
            g_o = g_all - g_t
            bound = self._bound(g_t - g_o, lower[rows], upper[rows])
            step = bound - cur_a.detach()
            alpha, beta = (g_t * step).sum(1), (g_o * step).sum(1)  # (A, pixels)
            movable = (step != 0).any(1) & ~changed[rows]
            backwards[rows] += 2  # the backward passes run over the whole batch
            pick = _choose(alpha[go], beta[go], movable[go], left[go], self.max_pair_pixels)
            found = pick[:, 0] >= 0
            sel = rows[go][found]
            ends = bound[go][found]
            for j in range(2):
                col = pick[found, j]
                ok = col >= 0
                r, q = sel[ok], col[ok]
                cur[r, :, q] = ends[ok.nonzero().squeeze(1), :, q]
                changed[r, q] = True
            rows = sel
        adversarial = cur.reshape(p.x.shape).detach()
        fraction = changed.sum(1).to(p.x.dtype) / shape[2]
        return self.result(
            p, adversarial, predictions, forwards, backwards, stats={"pixel_fraction": fraction}
        )

    def _bound(self, gain: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
        """Where each channel would move: its upper or lower bound (``gain``: d(Z_t - others)/dx)."""
        if self.direction == "increase":
            return upper
        if self.direction == "decrease":
            return lower
        return torch.where(gain >= 0, upper, lower)


def _runner_up(class_scores: Tensor, y: Tensor) -> Tensor:
    """The best-scoring class other than ``y`` (untargeted JSMA aims there)."""
    return class_scores.scatter(1, y[:, None], -math.inf).argmax(1)


def _choose(alpha: Tensor, beta: Tensor, movable: Tensor, left: Tensor, limit: int) -> Tensor:
    """``(A, 2)`` pixels to move per sample (second -1 for a single pixel, both -1: none qualifies).

    The best pair by ``alpha * |beta|`` with ``alpha > 0, beta <= 0`` where two pixels fit the
    budget; otherwise the best single pixel under the same conditions.
    """
    a_n, pixels = alpha.shape
    out = torch.full((a_n, 2), -1, dtype=torch.long, device=alpha.device)
    if a_n == 0:
        return out
    neg = torch.tensor(-math.inf, dtype=alpha.dtype, device=alpha.device)
    k = min(limit, pixels)
    rank = torch.where(movable, alpha - beta, neg)
    cand = rank.topk(k, dim=1).indices  # (A, k) candidate pixels
    a, b, ok = alpha.gather(1, cand), beta.gather(1, cand), movable.gather(1, cand)
    chunk = max(1, _PAIR_CHUNK // (k * k))
    pair_best, pair_idx = [], []
    off_diag = ~torch.eye(k, dtype=torch.bool, device=alpha.device)
    for s in range(0, a_n, chunk):
        sa, sb, so = a[s : s + chunk], b[s : s + chunk], ok[s : s + chunk]
        pa = sa[:, :, None] + sa[:, None, :]
        pb = sb[:, :, None] + sb[:, None, :]
        valid = (pa > 0) & (pb <= 0) & so[:, :, None] & so[:, None, :] & off_diag
        best, idx = _salient(pa.flatten(1), pb.flatten(1), valid.flatten(1))
        pair_best.append(best)
        pair_idx.append(idx)
    best, idx = torch.cat(pair_best), torch.cat(pair_idx)
    use_pair = torch.isfinite(best) & (left >= 2)
    out[use_pair, 0] = cand[use_pair].gather(1, (idx[use_pair] // k)[:, None]).squeeze(1)
    out[use_pair, 1] = cand[use_pair].gather(1, (idx[use_pair] % k)[:, None]).squeeze(1)
    s_best, s_idx = _salient(alpha, beta, movable & (alpha > 0) & (beta <= 0))
    use_single = ~use_pair & torch.isfinite(s_best)
    out[use_single, 0] = s_idx[use_single]
    return out


def _salient(alpha: Tensor, beta: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Per row, the largest ``alpha * |beta|`` among ``valid`` entries (``-inf`` where none), its
    index; ties (e.g. ``beta = 0`` where the other scores ignore a pixel) go to ``alpha - beta``."""
    neg = torch.tensor(-math.inf, dtype=alpha.dtype, device=alpha.device)
    score = torch.where(valid, alpha * -beta, neg)
    best = score.amax(1, keepdim=True)
    tie = valid & (score == best)
    idx = torch.where(tie, alpha - beta, neg).argmax(1)
    return best.squeeze(1), idx

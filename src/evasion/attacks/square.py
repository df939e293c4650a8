"""The Square attack (Andriushchenko et al., ECCV 2020): a random search that needs only scores.

Each iteration changes the current point on one random square window and keeps the change if the
margin loss improves. In L∞ the window is set to ``x ± epsilon`` (one random sign per channel);
in L2 a pair of opposite "pyramids" is written into one window while the mass of a second window
is moved into it, keeping ``||delta||_2 = epsilon``. The square's side shrinks on the paper's
schedule: a fraction ``p`` of the image, ``p_init`` halved after 10, 50, 200, 500, 1000, 2000,
4000, 6000 and 8000 of 10,000 iterations (rescaled to the query budget, as AutoAttack does).

The attack sees the model only through an :class:`evasion.access.Victim` with the ``"scores"``
view: it cannot take a gradient, and every query is counted. ``forwards`` are the queries each
sample used: one for the clean point (a sample the model already gets wrong is returned as it
is), one per start and one per iteration; a sample stops as soon as it is broken. Each restart
(on the samples still unbroken) has ``queries`` queries, the first restart including the clean
query, so a sample never uses more than ``restarts * queries``.

Mask and per-pixel box: squares are drawn inside the bounding box of the pixels the attacker may
change (the side measured on that box), and every candidate is projected onto ball ∩ box, so
pixels outside the mask never move. Against a classifier with a reject option the margin sees
the reject score (untargeted, it counts as the true class; targeted, it is one more competitor).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from .._validation import fraction, integer
from ..access import Victim
from ..perturbations import norm as perturbation_norm
from ..perturbations import project as project_onto
from .base import Attack, AttackResult, Problem
from .losses import margin

__all__ = ["Square", "square_fraction"]

#: iterations (out of 10,000) after which the square's area fraction is halved once more
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
#: resamples of a candidate that changes nothing before the sample skips the iteration
_RETRIES = 8


def square_fraction(p_init: float, iteration: int, budget: int) -> float:
    """The fraction of the image the square covers at ``iteration`` of ``budget`` queries.

    The paper's piecewise-constant schedule, defined on 10,000 queries and rescaled to ``budget``."""
    it = int(iteration / budget * 10000)
    return p_init / 2 ** bisect_left(_HALVINGS, it)


def _margin_view(scores: Tensor, y: Tensor, target: Tensor | None, k: int, rejects: bool) -> Tensor:
    """The margin an attacker of a (possibly rejecting) classifier maximises: > 0 only if evading."""
    if rejects and target is None:  # a rejection is as bad as the true class: merge the two
        z_y = scores[:, :k].gather(1, y[:, None])[:, 0]
        merged = torch.logaddexp(z_y, scores[:, k])
        scores = scores[:, :k].scatter(1, y[:, None], merged[:, None])
    return margin(scores, y, target)


def _rings(size: int, device: torch.device) -> Tensor:
    """``cum[j] = sum_{k < j} 1 / (k + 1)^2`` for ``j = 0 .. size + 2`` (the pyramids' levels)."""
    weights = 1.0 / torch.arange(1, size + 3, device=device, dtype=torch.float64) ** 2
    return torch.cat([torch.zeros(1, device=device, dtype=torch.float64), weights.cumsum(0)])


def _pyramid(
    top: Tensor, left: Tensor, side: Tensor, flip: Tensor, shape: tuple[int, int], cum: Tensor
) -> Tensor:
    """``(n, 1, H, W)``: per sample, two opposite "pyramids" filling the square at (top, left).

    The square of side ``s`` is split into two halves (across rows, or columns where ``flip``);
    each half holds ``sum_{k >= d} 1 / (k + 1)^2`` at Chebyshev distance ``d`` from its centre, the
    first half positive, the second negative: a smooth, zero-mean pattern of unit L2 norm."""
    h, w = shape
    dev = top.device
    rows = torch.arange(h, device=dev)[None, :] - top[:, None]  # (n, H) offsets in the square
    cols = torch.arange(w, device=dev)[None, :] - left[:, None]
    s = side[:, None, None]
    inside = ((rows >= 0) & (rows < side[:, None]))[:, :, None] & ((cols >= 0) & (cols < side[:, None]))[
        :, None, :
    ]
    r, c = rows[:, :, None].expand(-1, h, w), cols[:, None, :].expand(-1, h, w)
    f = flip[:, None, None]
    a, b = torch.where(f, c, r), torch.where(f, r, c)  # a: across the halves, b: along them
    half = s // 2
    first = a < half
    a_rel = torch.where(first, a, a - half)
    length = torch.where(first, half, s - half)
    d = torch.maximum((a_rel - length // 2).abs(), (b - s // 2).abs())
    k = s // 2 + 1  # rings 0 .. k-1
    levels = cum.numel() - 1
    value = (cum[k.clamp(max=levels)] - cum[d.clamp(0, levels)]).clamp_min(0.0)
    value = torch.where(first, value, -value) * inside
    size = value.flatten(1).norm(dim=1).clamp_min(1e-12)
    return (value / size[:, None, None])[:, None].float()


@dataclass
class _Search:
    """Per-call state shared by the restarts: the clean points, their box and the free region."""

    problem: Problem
    victim: Victim
    epsilon: float
    norm: str
    #: per sample: bounding box (top, left, height, width) of the pixels the attacker may change
    top: Tensor
    left: Tensor
    height: Tensor
    width: Tensor
    #: row and column indices ``(1, H)``, ``(1, W)``, and the pyramids' level table
    row_index: Tensor = field(init=False, repr=False)
    col_index: Tensor = field(init=False, repr=False)
    cum: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        h, w = self.problem.x.shape[2:]
        dev = self.problem.x.device
        self.row_index = torch.arange(h, device=dev)[None, :]
        self.col_index = torch.arange(w, device=dev)[None, :]
        self.cum = _rings(max(h, w), dev)

    @classmethod
    def of(cls, problem: Problem, victim: Victim) -> _Search:
        p = problem
        n, _, h, w = p.x.shape
        dev = p.x.device
        if p.free is None:
            zeros = torch.zeros(n, dtype=torch.long, device=dev)
            return cls(p, victim, p.threat.epsilon, p.threat.norm, zeros, zeros, zeros + h, zeros + w)
        free_px = p.free.any(dim=1)  # (n, H, W)
        rows, cols = free_px.any(dim=2), free_px.any(dim=1)

        def first_last(flags: Tensor) -> tuple[Tensor, Tensor]:
            idx = torch.arange(flags.shape[1], device=dev)
            first = torch.where(flags, idx, flags.shape[1]).amin(dim=1)
            last = torch.where(flags, idx, -1).amax(dim=1)
            return first, last

        top, bottom = first_last(rows)
        left, right = first_last(cols)
        # a sample with no free pixel (its mask row is empty) gets the whole image: nothing moves
        none = bottom < top
        top, left = torch.where(none, 0, top), torch.where(none, 0, left)
        height = torch.where(none, h, bottom - top + 1)
        width = torch.where(none, w, right - left + 1)
        return cls(p, victim, p.threat.epsilon, p.threat.norm, top, left, height, width)

    # -- randomness (always drawn from the problem's generator) ---------------------------------
    def _rand(self, *shape: int) -> Tensor:
        gen = self.problem.generator
        return torch.rand(shape, generator=gen, device=gen.device).to(self.problem.x.device)

    def _signs(self, n: int, channels: int) -> Tensor:
        return (self._rand(n, channels, 1, 1) < 0.5).to(self.problem.x.dtype) * 2 - 1

    def _corner(self, rows: Tensor, side: Tensor) -> tuple[Tensor, Tensor]:
        """A uniformly random top-left corner of a square of ``side`` inside each bounding box."""
        u = self._rand(2, int(rows.numel()))
        top = self.top[rows] + (u[0] * (self.height[rows] - side + 1)).long()
        left = self.left[rows] + (u[1] * (self.width[rows] - side + 1)).long()
        return top, left

    def _side(self, rows: Tensor, p: float) -> Tensor:
        area = (self.height[rows] * self.width[rows]).double()
        cap = torch.minimum(self.height[rows], self.width[rows])
        side = torch.round(torch.sqrt(p * area)).long()
        if self.norm == "l2":  # odd sides of at least 3 (as in the paper), where the box allows
            side = side.clamp_min(3)
            side = side + (side % 2 == 0).long()
        side = torch.minimum(side.clamp_min(1), cap)
        return side

    def _window(self, top: Tensor, left: Tensor, side: Tensor) -> Tensor:
        """``(n, 1, H, W)`` boolean masks of the squares."""
        r, c = self.row_index, self.col_index
        in_r = (r >= top[:, None]) & (r < (top + side)[:, None])
        in_c = (c >= left[:, None]) & (c < (left + side)[:, None])
        return (in_r[:, :, None] & in_c[:, None, :])[:, None]

    def project(self, z: Tensor, rows: Tensor) -> Tensor:
        p = self.problem
        return project_onto(z, p.x[rows], self.epsilon, self.norm, p.lower[rows], p.upper[rows])

    def _free(self, rows: Tensor) -> Tensor | None:
        return None if self.problem.free is None else self.problem.free[rows]

    def _scale_to_epsilon(self, delta: Tensor) -> Tensor:
        size = perturbation_norm(delta, "l2").clamp_min(1e-12)
        return delta * (self.epsilon / size).reshape((-1,) + (1,) * (delta.dim() - 1))

    # -- starting points -------------------------------------------------------------------------
    def start(self, rows: Tensor) -> Tensor:
        """A random starting point per sample: vertical stripes of ±epsilon (L∞), or a grid of
        pyramids scaled to the whole budget (L2)."""
        x = self.problem.x[rows]
        n, ch, h, w = x.shape
        if self.norm == "linf":
            stripes = (self._rand(n, ch, 1, w) < 0.5).to(x.dtype) * 2 - 1
            return self.project(x + self.epsilon * stripes, rows)
        block = (torch.minimum(self.height[rows], self.width[rows]) // 5).clamp_min(1)
        across, down = self.width[rows] // block, self.height[rows] // block
        off_r = self.top[rows] + (self.height[rows] - down * block) // 2
        off_c = self.left[rows] + (self.width[rows] - across * block) // 2
        delta = torch.zeros_like(x)
        for i in range(int(down.max())):
            for j in range(int(across.max())):
                valid = ((i < down) & (j < across)).to(x.dtype)[:, None, None, None]
                flip = self._rand(n) < 0.5
                pattern = _pyramid(off_r + i * block, off_c + j * block, block, flip, (h, w), self.cum)
                delta += valid * pattern.to(x.dtype) * self._signs(n, ch)
        free = self._free(rows)
        if free is not None:
            delta = delta * free
        return self.project(x + self._scale_to_epsilon(delta), rows)

    # -- one proposal per sample -------------------------------------------------------------------
    def propose(self, rows: Tensor, current: Tensor, p: float) -> Tensor:
        """A candidate per sample that differs from ``current`` on one random square."""
        side = self._side(rows, p)
        if self.norm == "linf":
            return self._linf_step(rows, current, side)
        return self._l2_step(rows, current, side)

    def _linf_step(self, rows: Tensor, current: Tensor, side: Tensor) -> Tensor:
        x = self.problem.x[rows]
        top, left = self._corner(rows, side)
        window = self._window(top, left, side)
        signs = self._signs(x.shape[0], x.shape[1])
        cand = self.project(torch.where(window, x + self.epsilon * signs, current), rows)
        # the window already holds these signs (or the box clips them away): the opposite signs
        # change every free pixel of it (the paper redraws the signs until something changes)
        same = ~(cand != current).flatten(1).any(dim=1)
        if bool(same.any()):
            k = same.nonzero()[:, 0]
            flipped = torch.where(window[k], x[k] - self.epsilon * signs[k], current[k])
            cand[k] = self.project(flipped, rows[k])
        return cand

    def _l2_step(self, rows: Tensor, current: Tensor, side: Tensor) -> Tensor:
        x = self.problem.x[rows]
        n, ch, h, w = x.shape
        shape = (-1,) + (1,) * (x.dim() - 1)
        delta = current - x
        top1, left1 = self._corner(rows, side)
        top2, left2 = self._corner(rows, side)
        w1, w2 = self._window(top1, left1, side), self._window(top2, left2, side)
        both = w1 | w2
        room = (self.epsilon**2 - perturbation_norm(delta, "l2") ** 2).clamp_min(0.0)
        mass = perturbation_norm(delta * both, "l2") ** 2  # what the two windows hold now
        old = delta * w1
        old = old / old.flatten(2).norm(dim=2).clamp_min(1e-12)[:, :, None, None]
        flip = self._rand(n) < 0.5
        pattern = _pyramid(top1, left1, side, flip, (h, w), self.cum).to(x.dtype) * self._signs(n, ch)
        free = self._free(rows)
        if free is not None:
            pattern = pattern * free
        pattern = pattern / pattern.flatten(2).norm(dim=2).clamp_min(1e-12)[:, :, None, None]
        new = pattern + old
        new = new / perturbation_norm(new, "l2").clamp_min(1e-12).reshape(shape)
        new = new * torch.sqrt(room + mass).reshape(shape)
        moved = torch.where(both, torch.zeros_like(delta), delta) + torch.where(
            w1, new, torch.zeros_like(new)
        )
        return self.project(x + self._scale_to_epsilon(moved), rows)

    # -- queries -----------------------------------------------------------------------------------
    def evaluate(self, z: Tensor, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Query the victim once per row: (loss to maximise, decisions, success)."""
        p, v = self.problem, self.victim
        scores = v.scores(z)
        target = None if p.target is None else p.target[rows]
        loss = _margin_view(scores, p.y[rows], target, v.num_classes, v.rejects)
        predictions = v.decide(scores)
        return loss, predictions, p.success(predictions, rows)


@dataclass(frozen=True)
class Square(Attack):
    """Square attack: score-based random search under an L∞ or L2 budget, no gradients.

    Args:
        queries: query budget per sample and restart (the clean query included in the first).
        p_init: fraction of the image the first squares cover, in (0, 1] (0.8 as in AutoAttack).
        restarts: independent runs from new random starts, on the samples still unbroken.
    """

    name: ClassVar[str] = "square"
    norms = ("linf", "l2")
    black_box = True
    reject_aware = True
    access: ClassVar[str] = "scores"
    queries: int = 5000
    p_init: float = 0.8
    restarts: int = 1

    def __post_init__(self) -> None:
        integer(self.queries, "queries", minimum=1)
        fraction(self.p_init, "p_init", open_low=True)
        integer(self.restarts, "restarts", minimum=1)

    def _run(self, problem: Problem) -> AttackResult:
        p = problem
        victim = Victim(p.model, view="scores", max_queries=p.n * self.queries * self.restarts)
        search = _Search.of(p, victim)
        n, dev = p.n, p.x.device
        forwards = torch.zeros(n, dtype=torch.long, device=dev)
        everyone = torch.arange(n, device=dev)
        with torch.no_grad():
            best_loss, best_pred, done = search.evaluate(p.x, everyone)
            forwards += 1
            best_x = p.x.clone()
            for restart in range(self.restarts):
                budget = self.queries - (1 if restart == 0 else 0)
                rows = (~done).nonzero()[:, 0]
                if budget < 1 or rows.numel() == 0:
                    continue
                if restart == 0 and p.init is not None:
                    start = search.project(p.init[rows], rows)
                else:
                    start = search.start(rows)
                cur, loss, pred, won = self._search(search, rows, start, budget, forwards)
                take = won | (loss > best_loss[rows])
                best_x[rows[take]], best_loss[rows[take]] = cur[take], loss[take]
                best_pred[rows[take]] = pred[take]
                done[rows[won]] = True
        return self.result(p, best_x, best_pred, forwards, torch.zeros_like(forwards))

    def _search(
        self, search: _Search, rows: Tensor, start: Tensor, budget: int, forwards: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One run on ``rows`` from ``start`` with ``budget`` queries per sample (the start's
        included); returns per row the best point, its loss, decision and success."""
        cur = start
        loss, pred, won = search.evaluate(cur, rows)
        forwards[rows] += 1
        for it in range(1, budget):
            active = (~won).nonzero()[:, 0]
            if active.numel() == 0:
                break
            frac = square_fraction(self.p_init, it, self.queries)
            cand = search.propose(rows[active], cur[active], frac)
            moved = (cand != cur[active]).flatten(1).any(dim=1)
            for _ in range(_RETRIES):  # a square on fixed or saturated pixels: draw another
                if bool(moved.all()):
                    break
                still = (~moved).nonzero()[:, 0]
                again = search.propose(rows[active[still]], cur[active[still]], frac)
                cand[still] = again
                moved[still] = (again != cur[active[still]]).flatten(1).any(dim=1)
            asked = active[moved]
            if asked.numel() == 0:
                continue
            new_loss, new_pred, new_won = search.evaluate(cand[moved], rows[asked])
            forwards[rows[asked]] += 1
            better = new_won | (new_loss > loss[asked])
            keep = asked[better]
            cur[keep], loss[keep] = cand[moved][better], new_loss[better]
            pred[keep], won[keep] = new_pred[better], new_won[better]
        return cur, loss, pred, won

"""The one-pixel (few-pixel) attack: differential evolution over d pixels, scores only.

Su, Vargas and Sakurai (2019) change ``d`` pixels of an image, each encoded as its position and
one value per channel, and search them by differential evolution: a population of candidates,
each child ``x_r1 + F (x_r2 - x_r3)`` built from three distinct random members (F = 0.5), a
child replacing its parent when it scores at least as well, and an early stop once a candidate
evades. The attacker only queries the model through a :class:`~evasion.access.Victim` in the
``"scores"`` view: no gradient, every forward pass counted.

Encoding here (per pixel): a position in ``[0, n_free)`` indexing the sample's free pixels in
raster order (pixels with a channel the mask and box let move; without a mask this is
``h * W + w``, so a linear combination of positions is one of the ``(h, w)`` coordinates up to
row carries), wrapped around at the end; and one fraction in ``[0, 1]`` per channel that places
the value inside that pixel's box (channels the mask fixes stay put). Values start from
Su et al.'s N(128, 127) on a 0-255 scale (N(0.5, 0.5), clipped); positions uniformly.

Fitness is the class-score margin (true class minus best other class, or best other class minus
the target), not Su et al.'s probability: a float32 softmax saturates at 1 on confident models
and would leave the search blind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..access import Victim
from ..errors import ConfigError, InputError
from ..models.classifier import REJECT
from .base import Attack, AttackResult, Problem, check_int, check_positive

__all__ = ["OnePixel", "distinct_parents"]


def distinct_parents(rows: int, size: int, generator: torch.Generator) -> Tensor:
    """``(3, rows, size)`` indices ``r1, r2, r3``: distinct, and distinct from each member's own index.

    Drawn without rejection: ``r_k`` is uniform over the ``size - k`` indices not yet excluded
    (shifted past each excluded index in increasing order).
    """
    dev = generator.device
    own = torch.arange(size, device=dev).expand(rows, size)
    excluded = [own]
    for k in range(1, 4):
        r = torch.randint(0, size - k, (rows, size), generator=generator, device=dev)
        for e in torch.sort(torch.stack(excluded), dim=0).values:
            r = r + (r >= e).long()
        excluded.append(r)
    return torch.stack(excluded[1:])


@dataclass
class _Search:
    """The per-call state of the evolution: the problem seen through a scores-only victim."""

    problem: Problem
    victim: Victim
    pixels: int  # d, the pixels each candidate changes
    batch_size: int
    num_classes: int
    rejects: bool
    order: Tensor  # (N, P): free pixels first, in raster order
    n_free: Tensor  # (N,)
    x: Tensor  # (N, C, P)
    lower: Tensor
    upper: Tensor

    def decide(self, scores: Tensor) -> Tensor:
        pred = scores.argmax(dim=1)
        if self.rejects:
            pred = torch.where(pred == self.num_classes, torch.full_like(pred, REJECT), pred)
        return pred

    def fitness(self, scores: Tensor, rows: Tensor) -> Tensor:
        """Margin to minimise (< 0: the class scores evade); ``rows`` index the problem's samples."""
        cs = scores[:, : self.num_classes]
        p = self.problem
        aim = p.target[rows] if p.target is not None else p.y[rows]
        own = cs.gather(1, aim[:, None]).squeeze(1)
        other = cs.scatter(1, aim[:, None], -math.inf).amax(dim=1)
        return other - own if p.target is not None else own - other

    def images(self, rows: Tensor, genes: Tensor) -> Tensor:
        """Candidate images ``(A * M, C, ...)`` for genes ``(A, M, d, 1 + C)`` of samples ``rows``."""
        a, m, d, _ = genes.shape
        c = self.x.shape[1]
        slot = genes[..., 0].floor().long().clamp_min(0)
        slot = torch.minimum(slot, (self.n_free[rows] - 1).clamp_min(0)[:, None, None])
        pix = self.order[rows].gather(1, slot.reshape(a, m * d)).reshape(a, m, d)
        # a pixel drawn twice takes its first values, so the scatter below is order-free
        first = (pix[:, :, :, None] == pix[:, :, None, :]).float().argmax(dim=3)
        frac = genes[..., 1:].gather(2, first[..., None].expand(a, m, d, c))
        where = pix.reshape(a, 1, m * d).expand(a, c, m * d)
        lo = self.lower[rows].gather(2, where).reshape(a, c, m, d).permute(0, 2, 1, 3)
        hi = self.upper[rows].gather(2, where).reshape(a, c, m, d).permute(0, 2, 1, 3)
        values = torch.minimum(torch.maximum(lo + frac.permute(0, 1, 3, 2) * (hi - lo), lo), hi)
        out = self.x[rows][:, None].expand(a, m, c, self.x.shape[2]).clone()
        out.scatter_(3, pix[:, :, None, :].expand(a, m, c, d), values)
        return out.reshape((a * m, *tuple(self.problem.x.shape[1:])))

    def evaluate(self, rows: Tensor, genes: Tensor) -> tuple[Tensor, Tensor]:
        """Fitness and success ``(A, M)`` of every candidate, ``batch_size`` images per forward."""
        a, m = genes.shape[:2]
        per = max(1, self.batch_size // m)
        fit, hit = [], []
        for start in range(0, a, per):
            r, g = rows[start : start + per], genes[start : start + per]
            scores = self.victim.scores(self.images(r, g))
            rep = r.repeat_interleave(m)
            fit.append(self.fitness(scores, rep).reshape(len(r), m))
            hit.append(self.problem.success(self.decide(scores), rep).reshape(len(r), m))
        return torch.cat(fit), torch.cat(hit)


@dataclass(frozen=True)
class OnePixel(Attack):
    """Su et al.'s few-pixel attack by differential evolution (black-box: scores only).

    Changes ``d`` pixels per image (a pixel is all its channels): ``d = floor(threat.epsilon)``
    for ``ThreatModel("l0", d)``, or ``pixels`` when given (capped by the threat's budget); only
    free pixels (mask), each channel inside its box.

    Args:
        pixels: ``d``, the pixels each candidate changes (at most the image's pixel count);
            ``None``: as many as the threat's L0 budget allows.
        population: candidates per image (>= 4: each child needs three other parents).
        generations: iterations of the evolution after the initial population.
        mutation: the differential weight ``F``.
        max_queries: per-image query budget (``None``: ``population * (generations + 1) + 2``,
            i.e. the clean check, the evolution and the final check); the evolution runs the
            generations that fit.
        batch_size: images per forward pass (all candidates of several images share one).
    """

    name: ClassVar[str] = "onepixel"
    norms = ("l0",)
    black_box = True
    access: ClassVar[str] = "scores"
    pixels: int | None = None
    population: int = 400
    generations: int = 100
    mutation: float = 0.5
    max_queries: int | None = None
    batch_size: int = 8192

    def __post_init__(self) -> None:
        if self.pixels is not None:
            check_int("pixels", self.pixels, 1)
        check_int("population", self.population, 4)
        check_int("generations", self.generations, 0)
        check_positive("mutation", self.mutation)
        check_int("batch_size", self.batch_size, 1)
        if self.max_queries is not None:
            check_int("max_queries", self.max_queries, 1)
            if self.max_queries < self.population + 2:
                raise ConfigError(
                    f"max_queries={self.max_queries} is below one population ({self.population}) "
                    "plus the clean and final checks"
                )

    def needs_finite_epsilon(self) -> bool:
        return self.pixels is None

    @property
    def budget(self) -> int:
        """Queries per image: clean check + initial population + generations + final check."""
        full = self.population * (self.generations + 1) + 2
        return full if self.max_queries is None else min(full, self.max_queries)

    def _setup(self, problem: Problem) -> _Search:
        x = problem.x
        n, c = x.shape[0], (x.shape[1] if x.dim() == 4 else 1)
        total = x[0].numel() // c
        if self.pixels is not None and self.pixels > total:
            raise InputError(f"pixels={self.pixels} exceeds the {total} pixels of each input")
        eps = problem.threat.epsilon
        if self.pixels is None and eps >= total + 1:
            raise InputError(f"the L0 budget epsilon={eps:g} exceeds the {total} pixels of each input")
        if self.pixels is None:
            d = math.floor(eps)
        else:
            d = self.pixels if math.isinf(eps) else min(self.pixels, math.floor(eps))
        free = (problem.lower < problem.upper).reshape(n, c, total).any(dim=1)
        order = torch.argsort((~free).to(torch.uint8), dim=1, stable=True)
        clf = problem.model
        victim = Victim(clf, view="scores", max_queries=n * self.budget)
        flat = (
            x.reshape(n, c, total),
            problem.lower.reshape(n, c, total),
            problem.upper.reshape(n, c, total),
        )
        return _Search(
            problem,
            victim,
            d,
            self.batch_size,
            clf.num_classes,
            clf.rejects,
            order,
            free.sum(dim=1),
            *flat,
        )

    def _random_genes(self, s: _Search, rows: Tensor, d: int, gen: torch.Generator) -> Tensor:
        a, m, c = len(rows), self.population, s.x.shape[1]
        slots = torch.rand((a, m, d, 1), generator=gen, device=gen.device)
        values = (0.5 + 0.5 * torch.randn((a, m, d, c), generator=gen, device=gen.device)).clamp(0, 1)
        genes = torch.cat([slots, values], dim=3).to(s.x.device, s.x.dtype)
        genes[..., 0] *= s.n_free[rows].to(s.x.dtype)[:, None, None]
        return genes

    def _run(self, problem: Problem) -> AttackResult:
        p, gen = problem, problem.generator
        s = self._setup(problem)
        d = s.pixels
        dev = p.x.device
        clean = s.victim.scores(p.x)
        predictions = s.decide(clean)
        done = p.success(predictions)
        used = torch.ones(p.n, dtype=torch.long, device=dev)
        adversarial = p.x.clone()
        rows = (~done).nonzero().squeeze(1)
        if d == 0 or len(rows) == 0:
            return self.result(p, adversarial, predictions, used, torch.zeros_like(used))
        genes = self._random_genes(s, rows, d, gen)
        fit, hit = s.evaluate(rows, genes)
        used[rows] += self.population
        generations = min(self.generations, (self.budget - 2 - self.population) // self.population)
        best = genes.new_zeros((p.n, *genes.shape[2:]))  # each sample's best candidate so far
        attacked = rows
        for step in range(generations + 1):
            won = hit.any(dim=1)
            pick = torch.where(won, hit.float().argmax(dim=1), fit.argmin(dim=1))
            best[rows] = genes[torch.arange(len(rows), device=dev), pick]
            rows, genes, fit = rows[~won], genes[~won], fit[~won]
            if step == generations or len(rows) == 0:
                break
            genes, fit, hit = self._generation(s, rows, genes, fit, gen)
            used[rows] += self.population
        points = s.images(attacked, best[attacked, None])
        adversarial[attacked] = points
        predictions[attacked] = s.decide(s.victim.scores(points))
        used[attacked] += 1
        return self.result(p, adversarial, predictions, used, torch.zeros_like(used))

    def _generation(
        self, s: _Search, rows: Tensor, genes: Tensor, fit: Tensor, gen: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One generation: children ``r1 + F (r2 - r3)``; each replaces its parent if not worse."""
        a, m = genes.shape[:2]
        r = distinct_parents(a, m, gen).to(genes.device)
        pick = [genes.gather(1, idx[:, :, None, None].expand_as(genes)) for idx in r]
        child = pick[0] + self.mutation * (pick[1] - pick[2])
        n_free = s.n_free[rows].to(genes.dtype).clamp_min(1)[:, None, None]
        child[..., 0] = torch.remainder(child[..., 0], n_free)
        child[..., 1:] = child[..., 1:].clamp(0.0, 1.0)
        child_fit, child_hit = s.evaluate(rows, child)
        better = (child_fit <= fit) | child_hit  # parents never evade (their samples stopped)
        genes = torch.where(better[:, :, None, None], child, genes)
        return genes, torch.where(better, child_fit, fit), child_hit

"""Norm maths: projections are exact (against slow reference solvers), starts lie in the ball."""

from __future__ import annotations

import math

import pytest
import torch

from evasion.perturbations import direction, norm, project, random_start


def _bisect(fn, lo: float, hi: float, target: float) -> float:
    """Root of a non-increasing fn(t) = target on [lo, hi] by bisection."""
    for _ in range(200):
        mid = (lo + hi) / 2
        if fn(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


def reference_l2(v, x, eps, lo, hi):
    """KKT: z(lam) = clip(x + (v - x) / (1 + lam)), lam chosen so ||z - x|| = eps."""
    z = torch.clamp(v, lo, hi)
    if (z - x).norm() <= eps:
        return z
    lam = _bisect(lambda m: float((torch.clamp(x + (v - x) / (1 + m), lo, hi) - x).norm()), 0.0, 1e9, eps)
    return torch.clamp(x + (v - x) / (1 + lam), lo, hi)


def reference_l1(v, x, eps, lo, hi):
    """KKT: soft-thresholding by tau, then clipping to the box."""
    d = v - x

    def shrink(tau: float) -> torch.Tensor:
        return x + torch.clamp(torch.sign(d) * (d.abs() - tau).clamp_min(0), lo - x, hi - x)

    if (shrink(0.0) - x).abs().sum() <= eps:
        return shrink(0.0)
    tau = _bisect(lambda t: float((shrink(t) - x).abs().sum()), 0.0, float(d.abs().max()), eps)
    return shrink(tau)


def _problem(seed: int, n: int = 6):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, 5, 5, generator=g, dtype=torch.float64)
    mask = torch.rand(x.shape, generator=g) < 0.7
    lo = torch.where(mask, torch.zeros_like(x), x)
    hi = torch.where(mask, torch.ones_like(x), x)
    v = x + torch.randn(x.shape, generator=g, dtype=torch.float64) * float(torch.rand(1, generator=g)) * 2
    eps = torch.rand(n, generator=g, dtype=torch.float64) * 3
    return x, v, eps, lo, hi, mask


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(("p", "reference"), [("l2", reference_l2), ("l1", reference_l1)])
def test_projection_matches_reference_solver(seed, p, reference):
    x, v, eps, lo, hi, mask = _problem(seed)
    out = project(v, x, eps, p, lo, hi)
    for i in range(x.shape[0]):
        expected = reference(v[i], x[i], float(eps[i]), lo[i], hi[i])
        assert torch.allclose(out[i], expected, atol=1e-7), (p, i)
    assert bool((norm(out - x, p) <= eps + 1e-9).all())
    assert bool(((out >= lo) & (out <= hi)).all())
    assert torch.equal(out[~mask], x[~mask])  # masked-out pixels untouched


def test_linf_projection_is_clipping():
    x, v, eps, lo, hi, _ = _problem(3)
    out = project(v, x, eps, "linf", lo, hi)
    e = eps.reshape(-1, 1, 1, 1)
    expected = torch.minimum(torch.maximum(v, torch.maximum(lo, x - e)), torch.minimum(hi, x + e))
    assert torch.equal(out, expected)


def test_projection_is_identity_inside_and_idempotent():
    x, _, _, lo, hi, _ = _problem(4)
    inside = torch.clamp(x + 0.01 * torch.randn_like(x), lo, hi)
    for p in ("linf", "l2", "l1"):
        assert torch.allclose(project(inside, x, 10.0, p, lo, hi), inside)
        once = project(x + torch.randn_like(x), x, 0.5, p, lo, hi)
        assert torch.allclose(project(once, x, 0.5, p, lo, hi), once, atol=1e-9)


def test_l0_projection_keeps_largest_changes():
    x = torch.full((1, 1, 1, 6), 0.5, dtype=torch.float64)
    v = x + torch.tensor([0.1, -0.4, 0.3, 0.0, 0.2, -0.05], dtype=torch.float64).reshape(1, 1, 1, 6)
    out = project(v, x, 2.0, "l0", torch.zeros_like(x), torch.ones_like(x))
    assert torch.allclose((out - x).flatten(), torch.tensor([0, -0.4, 0.3, 0, 0, 0], dtype=torch.float64))


def test_l0_counts_pixels_not_channels():
    delta = torch.zeros(3, 3, 4, 4)
    delta[0, :, 1, 2] = torch.tensor([0.1, -0.2, 0.3])  # one pixel, all three channels
    delta[1, 2, 0, 0] = 0.5  # one channel of one pixel
    delta[1, 0, 3, 3] = -0.1  # and another pixel
    assert torch.equal(norm(delta, "l0"), torch.tensor([1.0, 2.0, 0.0]))
    flat = torch.tensor([[0.0, 1.0, -2.0], [0.0, 0.0, 0.0]])  # not (N, C, H, W): coordinates
    assert torch.equal(norm(flat, "l0"), torch.tensor([2.0, 0.0]))


def _reference_l0(v, x, k, lo, hi):
    """Brute force: the closest point among all choices of k pixels moved (box-clipped)."""
    import itertools

    pixels = [(h, w) for h in range(x.shape[1]) for w in range(x.shape[2])]
    target = torch.clamp(v, lo, hi)
    best, best_dist = x.clone(), math.inf
    for chosen in itertools.combinations(pixels, min(k, len(pixels))):
        z = x.clone()
        for h, w in chosen:
            z[:, h, w] = target[:, h, w]
        dist = float((z - v).square().sum())
        if dist < best_dist - 1e-12:
            best, best_dist = z, dist
    return best, best_dist


@pytest.mark.parametrize("seed", range(6))
def test_l0_projection_is_exact_on_colour_pixels(seed):
    x, v, _, lo, hi, mask = _problem(seed, n=3)
    x, v, lo, hi, mask = (t[:, :, :3, :3] for t in (x, v, lo, hi, mask))  # 9 pixels, 2 channels
    for k in (0, 1, 2, 4):
        out = project(v, x, float(k) + 0.7, "l0", lo, hi)  # floor(eps) pixels
        assert bool((norm(out - x, "l0") <= k).all())
        assert bool(((out >= lo) & (out <= hi)).all()) and torch.equal(out[~mask], x[~mask])
        for i in range(3):
            _, dist = _reference_l0(v[i], x[i], k, lo[i], hi[i])
            assert float((out[i] - v[i]).square().sum()) == pytest.approx(dist, abs=1e-9)
    once = project(v, x, 2.0, "l0", lo, hi)
    assert torch.equal(project(once, x, 2.0, "l0", lo, hi), once)


def test_l0_projection_moves_whole_pixels():
    x = torch.full((1, 3, 1, 3), 0.5, dtype=torch.float64)
    v = x.clone()
    v[0, :, 0, 0] = torch.tensor([0.6, 0.6, 0.6])  # small change on every channel: gain 0.03
    v[0, 1, 0, 1] = 0.9  # large change on one channel: gain 0.16
    v[0, 2, 0, 2] = 0.65  # gain 0.0225
    out = project(v, x, 1.0, "l0", torch.zeros_like(x), torch.ones_like(x))
    assert torch.equal(out, torch.where(torch.arange(3).reshape(1, 1, 1, 3) == 1, v, x))
    out2 = project(v, x, 2.0, "l0", torch.zeros_like(x), torch.ones_like(x))
    assert torch.equal(out2[0, :, 0, :2], v[0, :, 0, :2]) and torch.equal(out2[0, :, 0, 2], x[0, :, 0, 2])


def test_zero_epsilon_projects_to_x():
    x, v, _, lo, hi, _ = _problem(5)
    for p in ("linf", "l2", "l1"):
        assert torch.allclose(project(v, x, 0.0, p, lo, hi), x)


def test_infinite_epsilon_only_clips():
    x, v, _, lo, hi, _ = _problem(6)
    for p in ("linf", "l2", "l1"):
        assert torch.equal(project(v, x, math.inf, p, lo, hi), torch.clamp(v, lo, hi))


@pytest.mark.parametrize("p", ["linf", "l2", "l1"])
def test_random_start_inside_ball_box_and_mask(p):
    x, _, _, lo, hi, mask = _problem(7, n=50)
    start = random_start(x, 0.3, p, lo, hi, torch.Generator().manual_seed(0))
    assert bool((norm(start - x, p) <= 0.3 + 1e-9).all())
    assert bool(((start >= lo) & (start <= hi)).all())
    assert torch.equal(start[~mask], x[~mask])
    again = random_start(x, 0.3, p, lo, hi, torch.Generator().manual_seed(0))
    assert torch.equal(start, again)


def test_random_start_l2_fills_the_ball():
    x = torch.full((2000, 1, 4, 4), 0.5, dtype=torch.float64)
    s = random_start(x, 0.4, "l2", torch.zeros_like(x), torch.ones_like(x), torch.Generator().manual_seed(1))
    r = norm(s - x, "l2") / 0.4
    # uniform in a 16-dim ball: P(r <= t) = t^16
    assert abs(float((r <= 0.9).double().mean()) - 0.9**16) < 0.04


@pytest.mark.parametrize("p", ["linf", "l2", "l1"])
def test_direction_has_unit_norm_and_ascends(p):
    g = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    d = direction(g, p, l1_fraction=0.1)
    if p != "linf":
        assert torch.allclose(norm(d, p), torch.ones(5, dtype=torch.float64))
    assert bool(((g * d).flatten(1).sum(1) > 0).all())
    free = torch.rand(g.shape) < 0.5
    assert bool((direction(g, p, free=free)[~free] == 0).all())

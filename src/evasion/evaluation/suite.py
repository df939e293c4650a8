"""The default attack suite: what an evaluation runs when the user names no attacks.

A number is only as honest as the strongest attack behind it, and the strongest attack depends on
the defence. The suite is chosen per model (:func:`default_suite`), per norm:

* **an undefended model**: APGD with the cross-entropy, then APGD-T, the targeted DLR loss
  aimed in turn at the ``targets`` runner-up classes with untargeted success (Croce & Hein
  2020, as AutoAttack runs them; 2 runner-ups by default, the third evaded no more point on the
  main job); in L2 also the minimum-norm attacks (DeepFool, C&W), whose
  unbounded searches give the distribution of minimal perturbations;
* **a model with a reject option** (Melis et al.'s threshold): APGD-CE, then APGD on the margin
  ``max_{k != y} z_k - max(z_y, z_reject)`` (the losses see the reject score through
  ``attacker_view``: a rejection is as bad as the true class; on the main job's models DLR
  evaded no point more than the margin), and random noise of the same norm and size, uniform
  and Gaussian: the baseline that tells whether a defence rejects attacks or any perturbation.
  Minimum-norm attacks whose objective ignores the reject score (DeepFool) are not run on it:
  their failures would be failures of the attack, not evidence about the defence (they run on
  the undefended model);
* **a model with a detector** (:class:`~evasion.attacks.dynamic.WithDetector`): APGD on the
  margin (the cross-entropy keeps creeping up on points the detector rejects without ever
  evading it: cost without evasion), then the dynamic adversary aimed just below the
  detector's *deployed* threshold (``detector_loss="hinge"``) for the trade-offs ``sigma``
  (default 0.5: on the main job 0.25 evaded no point more after the margin attack; L∞ only by
  default: in L2 it evaded no point more either, and its fixed step had not converged after
  50 steps), then (with it) the
  margin again, started from the best point of the cascade so far
  (``AttackSpec.start_from_peers``), and the noise baseline. On the main job's detector model
  the second margin run is what leaves the self-check (a longer run of the same kind) under 1%.

The white-box attacks of a norm run as a cascade (``AttackSpec.after``, AutoAttack's protocol):
each attacks only the points the earlier ones left, so its curve is the worst case so far and
the suite costs little more than its first attack where that attack breaks most points. Then
the evaluation's self-check (:func:`self_check_specs`) re-attacks the survivors with a longer
APGD on the margin loss, started from their best points; if it breaks more than 1% of the
samples, the worst case includes them and a ``self-check`` flag says the suite was too weak.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from ..attacks import APGD, CarliniWagnerL2, DeepFool, DynamicAdversary, Noise
from ..attacks.base import Attack, Stepped
from ..attacks.dynamic import WithDetector
from ..errors import ConfigError
from ..models.classifier import Classifier
from .spec import AttackSpec

__all__ = ["DEFAULT_EPSILONS", "SuiteSettings", "default_suite", "model_kind", "self_check_specs", "suites"]

#: the epsilon grids of an evaluation that names no attacks and no grid (images in [0, 1])
DEFAULT_EPSILONS: dict[str, tuple[float, ...]] = {
    "linf": (1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 0.1, 0.2, 0.3),
    "l2": (0.1, 0.25, 0.5, 1.0, 2.0, 3.0),
}


@dataclass(frozen=True)
class SuiteSettings:
    """Sizes of the default suite, chosen so that the main job passes its own convergence checks
    on 2 CPU cores in a few minutes (``benchmarks/adaptive.py`` checks that it stays the worst)."""

    steps: int = 40
    targets: int = 2
    targeted_steps: int = 40
    dynamic_steps: int = 40
    sigmas: tuple[float, ...] = (0.5,)
    dynamic_norms: tuple[str, ...] = ("linf",)
    cw_steps: int = 100
    cw_binary_search_steps: int = 2
    cw_initial_const: float = 10.0
    deepfool_steps: int = 50


def model_kind(model: Classifier) -> str:
    """``"detector"``, ``"reject"`` or ``"plain"``: which suite a model gets."""
    if not isinstance(model, Classifier):
        raise ConfigError(f"the default attack suite needs an evasion Classifier, got {type(model).__name__}")
    if model.rejects:
        return "detector" if isinstance(model, WithDetector) else "reject"
    return "plain"


def _cascade(
    norm: str, epsilons: Sequence[float], named: Sequence[tuple[str, Attack]], from_peers: Sequence[str] = ()
) -> list[AttackSpec]:
    """Specs that run one after the other: each attacks only what the earlier ones left (those
    named in ``from_peers`` start from the best point the earlier ones found)."""
    out: list[AttackSpec] = []
    for name, attack in named:
        after = [str(p.name) for p in out]
        start = name in from_peers and bool(after)
        out.append(
            AttackSpec(
                attack, norm, list(epsilons), name=f"{name}-{norm}", after=after, start_from_peers=start
            )
        )
    return out


def default_suite(
    model: Classifier,
    epsilons: Mapping[str, Sequence[float]],
    settings: SuiteSettings | None = None,
) -> list[AttackSpec]:
    """The attacks to evaluate ``model`` with, per norm of ``epsilons`` (``linf``, ``l2``)."""
    s = settings or SuiteSettings()
    kind = model_kind(model)
    unknown = sorted(set(epsilons) - {"linf", "l2"})
    if unknown:
        raise ConfigError(f"the default attack suite covers the linf and l2 norms, not {', '.join(unknown)}")
    specs: list[AttackSpec] = []
    for norm, grid in epsilons.items():
        white: list[tuple[str, Attack]] = []
        if kind != "detector":  # CE keeps creeping up on a detector's rejected points: no use there
            white.append(("apgd-ce", APGD(steps=s.steps)))
        if kind == "plain":
            white.append(("apgd-t", APGD(steps=s.targeted_steps, loss="dlr", targets=s.targets)))
        else:  # against a rejection the margin to beat is max(z_y, z_reject)
            white.append(("apgd-margin", APGD(steps=s.steps, loss="margin")))
        if kind == "detector" and norm in s.dynamic_norms:
            white += [
                (
                    f"dynamic-hinge-{g:g}",
                    DynamicAdversary(steps=s.dynamic_steps, sigma=g, detector_loss="hinge"),
                )
                for g in s.sigmas
            ]
            # the margin again, from the best point of the cascade so far: the detector's
            # landscape rewards a second run started where the first runs got closest (in L2,
            # where the dynamic adversary is not run, it evaded no point more on the main job)
            white.append(("apgd-margin-from-best", APGD(steps=s.steps, loss="margin")))
        specs += _cascade(norm, grid, white, from_peers=["apgd-margin-from-best"])
        if kind != "plain":  # the noise baseline sees every point: not part of the cascade
            specs += [
                AttackSpec(Noise(kind=k), norm, list(grid), name=f"noise-{k}-{norm}")
                for k in ("uniform", "gaussian")
            ]
        if kind == "plain" and norm == "l2":
            cw = CarliniWagnerL2(
                steps=s.cw_steps,
                binary_search_steps=s.cw_binary_search_steps,
                initial_const=s.cw_initial_const,
                learning_rate=0.1,
            )
            specs += [
                AttackSpec(DeepFool(steps=s.deepfool_steps), norm, list(grid), name="deepfool-l2"),
                AttackSpec(cw, norm, list(grid), name="cw-l2"),
            ]
    if not specs:
        raise ConfigError(f"no default attacks for a {type(model).__name__} ({kind}) with no epsilon grid")
    return specs


def suites(
    models: Mapping[str, Classifier],
    epsilons: Mapping[str, Sequence[float]] | None = None,
    settings: SuiteSettings | None = None,
) -> list[AttackSpec]:
    """The default suites of several models as one list: an attack shared by some models runs on
    exactly those (``AttackSpec.models``)."""
    grids = DEFAULT_EPSILONS if epsilons is None else epsilons
    merged: dict[str, AttackSpec] = {}
    owners: dict[str, list[str]] = {}
    for name, model in models.items():
        for spec in default_suite(model, grids, settings):
            key = str(spec.name)
            merged.setdefault(key, spec)
            owners.setdefault(key, []).append(name)
    everyone = list(models)
    return [
        spec if owners[key] == everyone else replace(spec, models=tuple(owners[key]))
        for key, spec in merged.items()
    ]


def self_check_specs(
    specs: Sequence[AttackSpec], *, factor: int = 2, max_steps: int = 200
) -> list[AttackSpec]:
    """One self-check per norm: APGD on the reject-aware margin loss with ``factor`` times the
    steps of the norm's longest fixed-budget attack (20 to ``max_steps``), over the union of the grids, run
    after the norm's untargeted attacks on the points none of them broke, from their best point.
    """
    out = []
    for norm in dict.fromkeys(s.norm for s in specs):
        peers = [
            s
            for s in specs
            if s.norm == norm and not s.targeted and s.mask is None and not s.black_box and s.role == "attack"
        ]
        if not peers or norm not in APGD.norms:
            continue
        name = f"self-check-{norm}"
        if any(s.name == name for s in specs):
            raise ConfigError(f"the attack name {name!r} is reserved for the evaluation's self-check")
        # the steps of fixed-budget attacks (a minimum-norm attack's iterations, e.g. C&W's per
        # binary-search step, are not comparable)
        longest = max(
            (s.attack.steps for s in peers if isinstance(s.attack, Stepped) and not s.minimum_norm),
            default=10,
        )
        steps = min(max_steps, max(20, factor * longest))
        grid = sorted({e for s in peers for e in s.grid})
        models = (
            None
            if any(s.models is None for s in peers)
            else tuple(dict.fromkeys(m for s in peers for m in s.models or ()))
        )
        attack = APGD(steps=steps, loss="margin")
        after = [str(s.name) for s in peers]  # part of its fingerprint: new attacks mean a new self-check
        out.append(AttackSpec(attack, norm, grid, name=name, models=models, after=after, role="self-check"))
    return out

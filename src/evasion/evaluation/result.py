"""`Evaluation`: the records of an evaluation and everything derived from them.

It is built from cell outputs alone (just computed, or read back from a store), so a report can
be re-rendered from a run folder without re-running anything. It is frozen: what derives from the
records (curves, checks) is computed from them on demand, and the checks are computed once.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ..errors import UnknownNameError
from ..models.classifier import REJECT
from .checks import Check, run_checks
from .curves import (
    CORRECT,
    SecurityCurve,
    clean_status,
    cumulative_status,
    implied_status,
    make_curve,
    worst_status,
)
from .records import CERTIFY_STATUSES, SOURCES, CellOutput, CleanRecord, Record
from .spec import CertifyInfo, SpecInfo

if TYPE_CHECKING:
    from ..verification.certificate import Certificate
    from ..verification.sandwich import SandwichRow

__all__ = ["Evaluation", "Example"]

Columns = dict[str, np.ndarray]


@dataclass(frozen=True)
class Example:
    """One adversarial example for the report: the clean image, the adversarial one, the labels."""

    model: str
    attack: str
    epsilon: float
    index: int
    label: int
    clean_prediction: int
    clean_confidence: float
    prediction: int
    confidence: float
    original: Tensor
    adversarial: Tensor


def _merge(outputs: Sequence[CellOutput]) -> Columns:
    cols = {k: np.concatenate([o.columns[k] for o in outputs]) for k in outputs[0].columns}
    order = np.argsort(cols["index"], kind="stable")
    return {k: v[order] for k, v in cols.items()}


@dataclass(frozen=True)
class Evaluation:
    """Per-sample records of models x attacks x epsilons, with curves, checks and queries.

    ``samples`` is the number of evaluated inputs; a (model, attack, epsilon) group counts in
    curves only when all of its samples are present (``incomplete`` lists the others).
    ``certificate_columns``: per (model, certification name) and epsilon, what a verification
    method proved per sample (:data:`~.records.CERTIFY_COLUMNS`); ``certifications`` describes
    each name (method, norm, options). :meth:`sandwich` puts them beside the worst case.
    """

    models: list[str]
    specs: dict[str, SpecInfo]
    samples: int
    clean_columns: dict[str, Columns]
    attack_columns: dict[tuple[str, str], dict[float, Columns]]
    examples: list[Example] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    incomplete: list[tuple[str, str, float]] = field(default_factory=list)
    certificate_columns: dict[tuple[str, str], dict[float, Columns]] = field(default_factory=dict)
    certifications: dict[str, CertifyInfo] = field(default_factory=dict)

    @classmethod
    def from_outputs(
        cls,
        models: Sequence[str],
        specs: Iterable[SpecInfo],
        samples: int,
        outputs: Iterable[CellOutput],
        examples: Sequence[Example] = (),
        meta: dict[str, Any] | None = None,
        certifications: Iterable[CertifyInfo] = (),
    ) -> Evaluation:
        """Group cell outputs by (model, attack, epsilon) and keep the complete groups."""
        groups: dict[tuple[str, str, str, float], list[CellOutput]] = defaultdict(list)
        for out in outputs:
            c = out.cell
            groups[(c.kind, c.model, c.attack, c.epsilon)].append(out)
        clean: dict[str, Columns] = {}
        attacked: dict[tuple[str, str], dict[float, Columns]] = defaultdict(dict)
        certified: dict[tuple[str, str], dict[float, Columns]] = defaultdict(dict)
        incomplete = []
        for (kind, model, attack, eps), outs in sorted(groups.items(), key=lambda kv: repr(kv[0])):
            cols = _merge(outs)
            if len(cols["index"]) != samples:
                incomplete.append(
                    (model, f"certify {attack}" if kind == "certify" else attack or "clean", eps)
                )
                continue
            if kind == "clean":
                clean[model] = cols
            elif kind == "certify":
                certified[(model, attack)][eps] = cols
            else:
                attacked[(model, attack)][eps] = cols
        spec_map = {s.name: s for s in specs}
        return cls(
            list(models),
            spec_map,
            samples,
            clean,
            dict(attacked),
            list(examples),
            dict(meta or {}),
            incomplete,
            dict(certified),
            {c.name: c for c in certifications},
        )

    def with_examples(self, examples: Iterable[Example]) -> Evaluation:
        """The same evaluation with ``examples`` added (e.g. picked while its cells ran)."""
        return replace(self, examples=[*self.examples, *examples])

    # -- lookups ---------------------------------------------------------------------------------
    def _spec(self, attack: str) -> SpecInfo:
        if attack not in self.specs:
            raise UnknownNameError("attack", attack, list(self.specs))
        return self.specs[attack]

    def _model(self, model: str) -> str:
        if model not in self.models:
            raise UnknownNameError("model", model, self.models)
        return model

    @property
    def attacks(self) -> list[str]:
        return list(self.specs)

    @property
    def norms(self) -> list[str]:
        return sorted({s.norm for s in self.specs.values()})

    def clean_accuracy(self, model: str) -> float:
        cols = self.clean_columns.get(self._model(model))
        return float(np.mean(cols["prediction"] == cols["label"])) if cols is not None else math.nan

    def _steps(self, model: str, attack: str) -> list[tuple[float, np.ndarray]]:
        cols = self.clean_columns.get(model)
        if cols is None:
            return []
        clean = clean_status(cols["prediction"], cols["label"])
        table = self.attack_columns.get((model, attack), {})
        return cumulative_status(clean, [(e, c) for e, c in table.items() if math.isfinite(e) and e > 0])

    # -- curves ----------------------------------------------------------------------------------
    def curve(self, model: str, attack: str) -> SecurityCurve:
        """The security evaluation curve of one attack (epsilon 0 = clean accuracy)."""
        spec = self._spec(attack)
        return make_curve(self._model(model), attack, spec.norm, self._steps(model, attack), (attack,))

    def worst_case(self, model: str, norm: str) -> SecurityCurve:
        """Worst case per sample over every untargeted attack of ``norm``."""
        names = [
            s.name for s in self.specs.values() if s.norm == norm and not s.targeted and s.applies_to(model)
        ]
        if not names:
            raise UnknownNameError(f"{norm} attack", norm, sorted({s.norm for s in self.specs.values()}))
        steps = worst_status([self._steps(self._model(model), a) for a in names])
        return make_curve(model, f"worst-case-{norm}", norm, steps, names)

    def curves(self) -> list[SecurityCurve]:
        """Every per-attack curve and every worst-case curve."""
        out = [self.curve(m, a) for m in self.models for a in self.attacks_of(m)]
        out += [self.worst_case(m, n) for m in self.models for n in self.norms if self._has_untargeted(m, n)]
        return out

    def attacks_of(self, model: str) -> list[str]:
        """The attacks that ran on ``model`` (an attack may be restricted to some models)."""
        return [a for a, s in self.specs.items() if s.applies_to(model)]

    def _has_untargeted(self, model: str, norm: str) -> bool:
        return any(s.norm == norm and not s.targeted and s.applies_to(model) for s in self.specs.values())

    def minimal_norms(self, model: str, attack: str) -> Tensor | None:
        """Smallest adversarial perturbation per sample from a minimum-norm attack (0 where the clean
        input is already wrong, inf where none was found); ``None`` for fixed-budget attacks."""
        spec = self._spec(attack)
        table = self.attack_columns.get((self._model(model), attack), {})
        if not spec.minimum_norm or math.inf not in table:
            return None
        return torch.from_numpy(table[math.inf]["minimal_norm"].copy())

    def implied_curve(
        self, model: str, attack: str, epsilons: Sequence[float] | None = None
    ) -> SecurityCurve | None:
        """The robust-accuracy curve implied by a minimum-norm attack's minimal norms."""
        minimal = self.minimal_norms(model, attack)
        cols = self.clean_columns.get(model)
        if minimal is None or cols is None:
            return None
        spec = self.specs[attack]
        grid = list(epsilons) if epsilons is not None else list(spec.epsilons)
        steps = implied_status(clean_status(cols["prediction"], cols["label"]), minimal.numpy(), grid)
        return make_curve(model, f"{attack} (minimal norms)", spec.norm, steps, (attack,))

    # -- worst case per sample, certificates, the sandwich ----------------------------------------
    def worst_case_status(self, model: str, norm: str) -> dict[float, np.ndarray]:
        """Per epsilon of the worst case (0 = clean), the status of every sample (in index order)
        under every untargeted attack of ``norm``: :data:`~.curves.CORRECT`, ``REJECTED`` or
        ``MISCLASSIFIED`` (broken by some attack at that epsilon or a smaller one)."""
        names = [
            s.name for s in self.specs.values() if s.norm == norm and not s.targeted and s.applies_to(model)
        ]
        if not names:
            raise UnknownNameError(f"{norm} attack", norm, sorted({s.norm for s in self.specs.values()}))
        return dict(worst_status([self._steps(self._model(model), a) for a in names]))

    def unbroken(self, model: str, norm: str) -> dict[float, np.ndarray]:
        """Per epsilon, which samples survived every untargeted attack of ``norm`` (classified
        correctly, not rejected, and no attack broke them at that epsilon or a smaller one)."""
        return {e: status == CORRECT for e, status in self.worst_case_status(model, norm).items()}

    def certification_names(self, model: str, norm: str | None = None) -> list[str]:
        """The certifications stored for ``model`` (of ``norm`` when given)."""
        return [
            name
            for (m, name) in self.certificate_columns
            if m == model and (norm is None or self._certification(name).norm == norm)
        ]

    def certified_norms(self, model: str) -> list[str]:
        """The norms ``model`` was certified in (sorted)."""
        return sorted({self._certification(n).norm for n in self.certification_names(model)})

    def _certification(self, name: str) -> CertifyInfo:
        info = self.certifications.get(name)
        if info is None:  # a store written without its description: the name says method-norm
            method, _, norm = name.partition("-")
            info = CertifyInfo(name, method, norm)
        return info

    def certificates(self, model: str, norm: str | None = None) -> list[Certificate]:
        """The stored certificates of ``model`` (one per certification and epsilon), rebuilt as
        :class:`evasion.verification.Certificate` objects (counterexamples are not loaded)."""
        from ..threat_model import ThreatModel
        from ..verification.certificate import Certificate

        out = []
        for name in self.certification_names(self._model(model), norm):
            info = self._certification(name)
            for eps, c in sorted(self.certificate_columns[(model, name)].items()):
                milp = info.method == "milp"
                out.append(
                    Certificate(
                        info.method,
                        ThreatModel(info.norm, eps),
                        torch.from_numpy(c["certified"].copy()),
                        torch.from_numpy(c["margin_lower"].copy()),
                        torch.from_numpy(c["clean_correct"].copy()),
                        float(np.nansum(c["seconds"])) if milp else 0.0,
                        tuple(CERTIFY_STATUSES[int(s)] for s in c["status"]) if milp else None,
                        None,
                        torch.from_numpy(c["margin_upper"].copy()) if milp else None,
                        torch.from_numpy(c["seconds"].copy()) if milp else None,
                    )
                )
        return out

    def sandwich(self, model: str, norm: str) -> list[SandwichRow]:
        """Certified (proof) <= exact (MILP) <= attacked accuracy per certified epsilon of ``norm``,
        the samples between the bounds (``unknown``) and those certified yet broken
        (``contradictions``: a bug). The attacked side at epsilon is the worst case at the largest
        attacked epsilon <= epsilon (a sample broken at a smaller budget is broken at a larger one).
        Empty when nothing of ``norm`` was certified on ``model``."""
        from ..verification.sandwich import sandwich

        certs = self.certificates(model, norm)
        if not certs or not self._has_untargeted(model, norm):
            return []
        alive = sorted(self.unbroken(model, norm).items())
        unbroken = {}
        for eps in sorted({c.threat.epsilon for c in certs}):
            below = [a for e, a in alive if e <= eps + 1e-12]
            unbroken[eps] = torch.from_numpy(below[-1].copy())
        return sandwich(certs, unbroken)

    def missed_by_attacks(self, model: str, norm: str) -> dict[float, list[int]]:
        """Per epsilon where a MILP ran: the samples it showed breakable (a counterexample,
        re-checked by a fresh prediction) that every attack left unbroken, i.e. the attacks' misses."""
        if not self._has_untargeted(model, norm):
            return {}
        alive = sorted(self.unbroken(model, norm).items())
        broken = CERTIFY_STATUSES.index("not-robust")
        out: dict[float, list[int]] = {}
        for name in self.certification_names(self._model(model), norm):
            for eps, c in sorted(self.certificate_columns[(model, name)].items()):
                if self._certification(name).method != "milp":
                    continue
                below = [a for e, a in alive if e <= eps + 1e-12][-1]
                out[float(eps)] = [int(i) for i in c["index"][(c["status"] == broken) & below]]
        return out

    def contradictions(self) -> list[tuple[str, str, float, list[int]]]:
        """(model, certification, epsilon, sample indices) of samples certified yet broken by an attack:
        a bound or an attack's budget check is wrong. Empty in a sound evaluation."""
        out = []
        for model in self.models:
            for norm in self.certified_norms(model):
                if not self._has_untargeted(model, norm):
                    continue
                alive = sorted(self.unbroken(model, norm).items())
                for name in self.certification_names(model, norm):
                    for eps, c in sorted(self.certificate_columns[(model, name)].items()):
                        below = [a for e, a in alive if e <= eps + 1e-12]
                        bad = c["certified"] & ~below[-1]
                        if bad.any():
                            out.append((model, name, float(eps), [int(i) for i in c["index"][bad]]))
        return out

    # -- records, queries, checks ------------------------------------------------------------------
    @property
    def records(self) -> list[Record]:
        """Per-sample records, epsilon 0 (the clean input) included for every attack."""
        out: list[Record] = []
        for (model, attack), table in self.attack_columns.items():
            spec = self.specs[attack]
            clean = self.clean_columns.get(model)
            if clean is not None:
                out += _records(model, spec, 0.0, _as_attack_columns(clean, spec.targeted))
            for eps in sorted(table):
                out += _records(model, spec, eps, table[eps])
        return out

    @property
    def clean_records(self) -> list[CleanRecord]:
        out = []
        for model, c in self.clean_columns.items():
            for i in range(len(c["index"])):
                out.append(
                    CleanRecord(
                        model,
                        int(c["index"][i]),
                        int(c["label"][i]),
                        int(c["prediction"][i]),
                        float(c["confidence"][i]),
                        bool(c["prediction"][i] == REJECT),
                        int(c["repeat_prediction"][i]),
                        float(c["score_change"][i]),
                    )
                )
        return out

    def queries(self, model: str, attack: str) -> tuple[int, int]:
        """Total forward and backward passes an attack spent on a model (all epsilons)."""
        table = self.attack_columns.get((model, attack), {})
        fwd = sum(int(c["forwards"].sum()) for c in table.values())
        bwd = sum(int(c["backwards"].sum()) for c in table.values())
        return fwd, bwd

    @cached_property
    def _all_checks(self) -> tuple[Check, ...]:
        return tuple(run_checks(self))

    @property
    def checks(self) -> list[Check]:
        """Attack-failure flags raised by this evaluation (``checks_run`` lists what was checked)."""
        return [c for c in self._all_checks if c.level != "ok"]

    @property
    def checks_run(self) -> list[Check]:
        """Every check made, passed ones (``level == "ok"``) included."""
        return list(self._all_checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "models": list(self.models),
            "attacks": [s.to_dict() for s in self.specs.values()],
            "clean_accuracy": {m: self.clean_accuracy(m) for m in self.models},
            "curves": [c.to_dict() for c in self.curves()],
            "checks": [c.to_dict() for c in self.checks],
            "queries": {
                f"{m}/{a}": dict(zip(("forwards", "backwards"), self.queries(m, a)))
                for m in self.models
                for a in self.attacks_of(m)
            },
            "incomplete": [list(i) for i in self.incomplete],
            **({"sandwich": self._sandwich_dict()} if self.certificate_columns else {}),
        }

    def _sandwich_dict(self) -> list[dict[str, Any]]:
        out = []
        for model in self.models:
            for norm in self.certified_norms(model):
                for row in self.sandwich(model, norm):
                    out.append({"model": model, "norm": norm, **asdict(row)})
        return out


def _as_attack_columns(clean: Columns, targeted: bool) -> Columns:
    pred, label = clean["prediction"], clean["label"]
    success = (pred != label) & (pred != REJECT) if not targeted else np.zeros(len(pred), dtype=bool)
    n = len(pred)
    return {
        "index": clean["index"],
        "label": label,
        "prediction": pred,
        "success": success,
        "norm_value": np.zeros(n),
        "forwards": np.ones(n, dtype=np.int64),
        "backwards": np.zeros(n, dtype=np.int64),
        "confidence": clean["confidence"],
        "source": np.zeros(n, dtype=np.int8),
        "minimal_norm": np.full(n, math.nan),
    }


def _records(model: str, spec: SpecInfo, eps: float, c: Columns) -> list[Record]:
    return [
        Record(
            model=model,
            attack=spec.name,
            norm=spec.norm,
            epsilon=eps,
            index=int(c["index"][i]),
            label=int(c["label"][i]),
            prediction=int(c["prediction"][i]),
            success=bool(c["success"][i]),
            norm_value=float(c["norm_value"][i]),
            rejected=bool(c["prediction"][i] == REJECT),
            forwards=int(c["forwards"][i]),
            backwards=int(c["backwards"][i]),
            confidence=float(c["confidence"][i]),
            source=SOURCES[int(c["source"][i])],
            minimal_norm=None if math.isnan(c["minimal_norm"][i]) else float(c["minimal_norm"][i]),
        )
        for i in range(len(c["index"]))
    ]

"""Evaluation configs: TOML files validated into dataclasses (:mod:`evasion.build` turns them into
the inputs of evaluate()).

Every key is checked: an unknown key or a bad value is a :class:`ConfigError` that names the
key (``attacks[2].params.stpes``) and the value. The embedded default (``evasion evaluate`` with no
config) lives in ``evasion/configs/default.toml``; the other embedded configs there are loaded by
name (``evasion evaluate thorough``: the default plus the Square attack). :meth:`Config.to_toml` writes the resolved
config (defaults filled in, every attack with its name and epsilons) saved with each run.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from . import attacks
from ._validation import epsilon_grid
from .attacks.base import Attack
from .errors import ConfigError, MissingDependencyError, UnknownNameError, closest
from .evaluation.spec import CertifySpec, default_name
from .threat_model import NORMS, ThreatModel

__all__ = [
    "EMBEDDED_CONFIGS",
    "AttackConfig",
    "Config",
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "certified_norms",
    "default_config_text",
    "load_config",
    "parse_config",
]


def _toml() -> Any:
    """The TOML reader: ``tomllib``, or ``tomli`` on Python 3.10."""
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:  # pragma: no cover - Python 3.10
        import tomli
    except ModuleNotFoundError:
        raise MissingDependencyError("tomli", "dev", "reading TOML configs on Python 3.10") from None
    return tomli


# -- value checks --------------------------------------------------------------------------------
def _type(where: str, value: Any, kinds: type | tuple[type, ...], what: str) -> Any:
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise ConfigError(f"{where} must be {what}, got {value!r}")
    if not isinstance(value, kinds):
        raise ConfigError(f"{where} must be {what}, got {value!r}")
    return value


def _int(where: str, value: Any, minimum: int) -> int:
    _type(where, value, int, "an integer")
    if value < minimum:
        raise ConfigError(f"{where} must be >= {minimum}, got {value!r}")
    return int(value)


def _name(where: str, value: Any) -> str:
    _type(where, value, str, "a string")
    if not value.strip() or "|" in value:
        raise ConfigError(f"{where} must be a non-empty name without '|', got {value!r}")
    return str(value)


def _epsilons(where: str, value: Any) -> tuple[float, ...]:
    _type(where, value, list, "a list of numbers")
    return epsilon_grid(value, where, with_zero=False)


def _table(where: str, value: Any, allowed: list[str]) -> dict[str, Any]:
    _type(where, value, dict, "a table")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        prefix = f"{where}." if where else ""
        hint = closest(unknown[0], allowed)
        guess = f" (did you mean {prefix}{hint}?)" if hint else ""
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]} in the config{guess}; valid keys: {', '.join(allowed)}"
        )
    return dict(value)


def _norm(where: str, value: Any) -> str:
    _type(where, value, str, "a norm name")
    try:
        return ThreatModel(value, 0.0).norm
    except Exception:
        raise ConfigError(f"{where} must be one of {', '.join(NORMS)}, got {value!r}") from None


# -- sections ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunConfig:
    name: str = "evaluation"
    seed: int = 0
    batch_size: int = 256
    device: str = "auto"
    self_check: bool = True
    #: run each model's default attack suite even when [[attacks]] are given (they are added to it)
    default_suite: bool = False
    #: run every model through torch.compile (eager with a warning where it cannot compile)
    compile: bool = False
    #: ``batch_size = "auto"``: measured on this machine when the run starts (see
    #: :func:`evasion.runtime.auto_batch_size`); the number chosen is recorded in the run
    auto_batch: bool = False

    @classmethod
    def parse(cls, d: dict[str, Any]) -> RunConfig:
        t = _table("run", d, [f.name for f in fields(cls) if f.name != "auto_batch"])
        size = t.get("batch_size", cls.batch_size)
        auto = isinstance(size, str) and size.strip().lower() == "auto"
        if isinstance(size, str) and not auto:
            raise ConfigError(f'run.batch_size must be a positive integer or "auto", got {size!r}')
        return cls(
            name=_name("run.name", t.get("name", cls.name)),
            seed=_int("run.seed", t.get("seed", cls.seed), 0),
            batch_size=cls.batch_size if auto else _int("run.batch_size", size, 1),
            auto_batch=auto,
            device=_type("run.device", t.get("device", cls.device), str, "a device name"),
            self_check=_type("run.self_check", t.get("self_check", cls.self_check), bool, "true or false"),
            default_suite=_type(
                "run.default_suite", t.get("default_suite", cls.default_suite), bool, "true or false"
            ),
            compile=_type("run.compile", t.get("compile", cls.compile), bool, "true or false"),
        )


@dataclass(frozen=True)
class DataConfig:
    """The inputs: a dataset split, optionally shuffled (fixed seed) before taking ``samples``."""

    name: str = "mnist5k"
    split: str = "test"
    samples: int = 0
    shuffle: bool = False
    shuffle_seed: int = 0

    @classmethod
    def parse(cls, d: dict[str, Any]) -> DataConfig:
        t = _table("data", d, [f.name for f in fields(cls)])
        split = _type("data.split", t.get("split", cls.split), str, "a split name")
        if split not in ("train", "test", "all"):
            raise ConfigError(f"data.split must be train, test or all, got {split!r}")
        return cls(
            name=_type("data.name", t.get("name", cls.name), str, "a dataset name or path"),
            split=split,
            samples=_int("data.samples", t.get("samples", cls.samples), 0),
            shuffle=_type("data.shuffle", t.get("shuffle", cls.shuffle), bool, "true or false"),
            shuffle_seed=_int("data.shuffle_seed", t.get("shuffle_seed", cls.shuffle_seed), 0),
        )


#: verification methods a model may ask for (``certify = [...]``) and the norms each certifies
CERTIFY_METHODS: dict[str, tuple[str, ...]] = {
    "ibp": ("linf", "l2"),
    "crown": ("linf", "l2"),
    "milp": ("linf",),
}
#: ``certify_options`` keys: MILP seconds per sample, MILP falsifier steps, alpha-CROWN steps
CERTIFY_OPTIONS = ("time_limit", "falsify", "alpha_steps")


def _certify_options(where: str, value: Any) -> dict[str, Any]:
    t = _table(where, value, list(CERTIFY_OPTIONS))
    out: dict[str, Any] = {}
    if "time_limit" in t:
        v = _type(f"{where}.time_limit", t["time_limit"], (int, float), "a number of seconds")
        if not (math.isfinite(v) and v > 0):
            raise ConfigError(f"{where}.time_limit must be a number of seconds > 0, got {v!r}")
        out["time_limit"] = float(v)
    for key in ("falsify", "alpha_steps"):
        if key in t:
            out[key] = _int(f"{where}.{key}", t[key], 0)
    return out


@dataclass(frozen=True)
class ModelConfig:
    """A model to evaluate: a zoo name or file, optionally wrapped in a defence.

    ``certify``: verification methods (``ibp``, ``crown``, ``milp``) that prove robustness per
    sample at the epsilons of the model's attacks, in ``certify_norms`` (default: every norm an
    untargeted attack runs in on the model); ``certify_options``: ``time_limit`` (MILP seconds per
    sample), ``falsify`` (MILP falsifier steps), ``alpha_steps`` (alpha-CROWN).
    """

    name: str
    model: str = ""
    architecture: str = ""
    input_shape: tuple[int, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    defense: str = ""
    defense_params: dict[str, Any] = field(default_factory=dict)
    certify: tuple[str, ...] = ()
    certify_norms: tuple[str, ...] = ()
    certify_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, d: dict[str, Any], where: str) -> ModelConfig:
        t = _table(where, d, [f.name for f in fields(cls)])
        if "name" not in t:
            raise ConfigError(f"{where}.name is missing (a label; also the zoo name unless `model` is given)")
        shape = t.get("input_shape", [])
        _type(f"{where}.input_shape", shape, list, "a list of integers")
        methods = _type(f"{where}.certify", t.get("certify", []), list, "a list of verification methods")
        for i, m in enumerate(methods):
            _type(f"{where}.certify[{i}]", m, str, "a verification method")
            if m not in CERTIFY_METHODS:
                raise ConfigError(
                    f"{where}.certify[{i}]: unknown verification method {m!r}; choose from {', '.join(CERTIFY_METHODS)}"
                )
        if len(set(methods)) != len(methods):
            raise ConfigError(f"{where}.certify lists a method twice: {methods!r}")
        norms = _type(f"{where}.certify_norms", t.get("certify_norms", []), list, "a list of norm names")
        if norms and not methods:
            raise ConfigError(f"{where}.certify_norms is set but {where}.certify lists no method")
        options = _certify_options(f"{where}.certify_options", t.get("certify_options", {}))
        return cls(
            name=_name(f"{where}.name", t["name"]),
            model=_type(f"{where}.model", t.get("model", t["name"]), str, "a zoo name or a file"),
            architecture=_type(f"{where}.architecture", t.get("architecture", ""), str, "'module:factory'"),
            input_shape=tuple(_int(f"{where}.input_shape[{i}]", v, 1) for i, v in enumerate(shape)),
            options=_type(f"{where}.options", t.get("options", {}), dict, "a table"),
            defense=_type(f"{where}.defense", t.get("defense", ""), str, "a defence name"),
            defense_params=_type(f"{where}.defense_params", t.get("defense_params", {}), dict, "a table"),
            certify=tuple(methods),
            certify_norms=tuple(
                dict.fromkeys(_norm(f"{where}.certify_norms[{i}]", n) for i, n in enumerate(norms))
            ),
            certify_options=options,
        )


@dataclass(frozen=True)
class AttackConfig:
    """One attack over an epsilon grid (``epsilons`` defaults to the grid of its norm)."""

    attack: str
    norm: str
    name: str = ""
    epsilons: tuple[float, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    target: int | str | None = None
    patch: tuple[int, ...] = ()
    models: tuple[str, ...] = ()  # the models it runs on (empty: all)

    @classmethod
    def parse(cls, d: dict[str, Any], where: str, grids: Mapping[str, tuple[float, ...]]) -> AttackConfig:
        """Validate one ``[[attacks]]`` table (the attack is built once to check its parameters)."""
        t = _table(where, d, [f.name for f in fields(cls)])
        for key in ("attack", "norm"):
            if key not in t:
                raise ConfigError(f"{where}.{key} is missing")
        attack = _type(f"{where}.attack", t["attack"], str, "an attack name")
        norm = _norm(f"{where}.norm", t["norm"])
        if "epsilons" in t:
            eps = _epsilons(f"{where}.epsilons", t["epsilons"])
        elif norm in grids:
            eps = grids[norm]
        else:
            raise ConfigError(f"{where} has no epsilons and [epsilons] has no {norm} grid")
        target = t.get("target")
        if target is not None and not (
            (isinstance(target, int) and not isinstance(target, bool) and target >= 0) or target == "next"
        ):
            raise ConfigError(f'{where}.target must be a class index >= 0 or "next", got {target!r}')
        patch = t.get("patch", [])
        _type(f"{where}.patch", patch, list, "[top, left, height, width]")
        if patch and len(patch) != 4:
            raise ConfigError(f"{where}.patch must be [top, left, height, width], got {patch!r}")
        params = _type(f"{where}.params", t.get("params", {}), dict, "a table")
        models = _type(f"{where}.models", t.get("models", []), list, "a list of model names")
        built = _build_attack(where, attack, params)
        if norm not in built.norms:
            raise ConfigError(
                f"{where}: {attack} does not support the {norm} norm; supported: {', '.join(built.norms)}"
            )
        return cls(
            attack=attack,
            norm=norm,
            name=_name(f"{where}.name", t["name"]) if "name" in t else default_name(built, norm),
            epsilons=eps,
            params=params,
            target=target,
            patch=tuple(_int(f"{where}.patch[{i}]", v, 0) for i, v in enumerate(patch)),
            models=tuple(_name(f"{where}.models[{i}]", m) for i, m in enumerate(models)),
        )


def _build_attack(where: str, name: str, params: dict[str, Any]) -> Attack:
    """The attack of an ``[[attacks]]`` table; an error names the table's key (``attacks[1].attack``)."""
    try:
        return attacks.make(name, **params)
    except UnknownNameError as exc:
        raise exc.at(f"{where}.attack" if exc.kind == "attack" else f"{where}.params") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class Config:
    """A validated evaluation config."""

    run: RunConfig
    data: DataConfig
    models: tuple[ModelConfig, ...]
    attacks: tuple[AttackConfig, ...]
    epsilons: dict[str, tuple[float, ...]] = field(default_factory=dict)
    source: str = "<default>"

    def certify_specs(self) -> list[CertifySpec]:
        """One :class:`~evasion.evaluation.spec.CertifySpec` per method and norm the models ask
        for (``certify``), each naming the models it certifies."""
        grouped: dict[tuple[str, str], tuple[dict[str, Any], list[str]]] = {}
        for mc in self.models:
            for norm in certified_norms(self, mc):
                for method in mc.certify:
                    options, names = grouped.setdefault((method, norm), (mc.certify_options, []))
                    if options != mc.certify_options:
                        raise ConfigError(
                            f"models {names[0]!r} and {mc.name!r} both certify {method}-{norm} but with other "
                            "certify_options; give them the same options"
                        )
                    names.append(mc.name)
        return [
            CertifySpec(method, norm, models=tuple(names), **options)
            for (method, norm), (options, names) in grouped.items()
        ]

    def to_toml(self) -> str:
        """The resolved config as TOML (defaults filled in; loads back to an equal config)."""
        lines = [f"# resolved from {self.source}", "", "[run]"]
        lines += [
            f"{f.name} = {_value('auto' if f.name == 'batch_size' and self.run.auto_batch else getattr(self.run, f.name))}"
            for f in fields(self.run)
            if f.name != "auto_batch"
        ]
        lines += ["", "[data]"]
        lines += [f"{f.name} = {_value(getattr(self.data, f.name))}" for f in fields(self.data)]
        if self.epsilons:
            lines += ["", "[epsilons]"] + [f"{k} = {_value(list(v))}" for k, v in self.epsilons.items()]
        for section, items in (("models", self.models), ("attacks", self.attacks)):
            for item in items:
                lines += ["", f"[[{section}]]"]
                for f in fields(item):
                    value = getattr(item, f.name)
                    if value in ("", (), {}, None):
                        continue
                    lines.append(f"{f.name} = {_value(list(value) if isinstance(value, tuple) else value)}")
        return "\n".join(lines) + "\n"


def _value(v: Any) -> str:
    """A TOML value (strings escaped as JSON strings, which TOML accepts)."""
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_value(x)}" for k, x in v.items()) + " }"
    raise ConfigError(f"cannot write {v!r} to TOML")


_SECTIONS = ["run", "data", "models", "attacks", "epsilons"]


def parse_config(raw: Mapping[str, Any], source: str = "<config>") -> Config:
    """Validate a parsed TOML document into a :class:`Config`."""
    top = _table("", dict(raw), _SECTIONS)
    grids_raw = _type("epsilons", top.get("epsilons", {}), dict, "a table norm = [numbers]")
    grids = {_norm(f"epsilons.{k}", k): _epsilons(f"epsilons.{k}", v) for k, v in grids_raw.items()}
    models_raw = _type("models", top.get("models", []), list, "an array of tables [[models]]")
    attacks_raw = _type("attacks", top.get("attacks", []), list, "an array of tables [[attacks]]")
    if not models_raw:
        raise ConfigError("the config has no [[models]]; add at least one")
    if not attacks_raw and not grids:
        raise ConfigError(
            "the config has no [[attacks]] and no [epsilons]: give the epsilon grids of the default "
            "attack suite (e.g. [epsilons] linf = [0.1, 0.2]) or list [[attacks]]"
        )
    run = RunConfig.parse(top.get("run", {}))
    if run.default_suite and not grids:
        raise ConfigError("run.default_suite = true needs the [epsilons] grids of the default attack suite")
    models = tuple(ModelConfig.parse(m, f"models[{i}]") for i, m in enumerate(models_raw))
    attacks = tuple(AttackConfig.parse(a, f"attacks[{i}]", grids) for i, a in enumerate(attacks_raw))
    names = {m.name for m in models}
    for i, a in enumerate(attacks):
        for m in a.models:
            if m not in names:
                raise ConfigError(
                    f"attacks[{i}].models names {m!r}, which is not a model of the config; models: {', '.join(sorted(names))}"
                )
    partial = Config(run, DataConfig(), models, attacks, grids, source)
    for mc in models:
        certified_norms(partial, mc)  # a norm a method cannot certify is named now
    for kind, items in (("model", [m.name for m in models]), ("attack", [a.name for a in attacks if a.name])):
        dup = sorted({n for n in items if items.count(n) > 1})
        if dup:
            raise ConfigError(f"two {kind}s are named {dup[0]!r}; names must be unique")
    return Config(
        run,
        DataConfig.parse(top.get("data", {})),
        models,
        attacks,
        grids,
        source,
    )


def certified_norms(config: Config, mc: ModelConfig) -> tuple[str, ...]:
    """The norms ``mc`` is certified in: ``certify_norms``, else every norm an untargeted attack
    runs in on it (its ``[[attacks]]`` and, when it runs, the default suite's ``[epsilons]``).

    A norm one of its methods cannot certify, or a certified norm no attack runs in (nothing to
    put the proof beside), is a :class:`ConfigError` naming the key."""
    if not mc.certify:
        return ()
    where = f"models[{[m.name for m in config.models].index(mc.name)}]"
    attacked = {a.norm for a in config.attacks if a.target is None and (not a.models or mc.name in a.models)}
    if config.run.default_suite or not config.attacks:
        attacked |= set(config.epsilons)
    norms = mc.certify_norms or tuple(n for n in NORMS if n in attacked)
    for norm in norms:
        if norm not in attacked:
            raise ConfigError(
                f"{where}.certify_norms names {norm}, but no untargeted {norm} attack runs on {mc.name!r} "
                "to compare the proof with"
            )
        for method in mc.certify:
            if norm not in CERTIFY_METHODS[method]:
                key = "certify_norms" if mc.certify_norms else "certify"
                raise ConfigError(
                    f"{where}.{key}: {method} cannot certify the {norm} norm (it certifies "
                    f"{', '.join(CERTIFY_METHODS[method])}); {mc.name!r} is attacked in {norm}: set "
                    f"{where}.certify_norms to the norms {method} can certify, or drop {method}"
                )
    return tuple(norms)


#: the embedded default config, shipped inside the package
DEFAULT_CONFIG = Path(__file__).with_name("configs") / "default.toml"
#: every embedded config by name (``evasion evaluate NAME``): ``default``, ``thorough``
EMBEDDED_CONFIGS: dict[str, Path] = {p.stem: p for p in sorted(DEFAULT_CONFIG.parent.glob("*.toml"))}


def default_config_text() -> str:
    """The embedded default config (the main job)."""
    return DEFAULT_CONFIG.read_text(encoding="utf-8")


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate a TOML config file (``None``: the embedded default; the name of an
    embedded config, e.g. ``"thorough"``, where no such file exists: that config)."""
    tomllib = _toml()
    embedded = str(path) if path is not None and str(path) in EMBEDDED_CONFIGS else None
    if embedded is not None and Path(embedded).is_file():  # a file of that name wins
        embedded = None
    if path is None:
        text, source = default_config_text(), "<default>"
    elif embedded is not None:
        text, source = EMBEDDED_CONFIGS[embedded].read_text(encoding="utf-8"), f"<{embedded}>"
    else:
        p = Path(path).expanduser()
        if not p.is_file():
            where = "" if p.is_absolute() else f" (looked in {Path.cwd()})"  # relative to the caller's folder
            what = "does not exist" if not p.exists() else "is not a file"
            names = ", ".join(EMBEDDED_CONFIGS)
            raise ConfigError(f"config file {p} {what}{where}; embedded configs by name: {names}")
        try:
            text, source = p.read_text(encoding="utf-8"), str(p)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {p} ({exc})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from None
    return parse_config(raw, source)

"""The exceptions `evasion` raises, in one tree.

Every error a user can cause by handing `evasion` bad input is an :class:`EvasionError`, with a
one-line message that names the problem (the argument, the shape, the value). The CLI turns them
into a one-line message and exit code 2 (usage) or 1 (runtime), never a traceback.

::

    EvasionError
    ├── InputError            bad tensors: rank, channels, dtype, range, NaN/inf, labels, targets
    │   └── AccessError       a black-box attacker asked a victim for more than its access allows
    ├── ConfigError           bad configuration values: epsilon, norm, mask, step size, TOML keys
    ├── UnknownNameError      unknown model, dataset, attack, layer, norm ... (lists the valid ones)
    ├── ModelError            the model misbehaves: wrong output shape, training mode, not fitted
    │   └── UnsafeFileError   a model file that is not a plain state dict / TorchScript archive
    ├── DataError             a dataset file that is missing, malformed or fails its checksum
    │   └── MissingFileError  a file or folder the user named (image, data, model) does not exist
    ├── StoreError            a run folder or database that is corrupt or incompatible
    └── MissingDependencyError  an optional extra is not installed (says what to pip install)

The classes also derive from the matching built-in (``ValueError``, ``LookupError``,
``RuntimeError``, ``ImportError``) so that generic handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "AccessError",
    "ConfigError",
    "DataError",
    "EvasionError",
    "InputError",
    "MissingDependencyError",
    "MissingFileError",
    "ModelError",
    "StoreError",
    "UnknownNameError",
    "UnsafeFileError",
    "closest",
]


class EvasionError(Exception):
    """Base class of every error raised on purpose by `evasion`."""

    #: exit code used by the CLI: 2 for usage errors, 1 for runtime failures.
    exit_code: int = 2


class InputError(EvasionError, ValueError):
    """An input tensor (images, labels, targets) is not what the model or attack accepts."""


class AccessError(InputError):
    """A black-box attacker asked a victim for what its access level withholds (scores from a
    labels-only view, a gradient) or for more queries than its budget."""


class ConfigError(EvasionError, ValueError):
    """A configuration value is invalid (negative epsilon, unknown key in a config file ...)."""


class UnknownNameError(EvasionError, LookupError):
    """A name (model, dataset, attack, layer, norm) is not known; the message lists valid names."""

    def __init__(
        self,
        kind: str,
        name: object,
        valid: list[str] | tuple[str, ...] | None = None,
        *,
        where: str = "",
    ):
        """``where`` names the place the name came from (a config key such as ``attacks[1].attack``)."""
        self.kind, self.name, self.where = kind, name, where
        self.valid = sorted(valid) if valid is not None else None
        #: the closest valid name (a likely typo), or ``None``
        self.suggestion = closest(name, self.valid or [])
        msg = f"{where}: " if where else ""
        msg += f"unknown {kind} {name!r}"
        if self.suggestion is not None:
            msg += f" (did you mean {self.suggestion!r}?)"
        if self.valid is not None:
            msg += f"; valid {kind}s: {', '.join(self.valid) if self.valid else '(none)'}"
        super().__init__(msg)

    def at(self, where: str) -> UnknownNameError:
        """The same error, its message prefixed by the place the name came from."""
        return UnknownNameError(self.kind, self.name, self.valid, where=where)

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:  # picklable across processes (Ray)
        return _unknown_name, (self.kind, self.name, self.valid, self.where)

    def __str__(self) -> str:  # LookupError would otherwise quote the whole message
        return str(self.args[0])


def _unknown_name(kind: str, name: object, valid: list[str] | None, where: str) -> UnknownNameError:
    return UnknownNameError(kind, name, valid, where=where)


def closest(name: object, valid: list[str] | tuple[str, ...]) -> str | None:
    """The valid name most like ``name`` (a typo's likely intent), or ``None``.

    ``None`` too when no name is close (similarity < 0.6) or two are equally close: a guess
    between ``conv1`` and ``conv2`` for ``conv9`` would mislead more than help."""
    if not isinstance(name, str) or not valid:
        return None
    from difflib import SequenceMatcher

    scored = sorted(
        ((SequenceMatcher(None, name.lower(), v.lower()).ratio(), v) for v in valid), reverse=True
    )
    best, runner_up = scored[0][0], scored[1][0] if len(scored) > 1 else -1.0
    return scored[0][1] if best >= 0.6 and best > runner_up else None


class ModelError(EvasionError, RuntimeError):
    """The model does not behave as a classifier should (output shape, mode, not fitted ...)."""

    exit_code = 1


class UnsafeFileError(ModelError):
    """A model file would need arbitrary unpickling; pass ``trust=True`` only for files you trust."""

    exit_code = 2


class DataError(EvasionError, RuntimeError):
    """A data file is missing, malformed, or does not match its checksum."""

    exit_code = 1


class MissingFileError(DataError, FileNotFoundError):
    """A file or folder the user named (an image, a dataset, a model file) does not exist.

    A usage error like a bad option (exit code 2), whichever input it is."""

    exit_code = 2

    def __str__(self) -> str:  # OSError would otherwise format (errno, strerror) pairs
        return str(self.args[0]) if self.args else ""


class StoreError(EvasionError, RuntimeError):
    """A run folder, database or shard is corrupt, incompatible or cannot be written."""

    exit_code = 1


class MissingDependencyError(EvasionError, ImportError):
    """An optional dependency is missing; the message says which extra to install."""

    exit_code = 1

    def __init__(self, package: str, extra: str, purpose: str = ""):
        self.package, self.extra = package, extra
        what = f" (needed for {purpose})" if purpose else ""
        super().__init__(
            f"the optional package {package!r} is not installed{what}; "
            f"install it with: pip install 'evasion[{extra}]'"
        )

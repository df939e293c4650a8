"""Load a user's model file into a :class:`Classifier`, without running untrusted pickles.

Three kinds of file are understood:

* a **state dict** (``torch.save(model.state_dict(), path)``), read with ``weights_only=True``
  and loaded into the module that the ``architecture`` entry point builds;
* a **TorchScript archive** (``torch.jit.save``), read with ``torch.jit.load``;
* a **pickled module** (``torch.save(model, path)``). Unpickling can run arbitrary code, so it
  is refused with :class:`~evasion.errors.UnsafeFileError` unless the caller passes ``trust=True``.
"""

from __future__ import annotations

import importlib
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ConfigError, MissingFileError, ModelError, UnknownNameError, UnsafeFileError
from .classifier import Classifier, Normalize, eval_mode
from .registry import architectures, model_info

__all__ = ["Architecture", "is_torchscript", "load_file", "resolve_architecture"]

#: what builds the module a state dict is loaded into: ``"package.module:callable"``, a zoo
#: name with a bare architecture (``"mnist-cnn"``), or a zero-argument callable
Architecture = str | Callable[[], nn.Module]

_SHOWN_KEYS = 5


def resolve_architecture(spec: Architecture) -> Callable[[], nn.Module]:
    """Turn an architecture spec into a zero-argument callable that builds a fresh module."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"architecture must be 'package.module:callable' or a callable, got {spec!r}")
    known = architectures()
    if spec in known:
        return known[spec]
    if ":" not in spec:
        raise UnknownNameError("architecture", spec, [*known, "package.module:callable"])
    module_name, _, attr = spec.partition(":")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"architecture {spec!r}: cannot import module {module_name!r} ({exc})") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"architecture {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"architecture {spec!r} is not callable")
    return obj


def is_torchscript(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding ``constants.pkl`` and ``code/``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        inner = {name.split("/")[1] for name in archive.namelist() if name.count("/") >= 1}
    return "constants.pkl" in inner and "code" in inner


def _pickle_kind(path: Path) -> tuple[str, str | None] | None:
    """What kind of pickle ``path`` is and the first global it references, read without running it.

    ``None`` for a file that is not a pickle. A ``torch.save`` zip archive and a pickle of protocol
    2+ announce themselves in their first bytes; protocols 0 and 1 have no header, so their opcodes
    are parsed (:func:`pickletools.genops` reads, never executes) until the STOP opcode.
    """
    if zipfile.is_zipfile(path):
        return "a torch.save archive of pickled Python objects", None
    try:
        with open(path, "rb") as f:
            protocol, reference = 0, None
            for opcode, arg, _ in pickletools.genops(f):
                protocol = max(protocol, opcode.proto)
                if opcode.name == "PROTO" and isinstance(arg, int):
                    protocol = arg
                if opcode.name == "GLOBAL" and reference is None and isinstance(arg, str):
                    reference = arg.replace(" ", ".")
    except Exception:  # not a pickle: an invalid opcode, or the file ends before STOP
        return None
    return f"a protocol-{protocol} Python pickle", reference


def _unsafe_message(path: Path, kind: str, reference: str | None) -> str:
    """One line: what the file is, why it was refused, and the explicit opt-in (``trust``)."""
    what = f" (it references {reference})" if reference else ""
    return (
        f"{path} is {kind}, not a plain state dict or TorchScript archive{what}: refused, because "
        "loading it means unpickling arbitrary Python objects, which can run any code on this machine. "
        "Pass trust=True (CLI: --trust) only if you trust where the file came from; better, re-save it "
        "as a state dict (torch.save(model.state_dict(), path)) or a TorchScript archive"
    )


def _cause(exc: Exception) -> str:
    """The informative part of a torch.load error (after torch's long preamble), shortened."""
    text = str(exc)
    found = text.find("WeightsUnpickler error:")
    text = text[found + len("WeightsUnpickler error:") :] if found >= 0 else text
    return f"{type(exc).__name__}: {' '.join(text.split())[:200]}"


def _read(path: Path, trust: bool) -> object:
    """``torch.load`` with ``weights_only=True``; falls back to full unpickling only if trusted."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        kind = _pickle_kind(path)
        if kind is None or "weights only load failed" not in str(exc).lower():
            raise ModelError(f"cannot read {path} as a PyTorch file ({_cause(exc)})") from None
        if not trust:
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            raise UnsafeFileError(
                _unsafe_message(path, kind[0], found.group(1) if found else kind[1])
            ) from None
    except Exception as exc:
        raise ModelError(
            f"cannot read {path} as a PyTorch file ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        kind = _pickle_kind(path)
        if kind is None or "Python pickle" not in kind[0]:
            raise ModelError(f"cannot unpickle {path} ({_cause(exc)})") from exc
    try:  # a trusted plain pickle.dump file (torch.load wants torch.save's header)
        with open(path, "rb") as f:
            return pickle.load(f)  # the caller passed trust=True
    except Exception as exc:
        raise ModelError(f"cannot unpickle {path} ({_cause(exc)})") from exc


def _as_state_dict(obj: object) -> dict[str, Tensor] | None:
    """The state dict in ``obj``: itself, or under a checkpoint key such as ``"state_dict"``."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
            return dict(obj)
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                return _as_state_dict(inner)
    return None


def _unwrap_classifier_state(
    state: dict[str, Tensor], expected: set[str]
) -> tuple[dict[str, Tensor], Normalize | None]:
    """Accept the state dict of a whole :class:`Classifier` (``module.*`` and ``preprocess.*`` keys)."""
    if set(state) <= expected or not all(k.startswith(("module.", "preprocess.")) for k in state):
        return state, None
    inner = {k.removeprefix("module."): v for k, v in state.items() if k.startswith("module.")}
    mean, std = state.get("preprocess.mean"), state.get("preprocess.std")
    preprocess = (
        Normalize(mean.flatten().tolist(), std.flatten().tolist())
        if mean is not None and std is not None
        else None
    )
    return inner, preprocess


def _load_state(module: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """``load_state_dict`` that names the missing, unexpected and mis-shaped keys on a mismatch."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{label} ({len(keys)}): {', '.join(keys[:_SHOWN_KEYS])}{', ...' if len(keys) > _SHOWN_KEYS else ''}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        )
        if keys
    ]
    if problems:
        raise ModelError(
            f"state dict {path} does not match the architecture {type(module).__name__}: "
            + "; ".join(problems)
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"cannot load state dict {path}: {str(exc)[:300]}") from exc


def _infer_num_classes(module: nn.Module, preprocess: nn.Module, input_shape: Sequence[int]) -> int:
    """Number of classes read from one forward pass on a zero image of ``input_shape``."""
    x = torch.zeros(1, *input_shape)
    try:
        with torch.no_grad(), eval_mode(module), eval_mode(preprocess):
            out = module(preprocess(x))
    except Exception as exc:
        raise ModelError(
            f"the model fails on an input of shape {tuple(x.shape)} ({type(exc).__name__}: {str(exc)[:200]}); "
            "check input_shape"
        ) from exc
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != 1:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ModelError(
            f"the model returned {shape} for one input, expected logits of shape (1, num_classes)"
        )
    return int(out.shape[1])


def _read_module(
    path: Path, architecture: Architecture | None, trust: bool
) -> tuple[nn.Module, Normalize | None]:
    """The module stored in (or described by) ``path``, on the CPU, plus a Normalize found in it."""
    if is_torchscript(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load is deprecated, still works
            return torch.jit.load(str(path), map_location="cpu"), None
    obj = _read(path, trust)
    if isinstance(obj, nn.Module):
        return obj, None
    state = _as_state_dict(obj)
    if state is None:
        raise ModelError(
            f"{path} holds a {type(obj).__name__}, not a state dict, TorchScript archive or module"
        )
    if architecture is None:
        raise ConfigError(
            f"{path} is a state dict: pass architecture='package.module:callable' (a function that builds "
            "the untrained module), a zoo architecture name, or a callable"
        )
    build = resolve_architecture(architecture)
    try:
        module = build()
    except Exception as exc:
        raise ModelError(f"architecture {architecture!r} failed to build a module ({_cause(exc)})") from exc
    if not isinstance(module, nn.Module):
        raise ModelError(
            f"architecture {architecture!r} returned {type(module).__name__}, not a torch.nn.Module"
        )
    state, preprocess = _unwrap_classifier_state(state, set(module.state_dict()))
    _load_state(module, state, path)
    return module, preprocess


def load_file(
    path: str | os.PathLike[str],
    *,
    architecture: Architecture | None = None,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    trust: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    class_names: Sequence[str] | None = None,
    name: str | None = None,
    device: str | torch.device | None = None,
) -> Classifier:
    """Load a state dict, TorchScript archive or (with ``trust=True``) pickled module as a Classifier.

    ``input_shape`` (C, H, W) is required unless ``architecture`` is a zoo name; ``num_classes``
    is inferred from one forward pass when not given; ``mean``/``std`` add a :class:`Normalize`
    step inside the classifier, so attacks keep working in pixel space within ``bounds``.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a model file" if path.is_dir() else "does not exist"
        raise MissingFileError(f"model file {str(path)!r} {what}")
    if isinstance(architecture, str):
        info = model_info(architecture, missing_ok=True)
        if info is not None and info.architecture is not None:
            input_shape = input_shape if input_shape is not None else info.input_shape
            num_classes = num_classes if num_classes is not None else info.num_classes
    if (mean is None) != (std is None):
        raise ConfigError("pass both mean and std for normalisation, or neither")
    # the file is read (and an unsafe pickle refused) before asking for options it would need
    module, stored = _read_module(path, architecture, trust)
    if input_shape is None:
        raise ConfigError(
            f"input_shape is required to load {path}, e.g. input_shape=(3, 224, 224) (CLI: --input-shape 3,224,224)"
        )
    preprocess = Normalize(mean, std) if mean is not None and std is not None else stored
    module.eval()
    if num_classes is None:
        num_classes = _infer_num_classes(module, preprocess or nn.Identity(), input_shape)
    clf = Classifier(
        module,
        num_classes,
        input_shape=input_shape,
        bounds=bounds,
        preprocess=preprocess,
        class_names=class_names,
        name=name or path.stem,
    )
    return clf.to(device) if device is not None else clf

"""Per-epoch training checkpoints: written atomically, read back with ``weights_only=True``.

The only module of :mod:`evasion.training` that touches files. A checkpoint is one ``.pt`` file per
epoch (``epoch-0003.pt``) holding everything a resumed run needs to continue bit-for-bit: the
weights, the optimizer and scheduler states, every RNG state, the epoch and the log so far. Files
are written to a temporary name and renamed into place, so a run killed at any moment (even
``kill -9`` during the write) leaves only whole checkpoints; the newest readable one wins.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from .._cache import atomic_write_bytes
from ..errors import ConfigError

__all__ = ["CheckpointDir"]

_NAME = re.compile(r"^epoch-(\d{4,})\.pt$")


class CheckpointDir:
    """A folder of per-epoch checkpoints; keeps the newest ``keep`` of them.

    Args:
        path: the folder (created on the first save). A path that is an existing file is refused.
        keep: how many checkpoints to keep (older ones are deleted after a newer one is in place).
    """

    def __init__(self, path: str | Path, keep: int = 2):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"checkpoint folder {self.path} is a file")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ConfigError(f"keep must be a positive integer, got {keep!r}")
        self.keep = keep

    def __repr__(self) -> str:
        return f"CheckpointDir({str(self.path)!r}, keep={self.keep})"

    def epochs(self) -> list[int]:
        """Epochs that have a checkpoint file, oldest first."""
        if not self.path.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.path.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def file(self, epoch: int) -> Path:
        return self.path / f"epoch-{epoch:04d}.pt"

    def save(self, epoch: int, state: dict[str, Any]) -> Path:
        """Write ``state`` as the checkpoint of ``epoch`` (atomically), then prune old ones."""
        buffer = io.BytesIO()
        torch.save(state, buffer)
        target = atomic_write_bytes(self.file(epoch), buffer.getvalue())
        for old in self.epochs()[: -self.keep]:
            self.file(old).unlink(missing_ok=True)
        return target

    def load_latest(self) -> dict[str, Any] | None:
        """The newest readable checkpoint (``None`` if there is none); unreadable ones are skipped."""
        for epoch in reversed(self.epochs()):
            path = self.file(epoch)
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # a damaged file: fall back to an older one, say so
                warnings.warn(
                    f"skipping unreadable checkpoint {path} ({type(exc).__name__})",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            if isinstance(state, dict) and state.get("epoch") == epoch:
                return state
            warnings.warn(
                f"skipping checkpoint {path}: not a training checkpoint", RuntimeWarning, stacklevel=2
            )
        return None

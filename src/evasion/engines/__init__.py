"""Where the cells of an evaluation run: this process (``LocalEngine``) or Ray (``RayEngine``).

Both implement :class:`evasion.evaluation.Engine`; ``ray`` itself is an optional extra, imported
only when a ``RayEngine`` runs.
"""

from __future__ import annotations

from ..evaluation.protocols import Engine
from .local import LocalEngine
from .ray import RayEngine

__all__ = ["Engine", "LocalEngine", "RayEngine"]

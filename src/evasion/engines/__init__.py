"""Where the cells of an evaluation run: this process (``LocalEngine``) or Ray (``RayEngine``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..evaluation.engine import Engine, LocalEngine

if TYPE_CHECKING:
    from .ray import RayEngine

__all__ = ["Engine", "LocalEngine", "RayEngine"]


def __getattr__(name: str) -> Any:  # RayEngine is imported lazily (ray is an optional extra)
    if name == "RayEngine":
        from .ray import RayEngine

        return RayEngine
    raise AttributeError(name)

"""Matplotlib helpers (imported lazily): figures as inline SVG, one consistent style."""

from __future__ import annotations

import io
from typing import Any

from ..errors import MissingDependencyError

__all__ = ["figure", "pyplot", "to_svg"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the non-interactive Agg backend, or a clear install hint."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("matplotlib", "plots", "plots in reports") from None
    return plt


def figure(width: float = 5.2, height: float = 3.4) -> tuple[Any, Any]:
    """A new (figure, axes) pair in the report style."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    ax.grid(True, alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def to_svg(fig: Any) -> str:
    """Render a figure as SVG markup (no external fonts or links) and close it."""
    plt = pyplot()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.find("<svg") :]

"""Matplotlib helpers (imported lazily): figures as inline SVG, one consistent style."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from typing import Any

from ..errors import MissingDependencyError

__all__ = ["figure", "heatmap", "pyplot", "to_svg"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the non-interactive Agg backend, or a clear install hint."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, faster SVG
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("matplotlib", "plots", "plots in reports") from None
    return plt


def figure(width: float = 5.2, height: float = 3.4, ncols: int = 1) -> tuple[Any, Any]:
    """A new (figure, axes) pair in the report style (``ncols > 1``: a list of axes side by side)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, ncols, figsize=(width, height), dpi=100, squeeze=False)
    row = list(axes[0])
    for ax in row:
        ax.grid(True, alpha=0.3)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    return fig, (row[0] if ncols == 1 else row)


def to_svg(fig: Any) -> str:
    """Render a figure as SVG markup (no external fonts or links) and close it."""
    plt = pyplot()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)  # RDF metadata with remote URIs
    return text[text.find("<svg") :]


def heatmap(
    ax: Any,
    values: Sequence[Sequence[float]],
    rows: Sequence[str],
    columns: Sequence[str],
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> None:
    """Draw a matrix as an annotated heat map on ``ax`` (rows on the y axis, NaN shown as "-").

    Shared by every row-by-column record: detector generalisation matrices (trained on x tested
    on), transferability matrices (crafted on x evaluated on).
    """
    v = [[float(c) for c in row] for row in values]
    ax.imshow(v, vmin=vmin, vmax=vmax, cmap="viridis")
    ax.grid(False)
    ax.set_xticks(range(len(columns)), list(columns), rotation=30, fontsize=7)
    ax.set_yticks(range(len(rows)), list(rows), fontsize=7)
    dark = vmin + 0.6 * (vmax - vmin)  # light text on the dark end of viridis
    for i, row in enumerate(v):
        for j, c in enumerate(row):
            text = "-" if math.isnan(c) else f"{c:.2f}"
            colour = "w" if math.isnan(c) or c < dark else "k"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)

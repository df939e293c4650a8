"""A self-contained HTML page builder: sections, tables, inline figures and image grids.

Everything is inline (CSS, SVG, base64 PNG): the file opens offline, from a mail attachment or a
CI artefact, with no network access. Every string that reaches the page is escaped, so class
names, run names and paths can never inject markup.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import Tensor

from .._cache import atomic_write_text
from .png import encode_png, to_uint8

__all__ = ["GridCell", "Page", "escape", "png_data_uri"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2433;background:#f6f7fb}
header{background:#1d2433;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#c8cede;font-size:13px}
main{max-width:1180px;margin:0 auto;padding:16px 32px 48px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:16px 22px;margin:18px 0}
h2{font-size:18px;margin:4px 0 12px}h3{font-size:15px;margin:14px 0 8px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}th,td{padding:4px 10px;border-bottom:1px solid #e3e6ee;text-align:right}
th{background:#f0f2f7}td:first-child,th:first-child{text-align:left}
figure{margin:10px 0;display:inline-block;vertical-align:top}figcaption{font-size:12px;color:#566}
.grid{display:grid;gap:6px;align-items:start}.cell{text-align:center;font-size:11px}
.cell img{image-rendering:pixelated;border:1px solid #ccd;width:100%}
.flag{padding:6px 10px;border-radius:6px;margin:4px 0;font-size:13px}
.flag.ok{background:#e8f6ec}.flag.warn{background:#fff4dc}.flag.bad{background:#fde8e8}
pre{background:#f0f2f7;padding:8px;border-radius:6px;font-size:12px;overflow:auto}
.note{color:#566;font-size:13px}
nav{font-size:13px;margin:10px 0 0}nav a{margin-right:14px;color:#c8cede}
"""


def escape(text: object) -> str:
    """HTML-escape any value (quotes included)."""
    return html.escape(str(text), quote=True)


def png_data_uri(image: Tensor | np.ndarray, bounds: tuple[float, float] = (0.0, 1.0)) -> str:
    """A ``data:image/png;base64,...`` URI for a (C, H, W) float image or a uint8 array."""
    pixels = image if isinstance(image, np.ndarray) and image.dtype == np.uint8 else to_uint8(image, bounds)
    return "data:image/png;base64," + base64.b64encode(encode_png(pixels)).decode("ascii")


@dataclass(frozen=True)
class GridCell:
    """One image of a grid with its caption lines (escaped when rendered)."""

    image: Tensor | np.ndarray
    caption: Sequence[str] = ()
    bounds: tuple[float, float] = (0.0, 1.0)


@dataclass
class Page:
    """Build a report page section by section, then :meth:`render` or :meth:`write` it."""

    title: str
    subtitle: str = ""
    _parts: list[str] = field(default_factory=list)
    _open: bool = False
    _links: list[tuple[str, str]] = field(default_factory=list)

    def nav(self, links: Sequence[tuple[str, str]]) -> Page:
        """Links to sections (``(anchor, text)``), shown in the header."""
        self._links.extend((str(a), str(t)) for a, t in links)
        return self

    def section(self, title: str, anchor: str | None = None) -> Page:
        self._close()
        ident = f' id="{escape(anchor)}"' if anchor else ""
        self._parts.append(f"<section{ident}><h2>{escape(title)}</h2>")
        self._open = True
        return self

    def heading(self, text: str) -> Page:
        self._parts.append(f"<h3>{escape(text)}</h3>")
        return self

    def paragraph(self, text: str, css: str = "") -> Page:
        cls = f' class="{escape(css)}"' if css else ""
        self._parts.append(f"<p{cls}>{escape(text)}</p>")
        return self

    def bullets(self, items: Sequence[str]) -> Page:
        self._parts.append("<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>")
        return self

    def flag(self, text: str, level: str = "warn") -> Page:
        """A coloured call-out: ``ok``, ``warn`` or ``bad``."""
        self._parts.append(f'<div class="flag {escape(level)}">{escape(text)}</div>')
        return self

    def preformatted(self, text: str) -> Page:
        self._parts.append(f"<pre>{escape(text)}</pre>")
        return self

    def table(self, header: Sequence[str], rows: Sequence[Sequence[object]], floats: str = "{:.3f}") -> Page:
        def cell(v: object) -> str:
            return escape(floats.format(v) if isinstance(v, float) else v)

        head = "".join(f"<th>{escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
        self._parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        return self

    def svg(self, svg: str, caption: str = "") -> Page:
        """An inline SVG figure (trusted markup from :mod:`evasion.reports.plots`)."""
        if not svg.lstrip().startswith(("<svg", "<?xml")):
            raise ValueError("Page.svg expects SVG markup")
        start = svg.find("<svg")
        cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
        self._parts.append(f'<figure class="plot">{svg[start:]}{cap}</figure>')
        return self

    def image(
        self,
        image: Tensor | np.ndarray,
        caption: str = "",
        width: int = 160,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> Page:
        cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
        self._parts.append(
            f'<figure><img alt="{escape(caption)}" width="{int(width)}" src="{png_data_uri(image, bounds)}">{cap}</figure>'
        )
        return self

    def image_grid(
        self, rows: Sequence[Sequence[GridCell]], column_titles: Sequence[str] = (), cell_width: int = 110
    ) -> Page:
        """Rows of images with captions, e.g. original | adversarial | amplified perturbation."""
        cols = max((len(r) for r in rows), default=0)
        style = f"grid-template-columns:repeat({cols},{int(cell_width)}px)"
        out = [f'<div class="grid image-grid" style="{style}">']
        out += [f'<div class="cell"><b>{escape(t)}</b></div>' for t in column_titles]
        for row in rows:
            for c in row:
                caption = "<br>".join(escape(line) for line in c.caption)
                out.append(
                    f'<div class="cell"><img alt="{escape(" ".join(c.caption))}" src="{png_data_uri(c.image, c.bounds)}"><br>{caption}</div>'
                )
        out.append("</div>")
        self._parts.append("".join(out))
        return self

    def raw_html(self, markup: str) -> Page:
        """Append trusted markup built by evasion itself (never user strings)."""
        self._parts.append(markup)
        return self

    def _close(self) -> None:
        if self._open:
            self._parts.append("</section>")
            self._open = False

    def render(self) -> str:
        self._close()
        sub = f"<p>{escape(self.subtitle)}</p>" if self.subtitle else ""
        if self._links:
            sub += (
                "<nav>"
                + "".join(f'<a href="#{escape(a)}">{escape(t)}</a>' for a, t in self._links)
                + "</nav>"
            )
        return (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(self.title)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>{escape(self.title)}</h1>{sub}</header><main>{''.join(self._parts)}</main></body></html>"
        )

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the page atomically (unique tmp file + rename; the umask decides its mode)."""
        return atomic_write_text(path, self.render())

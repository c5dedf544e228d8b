"""Drawing and writing matplotlib figures without a display (Agg canvas), shared by every figure module.

The figures the command line writes share one layout: matplotlib's constrained layout (it makes room
for titles, labels and legends, so nothing is cut at the figure's edge), legends outside the axes
(:func:`legend_outside`: they never cover a curve) and notes under the x-axis label
(:func:`footnote`). :func:`save_figure` writes PNG, PDF or SVG by the file's suffix, the same bytes
for the same figure (no dates in PDF and SVG metadata, a fixed SVG id salt).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.text import Annotation
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

__all__ = ["FIGURE_FORMATS", "figure_path", "footnote", "legend_outside", "new_figure", "readable_log_ticks", "save_figure"]

#: the formats ``--format`` offers (the suffix of the written file)
FIGURE_FORMATS = ("png", "pdf", "svg")

#: metadata that would make two writes of the same figure differ (dates), dropped
_NO_DATES = {"pdf": {"CreationDate": None, "ModDate": None}, "svg": {"Date": None}}


def figure_path(folder: Union[str, Path], stem: str, figure_format: str = "png") -> Path:
    """``folder/stem.<format>``; a format outside :data:`FIGURE_FORMATS` is a ValueError naming them."""
    if figure_format not in FIGURE_FORMATS:
        raise ValueError(f"figure format must be one of {', '.join(FIGURE_FORMATS)}, got {figure_format!r}")
    return Path(folder) / f"{stem}.{figure_format}"


def new_figure(width: float, height: float) -> Figure:
    """A bare figure (no pyplot) with constrained layout."""
    return Figure(figsize=(width, height), layout="constrained")


def legend_outside(ax: Axes, handles: Optional[Sequence[Any]] = None, title: Optional[str] = None, **kwargs: Any) -> Legend:
    """The axes' legend to the right of its plotting area, top-aligned (constrained layout narrows
    the axes to make room), so it covers no data."""
    options: Dict[str, Any] = dict(
        loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize="small", title_fontsize="small"
    )
    options.update(kwargs)
    if handles is not None:
        return ax.legend(handles=list(handles), title=title, **options)
    return ax.legend(title=title, **options)


def footnote(ax: Axes, text: str, width: int = 120) -> Annotation:
    """A small grey note under the axes' x-axis label, left-aligned with the axes, wrapped at ``width``
    characters per line (constrained layout keeps it inside the figure)."""
    wrapped = "\n".join(textwrap.fill(part, width) for part in text.split("\n"))
    return ax.annotate(
        wrapped,
        xy=(0.0, 0.0),
        xycoords=("axes fraction", ax.xaxis.label),
        xytext=(0, -4),
        textcoords="offset points",
        ha="left",
        va="top",
        fontsize="x-small",
        color="0.3",
        annotation_clip=False,
    )


def readable_log_ticks(ax: Axes, low: float, high: float) -> None:
    """Plain-number ticks on a log y axis (0.05, 0.1, 0.2, 0.5, 1, 2 rather than 10^-1 alone): 1, 2
    and 5 times each power of ten over at most three decades, the powers alone beyond."""
    decades = math.log10(max(high, 1e-300) / max(low, 1e-300))
    subs = (1.0, 2.0, 5.0) if decades <= 3.0 else (1.0,)
    ax.yaxis.set_major_locator(LogLocator(base=10.0, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def save_figure(fig: Figure, out: Union[str, Path], dpi: int = 120, tight: bool = False) -> Path:
    """Write ``fig`` to ``out`` (parent folders created; PNG, PDF or SVG by its suffix) and return the path.

    ``tight`` runs ``tight_layout`` first, for figures made without a layout engine."""
    out = Path(out)
    kind = out.suffix.lstrip(".").lower()
    if kind not in FIGURE_FORMATS:
        raise ValueError(f"{out}: a figure is written as {', '.join('.' + f for f in FIGURE_FORMATS)}, not {out.suffix or 'no suffix'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    if tight:
        fig.tight_layout()
    with matplotlib.rc_context({"svg.hashsalt": "hybrid_pg"}):
        fig.savefig(out, dpi=dpi, metadata=_NO_DATES.get(kind))
    return out

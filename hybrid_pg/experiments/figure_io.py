"""Writing matplotlib figures without a display (Agg canvas), shared by every figure module."""

from __future__ import annotations

from pathlib import Path
from typing import Union

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def save_figure(fig: Figure, out_png: Union[str, Path], dpi: int = 120, tight: bool = False) -> Path:
    """Write ``fig`` to ``out_png`` (parent folders created) and return the path."""
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    if tight:
        fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    return out

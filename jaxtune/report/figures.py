"""The plotting helpers every PNG of jaxtune is drawn with (matplotlib, Agg canvas).

Figures are ``matplotlib.figure.Figure`` objects on their own ``FigureCanvasAgg``, so nothing here
selects a backend or touches ``pyplot``'s global figure list; they are written atomically.

Example:
    >>> import tempfile
    >>> fig = figure(4, 3)
    >>> ax = fig.subplots()
    >>> _ = ax.plot([0, 1], [1, 0], color=palette(2)[1])
    >>> save(fig, Path(tempfile.mkdtemp()) / "line.png").name
    'line.png'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxtune.files import atomic_path

__all__ = ["figure", "palette", "render", "save"]


def figure(width: float, height: float, *, dpi: int = 100) -> Figure:
    """A figure of ``width`` x ``height`` inches with constrained layout, on an Agg canvas."""
    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def palette(n: int) -> list[Any]:
    """``n`` distinct colours: ``tab10`` up to 10, else evenly spaced along ``viridis``."""
    if n <= 10:
        cmap = colormaps["tab10"]
        return [cmap(i) for i in range(n)]
    cmap = colormaps["viridis"]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def save(fig: Figure, path: str | Path, **savefig: Any) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically, parent folders created).

    Args:
      fig: a figure from :func:`figure`.
      path: the PNG file.
      **savefig: passed to ``Figure.savefig`` (e.g. ``bbox_inches="tight"``).

    Returns:
      ``path`` as a :class:`~pathlib.Path`.
    """
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", **savefig)
    return Path(path)


def render(fig: Figure) -> Any:
    """The figure drawn as an RGB ``uint8`` array of shape (H, W, 3)."""
    import numpy as np

    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()

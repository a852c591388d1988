"""The lab's figure style, in one place.

Two modes, as the lab has always drawn them: *light* (white background) for curves, histograms and scatter
plots, and *naked-eye* (black sky, white ticks) only for views where tokens are drawn as stars — point clouds
and sky maps. Default colour steelblue, colormap inferno, 200 dpi.
"""

from __future__ import annotations

from contextlib import contextmanager

import matplotlib

COLOR = "steelblue"
CMAP = "inferno"
DPI = 200
FIGSIZE = (10, 6)

# Populations keep one colour everywhere so a reader can follow them from page to page.
DEAD = "steelblue"
LIVE = "darkorange"
CENTROID = "crimson"

_LIGHT = {
    "figure.figsize": FIGSIZE,
    "figure.dpi": 100,
    "savefig.dpi": DPI,
    "savefig.bbox": "tight",
    "image.cmap": CMAP,
    "axes.prop_cycle": matplotlib.cycler(color=[COLOR, "darkorange", "seagreen", "crimson", "slateblue", "goldenrod"]),
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.loc": "best",
    "legend.frameon": False,
    "font.size": 11,
}

_NAKED_EYE = {
    **_LIGHT,
    "figure.facecolor": "black",
    "axes.facecolor": "black",
    "savefig.facecolor": "black",
    "axes.edgecolor": "white",
    "axes.labelcolor": "white",
    "axes.titlecolor": "white",
    "xtick.color": "white",
    "ytick.color": "white",
    "text.color": "white",
    "grid.color": "#555555",
    "legend.labelcolor": "white",
}


def use_light() -> None:
    """Apply the light style globally (pages call this once at the top)."""
    matplotlib.rcParams.update(_LIGHT)


@contextmanager
def naked_eye():
    """Black-sky style for point clouds; use as `with plots.naked_eye(): ...`."""
    with matplotlib.rc_context(_NAKED_EYE):
        yield


def new(nrows: int = 1, ncols: int = 1, **kwargs):
    """A figure in the current style: `fig, ax = plots.new()`."""
    import matplotlib.pyplot as plt

    kwargs.setdefault("figsize", FIGSIZE)
    kwargs.setdefault("layout", "constrained")
    return plt.subplots(nrows, ncols, **kwargs)

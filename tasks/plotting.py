"""Matplotlib, the one way every figure of the tool is drawn: off-screen (Agg, no display on
a worker) and handed on as PNG bytes, the figure closed so that a long run keeps no figures."""

from __future__ import annotations

import io
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (imported on first use: matplotlib is slow to
    load, and most units draw nothing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any, dpi: int = 110, tight: bool = False) -> bytes:
    """``fig`` as PNG bytes (``tight``: cropped to what is drawn); the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, **({"bbox_inches": "tight"} if tight else {}))
    pyplot().close(fig)
    return buf.getvalue()

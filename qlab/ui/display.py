"""Show plotly figures so they render in JupyterLab and in offline HTML reports alike."""

from __future__ import annotations

import json
from typing import Any

PLOTLY_MIME = "application/vnd.plotly.v1+json"


def figure_bundle(fig: Any) -> dict[str, Any]:
    """A display bundle: the plotly mimetype for JupyterLab, and HTML for nbconvert reports.

    The HTML part does not carry plotly.js: `qlab.ui.runner` puts one copy in each report's head.
    """
    return {
        PLOTLY_MIME: json.loads(fig.to_json()),  # plotly's encoder turns timestamps and arrays into JSON
        "text/html": fig.to_html(full_html=False, include_plotlyjs=False),
    }


def show(*figures: Any) -> None:
    """Display plotly figures (and anything else IPython can show) in order."""
    from IPython.display import display

    for fig in figures:
        if hasattr(fig, "to_plotly_json"):
            display(figure_bundle(fig), raw=True)
        else:
            display(fig)

"""Plotly figures of Monte Carlo and stress-test results: fan chart, metric histograms, scenario comparison."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

BAND_COLOUR = "rgba(31, 119, 180, {a})"


def fan_chart_figure(bands: pd.DataFrame, sample_paths: np.ndarray, real: pd.Series, *, title: str = ""):
    """Percentile bands of equity over time (outer bands lighter), a few thin sample paths and the real equity."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for path in sample_paths:
        fig.add_trace(go.Scatter(x=bands.index, y=path, mode="lines", line={"width": 0.6, "color": "rgba(120,120,120,0.35)"},
                                 hoverinfo="skip", showlegend=False))
    cols = list(bands.columns)
    pairs = [(cols[i], cols[-1 - i]) for i in range(len(cols) // 2)]
    for k, (lo, hi) in enumerate(pairs):
        alpha = 0.15 + 0.2 * k
        fig.add_trace(go.Scatter(x=bands.index, y=bands[hi], mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=bands.index, y=bands[lo], mode="lines", line={"width": 0}, fill="tonexty",
                                 fillcolor=BAND_COLOUR.format(a=alpha), name=f"{lo[1:]}-{hi[1:]} %"))
    if len(cols) % 2:
        mid = cols[len(cols) // 2]
        fig.add_trace(go.Scatter(x=bands.index, y=bands[mid], mode="lines", line={"color": BAND_COLOUR.format(a=1)},
                                 name=f"median ({mid})"))
    fig.add_trace(go.Scatter(x=real.index, y=real.to_numpy(), mode="lines", line={"color": "black", "width": 2}, name="real"))
    fig.update_layout(title=title, yaxis_title="equity", height=450, margin={"l": 50, "r": 20, "t": 50, "b": 30})
    return fig


def histogram_figure(metrics: pd.DataFrame, real: pd.Series, columns: Sequence[str], labels: dict[str, str], *, title: str = ""):
    """One histogram per metric (infinite values left out), the real value as a red line."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    cols = 3
    rows = math.ceil(len(columns) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[labels.get(c, c) for c in columns])
    for k, name in enumerate(columns):
        r, c = k // cols + 1, k % cols + 1
        x = metrics[name].to_numpy(dtype=float)
        fig.add_trace(go.Histogram(x=x[np.isfinite(x)], nbinsx=50, marker_color=BAND_COLOUR.format(a=0.7), showlegend=False,
                                   name=labels.get(name, name)), row=r, col=c)
        value = float(real[name])
        if math.isfinite(value):
            fig.add_vline(x=value, line={"color": "red", "width": 2}, row=r, col=c,
                          annotation_text="real", annotation_position="top")
    fig.update_layout(title=title, height=300 * rows, margin={"l": 40, "r": 20, "t": 70, "b": 30}, bargap=0.02)
    return fig


def stress_figure(table: pd.DataFrame, *, title: str = "Stress scenarios against the baseline"):
    """Total return and max drawdown of each scenario (rows of a stress report's table) as grouped bars."""
    import plotly.graph_objects as go

    fig = go.Figure()
    names = table.index.astype(str)
    fig.add_trace(go.Bar(x=names, y=table["total_return"], name="total return", marker_color="rgba(31,119,180,0.8)"))
    fig.add_trace(go.Bar(x=names, y=table["max_drawdown"], name="max drawdown", marker_color="rgba(214,39,40,0.8)"))
    fig.update_layout(title=title, barmode="group", yaxis_tickformat=".0%", height=420, margin={"l": 50, "r": 20, "t": 50, "b": 120})
    return fig

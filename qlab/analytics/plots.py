"""Plotly figures of market data and results; shown inline and embedded offline in HTML reports."""

from __future__ import annotations

import pandas as pd

from qlab.data.candles import Candles, resample_candles, timeframe_delta

MAX_CHART_BARS = 5000  # a candlestick chart above this many bars is slow in a browser


def chart_bars(candles: Candles, timeframe: str, max_bars: int = MAX_CHART_BARS) -> tuple[Candles, str]:
    """Candles coarse enough to chart (resampled to the smallest standard timeframe under max_bars)."""
    if len(candles) <= max_bars:
        return candles, timeframe
    span = candles.index[-1] - candles.index[0]
    for name in ("5m", "15m", "1h", "4h", "1d", "1w"):
        if timeframe_delta(name) > timeframe_delta(timeframe) and span / timeframe_delta(name) <= max_bars:
            return resample_candles(candles, name), name
    return resample_candles(candles, "1w"), "1w"


def candlestick_figure(
    candles: Candles,
    timeframe: str,
    *,
    title: str = "",
    gaps: pd.DataFrame | None = None,
    anomalies: pd.DataFrame | None = None,
):
    """Candlesticks over volume bars, with missing-data gaps shaded and anomalies marked."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    bars, shown_tf = chart_bars(candles, timeframe)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.75, 0.25], vertical_spacing=0.03)
    fig.add_trace(
        go.Candlestick(x=bars.index, open=bars.open, high=bars.high, low=bars.low, close=bars.close, name="price"),
        row=1, col=1,
    )
    fig.add_trace(go.Bar(x=bars.index, y=bars.volume, name="volume", marker_color="rgba(100,110,130,0.6)"), row=2, col=1)
    step = timeframe_delta(timeframe)
    for gap in (gaps if gaps is not None else pd.DataFrame()).itertuples():
        fig.add_vrect(x0=gap.start, x1=gap.end + step, fillcolor="red", opacity=0.2, line_width=0, row="all", col=1)
    if anomalies is not None and len(anomalies):
        at = pd.DatetimeIndex(anomalies["timestamp"])
        y = candles["high"].reindex(at).to_numpy()
        fig.add_trace(
            go.Scatter(
                x=at, y=y, mode="markers", name="anomaly", text=anomalies["kind"],
                marker={"symbol": "triangle-down", "size": 10, "color": "orange"},
                hovertemplate="%{x}<br>%{text}<extra></extra>",
            ),
            row=1, col=1,
        )
    suffix = f" (shown as {shown_tf} bars)" if shown_tf != timeframe else ""
    fig.update_layout(title=title + suffix, xaxis_rangeslider_visible=False, height=600, margin={"l": 40, "r": 20, "t": 50, "b": 30})
    return fig

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


def equity_figure(equity: pd.Series, benchmark: pd.Series | None = None, *, title: str = "Equity",
                  benchmark_name: str = "benchmark"):
    """Equity on top (with the benchmark rescaled to start at the same value, when given), the
    drawdown below it in percent, on a shared time axis."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from qlab.analytics.metrics import _equity, drawdown_series

    eq = _equity(equity)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.03)
    fig.add_trace(go.Scatter(x=eq.index, y=eq.to_numpy(), name="equity", line={"color": "#1f77b4"}), row=1, col=1)
    if benchmark is not None:
        bench = pd.to_numeric(benchmark, errors="coerce").reindex(eq.index)
        first = bench.first_valid_index()
        if first is not None:
            scaled = bench / bench.loc[first] * eq.loc[first]
            fig.add_trace(go.Scatter(x=eq.index, y=scaled.to_numpy(), name=benchmark_name,
                                     line={"color": "#999999", "dash": "dot"}), row=1, col=1)
    dd = drawdown_series(eq) * 100
    fig.add_trace(go.Scatter(x=dd.index, y=dd.to_numpy(), name="drawdown %", fill="tozeroy",
                             line={"color": "#d62728", "width": 1}), row=2, col=1)
    fig.update_yaxes(title_text="equity", row=1, col=1)
    fig.update_yaxes(title_text="drawdown %", row=2, col=1)
    fig.update_layout(title=title, height=600, hovermode="x unified", margin={"l": 40, "r": 20, "t": 50, "b": 30})
    return fig


_MARKERS = {  # (kind, key) -> trace name, marker
    ("entry", 1): ("long entry", {"symbol": "triangle-up", "size": 11, "color": "#2ca02c"}),
    ("entry", -1): ("short entry", {"symbol": "triangle-down", "size": 11, "color": "#d62728"}),
    ("exit", True): ("winning exit", {"symbol": "x", "size": 10, "color": "#2ca02c"}),
    ("exit", False): ("losing exit", {"symbol": "x", "size": 10, "color": "#d62728"}),
}


def _asset_trades(trades: pd.DataFrame, asset: str | None) -> pd.DataFrame:
    from qlab.errors import ConfigError, did_you_mean

    if "asset" not in trades.columns or len(trades) == 0:
        return trades
    assets = list(pd.unique(trades["asset"]))
    if asset is None:
        if len(assets) > 1:
            raise ConfigError(f"the trades hold {len(assets)} assets ({', '.join(map(str, assets))}); "
                              "pass asset=... to pick the one these candles belong to")
        return trades
    if asset not in assets:
        raise ConfigError(f"no trade of asset {asset!r}; the trades hold {', '.join(map(str, assets))}."
                          + did_you_mean(asset, map(str, assets)))
    return trades[trades["asset"] == asset]


def trades_figure(candles: Candles, trades: pd.DataFrame, timeframe: str, asset: str | None = None, *, title: str = ""):
    """Candlesticks (downsampled like candlestick_figure) with each trade's entry (triangles: up long,
    down short) and exit (crosses: green win, red loss by net PnL) at their executed prices; hover
    gives the PnL and the exit reason. Open trades show their entry only. Empty groups add no trace."""
    import plotly.graph_objects as go

    t = _asset_trades(trades, asset)
    bars, shown_tf = chart_bars(candles, timeframe)
    fig = go.Figure(go.Candlestick(x=bars.index, open=bars.open, high=bars.high, low=bars.low, close=bars.close,
                                   name=asset or "price"))
    if len(t):
        direction = t["direction"].astype(int)
        for d in (1, -1):
            sel = t[direction == d]
            if len(sel):
                name, marker = _MARKERS[("entry", d)]
                text = [f"{name}<br>price {p:,.6g}<br>size {s:,.6g}" for p, s in zip(sel.entry_price, sel["size"], strict=True)]
                fig.add_trace(go.Scatter(x=sel.entry_time, y=sel.entry_price, mode="markers", name=name, marker=marker,
                                         text=text, hovertemplate="%{x}<br>%{text}<extra></extra>"))
        closed = t[~t["is_open"].astype(bool)]
        for win in (True, False):
            sel = closed[(closed.net_pnl > 0) == win]
            if len(sel):
                name, marker = _MARKERS[("exit", win)]
                notional = (sel["size"].abs() * sel.entry_price).to_numpy()
                text = [f"{name} ({r})<br>price {p:,.6g}<br>net PnL {pnl:,.2f} ({pnl / n:.2%})"
                        for r, p, pnl, n in zip(sel.exit_reason, sel.exit_price, sel.net_pnl, notional, strict=True)]
                fig.add_trace(go.Scatter(x=sel.exit_time, y=sel.exit_price, mode="markers", name=name, marker=marker,
                                         text=text, hovertemplate="%{x}<br>%{text}<extra></extra>"))
    suffix = f" (shown as {shown_tf} bars)" if shown_tf != timeframe else ""
    fig.update_layout(title=(title or f"Trades{' of ' + asset if asset else ''}") + suffix, xaxis_rangeslider_visible=False,
                      height=600, margin={"l": 40, "r": 20, "t": 50, "b": 30})
    return fig


def cost_breakdown_figure(trades: pd.DataFrame, *, title: str = "From PnL before costs to net PnL"):
    """A waterfall: the trades' PnL before costs (net PnL + every cost), minus each cost component
    (fees, spread, slippage, impact, funding; `qlab.costs.cost_breakdown`), down to the net PnL."""
    import plotly.graph_objects as go

    from qlab.analytics.metrics import _trades
    from qlab.costs import cost_breakdown

    t = _trades(trades)
    costs = cost_breakdown(t)
    components = [k for k in costs.index if k != "total"]
    net = float(t["net_pnl"].astype(float).sum())
    before = net + float(costs["total"])
    values = [before] + [-float(costs[k]) for k in components] + [0.0]
    fig = go.Figure(go.Waterfall(
        x=["before costs", *components, "net PnL"], y=values,
        measure=["absolute"] + ["relative"] * len(components) + ["total"],
        text=[f"{v:,.2f}" for v in values[:-1]] + [f"{net:,.2f}"], textposition="outside",
        decreasing={"marker": {"color": "#d62728"}}, increasing={"marker": {"color": "#2ca02c"}},
        totals={"marker": {"color": "#1f77b4"}}, name="PnL",
    ))
    fig.update_layout(title=title, height=450, showlegend=False, margin={"l": 40, "r": 20, "t": 50, "b": 30})
    return fig


def correlation_figure(corr: pd.DataFrame, *, title: str = "Correlation"):
    """A heatmap of a correlation matrix on a fixed -1..1 red-blue scale, each cell labelled."""
    import plotly.graph_objects as go

    labels = [str(c) for c in corr.columns]
    values = corr.to_numpy(dtype=float)
    text = [["" if pd.isna(v) else f"{v:.2f}" for v in row] for row in values]
    fig = go.Figure(go.Heatmap(z=values, x=labels, y=[str(i) for i in corr.index], zmin=-1, zmax=1, colorscale="RdBu",
                               text=text, texttemplate="%{text}", hovertemplate="%{y} / %{x}: %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title, height=max(300, 60 * len(labels) + 120), margin={"l": 40, "r": 20, "t": 50, "b": 30})
    return fig


def _price_scale(values: pd.Series, close: pd.Series) -> bool:
    """True when an indicator lives on the price scale (moving averages, bands), not an oscillator's."""
    ratio = (values / close).replace([float("inf"), float("-inf")], float("nan")).dropna()
    return bool(len(ratio)) and 0.5 < float(ratio.median()) < 2.0


def strategy_figure(candles: Candles, compiled: pd.DataFrame, trades: pd.DataFrame, timeframe: str, *, title: str = ""):
    """Trades on the candles with the strategy's price-scale indicators overlaid; oscillators in a panel below."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    base = trades_figure(candles, trades, timeframe, title=title)
    bars, shown_tf = chart_bars(candles, timeframe)
    rules = ("entry_long", "exit_long", "entry_short", "exit_short")
    numeric = [c for c in compiled.columns if compiled[c].dtype != bool and c not in rules]
    overlays = [c for c in numeric if _price_scale(compiled[c], candles["close"])]
    panel = [c for c in numeric if c not in overlays]
    rows = 2 if panel else 1
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, row_heights=[0.72, 0.28] if panel else [1.0], vertical_spacing=0.03)
    for trace in base.data:
        fig.add_trace(trace, row=1, col=1)

    def shown(col: str) -> pd.Series:
        s = compiled[col]
        return s if shown_tf == timeframe else s.resample(timeframe_delta(shown_tf), origin="epoch").last().reindex(bars.index)

    for col in overlays:
        fig.add_trace(go.Scatter(x=bars.index, y=shown(col), mode="lines", name=col, line={"width": 1.2}), row=1, col=1)
    for col in panel:
        fig.add_trace(go.Scatter(x=bars.index, y=shown(col), mode="lines", name=col, line={"width": 1.2}), row=2, col=1)
    fig.update_layout(title=base.layout.title, xaxis_rangeslider_visible=False, height=700 if panel else 600,
                      margin={"l": 40, "r": 20, "t": 50, "b": 30})
    return fig

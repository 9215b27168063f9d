"""The paper-trading monitor behind notebooks/05_paper_trading_monitor.ipynb: `run(params)` replays a fixed stretch of
bundled data through the paper trader and returns static figures (papermill, reports); `widget(params)` runs the same
replay as an asyncio task on the kernel's loop and updates plotly FigureWidgets as events arrive, with start/stop buttons.

Panels: price with orders and fills, equity and drawdown, position, open orders, risk-limit usage, recent events.
Both paths fold the trader's events into one `MonitorState` and draw it with the same `figures(...)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from qlab.paper.journal import MemoryJournal
from qlab.paper.risk import RiskLimits
from qlab.ui.params import merge_params, sample_window

DEFAULTS: dict[str, Any] = {
    "strategy": "sma_cross",  # template name or spec path
    "symbol": "BTC/USDT",
    "timeframe": "1h",
    "start": "2024-02-01",  # the fixed stretch of bundled data replayed headless
    "end": "2024-03-15",
    "cash": 10_000.0,
    "fill_model": "realistic",  # "backtest" (the backtester's fills) or "realistic" (book, latency, queue)
    "max_drawdown": 0.25,
    "max_daily_loss": 0.10,
    "max_orders_per_minute": 10,
    "bars_per_second": 0.0,  # widget replay pace (0: as fast as the kernel allows)
    "refresh_s": 0.25,  # widget redraw interval
}
EVENT_ROWS = 15


@dataclass
class MonitorState:
    """What the monitor shows, folded from paper-trading events (and the trader's state at each close)."""

    bars: list[tuple] = field(default_factory=list)  # (ts, open, high, low, close)
    orders: list[dict[str, Any]] = field(default_factory=list)
    fills: list[dict[str, Any]] = field(default_factory=list)
    equity: list[tuple[pd.Timestamp, float]] = field(default_factory=list)
    position: list[tuple[pd.Timestamp, float]] = field(default_factory=list)
    open_orders: list[dict[str, Any]] = field(default_factory=list)
    recent: deque = field(default_factory=lambda: deque(maxlen=EVENT_ROWS))
    risk_rejections: int = 0
    order_times: list[pd.Timestamp] = field(default_factory=list)
    events: int = 0

    def on_event(self, event: Any, trader: Any) -> None:
        """Fold one event; at a bar close read positions and working orders from the trader's state."""
        p, kind = event.payload, event.kind
        self.events += 1
        ts = pd.Timestamp(event.ts) if event.ts else None
        if kind == "bar":
            self.bars.append((pd.Timestamp(p["ts"]), p["open"], p["high"], p["low"], p["close"]))
            return
        if kind == "order":
            self.orders.append({"ts": ts, "side": p["side"], "type": p["type"], "intent": p["intent"], "price": p.get("price")})
            if p.get("at"):
                self.order_times.append(pd.Timestamp(p["at"]))
        elif kind == "fill":
            self.fills.append({"ts": ts, "side": p["side"], "price": p["price"], "qty": p["qty"], "kind": p["kind"],
                               "reason": p["reason"]})
        elif kind == "risk":
            self.risk_rejections += 1
        elif kind == "mark":
            st = trader.broker.state
            self.equity.append((ts, float(p["equity"])))
            self.position.append((ts, sum(x.direction * x.open_size for x in st.positions.values())))
            self.open_orders = [{"order": c[:10], "symbol": o.symbol, "side": "buy" if o.direction > 0 else "sell", "type": o.type,
                                 "intent": o.intent, "price": "" if o.price != o.price else f"{o.price:,.2f}",
                                 "live": o.live} for c, o in st.orders.items()]
            return
        if kind != "signal" or p.get("entry") or p.get("exit"):
            brief = ", ".join(f"{k}={_short(v)}" for k, v in p.items() if k in ("side", "type", "reason", "price", "qty", "rule", "entry",
                                                                             "exit"))
            self.recent.appendleft({"time": ts, "event": kind, "detail": brief})


def _short(v: Any) -> str:
    return f"{v:,.4g}" if isinstance(v, float) else str(v)


def risk_usage(state: MonitorState, limits: RiskLimits) -> dict[str, float]:
    """Fraction of each limit in use now: drawdown from the peak, loss since the UTC day's start, orders in the last minute."""
    out: dict[str, float] = {}
    if state.equity:
        eq = pd.Series([e for _, e in state.equity], index=[t for t, _ in state.equity])
        if limits.max_drawdown:
            out["drawdown"] = max(0.0, 1 - eq.iloc[-1] / eq.max()) / limits.max_drawdown
        if limits.max_daily_loss:
            day = eq[eq.index.normalize() == eq.index[-1].normalize()]
            out["daily loss"] = max(0.0, 1 - eq.iloc[-1] / day.iloc[0]) / limits.max_daily_loss
    if limits.max_orders_per_minute and state.order_times:
        last = state.order_times[-1]
        out["orders/min"] = sum(t > last - pd.Timedelta(minutes=1) for t in state.order_times) / limits.max_orders_per_minute
    return out


def figures(state: MonitorState, limits: RiskLimits, title: str = "") -> dict[str, go.Figure]:
    """The monitor's six panels as plotly figures (also the FigureWidgets' initial content)."""
    bars = pd.DataFrame(state.bars, columns=["ts", "open", "high", "low", "close"])
    price = go.Figure(go.Candlestick(x=bars.ts, open=bars.open, high=bars.high, low=bars.low, close=bars.close, name="price"))
    fills = pd.DataFrame(state.fills, columns=["ts", "side", "price", "qty", "kind", "reason"])
    for side, name, symbol, color in ((1, "buy fills", "triangle-up", "#2ca02c"), (-1, "sell fills", "triangle-down", "#d62728")):
        part = fills[fills.side == side]
        price.add_scatter(x=part.ts, y=part.price, mode="markers", name=name, marker={"symbol": symbol, "size": 11, "color": color},
                          text=part.reason)
    orders = pd.DataFrame(state.orders, columns=["ts", "side", "type", "intent", "price"]).dropna(subset=["price"])
    price.add_scatter(x=orders.ts, y=orders.price, mode="markers", name="resting orders", marker={"symbol": "line-ew-open", "size": 14},
                      text=orders.type)
    price.update_layout(title=f"{title} price, orders and fills", xaxis_rangeslider_visible=False, height=420)

    eq = pd.Series([e for _, e in state.equity], index=[t for t, _ in state.equity], dtype=float)
    dd = eq / eq.cummax() - 1 if len(eq) else eq
    equity = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.05)
    equity.add_scatter(x=eq.index, y=eq.values, name="equity", row=1, col=1)
    equity.add_scatter(x=dd.index, y=dd.values, name="drawdown", fill="tozeroy", row=2, col=1)
    equity.update_layout(title="equity and drawdown", height=380)
    equity.update_yaxes(tickformat=".1%", row=2, col=1)

    pos = go.Figure(go.Scatter(x=[t for t, _ in state.position], y=[q for _, q in state.position], line_shape="hv", name="position"))
    pos.update_layout(title="position (base units, + long / - short)", height=260)

    cols = ["order", "symbol", "side", "type", "intent", "price", "live"]
    open_orders = go.Figure(go.Table(header={"values": cols}, cells={"values": [[o[c] for o in state.open_orders] for c in cols]}))
    open_orders.update_layout(title=f"open orders ({len(state.open_orders)})", height=220)

    usage = risk_usage(state, limits)
    risk = go.Figure(go.Bar(x=list(usage.values()), y=list(usage), orientation="h",
                            marker_color=["#d62728" if u >= 0.8 else "#1f77b4" for u in usage.values()]))
    risk.update_layout(title=f"risk-limit usage (1.0 = limit; {state.risk_rejections} rejections)", height=240,
                       xaxis={"range": [0, 1.05], "tickformat": ".0%"})

    rows = list(state.recent)
    events = go.Figure(go.Table(header={"values": ["time", "event", "detail"]},
                                cells={"values": [[str(r["time"])[:16] for r in rows], [r["event"] for r in rows],
                                                  [r["detail"] for r in rows]]}))
    events.update_layout(title=f"recent events ({state.events} in all)", height=420)
    return {"price": price, "equity": equity, "position": pos, "open_orders": open_orders, "risk": risk, "events": events}


class _ObservedJournal(MemoryJournal):
    """A memory journal that also hands each event to the monitor as it is written."""

    def __init__(self, run_id: str, state: MonitorState) -> None:
        super().__init__(run_id)
        self.state, self.trader, self.on_append = state, None, None

    def append(self, event: Any) -> int:
        seq = super().append(event)
        self.state.on_event(event, self.trader)
        if self.on_append is not None:
            self.on_append()
        return seq


@dataclass
class MonitorResult:
    """A monitored replay: parameters, the paper result, the folded state and the figures."""

    params: dict[str, Any]
    result: Any
    state: MonitorState
    figures: dict[str, go.Figure]


def _limits(p: dict[str, Any]) -> RiskLimits:
    return RiskLimits(max_drawdown=p["max_drawdown"], max_daily_loss=p["max_daily_loss"], max_orders_per_minute=p["max_orders_per_minute"])


def _trader(p: dict[str, Any], state: MonitorState, pace: float = 0.0) -> tuple[Any, _ObservedJournal]:
    from qlab.paper.feed import ReplayFeed, YieldingFeed
    from qlab.paper.trader import PaperTrader
    from qlab.strategy.templates import resolve_strategy

    candles = sample_window(p["symbol"], p["timeframe"], p["start"], p["end"])
    speed = None
    if pace > 0:
        speed = pace * (candles.index[1] - candles.index[0]).total_seconds()
    journal = _ObservedJournal(f"monitor-{p['symbol'].replace('/', '-')}", state)
    feed = ReplayFeed(candles, symbol=p["symbol"], timeframe=p["timeframe"], speed=speed)
    trader = PaperTrader(resolve_strategy(p["strategy"]), YieldingFeed(feed), journal=journal, risk=_limits(p), cash=float(p["cash"]),
                         fill_model=p["fill_model"])
    journal.trader = trader
    return trader, journal


def run(params: dict[str, Any] | None = None) -> MonitorResult:
    """Replay the configured stretch through the paper trader and return the monitor's figures (headless / papermill)."""
    p = merge_params(params, DEFAULTS, "paper-monitor")
    state = MonitorState()
    trader, _ = _trader(p, state)
    from qlab.paper.trader import run_blocking

    result = run_blocking(trader.run)
    return MonitorResult(p, result, state, figures(state, _limits(p), f"{p['strategy']} on {p['symbol']} {p['timeframe']}"))


class Monitor:
    """The live widget: FigureWidgets redrawn from an asyncio task while the paper trader runs, start/stop buttons."""

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        import ipywidgets as w

        self.params = merge_params(params, DEFAULTS, "paper-monitor")
        self.limits = _limits(self.params)
        self.state = MonitorState()
        self.task: asyncio.Task | None = None
        self.widgets = {k: go.FigureWidget(f) for k, f in figures(self.state, self.limits, self._title()).items()}
        self.start_button = w.Button(description="Start", button_style="success")
        self.stop_button = w.Button(description="Stop", button_style="danger", disabled=True)
        self.status = w.HTML("idle")
        self.start_button.on_click(lambda *_: self.start())
        self.stop_button.on_click(lambda *_: self.stop())
        self._last = 0.0
        figs = self.widgets
        self.view = w.VBox([w.HBox([self.start_button, self.stop_button, self.status]), figs["price"],
                            w.HBox([figs["equity"], figs["position"]]), w.HBox([figs["risk"], figs["open_orders"]]), figs["events"]])

    def _title(self) -> str:
        return f"{self.params['strategy']} on {self.params['symbol']} {self.params['timeframe']}"

    def start(self) -> None:
        """Start (or restart) the replay as a task on the running loop; the kernel stays free."""
        if self.task is not None and not self.task.done():
            return
        self.state = MonitorState()
        trader, journal = _trader(self.params, self.state, float(self.params["bars_per_second"]))
        journal.on_append = self._maybe_redraw
        self.task = asyncio.ensure_future(self._run(trader))
        self.start_button.disabled, self.stop_button.disabled = True, False

    async def _run(self, trader: Any) -> None:
        self.status.value = "running"
        try:
            result = await trader.run()
            self.status.value = f"finished: {len(result.trades)} trades, equity {result.final_equity:,.2f}"
        except asyncio.CancelledError:
            self.status.value = f"stopped after {len(self.state.equity)} bars"
        except Exception as exc:  # shown in the widget, not raised into the loop
            self.status.value = f"error: {exc}"
        finally:
            self.redraw()
            self.start_button.disabled, self.stop_button.disabled = False, True

    def stop(self) -> None:
        """Cancel the running replay (the trader stops between events)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def _maybe_redraw(self) -> None:
        if time.perf_counter() - self._last >= float(self.params["refresh_s"]):
            self.redraw()

    def redraw(self) -> None:
        """Copy the current figures' data into the FigureWidgets (one batch update each)."""
        self._last = time.perf_counter()
        for key, fig in figures(self.state, self.limits, self._title()).items():
            widget = self.widgets[key]
            with widget.batch_update():
                for target, source in zip(widget.data, fig.data, strict=False):
                    with contextlib.suppress(ValueError):
                        target.update(source.to_plotly_json())
                widget.layout.title = fig.layout.title


def widget(params: dict[str, Any] | None = None) -> Any:
    """The live monitor (press Start); `Monitor(params)` gives access to its state and figures."""
    return Monitor(params).view

"""The web dashboard (qlab/ui/dashboard.ipynb, served by Voila with `qlab dashboard`): live panels in one page.

Panels (see dashboard_layout.PANEL_NAMES): controls (start/stop a paper replay and a data sync), price with fills,
equity and drawdown, positions and open orders, alerts, data quality, API usage and system status. Charts are plotly
FigureWidgets updated from asyncio tasks on the kernel's loop, so the page updates as events arrive without blocking.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ipywidgets as w
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from qlab.data.store import Store
from qlab.errors import ConfigError, NotFoundError
from qlab.ui import dashboard_panels as views
from qlab.ui.dashboard_layout import PANEL_NAMES, WIDTHS, Layout, PanelSlot, load_layout, save_layout
from qlab.ui.params import merge_params, sample_window

DEFAULTS: dict[str, Any] = {
    "store": None,  # store path; None: QLAB_HOME/qlab.duckdb
    "symbol": "BTC/USDT",
    "timeframe": "1h",
    "exchange": None,  # None: the first exchange in the store with the series, else the bundled sample
    "strategy": "sma_cross",  # template name (qlab.templates()) for the paper replay
    "replay_bars": 1500,  # how many of the latest bars the replay runs over
    "replay_speed": 200.0,  # bars per second (0 = as fast as possible)
    "price_bars": 300,  # bars shown in the price panel
    "refresh_s": 2.0,  # how often quality/usage/system/alerts panels refresh
    "layout": None,  # layout file; None: QLAB_HOME/dashboard_layout.json
}


@dataclass
class LiveState:
    """What the live panels show, filled by the replay's events."""

    bars: list[tuple[pd.Timestamp, float, float, float, float]] = field(default_factory=list)
    equity: list[tuple[pd.Timestamp, float]] = field(default_factory=list)
    fills: list[dict[str, Any]] = field(default_factory=list)
    positions: list[dict[str, Any]] = field(default_factory=list)
    orders: list[dict[str, Any]] = field(default_factory=list)
    events: int = 0


class Dashboard:
    """Builds the panels, runs the refresh loop and the controls; `widget` is what the notebook displays."""

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        self.params = merge_params(params, DEFAULTS, "dashboard")
        self.layout = load_layout(self.params["layout"])
        self.state = LiveState()
        self.tasks: dict[str, asyncio.Task] = {}
        self.status = w.HTML("<b>idle</b>", layout=w.Layout(width="100%"))
        self.last_update_ms = w.HTML("")
        self._panels: dict[str, w.Widget] = {}
        self._last_draw = 0.0
        self._build()

    # -- building ------------------------------------------------------------------------------
    def _store(self) -> Store | None:
        try:
            return Store(self.params["store"], read_only=True)
        except (NotFoundError, Exception):  # a store being written by a sync: show the panels without it
            return None

    def _initial_bars(self, count: int | None = None) -> pd.DataFrame:
        p = self.params
        count = int(count or p["price_bars"])
        store = self._store()
        if store is not None:
            with store:
                listing = store.symbols()
                rows = listing[(listing.symbol == p["symbol"]) & (listing.timeframe == p["timeframe"])]
                if p["exchange"]:
                    rows = rows[rows.exchange == p["exchange"]]
                if not rows.empty:
                    return store.candles(rows.exchange.iloc[0], p["symbol"], p["timeframe"]).tail(count)
        return sample_window(p["symbol"], p["timeframe"], None, None).tail(count)

    def _build(self) -> None:
        bars = self._initial_bars()
        self.price_fig = go.FigureWidget(
            data=[go.Candlestick(x=bars.index, open=bars.open, high=bars.high, low=bars.low, close=bars.close, name="price"),
                  go.Scatter(x=[], y=[], mode="markers", name="fills", marker={"size": 9, "symbol": "diamond"})],
            layout={"margin": {"l": 40, "r": 10, "t": 30, "b": 30}, "xaxis": {"rangeslider": {"visible": False}},
                    "title": f"{self.params['symbol']} {self.params['timeframe']}", "showlegend": False, "height": 360},
        )
        eq = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.05)
        eq.add_trace(go.Scatter(x=[], y=[], name="equity"), row=1, col=1)
        eq.add_trace(go.Scatter(x=[], y=[], name="drawdown", fill="tozeroy", line={"color": "#c62828"}), row=2, col=1)
        eq.update_layout(margin={"l": 40, "r": 10, "t": 30, "b": 30}, title="equity and drawdown", showlegend=False, height=360)
        self.equity_fig = go.FigureWidget(eq)
        self.equity_label = w.HTML("<span class='qlab-equity'>equity: -</span>")
        self.positions_html = w.HTML(views.html_table([], empty="no open positions"))
        self.orders_html = w.HTML(views.html_table([], empty="no open orders"))
        self.alerts_html = w.HTML(views.html_table([], empty="no alerts"))
        self.quality_html = w.HTML("")
        self.usage_html = w.HTML("")
        self.system_html = w.HTML("")
        self.start_button = w.Button(description="Start replay", button_style="success", icon="play")
        self.stop_button = w.Button(description="Stop replay", button_style="warning", icon="stop", disabled=True)
        self.sync_button = w.Button(description="Start sync", icon="download")
        self.sync_stop_button = w.Button(description="Stop sync", icon="stop", disabled=True)
        self.start_button.on_click(lambda _: self.start_replay())
        self.stop_button.on_click(lambda _: self.stop("replay"))
        self.sync_button.on_click(lambda _: self.start_sync())
        self.sync_stop_button.on_click(lambda _: self.stop("sync"))
        self._panels = {
            "controls": self._card("Controls", w.HBox([self.start_button, self.stop_button, self.sync_button, self.sync_stop_button],
                                                       layout=w.Layout(flex_flow="row wrap")), self.status, self.last_update_ms),
            "price": self._card("Price", self.price_fig),
            "equity": self._card("Equity", self.equity_label, self.equity_fig),
            "positions": self._card("Positions and orders", self.positions_html, self.orders_html, self._services_box()),
            "alerts": self._card("Alerts", self.alerts_html, self._rules_editor()),
            "quality": self._card("Data quality", self.quality_html),
            "usage": self._card("API usage", self.usage_html),
            "system": self._card("System", self.system_html),
        }
        self.page = w.Box(layout=w.Layout(display="flex", flex_flow="row wrap", width="100%"))
        self.page.add_class("qlab-dash")
        self.editor = self._layout_editor()
        self.widget = w.VBox([w.HTML(views.CSS), self.page, self.editor])
        self.apply_layout(self.layout)
        self.refresh_static()

    def _services_box(self) -> w.VBox:
        """Background paper traders (`qlab paper run --background`): their status rows and a stop control."""
        self.services_html = w.HTML()
        self.service_pick = w.Dropdown(options=[], layout=w.Layout(width="200px"))
        stop = w.Button(description="Stop service", icon="stop")

        async def stop_one(name: str) -> None:
            from qlab.paper.service import stop_service

            try:
                await asyncio.to_thread(stop_service, name)
                self._set_status(f"paper service {name} stopped")
            except Exception as exc:  # shown on the page
                self._set_status(f"could not stop {name}: {exc}")
            self.refresh_static()

        stop.on_click(lambda _: self.service_pick.value and asyncio.ensure_future(stop_one(self.service_pick.value)))
        return w.VBox([w.HTML("<b>paper services</b>"), self.services_html, w.HBox([self.service_pick, stop])])

    def _refresh_services(self) -> None:
        from qlab.paper.service import status_rows

        rows = status_rows()
        self.services_html.value = views.html_table(
            [{"name": r.get("name"), "state": r.get("state"), "bars": r.get("bars"), "equity": r.get("equity"),
              "updated": r.get("updated")} for r in rows], empty="no background paper traders")
        running = [r.get("name") for r in rows if r.get("running")]
        if list(self.service_pick.options) != running:
            self.service_pick.options = running

    def _rules_editor(self) -> w.Accordion:
        """Alert rules of the alerts file: the list, and add / remove (validated before the file is written)."""
        from qlab.ui import alert_rules

        self.rules_html = w.HTML()
        self.rule_type = w.Dropdown(options=list(alert_rules.RULE_TYPE_NAMES), value="price_cross", layout=w.Layout(width="150px"))
        self.rule_name = w.Text(placeholder="name", layout=w.Layout(width="140px"))
        self.rule_settings = w.Text(placeholder="symbol: BTC/USDT, level: 100000, channels: [dashboard]",
                                    layout=w.Layout(width="100%"))
        add, remove = w.Button(description="Add rule", icon="plus"), w.Button(description="Remove rule", icon="trash")
        self.rule_message = w.HTML()

        def show_rules() -> None:
            try:
                rows = [{"name": r.get("name"), "type": r.get("type"),
                         "settings": ", ".join(f"{k}: {v}" for k, v in r.items() if k not in ("name", "type"))}
                        for r in alert_rules.list_rules()]
                self.rules_html.value = views.html_table(rows, empty="no rules in the alerts file yet")
            except Exception as exc:  # a broken file is shown, the dashboard keeps running
                self.rules_html.value = f"<small class='qlab-bad'>{exc}</small>"

        def on_add(_: Any) -> None:
            try:
                spec = {"type": self.rule_type.value, "name": self.rule_name.value.strip(),
                        **alert_rules.parse_settings(self.rule_settings.value)}
                alert_rules.add_rule(spec)
                self.rule_message.value = f"<small class='qlab-ok'>added {spec['name']}</small>"
            except Exception as exc:
                self.rule_message.value = f"<small class='qlab-bad'>{exc}</small>"
            show_rules()

        def on_remove(_: Any) -> None:
            try:
                alert_rules.remove_rule(self.rule_name.value.strip())
                self.rule_message.value = f"<small class='qlab-ok'>removed {self.rule_name.value.strip()}</small>"
            except Exception as exc:
                self.rule_message.value = f"<small class='qlab-bad'>{exc}</small>"
            show_rules()

        add.on_click(on_add)
        remove.on_click(on_remove)
        show_rules()
        box = w.VBox([self.rules_html, w.HBox([self.rule_type, self.rule_name], layout=w.Layout(flex_flow="row wrap")),
                      self.rule_settings, w.HBox([add, remove]), self.rule_message])
        acc = w.Accordion(children=[box])
        acc.set_title(0, "Alert rules")
        acc.selected_index = None
        return acc

    @staticmethod
    def _card(title: str, *children: w.Widget) -> w.VBox:
        box = w.VBox([w.HTML(f"<h4>{title}</h4>"), *children])
        box.add_class("qlab-panel")
        box.add_class(f"qlab-panel-{title.split()[0].lower()}")
        return box

    def apply_layout(self, layout: Layout) -> None:
        """Show the layout's panels in its order and sizes."""
        self.layout = layout
        for slot in layout.slots:
            panel = self._panels[slot.panel]
            panel.layout.flex = f"1 1 {WIDTHS[slot.width]}"
            panel.layout.max_width = "100%"
            if slot.height:
                for child in panel.children:
                    if isinstance(child, go.FigureWidget):
                        child.layout.height = slot.height
        self.page.children = [self._panels[name] for name in layout.panels]

    def _layout_editor(self) -> w.Accordion:
        rows, self._editor_rows = [], []
        for name in PANEL_NAMES:
            slot = next((s for s in self.layout.slots if s.panel == name), None)
            show = w.Checkbox(value=slot is not None, description=name, indent=False, layout=w.Layout(width="110px"))
            width = w.Dropdown(options=list(WIDTHS), value=slot.width if slot else "half", layout=w.Layout(width="90px"))
            height = w.BoundedIntText(value=slot.height if slot else 0, min=0, max=2000, layout=w.Layout(width="80px"))
            order = w.BoundedIntText(value=(self.layout.panels.index(name) + 1) if slot else len(PANEL_NAMES),
                                     min=1, max=len(PANEL_NAMES), layout=w.Layout(width="60px"))
            self._editor_rows.append((name, show, width, height, order))
            rows.append(w.HBox([show, w.Label("width"), width, w.Label("height px"), height, w.Label("order"), order]))
        save = w.Button(description="Apply and save layout", icon="save")
        save.on_click(lambda _: self.save_layout_from_editor())
        acc = w.Accordion(children=[w.VBox([*rows, save])])
        acc.set_title(0, "Customise layout")
        acc.selected_index = None
        return acc

    def save_layout_from_editor(self) -> Layout:
        """Build a layout from the editor's rows, apply it and save it for next time."""
        chosen = sorted((order.value, i, PanelSlot(name, width.value, int(height.value)))
                        for i, (name, show, width, height, order) in enumerate(self._editor_rows) if show.value)
        layout = Layout(tuple(slot for _, _, slot in chosen))
        self.apply_layout(layout)
        save_layout(layout, self.params["layout"])
        self._set_status(f"layout saved: {', '.join(layout.panels)}")
        return layout

    # -- refreshing ----------------------------------------------------------------------------
    def _set_status(self, text: str) -> None:
        import html

        self.status.value = f"<b>{html.escape(text)}</b>"

    def _components(self) -> list[tuple[str, str]]:
        return [(name, "running" if not task.done() else "finished") for name, task in self.tasks.items()]

    def refresh_static(self) -> None:
        """Refresh the slow panels: data quality, API usage, alerts and system status."""
        store = self._store()
        if store is None:
            self.quality_html.value = views.html_table([], empty="no store yet: run `qlab data load-sample`")
            self.usage_html.value = views.html_table([], empty="no API calls recorded")
        else:
            with store:
                if not getattr(self, "_quality_cache", None):
                    self._quality_cache = views.html_table(views.quality_rows(store), empty="the store holds no candles")
                self.quality_html.value = self._quality_cache
                self.usage_html.value = views.html_table(views.usage_rows(store), empty="no API calls recorded")
                self.alerts_html.value = views.html_table(views.recent_alerts(store), empty="no alerts")
        self.system_html.value = views.html_table(views.system_rows(self._components()))
        with contextlib.suppress(Exception):  # unreadable status files must not break the other panels
            self._refresh_services()

    async def refresh_loop(self) -> None:
        """Refresh the slow panels every `refresh_s` seconds until cancelled."""
        while True:
            await asyncio.sleep(float(self.params["refresh_s"]))
            with contextlib.suppress(Exception):  # a panel that fails once must not stop the page; it shows next time
                self.refresh_static()

    def start(self) -> Dashboard:
        """Start the periodic refresh (called by the notebook once the page is displayed)."""
        if "refresh" not in self.tasks or self.tasks["refresh"].done():
            self.tasks["refresh"] = asyncio.ensure_future(self.refresh_loop())
        return self

    # -- live updates --------------------------------------------------------------------------
    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        """Apply one paper-trading event (bar, fill, equity, positions, orders) to the live panels."""
        t0 = time.perf_counter()
        self.state.events += 1
        if kind == "bar":
            self.state.bars.append((data["ts"], data["open"], data["high"], data["low"], data["close"]))
        elif kind == "fill":
            self.state.fills.append(data)
        elif kind == "equity":
            self.state.equity.append((data["ts"], data["equity"]))
        elif kind == "positions":
            self.state.positions = data["rows"]
        elif kind == "orders":
            self.state.orders = data["rows"]
        self._redraw(kind)
        self.last_update_ms.value = f"<small>last update {1000 * (time.perf_counter() - t0):.1f} ms, {self.state.events} events</small>"

    def _redraw(self, kind: str) -> None:
        s = self.state
        if kind == "bar" and s.bars:
            last = s.bars[-int(self.params["price_bars"]):]
            with self.price_fig.batch_update():
                c = self.price_fig.data[0]
                c.x, c.open, c.high, c.low, c.close = (list(col) for col in zip(*last, strict=True))
        elif kind == "fill":
            with self.price_fig.batch_update():
                self.price_fig.data[1].x = [f["ts"] for f in s.fills]
                self.price_fig.data[1].y = [f["price"] for f in s.fills]
        elif kind == "equity" and s.equity:
            times, values = zip(*s.equity, strict=True)
            peak = pd.Series(values).cummax().to_numpy()
            with self.equity_fig.batch_update():
                self.equity_fig.data[0].x, self.equity_fig.data[0].y = list(times), list(values)
                self.equity_fig.data[1].x, self.equity_fig.data[1].y = list(times), list(values / peak - 1.0)
            self.equity_label.value = f"<span class='qlab-equity'>equity: {values[-1]:,.2f}</span>"
        elif kind == "positions":
            self.positions_html.value = views.html_table(s.positions, empty="no open positions")
        elif kind == "orders":
            self.orders_html.value = views.html_table(s.orders, empty="no open orders")

    # -- controls ------------------------------------------------------------------------------
    def _run_task(self, name: str, coro_fn: Callable[[], Any], start: w.Button, stop: w.Button) -> None:
        if name in self.tasks and not self.tasks[name].done():
            self._set_status(f"{name} is already running")
            return

        async def wrapped() -> None:
            start.disabled, stop.disabled = True, False
            try:
                summary = await coro_fn()
                self._set_status(f"{name} finished" + (f": {summary}" if summary else ""))
            except asyncio.CancelledError:
                self._set_status(f"{name} stopped")
                raise
            except Exception as exc:  # shown on the page: the dashboard keeps running
                self._set_status(f"{name} failed: {exc}")
            finally:
                start.disabled, stop.disabled = False, True

        self.tasks[name] = asyncio.ensure_future(wrapped())

    def start_replay(self) -> None:
        """Start a paper-trading replay of the configured strategy over the latest bars."""
        self.state = LiveState()
        self._set_status("replay running")
        self._run_task("replay", self._replay, self.start_button, self.stop_button)

    def start_sync(self) -> None:
        """Start a candle sync of the configured symbol from its exchange (needs network access to it)."""
        self._set_status("sync running")
        self._run_task("sync", self._sync, self.sync_button, self.sync_stop_button)

    def stop(self, name: str) -> None:
        """Stop a running replay or sync."""
        task = self.tasks.get(name)
        if task is None or task.done():
            raise ConfigError(f"no {name} is running; start one first")
        task.cancel()

    async def _replay(self) -> str:
        from qlab.paper import MemoryJournal, PaperTrader, ReplayFeed
        from qlab.paper.feed import YieldingFeed

        p = self.params
        candles = self._initial_bars(int(p["replay_bars"]))
        bars_per_s = float(p["replay_speed"])
        speed = bars_per_s * (candles.index[1] - candles.index[0]).total_seconds() if bars_per_s > 0 else None
        dash = self

        class ObservedJournal(MemoryJournal):
            """The replay's journal, also handing every event to the dashboard as it is written."""

            def append(self, event: Any) -> int:
                seq = super().append(event)
                dash._paper_event(event, trader)
                return seq

        feed = YieldingFeed(ReplayFeed(candles, symbol=p["symbol"], timeframe=p["timeframe"], speed=speed))
        trader = PaperTrader(p["strategy"], feed, journal=ObservedJournal(f"dashboard-{p['symbol']}"))
        result = await trader.run()
        self._flush()
        return f"{len(result.trades)} trades, final equity {result.final_equity:,.2f}"

    def _paper_event(self, event: Any, trader: Any) -> None:
        """Fold one paper-trading event into the live state; redraw at most every 100 ms (and at the end)."""
        payload, kind = event.payload, event.kind
        s = self.state
        s.events += 1
        if kind == "bar":
            s.bars.append((pd.Timestamp(payload["ts"]), payload["open"], payload["high"], payload["low"], payload["close"]))
        elif kind == "fill":
            s.fills.append({"ts": pd.Timestamp(event.ts), "price": payload["price"], "side": payload["side"]})
        elif kind == "mark":
            s.equity.append((pd.Timestamp(event.ts), float(payload["equity"])))
            state = trader.broker.state
            s.positions = [{"symbol": sym, "side": "long" if pos.direction > 0 else "short", "size": float(pos.open_size),
                            "entry": float(pos.entry_price)} for sym, pos in state.positions.items() if pos is not None and pos.open_size]
            s.orders = [{"order": cid[:12], "symbol": o.symbol, "side": "buy" if o.direction > 0 else "sell", "type": o.type,
                         "intent": o.intent} for cid, o in state.orders.items()]
        if time.perf_counter() - self._last_draw > 0.1:
            self._flush()

    def _flush(self) -> None:
        t0 = time.perf_counter()
        for kind in ("bar", "fill", "equity", "positions", "orders"):
            self._redraw(kind)
        self._last_draw = time.perf_counter()
        self.last_update_ms.value = (f"<small>redraw {1000 * (self._last_draw - t0):.1f} ms, "
                                     f"{self.state.events} events</small>")

    async def _sync(self) -> str:
        from qlab.data.sync import sync_candles
        from qlab.exchange.ccxt_client import make_client

        exchange = self.params["exchange"] or "bybit"
        client = make_client(exchange, {}, "live")
        try:
            with Store(self.params["store"]) as store:
                since = pd.Timestamp.now("UTC") - pd.Timedelta(days=7)
                written = await sync_candles(client, store, exchange, [self.params["symbol"]], self.params["timeframe"], since)
            return f"wrote {sum(written.values()) if isinstance(written, dict) else written} bars"
        finally:
            await client.close()


def run(params: dict[str, Any] | None = None) -> Dashboard:
    """Build the dashboard (what qlab/ui/dashboard.ipynb displays and Voila serves); `qlab dashboard` options win."""
    from qlab.ui.dashboard_server import params_from_env

    return Dashboard({**(params or {}), **params_from_env()})

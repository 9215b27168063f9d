"""PaperTrader: feed -> the strategy evaluated at each close -> risk manager -> broker, with every event
journaled before it takes effect, and `paper_trade(...)`, the synchronous one-call replay.

Per bar (all symbols of one bar time): the broker runs the bar's open and path (fills of orders decided at
the last close); at the close the strategy's signals are read against the state then (the engine's
decision rules, `qlab.engine.orders`), the risk manager sizes or refuses each entry, orders go to the
broker, the broker marks the account, and the risk manager may fire the kill switch.

Recovery: with a StoreJournal, a restart with the same run id folds the journal up to the last completed
bar (its "mark") into the broker, the risk manager and the strategy's history, re-opens the feed after that
bar, and reprocesses an unfinished bar: the events it regenerates are checked against the journaled tail
(same kind and payload) instead of being written again, so nothing is duplicated or lost.

A tail that differs: with a deterministic broker (SimBroker) that is a bug or a changed input, and the restart
stops with JournalMismatchError. A broker whose `deterministic` attribute is False (ExchangeBroker) talks to an
exchange that kept trading while the process was down (a resting order filled, a different fill size), so at the
first regenerated event that differs the trader appends one "supersede" event naming the sequence numbers of the
rest of the tail (those events never took effect: the fold stopped at the last mark and they were not regenerated),
then journals the new events normally. Superseded entries are skipped by every later `recover()`, so a further
restart folds exactly what this session applied. Orders of the voided tail that the reprocessed bar did not decide
again may still be working at the exchange: after the bar's decisions their "order" (and "placed") events are
journaled again and the broker cancels them (reason "superseded"), booking whatever they filled meanwhile.
The journal stays append-only: nothing is deleted or rewritten.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from qlab.data.candles import bars_per_year, timeframe_delta
from qlab.errors import ConfigError, StoreError
from qlab.events import report_event
from qlab.exchange.types import Bar, OrderBook
from qlab.execution import OrderSpec, SizeSpec
from qlab.paper.broker import Broker, OrderRequest, client_order_id
from qlab.paper.events import Event
from qlab.paper.feed import Feed, ReplayFeed
from qlab.paper.journal import Journal, MemoryJournal, StoreJournal, journal_entries, live_entries, superseded_seqs
from qlab.paper.risk import RiskLimits, RiskManager
from qlab.paper.signals import StrategySignals, as_strategy
from qlab.paper.sim_broker import SimBroker
from qlab.paper.sizing import entry_quantity
from qlab.strategy.spec import Strategy

log = logging.getLogger(__name__)


class JournalMismatchError(StoreError):
    """A restarted run with a deterministic broker regenerated an event that differs from the journaled one."""


@dataclass
class PaperResult:
    """A finished (or stopped) paper run: trades, fills, equity, events and the final account state."""

    trades: pd.DataFrame
    fills: pd.DataFrame
    equity: pd.Series
    cash: pd.Series
    events: list[Event] = field(repr=False)
    state: Any = field(repr=False)
    run_id: str = "memory"

    @property
    def final_equity(self) -> float:
        """Equity at the last close."""
        return float(self.equity.iloc[-1]) if len(self.equity) else math.nan

    def rejections(self) -> pd.DataFrame:
        """Every risk rejection: time, symbol, rule, reason."""
        rows = [{"time": e.ts, **e.payload} for e in self.events if e.kind == "risk"]
        return pd.DataFrame(rows, columns=["time", "symbol", "bar", "rule", "reason"]) if not rows else pd.DataFrame(rows)


class PaperTrader:
    """Runs a strategy on a feed through a risk manager and a broker; `await trader.run()`."""

    def __init__(self, strategy: Strategy | str | Callable, feed: Feed, broker: Broker | None = None, *, risk: RiskLimits | None = None,
                 store: Any = None, run_id: str | None = None, journal: Journal | None = None, lookback: int | None = None,
                 data: dict[str, pd.Series] | None = None, clock: Callable[[], pd.Timestamp] | None = None,
                 orders: OrderSpec | None = None, size: SizeSpec | None = None, costs: Any = "from the strategy",
                 cash: float = 10_000.0, fill_model: str = "backtest", seed: int = 0, warmup: int | None = None,
                 stop_after: int | None = None) -> None:
        strategy = as_strategy(strategy)
        is_spec = isinstance(strategy, Strategy)
        self.orders = orders or (strategy.order_spec() if is_spec else OrderSpec())
        self.size = size or (strategy.size_spec() if is_spec else SizeSpec())
        if costs == "from the strategy":
            costs = strategy.cost_model() if is_spec else "default"
        self.feed = feed
        self.timeframe = feed.timeframe
        self.broker: Any = broker or SimBroker(orders=self.orders, size=self.size, costs=costs, cash=cash, timeframe=feed.timeframe,
                                               fill_model=fill_model, seed=seed)
        self.signals = StrategySignals(strategy, lookback=lookback, data=data, warmup=warmup)
        self.risk = RiskManager(risk)
        if journal is None:
            journal = StoreJournal(store, run_id) if store is not None else MemoryJournal(run_id or "memory")
        elif store is not None:
            raise ConfigError("give either store=... (with run_id) or journal=..., not both")
        if store is not None and not run_id:
            raise ConfigError("a run journaled in the store needs run_id=... (the name a restart resumes)")
        self.journal, self.run_id = journal, journal.run_id
        self.clock = clock
        self.bpy = bars_per_year(self.timeframe)
        self.stop_after = stop_after  # tests/CLI: stop after this many bars of this session
        self.events: list[Event] = []
        self.superseded: list[int] = []  # journal seqs this session declared void (see the module docstring)
        self._tail: list[tuple[int, Event]] = []
        self._void_orders: dict[str, tuple[Event, Event | None]] = {}  # cid -> voided (order, placed) not decided again yet
        self._pending: dict[str, Bar] = {}

    # -- events --------------------------------------------------------------------------------------
    def _emit(self, ev: Event) -> None:
        """Write-ahead: journal the event (or match it against the journaled tail of an unfinished bar), then apply it."""
        matched = False
        if self._tail:
            seq, expected = self._tail[0]
            if expected.kind == ev.kind and expected.payload == ev.payload:
                self._tail.pop(0)
                ev, matched = expected, True
            elif getattr(self.broker, "deterministic", True):
                raise JournalMismatchError(f"run {self.run_id!r}: regenerated {ev.kind} {ev.payload} differs from the journaled "
                                           f"{expected.kind} {expected.payload} (seq {seq}); the replay is not deterministic")
            else:
                self._supersede(ev)
        if not matched:
            self.journal.append(ev)
        self.events.append(ev)
        self.broker.apply(ev)
        self.risk.apply(ev)

    def _supersede(self, ev: Event) -> None:
        """The exchange moved while the run was down: void the rest of the journaled tail (one "supersede" event)."""
        void, self._tail = self._tail, []
        seqs = [seq for seq, _ in void]
        first = void[0][1]
        reason = (f"after the restart the exchange reported {ev.kind} {ev.payload} where the journal had {first.kind} "
                  f"{first.payload}")[:500]
        marker = Event("supersede", {"seqs": seqs, "reason": reason, "broker": type(self.broker).__name__}, ev.ts)
        self.journal.append(marker)
        self.events.append(marker)
        self.superseded += seqs
        self._remember_void_orders([e for _, e in void])
        log.warning("run %s: %d journaled events of the unfinished bar superseded (seqs %s): %s", self.run_id, len(seqs), seqs, reason)

    def _remember_void_orders(self, void: list[Event]) -> None:
        placed = {e.payload["cid"]: e for e in void if e.kind == "placed"}
        for e in void:
            if e.kind == "order":
                self._void_orders[e.payload["cid"]] = (e, placed.get(e.payload["cid"]))

    async def _cancel_void_orders(self) -> None:
        """Voided orders the reprocessed bar did not decide again: journal them again (they reached, or may have reached,
        the exchange) and cancel them, so nothing keeps working at the exchange that the trader does not know."""
        for cid, (order, placed) in list(self._void_orders.items()):
            del self._void_orders[cid]
            if cid in self.broker.state.seen_cids:
                continue  # decided again (same client id): the broker adopted it
            self._emit(order)
            if placed is not None:
                self._emit(placed)
            sym = order.payload["symbol"]
            await self.broker.cancel(cid, "superseded", len(self.broker.market(sym)) - 1)

    def recover(self) -> pd.Timestamp | None:
        """Fold the journal (up to the last completed bar, superseded entries skipped) into broker and risk; returns the
        last completed bar's time. The entries after it (an unfinished bar) become the tail the restart is checked against."""
        entries = journal_entries(self.journal)
        live = live_entries(entries)
        last_mark = max((k for k, (_, e) in enumerate(live) if e.kind == "mark"), default=-1)
        done, tail = [e for _, e in live[: last_mark + 1]], live[last_mark + 1:]
        self._tail = [(seq, e) for seq, e in tail if e.kind != "supersede"]
        for ev in done:
            if ev.kind != "supersede":
                self.broker.apply(ev)
                self.risk.apply(ev)
        self.events = list(done)
        void = superseded_seqs(entries)
        self._remember_void_orders([e for seq, e in entries if seq in void])
        bars = [e for e in done if e.kind == "bar"]
        return pd.Timestamp(bars[-1].payload["ts"]) if bars else None

    # -- the loop ------------------------------------------------------------------------------------
    async def run(self) -> PaperResult:
        """Recover from the journal, then trade the feed to its end; returns the result so far."""
        self.broker.emit = self._emit
        after = self.recover()
        processed = 0
        report_event("trader", trader=self.run_id, status="running")
        try:
            async for item in self.feed.open(after):
                if isinstance(item, OrderBook):
                    await self.broker.on_book(item)
                    continue
                await self.broker.on_bar(item)
                self._pending[item.symbol] = item
                if len(self._pending) == len(self.feed.symbols):
                    await self._close(list(self._pending.values()))
                    self._pending.clear()
                    processed += 1
                    if self.stop_after is not None and processed >= self.stop_after:
                        break
        except BaseException as exc:
            status = "stopped" if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt) else "error"
            report_event("trader", trader=self.run_id, status=status, error=f"{type(exc).__name__}: {exc}"[:300])
            raise
        report_event("trader", trader=self.run_id, status="stopped")
        return self.result()

    def _report(self, bars: list[Bar]) -> None:
        """Alert events of a close: prices and feed heartbeats, equity, and each open position (see qlab.events)."""
        state = self.broker.state
        for bar in bars:
            report_event("price", symbol=bar.symbol, price=bar.close, ts=str(bar.ts))
            report_event("feed", feed=f"{self.run_id} {bar.symbol}")
        report_event("equity", trader=self.run_id, equity=state.equity)
        closes = {bar.symbol: bar.close for bar in bars}
        for symbol, pos in state.positions.items():
            if pos is not None and pos.open_size:
                report_event("position", trader=self.run_id, symbol=symbol, qty=pos.direction * pos.open_size,
                             notional=pos.open_size * closes.get(symbol, pos.entry_price))

    async def _close(self, bars: list[Bar]) -> None:
        ts = pd.Timestamp(bars[0].ts)
        close_time = ts + timeframe_delta(self.timeframe)
        now = self.clock() if self.clock is not None else close_time
        for bar in bars:
            await self._decide(bar.symbol, now, close_time)
        if self._void_orders:
            await self._cancel_void_orders()
        await self.broker.close_bar()
        self._report(bars)
        reason = self.risk.on_mark(self.broker.state.equity)
        if reason:
            await self._kill(reason, now)

    async def _decide(self, sym: str, now: pd.Timestamp, close_time: pd.Timestamp) -> None:
        """The engine's decision rules at the close of bar t, then orders (through the risk manager)."""
        m = self.broker.market(sym)
        t = len(m) - 1
        sig = self.signals.at_close(m)
        if not any(sig.values()):
            return
        el, xl, es, xs = sig["entry_long"], sig["exit_long"], sig["entry_short"], sig["exit_short"]
        if el and xl:
            el = xl = False
        if es and xs:
            es = xs = False
        st = self.broker.state
        pos = st.positions.get(sym)
        d = pos.direction if pos is not None else 0
        pend = next((w for w in st.orders.values() if w.symbol == sym and w.intent == "entry"), None)
        q = pend.direction if pend is not None else 0
        exit_now = (d > 0 and (xl or es)) or (d < 0 and (xs or el))
        cancel = (q > 0 and (xl or es)) or (q < 0 and (xs or el))
        entry = 0
        o = self.orders
        needs_atr = o.stop_loss_atr is not None or o.trailing_atr is not None
        atr_sig = m.atr(t) if needs_atr or (self.size.mode == "risk" and o.stop_loss_atr is not None) else math.nan
        if (el != es) and (d == 0 or exit_now) and (q == 0 or cancel):
            entry = 1 if el else -1
            if needs_atr and math.isnan(atr_sig):
                entry = 0
        ts = m.time(t).isoformat()
        self._emit(Event("signal", {"symbol": sym, "bar": t, "entry_long": el, "exit_long": xl, "entry_short": es, "exit_short": xs,
                                    "exit": exit_now, "cancel": cancel, "entry": entry}, ts))
        at = now.isoformat()
        if exit_now:
            await self.broker.submit(OrderRequest(client_order_id(self.run_id, sym, t, "exit"), sym, -d, "market", "exit", t, at=at))
        if cancel:
            await self.broker.cancel(pend.cid, "signal", t)
        if entry == 0:
            return
        verdict = self.risk.check_entry(sym, m.value("close", t), st, now=now, data_time=close_time,
                                        vol=self._vol(m) if self.risk.limits.vol_target is not None else math.nan,
                                        bars_per_year=self.bpy, committed=self._committed(sym))
        if not verdict.ok:
            self._emit(Event("risk", {"symbol": sym, "bar": t, "rule": verdict.rule, "reason": verdict.reason}, ts))
            return
        ref = m.value("close", t)
        price = limit = math.nan
        if o.entry == "limit":
            price = ref * (1.0 - entry * o.entry_offset)
        elif o.entry in ("stop", "stop_limit"):
            price = ref * (1.0 + entry * o.entry_offset)
            limit = price * (1.0 + entry * o.limit_offset)
        await self.broker.submit(OrderRequest(client_order_id(self.run_id, sym, t, "entry"), sym, entry, o.entry, "entry", t, price=price,
                                              limit=limit, notional_cap=verdict.notional_cap, qty_cap=verdict.qty_cap, atr=atr_sig, at=at))

    def _vol(self, m: Any) -> float:
        """Std of the risk manager's `vol_window` log returns up to the latest close (NaN before there are enough)."""
        w = self.risk.limits.vol_window
        n = len(m)
        if n < w + 1:
            return math.nan
        closes = [m.value("close", k) for k in range(n - w - 1, n)]
        return float(pd.Series(closes).pipe(lambda s: (s / s.shift(1)).apply(math.log)).std(ddof=1))

    def _committed(self, sym: str) -> float:
        """Estimated notional of other symbols' entry orders not filled yet (sized at their last close)."""
        st, total = self.broker.state, 0.0
        for w in st.orders.values():
            if w.intent == "entry" and w.symbol != sym:
                m = self.broker.market(w.symbol)
                p = m.value("close", len(m) - 1)
                est = entry_quantity(self.size, p, st.equity, sl_frac=self.orders.stop_loss or math.nan, atr_signal=w.atr_signal,
                                     sl_atr=self.orders.stop_loss_atr or math.nan, vol=m.vol(len(m) - 1), bars_per_year=self.bpy)
                total += min(w.notional_cap, est * p if not math.isnan(est) else w.notional_cap)
        return total if math.isfinite(total) else 0.0

    async def _kill(self, reason: str, now: pd.Timestamp) -> None:
        """The kill switch: record it, cancel every working order, flatten every position (market, next open)."""
        st = self.broker.state
        bar = st.bar
        self._emit(Event("kill", {"bar": bar, "reason": reason, "rule": self.risk.last_rule}, st.ts))
        for cid in list(st.orders):
            await self.broker.cancel(cid, "kill_switch", bar)
        for sym, pos in list(st.positions.items()):
            await self.broker.submit(OrderRequest(client_order_id(self.run_id, sym, bar, "kill"), sym, -pos.direction, "market", "exit",
                                                  bar, reason="kill_switch", at=now.isoformat()))

    # -- results -------------------------------------------------------------------------------------
    def result(self) -> PaperResult:
        """Trades (closed, then still open), fills, equity and cash per close, and the events of the run."""
        st = self.broker.state
        closes = {s: m.value("close", len(m) - 1) for s, m in self.broker.markets.items() if len(m)}
        rows = st.trades + st.open_trades(closes, st.bar, st.ts)
        trades = pd.DataFrame(rows)
        if len(trades):
            for col in ("entry_time", "exit_time"):
                trades[col] = pd.to_datetime(trades[col], utc=True)
            trades = trades.sort_values(["entry_bar", "exit_bar"], kind="stable").reset_index(drop=True)
        fills = pd.DataFrame(st.fills)
        if len(fills):
            fills["time"] = pd.to_datetime(fills["time"], utc=True)
        index = pd.DatetimeIndex(pd.to_datetime([m[0] for m in st.marks], utc=True), name="timestamp")
        equity = pd.Series([m[1] for m in st.marks], index=index, name="equity", dtype=float)
        cash = pd.Series([m[2] for m in st.marks], index=index, name="cash", dtype=float)
        return PaperResult(trades, fills, equity, cash, list(self.events), st, self.run_id)


def run_blocking(make: Callable[[], Any]) -> Any:
    """`asyncio.run(make())` and wait; in a thread when this thread already runs an event loop (Jupyter, papermill)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = asyncio.run(make())
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def paper_trade(strategy: Strategy | str | Callable, data: pd.DataFrame | dict[str, pd.DataFrame], *, symbol: str = "asset",
                speed: float | None = None, **kwargs: Any) -> PaperResult:
    """Replay candles through the paper trader and wait for the end (from a notebook too: it runs in a thread
    when an event loop is already running). Keyword arguments go to PaperTrader (fill_model, risk, store, run_id...)."""
    feed = ReplayFeed(data, symbol=symbol, speed=speed)
    trader = PaperTrader(strategy, feed, **kwargs)
    return run_blocking(trader.run)

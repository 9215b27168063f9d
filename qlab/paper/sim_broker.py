"""SimBroker: simulated execution of every order type of the engine on the bars a feed delivers.

Fill model "backtest" is qlab.engine.orders to the letter, in the kernel's operation order (a replay gives
the backtester's trades to ~1e-12): orders decided at a close act at the next open; stops, limits, take
profits, trailing stops and liquidation fire where the OHLC path meets them; costs from the CostModel.

Fill model "realistic" keeps the same order logic and path, and changes how orders meet the market:
  * latency: an order sent at a close reaches the market `LatencyModel` seconds into the next bar, at the
    price the path has then (server-side stops and take-profits need no round trip);
  * taker orders walk an order book: the feed's latest L2 snapshot, else a synthetic book around the path
    price (spread from the CostModel, depth from `DepthModel`); what the book cannot fill waits for the
    next point of the path (partial fills); fees and square-root impact come from the CostModel;
  * resting limits (limit entries, take-profits) join the queue behind the book's size at their price and
    fill only with the volume that trades through their price after the queue ahead is gone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from qlab.data.candles import bars_per_year, timeframe_delta
from qlab.errors import ConfigError, did_you_mean
from qlab.exchange.types import Bar, OrderBook
from qlab.execution import OrderSpec, SizeSpec
from qlab.paper.book import DepthModel, synthetic_book, walk_book
from qlab.paper.broker import FILL_MODELS, OrderRequest
from qlab.paper.events import Event
from qlab.paper.latency import LatencyModel
from qlab.paper.market import MarketHistory
from qlab.paper.sizing import entry_quantity
from qlab.paper.state import AccountState, Position, WorkingOrder

NAN = math.nan
PRIORITY = ("liquidation", "stop_loss", "trailing_stop", "take_profit")


class SimBroker:
    """A simulated broker over the feed's bars: one position per symbol, all engine order types, two fill models."""

    def __init__(self, *, orders: OrderSpec | None = None, size: SizeSpec | None = None, costs: Any = "default",
                 cash: float = 10_000.0, timeframe: str = "1h", fill_model: str = "backtest",
                 latency: LatencyModel | None = None, depth: DepthModel | None = None, seed: int = 0) -> None:
        from qlab.costs import resolve_costs

        if fill_model not in FILL_MODELS:
            raise ConfigError(f"fill_model={fill_model!r}; use {' or '.join(FILL_MODELS)}." + did_you_mean(fill_model, FILL_MODELS))
        if not (isinstance(cash, (int, float)) and cash > 0):
            raise ConfigError(f"cash={cash!r} must be a positive amount of quote currency, e.g. 10_000")
        self.o = orders or OrderSpec()
        self.s = size or SizeSpec()
        self.costs = costs if isinstance(costs, dict) else resolve_costs(costs)
        self.timeframe, self.fill_model, self.seed = timeframe, fill_model, seed
        self.realistic = fill_model == "realistic"
        self.latency = latency or (LatencyModel() if self.realistic else LatencyModel(fixed_ms=0.0, jitter_ms=0.0))
        self.depth = depth or DepthModel()
        self.bpy = bars_per_year(timeframe)
        self.bar_seconds = timeframe_delta(timeframe).total_seconds()
        self.state = AccountState(cash=float(cash), leverage=float(self.s.leverage))
        self.markets: dict[str, MarketHistory] = {}
        self.books: dict[str, OrderBook] = {}
        self.emit: Callable[[Event], None] = self.apply  # the trader replaces it with journal-then-apply
        self._local: dict[str, tuple[bool, float]] = {}  # per symbol, this bar: (held since the open, peak of the rest)
        self._ts: dict[str, str] = {}

    # -- the fold ------------------------------------------------------------------------------------
    def apply(self, ev: Event) -> None:
        """Fold one event into the broker: bars into the market history, everything else into the account."""
        if ev.kind == "bar":
            p = ev.payload
            self.market(p["symbol"]).append(pd.Timestamp(p["ts"]), p["open"], p["high"], p["low"], p["close"], p["volume"])
        self.state.apply(ev)

    def restore(self, events: Iterable[Event]) -> None:
        """Rebuild the state from journaled events (no emitting)."""
        for ev in events:
            self.apply(ev)

    def market(self, symbol: str) -> MarketHistory:
        """The market history of a symbol (created on its first bar)."""
        if symbol not in self.markets:
            model = self.costs.get(symbol) if isinstance(self.costs, dict) else self.costs
            if model is None:
                raise ConfigError(f"no cost model for {symbol!r}; give one per symbol: costs={{{symbol!r}: CostModel(...)}}")
            self.markets[symbol] = MarketHistory(symbol, self.timeframe, model, self.o.atr_period, self.s.vol_window)
        return self.markets[symbol]

    # -- requests ------------------------------------------------------------------------------------
    async def submit(self, request: OrderRequest) -> None:
        """Accept an order (idempotent on its client id); with timing="close" a market order fills now at the close."""
        if request.cid in self.state.seen_cids:
            return
        self.emit(Event("order", request.payload(), self._ts.get(request.symbol)))
        if self.o.timing == "close" and request.type == "market":
            i = len(self.market(request.symbol)) - 1
            self._act(request.symbol, i, self.market(request.symbol).value("close", i), self.state.orders[request.cid])

    async def cancel(self, cid: str, reason: str, bar: int) -> None:
        """Remove a working order."""
        order = self.state.orders.get(cid)
        if order is not None:
            self.emit(Event("cancel", {"cid": cid, "symbol": order.symbol, "bar": bar, "reason": reason}, self._ts.get(order.symbol)))

    async def on_book(self, book: OrderBook) -> None:
        """Keep the latest L2 snapshot per symbol (the realistic model walks it)."""
        self.books[book.symbol] = book

    # -- one bar -------------------------------------------------------------------------------------
    async def on_bar(self, bar: Bar, index: int | None = None) -> None:
        """Record the bar, then run its open and its intra-bar path (the fill model's steps 1 and 2)."""
        ts = pd.Timestamp(bar.ts).isoformat()
        self._ts[bar.symbol] = ts
        self.emit(Event("bar", {"symbol": bar.symbol, "bar": len(self.market(bar.symbol)), "ts": ts, "open": bar.open,
                                "high": bar.high, "low": bar.low, "close": bar.close, "volume": bar.volume}, ts))
        self.run_bar(bar.symbol, len(self.market(bar.symbol)) - 1)

    def run_bar(self, sym: str, i: int) -> None:
        """Steps 1 (open) and 2 (path) of bar i for one symbol."""
        m, st = self.market(sym), self.state
        o, h, lo, c = (m.value(k, i) for k in ("open", "high", "low", "close"))
        # 1a. funding at the open
        pos = st.positions.get(sym)
        if pos is not None and m.costs.funding is not None:
            rate = float(m.cost_arrays(i).funding[i])
            if rate != 0.0:
                self._emit("funding", sym, {"symbol": sym, "bar": i, "amount": pos.direction * pos.size * o * rate})
        # 1b. protective levels crossed by a gap
        atr_prev = m.atr(i - 1) if self._needs_atr_trail() else NAN
        pos = st.positions.get(sym)
        if pos is not None:
            reason = self._gap_reason(pos, o, atr_prev)
            if reason:
                self._exit(sym, i, o, reason, maker=False, seg=(o, o))
        # 1c. orders decided at the last close (exits first, then entries; cancels were done at the close)
        for order in [w for w in st.orders.values() if w.symbol == sym and not w.live]:
            if order.cid in st.orders:
                self._act(sym, i, o, order)
        # 1d. pending entries marketable at the open
        pend = self._pending(sym)
        if sym not in st.positions and pend is not None:
            self._open_marketable(sym, i, o, pend)
        # an entry at this open whose protective level is already met there exits at once
        pos = st.positions.get(sym)
        if pos is not None and pos.entry_bar == i:
            reason = self._gap_reason(pos, o, atr_prev)
            if reason:
                self._exit(sym, i, o, reason, maker=False, seg=(o, o))
        at_open = sym in st.positions
        mid_peak = NAN
        exited = False
        # 2. the path o -> e1 -> e2 -> c
        pos = st.positions.get(sym)
        d_now = pos.direction if pos is not None else 0
        high_first = (h - o) <= (o - lo)
        if self.o.path == "pessimistic" and d_now != 0:
            high_first = d_now < 0
        e1, e2 = (h, lo) if high_first else (lo, h)
        corners = (o, e1, e2, c)
        if sym in st.positions or self._pending(sym) is not None:
            for seg in range(3):
                start, end = corners[seg], corners[seg + 1]
                while True:
                    pos = st.positions.get(sym)
                    if pos is not None:
                        best, reason = self._first_exit_on(pos, start, end, atr_prev)
                        if reason:
                            self._exit(sym, i, best, reason, maker=reason == "take_profit", seg=(start, end))
                            exited = sym not in st.positions or exited
                            if sym in st.positions:  # a partial exit (realistic): the rest waits for the next segment
                                break
                        break
                    pend = self._pending(sym)
                    if pend is None or exited:
                        break
                    level, maker, fired = self._pending_fill_on(pend, start, end, i)
                    if not fired:
                        break
                    d = pend.direction
                    self._enter(sym, i, level, maker, pend, seg=(start, end))
                    if sym not in st.positions:
                        break
                    mid_peak = level
                    for k in range(seg + 1, 4):
                        mid_peak = max(mid_peak, corners[k]) if d > 0 else min(mid_peak, corners[k])
                    reason = self._gap_reason(st.positions[sym], level, atr_prev)
                    if reason:
                        self._exit(sym, i, level, reason, maker=False, seg=(level, end))
                        exited = True
                        break
                    start = level
        self._local[sym] = (at_open, mid_peak)

    async def close_bar(self, index: int | None = None, ts: pd.Timestamp | None = None) -> None:
        """Step 3 after the trader's decisions: expire pending entries, update trailing peaks, mark equity."""
        st = self.state
        peaks, ages, closes = {}, {}, {}
        for sym, m in self.markets.items():
            i = len(m) - 1
            closes[sym] = m.value("close", i)
            pos = st.positions.get(sym)
            if pos is not None:
                at_open, mid_peak = self._local.get(sym, (True, NAN))
                if pos.entry_bar < i:
                    at_open = True
                ext = (m.value("high", i) if pos.direction > 0 else m.value("low", i)) if at_open else mid_peak
                if not math.isnan(ext):
                    peaks[sym] = max(pos.peak, ext) if pos.direction > 0 else min(pos.peak, ext)
            for w in list(st.orders.values()):
                if w.symbol == sym and w.live and w.intent == "entry" and w.bar < i:
                    age = w.age + 1
                    if self.o.tif_bars > 0 and age >= self.o.tif_bars:
                        self._emit("cancel", sym, {"cid": w.cid, "symbol": sym, "bar": i, "reason": "expired"})
                    else:
                        ages[w.cid] = age
        self._local.clear()
        equity = st.mark_equity(closes)
        bar = max((len(m) - 1 for m in self.markets.values()), default=-1)
        when = max(self._ts.values()) if self._ts else None
        self.emit(Event("mark", {"bar": bar, "equity": equity, "cash": st.cash, "peaks": peaks, "ages": ages, "closes": closes}, when))

    # -- steps ---------------------------------------------------------------------------------------
    def _emit(self, kind: str, sym: str, payload: dict) -> None:
        self.emit(Event(kind, payload, self._ts.get(sym)))

    def _pending(self, sym: str) -> WorkingOrder | None:
        for w in self.state.orders.values():
            if w.symbol == sym and w.live and w.intent == "entry":
                return w
        return None

    def _needs_atr_trail(self) -> bool:
        return self.o.trailing_atr is not None

    def _act(self, sym: str, i: int, p: float, order: WorkingOrder) -> None:
        """Carry out a queued order at reference price p (the open, or the close with timing="close")."""
        st = self.state
        if order.intent == "exit":
            if sym in st.positions:
                self._exit(sym, i, p, order.reason, maker=False, cid=order.cid)
            else:
                self._emit("cancel", sym, {"cid": order.cid, "symbol": sym, "bar": i, "reason": "no position"})
            return
        if sym in st.positions or self._pending(sym) is not None:
            self._emit("cancel", sym, {"cid": order.cid, "symbol": sym, "bar": i, "reason": "position or pending entry exists"})
            return
        if order.type == "market":
            self._enter(sym, i, p, False, order)
            return
        self._emit("accepted", sym, {"cid": order.cid, "symbol": sym, "bar": i, "queue_ahead": self._queue_ahead(sym, i, order)})

    def _open_marketable(self, sym: str, i: int, o: float, pend: WorkingOrder) -> None:
        d, kind = pend.direction, pend.type
        marketable = False
        if kind == "limit" or (kind == "stop_limit" and pend.triggered):
            lim = pend.price if kind == "limit" else pend.limit
            marketable = (o <= lim) if d > 0 else (o >= lim)
        elif kind == "stop":
            marketable = (o >= pend.price) if d > 0 else (o <= pend.price)
        elif (o >= pend.price) if d > 0 else (o <= pend.price):
            self._emit("trigger", sym, {"cid": pend.cid, "symbol": sym, "bar": i})
            marketable = (o <= pend.limit) if d > 0 else (o >= pend.limit)
        if marketable:
            self._enter(sym, i, o, False, pend, seg=(o, o))

    def _trail_level(self, pos: Position, atr_prev: float) -> float:
        d = pos.direction
        if self.o.trailing_stop is not None:
            return pos.peak * (1.0 - d * self.o.trailing_stop)
        if self.o.trailing_atr is not None and not math.isnan(atr_prev):
            return pos.peak - d * self.o.trailing_atr * atr_prev
        return NAN

    def _gap_reason(self, pos: Position, o: float, atr_prev: float) -> str:
        d = pos.direction
        if (o <= pos.liquidation) if d > 0 else (o >= pos.liquidation):
            return "liquidation"
        sl = pos.stop_loss
        if not math.isnan(sl) and ((o <= sl) if d > 0 else (o >= sl)):
            return "stop_loss"
        tr = self._trail_level(pos, atr_prev)
        if not math.isnan(tr) and ((o <= tr) if d > 0 else (o >= tr)):
            return "trailing_stop"
        tp = pos.take_profit
        if not math.isnan(tp) and ((o >= tp) if d > 0 else (o <= tp)):
            return "take_profit"
        return ""

    def _first_exit_on(self, pos: Position, start: float, end: float, atr_prev: float) -> tuple[float, str]:
        d = pos.direction
        best_dist, best_price, best_reason = math.inf, NAN, ""
        if (end < start) if d > 0 else (end > start):
            for x, reason in ((pos.liquidation, "liquidation"), (pos.stop_loss, "stop_loss"),
                              (self._trail_level(pos, atr_prev), "trailing_stop")):
                if math.isnan(x):
                    continue
                if (end <= x < start) if d > 0 else (start < x <= end):
                    dist = abs(start - x)
                    if dist < best_dist:
                        best_dist, best_price, best_reason = dist, x, reason
        else:
            tp = pos.take_profit
            if not math.isnan(tp) and ((start <= tp < end) if d > 0 else (end < tp <= start)):
                best_price, best_reason = tp, "take_profit"
        return best_price, best_reason

    def _pending_fill_on(self, pend: WorkingOrder, start: float, end: float, i: int) -> tuple[float, bool, bool]:
        d, kind = pend.direction, pend.type
        if kind == "limit" or (kind == "stop_limit" and pend.triggered):
            lim = pend.price if kind == "limit" else pend.limit
            if (end < lim <= start) if d > 0 else (start <= lim < end):
                return lim, True, True
            return NAN, False, False
        stop = pend.price
        if (start < stop <= end) if d > 0 else (end <= stop < start):
            if kind == "stop_limit":
                self._emit("trigger", pend.symbol, {"cid": pend.cid, "symbol": pend.symbol, "bar": i})
            return stop, False, True
        return NAN, False, False

    # -- executions ----------------------------------------------------------------------------------
    def _taker(self, sym: str, i: int, p: float, side: int, q: float) -> tuple[float, float, float, float, float]:
        """(price, fee, spread, slippage, impact) of a taker fill, the fill model's formula in the kernel's operation order."""
        ca = self.market(sym).cost_arrays(i)
        hs, sl_, sg, av, k = float(ca.half_spread[i]), float(ca.slippage[i]), float(ca.sigma[i]), float(ca.adv[i]), float(ca.impact_k)
        imp = k * sg * math.sqrt(q / av) if k > 0.0 else 0.0  # correctly rounded, as np.sqrt in the kernel
        price = p * (1.0 + side * (hs + sl_ + imp))
        return price, ca.taker_fee * price * q, hs * p * q, sl_ * p * q, imp * p * q

    def _enter(self, sym: str, i: int, p: float, maker: bool, order: WorkingOrder, seg: tuple[float, float] | None = None) -> None:
        """Size and fill an entry at reference price p (the level, for a maker)."""
        st, o, m = self.state, self.o, self.market(sym)
        d = order.direction
        atr_sig = order.atr_signal
        sl_frac = NAN if o.stop_loss is None else o.stop_loss
        sl_atr = NAN if o.stop_loss_atr is None else o.stop_loss_atr

        def skip(reason: str) -> None:
            self._emit("cancel", sym, {"cid": order.cid, "symbol": sym, "bar": i, "reason": reason})

        if not math.isnan(sl_atr) and math.isnan(atr_sig):
            return skip("no ATR yet for the ATR stop")
        vol = m.vol(i) if self.s.mode == "vol_target" else NAN
        q = order.qty if not math.isnan(order.qty) else entry_quantity(
            self.s, p, st.equity_prev, sl_frac=sl_frac, sl_atr=sl_atr, atr_signal=atr_sig, vol=vol, bars_per_year=self.bpy)
        if math.isnan(q):
            return skip("cannot size: no stop distance or volatility yet")
        ca = m.cost_arrays(i)
        q = min(q, ca.participation_cap * float(ca.adv[i]))
        if order.notional_cap < math.inf:
            q = min(q, order.notional_cap / p)
        if order.qty_cap < math.inf:
            q = min(q, order.qty_cap)
        if not q * p >= self.s.min_notional or st.cash <= 0.0:
            return skip("below min_notional or no cash")
        lev = self.s.leverage
        if self.realistic and not maker:
            self._taker_realistic(sym, i, p, d, q, order, "entry", seg)
            return
        for attempt in range(2):
            if maker:
                price, fee, s_cost, sl_cost, im_cost = p, ca.maker_fee * p * q, 0.0, 0.0, 0.0
            else:
                price, fee, s_cost, sl_cost, im_cost = self._taker(sym, i, p, d, q)
            need = q * price / lev + fee
            if need <= st.cash or attempt == 1:
                break
            q = q * st.cash / need
            if not q * p >= self.s.min_notional:
                return skip("below min_notional after cash scaling")
        if maker and self.realistic:  # a resting limit fills what the queue lets through; the rest is cancelled
            q = self._queue_fill(sym, i, order, p, q, seg)
            if q <= 0.0:
                return
            fee = ca.maker_fee * p * q
        self._emit_entry(sym, i, order, d, q, price, fee, s_cost, sl_cost, im_cost, maker, done=True)

    def _emit_entry(self, sym: str, i: int, order: WorkingOrder, d: int, q: float, price: float, fee: float, s_cost: float,
                    sl_cost: float, im_cost: float, maker: bool, *, done: bool) -> None:
        o, lev, mmr = self.o, self.s.leverage, self.s.maintenance_margin
        pos = self.state.positions.get(sym)
        avg = price if pos is None else (pos.size * pos.entry_price + q * price) / (pos.size + q)
        atr_sig = order.atr_signal
        if o.stop_loss is not None:
            sl = avg * (1.0 - d * o.stop_loss)
        elif o.stop_loss_atr is not None:
            sl = avg - d * o.stop_loss_atr * atr_sig
        else:
            sl = None
        tp = avg * (1.0 + d * o.take_profit) if o.take_profit is not None else None
        liq = avg * (1.0 - 1.0 / lev) / (1.0 - mmr) if d > 0 else avg * (1.0 + 1.0 / lev) / (1.0 + mmr)
        self._emit("fill", sym, {"cid": order.cid, "symbol": sym, "bar": i, "side": d, "kind": "entry", "reason": order.type,
                                 "price": price, "qty": q, "fee": fee, "spread": s_cost, "slippage": sl_cost, "impact": im_cost,
                                 "maker": maker, "sl": sl, "tp": tp, "liq": liq, "atr": None if math.isnan(atr_sig) else atr_sig,
                                 "done": done})

    def _exit(self, sym: str, i: int, p: float, reason: str, *, maker: bool, cid: str | None = None,
              seg: tuple[float, float] | None = None) -> None:
        """Close the position at reference price p (or part of it, realistic model)."""
        pos = self.state.positions[sym]
        d, q = pos.direction, pos.open_size
        cid = cid or f"{pos.cid}:{reason}"
        if self.realistic and reason != "liquidation":
            if maker:
                q = self._queue_fill(sym, i, None, p, q, seg, pos=pos)
                if q <= 0.0:
                    return
            else:
                self._taker_realistic(sym, i, p, -d, q, None, reason, seg, cid=cid)
                return
        ca = self.market(sym).cost_arrays(i)
        if maker:
            price, fee, s_cost, sl_cost, im_cost = p, ca.maker_fee * p * q, 0.0, 0.0, 0.0
        else:
            price, fee, s_cost, sl_cost, im_cost = self._taker(sym, i, p, -d, q)
        self._emit_exit(sym, i, pos, cid, reason, price, q, fee, s_cost, sl_cost, im_cost, maker)

    def _emit_exit(self, sym: str, i: int, pos: Position, cid: str, reason: str, price: float, q: float, fee: float,
                   s_cost: float, sl_cost: float, im_cost: float, maker: bool) -> None:
        d = pos.direction
        full = q >= pos.open_size * (1.0 - 1e-12)
        margin = pos.margin if full and not pos.exit_size else pos.margin * q / pos.size
        returned = margin + d * q * (price - pos.entry_price) - fee
        if reason == "liquidation" and returned < 0.0:
            returned = 0.0
        self._emit("fill", sym, {"cid": cid, "symbol": sym, "bar": i, "side": -d, "kind": "exit", "reason": reason, "price": price,
                                 "qty": q, "fee": fee, "spread": s_cost, "slippage": sl_cost, "impact": im_cost, "maker": maker,
                                 "returned": returned, "done": full})

    # -- the realistic model -------------------------------------------------------------------------
    def _book(self, sym: str, i: int, mid: float) -> OrderBook:
        """The feed's L2 snapshot when one arrived during this bar, else a synthetic book around `mid`."""
        m = self.market(sym)
        real = self.books.get(sym)
        if real is not None and real.mid is not None and abs(pd.Timestamp(real.ts) - m.time(i)) <= timeframe_delta(self.timeframe):
            return real
        ca = m.cost_arrays(i)
        vols = [m.value("volume", k) for k in range(max(0, i - 20), i)] or [m.value("volume", i)]
        return synthetic_book(sym, m.time(i), mid, float(ca.half_spread[i]), sum(vols) / len(vols), self.depth)

    def _taker_realistic(self, sym: str, i: int, p: float, side: int, q: float, order: WorkingOrder | None, reason: str,
                         seg: tuple[float, float] | None, cid: str | None = None) -> None:
        """A taker order walks the book: at the latency point of the path for orders sent at the close, at the trigger
        level for server-side stops; what the book cannot take fills on the next path points (partial fills)."""
        m = self.market(sym)
        ca = m.cost_arrays(i)
        o, h, lo, c = (m.value(k, i) for k in ("open", "high", "low", "close"))
        points = [p]
        if seg is None:  # sent at the last close: it meets the market after the latency, where the path is then
            cid_key = order.cid if order is not None else (cid or reason)
            delay = self.latency.delay(self.seed, cid_key) / self.bar_seconds
            points = [path_price(o, h, lo, c, min(delay, 1.0))]
        e1, e2 = (h, lo) if (h - o) <= (o - lo) else (lo, h)
        points += [e1, e2, c]  # the book refreshes at each corner of the path
        left = q
        lev = self.s.leverage
        for k, ref in enumerate(points):
            if left <= 1e-12 * q:
                break
            book = self._book(sym, i, ref)
            avg, got = walk_book(book, side, left)
            if got <= 0.0:
                continue
            imp = ca.impact_k * float(ca.sigma[i]) * math.sqrt(got / float(ca.adv[i])) if ca.impact_k > 0 else 0.0
            price = avg * (1.0 + side * (float(ca.slippage[i]) + imp))
            fee = ca.taker_fee * price * got
            s_cost = abs(avg - ref) * got
            last = k == len(points) - 1 or got >= left * (1.0 - 1e-12)
            if order is not None:  # an entry
                if price * got / lev + fee > self.state.cash:
                    got = max(self.state.cash / (price / lev * (1.0 + ca.taker_fee)), 0.0)
                    fee, last = ca.taker_fee * price * got, True
                    if got * ref < self.s.min_notional:
                        break
                self._emit_entry(sym, i, order, side, got, price, fee, s_cost, float(ca.slippage[i]) * ref * got, imp * ref * got,
                                 False, done=last)
            else:
                pos = self.state.positions.get(sym)
                if pos is None:
                    break
                self._emit_exit(sym, i, pos, cid or reason, reason, price, min(got, pos.open_size), fee, s_cost,
                                float(ca.slippage[i]) * ref * got, imp * ref * got, False)
            left -= got
        if order is not None and order.cid in self.state.orders:
            self._emit("cancel", sym, {"cid": order.cid, "symbol": sym, "bar": i, "reason": "rest unfilled at the close"})

    def _queue_ahead(self, sym: str, i: int, order: WorkingOrder) -> float:
        """Volume resting ahead of a new limit order: the book's size at and better than its price (0 in backtest mode)."""
        if not self.realistic or order.type != "limit":
            return 0.0
        m = self.market(sym)
        book = self._book(sym, i, m.value("open", i))
        levels = book.bids if order.direction > 0 else book.asks
        tol = 1e-12 * order.price  # levels built as mid * (1 - k * tick) land within rounding of a limit placed on them
        return float(sum(a for px, a in levels if (px >= order.price - tol if order.direction > 0 else px <= order.price + tol)))

    def _queue_fill(self, sym: str, i: int, order: WorkingOrder | None, level: float, q: float, seg: tuple[float, float] | None,
                    pos: Position | None = None) -> float:
        """How much of a resting limit fills when the path trades through its level: the bar's volume traded beyond
        the level (volume spread evenly along the path) minus the queue ahead of it."""
        m = self.market(sym)
        o, h, lo, c, v = (m.value(k, i) for k in ("open", "high", "low", "close", "volume"))
        start, end = seg if seg is not None else (o, o)
        below = (order.direction > 0) if order is not None else (pos is not None and pos.direction < 0)
        through = v * path_share_beyond(o, h, lo, c, start, end, level, below=below)
        ahead = order.queue_ahead if order is not None else 0.0
        got = min(q, max(through - ahead, 0.0))
        if order is not None and got < q:
            left = max(ahead - through, 0.0)
            if got <= 0.0:
                self._emit("queue", sym, {"cid": order.cid, "symbol": sym, "bar": i, "queue_ahead": left})
        return got


def path_price(o: float, h: float, lo: float, c: float, frac: float) -> float:
    """The price a fraction `frac` of the way through the bar, along o -> nearer extreme -> other extreme -> c at
    constant speed (time proportional to distance travelled)."""
    e1, e2 = (h, lo) if (h - o) <= (o - lo) else (lo, h)
    corners = (o, e1, e2, c)
    lengths = [abs(corners[k + 1] - corners[k]) for k in range(3)]
    total = sum(lengths)
    if total <= 0.0:
        return o
    dist = frac * total
    for k in range(3):
        if dist <= lengths[k] or k == 2:
            step = min(dist, lengths[k]) / lengths[k] if lengths[k] > 0 else 0.0
            return corners[k] + (corners[k + 1] - corners[k]) * step
        dist -= lengths[k]
    return c


def path_share_beyond(o: float, h: float, lo: float, c: float, start: float, end: float, level: float, *, below: bool) -> float:
    """Share of the bar's path length (volume is spread evenly along it) that the segment start -> end spends strictly
    beyond `level` (below it for a buy limit, above for a sell limit)."""
    total = abs(h - lo) + abs(o - (h if (h - o) <= (o - lo) else lo)) + abs(c - (lo if (h - o) <= (o - lo) else h))
    lo_, hi_ = min(start, end), max(start, end)
    beyond = max(min(hi_, level) - lo_, 0.0) if below else max(hi_ - max(lo_, level), 0.0)
    return beyond / total if total > 0 else 0.0

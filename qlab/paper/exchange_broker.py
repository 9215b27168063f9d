"""ExchangeBroker: the paper trader's Broker protocol placing real orders through a qlab `Exchange` (Bybit demo
trading / testnet, Binance testnet; live only through an account with the explicit live opt-in).

    async with open_exchange("bybit", "demo", account.ccxt_credentials()) as ex:
        broker = ExchangeBroker(ex, strategy=qlab.templates["sma_cross"], timeframe="1m")
        await PaperTrader("sma_cross", LiveFeed(...), broker, store=store, run_id="sma-demo").run()

What it does with the trader's requests:
  * `submit` journals the "order" event, then places the order with `request.cid` as the exchange's client order
    id; a "placed" event records the exchange's order id. Entries are sized at the decision (the strategy's
    SizeSpec on the last close and the marked equity, capped by the risk manager) and rounded down to the
    market's amount step; exits close the position with a reduce-only market order.
  * fills are polled at every bar (one `fetch_open_orders` per symbol, `fetch_order` for the orders that left
    the open list) and emitted as "fill" events with the exchange's own prices and fees, oldest order first.
  * protective exits (stop-loss, take-profit, trailing stop) become reduce-only orders on the exchange as soon as
    the entry is filled: a stop-market at the tighter of the stop-loss and trailing level (client id
    `cid + "-sl"`, replaced as the trail moves: `-s1`, `-s2` ...) and a limit at the take-profit (`cid + "-tp"`);
    when one fills the other is cancelled (Bybit client ids allow letters, digits, "-" and "_" only).
  * refusals: InsufficientFundsError / OrderRejectedError become a "reject" event with the exchange's reason and
    a "cancel" of the order (the trader keeps running); RateLimitError / NetworkError after the exchange layer's
    retries leave the order unsent ("broker_error") and it is retried at the next bar; AuthError stops the run
    with a message saying how to fix the key and resume.
  * restarts: journaled events rebuild the state; at the first bar after a restart (and before any re-send)
    orders without a known exchange id are looked up by client id (`Exchange.fetch_order_by_client_id`), so an
    order the exchange already has is adopted, never placed twice.
  * spot (Binance spot, Bybit spot): a buy pays its fee in the coin bought, so an entry books the quantity received
    (filled less the base fee, the fee booked in quote); exits sell the held quantity rounded down to the amount
    step, and the dust under one step left in the wallet is booked as sold at the exit price (equity unchanged).
    Where the exchange's order reports no fee (Binance GET /api/v3/order) it is summed from the order's own trades.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from qlab.data.candles import bars_per_year
from qlab.errors import (
    AuthError,
    ConfigError,
    InsufficientFundsError,
    NetworkError,
    OrderNotFoundError,
    OrderRejectedError,
    RateLimitError,
)
from qlab.exchange.types import Bar, Order, OrderBook
from qlab.execution import OrderSpec, SizeSpec
from qlab.paper.broker import OrderRequest
from qlab.paper.events import Event
from qlab.paper.market import MarketHistory
from qlab.paper.sizing import entry_quantity
from qlab.paper.state import AccountState, WorkingOrder

log = logging.getLogger(__name__)

# exchange broker events beyond qlab.paper.events (AccountState ignores them; this broker folds them)
BROKER_EVENT_KINDS = ("balance", "placed", "protect", "unprotect", "reject", "broker_error")
TYPE_TO_EXCHANGE = {"market": "market", "limit": "limit", "stop": "stop_market", "stop_limit": "stop_limit"}
FINISHED = ("closed", "canceled", "rejected", "expired")
RETRY_LATER = (RateLimitError, NetworkError)


@dataclass
class Protective:
    """A reduce-only protective order of a position: its role (sl: stop-loss / trailing stop, tp: take-profit)."""

    cid: str
    entry_cid: str
    symbol: str
    role: str
    reason: str  # the exit reason a fill reports: stop_loss, trailing_stop, take_profit
    side: int
    type: str
    price: float
    qty: float


class ExchangeBroker:
    """A Broker over a qlab Exchange: real orders with deterministic client ids, fills polled each bar."""

    deterministic = False  # fills come from a real matching engine: a replay of the same bars may differ

    def __init__(self, exchange: Any, *, strategy: Any = None, orders: OrderSpec | None = None, size: SizeSpec | None = None,
                 costs: Any = "default", timeframe: str = "1h", cash: float | None = None, quote: str = "USDT",
                 symbols: dict[str, str] | None = None) -> None:
        from qlab.costs import resolve_costs

        if strategy is not None and hasattr(strategy, "order_spec"):
            orders = orders or strategy.order_spec()
            size = size or strategy.size_spec()
        self.exchange = exchange
        self.o = orders or OrderSpec()
        self.s = size or SizeSpec()
        self.costs = costs if isinstance(costs, dict) else resolve_costs(costs)
        self.timeframe = timeframe
        self.bpy = bars_per_year(timeframe)
        self.quote = quote
        self.symbols = dict(symbols or {})  # feed symbol -> exchange symbol (e.g. BTC/USDT -> BTC/USDT:USDT)
        if cash is not None and not (isinstance(cash, (int, float)) and cash > 0):
            raise ConfigError(f"cash={cash!r} must be a positive amount of {quote}, or None to read the exchange balance")
        self.fixed_cash = cash
        self.state = AccountState(cash=float(cash or 1.0), leverage=float(self.s.leverage))
        self.markets: dict[str, MarketHistory] = {}
        self.emit: Callable[[Event], None] = self.apply
        self.order_ids: dict[str, str] = {}  # client id -> exchange order id
        self.protect: dict[str, Protective] = {}  # live protective orders by client id
        self.done: dict[str, tuple[float, float, float]] = {}  # client id -> (qty, value, fee) emitted as fills so far
        self.seq: dict[str, int] = {}  # client id -> placement order (fills are emitted oldest order first)
        self.n_seq = 0
        self.stop_count: dict[str, int] = {}  # entry cid -> stop replacements so far (trailing)
        self.balance_seen = False
        self.errors: list[dict[str, Any]] = []  # rejections and retried failures, for reports
        self.adopted: list[str] = []  # client ids found at the exchange after a restart instead of being sent again
        self.exits_done: set[str] = set()  # exit client ids the exchange reported wholly filled when placed
        self._ts: dict[str, str] = {}
        # until the first close of this session (a restart resumes mid-bar), orders are looked up by client id first
        self._recovered = True
        self._ready = False

    # -- the fold ------------------------------------------------------------------------------------
    def apply(self, ev: Event) -> None:
        """Fold one event: bars into the market history, broker events into the order maps, the rest into the account."""
        p, kind = ev.payload, ev.kind
        if kind == "bar":
            self.market(p["symbol"]).append(pd.Timestamp(p["ts"]), p["open"], p["high"], p["low"], p["close"], p["volume"])
            self._ts[p["symbol"]] = p["ts"]
        elif kind == "balance":
            self.balance_seen = True
            if not self.state.fills and not self.state.positions:
                st = self.state
                st.cash = st.equity = st.equity_prev = float(p["cash"])
        elif kind == "order":
            self._sequence(p["cid"])
        elif kind == "placed":
            self.order_ids[p["cid"]] = p["order_id"]
            self._sequence(p["cid"])  # the exchange's order: a deferred reversal entry comes after the exit placed before it
        elif kind == "protect":
            self._sequence(p["cid"])
            self.protect[p["cid"]] = Protective(p["cid"], p["entry_cid"], p["symbol"], p["role"], p["reason"], p["side"], p["type"],
                                                p["price"], p["qty"])
            if p["role"] == "sl":
                self.stop_count[p["entry_cid"]] = self.stop_count.get(p["entry_cid"], -1) + 1
        elif kind == "unprotect":
            self.protect.pop(p["cid"], None)
        elif kind == "fill":
            q, v, f = self.done.get(p["cid"], (0.0, 0.0, 0.0))
            gross = p.get("order_qty", p["qty"])  # a spot buy books less than the order filled (its base fee)
            self.done[p["cid"]] = (q + gross, v + gross * p["price"], f + p["fee"])
        elif kind in ("reject", "broker_error"):
            self.errors.append({"time": ev.ts, "kind": kind, **p})
        self.state.apply(ev)

    def _sequence(self, cid: str) -> None:
        self.n_seq += 1
        self.seq[cid] = self.n_seq

    def restore(self, events: Iterable[Event]) -> None:
        """Rebuild the state from journaled events (no emitting)."""
        for ev in events:
            self.apply(ev)

    def _send(self, kind: str, payload: dict[str, Any], symbol: str | None = None) -> None:
        self.emit(Event(kind, payload, self._ts.get(symbol) if symbol else max(self._ts.values(), default=None)))

    def market(self, symbol: str) -> MarketHistory:
        """The market history of a symbol (created on its first bar)."""
        if symbol not in self.markets:
            model = self.costs.get(symbol) if isinstance(self.costs, dict) else self.costs
            if model is None:
                raise ConfigError(f"no cost model for {symbol!r}; give one per symbol: costs={{{symbol!r}: CostModel(...)}}")
            self.markets[symbol] = MarketHistory(symbol, self.timeframe, model, self.o.atr_period, self.s.vol_window)
        return self.markets[symbol]

    def _xsym(self, symbol: str) -> str:
        return self.symbols.get(symbol, symbol)

    # -- exchange calls ------------------------------------------------------------------------------
    async def _call(self, what: str, coro: Any) -> Any:
        """Await an exchange call; an AuthError stops the run with a message saying how to fix and resume."""
        try:
            return await coro
        except AuthError as exc:
            raise type(exc)(f"exchange broker stopped: {self.exchange.id} refused {what} ({exc}). Fix the API key (check it with "
                            "`qlab accounts check NAME`), then restart with the same run id: the trader resumes from its journal "
                            "without placing any order twice") from None

    async def _ensure_ready(self, symbol: str | None = None) -> None:
        if not self._ready:
            await self._call("load_markets", self.exchange.load_markets())
            self._ready = True
        if not self.balance_seen and self.fixed_cash is None:
            balance = await self._call("fetch_balance", self.exchange.fetch_balance())
            total = balance.total.get(self.quote)
            if not total or total <= 0:
                raise ConfigError(f"the {self.exchange.id} account has no {self.quote} balance ({dict(balance.total)}); fund the "
                                  f"demo/testnet account or pass cash=... and quote=...")
            self._send("balance", {"currency": self.quote, "cash": float(total)}, symbol)
        elif not self.balance_seen:
            self._send("balance", {"currency": self.quote, "cash": float(self.fixed_cash)}, symbol)

    def _step(self, symbol: str, kind: str) -> float | None:
        m = self.exchange.market(self._xsym(symbol))
        return m.amount_step if kind == "amount" else m.price_step

    def _round_qty(self, symbol: str, q: float) -> float:
        step = self._step(symbol, "amount")
        if not step:
            return q
        return round(math.floor(q / step + 1e-9) * step, 12)

    def _round_price(self, symbol: str, price: float) -> float:
        step = self._step(symbol, "price")
        return round(round(price / step) * step, 12) if step else price

    def _is_spot(self, symbol: str) -> bool:
        return self.exchange.market(self._xsym(symbol)).kind == "spot"

    async def _find_by_cid(self, symbol: str, cid: str) -> Order | None:
        """The exchange's order with client id `cid` (open or finished), or None when the exchange has none."""
        xs = self._xsym(symbol)
        return await self._call("fetch_order_by_client_id", self.exchange.fetch_order_by_client_id(cid, xs))

    async def _with_fees(self, sym: str, orders: list[tuple[str, Order]]) -> list[tuple[str, Order]]:
        """Orders whose new fills carry no fee (Binance's order queries report none) get it from their own trades."""
        need = {o.id for c, o in orders if o.fee is None and o.filled - self.done.get(c, (0.0,))[0] > 1e-12}
        if not need:
            return orders
        m = self.exchange.market(self._xsym(sym))
        fees: dict[str, tuple[float, str | None]] = {}
        for t in await self._call("fetch_my_trades", self.exchange.fetch_my_trades(self._xsym(sym))):
            if t.order_id in need and t.fee is not None:
                fee = fees.get(t.order_id, (0.0, None))[0]
                if t.fee_currency not in (m.base, m.quote):  # e.g. BNB: not convertible here, booked as no fee
                    log.warning("fee of %s paid in %s is not booked (neither %s nor %s)", t.order_id, t.fee_currency, m.base, m.quote)
                    continue
                fees[t.order_id] = (fee + t.fee, t.fee_currency)
        return [(c, replace(o, fee=fees[o.id][0], raw={**(o.raw or {}), "fee_currency": fees[o.id][1]}) if o.id in fees else o)
                for c, o in orders]

    async def _place(self, cid: str, symbol: str, side: int, kind: str, qty: float, price: float = math.nan, stop: float = math.nan,
                     *, reduce_only: bool, bar: int, check_first: bool) -> Order | None:
        """Place one order (after looking it up by client id when asked); None when refused or left for the next bar."""
        xs = self._xsym(symbol)
        try:
            if check_first:
                found = await self._find_by_cid(symbol, cid)
                if found is not None:
                    # the same "placed" event a first send writes: a resumed bar must regenerate its journaled events
                    self.adopted.append(cid)
                    log.info("order %s %s is already at the exchange (%s): adopted, not sent again", cid, symbol, found.id)
                    self._send("placed", {"cid": cid, "symbol": symbol, "order_id": found.id}, symbol)
                    return found
            args: dict[str, Any] = {"client_id": cid, "reduce_only": reduce_only and not self._is_spot(symbol)}
            lim = None if math.isnan(price) else self._round_price(symbol, price)
            if kind.startswith("stop"):
                args["stop_price"] = self._round_price(symbol, stop)
            order = await self._call("create_order", self.exchange.create_order(xs, "buy" if side > 0 else "sell", kind, qty, lim,
                                                                                  **args))
        except (InsufficientFundsError, OrderRejectedError) as exc:
            self._send("reject", {"cid": cid, "symbol": symbol, "bar": bar, "error": type(exc).__name__, "reason": str(exc)[:300]}, symbol)
            log.warning("order %s %s refused: %s", cid, symbol, exc)
            return None
        except RETRY_LATER as exc:
            self._send("broker_error", {"cid": cid, "symbol": symbol, "bar": bar, "error": type(exc).__name__, "reason": str(exc)[:300],
                                        "action": "retry at the next bar"}, symbol)
            log.warning("order %s %s not sent (%s); retrying at the next bar", cid, symbol, exc)
            return None
        self._send("placed", {"cid": cid, "symbol": symbol, "order_id": order.id}, symbol)
        return order

    # -- requests ------------------------------------------------------------------------------------
    async def submit(self, request: OrderRequest) -> None:
        """Journal the order, size it, and place it on the exchange (idempotent on its client id)."""
        if request.cid in self.state.seen_cids:
            return
        sym = request.symbol
        await self._ensure_ready(sym)
        self._send("order", request.payload(), sym)
        await self._send_order(self.state.orders[request.cid], check_first=self._recovered)

    def _size_entry(self, w: WorkingOrder) -> float:
        m = self.market(w.symbol)
        i = len(m) - 1
        p = m.value("close", i) if w.type == "market" else w.price
        sl_frac = math.nan if self.o.stop_loss is None else self.o.stop_loss
        sl_atr = math.nan if self.o.stop_loss_atr is None else self.o.stop_loss_atr
        vol = m.vol(i) if self.s.mode == "vol_target" else math.nan
        q = w.qty if not math.isnan(w.qty) else entry_quantity(self.s, p, self.state.equity, sl_frac=sl_frac, sl_atr=sl_atr,
                                                                atr_signal=w.atr_signal, vol=vol, bars_per_year=self.bpy)
        if math.isnan(q):
            return math.nan
        q = min(q, w.notional_cap / p, w.qty_cap)
        q = min(q, self._cash_for_entries() * self.s.leverage / (p * (1.0 + 2 * self._taker_rate(w.symbol))))
        return self._round_qty(w.symbol, q)

    def _cash_for_entries(self) -> float:
        """Cash plus what positions with an exit order in flight give back (margin and PnL at the last close): a
        reversal's entry is sized as if its exit had filled, as the simulated broker sizes it after the exit."""
        st, cash = self.state, self.state.cash
        exiting = {w.symbol for w in st.orders.values() if w.intent == "exit"}
        for sym in exiting & set(st.positions):
            pos, m = st.positions[sym], self.market(sym)
            cash += pos.margin + pos.direction * pos.open_size * (m.value("close", len(m) - 1) - pos.entry_price)
        return cash

    def _taker_rate(self, symbol: str) -> float:
        return self.exchange.market(self._xsym(symbol)).taker or 0.0

    async def _send_order(self, w: WorkingOrder, *, check_first: bool) -> None:
        sym, st = w.symbol, self.state
        if w.intent == "exit":
            if sym in st.positions:
                await self._cancel_protective(sym, "exit order")
            pos = st.positions.get(sym)
            if pos is None:
                self._send("cancel", {"cid": w.cid, "symbol": sym, "bar": w.bar, "reason": "no position"}, sym)
                return
            qty = self._round_qty(sym, pos.open_size)  # a sum of partial fills may carry float dust below one step
        else:
            pos = st.positions.get(sym)
            closing = [c for c, o in st.orders.items() if o.symbol == sym and o.intent == "exit"]
            if pos is not None and pos.direction != w.direction and not (closing and set(closing) <= self.exits_done):
                if closing:
                    return  # a reversal waits until its exit is known filled (a partial exit's rest goes first); poll retries
                self._send("cancel", {"cid": w.cid, "symbol": sym, "bar": w.bar, "reason": "the opposite position is still "
                                      "open (its exit was refused); an entry now would net against it"}, sym)
                return
            qty = self._size_entry(w)
            min_amount = self.exchange.market(self._xsym(sym)).min_amount or 0.0
            if math.isnan(qty) or qty <= 0 or qty < min_amount:
                self._send("cancel", {"cid": w.cid, "symbol": sym, "bar": w.bar, "reason": f"size {qty} below the market minimum "
                                      f"{min_amount} (or no stop distance / volatility yet)"}, sym)
                return
        kind = TYPE_TO_EXCHANGE[w.type]
        price = w.limit if w.type == "stop_limit" else (w.price if w.type == "limit" else math.nan)
        stop = w.price if w.type in ("stop", "stop_limit") else math.nan
        order = await self._place(w.cid, sym, w.direction, kind, qty, price, stop, reduce_only=w.intent == "exit", bar=w.bar,
                                  check_first=check_first)
        if order is None:
            if self.errors and self.errors[-1]["kind"] == "reject" and self.errors[-1]["cid"] == w.cid:
                self._send("cancel", {"cid": w.cid, "symbol": sym, "bar": w.bar, "reason": "rejected by the exchange"}, sym)
            return
        if w.intent == "exit" and order.status in FINISHED and order.filled >= qty * (1.0 - 1e-9):
            self.exits_done.add(w.cid)
        if w.type != "market" and order.status == "open" and order.filled == 0 and w.cid in st.orders:
            self._send("accepted", {"cid": w.cid, "symbol": sym, "bar": len(self.market(sym)) - 1, "queue_ahead": 0.0}, sym)
        if w.intent == "entry" and order.status == "closed" and order.filled > 0 and order.average:
            await self._protect(sym, w.cid, w.direction, order.filled, order.average, w.atr_signal)

    async def cancel(self, cid: str, reason: str, bar: int) -> None:
        """Cancel a working order on the exchange, then emit "cancel" (a no-op for an unknown or finished order)."""
        order = self.state.orders.get(cid)
        if order is None:
            return
        if not await self._cancel_on_exchange(cid, order.symbol) or cid not in self.state.orders:
            return  # the cancel waits for the next bar, or the order filled before the cancel arrived (the fill counts)
        self._send("cancel", {"cid": cid, "symbol": order.symbol, "bar": bar, "reason": reason}, order.symbol)

    async def _cancel_on_exchange(self, cid: str, sym: str) -> bool:
        """Cancel one order on the exchange and emit what it filled before the cancel; False when the cancel must wait."""
        oid = self.order_ids.get(cid)
        if oid is None:
            return True
        xs = self._xsym(sym)
        try:
            try:
                result = await self._call("cancel_order", self.exchange.cancel_order(oid, xs))
            except OrderNotFoundError:  # finished already (filled or cancelled): read what it did
                result = await self._call("fetch_order", self.exchange.fetch_order(oid, xs))
            result = (await self._with_fees(sym, [(cid, result)]))[0][1]
        except RETRY_LATER as exc:
            self._send("broker_error", {"cid": cid, "symbol": sym, "bar": len(self.market(sym)) - 1, "error": type(exc).__name__,
                                        "reason": str(exc)[:300], "action": "cancel retried at the next bar"}, sym)
            return False
        self._emit_fills(sym, [(cid, result)], cancel_finished=False)  # the caller says why it cancelled
        return True

    async def on_book(self, book: OrderBook) -> None:
        """Order books are not used: the exchange matches the orders."""

    # -- protective orders ---------------------------------------------------------------------------
    def _levels(self, d: int, avg: float, atr_sig: float) -> tuple[float, float]:
        o = self.o
        if o.stop_loss is not None:
            sl = avg * (1.0 - d * o.stop_loss)
        elif o.stop_loss_atr is not None and not math.isnan(atr_sig):
            sl = avg - d * o.stop_loss_atr * atr_sig
        else:
            sl = math.nan
        tp = avg * (1.0 + d * o.take_profit) if o.take_profit is not None else math.nan
        return sl, tp

    async def _protect(self, sym: str, entry_cid: str, d: int, qty: float, avg: float, atr_sig: float) -> None:
        """Place the reduce-only stop and take-profit of a freshly filled entry."""
        sl, tp = self._levels(d, avg, atr_sig)
        if not math.isnan(sl):
            await self._place_protective(sym, entry_cid, "sl", "stop_loss", -d, "stop_market", sl, qty)
        if not math.isnan(tp):
            await self._place_protective(sym, entry_cid, "tp", "take_profit", -d, "limit", tp, qty)

    async def _place_protective(self, sym: str, entry_cid: str, role: str, reason: str, side: int, kind: str, level: float,
                                qty: float) -> None:
        n = self.stop_count.get(entry_cid, -1) + 1 if role == "sl" else 0
        cid = f"{entry_cid}-{role}" if n == 0 else f"{entry_cid}-s{n}"
        if cid in self.protect or cid in self.order_ids:
            return
        level = self._round_price(sym, level)
        self._send("protect", {"cid": cid, "entry_cid": entry_cid, "symbol": sym, "role": role, "reason": reason, "side": side,
                               "type": kind, "price": level, "qty": qty}, sym)
        order = await self._place(cid, sym, side, kind, qty, level if kind == "limit" else math.nan,
                                  level if kind.startswith("stop") else math.nan, reduce_only=True, bar=len(self.market(sym)) - 1,
                                  check_first=self._recovered)
        if order is None:
            self._send("unprotect", {"cid": cid, "reason": "not placed"}, sym)

    async def _cancel_protective(self, sym: str, reason: str, keep: str | None = None) -> None:
        for cid, p in list(self.protect.items()):
            if p.symbol != sym or cid == keep:
                continue
            await self._cancel_on_exchange(cid, sym)
            if cid in self.protect:
                self._send("unprotect", {"cid": cid, "reason": reason}, sym)

    # -- one bar -------------------------------------------------------------------------------------
    async def on_bar(self, bar: Bar, index: int | None = None) -> None:
        """Record the bar, poll the exchange for fills of this symbol's orders, and (re)send what is still unsent."""
        ts = pd.Timestamp(bar.ts).isoformat()
        self._ts[bar.symbol] = ts
        self._send("bar", {"symbol": bar.symbol, "bar": len(self.market(bar.symbol)), "ts": ts, "open": bar.open, "high": bar.high,
                           "low": bar.low, "close": bar.close, "volume": bar.volume}, bar.symbol)
        await self._ensure_ready(bar.symbol)
        await self.poll(bar.symbol)

    async def poll(self, sym: str) -> None:
        """Fills of every tracked order of `sym` since the last poll, emitted oldest order first; unsent orders resent."""
        tracked = [c for c, w in self.state.orders.items() if w.symbol == sym and c in self.order_ids]
        tracked += [c for c, p in self.protect.items() if p.symbol == sym and c in self.order_ids]
        if not tracked and not any(w.symbol == sym and c not in self.order_ids for c, w in self.state.orders.items()):
            return
        xs = self._xsym(sym)
        try:
            open_orders = {o.id: o for o in await self._call("fetch_open_orders", self.exchange.fetch_open_orders(xs))}
            seen: list[tuple[str, Order]] = []
            for cid in sorted(tracked, key=lambda c: self.seq.get(c, 0)):
                oid = self.order_ids[cid]
                seen.append((cid, open_orders.get(oid) or await self._call("fetch_order", self.exchange.fetch_order(oid, xs))))
            seen = await self._with_fees(sym, seen)
        except RETRY_LATER as exc:
            self._send("broker_error", {"symbol": sym, "bar": len(self.market(sym)) - 1, "error": type(exc).__name__,
                                        "reason": str(exc)[:300], "action": "fills polled at the next bar"}, sym)
            return
        for cid, order in seen:
            self._emit_fills(sym, [(cid, order)])
            await self._after_fill(sym, cid, order)
        unsent = [w for c, w in self.state.orders.items() if w.symbol == sym and c not in self.order_ids]
        for w in sorted(unsent, key=lambda w: w.intent != "exit"):  # exits first: a waiting reversal entry needs them
            if w.cid in self.state.orders:
                await self._send_order(w, check_first=True)

    async def _after_fill(self, sym: str, cid: str, order: Order) -> None:
        """Protect a filled entry; when a protective order filled, cancel its sibling."""
        st = self.state
        if cid in self.protect and order.status in FINISHED:
            p = self.protect[cid]
            self._send("unprotect", {"cid": cid, "reason": order.status}, sym)
            if order.filled > 0:
                await self._cancel_protective(sym, f"{p.reason} filled")
                self._exit_rest(sym, cid, p.side, p.reason, len(self.market(sym)) - 1)  # a stop that filled in part
            return
        pos = st.positions.get(sym)
        if pos is not None and pos.cid == cid and not any(p.entry_cid == cid for p in self.protect.values()):
            await self._protect(sym, cid, pos.direction, pos.open_size, pos.entry_price, pos.atr_signal)

    def _emit_fills(self, sym: str, orders: list[tuple[str, Order]], *, cancel_finished: bool = True) -> None:
        """A "fill" event for what each order filled beyond what was emitted already (the exchange's prices and fees)."""
        st = self.state
        i = len(self.market(sym)) - 1
        for cid, order in orders:
            q0, v0, f0 = self.done.get(cid, (0.0, 0.0, 0.0))
            dq = order.filled - q0
            if dq <= 1e-12 or not order.average:
                if cancel_finished and order.status in FINISHED and cid in st.orders and order.filled <= 1e-12:
                    w = st.orders[cid]
                    self._send("cancel", {"cid": cid, "symbol": sym, "bar": i, "reason": f"exchange: {order.status}"}, sym)
                    if w.intent == "exit":
                        self._exit_rest(sym, cid, w.direction, w.reason, i)
                continue
            price = (order.average * order.filled - v0) / dq
            fee_base, fee_quote = self._fee_split(sym, order)
            fee = fee_quote + fee_base * order.average - f0
            booked = dq * (1.0 - fee_base / order.filled)  # what reached the wallet: a spot buy pays its fee in base
            finished = order.status in FINISHED
            w = st.orders.get(cid)
            prot = self.protect.get(cid)
            ref = self.market(sym).value("close", i)
            if w is not None and w.intent == "entry":
                self._emit_entry(sym, i, w, booked, price, fee, ref, done=finished, order_qty=dq)
            elif sym in st.positions:
                reason = prot.reason if prot is not None else (w.reason if w is not None else "exit")
                self._emit_exit(sym, i, cid, reason, dq, price, fee, ref, maker=bool(prot is not None and prot.role == "tp"),
                                dust_closes=finished and self._is_spot(sym))
            if cancel_finished and finished and cid in st.orders:
                self._send("cancel", {"cid": cid, "symbol": sym, "bar": i, "reason": f"rest {order.status} on the exchange"}, sym)
                if w is not None and w.intent == "exit":
                    self._exit_rest(sym, cid, w.direction, w.reason, i)

    def _exit_rest(self, sym: str, cid: str, side: int, reason: str, bar: int) -> None:
        """An exit the exchange ended short of the position (a market order's rest cancelled for want of liquidity):
        journal a market exit for what is still held, which the caller's poll sends; its client id is `cid + "-r"`."""
        if sym in self.state.positions and f"{cid}-r" not in self.state.seen_cids:
            self._send("order", OrderRequest(f"{cid}-r", sym, side, "market", "exit", bar, reason=reason).payload(), sym)

    def _fee_split(self, sym: str, order: Order) -> tuple[float, float]:
        """The order's cumulative fee as (in base, in quote): spot buys pay in the coin bought (Bybit, Binance)."""
        fee = order.fee or 0.0
        if not self._is_spot(sym):
            return 0.0, fee
        m = self.exchange.market(self._xsym(sym))
        raw = order.raw if isinstance(order.raw, dict) else {}
        ccy = raw.get("fee_currency") or (raw.get("fee") or {}).get("currency")
        in_base = ccy == m.base if ccy else order.side == "buy"
        return (fee, 0.0) if in_base else (0.0, fee)

    def _emit_entry(self, sym: str, i: int, w: WorkingOrder, q: float, price: float, fee: float, ref: float, *, done: bool,
                    order_qty: float | None = None) -> None:
        d = w.direction
        pos = self.state.positions.get(sym)
        avg = price if pos is None else (pos.size * pos.entry_price + q * price) / (pos.size + q)
        sl, tp = self._levels(d, avg, w.atr_signal)
        lev, mmr = self.s.leverage, self.s.maintenance_margin
        liq = avg * (1.0 - 1.0 / lev) / (1.0 - mmr) if d > 0 else avg * (1.0 + 1.0 / lev) / (1.0 + mmr)
        self._send("fill", {"cid": w.cid, "symbol": sym, "bar": i, "side": d, "kind": "entry", "reason": w.type, "price": price,
                            "qty": q, "fee": fee, "spread": 0.0, "slippage": d * (price - ref) * q, "impact": 0.0,
                            "maker": w.type == "limit",
                            "sl": None if math.isnan(sl) else sl, "tp": None if math.isnan(tp) else tp, "liq": liq,
                            "atr": None if math.isnan(w.atr_signal) else w.atr_signal, "done": done, "source": "exchange",
                            **({"order_qty": order_qty} if order_qty is not None and abs(order_qty - q) > 1e-15 else {})}, sym)

    def _emit_exit(self, sym: str, i: int, cid: str, reason: str, q: float, price: float, fee: float, ref: float, *, maker: bool,
                   dust_closes: bool = False) -> None:
        pos = self.state.positions[sym]
        d = pos.direction
        order_qty = q
        q = min(q, pos.open_size)
        if dust_closes and pos.open_size - q < (self._step(sym, "amount") or 0.0) - 1e-15:
            q = pos.open_size  # spot: the dust under one amount step stays in the wallet, booked as sold at this price
        full = q >= pos.open_size * (1.0 - 1e-9)
        margin = pos.margin if full and not pos.exit_size else pos.margin * q / pos.size
        returned = margin + d * q * (price - pos.entry_price) - fee
        self._send("fill", {"cid": cid, "symbol": sym, "bar": i, "side": -d, "kind": "exit", "reason": reason, "price": price, "qty": q,
                            "fee": fee, "spread": 0.0, "slippage": -d * (price - ref) * q, "impact": 0.0, "maker": maker,
                            "returned": returned, "done": full, "source": "exchange",
                            **({"order_qty": order_qty} if abs(order_qty - q) > 1e-15 else {})}, sym)

    async def close_bar(self, index: int | None = None, ts: pd.Timestamp | None = None) -> None:
        """After the trader's decisions: trail the stops, expire old entry orders, and mark equity at the closes."""
        st = self.state
        peaks, ages, closes = {}, {}, {}
        for sym, m in self.markets.items():
            i = len(m) - 1
            closes[sym] = m.value("close", i)
            pos = st.positions.get(sym)
            if pos is not None:
                ext = m.value("high", i) if pos.direction > 0 else m.value("low", i)
                peaks[sym] = max(pos.peak, ext) if pos.direction > 0 else min(pos.peak, ext)
                await self._trail(sym, pos, peaks[sym], m.atr(i))
            for w in list(st.orders.values()):
                if w.symbol == sym and w.live and w.intent == "entry" and w.bar < i:
                    age = w.age + 1
                    if self.o.tif_bars > 0 and age >= self.o.tif_bars:
                        await self.cancel(w.cid, "expired", i)
                    else:
                        ages[w.cid] = age
        equity = st.mark_equity(closes)
        bar = max((len(m) - 1 for m in self.markets.values()), default=-1)
        self._send("mark", {"bar": bar, "equity": equity, "cash": st.cash, "peaks": peaks, "ages": ages, "closes": closes})
        self._recovered = False

    async def _trail(self, sym: str, pos: Any, peak: float, atr_now: float) -> None:
        """Move the exchange stop up (long) / down (short) when the trailing level passes the current one."""
        o, d = self.o, pos.direction
        if o.trailing_stop is not None:
            level = peak * (1.0 - d * o.trailing_stop)
        elif o.trailing_atr is not None and not math.isnan(atr_now):
            level = peak - d * o.trailing_atr * atr_now
        else:
            return
        current = next((p for p in self.protect.values() if p.entry_cid == pos.cid and p.role == "sl"), None)
        step = self._step(sym, "price") or 0.0
        if current is not None and (level - current.price) * d <= step:
            return
        if current is not None:
            if not await self._cancel_on_exchange(current.cid, sym):
                return
            self._send("unprotect", {"cid": current.cid, "reason": "trailed"}, sym)
            if sym not in self.state.positions:
                return
        await self._place_protective(sym, pos.cid, "sl", "trailing_stop", -d, "stop_market", level, pos.open_size)

"""Account state of a paper run (cash, positions, working orders, trades, fills) as a fold over events.

Every change goes through `AccountState.apply(event)`: the broker applies each event right after the
journal recorded it, and a restart applies the journaled events again, so the rebuilt state is the
same object graph to the last bit. The arithmetic follows qlab.engine.orders ("Accounting") in the same
operation order as the numba kernel, which is what makes a "backtest" fill-model replay match it exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from qlab.paper.events import Event


@dataclass
class Position:
    """An open position of one symbol (isolated margin) with its protective levels."""

    symbol: str
    direction: int
    size: float
    entry_price: float  # executed (average for several fills), costs included
    margin: float
    entry_fee: float
    spread: float
    slippage: float
    impact: float
    entry_bar: int
    entry_time: str | None
    stop_loss: float  # NaN when none
    take_profit: float
    liquidation: float
    peak: float  # trailing-stop peak (long) / trough (short) as of the last close
    atr_signal: float  # ATR of the signal bar (ATR stops)
    cid: str
    funding: float = 0.0
    at_open: bool = False  # held since this bar's open (trailing peaks take the whole bar)
    exit_size: float = 0.0  # partial exits so far (realistic fill model)
    exit_value: float = 0.0
    exit_fee: float = 0.0
    exit_spread: float = 0.0
    exit_slippage: float = 0.0
    exit_impact: float = 0.0
    returned: float = 0.0

    @property
    def open_size(self) -> float:
        """Size still open after partial exits."""
        return self.size - self.exit_size


@dataclass
class WorkingOrder:
    """An order the broker holds: queued for the next open, or resting (limit / stop / stop-limit)."""

    cid: str
    symbol: str
    direction: int  # +1 buy, -1 sell
    type: str  # market, limit, stop, stop_limit
    intent: str  # entry, exit
    bar: int  # the signal bar that created it
    price: float = math.nan  # limit price (limit), stop price (stop, stop_limit)
    limit: float = math.nan  # stop_limit: the limit after the trigger
    qty: float = math.nan  # NaN: sized at fill time from the order's sizing
    notional_cap: float = math.inf  # the risk manager's cap on q * price
    qty_cap: float = math.inf  # the risk manager's cap on q
    reason: str = "signal"
    live: bool = False  # on the book (False: waits for the next open)
    triggered: bool = False
    age: int = 0  # closes lived through (time in force)
    filled: float = 0.0
    queue_ahead: float = 0.0  # realistic model: volume ahead of a resting limit
    atr_signal: float = math.nan
    vol: float = math.nan


@dataclass
class AccountState:
    """Cash, positions, working orders, trades and fills of a run; changed only by `apply`."""

    cash: float
    leverage: float = 1.0
    equity_prev: float = math.nan  # equity at the last close (sizing uses it)
    equity: float = math.nan
    bar: int = -1  # last bar marked
    ts: str | None = None
    positions: dict[str, Position] = field(default_factory=dict)
    orders: dict[str, WorkingOrder] = field(default_factory=dict)
    realised: dict[str, float] = field(default_factory=dict)
    trades: list[dict[str, Any]] = field(default_factory=list)
    fills: list[dict[str, Any]] = field(default_factory=list)
    fees_paid: float = 0.0
    funding_paid: float = 0.0
    marks: list[tuple[str, float, float]] = field(default_factory=list)  # (ts, equity, cash) per close
    killed: bool = False
    seen_cids: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if math.isnan(self.equity_prev):
            self.equity_prev = self.cash
            self.equity = self.cash

    # -- the fold ----------------------------------------------------------------------------------
    def apply(self, ev: Event) -> None:
        """Change the state by one event (the only way it changes)."""
        handler = getattr(self, f"_on_{ev.kind}", None)
        if handler is not None:
            handler(ev.payload, ev.ts)

    def _on_order(self, p: dict, ts: str | None) -> None:
        self.seen_cids.add(p["cid"])
        self.orders[p["cid"]] = WorkingOrder(
            cid=p["cid"], symbol=p["symbol"], direction=p["side"], type=p["type"], intent=p["intent"], bar=p["bar"],
            price=_f(p.get("price")), limit=_f(p.get("limit")), qty=_f(p.get("qty")), notional_cap=_f(p.get("notional_cap"), math.inf),
            qty_cap=_f(p.get("qty_cap"), math.inf),
            reason=p.get("reason", "signal"), atr_signal=_f(p.get("atr")), vol=_f(p.get("vol")))

    def _on_accepted(self, p: dict, ts: str | None) -> None:
        order = self.orders[p["cid"]]
        order.live = True
        order.queue_ahead = float(p.get("queue_ahead", 0.0))

    def _on_trigger(self, p: dict, ts: str | None) -> None:
        self.orders[p["cid"]].triggered = True

    def _on_queue(self, p: dict, ts: str | None) -> None:
        self.orders[p["cid"]].queue_ahead = float(p["queue_ahead"])

    def _on_cancel(self, p: dict, ts: str | None) -> None:
        self.orders.pop(p["cid"], None)

    def _on_funding(self, p: dict, ts: str | None) -> None:
        pay = p["amount"]
        self.cash -= pay
        self.positions[p["symbol"]].funding += pay
        self.funding_paid += pay

    def _on_kill(self, p: dict, ts: str | None) -> None:
        self.killed = self.killed or p.get("rule") != "max_daily_loss"  # a daily-loss halt ends with its UTC day

    def _on_mark(self, p: dict, ts: str | None) -> None:
        for symbol, peak in p.get("peaks", {}).items():
            self.positions[symbol].peak = peak
        for cid, age in p.get("ages", {}).items():
            self.orders[cid].age = age
        for cid, queue in p.get("queues", {}).items():
            self.orders[cid].queue_ahead = queue
        self.equity_prev = self.equity = p["equity"]
        self.bar, self.ts = p["bar"], ts
        self.marks.append((ts, p["equity"], self.cash))

    def _on_fill(self, p: dict, ts: str | None) -> None:
        symbol = p["symbol"]
        q, price, fee = p["qty"], p["price"], p["fee"]
        self.fees_paid += fee
        self.fills.append({"bar": p["bar"], "time": ts, "asset": symbol, "cid": p["cid"], "side": p["side"], "kind": p["kind"],
                           "reason": p["reason"], "price": price, "size": q, "fee": fee, "maker": p["maker"]})
        order = self.orders.get(p["cid"])
        if order is not None:
            order.filled += q
            if p.get("done", True):
                del self.orders[p["cid"]]
        if p["kind"] == "entry":
            self._enter(p, ts)
        else:
            self._exit(p, ts)

    def _enter(self, p: dict, ts: str | None) -> None:
        symbol, q, price, fee = p["symbol"], p["qty"], p["price"], p["fee"]
        margin = q * price / self.leverage
        pos = self.positions.get(symbol)
        if pos is None:
            self.positions[symbol] = Position(
                symbol=symbol, direction=p["side"], size=q, entry_price=price, margin=margin, entry_fee=fee,
                spread=p["spread"], slippage=p["slippage"], impact=p["impact"], entry_bar=p["bar"], entry_time=ts,
                stop_loss=_f(p.get("sl")), take_profit=_f(p.get("tp")), liquidation=p["liq"], peak=price,
                atr_signal=_f(p.get("atr")), cid=p["cid"], at_open=False)
        else:  # a further partial fill of the entry (realistic model): average in
            total = pos.size + q
            pos.entry_price = (pos.size * pos.entry_price + q * price) / total
            pos.size = total
            pos.margin += margin
            pos.entry_fee += fee
            pos.spread += p["spread"]
            pos.slippage += p["slippage"]
            pos.impact += p["impact"]
            pos.stop_loss, pos.take_profit, pos.liquidation = _f(p.get("sl")), _f(p.get("tp")), p["liq"]
            pos.peak = pos.entry_price
        self.cash -= margin + fee

    def _exit(self, p: dict, ts: str | None) -> None:
        symbol, q, price, fee = p["symbol"], p["qty"], p["price"], p["fee"]
        pos = self.positions[symbol]
        returned = p["returned"]
        self.cash += returned
        pos.exit_size += q
        pos.exit_value += q * price
        pos.exit_fee += fee
        pos.exit_spread += p["spread"]
        pos.exit_slippage += p["slippage"]
        pos.exit_impact += p["impact"]
        pos.returned += returned
        if not p.get("done", True) and pos.open_size > 1e-12 * pos.size:
            return
        exit_price = price if pos.exit_size == q else pos.exit_value / pos.exit_size
        gross = pos.direction * pos.size * (exit_price - pos.entry_price)
        net = (pos.returned - pos.margin) - pos.entry_fee - pos.funding
        self.trades.append(_trade(pos, exit_price, p["bar"], ts, gross, net, p["reason"], False))
        self.realised[symbol] = self.realised.get(symbol, 0.0) + net
        del self.positions[symbol]

    # -- views -------------------------------------------------------------------------------------
    def mark_equity(self, closes: dict[str, float]) -> float:
        """Cash plus margin and unrealised PnL of every position at these prices (the kernel's order of sums)."""
        total = self.cash
        for symbol, pos in self.positions.items():
            unreal = pos.direction * pos.open_size * (closes[symbol] - pos.entry_price)
            total += pos.margin * (pos.open_size / pos.size) + unreal if pos.exit_size else pos.margin + unreal
        return total

    def open_trades(self, closes: dict[str, float], bar: int, ts: str | None) -> list[dict[str, Any]]:
        """Positions still open, as trade rows marked at these prices (is_open=True, no exit costs)."""
        out = []
        for symbol, pos in self.positions.items():
            c = closes[symbol]
            gross = pos.direction * pos.size * (c - pos.entry_price)
            out.append(_trade(pos, c, bar, ts, gross, gross - pos.entry_fee - pos.funding, "end", True))
        return out


def _trade(pos: Position, exit_price: float, bar: int, ts: str | None, gross: float, net: float, reason: str, is_open: bool) -> dict:
    return {"asset": pos.symbol, "direction": pos.direction, "entry_bar": pos.entry_bar, "exit_bar": bar, "entry_time": pos.entry_time,
            "exit_time": ts, "entry_price": pos.entry_price, "exit_price": exit_price, "size": pos.size, "entry_fee": pos.entry_fee,
            "exit_fee": pos.exit_fee, "spread_cost": pos.spread + pos.exit_spread, "slippage_cost": pos.slippage + pos.exit_slippage,
            "impact_cost": pos.impact + pos.exit_impact, "funding": pos.funding, "gross_pnl": gross, "net_pnl": net,
            "exit_reason": reason, "is_open": is_open, "cid": pos.cid}


def _f(value: Any, default: float = math.nan) -> float:
    return default if value is None else float(value)

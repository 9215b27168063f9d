"""The reference loop: a plain, slow, obviously-correct backtester that follows the fill model in the
docstring of `qlab.engine.orders` sentence by sentence. It exists to be audited and to check the fast
engine trade by trade; use `qlab.engine.backtest` for real work.

Bar by bar, asset by asset (column order), it runs the spec's events of one bar: at the open (funding,
gapped protective levels, market orders from the previous bar's signals, marketable pending entries),
along the three straight segments of the intra-bar path (levels fire in the order the path meets them),
and at the close (trailing peaks, signals -> orders for the next bar, expiry of pending entries).

Entries that need ATR (stop_loss_atr, trailing_atr, or risk sizing on an ATR stop) are skipped while the
ATR of their signal bar is still NaN (the first `atr_period` bars): no order is created for them.

Choices where the spec leaves room are marked `# SPEC:` in the code.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from qlab.data.candles import bars_per_year, infer_timeframe, validate_candles
from qlab.engine.orders import OrderSpec, SizeSpec, atr
from qlab.errors import ConfigError, DataError

LONG, SHORT = 1, -1
SIGNALS = ("entry_long", "exit_long", "entry_short", "exit_short")
PROTECTIVE = ("liquidation", "stop_loss", "trailing_stop", "take_profit")  # the spec's priority list
TRADE_COLUMNS = ("asset", "direction", "entry_bar", "exit_bar", "entry_time", "exit_time", "entry_price", "exit_price",
                 "size", "entry_fee", "exit_fee", "spread_cost", "slippage_cost", "impact_cost", "funding", "gross_pnl",
                 "net_pnl", "exit_reason", "is_open")
ORDER_COLUMNS = ("bar", "time", "asset", "side", "kind", "reason", "price", "size", "fee", "maker")


@dataclass
class ReferenceResult:
    """What the reference loop returns: trades, equity and cash at each close, per-asset PnL, and every fill."""

    trades: pd.DataFrame
    equity: pd.Series
    cash: pd.Series
    asset_pnl: pd.DataFrame
    orders: pd.DataFrame


@dataclass
class Position:
    """An open position (isolated margin) and its protective levels."""

    direction: int  # +1 long, -1 short
    size: float
    entry_price: float  # executed, costs included
    entry_bar: int
    margin: float
    entry_fee: float
    spread: float  # entry cost components, in money
    slippage: float
    impact: float
    stop_loss: float | None
    take_profit: float | None
    liquidation: float
    peak: float  # trailing stop: highest (long) / lowest (short) price seen, as of the last close
    bar_extreme: float | None  # extreme of the part of the current bar the position lived through
    seq: int  # fill sequence, to sort trades of one asset and bar
    funding: float = 0.0  # paid so far (negative = received)


@dataclass
class PendingOrder:
    """A resting limit / stop / stop_limit entry."""

    direction: int
    kind: str  # "limit", "stop", "stop_limit"
    price: float  # the limit price (limit) or the stop price (stop, stop_limit)
    limit: float | None  # stop_limit: its limit price
    signal_bar: int
    atr: float  # ATR of the signal bar
    triggered: bool = False  # stop_limit: the stop was reached, it now rests as a limit


@dataclass
class MarketOrders:
    """Signal-driven market orders waiting for the next open (timing="next_open")."""

    exit: bool
    entry: int  # 0 none, +1 long, -1 short
    signal_bar: int
    atr: float


@dataclass
class Level:
    """A price level on the intra-bar path. It is met where the price is at it or beyond it in direction
    `move` (touch), or strictly beyond it (through: limit orders, which need the price to trade through)."""

    name: str  # a PROTECTIVE name, or "entry"
    price: float
    move: int  # +1: met by a rising price, -1: by a falling price
    through: bool
    priority: int  # index in the spec's priority list (entries last)


def _beyond(price: float, level: Level, strict: bool) -> bool:
    """Is `price` at (strict=False) or strictly beyond (strict=True) the level, in the level's direction?"""
    if level.move > 0:
        return price > level.price if strict else price >= level.price
    return price < level.price if strict else price <= level.price


def _meet(level: Level, start: float, end: float) -> tuple[float, bool] | None:
    """Where a straight segment start -> end first meets the level: (price, met at the start point) or None."""
    # "A level that lies exactly at a segment's end point counts as met" (touch levels); limits need the price to go
    # strictly beyond ("touching is not enough").
    if _beyond(start, level, level.through):
        return start, True  # "Levels already crossed ... fire at" the current point's price
    if _beyond(end, level, level.through):
        return level.price, False  # segments are monotone, so the level lies between start and end
    return None


def past_volatility(close: list[float], window: int) -> list[float]:
    """vol[t]: the sample standard deviation of the `window` log returns ln(c_j / c_j-1) for j = t-window .. t-1."""
    vol = [math.nan] * len(close)
    for t in range(window + 1, len(close)):
        returns = [math.log(close[j] / close[j - 1]) for j in range(t - window, t)]
        vol[t] = statistics.stdev(returns)
    return vol


def path_points(o: float, h: float, lo: float, c: float, path: str, direction: int) -> list[float]:
    """The four corners of the bar's path: open -> first extreme -> other extreme -> close."""
    if path == "pessimistic" and direction != 0:
        # "the adverse extreme comes first for an open position (low first for a long, high first for a short)"
        return [o, lo, h, c] if direction == LONG else [o, h, lo, c]
    # "'Nearer' compares |open - high| with |open - low|; a tie goes to the high first."
    return [o, h, lo, c] if abs(o - h) <= abs(o - lo) else [o, lo, h, c]


class _Asset:
    """One asset's data (as plain lists, for speed) and its state."""

    def __init__(self, name: str, candles: pd.DataFrame, signals: pd.DataFrame, costs: Any, atr_values: np.ndarray | None):
        self.name = name
        self.open, self.high, self.low, self.close = (candles[k].to_numpy(dtype=np.float64).tolist()
                                                      for k in ("open", "high", "low", "close"))
        self.signals = list(zip(*(signals[k].tolist() for k in SIGNALS), strict=True))
        self.costs = costs
        self.half_spread, self.slippage, self.sigma, self.adv, self.funding = (
            np.asarray(getattr(costs, k), dtype=np.float64).tolist() for k in ("half_spread", "slippage", "sigma", "adv", "funding"))
        self.atr = atr_values.tolist() if atr_values is not None else None
        self.vol: list[float] = []  # set by _Run for vol_target sizing
        self.position: Position | None = None
        self.pending: PendingOrder | None = None
        self.market: MarketOrders | None = None
        self.realised = 0.0  # sum of net_pnl of the closed trades


class _Run:
    """The state of one reference run: the shared cash balance and every asset."""

    def __init__(self, assets: list[_Asset], index: pd.DatetimeIndex, orders: OrderSpec, size: SizeSpec, cash: float,
                 bpy: float | None):
        self.assets, self.index, self.o, self.s = assets, index, orders, size
        self.cash = float(cash)
        self.prev_equity = float(cash)  # "the initial cash on the first bar"
        self.bpy = bpy
        self.trades: list[dict] = []
        self.fills: list[dict] = []
        self.seq = 0

    # ---------------------------------------------------------------- the loop
    def run(self) -> tuple[list[float], list[float], list[list[float]]]:
        equity, cash, pnl = [], [], []
        for t in range(len(self.index)):
            # "all of asset 0's events of the bar, then asset 1's, and so on"
            for a in self.assets:
                self.bar(a, t)
            # "At the close: equity is marked to the close"
            # SPEC: equity and cash are recorded after every event of the bar (timing="close" fills included).
            value = self.cash
            row = []
            for a in self.assets:
                pos, c = a.position, a.close[t]
                unreal = 0.0 if pos is None else pos.direction * pos.size * (c - pos.entry_price)
                if pos is not None:
                    value += pos.margin + unreal
                row.append(a.realised + (0.0 if pos is None else unreal - pos.entry_fee - pos.funding))
            equity.append(value)
            cash.append(self.cash)
            pnl.append(row)
            self.prev_equity = value
        return equity, cash, pnl

    def bar(self, a: _Asset, t: int) -> None:
        if a.position is not None:
            # the position lives through the whole bar unless it exits (its trailing peak takes the bar's extreme)
            a.position.bar_extreme = a.high[t] if a.position.direction == LONG else a.low[t]
        self.at_open(a, t)
        self.along_path(a, t)
        self.at_close(a, t)

    # ---------------------------------------------------------------- 1. at the open
    def at_open(self, a: _Asset, t: int) -> None:
        o = a.open[t]
        pos = a.position
        # 1a. "if a funding time falls in [open_t, open_t+1), the position pays size * open_price * rate
        # (a long pays a positive rate, a short receives it)"; "cash -= s_pos * q * open * rate, recorded on the trade".
        # SPEC: the position held at the open before anything else pays it; one opened at this open does not.
        if pos is not None and a.funding[t] != 0.0:
            amount = pos.direction * pos.size * o * a.funding[t]
            self.cash -= amount
            pos.funding += amount
        # 1b. "protective levels (liquidation, stop-loss, trailing stop, take-profit) crossed by a gap fire at the open
        # price. If several are crossed, the first in that list wins."
        if pos is not None:
            for level in self.protective_levels(a, t):
                # SPEC: take-profit counts as gapped when the open is AT or beyond it (like a limit entry's
                # "marketable at the open (long: open <= limit)"); stops touch, so at-or-beyond too.
                if _beyond(o, level, strict=False):
                    self.exit(a, t, o, maker=False, reason=level.name)  # "gap -> open", taker
                    break
        # 1c. "signal-driven market orders from bar t-1 fill at the open: exits first, then entries."
        orders, a.market = a.market, None
        if orders is not None:
            if orders.exit and a.position is not None:  # it may already be gone (1b)
                self.exit(a, t, o, maker=False, reason="signal")
            if orders.entry:
                # SPEC: an exit at this open (1b or 1c) does not block an entry at this open (a reversal still reverses).
                assert a.position is None, "an entry signal while in that direction is ignored, so none can be open here"
                self.enter(a, t, orders.entry, o, maker=False, kind="market", signal_bar=orders.signal_bar,
                           atr_signal=orders.atr, bar_extreme=a.high[t] if orders.entry == LONG else a.low[t])
        # 1d. "pending limit/stop entries that are marketable at the open fill at the open"
        p = a.pending
        if p is not None and a.position is None:
            extreme = a.high[t] if p.direction == LONG else a.low[t]
            if p.kind == "stop_limit" and not p.triggered:
                if _beyond(o, self.entry_level(p), strict=False):  # the stop is gapped: triggered at the open
                    # "After the trigger the limit is marketable if the limit is at or beyond the trigger price: it fills at
                    # the trigger price (or the open if gapped, but never worse than the limit) as a taker"
                    if p.direction * (p.limit - o) >= 0:
                        self.fill_pending(a, t, o, maker=False, bar_extreme=extreme)
                    else:
                        # "If the open gaps beyond the limit, it rests as a limit (maker, trade-through rule)."
                        p.triggered = True
            elif _beyond(o, self.entry_level(p), strict=False):
                # limit: "Marketable at the open (long: open <= limit) -> fills at the open as a taker."
                # stop: "gapped at the open -> fills at the open"; triggered stop_limit: a limit (see above).
                self.fill_pending(a, t, o, maker=False, bar_extreme=extreme)

    # ---------------------------------------------------------------- 2. along the three segments
    def along_path(self, a: _Asset, t: int) -> None:
        if a.position is None and a.pending is None:
            return
        # SPEC: the path is chosen once, after the open's events, from the position held then (flat: default rule).
        direction = 0 if a.position is None else a.position.direction
        pts = path_points(a.open[t], a.high[t], a.low[t], a.close[t], self.o.path, direction)
        seg, x = 0, pts[0]  # the cursor: segment index and price where the path continues
        exited = False
        while True:
            if a.position is not None:
                levels = self.protective_levels(a, t)
            elif a.pending is not None and not exited:  # "After an exit inside the bar, nothing re-enters in that bar."
                levels = [self.entry_level(a.pending)]
            else:
                return
            # "Within a segment, the level met first along the segment's direction fires first"; ties between levels met
            # at the same point go by the priority list (liquidation, stop-loss, trailing stop, take-profit).
            hit = None
            for k in range(seg, 3):
                start = x if k == seg else pts[k]
                hits = []
                for level in levels:
                    met = _meet(level, start, pts[k + 1])
                    if met is not None:
                        hits.append((abs(met[0] - pts[k]), level.priority, met, level))
                if hits:
                    _, _, (price, at_start), level = min(hits, key=lambda h: (h[0], h[1]))
                    hit = (k, price, at_start, level)
                    break
            if hit is None:
                return
            seg, x, at_start, level = hit
            if level.name == "entry":
                p = a.pending
                long_ = p.direction == LONG
                # the rest of the path after the fill point: its extreme feeds the trailing peak at the close
                rest = [x, *pts[seg + 1:]]
                extreme = max(rest) if long_ else min(rest)
                if p.kind == "stop_limit" and not p.triggered:
                    # "After the trigger the limit is marketable if the limit is at or beyond the trigger price: it fills at
                    # the trigger price ... as a taker"
                    if p.direction * (p.limit - x) >= 0:
                        self.fill_pending(a, t, x, maker=False, bar_extreme=extreme)
                    else:  # (only reachable when the trigger point is beyond the limit) it rests as a limit
                        p.triggered = True
                elif level.through and not at_start:
                    # limit: "fills only if the price trades THROUGH it ..., at the limit price, as a maker"
                    self.fill_pending(a, t, level.price, maker=True, bar_extreme=extreme)
                else:
                    # stop: "Triggers when the path reaches it (touch is enough); ... else at the stop price; as a taker".
                    # SPEC: a limit already strictly beyond at the cursor (unreachable with costs >= 0) is marketable: taker.
                    self.fill_pending(a, t, x, maker=False, bar_extreme=extreme)
                # "After an entry fills inside the bar, its protective orders are live for the rest of the path from the
                # fill point on." SPEC: a stop already met at the fill point fires there at once (taker, at that price).
            else:
                # take-profit: "Trade-through rule, maker"; stops, trailing stop, liquidation: "touch triggers; taker".
                maker = level.through and not at_start
                self.exit(a, t, level.price if maker else x, maker=maker, reason=level.name)
                exited = True

    # ---------------------------------------------------------------- 3. at the close
    def at_close(self, a: _Asset, t: int) -> None:
        pos = a.position
        # "trailing-stop peaks take the bar's high (long) or low (short)"
        # SPEC: only the part of the bar the position lived through: all of it when it was open at the bar's open, the
        # rest of the path after the fill point for an entry inside the bar, nothing for an entry at this close.
        if pos is not None and pos.bar_extreme is not None:
            pos.peak = max(pos.peak, pos.bar_extreme) if pos.direction == LONG else min(pos.peak, pos.bar_extreme)
            pos.bar_extreme = None
        self.signals_to_orders(a, t)
        # "pending entries whose time in force ended are cancelled" ("ioc": only the first bar it is live; N: after N
        # bars live). An order created at bar s is live from bar s+1.
        # SPEC: in the listed order, after the signals: a same-direction entry signal on the expiry bar is ignored.
        p = a.pending
        if p is not None and self.o.tif_bars > 0 and t - p.signal_bar >= self.o.tif_bars:
            a.pending = None

    def signals_to_orders(self, a: _Asset, t: int) -> None:
        el, xl, es, xs = a.signals[t]
        # "If an entry and the exit of the SAME direction are both true on one bar, both are ignored (conflict)."
        # SPEC: this rule is applied first, then the entry_long/entry_short conflict on what is left.
        if el and xl:
            el = xl = False
        if es and xs:
            es = xs = False
        # "exit_long closes a long; exit_short closes a short"; "entry_short while long closes the long first (a
        # reversal), and vice versa."
        close_long, close_short = xl or es, xs or el
        # "if both entry_long and entry_short are true on one bar, neither entry is taken (conflict); the exits they
        # imply are still taken." SPEC: the implied exits also cancel a pending entry (next rule).
        if el and es:
            el = es = False
        # "a pending (unfilled) entry order is cancelled by an exit signal of its direction or by an entry signal of the
        # opposite direction"
        p = a.pending
        if p is not None and (close_long if p.direction == LONG else close_short):
            a.pending = None
        pos = a.position
        exit_now = pos is not None and (close_long if pos.direction == LONG else close_short)
        entry = LONG if el else SHORT if es else 0
        # "an entry signal while already in that direction, or while an entry order is pending, is ignored."
        # SPEC: an entry signal that cancelled an opposite pending entry (above) places its own order.
        if entry and ((pos is not None and pos.direction == entry) or a.pending is not None):
            entry = 0
        atr_now = a.atr[t] if a.atr is not None else math.nan
        if entry and self.needs_atr and math.isnan(atr_now):
            entry = 0  # SPEC: ATR of the signal bar is NaN: the entry is skipped (see the module docstring)
        market = self.o.entry == "market"
        if self.o.timing == "close":
            # "timing='close' fills signal-driven MARKET orders at bar t's close instead; everything else (limit/stop
            # entries, protective orders) then starts at bar t+1."
            if exit_now:
                self.exit(a, t, a.close[t], maker=False, reason="signal")
            if entry and market:
                # SPEC: sizing uses equity at the previous bar's close, as for any fill on bar t.
                self.enter(a, t, entry, a.close[t], maker=False, kind="market", signal_bar=t, atr_signal=atr_now,
                           bar_extreme=None)
        elif t + 1 == len(self.index):
            return  # SPEC: signals of the last bar have no next open: they create nothing
        elif exit_now or (entry and market):
            a.market = MarketOrders(exit=exit_now, entry=entry if market else 0, signal_bar=t, atr=atr_now)
        if entry and not market:
            a.pending = self.new_pending(a, t, entry, atr_now)

    def new_pending(self, a: _Asset, t: int, direction: int, atr_signal: float) -> PendingOrder:
        c, f, kind = a.close[t], self.o.entry_offset, self.o.entry
        if kind == "limit":
            # "a long limit is placed at close_t * (1 - f), a short limit at close_t * (1 + f)"
            return PendingOrder(direction, kind, c * (1 - direction * f), None, t, atr_signal)
        stop = c * (1 + direction * f)  # stop: "a long stop at close_t * (1 + f) (a breakout), short at close_t * (1 - f)"
        limit = stop * (1 + direction * self.o.limit_offset) if kind == "stop_limit" else None  # "(long: above the stop)"
        return PendingOrder(direction, kind, stop, limit, t, atr_signal)

    # ---------------------------------------------------------------- levels
    @property
    def needs_atr(self) -> bool:
        o = self.o
        return o.stop_loss_atr is not None or o.trailing_atr is not None

    @staticmethod
    def entry_level(p: PendingOrder) -> Level:
        if p.kind == "limit" or (p.kind == "stop_limit" and p.triggered):
            # a long (buy) limit is met when the price trades strictly below it; a short (sell) limit, above it
            price = p.price if p.kind == "limit" else p.limit
            return Level("entry", price, move=-p.direction, through=True, priority=len(PROTECTIVE))
        # stop (and stop_limit's trigger): a long stop is reached by a rising price (touch), a short one by a falling price
        return Level("entry", p.price, move=p.direction, through=False, priority=len(PROTECTIVE))

    def protective_levels(self, a: _Asset, t: int) -> list[Level]:
        """The open position's levels in the spec's priority order: liquidation, stop-loss, trailing stop, take-profit."""
        pos = a.position
        d = pos.direction
        adverse = -d  # stops of a long are met by a falling price
        levels = [Level("liquidation", pos.liquidation, adverse, False, 0)]
        if pos.stop_loss is not None:
            levels.append(Level("stop_loss", pos.stop_loss, adverse, False, 1))
        trail = self.trailing_level(a, t)
        if trail is not None:
            levels.append(Level("trailing_stop", trail, adverse, False, 2))
        if pos.take_profit is not None:
            levels.append(Level("take_profit", pos.take_profit, d, True, 3))  # a resting limit exit: trade-through
        return levels

    def trailing_level(self, a: _Asset, t: int) -> float | None:
        # "level = peak * (1 - ts) (long), trough * (1 + ts) (short), or peak - m * ATR; ... the level is constant within a
        # bar. For ATR stops the ATR is the one of the bar before"
        pos = a.position
        if self.o.trailing_stop is not None:
            return pos.peak * (1 - pos.direction * self.o.trailing_stop)
        if self.o.trailing_atr is not None:
            prev_atr = a.atr[t - 1] if t >= 1 else math.nan
            return None if math.isnan(prev_atr) else pos.peak - pos.direction * self.o.trailing_atr * prev_atr
        return None

    # ---------------------------------------------------------------- fills
    def fill_cost(self, a: _Asset, t: int, p: float, side: int, q: float, maker: bool) -> tuple[float, float, float, float, float]:
        """(price, fee, spread, slippage, impact) of a fill at reference price p, side +1 buy / -1 sell, quantity q."""
        costs = a.costs
        if maker:
            # "Maker fills: price = level, fee = maker_fee * price * q, no other component."
            return p, costs.maker_fee * p * q, 0.0, 0.0, 0.0
        # "cost_frac = half_spread[t] + slippage[t] + impact_k * sigma[t] * sqrt(q / adv[t]);
        #  price = p * (1 + s * cost_frac); fee = taker_fee * price * q"
        impact = costs.impact_k * a.sigma[t] * math.sqrt(q / a.adv[t]) if costs.impact_k else 0.0
        price = p * (1 + side * (a.half_spread[t] + a.slippage[t] + impact))
        # "spread = half_spread*p*q, slippage = slippage*p*q, impact = impact*p*q"
        return price, costs.taker_fee * price * q, a.half_spread[t] * p * q, a.slippage[t] * p * q, impact * p * q

    def quantity(self, a: _Asset, t: int, p: float, atr_signal: float) -> float:
        """Entry quantity at reference price p ("Sizing"); NaN when it cannot be sized (then the entry is skipped)."""
        s, eq = self.s, self.prev_equity  # "equity is the total account equity at the previous bar's close"
        if s.mode == "units":
            return s.value  # "units: q = value."
        if s.mode == "amount":
            return s.value / p  # "amount: q = value / p"
        if s.mode == "percent":
            return s.value * eq * s.leverage / p  # "margin = value * equity; q = margin * leverage / p."
        if s.mode == "risk":
            # "q = value * equity / d where d is the stop distance in price (stop_loss * p or stop_loss_atr * ATR)"
            d = self.o.stop_loss * p if self.o.stop_loss is not None else self.o.stop_loss_atr * atr_signal
            return s.value * eq / d if d > 0 else math.nan  # SPEC: a zero stop distance cannot be sized: skipped
        # vol_target: "notional = equity * value / (vol[t] * sqrt(bars_per_year)); capped at equity * leverage"
        cap = eq * s.leverage
        sigma = a.vol[t]
        if math.isnan(sigma):
            return math.nan  # "entries before it exists are skipped"
        notional = min(eq * s.value / (sigma * math.sqrt(self.bpy)), cap) if sigma > 0 else cap  # SPEC: vol 0 -> the cap
        return notional / p

    def enter(self, a: _Asset, t: int, direction: int, p: float, *, maker: bool, kind: str, signal_bar: int,
              atr_signal: float, bar_extreme: float | None) -> None:
        q = self.quantity(a, t, p, atr_signal)
        if not q > 0:
            return
        # "Participation cap: q is cut to participation_cap * adv[t]; a cut entry fills only that much."
        # SPEC: it applies to every entry fill (taker or maker) and never to exits; order: size, cap, cash, min_notional.
        q = min(q, a.costs.participation_cap * a.adv[t])
        lev = self.s.leverage
        price, fee, spread, slip, impact = self.fill_cost(a, t, p, direction, q, maker)
        # "Margin needed = q * price / leverage + fee. If it exceeds the cash, q is scaled once by cash / needed and price
        # and fee are recomputed for the smaller q" (SPEC: once only; for a short the smaller impact raises the price, so
        # the margin may exceed the cash by a hair).
        needed = q * price / lev + fee
        if needed > self.cash:
            q = q * self.cash / needed
            if not q > 0:
                return
            price, fee, spread, slip, impact = self.fill_cost(a, t, p, direction, q, maker)
        if q * p < self.s.min_notional:  # "Orders with q * p below min_notional are skipped."
            return
        margin = q * price / lev  # "margin = q * entry_price / leverage"
        self.cash -= margin + fee  # "Opening: cash -= margin + fee."
        o, e = self.o, price  # "`entry_price` in the rules above is the executed entry price (costs included)."
        stop = None
        if o.stop_loss is not None:
            stop = e * (1 - direction * o.stop_loss)  # "entry_price * (1 - sl)" long, "(1 + sl)" short
        elif o.stop_loss_atr is not None:
            stop = e - direction * o.stop_loss_atr * atr_signal  # "entry_price -/+ m * ATR; ATR as of the signal bar"
        take = e * (1 + direction * o.take_profit) if o.take_profit is not None else None  # "(1 + tp) long, (1 - tp) short"
        mmr = self.s.maintenance_margin
        # "Long liquidation price e * (1 - 1/L) / (1 - mmr); short e * (1 + 1/L) / (1 + mmr)"
        liq = e * (1 - 1 / lev) / (1 - mmr) if direction == LONG else e * (1 + 1 / lev) / (1 + mmr)
        self.seq += 1
        # "peak starts at the entry price"
        a.position = Position(direction, q, e, t, margin, fee, spread, slip, impact, stop, take, liq, e, bar_extreme, self.seq)
        self.log(a, t, direction, "entry", kind, price, q, fee, maker)

    def fill_pending(self, a: _Asset, t: int, p: float, *, maker: bool, bar_extreme: float) -> None:
        order, a.pending = a.pending, None  # SPEC: an order that fills too small (skipped) is consumed all the same
        self.enter(a, t, order.direction, p, maker=maker, kind=order.kind, signal_bar=order.signal_bar,
                   atr_signal=order.atr, bar_extreme=bar_extreme)

    def exit(self, a: _Asset, t: int, p: float, *, maker: bool, reason: str) -> None:
        pos = a.position
        d, q = pos.direction, pos.size
        price, fee, spread, slip, impact = self.fill_cost(a, t, p, -d, q, maker)
        # "Closing: cash += margin + s_pos * q * (exit - entry) - fee; for a liquidation the amount returned is floored
        # at 0 (the loss is capped at the margin)."
        returned = pos.margin + d * q * (price - pos.entry_price) - fee
        if reason == "liquidation":
            returned = max(returned, 0.0)
        self.cash += returned
        # "Trade net_pnl = (cash returned at exit - margin) - entry_fee - funding"
        net = returned - pos.margin - pos.entry_fee - pos.funding
        a.realised += net
        self.record(a, pos, t, price, fee, (spread, slip, impact), net, reason, is_open=False)
        a.position = None
        self.log(a, t, -d, "exit", reason, price, q, fee, maker)

    # ---------------------------------------------------------------- records
    def record(self, a: _Asset, pos: Position, t: int, price: float, fee: float, costs: tuple[float, float, float],
               net: float, reason: str, is_open: bool) -> None:
        self.trades.append({
            "asset": a.name, "direction": pos.direction, "entry_bar": pos.entry_bar, "exit_bar": t,
            "entry_time": self.index[pos.entry_bar], "exit_time": self.index[t], "entry_price": pos.entry_price,
            "exit_price": price, "size": pos.size, "entry_fee": pos.entry_fee, "exit_fee": fee,
            "spread_cost": pos.spread + costs[0], "slippage_cost": pos.slippage + costs[1], "impact_cost": pos.impact + costs[2],
            "funding": pos.funding, "gross_pnl": pos.direction * pos.size * (price - pos.entry_price), "net_pnl": net,
            "exit_reason": reason, "is_open": is_open, "_asset_order": self.assets.index(a), "_seq": pos.seq,
        })

    def log(self, a: _Asset, t: int, side: int, kind: str, reason: str, price: float, q: float, fee: float, maker: bool) -> None:
        self.fills.append({"bar": t, "time": self.index[t], "asset": a.name, "side": side, "kind": kind, "reason": reason,
                           "price": price, "size": q, "fee": fee, "maker": maker})

    def close_open_positions(self) -> None:
        # "A position still open at the last bar stays open: its trade is reported with is_open=True, exit price = last
        # close, no exit costs."
        last = len(self.index) - 1
        for a in self.assets:
            pos = a.position
            if pos is not None:
                c = a.close[last]
                net = pos.direction * pos.size * (c - pos.entry_price) - pos.entry_fee - pos.funding
                self.record(a, pos, last, c, 0.0, (0.0, 0.0, 0.0), net, "end", is_open=True)


# -------------------------------------------------------------------- inputs
def _as_dict(value: Any, what: str, names: list[str], single: bool) -> dict[str, Any]:
    if single:
        if isinstance(value, Mapping):
            raise ConfigError(f"{what} is a dict but the candles are one frame; pass one {what} or a dict of candles")
        return {names[0]: value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"the candles are a dict of {len(names)} frames; pass {what} as a dict with the same keys")
    missing = [n for n in names if n not in value]
    extra = [k for k in value if k not in names]
    if missing or extra:
        raise ConfigError(f"{what} keys do not match the candles: missing {missing}, extra {extra}; use the same symbols")
    return {n: value[n] for n in names}


def _signals(frame: Any, index: pd.DatetimeIndex, name: str) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"signals for {name!r} must be a DataFrame with columns {', '.join(SIGNALS)}, got {type(frame).__name__}")
    if not frame.index.equals(index):
        raise DataError(f"signals for {name!r} are not aligned to the candles' index; use signals.reindex(candles.index)")
    out = pd.DataFrame(index=index)
    for col in SIGNALS:  # missing columns and NaN are False
        if col in frame.columns:
            values = frame[col]
            out[col] = np.where(values.isna().to_numpy(), False, values.to_numpy(dtype=object)).astype(bool)
        else:
            out[col] = False
    return out


def _costs(value: Any, candles: pd.DataFrame, name: str) -> Any:
    from qlab import costs as qcosts

    if value is None:  # no costs, spelled out
        value = qcosts.CostModel.none()
    if isinstance(value, qcosts.CostModel):
        value = value.prepare(candles)
    for k in ("half_spread", "slippage", "sigma", "adv", "funding"):
        arr = getattr(value, k, None)
        if arr is None or len(arr) != len(candles):
            raise ConfigError(f"costs for {name!r}: {k} must have {len(candles)} values (one per bar); use CostModel.prepare(candles)")
    return value


def reference_backtest(candles: Any, signals: Any, *, orders: OrderSpec = OrderSpec(), size: SizeSpec = SizeSpec(),  # noqa: B008
                       costs: Any, cash: float = 10_000.0, timeframe: str | None = None) -> ReferenceResult:
    """Backtest by the plain loop. `candles`: one Candles frame or {symbol: Candles} sharing one cash balance (identical
    indexes); `signals`: boolean frames (entry_long, exit_long, entry_short, exit_short; missing = False), same shape;
    `costs`: CostArrays (or a CostModel, or None for none), or a dict of them per symbol; `timeframe` for vol_target."""
    if not isinstance(orders, OrderSpec) or not isinstance(size, SizeSpec):
        raise ConfigError("orders must be an OrderSpec and size a SizeSpec (from qlab.engine.orders)")
    if size.mode == "risk" and orders.stop_loss is None and orders.stop_loss_atr is None:
        raise ConfigError("size mode 'risk' needs a stop-loss: set OrderSpec(stop_loss=...) or stop_loss_atr=...")
    if not (cash > 0 and math.isfinite(cash)):
        raise ConfigError(f"cash={cash!r} must be a positive number")
    single = not isinstance(candles, Mapping)
    frames = {"asset": candles} if single else dict(candles)
    if not frames:
        raise ConfigError("no candles given; pass a Candles frame or a non-empty dict of them")
    names = list(frames)
    index = None
    for name, frame in frames.items():
        validate_candles(frame, where=f"the candles of {name!r}")
        if index is None:
            index = frame.index
        elif not frame.index.equals(index):
            raise DataError(f"the candles of {name!r} do not have the same index as those of {names[0]!r}; "
                            "align them first (e.g. an inner join on timestamp)")
    sig = _as_dict(signals, "signals", names, single)
    cst = _as_dict(costs, "costs", names, single)
    bpy = bars_per_year(timeframe or infer_timeframe(index)) if size.mode == "vol_target" else None
    need_atr = orders.stop_loss_atr is not None or orders.trailing_atr is not None
    assets = []
    for name, frame in frames.items():
        atr_values = atr(frame["high"].to_numpy(), frame["low"].to_numpy(), frame["close"].to_numpy(), orders.atr_period) \
            if need_atr else None
        assets.append(_Asset(name, frame, _signals(sig[name], index, name), _costs(cst[name], frame, name), atr_values))
    if size.mode == "vol_target":
        for a in assets:
            a.vol = past_volatility(a.close, size.vol_window)
    run = _Run(assets, index, orders, size, cash, bpy)
    equity, cash_, pnl = run.run()
    run.close_open_positions()
    trades = pd.DataFrame(run.trades, columns=[*TRADE_COLUMNS, "_asset_order", "_seq"])
    trades = trades.sort_values(["entry_bar", "_asset_order", "_seq"], kind="stable").drop(columns=["_asset_order", "_seq"])
    trades = trades.reset_index(drop=True).astype({"direction": "int64", "entry_bar": "int64", "exit_bar": "int64", "is_open": bool})
    return ReferenceResult(
        trades=trades,
        equity=pd.Series(equity, index=index, name="equity"),
        cash=pd.Series(cash_, index=index, name="cash"),
        asset_pnl=pd.DataFrame(pnl, index=index, columns=names),
        orders=pd.DataFrame(run.fills, columns=list(ORDER_COLUMNS)),
    )


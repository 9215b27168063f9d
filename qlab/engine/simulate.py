"""The fast engine: one numba kernel that runs the fill model of `qlab.engine.orders` over arrays.

vectorbt's `from_signals` lacks what the fill model needs (stop-limit and trade-through limits on an
OHLC path, square-root impact per fill, isolated-margin liquidation, per-trade cost breakdown), so the
event loop is a numba kernel; vectorbt remains the cross-check in the tests and the benchmarks.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# entry types, size modes and exit reasons as integers (positions in the tuples of orders.py)
MARKET, LIMIT, STOP, STOP_LIMIT = 0, 1, 2, 3
UNITS, AMOUNT, PERCENT, RISK, VOL_TARGET = 0, 1, 2, 3, 4
R_SIGNAL, R_STOP_LOSS, R_TAKE_PROFIT, R_TRAILING, R_LIQUIDATION, R_END = 0, 1, 2, 3, 4, 5

# columns of the trade records matrix
TRADE_FIELDS = (
    "asset", "direction", "entry_bar", "exit_bar", "entry_price", "exit_price", "size", "entry_fee", "exit_fee",
    "spread_cost", "slippage_cost", "impact_cost", "funding", "gross_pnl", "net_pnl", "exit_reason", "is_open",
)
(F_ASSET, F_DIR, F_EBAR, F_XBAR, F_EPRICE, F_XPRICE, F_SIZE, F_EFEE, F_XFEE, F_SPREAD, F_SLIP, F_IMPACT,
 F_FUNDING, F_GROSS, F_NET, F_REASON, F_OPEN) = range(len(TRADE_FIELDS))

# columns of the fills log: kind 0 = entry (reason = the order type), 1 = exit (reason = the exit reason)
FILL_FIELDS = ("bar", "asset", "side", "kind", "reason", "price", "size", "fee", "maker")

# per-asset position state (columns of a float matrix, so the kernel carries one array)
(P_DIR, P_Q, P_ENTRY, P_MARGIN, P_EFEE, P_SPREAD, P_SLIP, P_IMPACT, P_FUNDING, P_EBAR, P_SL, P_TP, P_PEAK,
 P_TRAIL, P_LIQ, P_AT_OPEN) = range(16)
# per-asset pending entry state
(Q_DIR, Q_TYPE, Q_LEVEL, Q_LIMIT, Q_TRIGGERED, Q_LIVE, Q_SIGBAR) = range(7)

# levels met at the same point fire in this order
PRIORITY_LIQ, PRIORITY_SL, PRIORITY_TRAIL, PRIORITY_TP = 0, 1, 2, 3


@njit(cache=True)
def _impact_frac(k: float, sigma: float, q: float, adv: float) -> float:
    return k * sigma * np.sqrt(q / adv) if k > 0.0 else 0.0


@njit(cache=True)
def _record_entry(pos, a, d, q, price, fee, spread, slip, impact, bar, lev, mmr):
    """Open a position: the margin, the fee and the entry cost components."""
    pos[a, P_DIR] = d
    pos[a, P_Q] = q
    pos[a, P_ENTRY] = price
    pos[a, P_MARGIN] = q * price / lev
    pos[a, P_EFEE] = fee
    pos[a, P_SPREAD] = spread
    pos[a, P_SLIP] = slip
    pos[a, P_IMPACT] = impact
    pos[a, P_FUNDING] = 0.0
    pos[a, P_EBAR] = bar
    pos[a, P_PEAK] = price
    if d > 0:
        pos[a, P_LIQ] = price * (1.0 - 1.0 / lev) / (1.0 - mmr)
    else:
        pos[a, P_LIQ] = price * (1.0 + 1.0 / lev) / (1.0 + mmr)


@njit(cache=True)
def _record_fill(fills, nfill, bar, a, side, kind, reason, price, q, fee, maker):
    n = nfill[0]
    fills[n, 0], fills[n, 1], fills[n, 2], fills[n, 3], fills[n, 4] = bar, a, side, kind, reason
    fills[n, 5], fills[n, 6], fills[n, 7], fills[n, 8] = price, q, fee, 1.0 if maker else 0.0
    nfill[0] = n + 1


@njit(cache=True)
def _trail_level(pos, a, trail_frac, trail_atr, atr_prev):
    """The trailing-stop level for this bar (constant within the bar); NaN when there is none."""
    d = pos[a, P_DIR]
    if not np.isnan(trail_frac):
        return pos[a, P_PEAK] * (1.0 - d * trail_frac)
    if not np.isnan(trail_atr) and not np.isnan(atr_prev):
        return pos[a, P_PEAK] - d * trail_atr * atr_prev
    return np.nan


@njit(cache=True)
def simulate_nb(
    open_, high, low, close, el, xl, es, xs, atr, vol,
    half_spread, slippage, sigma, adv, funding, maker_fee, taker_fee, impact_k, part_cap,
    entry_type, entry_offset, limit_offset, tif_bars, sl_frac, sl_atr, tp_frac, trail_frac, trail_atr,
    timing_close, pessimistic,
    size_mode, size_value, leverage, mmr, min_notional, bars_per_year, cash0, max_entries,
):
    """Run the fill model over [T, A] arrays; returns (trades, equity, cash, asset_pnl, position_value, fills)."""
    T, A = close.shape
    # every trade starts with an entry, and entries come only from entry signals: max_entries bounds both tables
    trades = np.empty((max_entries + A, len(TRADE_FIELDS)))
    fills = np.empty((2 * max_entries + 2 * A, len(FILL_FIELDS)))
    nfill = np.zeros(1, dtype=np.int64)
    n_trades = 0
    equity = np.empty(T)
    cash_out = np.empty(T)
    asset_pnl = np.empty((T, A))
    position_value = np.empty((T, A))
    pos = np.zeros((A, 16))
    pend = np.zeros((A, 7))
    dec = np.zeros((A, 3))  # decisions from the last close's signals: exit, cancel pending, entry direction
    realised = np.zeros(A)
    cash = cash0
    equity_prev = cash0

    for i in range(T):
        for a in range(A):
            o, h, lo_, c = open_[i, a], high[i, a], low[i, a], close[i, a]
            exited_this_bar = False

            # 1a. funding at the open
            if pos[a, P_DIR] != 0 and funding[i, a] != 0.0:
                pay = pos[a, P_DIR] * pos[a, P_Q] * o * funding[i, a]
                cash -= pay
                pos[a, P_FUNDING] += pay

            # 1b. protective levels crossed by a gap fire at the open
            if pos[a, P_DIR] != 0:
                reason = _gap_exit_reason(pos, a, o, trail_frac, trail_atr, atr[i - 1, a] if i > 0 else np.nan)
                if reason >= 0:
                    cash, n_trades = _exit(pos, a, o, i, reason, False, cash, trades, n_trades, realised,
                                           half_spread[i, a], slippage[i, a], sigma[i, a], adv[i, a], impact_k[a],
                                           taker_fee[a], maker_fee[a], fills, nfill)

            # 1c. signal-driven orders from bar i-1 (default timing)
            # (the signals were read at bar i-1's close, against the state then; see _decide)
            if not timing_close and i > 0 and (dec[a, 0] > 0 or dec[a, 1] > 0 or dec[a, 2] != 0):
                cash, n_trades = _act(
                    i - 1, i, a, o, dec, atr, vol, pos, pend, fills, nfill, trades, n_trades, realised, cash, equity_prev,
                    close, half_spread, slippage, sigma, adv, maker_fee, taker_fee, impact_k, part_cap,
                    entry_type, entry_offset, limit_offset, sl_frac, sl_atr, tp_frac,
                    size_mode, size_value, leverage, mmr, min_notional, bars_per_year)

            # 1d. pending entries marketable at the open
            if pos[a, P_DIR] == 0 and pend[a, Q_DIR] != 0:
                d = pend[a, Q_DIR]
                marketable = False
                kind = int(pend[a, Q_TYPE])
                if kind == LIMIT or (kind == STOP_LIMIT and pend[a, Q_TRIGGERED] > 0):
                    lim = pend[a, Q_LEVEL] if kind == LIMIT else pend[a, Q_LIMIT]
                    marketable = (o <= lim) if d > 0 else (o >= lim)
                elif kind == STOP:
                    marketable = (o >= pend[a, Q_LEVEL]) if d > 0 else (o <= pend[a, Q_LEVEL])
                else:  # stop_limit not yet triggered
                    if (o >= pend[a, Q_LEVEL]) if d > 0 else (o <= pend[a, Q_LEVEL]):
                        pend[a, Q_TRIGGERED] = 1.0
                        marketable = (o <= pend[a, Q_LIMIT]) if d > 0 else (o >= pend[a, Q_LIMIT])
                if marketable:
                    cash = _enter(pos, pend, a, d, o, False, int(pend[a, Q_TYPE]), fills, nfill, i, int(pend[a, Q_SIGBAR]),
                                  cash, equity_prev, atr, vol,
                                  half_spread, slippage, sigma, adv, maker_fee, taker_fee, impact_k, part_cap,
                                  sl_frac, sl_atr, tp_frac, size_mode, size_value, leverage, mmr, min_notional,
                                  bars_per_year)
                    pend[a, Q_DIR] = 0.0

            # a position entered at this open whose protective level is already met there exits at once
            if pos[a, P_DIR] != 0 and pos[a, P_EBAR] == i:
                reason = _gap_exit_reason(pos, a, o, trail_frac, trail_atr, atr[i - 1, a] if i > 0 else np.nan)
                if reason >= 0:
                    cash, n_trades = _exit(pos, a, o, i, reason, False, cash, trades, n_trades, realised,
                                           half_spread[i, a], slippage[i, a], sigma[i, a], adv[i, a], impact_k[a],
                                           taker_fee[a], maker_fee[a], fills, nfill)

            # a position held after the open stage takes this bar's extreme into its trailing peak
            pos[a, P_AT_OPEN] = 1.0 if pos[a, P_DIR] != 0 else 0.0
            mid_peak = np.nan  # for an entry inside the bar: the extreme of the rest of the path

            # 2. the path through the bar
            d_now = pos[a, P_DIR]
            high_first = (h - o) <= (o - lo_)
            if pessimistic and d_now != 0:
                high_first = d_now < 0
            e1 = h if high_first else lo_  # the path's corners: o -> e1 -> e2 -> c (scalars: no allocation per bar)
            e2 = lo_ if high_first else h
            atr_prev = atr[i - 1, a] if i > 0 else np.nan
            for seg in range(3 if (pos[a, P_DIR] != 0 or pend[a, Q_DIR] != 0) else 0):
                start = o if seg == 0 else (e1 if seg == 1 else e2)
                end = e1 if seg == 0 else (e2 if seg == 1 else c)
                while True:  # events along this segment, nearest first; an entry restarts the scan at its fill point
                    if pos[a, P_DIR] != 0:
                        best, reason = _first_exit_on(pos, a, start, end, trail_frac, trail_atr, atr_prev)
                        if reason >= 0:
                            maker = reason == R_TAKE_PROFIT
                            cash, n_trades = _exit(pos, a, best, i, reason, maker, cash, trades, n_trades, realised,
                                                   half_spread[i, a], slippage[i, a], sigma[i, a], adv[i, a],
                                                   impact_k[a], taker_fee[a], maker_fee[a], fills, nfill)
                            exited_this_bar = True
                        break
                    if pend[a, Q_DIR] == 0 or exited_this_bar:
                        break
                    level, maker, fired = _pending_fill_on(pend, a, start, end)
                    if not fired:
                        break
                    d = pend[a, Q_DIR]
                    cash = _enter(pos, pend, a, d, level, maker, int(pend[a, Q_TYPE]), fills, nfill, i,
                                  int(pend[a, Q_SIGBAR]), cash, equity_prev, atr, vol,
                                  half_spread, slippage, sigma, adv, maker_fee, taker_fee, impact_k, part_cap,
                                  sl_frac, sl_atr, tp_frac, size_mode, size_value, leverage, mmr, min_notional,
                                  bars_per_year)
                    pend[a, Q_DIR] = 0.0
                    if pos[a, P_DIR] == 0:
                        break
                    mid_peak = level
                    for k in range(seg + 1, 4):
                        corner = e1 if k == 1 else (e2 if k == 2 else c)
                        mid_peak = max(mid_peak, corner) if d > 0 else min(mid_peak, corner)
                    # a protective level already met at the fill point fires there at once
                    reason = _gap_exit_reason(pos, a, level, trail_frac, trail_atr, atr_prev)
                    if reason >= 0:
                        cash, n_trades = _exit(pos, a, level, i, reason, False, cash, trades, n_trades, realised,
                                               half_spread[i, a], slippage[i, a], sigma[i, a], adv[i, a],
                                               impact_k[a], taker_fee[a], maker_fee[a], fills, nfill)
                        exited_this_bar = True
                        break
                    start = level

            # 3. the close. Trailing peaks take the part of the bar the position lived through: the whole
            # bar when held since the open, the rest of the path after a fill inside the bar
            if pos[a, P_DIR] != 0:
                ext = (h if pos[a, P_DIR] > 0 else lo_) if pos[a, P_AT_OPEN] > 0 else mid_peak
                if not np.isnan(ext):
                    pos[a, P_PEAK] = max(pos[a, P_PEAK], ext) if pos[a, P_DIR] > 0 else min(pos[a, P_PEAK], ext)
            # signals of this bar under timing="close"
            # signals of this bar are read now, against the state at the close; with timing="close" they act now,
            # by default at the next open
            if el[i, a] or xl[i, a] or es[i, a] or xs[i, a]:
                _decide(i, a, el, xl, es, xs, atr, pos, pend, dec, sl_atr, trail_atr)
                if timing_close:
                    cash, n_trades = _act(
                        i, i, a, c, dec, atr, vol, pos, pend, fills, nfill, trades, n_trades, realised, cash, equity_prev,
                        close, half_spread, slippage, sigma, adv, maker_fee, taker_fee, impact_k, part_cap,
                        entry_type, entry_offset, limit_offset, sl_frac, sl_atr, tp_frac,
                        size_mode, size_value, leverage, mmr, min_notional, bars_per_year)
            # pending entries: count the bar, expire by time in force (after this bar's signals were read)
            if pend[a, Q_DIR] != 0 and pend[a, Q_SIGBAR] < i:
                pend[a, Q_LIVE] += 1.0
                if tif_bars > 0 and pend[a, Q_LIVE] >= tif_bars:
                    pend[a, Q_DIR] = 0.0

        # 3. mark to the close
        total = cash
        for a in range(A):
            c = close[i, a]
            unreal = 0.0
            if pos[a, P_DIR] != 0:
                unreal = pos[a, P_DIR] * pos[a, P_Q] * (c - pos[a, P_ENTRY])
                total += pos[a, P_MARGIN] + unreal
                position_value[i, a] = pos[a, P_DIR] * pos[a, P_Q] * c
                asset_pnl[i, a] = realised[a] + unreal - pos[a, P_EFEE] - pos[a, P_FUNDING]
            else:
                position_value[i, a] = 0.0
                asset_pnl[i, a] = realised[a]
        equity[i] = total
        cash_out[i] = cash
        equity_prev = total

    # positions still open at the end are reported as open trades
    for a in range(A):
        if pos[a, P_DIR] != 0:
            n_trades = _write_trade(trades, n_trades, pos, a, close[T - 1, a], T - 1, 0.0, 0.0, 0.0, 0.0, R_END, True,
                                    pos[a, P_MARGIN] + pos[a, P_DIR] * pos[a, P_Q] * (close[T - 1, a] - pos[a, P_ENTRY]))
    return trades[:n_trades], equity, cash_out, asset_pnl, position_value, fills[:nfill[0]]


@njit(cache=True)
def _gap_exit_reason(pos, a, o, trail_frac, trail_atr, atr_prev):
    """Which protective level a gap at the open has crossed, in priority order; -1 when none."""
    d = pos[a, P_DIR]
    if (o <= pos[a, P_LIQ]) if d > 0 else (o >= pos[a, P_LIQ]):
        return R_LIQUIDATION
    sl = pos[a, P_SL]
    if not np.isnan(sl) and ((o <= sl) if d > 0 else (o >= sl)):
        return R_STOP_LOSS
    tr = _trail_level(pos, a, trail_frac, trail_atr, atr_prev)
    if not np.isnan(tr) and ((o <= tr) if d > 0 else (o >= tr)):
        return R_TRAILING
    tp = pos[a, P_TP]
    if not np.isnan(tp) and ((o >= tp) if d > 0 else (o <= tp)):
        return R_TAKE_PROFIT
    return -1


@njit(cache=True)
def _first_exit_on(pos, a, start, end, trail_frac, trail_atr, atr_prev):
    """The protective level the segment start->end meets first: (price, reason) or (nan, -1).

    Stops (liquidation, stop-loss, trailing) trigger on touch; a take-profit needs the price to trade
    through it. A level at the segment's start was already checked at the previous point.
    """
    d = pos[a, P_DIR]
    best_dist = np.inf
    best_price = np.nan
    best_reason = -1
    adverse = (end < start) if d > 0 else (end > start)
    if adverse:
        for k in range(3):
            if k == 0:
                x, reason = pos[a, P_LIQ], R_LIQUIDATION
            elif k == 1:
                x, reason = pos[a, P_SL], R_STOP_LOSS
            else:
                x, reason = _trail_level(pos, a, trail_frac, trail_atr, atr_prev), R_TRAILING
            if np.isnan(x):
                continue
            met = (end <= x < start) if d > 0 else (start < x <= end)
            if met:
                dist = abs(start - x)
                if dist < best_dist:
                    best_dist, best_price, best_reason = dist, x, reason
    else:
        tp = pos[a, P_TP]
        if not np.isnan(tp):
            met = (start <= tp < end) if d > 0 else (end < tp <= start)
            if met:
                best_price, best_reason = tp, R_TAKE_PROFIT
    return best_price, best_reason


@njit(cache=True)
def _pending_fill_on(pend, a, start, end):
    """Whether the pending entry fills on the segment start->end: (price, maker, fired)."""
    d = pend[a, Q_DIR]
    kind = int(pend[a, Q_TYPE])
    if kind == LIMIT or (kind == STOP_LIMIT and pend[a, Q_TRIGGERED] > 0):
        lim = pend[a, Q_LEVEL] if kind == LIMIT else pend[a, Q_LIMIT]
        # trade-through: a long limit needs the price strictly below it
        if (end < lim <= start) if d > 0 else (start <= lim < end):
            return lim, True, True
        return np.nan, False, False
    stop = pend[a, Q_LEVEL]
    if (start < stop <= end) if d > 0 else (end <= stop < start):
        if kind == STOP:
            return stop, False, True
        pend[a, Q_TRIGGERED] = 1.0  # stop_limit: the limit is at or beyond the stop, so it is marketable here
        return stop, False, True
    return np.nan, False, False


@njit(cache=True)
def _exit(pos, a, p, i, reason, maker, cash, trades, n_trades, realised, hs, slip, sig, adv_, k, taker, maker_fee, fills, nfill):
    """Close the position of asset a at reference price p; returns (cash, n_trades)."""
    d = pos[a, P_DIR]
    q = pos[a, P_Q]
    if maker:
        price, fee, s_cost, sl_cost, im_cost = p, maker_fee * p * q, 0.0, 0.0, 0.0
    else:
        imp = _impact_frac(k, sig, q, adv_)
        price = p * (1.0 - d * (hs + slip + imp))
        fee = taker * price * q
        s_cost, sl_cost, im_cost = hs * p * q, slip * p * q, imp * p * q
    returned = pos[a, P_MARGIN] + d * q * (price - pos[a, P_ENTRY]) - fee
    if reason == R_LIQUIDATION and returned < 0.0:
        returned = 0.0
    cash += returned
    _record_fill(fills, nfill, i, a, -d, 1, reason, price, q, fee, maker)
    n_trades = _write_trade(trades, n_trades, pos, a, price, i, fee, s_cost, sl_cost, im_cost, reason, False, returned)
    realised[a] += trades[n_trades - 1, F_NET]
    pos[a, P_DIR] = 0.0
    return cash, n_trades


@njit(cache=True)
def _write_trade(trades, n, pos, a, exit_price, i, exit_fee, s_cost, sl_cost, im_cost, reason, is_open, returned):
    d = pos[a, P_DIR]
    q = pos[a, P_Q]
    trades[n, F_ASSET] = a
    trades[n, F_DIR] = d
    trades[n, F_EBAR] = pos[a, P_EBAR]
    trades[n, F_XBAR] = i
    trades[n, F_EPRICE] = pos[a, P_ENTRY]
    trades[n, F_XPRICE] = exit_price
    trades[n, F_SIZE] = q
    trades[n, F_EFEE] = pos[a, P_EFEE]
    trades[n, F_XFEE] = exit_fee
    trades[n, F_SPREAD] = pos[a, P_SPREAD] + s_cost
    trades[n, F_SLIP] = pos[a, P_SLIP] + sl_cost
    trades[n, F_IMPACT] = pos[a, P_IMPACT] + im_cost
    trades[n, F_FUNDING] = pos[a, P_FUNDING]
    trades[n, F_GROSS] = d * q * (exit_price - pos[a, P_ENTRY])
    trades[n, F_NET] = (returned - pos[a, P_MARGIN]) - pos[a, P_EFEE] - pos[a, P_FUNDING]
    if is_open:
        trades[n, F_NET] = trades[n, F_GROSS] - pos[a, P_EFEE] - pos[a, P_FUNDING]
    trades[n, F_REASON] = reason
    trades[n, F_OPEN] = 1.0 if is_open else 0.0
    return n + 1


@njit(cache=True)
def _enter(pos, pend, a, d, p, maker, kind, fills, nfill, i, sig_bar, cash, equity_prev, atr, vol, half_spread, slippage, sigma, adv,
           maker_fee, taker_fee, impact_k, part_cap, sl_frac, sl_atr, tp_frac,
           size_mode, size_value, leverage, mmr, min_notional, bars_per_year):
    """Size and fill an entry of direction d at reference price p (maker: at p exactly); returns cash."""
    atr_sig = atr[sig_bar, a] if sig_bar >= 0 else np.nan
    if not np.isnan(sl_atr) and np.isnan(atr_sig):
        return cash  # an ATR stop cannot be set before ATR exists: the entry is skipped
    # quantity from the reference price
    if size_mode == UNITS:
        q = size_value
    elif size_mode == AMOUNT:
        q = size_value / p
    elif size_mode == PERCENT:
        q = size_value * equity_prev * leverage / p
    elif size_mode == RISK:
        dist = sl_frac * p if not np.isnan(sl_frac) else sl_atr * atr_sig
        if not dist > 0.0:
            return cash
        q = size_value * equity_prev / dist
    else:
        ann = vol[i, a] * np.sqrt(bars_per_year)
        if np.isnan(ann):
            return cash  # no volatility estimate yet: the entry is skipped
        cap = equity_prev * leverage
        q = (min(equity_prev * size_value / ann, cap) if ann > 0.0 else cap) / p
    q = min(q, part_cap[a] * adv[i, a])
    if not q * p >= min_notional or cash <= 0.0:
        return cash
    hs, sl_, sg, av, k = half_spread[i, a], slippage[i, a], sigma[i, a], adv[i, a], impact_k[a]
    for attempt in range(2):
        if maker:
            price, fee = p, maker_fee[a] * p * q
            s_cost, sl_cost, im_cost = 0.0, 0.0, 0.0
        else:
            imp = _impact_frac(k, sg, q, av)
            price = p * (1.0 + d * (hs + sl_ + imp))
            fee = taker_fee[a] * price * q
            s_cost, sl_cost, im_cost = hs * p * q, sl_ * p * q, imp * p * q
        need = q * price / leverage + fee
        if need <= cash or attempt == 1:
            break
        q = q * cash / need
        if not q * p >= min_notional:
            return cash
    _record_entry(pos, a, d, q, price, fee, s_cost, sl_cost, im_cost, i, leverage, mmr)
    _record_fill(fills, nfill, i, a, d, 0, kind, price, q, fee, maker)
    cash -= q * price / leverage + fee
    # protective levels from the executed entry price
    if not np.isnan(sl_frac):
        pos[a, P_SL] = price * (1.0 - d * sl_frac)
    elif not np.isnan(sl_atr):
        pos[a, P_SL] = price - d * sl_atr * atr_sig
    else:
        pos[a, P_SL] = np.nan
    pos[a, P_TP] = price * (1.0 + d * tp_frac) if not np.isnan(tp_frac) else np.nan
    pos[a, P_AT_OPEN] = 0.0
    return cash


@njit(cache=True)
def _decide(t, a, el, xl, es, xs, atr, pos, pend, dec, sl_atr, trail_atr):
    """Read the signals of bar t against the state at its close: exit? cancel the pending entry? enter (+1/-1)?"""
    e_long, x_long, e_short, x_short = el[t, a], xl[t, a], es[t, a], xs[t, a]
    if e_long and x_long:  # same-direction conflict: both ignored
        e_long = False
        x_long = False
    if e_short and x_short:
        e_short = False
        x_short = False
    d = pos[a, P_DIR]
    q = pend[a, Q_DIR]
    exit_now = (d > 0 and (x_long or e_short)) or (d < 0 and (x_short or e_long))
    # pending entries are cancelled by an exit of their direction or an opposite entry
    cancel = (q > 0 and (x_long or e_short)) or (q < 0 and (x_short or e_long))
    entry = 0.0
    if (e_long != e_short) and (d == 0 or exit_now) and (q == 0 or cancel):
        entry = 1.0 if e_long else -1.0
        if (not np.isnan(sl_atr) or not np.isnan(trail_atr)) and np.isnan(atr[t, a]):
            entry = 0.0  # an entry that needs ATR is not created before ATR exists
    dec[a, 0] = 1.0 if exit_now else 0.0
    dec[a, 1] = 1.0 if cancel else 0.0
    dec[a, 2] = entry


@njit(cache=True)
def _act(t, i, a, p, dec, atr, vol, pos, pend, fills, nfill, trades, n_trades, realised, cash, equity_prev,
         close, half_spread, slippage, sigma, adv, maker_fee, taker_fee, impact_k, part_cap,
         entry_type, entry_offset, limit_offset, sl_frac, sl_atr, tp_frac,
         size_mode, size_value, leverage, mmr, min_notional, bars_per_year):
    """Carry out the decisions taken on bar t's signals at reference price p on bar i: exits, cancellations, entries."""
    if dec[a, 0] > 0 and pos[a, P_DIR] != 0:
        cash, n_trades = _exit(pos, a, p, i, R_SIGNAL, False, cash, trades, n_trades, realised,
                               half_spread[i, a], slippage[i, a], sigma[i, a], adv[i, a], impact_k[a],
                               taker_fee[a], maker_fee[a], fills, nfill)
    if dec[a, 1] > 0:
        pend[a, Q_DIR] = 0.0
    d_new = dec[a, 2]
    dec[a, 0] = 0.0
    dec[a, 1] = 0.0
    dec[a, 2] = 0.0
    if d_new == 0.0 or pos[a, P_DIR] != 0 or pend[a, Q_DIR] != 0:
        return cash, n_trades
    if entry_type == MARKET:
        cash = _enter(pos, pend, a, d_new, p, False, MARKET, fills, nfill, i, t, cash, equity_prev, atr, vol,
                      half_spread, slippage, sigma, adv,
                      maker_fee, taker_fee, impact_k, part_cap, sl_frac, sl_atr, tp_frac,
                      size_mode, size_value, leverage, mmr, min_notional, bars_per_year)
        return cash, n_trades
    ref = close[t, a]
    pend[a, Q_DIR] = d_new
    pend[a, Q_TYPE] = entry_type
    pend[a, Q_TRIGGERED] = 0.0
    pend[a, Q_LIVE] = 0.0
    pend[a, Q_SIGBAR] = t
    if entry_type == LIMIT:
        pend[a, Q_LEVEL] = ref * (1.0 - d_new * entry_offset)
    else:
        pend[a, Q_LEVEL] = ref * (1.0 + d_new * entry_offset)
        pend[a, Q_LIMIT] = pend[a, Q_LEVEL] * (1.0 + d_new * limit_offset)
    return cash, n_trades

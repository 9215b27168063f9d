"""Parameter sweeps: many parameter combinations of one strategy in one call, with fused numba kernels.

`sweep_ma_cross` runs the moving-average crossover for every (fast, slow) window pair with fast < slow and
returns one row of metrics per pair. Each distinct window's moving average is computed once (a [W, T]
matrix), then the pairs run in parallel (`prange`), each a lean loop over the bars without per-pair arrays:
flat/long/short state, market fills under the fill model of `qlab.engine.orders` (timing next open or
close), every CostModel cost with the formulas of `qlab.engine.simulate` (fee, half spread, slippage,
square-root impact with the participation cap, funding, the liquidation level), equity marked to each
close and running metrics. The signals are exactly `ma_cross_signals(...)`, and each row equals
`qlab.backtest` on them (tests/engine/test_sweep.py); settings the fast path cannot match exactly are
refused with a ConfigError naming them.

Moving averages are TA-Lib's: SMA its running sum (bit for bit `talib.SMA`), EMA seeded with the SMA of
the first `window` bars, then one fused multiply-add per bar with k = 2 / (window + 1), as TA-Lib's
x86-64 build computes it; window 1 is the close itself. A cross above at bar t: fast > slow at t and
fast <= slow at t-1, all four defined; a cross below mirrors it. Metrics follow `qlab.analytics.metrics`
(simple per-bar returns, Sharpe with ddof=1 annualised by the timeframe, its zero-denominator and ruin
rules, n_trades and win_rate over closed trades, exposure = share of bars holding a position at the close).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from numba import njit, prange, types
from numba.extending import intrinsic

from qlab.costs import CostArrays, resolve_costs
from qlab.data.candles import Candles, bars_per_year, infer_timeframe, validate_candles
from qlab.errors import ConfigError, did_you_mean
from qlab.execution import SIZE_MODES, OrderSpec, SizeSpec

KINDS = ("sma", "ema")
DIRECTIONS = ("long", "short", "both")
SWEEP_SIZE_MODES = ("units", "amount", "percent")
METRICS = ("total_return", "final_equity", "sharpe", "max_drawdown", "n_trades", "win_rate", "fees", "spread",
           "slippage", "impact", "funding", "total_cost", "exposure")
UNITS, AMOUNT, PERCENT = (SIZE_MODES.index(m) for m in SWEEP_SIZE_MODES)
TINY = 1e-12  # as qlab.analytics.metrics: a per-bar std below this is zero


# ---------------------------------------------------------------- moving averages


@njit(cache=True)
def sma_nb(x, window, out):
    """TA-Lib's SMA of x into out (NaN for the first window - 1 bars): a running sum, divided by the window."""
    n = x.shape[0]
    out[:] = np.nan
    if window == 1:
        out[:] = x
        return
    if n < window:
        return
    total = 0.0
    for i in range(window - 1):
        total += x[i]
    for i in range(window - 1, n):
        total += x[i]
        value = total
        total -= x[i - window + 1]
        out[i] = value / window


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once (LLVM's fma), as TA-Lib's compiled EMA computes its update."""
    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return types.float64(types.float64, types.float64, types.float64), codegen


@njit(cache=True)
def ema_nb(x, window, out):
    """TA-Lib's EMA of x into out: seeded with the SMA of the first window bars, then prev += (x - prev) * k with
    k = 2 / (window + 1), one fused multiply-add per bar (as TA-Lib's x86-64 build computes it)."""
    n = x.shape[0]
    out[:] = np.nan
    if window == 1:
        out[:] = x
        return
    if n < window:
        return
    k = 2.0 / (window + 1)
    total = 0.0
    for i in range(window):
        total += x[i]
    prev = total / window
    out[window - 1] = prev
    for i in range(window, n):
        prev = _fma(x[i] - prev, k, prev)
        out[i] = prev


@njit(cache=True, parallel=True)
def ma_matrix_nb(close, windows, ema):
    """One moving average per window: a [W, T] matrix, windows in parallel."""
    out = np.empty((windows.shape[0], close.shape[0]))
    for w in prange(windows.shape[0]):
        if ema:
            ema_nb(close, windows[w], out[w])
        else:
            sma_nb(close, windows[w], out[w])
    return out


def moving_averages(close: Any, windows: Iterable[int], kind: str = "sma") -> np.ndarray:
    """The moving averages of `close` for each window, as a [len(windows), len(close)] float64 matrix."""
    _choice("kind", kind, KINDS)
    wins = _windows("windows", windows)
    values = np.ascontiguousarray(np.asarray(close, dtype=np.float64))
    return ma_matrix_nb(values, wins, kind == "ema")


def ma_cross_signals(candles: Candles, fast: int, slow: int, *, kind: str = "sma", direction: str = "long") -> pd.DataFrame:
    """The signals of one (fast, slow) pair as `qlab.backtest` takes them: entry_long on a cross above, exit_long on a
    cross below (direction "long" or "both"), entry_short on a cross below and exit_short on a cross above ("short" or
    "both"); the other columns are False. The same moving averages as `sweep_ma_cross`."""
    _choice("direction", direction, DIRECTIONS)
    _choice("kind", kind, KINDS)
    windows = np.concatenate([_windows("fast", fast), _windows("slow", slow)])
    close = np.ascontiguousarray(candles["close"].to_numpy(dtype=np.float64))
    f, s = ma_matrix_nb(close, windows, kind == "ema")
    up, down = np.zeros(len(f), dtype=bool), np.zeros(len(f), dtype=bool)
    up[1:] = (f[1:] > s[1:]) & (f[:-1] <= s[:-1])
    down[1:] = (f[1:] < s[1:]) & (f[:-1] >= s[:-1])
    longs, shorts, none = direction in ("long", "both"), direction in ("short", "both"), np.zeros(len(f), dtype=bool)
    return pd.DataFrame({"entry_long": up if longs else none, "exit_long": down if longs else none,
                         "entry_short": down if shorts else none, "exit_short": up if shorts else none}, index=candles.index)


# ---------------------------------------------------------------- the per-pair loop (the fill model of simulate.py)

# one pair's state, a small float vector: the position, the cash and the cost and trade tallies
(S_DIR, S_Q, S_ENTRY, S_MARGIN, S_EFEE, S_TRADE_FUNDING, S_LIQ, S_CASH, S_FEES, S_SPREAD, S_SLIPPAGE, S_IMPACT,
 S_FUNDING, S_CLOSED, S_WINS) = range(15)
N_STATE = 15


@njit(cache=True)
def _exit_nb(st, p, liquidation, hs, slip, sg, av, taker, k):
    """Close the position at reference price p as a taker (simulate._exit); hs..av: this bar's cost values."""
    d, q = st[S_DIR], st[S_Q]
    imp = k * sg * np.sqrt(q / av) if k > 0.0 else 0.0
    price = p * (1.0 - d * (hs + slip + imp))
    fee = taker * price * q
    returned = st[S_MARGIN] + d * q * (price - st[S_ENTRY]) - fee
    if liquidation and returned < 0.0:
        returned = 0.0
    st[S_CASH] += returned
    st[S_FEES] += fee
    st[S_SPREAD] += hs * p * q
    st[S_SLIPPAGE] += slip * p * q
    st[S_IMPACT] += imp * p * q
    st[S_CLOSED] += 1.0
    if (returned - st[S_MARGIN]) - st[S_EFEE] - st[S_TRADE_FUNDING] > 0.0:
        st[S_WINS] += 1.0
    st[S_DIR] = 0.0


@njit(cache=True)
def _enter_nb(st, d, p, equity_prev, hs, sl_, sg, av, taker, k, cap, size_mode, size_value, lev, mmr, min_notional):
    """Size and fill a market entry of direction d at reference price p (simulate._enter, taker)."""
    if size_mode == UNITS:
        q = size_value
    elif size_mode == AMOUNT:
        q = size_value / p
    else:
        q = size_value * equity_prev * lev / p
    q = min(q, cap * av)
    cash = st[S_CASH]
    if not q * p >= min_notional or cash <= 0.0:
        return
    price = fee = imp = 0.0
    for attempt in range(2):
        imp = k * sg * np.sqrt(q / av) if k > 0.0 else 0.0
        price = p * (1.0 + d * (hs + sl_ + imp))
        fee = taker * price * q
        need = q * price / lev + fee
        if need <= cash or attempt == 1:
            break
        q = q * cash / need
        if not q * p >= min_notional:
            return
    st[S_DIR] = d
    st[S_Q] = q
    st[S_ENTRY] = price
    st[S_MARGIN] = q * price / lev
    st[S_EFEE] = fee
    st[S_TRADE_FUNDING] = 0.0
    st[S_LIQ] = price * (1.0 - 1.0 / lev) / (1.0 - mmr) if d > 0 else price * (1.0 + 1.0 / lev) / (1.0 + mmr)
    st[S_CASH] = cash - (q * price / lev + fee)
    st[S_FEES] += fee
    st[S_SPREAD] += hs * p * q
    st[S_SLIPPAGE] += sl_ * p * q
    st[S_IMPACT] += imp * p * q


@njit(cache=True)
def _signals_nb(st, up, down, longs, shorts, p, equity_prev, hs, slip, sg, av, taker, k, cap, size_mode, size_value,
                lev, mmr, min_notional):
    """Act on one bar's crossings at reference price p: the exit, then the entry (simulate._signal_actions, market)."""
    el, xl, es, xs = up and longs, down and longs, down and shorts, up and shorts
    d = st[S_DIR]
    if (d > 0.0 and (xl or es)) or (d < 0.0 and (xs or el)):
        _exit_nb(st, p, False, hs, slip, sg, av, taker, k)
    if st[S_DIR] == 0.0 and el != es:
        _enter_nb(st, 1.0 if el else -1.0, p, equity_prev, hs, slip, sg, av, taker, k, cap, size_mode, size_value, lev,
                  mmr, min_notional)


@njit(cache=True)
def _sharpe_nb(sum_r, sum_r2, n, bpy):
    """mean / std(ddof=1) of n per-bar returns, annualised; the zero-denominator rule of qlab.analytics.metrics."""
    if n < 2:
        return np.nan
    mean = sum_r / n
    std = np.sqrt(max((sum_r2 - sum_r * mean) / (n - 1), 0.0))
    if std > TINY:
        return mean / std * np.sqrt(bpy)
    return 0.0 if abs(mean) <= TINY else math.copysign(np.inf, mean)


@njit(cache=True)
def _pair_nb(ma, fi, si, open_, high, low, close, half_spread, slippage, sigma, adv, funding, any_funding, taker, k, cap,
             longs, shorts, timing_close, size_mode, size_value, mmr, min_notional, bpy, cash0, out):
    """One (fast, slow) pair through every bar (the events of a bar in the order of orders.py); writes METRICS into out.

    The position lives in locals on the hot path; the state vector is only read and written around fills."""
    T = close.shape[0]
    lev = 1.0
    st = np.zeros(N_STATE)
    st[S_CASH] = cash0
    cash, d, q, entry, margin, liq = cash0, 0.0, 0.0, 0.0, 0.0, 0.0
    equity_prev = eq0 = peak = cash0
    held = 0
    sum_r = sum_r2 = max_dd = 0.0
    ruined = False
    up_prev = down_prev = False  # the crossings of bar i-1, acted on at bar i's open by default
    le_prev = ge_prev = False  # fast <= slow, fast >= slow at bar i-1 (False while either is undefined)
    for i in range(T):
        fv, sv = ma[fi, i], ma[si, i]
        up = fv > sv and le_prev  # a cross needs fast and slow defined on both bars (NaN compares False)
        down = fv < sv and ge_prev
        le_prev, ge_prev = fv <= sv, fv >= sv
        event = False
        if d != 0.0:
            o = open_[i]
            if any_funding and funding[i] != 0.0:  # 1a. funding at the open
                pay = d * q * o * funding[i]
                cash -= pay
                st[S_CASH] = cash
                st[S_TRADE_FUNDING] += pay
                st[S_FUNDING] += pay
                event = True
            if (o <= liq) if d > 0.0 else (o >= liq):  # 1b. liquidation gapped at the open
                _exit_nb(st, o, True, half_spread[i], slippage[i], sigma[i], adv[i], taker, k)
                event = True
                cash, d = st[S_CASH], st[S_DIR]
        if not timing_close and (up_prev or down_prev):  # 1c. market orders of the previous bar's signals
            _signals_nb(st, up_prev, down_prev, longs, shorts, open_[i], equity_prev, half_spread[i], slippage[i],
                        sigma[i], adv[i], taker, k, cap, size_mode, size_value, lev, mmr, min_notional)
            event = True
            cash, d, q, entry, margin, liq = st[S_CASH], st[S_DIR], st[S_Q], st[S_ENTRY], st[S_MARGIN], st[S_LIQ]
        if d != 0.0 and ((low[i] <= liq) if d > 0.0 else (high[i] >= liq)):  # 2. liquidation on the path
            _exit_nb(st, liq, True, half_spread[i], slippage[i], sigma[i], adv[i], taker, k)
            event = True
            cash, d = st[S_CASH], st[S_DIR]
        if timing_close and (up or down):  # 3. timing="close": this bar's signals fill at its close
            _signals_nb(st, up, down, longs, shorts, close[i], equity_prev, half_spread[i], slippage[i], sigma[i],
                        adv[i], taker, k, cap, size_mode, size_value, lev, mmr, min_notional)
            event = True
            cash, d, q, entry, margin, liq = st[S_CASH], st[S_DIR], st[S_Q], st[S_ENTRY], st[S_MARGIN], st[S_LIQ]
        up_prev, down_prev = up, down
        # mark to the close; running metrics (ruin: equity counts as 0 from the first bar at or below 0 on)
        if d == 0.0 and not event and i > 0:
            continue  # flat all bar: equity unchanged, a zero return, drawdown unchanged
        eq = cash
        if d != 0.0:
            unreal = d * q * (close[i] - entry)
            eq += margin + unreal
            held += 1
        if ruined or eq <= 0.0:
            ruined = True
            eq = 0.0
        if i == 0:
            eq0 = peak = eq
        else:
            r = eq / equity_prev - 1.0 if equity_prev > 0.0 else 0.0
            sum_r += r
            sum_r2 += r * r
            if eq >= peak:
                peak = eq
            else:
                max_dd = min(max_dd, eq / peak - 1.0)
        equity_prev = eq
    closed, costs = st[S_CLOSED], st[S_FEES] + st[S_SPREAD] + st[S_SLIPPAGE] + st[S_IMPACT] + st[S_FUNDING]
    out[:] = np.array([equity_prev / eq0 - 1.0, equity_prev, _sharpe_nb(sum_r, sum_r2, T - 1, bpy), max_dd, closed,
                       st[S_WINS] / closed if closed > 0 else np.nan, st[S_FEES], st[S_SPREAD], st[S_SLIPPAGE],
                       st[S_IMPACT], st[S_FUNDING], costs, held / T])  # in the order of METRICS


@njit(cache=True, parallel=True)
def sweep_ma_cross_nb(ma, fast_idx, slow_idx, open_, high, low, close, half_spread, slippage, sigma, adv, funding,
                      taker, k, cap, longs, shorts, timing_close, size_mode, size_value, mmr, min_notional, bpy, cash0):
    """Every pair (rows fast_idx[p], slow_idx[p] of the [W, T] MA matrix) in parallel; a [P, len(METRICS)] matrix."""
    out = np.empty((fast_idx.shape[0], len(METRICS)))
    any_funding = (funding != 0.0).any()
    for p in prange(fast_idx.shape[0]):
        _pair_nb(ma, fast_idx[p], slow_idx[p], open_, high, low, close, half_spread, slippage, sigma, adv, funding,
                 any_funding, taker, k, cap, longs, shorts, timing_close, size_mode, size_value, mmr, min_notional, bpy, cash0, out[p])
    return out


# ---------------------------------------------------------------- the pandas-facing function


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}." + did_you_mean(str(value), choices))


def _windows(name: str, values: Any) -> np.ndarray:
    """Distinct whole-number windows >= 1 in the order given, as int64."""
    seq = [values] if np.isscalar(values) else list(values)
    if not seq:
        raise ConfigError(f"{name} is empty; give one or more windows, e.g. {name}=[10, 20, 50]")
    for w in seq:
        if isinstance(w, bool) or not isinstance(w, int | np.integer) or w < 1:
            raise ConfigError(f"{name}: window {w!r} must be a whole number of bars >= 1, e.g. 20")
    return np.array(list(dict.fromkeys(int(w) for w in seq)), dtype=np.int64)


def _check_fast_path(orders: OrderSpec, size: SizeSpec) -> None:
    """Refuse settings the fast path cannot reproduce exactly, naming them."""
    if not isinstance(orders, OrderSpec) or not isinstance(size, SizeSpec):
        raise ConfigError("orders must be an OrderSpec and size a SizeSpec (from qlab.engine.orders)")
    bad = [f"entry={orders.entry!r}"] if orders.entry != "market" else []
    bad += [f"{name}={getattr(orders, name)!r}" for name in ("stop_loss", "stop_loss_atr", "take_profit", "trailing_stop",
                                                            "trailing_atr") if getattr(orders, name) is not None]
    if size.mode not in SWEEP_SIZE_MODES:
        bad.append(f"size mode={size.mode!r}")
    if size.leverage != 1:
        bad.append(f"leverage={size.leverage!r}")
    if bad:
        raise ConfigError(f"sweep_ma_cross covers market entries, signal exits, leverage 1 and {'/'.join(SWEEP_SIZE_MODES)} "
                          f"sizing only; not {', '.join(bad)}: run such settings through qlab.backtest per combination")


def sweep_ma_cross(
    candles: Candles,
    fast: Iterable[int] | int,
    slow: Iterable[int] | int,
    *,
    kind: str = "sma",
    direction: str = "long",
    costs: Any = "default",
    size: SizeSpec | None = None,
    cash: float = 10_000.0,
    timeframe: str | None = None,
    orders: OrderSpec | None = None,
) -> pd.DataFrame:
    """Metrics of the moving-average crossover for every (fast, slow) pair with fast < slow; one row per pair.

    The pairs are taken in the order given (fast outer, slow inner); pairs with fast >= slow are skipped.
    `costs` is "default", a CostModel, prepared CostArrays, or None (explicitly none); `orders` may set
    timing="close" (market orders only), `size` units, amount or percent sizing at leverage 1. Columns:
    fast, slow and METRICS. Each row equals what `qlab.backtest(candles, ma_cross_signals(candles, fast, slow, kind=...,
    direction=...), orders=orders, size=size, costs=costs, cash=cash)` reports for that pair.
    """
    orders = orders if orders is not None else OrderSpec()
    size = size if size is not None else SizeSpec()
    _choice("kind", kind, KINDS)
    _choice("direction", direction, DIRECTIONS)
    _check_fast_path(orders, size)
    if not (isinstance(cash, int | float) and not isinstance(cash, bool) and cash > 0 and math.isfinite(cash)):
        raise ConfigError(f"cash={cash!r} must be a positive amount of quote currency, e.g. 10_000")
    if isinstance(candles, dict):
        raise ConfigError("sweep_ma_cross takes one Candles frame; sweep each symbol separately")
    validate_candles(candles, where="the candles given to sweep_ma_cross")
    if len(candles) < 2:
        raise ConfigError(f"sweep_ma_cross needs at least 2 bars, got {len(candles)}")
    timeframe = timeframe or infer_timeframe(candles.index)
    fasts, slows = _windows("fast", fast), _windows("slow", slow)
    pairs = [(f, s) for f in fasts for s in slows if f < s]
    columns = ["fast", "slow", *METRICS]
    if not pairs:
        return pd.DataFrame({c: pd.Series(dtype=np.int64 if c in ("fast", "slow", "n_trades") else np.float64) for c in columns})
    arrays = costs if isinstance(costs, CostArrays) else resolve_costs(costs).prepare(candles, timeframe)
    if len(arrays) != len(candles):
        raise ConfigError(f"costs: CostArrays of {len(arrays)} bars for {len(candles)} candles; prepare them for these candles")
    windows = np.array(sorted({w for pair in pairs for w in pair}), dtype=np.int64)
    position = {int(w): j for j, w in enumerate(windows)}
    fast_idx = np.array([position[f] for f, _ in pairs], dtype=np.int64)
    slow_idx = np.array([position[s] for _, s in pairs], dtype=np.int64)

    def col(name: str) -> np.ndarray:
        return np.ascontiguousarray(candles[name].to_numpy(dtype=np.float64))

    close = col("close")
    ma = ma_matrix_nb(close, windows, kind == "ema")
    values = sweep_ma_cross_nb(
        ma, fast_idx, slow_idx, col("open"), col("high"), col("low"), close,
        *(np.ascontiguousarray(getattr(arrays, n), dtype=np.float64) for n in ("half_spread", "slippage", "sigma", "adv", "funding")),
        float(arrays.taker_fee), float(arrays.impact_k), float(arrays.participation_cap),
        direction in ("long", "both"), direction in ("short", "both"), orders.timing == "close",
        SIZE_MODES.index(size.mode), float(size.value), float(size.maintenance_margin), float(size.min_notional),
        float(bars_per_year(timeframe)), float(cash),
    )
    table = pd.DataFrame(values, columns=list(METRICS))
    table.insert(0, "slow", np.array([s for _, s in pairs], dtype=np.int64))
    table.insert(0, "fast", np.array([f for f, _ in pairs], dtype=np.int64))
    table["n_trades"] = table["n_trades"].astype(np.int64)
    return table

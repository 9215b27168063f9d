"""Performance metrics of a backtest: returns, risk, drawdowns, trades, exposure, turnover and costs.

Inputs are the engine's Result tables: `equity` (account equity at each bar close, UTC
DatetimeIndex), `trades` (one row per trade, the columns of `qlab.engine.orders`) and, optionally,
`positions` (signed position notional per asset at each close).

Conventions (pinned by tests/analytics/test_metrics.py)
-------------------------------------------------------
* Returns are simple per-bar returns of the equity curve, r_t = E_t / E_{t-1} - 1: T bars give T-1
  returns. Ruin: from the first bar whose equity is <= 0 on, equity counts as 0, so that bar's
  return is -100 %, every later return is 0, total return and CAGR are -100 % and the max drawdown
  is -100 % (an account cannot trade its way back from zero).
* Annualisation uses `bars_per_year` (8760 for 1h: crypto trades 365 days a year). Elapsed years =
  (T - 1) / bars_per_year; CAGR = (E_last / E_first) ** (1 / years) - 1; volatility =
  std(r, ddof=1) * sqrt(bars_per_year).
* `risk_free` is an ANNUAL rate (0.04 = 4 %); per bar it is rf = (1 + risk_free) ** (1 / bars_per_year) - 1.
* Sharpe = mean(r - rf) / std(r - rf, ddof=1) * sqrt(bars_per_year).
* Sortino = mean(r - rf) / DD * sqrt(bars_per_year) with the downside deviation
  DD = sqrt(mean(min(r - rf, 0) ** 2)) taken over ALL bars (bars without a shortfall count as zeros,
  the convention of Sortino & Price and of empyrical), not over the losing bars only.
* Calmar = CAGR / |max drawdown|.
* Zero denominators: a ratio whose denominator is zero (flat equity: std 0; no downside bar; no
  drawdown; no losing trade) is 0.0 when its numerator is zero too (no reward and no risk scores 0,
  so a strategy that never trades ranks between the winners and the losers of a sweep), and +inf or
  -inf otherwise (the limit). A per-bar std or downside deviation below 1e-12 counts as zero.
* NaN means "undefined for lack of data", nothing else: volatility and Sharpe with fewer than 2
  returns, Sortino and CAGR with no return, trade statistics without a closed trade (avg_win without
  a winner, avg_loss without a loser).
* Trades: statistics use CLOSED trades (`is_open == False`); open trades are counted in `n_open`,
  and their costs paid so far are in the cost totals. A win is net_pnl > 0, a loss net_pnl < 0
  (break-even trades count in win_rate's denominator only). A trade's return is
  net_pnl / (size * entry_price), on notional, not on margin.
* Exposure: the fraction of bars holding a position at the close, any asset (from `positions` when
  given, else from the trades: a closed trade holds bars entry_bar .. exit_bar - 1, an open one
  entry_bar .. the last bar). Turnover: traded notional (entries and closed exits, at executed
  prices) / mean equity, per year.
* Costs are `qlab.costs.cost_breakdown` (money paid over all trades, open ones included; funding
  received is negative) and `qlab.costs.cost_share` (total cost / the sum of the trades' positive
  profits before costs; inf when no trade was profitable before costs).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from qlab.costs import cost_breakdown, cost_share
from qlab.errors import DataError

TINY = 1e-12  # a per-bar std, downside deviation or amount below this is zero
TRADE_COLUMNS = ("entry_bar", "exit_bar", "entry_price", "exit_price", "size", "entry_fee", "exit_fee", "spread_cost",
                 "slippage_cost", "impact_cost", "funding", "gross_pnl", "net_pnl", "is_open")


# ---------------------------------------------------------------- inputs


def _equity(equity: Any) -> pd.Series:
    """The equity curve as float64, checked, with ruin applied (0 from the first bar at or below 0 on)."""
    if not isinstance(equity, pd.Series):
        equity = pd.Series(np.asarray(equity, dtype=float))
    if len(equity) == 0:
        raise DataError("the equity curve is empty; pass the engine's Result.equity (one value per bar)")
    values = pd.to_numeric(equity, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise DataError(f"equity has a missing or infinite value at row {bad[0]} ({equity.index[bad[0]]}) "
                        f"({len(bad)} such row(s)); fill or drop them before computing metrics")
    if values[0] <= 0:
        raise DataError(f"equity starts at {values[0]!r} at {equity.index[0]}; it must start above 0")
    if not equity.index.is_monotonic_increasing:
        raise DataError("the equity index is not sorted in time; sort it (equity.sort_index()) first")
    ruined = np.flatnonzero(values <= 0)
    if len(ruined):
        values = values.copy()
        values[ruined[0]:] = 0.0
    return pd.Series(values, index=equity.index, name=equity.name)


def _trades(trades: pd.DataFrame | None) -> pd.DataFrame:
    """The trades table (an empty one for None), its required columns checked."""
    if trades is None or (len(trades) == 0 and not set(TRADE_COLUMNS) <= set(trades.columns)):
        return pd.DataFrame({c: pd.Series(dtype=bool if c == "is_open" else float) for c in TRADE_COLUMNS})
    missing = [c for c in TRADE_COLUMNS if c not in trades.columns]
    if missing:
        raise DataError(f"the trades table lacks column(s) {', '.join(missing)}; pass the engine's Result.trades "
                        f"(columns: {', '.join(TRADE_COLUMNS)})")
    return trades


def _span(index: pd.Index, i: int, j: int) -> pd.Timedelta:
    """Time from bar i to bar j (NaT when the index holds no times)."""
    if isinstance(index, pd.DatetimeIndex):
        return index[j] - index[i]
    return pd.NaT


def _ratio(num: float, den: float) -> float:
    """num / den with the module's zero-denominator rule (0/0 -> 0.0, x/0 -> +/-inf, NaN stays NaN)."""
    if math.isnan(num) or math.isnan(den):
        return math.nan
    if abs(den) <= TINY:
        return 0.0 if abs(num) <= TINY else math.copysign(math.inf, num)
    return num / den


def per_bar_risk_free(risk_free: float, bars_per_year: float) -> float:
    """The per-bar rate of an annual risk-free rate: (1 + risk_free) ** (1 / bars_per_year) - 1."""
    return (1.0 + risk_free) ** (1.0 / bars_per_year) - 1.0


def _cagr(growth: float, years: float) -> float:
    """growth ** (1 / years) - 1; +inf when that overflows (a big gain over a few bars)."""
    try:
        return growth ** (1.0 / years) - 1.0
    except OverflowError:
        return math.inf


def _check_bpy(bars_per_year: float) -> float:
    if not (isinstance(bars_per_year, int | float | np.floating | np.integer) and bars_per_year > 0):
        raise DataError(f"bars_per_year={bars_per_year!r} must be a positive number, e.g. "
                        "qlab.data.candles.bars_per_year('1h') = 8760")
    return float(bars_per_year)


# ---------------------------------------------------------------- series


def bar_returns(equity: pd.Series) -> pd.Series:
    """Simple per-bar returns E_t / E_{t-1} - 1 (T-1 values, indexed by the later bar), ruin applied."""
    eq = _equity(equity).to_numpy()
    prev = eq[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(prev > 0, eq[1:] / np.where(prev > 0, prev, 1.0) - 1.0, 0.0)
    return pd.Series(r, index=equity.index[1:], name="returns")


def drawdown_series(equity: pd.Series) -> pd.Series:
    """Fraction below the running peak at each bar: 0 at a new high, -0.25 when 25 % below it."""
    eq = _equity(equity)
    return (eq / eq.cummax() - 1.0).rename("drawdown")


def _underwater_runs(values: np.ndarray) -> list[tuple[int, int, int | None]]:
    """(peak bar, trough bar, recovery bar or None) for each run of bars below the running peak."""
    peak = np.maximum.accumulate(values)
    under = values < peak
    edges = np.diff(np.concatenate(([False], under, [False])).astype(np.int8))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # ends: first bar back at the peak
    runs = []
    for s, e in zip(starts, ends, strict=True):
        trough = s + int(np.argmin(values[s:e] / peak[s:e]))
        runs.append((int(s - 1), int(trough), int(e) if e < len(values) else None))
    return runs


def underwater_periods(equity: pd.Series) -> pd.DataFrame:
    """One row per drawdown: start (the peak), trough, end (the bar back at the peak, NaT if never),
    depth (negative fraction), bars and duration (peak to recovery, or to the last bar), recovered."""
    eq = _equity(equity)
    values, index, last = eq.to_numpy(), eq.index, len(eq) - 1
    peak = np.maximum.accumulate(values)
    rows = []
    for start, trough, end in _underwater_runs(values):
        stop = last if end is None else end
        rows.append({
            "start": index[start], "trough": index[trough],
            "end": pd.NaT if end is None else index[end],
            "depth": values[trough] / peak[trough] - 1.0, "bars": stop - start,
            "duration": _span(index, start, stop), "recovered": end is not None,
        })
    columns = ["start", "trough", "end", "depth", "bars", "duration", "recovered"]
    return pd.DataFrame(rows, columns=columns)


def rolling_volatility(equity: pd.Series, window: int, bars_per_year: float) -> pd.Series:
    """Annualised std (ddof=1) of the per-bar returns over the last `window` returns; NaN until full."""
    bpy = _check_bpy(bars_per_year)
    if int(window) < 2:
        raise DataError(f"window={window!r} must be at least 2 returns for a standard deviation")
    return (bar_returns(equity).rolling(int(window)).std() * math.sqrt(bpy)).rename("volatility")


def rolling_sharpe(equity: pd.Series, window: int, bars_per_year: float, *, risk_free: float = 0.0) -> pd.Series:
    """Annualised Sharpe over the last `window` returns (NaN until full; zero-std windows follow the
    module's rule: 0.0 when the mean excess is 0 too, else +/-inf)."""
    bpy = _check_bpy(bars_per_year)
    if int(window) < 2:
        raise DataError(f"window={window!r} must be at least 2 returns for a standard deviation")
    excess = bar_returns(equity) - per_bar_risk_free(risk_free, bpy)
    roll = excess.rolling(int(window))
    mean, std = roll.mean().to_numpy(), roll.std().to_numpy()
    flat = std <= TINY
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(flat, np.where(np.abs(mean) <= TINY, 0.0, np.copysign(np.inf, mean)), mean / std)
    out[np.isnan(std)] = np.nan
    return pd.Series(out * math.sqrt(bpy), index=excess.index, name="sharpe")


# ---------------------------------------------------------------- trades, exposure, costs


def _exposure_from_trades(t: pd.DataFrame, n_bars: int) -> float:
    held = np.zeros(n_bars + 1, dtype=np.int64)
    entry = np.clip(t["entry_bar"].to_numpy(dtype=np.int64), 0, n_bars)
    stop = np.where(t["is_open"].to_numpy(dtype=bool), n_bars, np.clip(t["exit_bar"].to_numpy(dtype=np.int64), 0, n_bars))
    stop = np.maximum(stop, entry)
    np.add.at(held, entry, 1)
    np.add.at(held, stop, -1)
    return float((np.cumsum(held)[:n_bars] > 0).mean())


def _exposure(t: pd.DataFrame, positions: pd.DataFrame | None, n_bars: int) -> float:
    if positions is None:
        return _exposure_from_trades(t, n_bars)
    pos = positions.to_frame() if isinstance(positions, pd.Series) else positions
    if len(pos) == 0:
        return 0.0
    return float((pos.fillna(0.0).abs().to_numpy(dtype=float) > 0).any(axis=1).mean())


def _trade_stats(t: pd.DataFrame) -> dict[str, float]:
    closed = t[~t["is_open"].astype(bool)]
    pnl = closed["net_pnl"].to_numpy(dtype=float)
    wins, losses = pnl[pnl > 0], pnl[pnl < 0]
    notional = np.abs(closed["size"].to_numpy(dtype=float)) * closed["entry_price"].to_numpy(dtype=float)
    nan = math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        returns = pnl / notional
    n = len(pnl)
    return {
        "n_trades": n,
        "n_open": int(t["is_open"].astype(bool).sum()),
        "win_rate": len(wins) / n if n else nan,
        "profit_factor": _ratio(float(wins.sum()), float(-losses.sum())) if n else nan,
        "expectancy": float(pnl.mean()) if n else nan,
        "avg_trade_return": float(returns.mean()) if n else nan,
        "avg_win": float(wins.mean()) if len(wins) else nan,
        "avg_loss": float(losses.mean()) if len(losses) else nan,
        "best_trade": float(pnl.max()) if n else nan,
        "worst_trade": float(pnl.min()) if n else nan,
    }


# ---------------------------------------------------------------- the metrics


def compute_metrics(
    equity: pd.Series,
    trades: pd.DataFrame | None,
    bars_per_year: float,
    *,
    positions: pd.DataFrame | None = None,
    risk_free: float = 0.0,
    benchmark: pd.Series | None = None,
) -> dict[str, Any]:
    """Every metric of one run as plain numbers (see the module docstring for the conventions).

    Keys: total_return, cagr, volatility, sharpe, sortino, calmar, max_drawdown (a negative
    fraction), max_drawdown_bars and max_drawdown_duration (a Timedelta; peak to recovery, or to the
    last bar when not recovered), final_equity, n_trades, n_open, win_rate, profit_factor, expectancy,
    avg_trade_return, avg_win, avg_loss, best_trade, worst_trade, exposure, turnover, cost_fees,
    cost_spread, cost_slippage, cost_impact, cost_funding, cost_total, cost_share (see qlab.costs).
    With `benchmark` (a price series such as BTC close, aligned on the equity's timestamps):
    benchmark_return, beta, alpha (annualised), r2, correlation.
    Every value is a float or int except max_drawdown_duration.
    """
    bpy = _check_bpy(bars_per_year)
    eq = _equity(equity)
    t = _trades(trades)
    r = bar_returns(eq).to_numpy()
    n = len(r)
    years = n / bpy
    first, last = float(eq.iloc[0]), float(eq.iloc[-1])
    growth = last / first
    excess = r - per_bar_risk_free(risk_free, bpy)
    std = float(np.std(r, ddof=1)) if n >= 2 else math.nan
    mean_excess = float(excess.mean()) if n else math.nan
    downside = float(np.sqrt(np.mean(np.minimum(excess, 0.0) ** 2))) if n else math.nan
    cagr = _cagr(growth, years) if n else math.nan
    drawdown = eq.to_numpy() / np.maximum.accumulate(eq.to_numpy()) - 1.0
    max_dd = float(drawdown.min())
    runs = _underwater_runs(eq.to_numpy())
    longest = (0, 0)
    for start, _trough, end in runs:
        stop = len(eq) - 1 if end is None else end
        if stop - start > longest[1] - longest[0]:
            longest = (start, stop)

    out: dict[str, Any] = {
        "total_return": growth - 1.0,
        "cagr": cagr,
        "volatility": std * math.sqrt(bpy),
        "sharpe": _ratio(mean_excess, std) * math.sqrt(bpy) if n >= 2 else math.nan,
        "sortino": _ratio(mean_excess, downside) * math.sqrt(bpy) if n else math.nan,
        "calmar": _ratio(cagr, abs(max_dd)),
        "max_drawdown": max_dd,
        "max_drawdown_bars": longest[1] - longest[0],
        "max_drawdown_duration": _span(eq.index, *longest) if runs else pd.Timedelta(0),
        "final_equity": last,
    }
    out.update(_trade_stats(t))
    out["exposure"] = _exposure(t, positions, len(eq))
    size = np.abs(t["size"].to_numpy(dtype=float))
    closed = ~t["is_open"].to_numpy(dtype=bool)
    traded = float((size * t["entry_price"].to_numpy(dtype=float)).sum()
                   + (size * t["exit_price"].to_numpy(dtype=float))[closed].sum())
    mean_equity = float(eq.mean())
    out["turnover"] = traded / mean_equity / years if years > 0 else math.nan
    out.update({f"cost_{k}": float(v) for k, v in cost_breakdown(t).items()})
    out["cost_share"] = cost_share(t)
    if benchmark is not None:
        out.update(_benchmark_metrics(eq, benchmark, bpy, risk_free))
    return out


def _benchmark_metrics(eq: pd.Series, benchmark: pd.Series, bpy: float, risk_free: float) -> dict[str, float]:
    from qlab.analytics.portfolio import beta_alpha  # portfolio imports this module

    if not isinstance(benchmark, pd.Series):
        raise DataError("benchmark must be a pandas Series of prices (e.g. BTC close) indexed like the equity")
    bench = pd.to_numeric(benchmark, errors="coerce").reindex(eq.index)
    valid = bench.dropna()
    if len(valid) < 2:
        raise DataError(f"the benchmark shares {len(valid)} timestamp(s) with the equity curve "
                        f"({eq.index[0]} .. {eq.index[-1]}); pass prices covering the same bars")
    stats = beta_alpha(bar_returns(eq), bench.pct_change(fill_method=None).iloc[1:], bpy, risk_free=risk_free)
    return {"benchmark_return": float(valid.iloc[-1] / valid.iloc[0] - 1.0),
            **{k: stats[k] for k in ("beta", "alpha", "r2", "correlation")}}


# ---------------------------------------------------------------- a readable table

_LABELS: list[tuple[str, str, str]] = [  # key, label, format
    ("total_return", "Total return", "pct"), ("cagr", "CAGR", "pct"), ("volatility", "Volatility (ann.)", "pct"),
    ("sharpe", "Sharpe", "ratio"), ("sortino", "Sortino", "ratio"), ("calmar", "Calmar", "ratio"),
    ("max_drawdown", "Max drawdown", "pct"), ("max_drawdown_duration", "Max drawdown duration", "time"),
    ("max_drawdown_bars", "Max drawdown duration (bars)", "int"), ("final_equity", "Final equity", "money"),
    ("n_trades", "Closed trades", "int"), ("n_open", "Open trades", "int"), ("win_rate", "Win rate", "pct"),
    ("profit_factor", "Profit factor", "ratio"), ("expectancy", "Expectancy (per trade)", "money"),
    ("avg_trade_return", "Avg trade return", "pct"), ("avg_win", "Avg win", "money"), ("avg_loss", "Avg loss", "money"),
    ("best_trade", "Best trade", "money"), ("worst_trade", "Worst trade", "money"), ("exposure", "Exposure", "pct"),
    ("turnover", "Turnover (per year)", "ratio"), ("cost_fees", "Fees", "money"), ("cost_spread", "Spread", "money"),
    ("cost_slippage", "Slippage", "money"), ("cost_impact", "Market impact", "money"), ("cost_funding", "Funding", "money"),
    ("cost_total", "Costs in all", "money"), ("cost_share", "Costs / profit before costs", "pct"),
    ("benchmark_return", "Benchmark return", "pct"), ("beta", "Beta", "ratio"), ("alpha", "Alpha (ann.)", "pct"),
    ("r2", "R²", "ratio"), ("correlation", "Correlation", "ratio"),
]


def _format(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return {"pct": lambda v: f"{v:.2%}", "ratio": lambda v: f"{v:.2f}", "int": lambda v: f"{int(v):d}",
            "money": lambda v: f"{v:,.2f}", "time": str}[kind](value)


def format_metrics(metrics: dict[str, Any]) -> pd.DataFrame:
    """A readable one-column table of a metrics dict (percentages, 2 decimals, durations)."""
    rows = [(label, _format(metrics[key], kind)) for key, label, kind in _LABELS if key in metrics]
    return pd.DataFrame(rows, columns=["metric", "value"]).set_index("metric")


def metrics_table(equity: pd.Series, trades: pd.DataFrame | None, bars_per_year: float, **kwargs: Any) -> pd.DataFrame:
    """`compute_metrics(...)` as a readable table (same arguments)."""
    return format_metrics(compute_metrics(equity, trades, bars_per_year, **kwargs))

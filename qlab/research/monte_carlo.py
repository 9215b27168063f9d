"""`qlab.monte_carlo`: how differently could this backtest have turned out?

    mc = qlab.monte_carlo(result, method="block_bootstrap", n=10_000, seed=1, block=24)
    mc.summary()                 # distribution, confidence interval and the real result's percentile per metric
    mc.probability_of_ruin(0.5)  # share of paths that lost half the account at some point
    mc.fan_chart(); mc.histograms()

Methods (`METHODS`)
-------------------
* "reshuffle": the closed trades in random order. Each trade's return is its net PnL over the account
  equity at the close before its entry, compounded, so the final equity is the same on every path (the
  product does not depend on the order) while drawdowns change: the question is how deep the drawdowns
  could have been with the same trades. Points of a path sit at the real exit bars, in order.
* "trade_bootstrap": as many trades as the real run, drawn from its trades with replacement.
* "block_bootstrap": the stationary bootstrap (Politis & Romano 1994) of the per-bar returns of the
  equity curve with mean block length `block` bars (1 = iid), over `horizon` bars (default: the real
  length). Blocks keep the returns' short-range dependence (volatility clusters, trending runs).
* "jitter": the strategy re-run `n` times with parameters drawn uniformly within `ranges` (dotted spec
  paths, as in `qlab.optimize`), or within +/- `jitter` (a fraction) of every numeric parameter of the spec.
* "gbm", "garch", "jump": the strategy re-run on `n` synthetic price paths from a model fitted to the real
  closes (`qlab.research.synthetic`): geometric Brownian motion, GARCH(1,1) with Student t shocks (fitted
  with `arch`), or Merton jump diffusion. One symbol only.

Trade and bootstrap paths are measured with numba kernels (`qlab.research.mc_paths`) with the conventions of
`qlab.analytics.metrics`; the real value of each metric is computed the same way on the real path, so
percentiles compare like with like (for trade methods: the real trades compounded in their real order;
Sharpe per trade, annualised by trades per year). Same seed, same output.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from qlab.analytics.metrics import bar_returns
from qlab.analytics.result import Result, backtest
from qlab.data.candles import Candles, timeframe_delta
from qlab.errors import ConfigError, DataError, QlabError, StrategyError, did_you_mean
from qlab.research import mc_paths
from qlab.research.space import parse_space
from qlab.strategy.spec import Strategy
from qlab.strategy.templates import resolve_strategy

METHODS = ("reshuffle", "trade_bootstrap", "block_bootstrap", "jitter", "gbm", "garch", "jump")
TRADE_METHODS = ("reshuffle", "trade_bootstrap")
RERUN_METHODS = ("jitter", "gbm", "garch", "jump")
SUMMARY_METRICS = ("final_equity", "total_return", "cagr", "sharpe", "max_drawdown", "longest_drawdown_days")
LABELS = {"final_equity": "Final equity", "total_return": "Total return", "cagr": "CAGR", "sharpe": "Sharpe",
          "max_drawdown": "Max drawdown", "longest_drawdown_days": "Longest drawdown (days)", "worst_loss": "Worst loss"}
JITTER_FIELDS = ("stop_loss", "stop_loss_atr", "take_profit", "trailing_stop", "trailing_atr", "entry_offset")


@dataclass
class MonteCarloResult:
    """Simulated paths of one method: per-path metrics, the real result's values and equity percentiles over time."""

    method: str
    seed: int | None
    metrics: pd.DataFrame  # one row per path
    real: pd.Series  # the real result, measured the same way
    grid_times: pd.DatetimeIndex  # where the stored equity points lie
    grid_paths: np.ndarray  # (paths, len(grid_times)) equity
    real_path: pd.Series  # the real equity at its own points
    initial_cash: float
    ruin: float
    options: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    model: Any = None  # the fitted synthetic model

    @property
    def n(self) -> int:
        return len(self.metrics)

    def __repr__(self) -> str:
        s = self.summary()
        return (f"MonteCarloResult({self.method}, {self.n:,} paths, seed {self.seed}: final equity median "
                f"{s.loc['final_equity', 'median']:,.0f} (real {s.loc['final_equity', 'real']:,.0f}, percentile "
                f"{s.loc['final_equity', 'real_percentile']:.0f}), max drawdown median {s.loc['max_drawdown', 'median']:.1%}, "
                f"P(ruin at -{self.ruin:.0%}) {self.probability_of_ruin():.1%})")

    def _column(self, metric: str) -> np.ndarray:
        if metric not in self.metrics.columns:
            raise ConfigError(f"no metric {metric!r}; use one of {', '.join(self.metrics.columns)}."
                              + did_you_mean(metric, list(self.metrics.columns)))
        values = self.metrics[metric].to_numpy(dtype=float)
        return values[~np.isnan(values)]

    def confidence_interval(self, metric: str, confidence: float = 0.9) -> tuple[float, float]:
        """The central `confidence` interval of a metric over the paths (percentile interval)."""
        if not 0 < confidence < 1:
            raise ConfigError(f"confidence={confidence!r} must be a fraction in (0, 1), e.g. 0.9")
        x = self._column(metric)
        lo, hi = np.quantile(x, [(1 - confidence) / 2, (1 + confidence) / 2]) if len(x) else (math.nan, math.nan)
        return float(lo), float(hi)

    def percentile(self, metric: str) -> float:
        """Where the real value falls in the simulated distribution, 0-100 (ties count half)."""
        x, real = self._column(metric), float(self.real[metric])
        if not len(x) or math.isnan(real):
            return math.nan
        return float(100.0 * ((x < real).sum() + 0.5 * (x == real).sum()) / len(x))

    def probability_of_ruin(self, loss: float | None = None) -> float:
        """Share of paths whose equity fell to (1 - loss) of the start or below at some point (default loss: `ruin`)."""
        loss = self.ruin if loss is None else loss
        _check_fraction("loss", loss)
        return float((self.metrics["worst_loss"].to_numpy() <= -loss + 1e-12).mean())

    def summary(self, confidence: float = 0.9) -> pd.DataFrame:
        """Per metric: the real value, mean, median, std, the confidence interval and the real value's percentile."""
        rows = {}
        for m in SUMMARY_METRICS:
            x = self._column(m)
            finite = x[np.isfinite(x)]
            lo, hi = self.confidence_interval(m, confidence)
            rows[m] = {"real": float(self.real[m]), "mean": float(finite.mean()) if len(finite) else math.nan,
                       "median": float(np.median(x)) if len(x) else math.nan,
                       "std": float(finite.std(ddof=1)) if len(finite) > 1 else math.nan,
                       "ci_low": lo, "ci_high": hi, "real_percentile": self.percentile(m)}
        out = pd.DataFrame(rows).T
        out.attrs["confidence"] = confidence
        return out

    def bands(self, percentiles: tuple[float, ...] = (5, 25, 50, 75, 95)) -> pd.DataFrame:
        """Equity percentiles across paths at each stored time (the fan chart's bands)."""
        q = np.nanpercentile(self.grid_paths, percentiles, axis=0).T
        return pd.DataFrame(q, index=self.grid_times, columns=[f"p{p:g}" for p in percentiles])

    def fan_chart(self, percentiles: tuple[float, ...] = (5, 25, 50, 75, 95), sample: int = 20):
        """Equity percentile bands over time, a few sample paths and the real equity."""
        from qlab.research.mc_plots import fan_chart_figure

        return fan_chart_figure(self.bands(percentiles), self.grid_paths[:sample], self.real_path,
                                title=f"Monte Carlo ({self.method}, {self.n:,} paths): equity")

    def histograms(self, metrics: tuple[str, ...] = SUMMARY_METRICS):
        """A histogram per metric with the real value marked."""
        from qlab.research.mc_plots import histogram_figure

        return histogram_figure(self.metrics, self.real, metrics, LABELS,
                                title=f"Monte Carlo ({self.method}, {self.n:,} paths): metric distributions")

    def plot(self, kind: str = "fan"):
        """'fan' (equity bands) or 'hist' (metric histograms)."""
        if kind == "fan":
            return self.fan_chart()
        if kind == "hist":
            return self.histograms()
        raise ConfigError(f"plot kind {kind!r}; use 'fan' or 'hist'." + did_you_mean(kind, ("fan", "hist")))

    def to_html(self) -> str:
        """A self-contained HTML report: summary table, ruin probability, fan chart and histograms."""
        parts = [f"<h2>Monte Carlo: {self.method}, {self.n:,} paths (seed {self.seed})</h2>", self.summary().to_html(),
                 f"<p>P(equity falls {self.ruin:.0%} below the start) = {self.probability_of_ruin():.2%}</p>",
                 *(f"<p>{n}</p>" for n in self.notes),
                 self.fan_chart().to_html(full_html=False, include_plotlyjs=True),
                 self.histograms().to_html(full_html=False, include_plotlyjs=False)]
        return "<html><head><meta charset='utf-8'></head><body>" + "\n".join(parts) + "</body></html>"


# ---------------------------------------------------------------- checks


def _check_fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ConfigError(f"{name}={value!r} must be a fraction in (0, 1], e.g. 0.5 for losing half the account")
    return float(value)


def _check_count(name: str, value: Any, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
        raise ConfigError(f"{name}={value!r} must be a whole number >= {least}, e.g. {max(least, 1000)}")
    return int(value)


def _baseline(obj: Any, candles: Candles | dict[str, Candles] | None, data: dict | None, cash: float) -> Result:
    """The real result: `obj` itself, or a backtest of the strategy `obj` on `candles`."""
    if isinstance(obj, Result):
        return obj
    if not isinstance(obj, Strategy | str | dict):
        raise ConfigError(f"monte_carlo takes a qlab Result or a strategy (Strategy, template name, spec dict), "
                          f"got {type(obj).__name__}")
    strategy = resolve_strategy(obj)
    if candles is None:
        raise ConfigError(f"to simulate strategy {strategy.name!r} pass candles=..., e.g. qlab.load_sample('BTC/USDT', '1h')")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a run without trades is reported by the trade methods' error instead
        return backtest(candles, strategy, cash=cash, data=data)


# ---------------------------------------------------------------- the function


def monte_carlo(
    result_or_strategy: Result | Strategy | str | dict,
    method: str = "block_bootstrap",
    n: int = 1000,
    seed: int | None = 0,
    *,
    candles: Candles | dict[str, Candles] | None = None,
    data: dict[str, pd.Series] | None = None,
    cash: float = 10_000.0,
    block: float = 24.0,
    horizon: int | None = None,
    ranges: dict[str, Any] | None = None,
    jitter: float = 0.2,
    ruin: float = 0.5,
    grid: int = 250,
) -> MonteCarloResult:
    """Simulate `n` alternative paths of a backtest by `method` (see the module docstring for each).

    `result_or_strategy`: a `qlab.backtest` Result, or a strategy (with `candles`, and `data` for its extra
    series) that is backtested first with `cash`. `ruin`: the loss (a fraction of the starting equity) that
    counts as ruin in `probability_of_ruin()`. `grid`: how many points of each path are kept for the fan chart.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown Monte Carlo method {method!r}; use one of {', '.join(METHODS)}." + did_you_mean(str(method), METHODS))
    n = _check_count("n", n)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer)):
        raise ConfigError(f"seed={seed!r} must be a whole number (or None for a fresh random seed)")
    ruin = _check_fraction("ruin", ruin)
    grid = _check_count("grid", grid, 2)
    base = _baseline(result_or_strategy, candles, data, cash)
    equity = base.equity
    if len(equity) < 3:
        raise DataError(f"the backtest has {len(equity)} bars; Monte Carlo needs at least 3")
    bpy = float(base.simulation.bars_per_year)
    start = float(equity.iloc[0])
    opts: dict[str, Any] = {"bars_per_year": bpy, "bar": timeframe_delta(base.timeframe)}
    if method in TRADE_METHODS:
        out = _trades_mc(base, method, n, seed, grid, opts)
    elif method == "block_bootstrap":
        if isinstance(block, bool) or not isinstance(block, int | float) or not block >= 1:
            raise ConfigError(f"block={block!r} must be a mean block length in bars >= 1 (1 = iid bootstrap), e.g. 24")
        h = len(equity) - 1 if horizon is None else _check_count("horizon", horizon, 2)
        out = _bootstrap_mc(base, n, seed, float(block), h, grid, opts)
    else:
        out = _rerun_mc(base, method, n, seed, grid, opts, ranges, jitter)
    stats, real, times, paths, real_path, extra, notes, model = out
    metrics = _frame(stats, start, opts)
    for name, column in extra.items():
        metrics[name] = column
    real_row = _frame(real[None, :], start, opts).iloc[0]
    for name in extra:
        real_row[name] = opts.get(f"real_{name}", math.nan)
    opts.update({"n": n, "block": block if method == "block_bootstrap" else None})
    return MonteCarloResult(method, seed, metrics, real_row, times, paths, real_path, start, ruin, opts, notes, model)


def _frame(stats: np.ndarray, start: float, opts: dict[str, Any]) -> pd.DataFrame:
    """STATS rows as the metrics table: total return, CAGR over the run's years, drawdown length in days."""
    df = pd.DataFrame(stats, columns=list(mc_paths.STATS))
    growth = df["final_equity"].to_numpy() / start
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        cagr = np.where(growth > 0, np.power(growth, 1.0 / opts["years"]) - 1.0, -1.0)
    out = pd.DataFrame({"final_equity": df["final_equity"], "total_return": growth - 1.0, "cagr": cagr, "sharpe": df["sharpe"],
                        "max_drawdown": df["max_drawdown"],
                        "longest_drawdown_days": df["longest_drawdown_bars"] * (opts["bar"] / pd.Timedelta(days=1)),
                        "longest_drawdown_bars": df["longest_drawdown_bars"].astype(np.int64),
                        "worst_loss": df["worst_loss"], "mean_return": df["mean_return"]})
    return out


def _grid(points: int, keep: int) -> np.ndarray:
    return np.unique(np.linspace(0, points - 1, min(points, keep)).round().astype(np.int64))


def _trades_mc(base: Result, method: str, n: int, seed: int | None, keep: int, opts: dict[str, Any]):
    trades = base.trades[~base.trades["is_open"].astype(bool)].sort_values("exit_bar", kind="stable")
    if trades.empty:
        raise DataError(f"the backtest has no closed trades, so there is nothing to {method.replace('_', ' ')}; "
                        "use method='block_bootstrap' (resamples the equity's bar returns) or a longer backtest")
    eq = base.equity.to_numpy(dtype=np.float64)
    before = eq[np.maximum(trades["entry_bar"].to_numpy(dtype=np.int64) - 1, 0)]
    r = trades["net_pnl"].to_numpy(dtype=np.float64) / before
    m, start = len(r), float(eq[0])
    rng = np.random.default_rng(seed)
    drawn = rng.permuted(np.tile(r, (n, 1)), axis=1) if method == "reshuffle" else r[rng.integers(0, m, size=(n, m))]
    positions = np.concatenate(([0], trades["exit_bar"].to_numpy(dtype=np.int64)))
    opts["years"] = (len(eq) - 1) / opts["bars_per_year"]
    per_year = m / opts["years"]  # Sharpe per trade, annualised by trades per year
    paths = start * np.cumprod(np.concatenate([np.ones((n, 1)), 1.0 + drawn], axis=1), axis=1)
    real_values = start * np.cumprod(np.concatenate(([1.0], 1.0 + r)))
    stats = mc_paths.path_metrics_nb(paths, positions, per_year)
    real = mc_paths.path_metrics_nb(real_values[None, :], positions, per_year)[0]
    g = _grid(m + 1, keep)
    times = base.equity.index[positions[g]]
    notes = [f"{m} closed trades; each compounds its net PnL on the equity before its entry (open trades left out)."]
    return stats, real, times, paths[:, g], pd.Series(real_values, index=base.equity.index[positions]), {}, notes, None


def _bootstrap_mc(base: Result, n: int, seed: int | None, block: float, horizon: int, keep: int, opts: dict[str, Any]):
    r = np.ascontiguousarray(bar_returns(base.equity).to_numpy(), dtype=np.float64)
    start, bpy = float(base.equity.iloc[0]), opts["bars_per_year"]
    g = _grid(horizon + 1, keep)
    stats, at_grid = mc_paths.bootstrap_metrics_nb(r, mc_paths.path_seeds(seed, n), horizon, 1.0 / block, start, bpy, g)
    opts["years"] = horizon / bpy
    real = mc_paths.path_metrics_nb(base.equity.to_numpy(dtype=np.float64)[None, :], np.arange(len(r) + 1), bpy)[0]
    index = base.equity.index
    times = index[g] if horizon <= len(r) else pd.DatetimeIndex(index[0] + g * opts["bar"])
    notes = [f"stationary bootstrap of {len(r):,} bar returns, mean block {block:g} bars, {horizon:,} bars per path."]
    if horizon != len(r):
        notes.append(f"paths are {horizon:,} bars long, the real run {len(r):,}: compare CAGR and Sharpe, not final equity.")
    return stats, real, times, at_grid, base.equity, {}, notes, None


def default_ranges(strategy: Strategy, jitter: float) -> dict[str, tuple]:
    """+/- jitter (a fraction) around every numeric indicator parameter and protective-order distance of a spec."""
    _check_fraction("jitter", jitter)
    values = {f"{a}.{k}": v for a, ind in strategy.indicators.items() for k, v in ind.params.items()}
    values.update({f"orders.{k}": v for k, v in strategy.orders.items() if k in JITTER_FIELDS})
    out: dict[str, tuple] = {}
    for path, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or v == 0:
            continue
        if isinstance(v, int):
            lo = max(1, math.floor(v * (1 - jitter)))
            out[path] = (lo, max(lo + 1, math.ceil(v * (1 + jitter))))
        else:
            out[path] = (v * (1 - jitter), v * (1 + jitter))
    if not out:
        raise ConfigError(f"strategy {strategy.name!r} has no numeric parameter to jitter; pass ranges={{'path': (low, high)}}")
    return out


def _draws(ranges: dict[str, Any], strategy: Strategy, n: int, rng: np.random.Generator) -> pd.DataFrame:
    space = parse_space(ranges, strategy)
    cols = {}
    for d in space.dims:
        if d.kind == "choice":
            cols[d.name] = [d.choices[k] for k in rng.integers(0, len(d.choices), n)]
        elif d.kind == "int":
            cols[d.name] = rng.integers(int(d.low), int(d.high) + 1, n)
        else:
            cols[d.name] = rng.uniform(d.low, d.high, n)
    return pd.DataFrame(cols)


def _rerun_mc(base: Result, method: str, n: int, seed: int | None, keep: int, opts: dict[str, Any],
              ranges: dict[str, Any] | None, jitter: float):
    strategy = base.strategy
    if strategy is None:
        raise ConfigError(f"method {method!r} re-runs the strategy, but this Result came from signal frames; "
                          "pass the Strategy (or a Result of qlab.backtest(candles, strategy))")
    frames, cash = base.simulation.candles, base.simulation.initial_cash
    rng = np.random.default_rng(seed)
    model, params = None, None
    if method == "jitter":
        params = _draws(ranges if ranges is not None else default_ranges(strategy, jitter), strategy, n, rng)
        jobs = ((frames, strategy.with_params(**{k: _plain(v) for k, v in row.items()})) for row in params.to_dict("records"))
    else:
        if len(frames) != 1:
            raise ConfigError(f"synthetic paths are generated for one symbol, this run has {len(frames)}; "
                              "use method='block_bootstrap' for a portfolio (it keeps the assets' joint returns)")
        from qlab.research.synthetic import fit_model, synthetic_candles

        name, real = next(iter(frames.items()))
        model = fit_model(method, real["close"])
        returns = model.simulate(n, len(real) - 1, rng)
        jobs = (({name: synthetic_candles(real, returns[i], rng)}, strategy) for i in range(n))
    curves, trades, failed, ok = [], [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # runs without trades are counted below, not warned one by one
        for i, (c, s) in enumerate(jobs):
            try:
                res = backtest(c, s, cash=cash, data=base.data)
            except (QlabError, ValueError) as exc:
                failed.append(f"{exc}")
                continue
            curves.append(res.equity.to_numpy(dtype=np.float64))
            trades.append(int((~res.trades["is_open"].astype(bool)).sum()))
            ok.append(i)
    if not curves:
        raise StrategyError(f"every one of the {n} {method} runs failed; the first error: {failed[0]}")
    paths = np.vstack(curves)
    bpy = opts["bars_per_year"]
    opts["years"] = (paths.shape[1] - 1) / bpy
    positions = np.arange(paths.shape[1])
    stats = mc_paths.path_metrics_nb(paths, positions, bpy)
    real = mc_paths.path_metrics_nb(base.equity.to_numpy(dtype=np.float64)[None, :], positions, bpy)[0]
    g = _grid(paths.shape[1], keep)
    extra: dict[str, Any] = {"n_trades": np.array(trades)}
    opts["real_n_trades"] = int((~base.trades["is_open"].astype(bool)).sum())
    if params is not None:
        for col in params.columns:
            extra[col] = params[col].to_numpy()[ok]
            opts[f"real_{col}"] = math.nan
    notes = [f"{len(curves)} of {n} runs of {strategy.name!r} on {'jittered parameters' if method == 'jitter' else method + ' paths'}"]
    if failed:
        notes.append(f"{len(failed)} runs failed (e.g. {failed[0]}) and are left out")
    zero = int((np.array(trades) == 0).sum())
    if zero:
        notes.append(f"{zero} runs made no trade")
    return stats, real, base.equity.index[g], paths[:, g], base.equity, extra, notes, model


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value

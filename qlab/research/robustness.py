"""Is an optimised result real? Market regimes, parameter neighbourhoods, deflated Sharpe and PBO.

* `label_regimes` labels every bar from the candles alone (trend up / down / sideways, volatility
  high / low), causally; `regime_performance` splits an equity curve's returns by those labels.
* `neighbourhood`, `falloff`, `heatmap_table`, `neighbourhood_figure`: how the metric of a grid of
  trials falls off around the optimum (a sharp isolated peak is a warning sign).
* `deflated_sharpe` (Bailey & López de Prado 2014): the probability that the best Sharpe of N trials
  beats the best Sharpe that N skill-less trials would show.
* `pbo` (Bailey, Borwein, López de Prado & Zhu 2015): the probability of backtest overfitting by
  combinatorially symmetric cross-validation (CSCV) over a matrix of per-bar trial returns.

Returns are simple per-bar returns (as in `qlab.analytics.metrics`); a Sharpe with a zero standard
deviation (below 1e-12) is 0.0 when the mean is 0 too and +/-inf otherwise.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from qlab.analytics.metrics import TINY, bar_returns
from qlab.errors import DataError

UNKNOWN = "unknown"
TRENDS = ("up", "down", "sideways")
VOLATILITIES = ("high", "low")
REGIMES = tuple(f"{t}/{v}" for t in TRENDS for v in VOLATILITIES)


def _positive_int(value: Any, name: str, least: int = 2) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
        raise DataError(f"{name}={value!r} must be a whole number >= {least}")
    return int(value)


def _sharpe(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """mean / std with the zero-std rule (0/0 -> 0.0, x/0 -> +/-inf); NaN stays NaN."""
    mean, std = np.asarray(mean, dtype=float), np.asarray(std, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(std <= TINY, np.where(np.abs(mean) <= TINY, 0.0, np.copysign(np.inf, mean)), mean / std)
    return np.where(np.isnan(mean) | np.isnan(std), np.nan, out)


# ---------------------------------------------------------------- market regimes


def label_regimes(candles: pd.DataFrame | pd.Series, *, trend_window: int = 200, trend_threshold: float = 0.5,
                  vol_window: int | None = None, vol_quantile: float = 0.5, vol_lookback: int | None = None,
                  details: bool = False) -> pd.DataFrame:
    """Label each bar's market regime from the closes up to and including that bar (causal).

    Trend: with MA the `trend_window`-bar simple moving average of the close and sigma the standard
    deviation (ddof=1) of the last `trend_window` log returns, the trend score is
        z_t = ln(MA_t / MA_{t - trend_window}) / (sigma_t * sqrt(trend_window)),
    the moving average's log change over one window in units of the noise expected over that window
    (for a driftless random walk z has a standard deviation of about 0.8). "up" when
    z > trend_threshold, "down" when z < -trend_threshold, else "sideways" (a flat price scores 0).
    Volatility: v_t = the standard deviation of the last `vol_window` log returns (default:
    `trend_window`); "high" when v_t exceeds the `vol_quantile` quantile of v over all bars so far
    (expanding; or over the last `vol_lookback` bars), else "low".
    Warm-up: "unknown" until defined: the trend from row 2 * trend_window - 1 (MA, then its change
    over a window), the volatility once vol_window values of v exist (from row 2 * vol_window - 1 with
    the expanding reference); `regime` ("up/high", ...) is "unknown" when either part is.
    Windows count bars, not time (a gap in the data is not a bar). Columns: trend, volatility,
    regime, and with `details=True` the numbers behind them: trend_score, vol, vol_ref.
    """
    if not isinstance(candles, pd.Series) and "close" not in getattr(candles, "columns", ()):
        raise DataError(f"expected Candles (a frame with a 'close' column) or a close Series, got {type(candles).__name__}")
    close = pd.to_numeric(candles if isinstance(candles, pd.Series) else candles["close"], errors="coerce").astype(float)
    if (close.dropna() <= 0).any():
        raise DataError("the close has a zero or negative price; log returns need positive prices")
    w = _positive_int(trend_window, "trend_window")
    vw = w if vol_window is None else _positive_int(vol_window, "vol_window")
    if not 0.0 < vol_quantile < 1.0:
        raise DataError(f"vol_quantile={vol_quantile!r} must lie strictly between 0 and 1 (0.5 = the median)")
    if not trend_threshold >= 0:
        raise DataError(f"trend_threshold={trend_threshold!r} must be >= 0 (in units of the window's noise)")
    logret, ma = np.log(close).diff(), close.rolling(w).mean()
    score = _sharpe(np.log(ma / ma.shift(w)).to_numpy(), (logret.rolling(w).std() * math.sqrt(w)).to_numpy())
    vol = logret.rolling(vw).std()
    past = vol.expanding(min_periods=vw) if vol_lookback is None else \
        vol.rolling(_positive_int(vol_lookback, "vol_lookback", 1), min_periods=min(vw, int(vol_lookback)))
    ref = past.quantile(vol_quantile)
    trend = np.where(np.isnan(score), UNKNOWN,
                     np.where(score > trend_threshold, "up", np.where(score < -trend_threshold, "down", "sideways")))
    v, r = vol.to_numpy(), ref.to_numpy()
    volatility = np.where(np.isnan(v) | np.isnan(r), UNKNOWN, np.where(v > r, "high", "low"))
    regime = np.where((trend != UNKNOWN) & (volatility != UNKNOWN), np.char.add(np.char.add(trend, "/"), volatility), UNKNOWN)
    out = pd.DataFrame({"trend": trend, "volatility": volatility, "regime": regime}, index=close.index)
    if details:
        out["trend_score"], out["vol"], out["vol_ref"] = score, v, r
    return out


def _order(labels: np.ndarray, known: tuple[str, ...]) -> list[str]:
    seen = set(labels.tolist())
    return [k for k in known if k in seen] + sorted(seen - set(known) - {UNKNOWN}) + ([UNKNOWN] if UNKNOWN in seen else [])


def _group_stats(r: np.ndarray, n_total: int, bpy: float) -> dict[str, float]:
    n, curve, active = len(r), np.concatenate(([1.0], np.cumprod(1.0 + r))), r != 0
    try:
        ann = float(curve[-1]) ** (bpy / n) - 1.0
    except OverflowError:
        ann = math.inf
    return {"bars": n, "share": n / n_total, "contribution": float(np.prod(1.0 + r)) - 1.0, "ann_return": ann,
            "sharpe": float(_sharpe(r.mean(), r.std(ddof=1))) * math.sqrt(bpy) if n >= 2 else math.nan,
            "max_drawdown": float((curve / np.maximum.accumulate(curve) - 1.0).min()),
            "hit_rate": float((r[active] > 0).mean()) if active.any() else math.nan}


def regime_performance(equity: pd.Series, regimes: pd.DataFrame | pd.Series, bars_per_year: float) -> pd.DataFrame:
    """Performance of an equity curve in each market regime, each trend and each volatility state.

    The return of bar t (E_t / E_{t-1} - 1) belongs to the label of bar t-1: the regime known when
    the bar started (a label uses bar t-1's close, so the return that follows is out of its sample).
    Bars whose previous label is missing from `regimes` count as "unknown". Rows are indexed by
    (by, label), by in all / regime / trend / volatility; columns:
      bars (returns counted), share (of all returns), contribution (prod(1 + r) - 1 over those bars:
      the contributions of the labels of one `by` compound to the total return), ann_return
      ((1 + contribution) ** (bars_per_year / bars) - 1, per year spent in the regime), sharpe
      (mean / std(ddof=1) * sqrt(bars_per_year)), max_drawdown (of the regime-only compounded curve,
      <= 0), hit_rate (share of the bars with a non-zero return whose return is positive; NaN when the
      strategy was flat through the regime).
    """
    if not (isinstance(bars_per_year, int | float | np.integer | np.floating) and bars_per_year > 0):
        raise DataError(f"bars_per_year={bars_per_year!r} must be a positive number, e.g. 8760 for 1h")
    if not isinstance(equity, pd.Series):
        raise DataError("equity must be a pandas Series indexed like the candles (the engine's Result.equity)")
    frame = regimes.to_frame("regime") if isinstance(regimes, pd.Series) else regimes
    present = [c for c in ("regime", "trend", "volatility") if c in frame.columns]
    if not present:
        raise DataError("regimes needs a 'regime', 'trend' or 'volatility' column (the output of label_regimes)")
    r = bar_returns(equity).to_numpy()
    labels = frame[present].reindex(equity.index)
    if labels.notna().to_numpy().sum() == 0:
        raise DataError(f"the regimes share no timestamp with the equity curve ({equity.index[0]} .. {equity.index[-1]}); "
                        "label the candles the equity was computed on")
    labels = labels.astype(object).fillna(UNKNOWN).iloc[:-1]
    rows: dict[tuple[str, str], dict[str, float]] = {("all", "all"): _group_stats(r, len(r), bars_per_year)}
    for by in present:
        lab = labels[by].astype(str).to_numpy()
        known = {"regime": REGIMES, "trend": TRENDS, "volatility": VOLATILITIES}[by]
        for name in _order(lab, known):
            rows[(by, name)] = _group_stats(r[lab == name], len(r), float(bars_per_year))
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index = pd.MultiIndex.from_tuples(list(rows), names=["by", "label"])
    return out


# ---------------------------------------------------------------- parameter neighbourhoods


def _grid(trials: pd.DataFrame, params: list[str], metric: str, agg: str | Callable) -> pd.DataFrame:
    missing = [c for c in [*params, metric] if c not in trials.columns]
    if missing:
        raise DataError(f"the trials table lacks column(s) {', '.join(map(repr, missing))}; it has {', '.join(map(str, trials.columns))}")
    grid = trials.groupby(list(params), sort=True)[metric].agg(agg).dropna().reset_index()
    if grid.empty:
        raise DataError(f"no trial has a value for {metric!r}")
    return grid


def _offsets(trials: pd.DataFrame, params: list[str], metric: str, best: dict | None, agg) -> tuple[pd.DataFrame, dict, float]:
    """The aggregated grid with d_<param> (grid steps from the optimum) and distance (the largest |d|)."""
    grid = _grid(trials, params, metric, agg)
    if best is None:
        best = grid.loc[grid[metric].idxmax(), params].to_dict()
    at = np.ones(len(grid), dtype=bool)
    for p in params:
        if p not in best:
            raise DataError(f"best={best!r} lacks parameter {p!r}; give a value for each of {params}")
        steps = np.sort(trials[p].dropna().unique())
        where = np.flatnonzero(steps == best[p])
        if not len(where):
            raise DataError(f"best[{p!r}]={best[p]!r} is not one of the values tried: {steps.tolist()}")
        grid[f"d_{p}"] = np.searchsorted(steps, grid[p].to_numpy()) - where[0]
        at &= grid[p].to_numpy() == best[p]
    if not at.any():
        raise DataError(f"no trial with a {metric!r} value at best={best!r}")
    grid["distance"] = grid[[f"d_{p}" for p in params]].abs().max(axis=1)
    return grid, {p: best[p] for p in params}, float(grid.loc[at, metric].iloc[0])


def _relative(value: Any, optimum: float) -> Any:
    """1 - (optimum - value) / |optimum|: value / optimum for a positive optimum; NaN for a zero one."""
    return 1.0 - (optimum - value) / abs(optimum) if abs(optimum) > TINY else value * math.nan


def neighbourhood(trials: pd.DataFrame, params: list[str], metric: str, best: dict | None = None, radius: int = 1,
                  *, agg: str | Callable = "max") -> pd.DataFrame:
    """The metric at the optimum and at its grid neighbours, with a stability score.

    `trials` holds one row per trial with a column per parameter and the metric (higher is better;
    negate a metric such as volatility first). Each parameter's grid is its sorted tried values;
    rows sharing the same `params` are aggregated with `agg` first. `best` (default: the highest
    metric) is a dict {param: value}. A neighbour lies within `radius` grid steps in every parameter
    (distance = the largest step count, the Chebyshev distance). Returned rows: the optimum and its
    neighbours, with the params, the metric, d_<param>, distance and relative
    (= 1 - (optimum - metric) / |optimum|, which is metric / optimum when the optimum is positive and
    stays "1 = as good as the optimum, lower = worse" when it is negative; NaN when it is 0).
    attrs: optimum (dict), optimum_metric, n_neighbours, stability (the relative value of the mean
    neighbour metric: 1.0 = a plateau, near 0 or below = an isolated spike; NaN without neighbours)
    and falloff ({distance: relative value of the mean metric} over the whole grid, see `falloff`).
    """
    radius = _positive_int(radius, "radius", 1)
    grid, best, opt = _offsets(trials, list(params), metric, best, agg)
    table = grid[grid["distance"] <= radius].sort_values(["distance", *params]).reset_index(drop=True)
    table["relative"] = _relative(table[metric], opt)
    nb = table.loc[table["distance"] > 0, metric]
    table.attrs.update(optimum=best, optimum_metric=opt, n_neighbours=len(nb), stability=float(_relative(nb.mean(), opt)),
                       falloff=falloff(trials, params, metric, best, agg=agg)["relative"].to_dict())
    return table


def falloff(trials: pd.DataFrame, params: list[str], metric: str, best: dict | None = None,
            *, agg: str | Callable = "max") -> pd.DataFrame:
    """The metric by grid distance from the optimum (0 = the optimum): n, mean, median, min, and
    relative (of the mean, as in `neighbourhood`), one row per distance."""
    grid, _, opt = _offsets(trials, list(params), metric, best, agg)
    out = grid.groupby("distance")[metric].agg(["size", "mean", "median", "min"]).rename(columns={"size": "n"})
    out["relative"] = _relative(out["mean"], opt)
    return out


def heatmap_table(trials: pd.DataFrame, x: str, y: str, metric: str, agg: str | Callable = "max") -> pd.DataFrame:
    """The metric for each (y, x) pair: rows are y's values, columns x's, both sorted; rows that share
    a pair (other parameters differ) are combined with `agg`; NaN where no trial ran."""
    _grid(trials, [x, y], metric, agg)  # checks the columns
    return trials.pivot_table(index=y, columns=x, values=metric, aggfunc=agg, dropna=False, sort=True)


def neighbourhood_figure(trials: pd.DataFrame, x: str, y: str, metric: str, best: dict | None = None,
                         agg: str | Callable = "max"):
    """A plotly heatmap of `heatmap_table` with the optimum (`best`, or the highest cell) marked."""
    import plotly.graph_objects as go

    table = heatmap_table(trials, x, y, metric, agg)
    if best is None:
        iy, ix = np.unravel_index(np.nanargmax(table.to_numpy(dtype=float)), table.shape)
        best = {x: table.columns[ix], y: table.index[iy]}
    fig = go.Figure(go.Heatmap(z=table.to_numpy(dtype=float), x=[str(v) for v in table.columns], y=[str(v) for v in table.index],
                               colorscale="Viridis", colorbar={"title": metric}, name=metric))
    fig.add_trace(go.Scatter(x=[str(best[x])], y=[str(best[y])], mode="markers", name="optimum",
                             marker={"symbol": "x", "size": 14, "color": "red", "line": {"width": 2}}))
    fig.update_layout(title=f"{metric} by {x} and {y}", xaxis={"title": x, "type": "category"},
                      yaxis={"title": y, "type": "category"}, template="plotly_white")
    return fig


# ---------------------------------------------------------------- deflated Sharpe ratio


def deflated_sharpe(sharpe: float, n_trials: int | None, sharpe_std_across_trials: float | np.ndarray, n_obs: int,
                    skew: float = 0.0, kurtosis: float = 3.0, *, annualised: bool = False,
                    bars_per_year: float | None = None) -> dict[str, float]:
    """The deflated Sharpe ratio (Bailey & López de Prado 2014) of the best of `n_trials` trials.

    The formulas need PER-OBSERVATION Sharpe ratios (mean / std of the per-bar returns, not times
    sqrt(bars_per_year)). With `annualised=True`, `sharpe` and the trials' Sharpes (or their std)
    are annualised ones and are divided by sqrt(bars_per_year) first. `sharpe_std_across_trials` is
    the std of the trials' Sharpes, or the array of those Sharpes (std with ddof=1; n_trials then
    defaults to their count). `n_obs` is the number of returns behind `sharpe`; `skew` and
    `kurtosis` (Pearson: 3 for a normal) describe them. With SR per observation, V = std², γ the
    Euler-Mascheroni constant, Φ the standard normal CDF:
        E[max SR] = sqrt(V) * ((1 - γ) Φ^-1(1 - 1/N) + γ Φ^-1(1 - 1/(N e)))   (0 when N = 1)
        PSR(SR*) = Φ((SR - SR*) sqrt(n_obs - 1) / sqrt(1 - skew SR + (kurtosis - 1) / 4 SR²))
        DSR = PSR(E[max SR]).
    Correlated trials count as fewer independent ones: pass an effective N when you know it.
    Returns sharpe, expected_max_sharpe, sharpe_std (all per observation), psr (= PSR(0)), dsr,
    n_trials, n_obs, and with bars_per_year also sharpe_annualised and expected_max_sharpe_annualised.
    """
    if (annualised and bars_per_year is None) or (bars_per_year is not None and not bars_per_year > 0):
        raise DataError(f"bars_per_year={bars_per_year!r}: annualised=True needs a positive bars_per_year (8760 for 1h)")
    scale = math.sqrt(bars_per_year) if annualised else 1.0
    if np.ndim(sharpe_std_across_trials) == 0:
        std = float(sharpe_std_across_trials) / scale
    else:
        trials = np.asarray(sharpe_std_across_trials, dtype=float)
        trials = trials[~np.isnan(trials)] / scale
        if len(trials) < 2 or not np.isfinite(trials).all():
            raise DataError(f"need at least 2 finite trial Sharpe ratios, got {len(trials)} (or an infinite one)")
        std = float(trials.std(ddof=1))
        n_trials = len(trials) if n_trials is None else n_trials
    n = _positive_int(n_trials, "n_trials", 1)
    n_obs = _positive_int(n_obs, "n_obs")
    if not (math.isfinite(std) and std >= 0):
        raise DataError(f"sharpe_std_across_trials={sharpe_std_across_trials!r} must be a finite number >= 0")
    sr = float(sharpe) / scale
    g = np.euler_gamma
    e_max = 0.0 if n == 1 else std * ((1 - g) * stats.norm.ppf(1 - 1 / n) + g * stats.norm.ppf(1 - 1 / (n * math.e)))
    var = 1.0 - skew * sr + (kurtosis - 1.0) / 4.0 * sr**2
    if not var > 0:
        raise DataError(f"1 - skew*SR + (kurtosis-1)/4*SR² = {var:.4g} <= 0 (SR={sr:.4g} per bar, skew={skew}, "
                        f"kurtosis={kurtosis}); check that kurtosis is Pearson's (3 for a normal), not excess")

    def psr(threshold: float) -> float:
        return float(stats.norm.cdf((sr - threshold) * math.sqrt(n_obs - 1) / math.sqrt(var)))

    out = {"sharpe": sr, "expected_max_sharpe": float(e_max), "sharpe_std": std, "psr": psr(0.0), "dsr": psr(e_max),
           "n_trials": n, "n_obs": n_obs}
    if bars_per_year is not None:
        out["sharpe_annualised"] = sr * math.sqrt(bars_per_year)
        out["expected_max_sharpe_annualised"] = float(e_max) * math.sqrt(bars_per_year)
    return out


def deflated_sharpe_from_returns(best_returns: pd.Series | np.ndarray, trial_sharpes: np.ndarray, bars_per_year: float,
                                 *, annualised: bool = True, n_trials: int | None = None) -> dict[str, float]:
    """`deflated_sharpe` of the best trial from its per-bar returns (NaN dropped): its per-bar Sharpe,
    skew and Pearson kurtosis (population moments, scipy.stats), with the Sharpes of all trials
    (the best included; annualised, as compute_metrics reports them, unless annualised=False)."""
    r = np.asarray(best_returns, dtype=float)[~np.isnan(np.asarray(best_returns, dtype=float))]
    if len(r) < 3:
        raise DataError(f"need at least 3 returns for a Sharpe, skew and kurtosis, got {len(r)}")
    sr = float(_sharpe(r.mean(), r.std(ddof=1)))
    trials = np.asarray(trial_sharpes, dtype=float) / (math.sqrt(bars_per_year) if annualised else 1.0)
    skew, kurt = (0.0, 3.0) if r.std() <= TINY else (float(stats.skew(r)), float(stats.kurtosis(r, fisher=False)))
    return deflated_sharpe(sr, n_trials, trials, len(r), skew, kurt, bars_per_year=bars_per_year)


# ---------------------------------------------------------------- probability of backtest overfitting


@dataclass(frozen=True, eq=False)
class PBOResult:
    """CSCV output (see `pbo`). Arrays have one value per combination: in_sample (its in-sample block
    numbers), best_trial (the best in-sample trial's column number), is_performance and
    oos_performance (that trial's metric in and out of sample), omega and logits."""

    pbo: float
    prob_oos_loss: float
    degradation_slope: float
    degradation_intercept: float
    logits: np.ndarray
    omega: np.ndarray
    is_performance: np.ndarray
    oos_performance: np.ndarray
    best_trial: np.ndarray
    in_sample: np.ndarray
    trials: tuple  # the column names (or 0..N-1)
    n_splits: int
    n_combinations_total: int  # C(S, S/2), of which n_combinations were used
    metric: str

    @property
    def n_combinations(self) -> int:
        return len(self.logits)

    def table(self) -> pd.DataFrame:
        """One row per combination: the chosen trial, IS and OOS metric, omega and logit."""
        return pd.DataFrame({"trial": [self.trials[i] for i in self.best_trial], "is_performance": self.is_performance,
                             "oos_performance": self.oos_performance, "omega": self.omega, "logit": self.logits})

    def figure(self, kind: str = "logits"):
        return pbo_figure(self, kind)


_METRICS = ("sharpe", "mean", "total_return")


def _combinations(s: int, max_combinations: int | None, seed: int) -> tuple[np.ndarray, int]:
    total = math.comb(s, s // 2)
    if max_combinations is None or total <= max_combinations:
        return np.array(list(itertools.combinations(range(s), s // 2)), dtype=np.int64), total
    k = _positive_int(max_combinations, "max_combinations", 1)
    rng = np.random.default_rng(seed)
    if total <= 200_000:
        every = np.array(list(itertools.combinations(range(s), s // 2)), dtype=np.int64)
        return every[np.sort(rng.choice(total, k, replace=False))], total
    chosen: set[tuple[int, ...]] = set()
    while len(chosen) < k:
        chosen.add(tuple(sorted(rng.permutation(s)[: s // 2].tolist())))
    return np.array(sorted(chosen), dtype=np.int64), total


def _block_metric(metric: str, n: np.ndarray, s: np.ndarray, q: np.ndarray, mu: np.ndarray, logs: np.ndarray) -> np.ndarray:
    """The metric from block sums: n rows, s sum and q sum of squares of the centred returns, logs sum of log1p."""
    if metric == "mean":
        return s / n[:, None] + mu
    if metric == "total_return":
        return np.expm1(logs)
    var = np.maximum(q - s**2 / n[:, None], 0.0) / (n[:, None] - 1)
    return _sharpe(s / n[:, None] + mu, np.sqrt(var))


def pbo(returns_matrix: pd.DataFrame | np.ndarray, n_splits: int = 16, metric: str | Callable = "sharpe", *,
        max_combinations: int | None = 20_000, seed: int = 0) -> PBOResult:
    """Probability of backtest overfitting by CSCV (Bailey, Borwein, López de Prado & Zhu 2015).

    `returns_matrix` is T rows (bars, in time order) by N columns (trials), per-bar returns, no NaN.
    The rows are cut into `n_splits` (S, even) consecutive blocks of near-equal size (np.array_split:
    sizes differ by at most one row). For every choice of S/2 blocks as in-sample (C(S, S/2)
    combinations in itertools order; a seeded random subset of `max_combinations` when there are
    more), the trial with the best in-sample metric is found (the first one on ties), and its
    relative rank out of sample (the complement blocks) is omega = rank / (N + 1), rank in 1..N from
    the worst (ties share the average rank); logit = ln(omega / (1 - omega)).
    pbo = the share of logits <= 0. prob_oos_loss = the share of combinations whose chosen trial has
    a negative out-of-sample metric. degradation_slope/intercept: least squares of OOS on IS metric.
    metric: "sharpe" (per bar, mean / std ddof=1, not annualised), "mean", "total_return"
    (prod(1 + r) - 1), or a callable mapping a rows x N array to N values (looped, slower).
    """
    names = tuple(returns_matrix.columns) if isinstance(returns_matrix, pd.DataFrame) else None
    x = np.asarray(returns_matrix, dtype=float)
    if x.ndim != 2 or x.shape[1] < 2:
        raise DataError(f"returns_matrix must be 2-D, bars x trials, with at least 2 trials; got shape {x.shape}")
    if not np.isfinite(x).all():
        raise DataError("returns_matrix holds NaN or infinite values; fill flat bars with 0 and drop the warm-up rows")
    t, n_trials = x.shape
    s = _positive_int(n_splits, "n_splits")
    if s % 2 or t < 2 * s:
        raise DataError(f"n_splits={s} must be even and at most T/2 = {t // 2} (each block needs 2 rows)")
    if not callable(metric) and metric not in _METRICS:
        raise DataError(f"metric={metric!r} is not one of {_METRICS} or a function of a rows x trials array")
    if metric == "total_return" and (x <= -1).any():
        raise DataError("a return <= -100 % in returns_matrix; total_return needs returns above -1")
    combos, total = _combinations(s, max_combinations, seed)
    blocks = np.array_split(np.arange(t), s)
    starts, counts = np.array([b[0] for b in blocks]), np.array([len(b) for b in blocks], dtype=float)
    mu = x.mean(axis=0)
    xc = x - mu  # centred, so a constant trial has exactly zero variance
    sums, sq = np.add.reduceat(xc, starts, axis=0), np.add.reduceat(xc**2, starts, axis=0)
    logs = np.add.reduceat(np.log1p(x), starts, axis=0) if metric == "total_return" else sums
    step = max(1, 2_000_000 // n_trials)  # combinations per chunk: about 16 MB per C x N array
    best, is_best, chosen, rank = (np.empty(len(combos), dtype=d) for d in (np.int64, float, float, float))
    for lo in range(0, len(combos), step):
        chunk = combos[lo:lo + step]
        if callable(metric):
            rows_of = [np.concatenate([blocks[b] for b in c]) for c in chunk]
            rows_out = [np.setdiff1d(np.arange(t), r) for r in rows_of]
            perf_is, perf_oos = (np.array([metric(x[r]) for r in rr], dtype=float) for rr in (rows_of, rows_out))
        else:
            member = np.zeros((len(chunk), s))
            member[np.arange(len(chunk))[:, None], chunk] = 1.0
            perf_is, perf_oos = (_block_metric(metric, m @ counts, m @ sums, m @ sq, mu, m @ logs) for m in (member, 1.0 - member))
        perf_is, perf_oos = (np.where(np.isnan(p), -np.inf, p) for p in (perf_is, perf_oos))
        i, arange = slice(lo, lo + len(chunk)), np.arange(len(chunk))
        best[i] = np.argmax(perf_is, axis=1)
        is_best[i], chosen[i] = perf_is[arange, best[i]], perf_oos[arange, best[i]]
        rank[i] = (perf_oos < chosen[i, None]).sum(axis=1) + ((perf_oos == chosen[i, None]).sum(axis=1) + 1) / 2
    omega = rank / (n_trials + 1)
    logits = np.log(omega / (1 - omega))
    fit = np.isfinite(is_best) & np.isfinite(chosen)
    slope, intercept = (np.polyfit(is_best[fit], chosen[fit], 1) if np.unique(is_best[fit]).size >= 2
                        else (math.nan, math.nan))
    return PBOResult(pbo=float((logits <= 0).mean()), prob_oos_loss=float((chosen < 0).mean()),
                     degradation_slope=float(slope), degradation_intercept=float(intercept), logits=logits, omega=omega,
                     is_performance=is_best, oos_performance=chosen, best_trial=best, in_sample=combos,
                     trials=names or tuple(range(n_trials)), n_splits=s, n_combinations_total=total,
                     metric=metric if isinstance(metric, str) else getattr(metric, "__name__", "custom"))


def pbo_figure(result: PBOResult, kind: str = "logits"):
    """kind="logits": a histogram of the logits (PBO = the mass at or left of 0); kind="degradation":
    out-of-sample vs in-sample metric of the chosen trial, one dot per combination, with the fitted line."""
    import plotly.graph_objects as go

    if kind == "logits":
        fig = go.Figure(go.Histogram(x=result.logits, nbinsx=40, name="logit"))
        fig.add_vline(x=0.0, line={"color": "red", "dash": "dash"})
        fig.update_layout(title=f"CSCV logits: PBO = {result.pbo:.1%} ({result.n_combinations} combinations)",
                          xaxis_title="logit of the out-of-sample rank of the in-sample best", yaxis_title="combinations")
    elif kind == "degradation":
        fig = go.Figure(go.Scatter(x=result.is_performance, y=result.oos_performance, mode="markers", name="combination",
                                   marker={"size": 4, "opacity": 0.5}))
        finite = result.is_performance[np.isfinite(result.is_performance)]
        if math.isfinite(result.degradation_slope):
            xs = np.array([finite.min(), finite.max()])
            fig.add_trace(go.Scatter(x=xs, y=result.degradation_intercept + result.degradation_slope * xs, mode="lines",
                                     name=f"fit: slope {result.degradation_slope:.2f}"))
        fig.update_layout(title=f"Performance degradation ({result.metric}); P(OOS loss) = {result.prob_oos_loss:.1%}",
                          xaxis_title=f"in-sample {result.metric}", yaxis_title=f"out-of-sample {result.metric}")
    else:
        raise DataError(f"kind={kind!r}; use 'logits' or 'degradation'")
    fig.update_layout(template="plotly_white")
    return fig

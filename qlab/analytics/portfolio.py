"""Portfolio analytics: where the PnL came from, how the assets move together, where the risk sits,
and how the strategy relates to a benchmark.

Conventions (pinned by tests/analytics/test_portfolio.py)
---------------------------------------------------------
* Per-asset contribution returns: c_i,t = (PnL_i,t - PnL_i,t-1) / E_t-1, the asset's cumulative net
  PnL change over the account equity before the bar. They add up to the portfolio's bar return when
  equity = initial cash + the sum of the assets' PnL (the engine's accounting).
* Variance decomposition of weights w and covariance S: portfolio variance V = w'Sw, volatility
  s = sqrt(V); marginal risk dS/dw_i = (Sw)_i / s; variance contribution w_i (Sw)_i (they sum to V);
  risk contribution w_i (Sw)_i / s (they sum to s); share = variance contribution / V (sums to 1).
* beta_alpha: OLS of the strategy's per-bar excess return on the benchmark's,
  r_s - rf = a + b (r_b - rf) + e; alpha is annualised ARITHMETICALLY, a * bars_per_year (not
  compounded); r2 = correlation². Undefined cases (fewer than 2 common bars, a constant benchmark)
  give NaN.
* The benchmark is, by default, Bitcoin: the report labels it "BTC", and the caller passes BTC's close
  (e.g. `qlab.load_sample("BTC/USDT", "1h").close`) covering the equity's bars; nothing is loaded
  behind the caller's back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from qlab.analytics.metrics import bar_returns, per_bar_risk_free
from qlab.errors import DataError


def _final_pnl(asset_pnl: pd.DataFrame) -> pd.Series:
    if not isinstance(asset_pnl, pd.DataFrame) or asset_pnl.shape[1] == 0:
        raise DataError("asset_pnl must be a DataFrame with one column of cumulative net PnL per asset "
                        "(the engine's Result.asset_pnl)")
    if len(asset_pnl) == 0:
        return pd.Series(0.0, index=asset_pnl.columns)
    return asset_pnl.ffill().fillna(0.0).iloc[-1].astype(float)


def asset_contribution(asset_pnl: pd.DataFrame, initial_cash: float) -> pd.DataFrame:
    """Each asset's final net PnL, its share of the total PnL (sums to 1; NaN when the total is 0)
    and its return contribution pnl / initial_cash (sums to the account's total return)."""
    if not initial_cash > 0:
        raise DataError(f"initial_cash={initial_cash!r} must be > 0")
    pnl = _final_pnl(asset_pnl)
    total = float(pnl.sum())
    share = pnl / total if abs(total) > 0 else pd.Series(math.nan, index=pnl.index)
    out = pd.DataFrame({"pnl": pnl, "share": share, "return_contribution": pnl / float(initial_cash)})
    out.index.name = "asset"
    return out


def contribution_returns(asset_pnl: pd.DataFrame, equity: pd.Series) -> pd.DataFrame:
    """Per-bar return contribution of each asset: change of its cumulative PnL / equity of the bar before."""
    pnl = asset_pnl.ffill().fillna(0.0).astype(float)
    if not pnl.index.equals(equity.index):
        raise DataError(f"asset_pnl ({len(pnl)} rows, {pnl.index[:1].tolist()}..) and equity ({len(equity)} rows, "
                        f"{equity.index[:1].tolist()}..) must share one index; pass both from the same Result")
    prev = equity.shift(1).to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = pnl.diff().div(np.where(prev > 0, prev, np.nan), axis=0)
    return out.iloc[1:].fillna(0.0)


def correlation_matrix(returns_by_asset: pd.DataFrame, *, method: str = "pearson", min_periods: int = 2) -> pd.DataFrame:
    """Pairwise correlation of per-asset returns (symmetric, 1 on the diagonal; NaN for a constant column)."""
    if not isinstance(returns_by_asset, pd.DataFrame):
        raise DataError("returns_by_asset must be a DataFrame with one column of returns per asset")
    return returns_by_asset.astype(float).corr(method=method, min_periods=min_periods)


def _align(weights: Any, cov: Any) -> tuple[np.ndarray, np.ndarray, pd.Index]:
    if isinstance(cov, pd.DataFrame):
        labels = cov.index
        if isinstance(weights, pd.Series):
            missing = [a for a in labels if a not in weights.index]
            if missing:
                raise DataError(f"weights lack asset(s) {missing} that the covariance matrix has")
            weights = weights.reindex(labels)
        matrix = cov.to_numpy(dtype=float)
    else:
        matrix = np.asarray(cov, dtype=float)
        labels = weights.index if isinstance(weights, pd.Series) else pd.RangeIndex(len(matrix))
    w = np.asarray(weights, dtype=float).ravel()
    if matrix.ndim != 2 or matrix.shape != (len(w), len(w)):
        raise DataError(f"cov has shape {matrix.shape} but there are {len(w)} weights; it must be {len(w)} x {len(w)}")
    if not np.allclose(matrix, matrix.T, equal_nan=True):
        raise DataError("cov is not symmetric; pass a covariance matrix such as returns.cov()")
    return w, matrix, pd.Index(labels)


def portfolio_variance(weights: Any, cov: Any) -> float:
    """w' S w: the variance of a portfolio with these weights (per bar when S is per bar)."""
    w, s, _ = _align(weights, cov)
    return float(w @ s @ w)


def variance_decomposition(weights: Any, cov: Any) -> pd.DataFrame:
    """Per asset: weight, marginal_risk, risk_contribution (sums to the volatility), variance_contribution
    (sums to the variance) and share (sums to 1). Marginal risk and share are NaN for a zero-variance portfolio."""
    w, s, labels = _align(weights, cov)
    sw = s @ w
    variance = float(w @ sw)
    vol = math.sqrt(variance) if variance > 0 else 0.0
    var_contrib = w * sw
    with np.errstate(divide="ignore", invalid="ignore"):
        marginal = sw / vol if vol > 0 else np.full(len(w), np.nan)
        share = var_contrib / variance if variance > 0 else np.full(len(w), np.nan)
    out = pd.DataFrame({"weight": w, "marginal_risk": marginal, "risk_contribution": w * marginal if vol > 0 else 0.0 * w,
                        "variance_contribution": var_contrib, "share": share}, index=labels)
    out.index.name = "asset"
    return out


def _pair(a: pd.Series, b: pd.Series) -> pd.DataFrame:
    if not isinstance(a, pd.Series) or not isinstance(b, pd.Series):
        raise DataError("strategy and benchmark returns must be pandas Series indexed by time")
    return pd.concat([a.astype(float), b.astype(float)], axis=1, join="inner", keys=["s", "b"]).dropna()


def beta_alpha(strategy_returns: pd.Series, benchmark_returns: pd.Series, bars_per_year: float, *,
               risk_free: float = 0.0) -> dict[str, float]:
    """OLS of strategy on benchmark per-bar returns over their common bars: beta, alpha (annualised,
    intercept * bars_per_year), r2, correlation, n (bars used). Risk-free is an annual rate."""
    both = _pair(strategy_returns, benchmark_returns) - per_bar_risk_free(risk_free, float(bars_per_year))
    n = len(both)
    nan = {"beta": math.nan, "alpha": math.nan, "r2": math.nan, "correlation": math.nan, "n": n}
    if n < 2:
        return nan
    s, b = both["s"].to_numpy(), both["b"].to_numpy()
    ds, db = s - s.mean(), b - b.mean()
    sbb, sss = float(db @ db), float(ds @ ds)
    if sbb <= 0:
        return nan
    beta = float(ds @ db) / sbb
    corr = float(ds @ db) / math.sqrt(sbb * sss) if sss > 0 else math.nan
    alpha = (s.mean() - beta * b.mean()) * float(bars_per_year)
    return {"beta": beta, "alpha": float(alpha), "r2": corr**2 if sss > 0 else math.nan, "correlation": corr, "n": n}


def rolling_beta(strategy_returns: pd.Series, benchmark_returns: pd.Series, window: int) -> pd.Series:
    """OLS beta over the last `window` common bars (NaN until full, or where the benchmark is constant)."""
    both = _pair(strategy_returns, benchmark_returns)
    var = both["b"].rolling(int(window)).var()
    beta = both["s"].rolling(int(window)).cov(both["b"]) / var.where(var > 0)
    return beta.rename("beta")


def rolling_correlation(a: pd.Series, b: pd.Series, window: int) -> pd.Series:
    """Pearson correlation over the last `window` common bars (NaN until full, or where one is constant)."""
    both = _pair(a, b)
    return both["s"].rolling(int(window)).corr(both["b"]).rename("correlation")


@dataclass
class PortfolioReport:
    """The portfolio analytics of one run, as tables."""

    contribution: pd.DataFrame  # asset_contribution
    correlation: pd.DataFrame  # of the per-asset contribution returns
    risk: pd.DataFrame  # variance_decomposition of the contribution returns (unit weights)
    benchmark_name: str = "BTC"
    benchmark: dict[str, float] | None = None  # beta_alpha against the benchmark
    rolling_beta: pd.Series | None = None
    rolling_correlation: pd.Series | None = None

    def summary(self) -> pd.DataFrame:
        """One row per asset: PnL, shares of PnL and of variance."""
        return self.contribution.join(self.risk[["share"]].rename(columns={"share": "variance_share"}))


def portfolio_report(equity: pd.Series, asset_pnl: pd.DataFrame, bars_per_year: float, *,
                     initial_cash: float | None = None, benchmark: pd.Series | None = None,
                     benchmark_name: str = "BTC", window: int | None = None) -> PortfolioReport:
    """Contribution, correlation, risk decomposition and (with `benchmark`, the benchmark's close
    prices, BTC by default) beta/alpha and rolling beta/correlation over `window` bars (default: about
    30 days of bars, at least 2). `initial_cash` defaults to the first equity less the assets' first PnL.

    The risk table decomposes the variance of the portfolio's bar returns into the assets'
    contribution returns (unit weights on their covariance): its variance_contribution column sums to
    the variance of the assets' summed contribution returns.
    """
    if initial_cash is None:  # the engine's accounting: equity = initial cash + the assets' cumulative PnL
        initial_cash = float(equity.iloc[0]) - float(asset_pnl.iloc[0].fillna(0.0).sum())
    initial = float(initial_cash)
    contrib = contribution_returns(asset_pnl, equity)
    cov = contrib.cov()
    report = PortfolioReport(
        contribution=asset_contribution(asset_pnl, initial),
        correlation=correlation_matrix(contrib),
        risk=variance_decomposition(pd.Series(1.0, index=cov.index), cov),
        benchmark_name=benchmark_name,
    )
    if benchmark is not None:
        bench = pd.to_numeric(benchmark, errors="coerce").reindex(equity.index)
        if bench.notna().sum() < 2:
            raise DataError(f"the {benchmark_name} benchmark shares fewer than 2 timestamps with the equity curve "
                            f"({equity.index[0]} .. {equity.index[-1]}); pass its close prices over the same bars")
        b = bench.pct_change(fill_method=None).iloc[1:]
        r = bar_returns(equity)
        win = int(window) if window is not None else max(2, round(float(bars_per_year) * 30 / 365))
        report.benchmark = beta_alpha(r, b, bars_per_year)
        report.rolling_beta = rolling_beta(r, b, win)
        report.rolling_correlation = rolling_correlation(r, b, win)
    return report

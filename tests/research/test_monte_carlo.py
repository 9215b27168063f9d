"""qlab.monte_carlo on real bundled BTC candles: statistical properties of each method, the kernels against the
metrics module, reproducibility, and clear errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

import qlab
from qlab.analytics.metrics import bar_returns, compute_metrics
from qlab.errors import ConfigError, DataError
from qlab.research import mc_paths
from qlab.research.monte_carlo import MonteCarloResult, monte_carlo


@pytest.fixture(scope="module")
def candles():
    c = qlab.load_sample("BTC/USDT", "1h")
    return c[(c.index >= "2022-01-01") & (c.index < "2022-07-01")]


@pytest.fixture(scope="module")
def result(candles):
    return qlab.backtest(candles, "ema_cross")


def _plain_longest(values: np.ndarray) -> int:
    """Longest drawdown in bars (peak point to the point back at the peak, or to the end), a plain loop."""
    peak, peak_at, longest, under = values[0], 0, 0, False
    for k, v in enumerate(values):
        if v >= peak:
            longest = max(longest, k - peak_at) if under else longest
            peak, peak_at, under = v, k, False
        else:
            under = True
    return max(longest, len(values) - 1 - peak_at) if under else longest


def test_path_metrics_agree_with_compute_metrics_on_real_and_resampled_curves(result):
    r = bar_returns(result.equity).to_numpy()
    resampled = mc_paths.stationary_bootstrap(r, 3, 24, seed=5)
    curves = [result.equity.to_numpy()] + [10_000 * np.cumprod(np.concatenate(([1.0], 1 + p))) for p in resampled]
    stats = mc_paths.path_metrics(np.vstack(curves), per_year=8760.0)
    for values, row in zip(curves, stats, strict=True):
        m = compute_metrics(pd.Series(values, index=result.equity.index), None, 8760.0)
        assert row[0] == pytest.approx(m["final_equity"], rel=1e-12)
        assert row[2] == pytest.approx(m["sharpe"], rel=1e-9)
        assert row[3] == pytest.approx(m["max_drawdown"], rel=1e-12)
        assert row[4] == m["max_drawdown_bars"] == _plain_longest(values)
        assert row[5] == pytest.approx(values.min() / values[0] - 1, rel=1e-12)


def test_the_fused_bootstrap_kernel_measures_exactly_the_paths_it_draws(result):
    r = np.ascontiguousarray(bar_returns(result.equity).to_numpy())
    seeds = mc_paths.path_seeds(9, 50)
    grid = np.array([0, 100, len(r)])
    stats, at_grid = mc_paths.bootstrap_metrics_nb(r, seeds, len(r), 1 / 24, 10_000.0, 8760.0, grid)
    drawn = mc_paths.bootstrap_paths_nb(r, seeds, len(r), 1 / 24)
    paths = 10_000 * np.cumprod(np.concatenate([np.ones((50, 1)), 1 + drawn], axis=1), axis=1)
    np.testing.assert_allclose(stats, mc_paths.path_metrics(paths, per_year=8760.0), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(at_grid, paths[:, grid], rtol=1e-12)


def test_bootstrap_means_converge_to_the_sample_mean(result):
    r = bar_returns(result.equity).to_numpy()
    for block in (1.0, 24.0):
        mc = monte_carlo(result, "block_bootstrap", n=4000, seed=1, block=block)
        means = mc.metrics["mean_return"].to_numpy()
        assert abs(means.mean() - r.mean()) < 4 * means.std(ddof=1) / math.sqrt(len(means))
    short = monte_carlo(result, "block_bootstrap", n=20_000, seed=2, block=1.0, horizon=24)  # iid: E[final] = E0 (1 + mean)^H
    finals = short.metrics["final_equity"].to_numpy()
    expected = 10_000 * (1 + r.mean()) ** 24
    assert abs(finals.mean() - expected) < 4 * finals.std(ddof=1) / math.sqrt(len(finals))
    trades = monte_carlo(result, "trade_bootstrap", n=4000, seed=3)
    tm = trades.metrics["mean_return"].to_numpy()
    real_trade_mean = float(trades.real["mean_return"])
    assert abs(tm.mean() - real_trade_mean) < 4 * tm.std(ddof=1) / math.sqrt(len(tm))


def test_stationary_bootstrap_keeps_ar1_autocorrelation_and_iid_destroys_it():
    rng = np.random.default_rng(0)
    x = np.zeros(6000)
    for t in range(1, len(x)):
        x[t] = 0.6 * x[t - 1] + rng.standard_normal()

    def lag1(paths: np.ndarray) -> float:
        d = paths - paths.mean(axis=1, keepdims=True)
        return float(((d[:, 1:] * d[:, :-1]).sum(axis=1) / (d**2).sum(axis=1)).mean())

    sample = lag1(x[None, :])
    assert sample == pytest.approx(0.6, abs=0.03)
    assert lag1(mc_paths.stationary_bootstrap(x, 200, 50, seed=1)) == pytest.approx(sample * (1 - 1 / 50), abs=0.04)
    assert abs(lag1(mc_paths.stationary_bootstrap(x, 200, 1, seed=1))) < 0.02


def test_reshuffle_keeps_the_trades_and_the_final_equity_but_moves_the_drawdowns(result):
    mc = monte_carlo(result, "reshuffle", n=300, seed=4, grid=10_000)
    closed = result.trades[~result.trades.is_open].sort_values("exit_bar", kind="stable")
    equity = result.equity.to_numpy()
    real_r = closed.net_pnl.to_numpy() / equity[closed.entry_bar.to_numpy() - 1]
    path_r = mc.grid_paths[:, 1:] / mc.grid_paths[:, :-1] - 1
    assert path_r.shape == (300, len(real_r))
    np.testing.assert_allclose(np.sort(path_r, axis=1), np.tile(np.sort(real_r), (300, 1)), rtol=1e-9, atol=1e-12)
    assert not (path_r == real_r).all(axis=1).any()
    final = 10_000 * np.prod(1 + real_r)
    np.testing.assert_allclose(mc.metrics.final_equity, final, rtol=1e-10)
    assert mc.metrics.max_drawdown.std() > 0.01
    assert mc.metrics.max_drawdown.min() < mc.real["max_drawdown"] < mc.metrics.max_drawdown.max()
    worst = (mc.grid_paths.min(axis=1) / 10_000 - 1 <= -0.3).mean()
    assert mc.probability_of_ruin(0.3) == pytest.approx(worst)


def test_same_seed_same_output_other_seed_other_output(result):
    for method, n in (("block_bootstrap", 200), ("reshuffle", 200), ("trade_bootstrap", 200), ("gbm", 3)):
        a, b = monte_carlo(result, method, n=n, seed=11), monte_carlo(result, method, n=n, seed=11)
        pd.testing.assert_frame_equal(a.metrics, b.metrics)
        np.testing.assert_array_equal(a.grid_paths, b.grid_paths)
        c = monte_carlo(result, method, n=n, seed=12)
        assert not np.allclose(a.grid_paths, c.grid_paths)


def test_jitter_reruns_the_strategy_with_drawn_parameters(result, candles):
    mc = monte_carlo(result, "jitter", n=6, seed=0, ranges={"fast.period": (8, 16), "orders.stop_loss": (0.02, 0.08)})
    assert len(mc.metrics) == 6
    assert mc.metrics["fast.period"].between(8, 16).all() and mc.metrics["orders.stop_loss"].between(0.02, 0.08).all()
    row = mc.metrics.iloc[2]
    strategy = qlab.templates["ema_cross"].with_params(**{"fast.period": int(row["fast.period"]),
                                                         "orders.stop_loss": float(row["orders.stop_loss"])})
    again = qlab.backtest(candles, strategy)
    assert row["final_equity"] == pytest.approx(float(again.equity.iloc[-1]), rel=1e-12)
    assert row["n_trades"] == int((~again.trades.is_open).sum())
    defaults = monte_carlo(result, "jitter", n=4, seed=0, jitter=0.25)  # +/- 25 % of every numeric parameter
    assert defaults.metrics["slow.period"].between(19, 33).all() and defaults.metrics["orders.stop_loss"].between(0.0375, 0.0625).all()


def test_synthetic_methods_rerun_the_strategy_on_fitted_paths(result):
    for method in ("garch", "jump"):
        mc = monte_carlo(result, method, n=3, seed=0)
        assert len(mc.metrics) == 3 and mc.model is not None
        assert (mc.metrics["n_trades"] > 0).all()
        assert not np.allclose(mc.metrics["final_equity"], float(result.equity.iloc[-1]))


def test_summary_percentiles_and_figures(result):
    mc = monte_carlo(result, "block_bootstrap", n=500, seed=0)
    s = mc.summary(confidence=0.8)
    assert (s["ci_low"] <= s["median"]).all() and (s["median"] <= s["ci_high"]).all()
    x = mc.metrics["sharpe"].to_numpy()
    assert s.loc["sharpe", "real_percentile"] == pytest.approx(100 * (x < mc.real["sharpe"]).mean())
    assert s.loc["sharpe", "ci_low"] == pytest.approx(np.quantile(x, 0.1))
    hand = MonteCarloResult("x", 0, pd.DataFrame({"sharpe": [1.0, 2.0, 3.0, 4.0]}), pd.Series({"sharpe": 3.0}),
                            pd.DatetimeIndex([]), np.zeros((4, 0)), pd.Series(dtype=float), 1.0, 0.5)
    assert hand.percentile("sharpe") == 62.5  # 2 below, 1 tie counted half, of 4
    fan = mc.fan_chart()
    assert any(t.name == "real" for t in fan.data) and any(t.name == "median (p50)" for t in fan.data)
    hist = mc.histograms()
    lines = [sh for sh in hist.layout.shapes if sh.type == "line"]
    assert len(lines) == 6 and lines[4].x0 == pytest.approx(mc.real["max_drawdown"])
    assert "Monte Carlo: block_bootstrap" in mc.to_html()


def test_bad_inputs_raise_clear_qlab_errors(result, candles):
    with pytest.raises(ConfigError, match="did you mean 'reshuffle'"):
        monte_carlo(result, "reshufle")
    for n in (0, -5, 1.5, True):
        with pytest.raises(ConfigError, match="n="):
            monte_carlo(result, n=n)
    with pytest.raises(ConfigError, match="block="):
        monte_carlo(result, block=0.5)
    with pytest.raises(ConfigError, match="pass candles"):
        monte_carlo("ema_cross")
    flat = pd.DataFrame({"entry_long": False}, index=candles.index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idle = qlab.backtest(candles, flat)
    with pytest.raises(DataError, match="no closed trades"):
        monte_carlo(idle, "reshuffle")
    with pytest.raises(ConfigError, match="signal frames"):
        monte_carlo(idle, "jitter")
    with pytest.raises(ConfigError, match=r"did you mean 'fast\.period'"):
        monte_carlo(result, "jitter", ranges={"fast.perod": (5, 10)})
    with pytest.raises(ConfigError, match="no metric"):
        monte_carlo(result, n=10).percentile("sharp")

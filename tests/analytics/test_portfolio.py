"""Portfolio analytics against independent computations: numpy/scipy, explicit loops, hand cases, real BTC data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import qlab
from qlab.analytics.metrics import bar_returns
from qlab.analytics.portfolio import (
    asset_contribution,
    beta_alpha,
    contribution_returns,
    correlation_matrix,
    portfolio_report,
    portfolio_variance,
    rolling_beta,
    rolling_correlation,
    variance_decomposition,
)
from qlab.errors import DataError

HOUR = 8760.0


def hours(n, start="2024-01-01"):
    return pd.date_range(start, periods=n, freq="h", tz="UTC")


@pytest.fixture(scope="module")
def btc():
    return qlab.load_sample("BTC/USDT", "1h").close


def two_assets(n=300, seed=3):
    """Cumulative PnL of two assets and the equity they make from 10,000 of cash."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(0, 20, (n, 2)) + np.array([1.0, -0.5])
    steps[0] = 0.0
    pnl = pd.DataFrame(np.cumsum(steps, axis=0), index=hours(n), columns=["BTC/USDT", "ETH/USDT"])
    return pnl, 10_000 + pnl.sum(axis=1)


# ------------------------------------------------------------------ contribution


def test_asset_contribution_by_hand():
    pnl = pd.DataFrame({"A": [0, 100, 300], "B": [np.nan, -50, -100]}, index=hours(3))  # B listed late
    out = asset_contribution(pnl, 1000)
    assert list(out.index) == ["A", "B"] and out.index.name == "asset"
    assert list(out.pnl) == [300, -100]
    assert list(out.share) == [1.5, -0.5]  # 300 / 200 and -100 / 200
    assert list(out.return_contribution) == [0.3, -0.1]  # / 1000
    flat = asset_contribution(pd.DataFrame({"A": [0.0, 0.0]}, index=hours(2)), 1000)
    assert math.isnan(flat.share.iloc[0]) and flat.return_contribution.iloc[0] == 0.0
    with pytest.raises(DataError, match="initial_cash"):
        asset_contribution(pnl, 0)


def test_contributions_add_up_to_the_account():
    pnl, equity = two_assets()
    out = asset_contribution(pnl, 10_000)
    assert out.return_contribution.sum() == pytest.approx(equity.iloc[-1] / 10_000 - 1, rel=1e-12)
    assert out.share.sum() == pytest.approx(1.0)
    per_bar = contribution_returns(pnl, equity)
    np.testing.assert_allclose(per_bar.sum(axis=1).to_numpy(), bar_returns(equity).to_numpy(), rtol=1e-12, atol=1e-15)
    # bar 5 of asset A, by hand: (pnl_5 - pnl_4) / equity_4
    assert per_bar["BTC/USDT"].iloc[4] == pytest.approx((pnl.iloc[5, 0] - pnl.iloc[4, 0]) / equity.iloc[4])
    with pytest.raises(DataError, match="share one index"):
        contribution_returns(pnl.iloc[1:], equity)


# ------------------------------------------------------------------ correlation


def test_correlation_matrix_equals_numpy_corrcoef():
    rng = np.random.default_rng(11)
    base = rng.normal(size=(500, 1))
    returns = pd.DataFrame(np.hstack([base + rng.normal(size=(500, 1)) * s for s in (0.1, 1.0, 5.0)]), columns=list("abc"))
    corr = correlation_matrix(returns)
    np.testing.assert_allclose(corr.to_numpy(), np.corrcoef(returns.to_numpy(), rowvar=False), rtol=1e-12)
    np.testing.assert_allclose(corr.to_numpy(), corr.to_numpy().T)
    np.testing.assert_allclose(np.diag(corr.to_numpy()), 1.0)
    assert list(corr.index) == list(corr.columns) == list("abc")


def test_correlation_of_real_btc_and_eth(btc):
    eth = qlab.load_sample("ETH/USDT", "1h").close
    returns = pd.concat({"BTC": btc, "ETH": eth}, axis=1, join="inner").pct_change().iloc[1:]
    corr = correlation_matrix(returns)
    a, b = returns.to_numpy().T
    assert corr.loc["BTC", "ETH"] == pytest.approx(np.corrcoef(a, b)[0, 1], rel=1e-12)
    assert 0.5 < corr.loc["BTC", "ETH"] < 0.95  # the two move together, far from perfectly


# ------------------------------------------------------------------ variance decomposition

COV = pd.DataFrame([[0.04, 0.006, -0.002], [0.006, 0.09, 0.01], [-0.002, 0.01, 0.01]], index=list("xyz"), columns=list("xyz"))
W = pd.Series({"z": 0.2, "x": 0.5, "y": 0.3})  # a different order than the matrix: aligned by label


def test_portfolio_variance_against_a_double_loop():
    w = W.reindex(COV.index)
    expected = sum(w.iloc[i] * w.iloc[j] * COV.iloc[i, j] for i in range(3) for j in range(3))
    # by hand: 0.25*0.04 + 0.09*0.09 + 0.04*0.01 + 2*(0.5*0.3*0.006 + 0.5*0.2*-0.002 + 0.3*0.2*0.01)
    #        = 0.0185 + 2 * 0.0013 = 0.0211
    assert expected == pytest.approx(0.0211)
    assert portfolio_variance(W, COV) == pytest.approx(expected, rel=1e-12)
    assert portfolio_variance(w.to_numpy(), COV.to_numpy()) == pytest.approx(expected, rel=1e-12)


def test_variance_decomposition_sums_to_the_total():
    out = variance_decomposition(W, COV)
    variance = portfolio_variance(W, COV)
    assert list(out.index) == list("xyz")
    assert out.variance_contribution.sum() == pytest.approx(variance, rel=1e-12)
    assert out.risk_contribution.sum() == pytest.approx(math.sqrt(variance), rel=1e-12)
    assert out["share"].sum() == pytest.approx(1.0)
    # x by hand: 0.5 * (0.04*0.5 + 0.006*0.3 - 0.002*0.2) = 0.5 * 0.0214 = 0.0107
    assert out.loc["x", "variance_contribution"] == pytest.approx(0.0107)
    # marginal risk = d sqrt(w'Sw) / dw_i, against a central finite difference
    w = W.reindex(COV.index).to_numpy()
    for i, asset in enumerate(COV.index):
        h = np.zeros(3)
        h[i] = 1e-6
        numeric = (math.sqrt((w + h) @ COV.to_numpy() @ (w + h)) - math.sqrt((w - h) @ COV.to_numpy() @ (w - h))) / 2e-6
        assert out.loc[asset, "marginal_risk"] == pytest.approx(numeric, rel=1e-6)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6), st.integers(0, 10_000))
def test_variance_decomposition_sums_for_random_covariances(n, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n + 2))
    cov, w = a @ a.T, rng.normal(size=n)
    out = variance_decomposition(w, cov)
    assert out.variance_contribution.sum() == pytest.approx(float(w @ cov @ w), rel=1e-9, abs=1e-12)


def test_variance_decomposition_of_a_riskless_portfolio_and_bad_shapes():
    out = variance_decomposition([1.0, 2.0], np.zeros((2, 2)))
    assert (out.variance_contribution == 0).all() and out.marginal_risk.isna().all() and out["share"].isna().all()
    with pytest.raises(DataError, match="shape"):
        variance_decomposition([1.0, 2.0], np.eye(3))
    with pytest.raises(DataError, match="symmetric"):
        variance_decomposition([1.0, 2.0], [[1.0, 0.5], [0.2, 1.0]])
    with pytest.raises(DataError, match="lack"):
        variance_decomposition(pd.Series({"x": 1.0}), COV)


# ------------------------------------------------------------------ beta and alpha


def test_beta_of_btc_against_itself_is_one(btc):
    r = btc.pct_change().iloc[1:]
    out = beta_alpha(r, r, HOUR)
    assert out["beta"] == pytest.approx(1.0, abs=1e-12) and out["alpha"] == pytest.approx(0.0, abs=1e-12)
    assert out["r2"] == pytest.approx(1.0, abs=1e-12) and out["n"] == len(r)


def test_beta_alpha_against_scipy_linregress(btc):
    rng = np.random.default_rng(5)
    b = btc.pct_change().iloc[1:5001]
    s = 0.0001 + 1.5 * b + pd.Series(rng.normal(0, 0.01, len(b)), index=b.index)
    fit = stats.linregress(b.to_numpy(), s.to_numpy())
    out = beta_alpha(s, b, HOUR)
    assert out["beta"] == pytest.approx(fit.slope, rel=1e-10)
    assert out["alpha"] == pytest.approx(fit.intercept * HOUR, rel=1e-8)  # arithmetic annualisation
    assert out["r2"] == pytest.approx(fit.rvalue**2, rel=1e-10)
    assert out["correlation"] == pytest.approx(fit.rvalue, rel=1e-10)
    # with a risk-free rate: the regression of excess returns
    rf = 1.04 ** (1 / HOUR) - 1
    fit_rf = stats.linregress(b.to_numpy() - rf, s.to_numpy() - rf)
    out_rf = beta_alpha(s, b, HOUR, risk_free=0.04)
    assert out_rf["beta"] == pytest.approx(fit_rf.slope, rel=1e-10)
    assert out_rf["alpha"] == pytest.approx(fit_rf.intercept * HOUR, rel=1e-8)


def test_beta_alpha_by_hand_and_undefined_cases():
    idx = hours(4)
    b = pd.Series([0.01, -0.02, 0.03, 0.0], index=idx)
    s = 0.001 + 2 * b  # exactly: beta 2, alpha 0.001 per bar
    out = beta_alpha(s, b, 100)
    assert out["beta"] == pytest.approx(2.0) and out["alpha"] == pytest.approx(0.1) and out["r2"] == pytest.approx(1.0)
    partial = beta_alpha(s, b.iloc[2:], 100)  # only the common bars are used
    assert partial["n"] == 2 and partial["beta"] == pytest.approx(2.0)
    constant = beta_alpha(s, pd.Series(0.01, index=idx), 100)
    assert math.isnan(constant["beta"]) and math.isnan(constant["alpha"]) and math.isnan(constant["r2"])
    assert math.isnan(beta_alpha(s.iloc[:1], b, 100)["beta"])


def test_rolling_beta_and_correlation_against_loops():
    rng = np.random.default_rng(9)
    idx = hours(60)
    b = pd.Series(rng.normal(0, 0.01, 60), index=idx)
    s = 0.5 * b + pd.Series(rng.normal(0, 0.005, 60), index=idx)
    window = 12
    beta, corr = rolling_beta(s, b, window), rolling_correlation(s, b, window)
    assert beta.iloc[: window - 1].isna().all() and corr.iloc[: window - 1].isna().all()
    for end in range(window, 61):
        x, y = b.iloc[end - window:end].to_numpy(), s.iloc[end - window:end].to_numpy()
        assert beta.iloc[end - 1] == pytest.approx(np.polyfit(x, y, 1)[0], rel=1e-9)
        assert corr.iloc[end - 1] == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-9)


# ------------------------------------------------------------------ the bundle


def test_portfolio_report_bundles_the_tables(btc):
    pnl, equity = two_assets()
    pnl.iloc[0] = [15.0, -5.0]  # PnL on the first bar already: the initial cash is still 10,000
    equity = 10_000 + pnl.sum(axis=1)
    bench = btc.iloc[:300].set_axis(equity.index)
    report = portfolio_report(equity, pnl, HOUR, benchmark=bench, window=24)
    assert report.benchmark_name == "BTC"
    assert report.contribution.return_contribution.sum() == pytest.approx(equity.iloc[-1] / 10_000 - 1)
    portfolio_var = float(np.var(bar_returns(equity).to_numpy(), ddof=1))
    assert report.risk.variance_contribution.sum() == pytest.approx(portfolio_var, rel=1e-9)
    np.testing.assert_allclose(np.diag(report.correlation.to_numpy()), 1.0)
    expected = stats.linregress(bench.pct_change().iloc[1:].to_numpy(), bar_returns(equity).to_numpy())
    assert report.benchmark["beta"] == pytest.approx(expected.slope, rel=1e-9)
    assert len(report.rolling_beta) == len(equity) - 1 and report.rolling_beta.iloc[23:].notna().all()
    assert report.rolling_correlation.iloc[:23].isna().all()
    assert list(report.summary().columns) == ["pnl", "share", "return_contribution", "variance_share"]
    plain = portfolio_report(equity, pnl, HOUR)
    assert plain.benchmark is None and plain.rolling_beta is None
    with pytest.raises(DataError, match="BTC benchmark"):
        portfolio_report(equity, pnl, HOUR, benchmark=btc.iloc[:300])  # 2017 prices, 2024 equity

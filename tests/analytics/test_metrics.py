"""Metrics against independent computations: hand-worked small cases, plain-Python loops, and real BTC data.

Expected numbers are worked out in the comments or by slow textbook loops written here, never copied
from qlab's output.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qlab
from qlab.analytics.metrics import (
    bar_returns,
    compute_metrics,
    drawdown_series,
    format_metrics,
    metrics_table,
    rolling_sharpe,
    rolling_volatility,
    underwater_periods,
)
from qlab.errors import DataError

DAY = 365.0  # bars_per_year of daily bars
HOUR = 8760.0


def curve(values, freq="D", start="2024-01-01"):
    return pd.Series([float(v) for v in values], index=pd.date_range(start, periods=len(values), freq=freq, tz="UTC"))


TRADE_DEFAULTS = {"asset": "BTC/USDT", "direction": 1, "entry_bar": 0, "exit_bar": 1, "entry_price": 100.0, "exit_price": 100.0,
                  "size": 1.0, "entry_fee": 0.0, "exit_fee": 0.0, "spread_cost": 0.0, "slippage_cost": 0.0, "impact_cost": 0.0,
                  "funding": 0.0, "gross_pnl": 0.0, "net_pnl": 0.0, "exit_reason": "signal", "is_open": False}


def make_trades(*rows: dict, index: pd.DatetimeIndex | None = None) -> pd.DataFrame:
    frame = pd.DataFrame([{**TRADE_DEFAULTS, **r} for r in rows], columns=list(TRADE_DEFAULTS))
    if index is not None:
        frame.insert(4, "entry_time", index[frame.entry_bar.to_numpy()])
        frame.insert(5, "exit_time", index[frame.exit_bar.to_numpy()])
    return frame


# ------------------------------------------------------------------ plain-Python oracles


def loop_returns(values):
    return [values[i] / values[i - 1] - 1 for i in range(1, len(values))]


def loop_stdev(xs):  # textbook sample standard deviation, ddof=1
    m = math.fsum(xs) / len(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def loop_max_drawdown(values):
    """(max drawdown, longest peak-to-recovery in bars) by walking the curve once."""
    peak, peak_at, worst, longest, under = values[0], 0, 0.0, 0, False
    for i, v in enumerate(values):
        if v >= peak:
            if under:  # back at (or above) the peak: that drawdown lasted i - peak_at bars
                longest, under = max(longest, i - peak_at), False
            peak, peak_at = v, i
        else:
            under = True
        worst = min(worst, v / peak - 1)
    if under:  # still below the peak at the end
        longest = max(longest, len(values) - 1 - peak_at)
    return worst, longest


# ------------------------------------------------------------------ a small hand-worked curve

# equity  100 -> 110 -> 99 -> 104.5 -> 120 -> 108, one bar a day
# returns +10 %, -10 %, +5.5556 % (104.5/99), +14.8325 % (120/104.5), -10 %
HAND = [100, 110, 99, 104.5, 120, 108]
HAND_R = [0.10, -0.10, 104.5 / 99 - 1, 120 / 104.5 - 1, -0.10]


def test_returns_and_total_return_of_the_hand_curve():
    np.testing.assert_allclose(bar_returns(curve(HAND)).to_numpy(), HAND_R, rtol=1e-12)
    m = compute_metrics(curve(HAND), None, DAY)
    assert m["total_return"] == pytest.approx(0.08)  # 108 / 100 - 1
    assert m["final_equity"] == 108.0
    # 5 returns = 5/365 years: CAGR = 1.08 ** (365 / 5) - 1 = 1.08 ** 73 - 1
    assert m["cagr"] == pytest.approx(1.08**73 - 1, rel=1e-12)


def test_risk_ratios_of_the_hand_curve():
    m = compute_metrics(curve(HAND), None, DAY)
    mean = sum(HAND_R) / 5
    sd = loop_stdev(HAND_R)
    assert m["volatility"] == pytest.approx(sd * math.sqrt(365), rel=1e-12)
    assert m["sharpe"] == pytest.approx(mean / sd * math.sqrt(365), rel=1e-12)
    # downside deviation over ALL five bars: only the two -10 % bars fall short of 0
    downside = math.sqrt((0.1**2 + 0.1**2) / 5)
    assert downside == pytest.approx(0.0632455532, rel=1e-9)
    assert m["sortino"] == pytest.approx(mean / downside * math.sqrt(365), rel=1e-12)
    assert m["calmar"] == pytest.approx((1.08**73 - 1) / 0.10, rel=1e-12)


def test_drawdown_and_its_duration_of_the_hand_curve():
    m = compute_metrics(curve(HAND), None, DAY)
    # peaks 110 (bar 1) -> 99 = -10 %, recovered at bar 4 (120): 3 bars; 120 -> 108 = -10 %, not recovered: 1 bar
    assert m["max_drawdown"] == pytest.approx(-0.10)
    assert m["max_drawdown_bars"] == 3
    assert m["max_drawdown_duration"] == pd.Timedelta(days=3)
    dd = drawdown_series(curve(HAND))
    np.testing.assert_allclose(dd.to_numpy(), [0, 0, 99 / 110 - 1, 104.5 / 110 - 1, 0, 108 / 120 - 1], atol=1e-15)
    table = underwater_periods(curve(HAND))
    assert list(table.columns) == ["start", "trough", "end", "depth", "bars", "duration", "recovered"]
    days = pd.date_range("2024-01-01", periods=6, freq="D", tz="UTC")
    assert list(table.start) == [days[1], days[4]]
    assert list(table.trough) == [days[2], days[5]]
    assert table.end.iloc[0] == days[4] and pd.isna(table.end.iloc[1])
    np.testing.assert_allclose(table.depth, [-0.1, -0.1])
    assert list(table.bars) == [3, 1] and list(table.recovered) == [True, False]
    assert list(table.duration) == [pd.Timedelta(days=3), pd.Timedelta(days=1)]


def test_risk_free_is_an_annual_rate_taken_per_bar():
    rf = 1.05 ** (1 / 365) - 1  # 5 % a year, de-compounded to a day
    m = compute_metrics(curve(HAND), None, DAY, risk_free=0.05)
    ex = [r - rf for r in HAND_R]
    assert m["sharpe"] == pytest.approx(sum(ex) / 5 / loop_stdev(ex) * math.sqrt(365), rel=1e-12)
    downside = math.sqrt(sum(min(x, 0) ** 2 for x in ex) / 5)
    assert m["sortino"] == pytest.approx(sum(ex) / 5 / downside * math.sqrt(365), rel=1e-12)


def test_a_peak_retouched_exactly_ends_the_drawdown():
    # 100, 90, 100 (back at the peak: recovered after 2 bars), 95, 94, 93 (never back: 3 bars)
    m = compute_metrics(curve([100, 90, 100, 95, 94, 93]), None, DAY)
    assert m["max_drawdown"] == pytest.approx(-0.10)
    assert m["max_drawdown_bars"] == 3
    assert m["max_drawdown_duration"] == pd.Timedelta(days=3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([90.0, 95.0, 100.0, 105.0, 110.0]) | st.floats(1.0, 1000.0), min_size=1, max_size=40))
def test_max_drawdown_and_duration_match_the_loop_on_random_curves(values):
    worst, longest = loop_max_drawdown(values)
    m = compute_metrics(curve(values, freq="h"), None, HOUR)
    assert m["max_drawdown"] == pytest.approx(worst, abs=1e-12)
    assert m["max_drawdown_bars"] == longest
    assert m["max_drawdown_duration"] == pd.Timedelta(hours=longest)


# ------------------------------------------------------------------ edge cases: the pinned conventions


def test_flat_equity_scores_zero_not_nan():
    m = compute_metrics(curve([1000] * 10), None, DAY)
    for key in ("total_return", "cagr", "volatility", "sharpe", "sortino", "calmar", "max_drawdown", "exposure", "turnover"):
        assert m[key] == 0.0, key
    assert m["max_drawdown_bars"] == 0 and m["max_drawdown_duration"] == pd.Timedelta(0)
    assert m["n_trades"] == 0 and m["n_open"] == 0
    for key in ("win_rate", "profit_factor", "expectancy", "avg_trade_return", "avg_win", "avg_loss", "best_trade", "worst_trade"):
        assert math.isnan(m[key]), key  # no closed trade: undefined
    assert underwater_periods(curve([1000] * 10)).empty


def test_flat_equity_against_a_positive_risk_free_rate_is_minus_infinity():
    m = compute_metrics(curve([1000] * 10), None, DAY, risk_free=0.05)
    assert m["sharpe"] == -math.inf  # a constant shortfall with zero variance: the limit
    # every bar falls short of the rate by rf: mean -rf, downside deviation rf -> sortino = -sqrt(365)
    assert m["sortino"] == pytest.approx(-math.sqrt(365))


def test_zero_variance_growth_is_plus_infinity():
    up = curve([100 * 1.01**k for k in range(20)])
    m = compute_metrics(up, None, DAY)
    assert m["sharpe"] == math.inf and m["sortino"] == math.inf and m["calmar"] == math.inf
    assert m["volatility"] == pytest.approx(0.0, abs=1e-12)
    down = compute_metrics(curve([100 * 0.99**k for k in range(20)]), None, DAY)
    assert down["sharpe"] == -math.inf
    # every bar falls 1 %: downside deviation 0.01, mean -0.01 -> sortino = -sqrt(365)
    assert down["sortino"] == pytest.approx(-math.sqrt(365), rel=1e-9)
    assert down["max_drawdown"] == pytest.approx(0.99**19 - 1)
    assert down["max_drawdown_bars"] == 19


def test_too_short_curves_give_nan_only_where_undefined():
    one = compute_metrics(curve([100]), None, DAY)
    assert one["total_return"] == 0.0 and one["max_drawdown"] == 0.0
    for key in ("cagr", "volatility", "sharpe", "sortino", "turnover"):
        assert math.isnan(one[key]), key
    two = compute_metrics(curve([100, 90]), None, DAY)
    assert math.isnan(two["volatility"]) and math.isnan(two["sharpe"])  # one return: no dispersion
    # one return of -10 %: downside deviation 0.1, sortino = -0.1 / 0.1 * sqrt(365)
    assert two["sortino"] == pytest.approx(-math.sqrt(365))
    assert two["cagr"] == pytest.approx(0.9**365 - 1)
    # +8.9 % in one hour is 1.089 ** 8760 a year: beyond floats, so CAGR (and Calmar) are +inf
    burst = compute_metrics(curve([90, 98], freq="h"), None, HOUR)
    assert burst["cagr"] == math.inf and burst["calmar"] == math.inf


def test_ruin_floors_equity_at_zero_for_good():
    eq = curve([100, 50, -10, 20, 30])  # ruined at bar 2: what follows counts as 0
    np.testing.assert_allclose(bar_returns(eq).to_numpy(), [-0.5, -1.0, 0.0, 0.0])
    m = compute_metrics(eq, None, DAY)
    assert m["total_return"] == -1.0 and m["cagr"] == -1.0 and m["final_equity"] == 0.0
    assert m["max_drawdown"] == -1.0
    assert m["max_drawdown_bars"] == 4  # from the peak at bar 0 to the end, never recovered
    np.testing.assert_allclose(drawdown_series(eq).to_numpy(), [0, -0.5, -1, -1, -1])
    exactly_zero = compute_metrics(curve([100, 0, 10]), None, DAY)
    assert exactly_zero["total_return"] == -1.0 and exactly_zero["cagr"] == -1.0


@pytest.mark.parametrize(
    ("values", "match"),
    [([], "empty"), ([100, float("nan"), 90], "row 1"), ([0, 10], "must start above 0"), ([100, float("inf")], "infinite")],
)
def test_bad_equity_is_refused_with_the_reason(values, match):
    eq = pd.Series(values, dtype=float, index=pd.date_range("2024", periods=len(values), freq="D", tz="UTC"))
    with pytest.raises(DataError, match=match):
        compute_metrics(eq, None, DAY)


def test_unsorted_equity_bad_bars_per_year_and_bad_trades_are_refused():
    eq = curve(HAND)
    with pytest.raises(DataError, match="not sorted"):
        compute_metrics(eq.iloc[::-1], None, DAY)
    with pytest.raises(DataError, match="bars_per_year"):
        compute_metrics(eq, None, 0)
    with pytest.raises(DataError, match="net_pnl"):
        compute_metrics(eq, make_trades({}).drop(columns="net_pnl"), DAY)


# ------------------------------------------------------------------ trades


def trade_book():
    # closed: +50, -20, +30, 0 (break-even); open: -5 so far
    return make_trades(
        {"entry_bar": 0, "exit_bar": 2, "entry_price": 100, "exit_price": 110, "size": 5, "net_pnl": 50,
         "entry_fee": 1, "exit_fee": 1, "spread_cost": 0.5, "slippage_cost": 0.25, "impact_cost": 0.25, "gross_pnl": 52},
        {"entry_bar": 3, "exit_bar": 5, "entry_price": 200, "exit_price": 190, "size": 2, "net_pnl": -20, "direction": 1,
         "entry_fee": 2, "exit_fee": 2, "spread_cost": 1, "funding": 3, "gross_pnl": -15},
        {"entry_bar": 5, "exit_bar": 6, "entry_price": 50, "exit_price": 44, "size": 5, "net_pnl": 30, "direction": -1,
         "funding": -1, "gross_pnl": 29},
        {"entry_bar": 8, "exit_bar": 8, "entry_price": 100, "exit_price": 100, "size": 1, "net_pnl": 0},
        {"entry_bar": 9, "exit_bar": 9, "entry_price": 100, "exit_price": 95, "size": 1, "net_pnl": -5, "is_open": True,
         "entry_fee": 0.5},
    )


def test_trade_statistics_by_hand():
    m = compute_metrics(curve([1000] * 10), trade_book(), DAY)
    assert m["n_trades"] == 4 and m["n_open"] == 1
    assert m["win_rate"] == 0.5  # 2 winners of 4 closed; the break-even trade counts in the denominator
    assert m["profit_factor"] == 4.0  # (50 + 30) / 20
    assert m["expectancy"] == 15.0  # (50 - 20 + 30 + 0) / 4
    assert m["avg_win"] == 40.0 and m["avg_loss"] == -20.0
    assert m["best_trade"] == 50.0 and m["worst_trade"] == -20.0
    # returns on entry notional: 50/500, -20/400, 30/250, 0/100
    assert m["avg_trade_return"] == pytest.approx((0.1 - 0.05 + 0.12 + 0.0) / 4)


def test_profit_factor_without_losses_and_without_anything():
    winners = make_trades({"net_pnl": 10}, {"net_pnl": 5})
    assert compute_metrics(curve([100] * 3), winners, DAY)["profit_factor"] == math.inf
    even = make_trades({"net_pnl": 0.0}, {"net_pnl": 0.0})
    assert compute_metrics(curve([100] * 3), even, DAY)["profit_factor"] == 0.0  # 0 / 0: the zero rule
    only_open = make_trades({"net_pnl": 10, "is_open": True})
    m = compute_metrics(curve([100] * 3), only_open, DAY)
    assert m["n_trades"] == 0 and m["n_open"] == 1 and math.isnan(m["profit_factor"]) and math.isnan(m["win_rate"])


def test_costs_by_component_include_open_trades():
    m = compute_metrics(curve([1000] * 10), trade_book(), DAY)
    assert m["cost_fees"] == pytest.approx(1 + 1 + 2 + 2 + 0.5)
    assert m["cost_spread"] == pytest.approx(1.5) and m["cost_slippage"] == pytest.approx(0.25)
    assert m["cost_impact"] == pytest.approx(0.25) and m["cost_funding"] == pytest.approx(2.0)  # paid 3, received 1
    assert m["cost_total"] == pytest.approx(6.5 + 1.5 + 0.25 + 0.25 + 2.0)
    # profit before costs per trade = net + its costs: 50+3, -20+10, 30-1, 0, -5+0.5 -> positive: 53 + 29
    assert m["cost_share"] == pytest.approx(10.5 / 82)


def test_exposure_from_trades_and_from_positions():
    # held at the close: bars 0-1 (first), 3-4 (second), 5 (third), none (same-bar round trip at 8), 9 (open)
    m = compute_metrics(curve([1000] * 10), trade_book(), DAY)
    assert m["exposure"] == pytest.approx(6 / 10)
    positions = pd.DataFrame({"A": [0, 100, 100, 0, 0, 0, 0, 0, 0, 0], "B": [0, 0, 0, -50, 0, 0, 0, 0, 0, 0]},
                             index=curve([1] * 10).index)
    assert compute_metrics(curve([1000] * 10), trade_book(), DAY, positions=positions)["exposure"] == pytest.approx(3 / 10)


def test_turnover_is_traded_notional_over_mean_equity_per_year():
    eq = curve([1000, 1000, 1200, 1200, 1100, 1100, 1100, 1100, 1100, 1100])  # mean (2000 + 2400 + 6600) / 10 = 1100
    m = compute_metrics(eq, trade_book(), DAY)
    entries = 500 + 400 + 250 + 100 + 100  # every trade's entry notional
    exits = 5 * 110 + 2 * 190 + 5 * 44 + 100  # closed trades only
    years = 9 / 365
    assert m["turnover"] == pytest.approx((entries + exits) / 1100 / years)


# ------------------------------------------------------------------ rolling series


def test_rolling_sharpe_and_volatility_against_loops():
    rng = np.random.default_rng(7)
    eq = curve(1000 * np.cumprod(1 + rng.normal(0.001, 0.02, 40)), freq="h")
    r = loop_returns(list(eq))
    window = 10
    sharpe, vol = rolling_sharpe(eq, window, HOUR), rolling_volatility(eq, window, HOUR)
    assert len(sharpe) == len(r) and sharpe.index.equals(eq.index[1:])
    assert sharpe.iloc[: window - 1].isna().all() and vol.iloc[: window - 1].isna().all()
    for end in range(window, len(r) + 1):
        chunk = r[end - window:end]
        assert vol.iloc[end - 1] == pytest.approx(loop_stdev(chunk) * math.sqrt(HOUR), rel=1e-9)
        assert sharpe.iloc[end - 1] == pytest.approx(math.fsum(chunk) / window / loop_stdev(chunk) * math.sqrt(HOUR), rel=1e-9)


def test_rolling_sharpe_of_flat_windows_follows_the_zero_rule():
    s = rolling_sharpe(curve([100, 100, 100, 100, 110, 121]), 2, DAY)
    # returns 0, 0, 0, 0.1, 0.1 -> windows of 2: (0,0) -> 0.0, (0,0), (0,0.1) finite, (0.1,0.1) -> +inf
    assert math.isnan(s.iloc[0]) and s.iloc[1] == 0.0 and s.iloc[2] == 0.0
    assert math.isfinite(s.iloc[3]) and s.iloc[4] == math.inf
    with pytest.raises(DataError, match="window"):
        rolling_sharpe(curve(HAND), 1, DAY)


# ------------------------------------------------------------------ the readable table


def test_metrics_table_is_readable():
    table = metrics_table(curve(HAND), trade_book().iloc[:1], DAY)
    assert table.index.name == "metric" and list(table.columns) == ["value"]
    assert table.loc["Total return", "value"] == "8.00%"
    assert table.loc["Max drawdown", "value"] == "-10.00%"
    assert table.loc["Max drawdown duration (bars)", "value"] == "3"
    assert table.loc["Profit factor", "value"] == "∞"
    assert table.loc["Avg loss", "value"] == "n/a"
    assert "Beta" not in table.index
    assert format_metrics({"sharpe": float("-inf")}).loc["Sharpe", "value"] == "-∞"


# ------------------------------------------------------------------ real data: buy and hold BTC/USDT 1h


@pytest.fixture(scope="module")
def btc():
    return qlab.load_sample("BTC/USDT", "1h").close


def test_buy_and_hold_btc_against_loops(btc):
    eq = 10_000 * btc / btc.iloc[0]
    values = eq.tolist()
    m = compute_metrics(eq, None, HOUR)
    worst, longest = loop_max_drawdown(values)
    assert m["max_drawdown"] == pytest.approx(worst, rel=1e-12)
    assert m["max_drawdown_bars"] == longest
    assert -0.9 < worst < -0.7  # BTC fell about 80 % from its 2017 top to the 2018 bottom
    r = loop_returns(values)
    assert m["sharpe"] == pytest.approx(math.fsum(r) / len(r) / loop_stdev(r) * math.sqrt(HOUR), rel=1e-9)
    assert m["volatility"] == pytest.approx(loop_stdev(r) * math.sqrt(HOUR), rel=1e-9)
    downside = math.sqrt(math.fsum(min(x, 0.0) ** 2 for x in r) / len(r))
    assert m["sortino"] == pytest.approx(math.fsum(r) / len(r) / downside * math.sqrt(HOUR), rel=1e-9)
    assert m["total_return"] == pytest.approx(values[-1] / values[0] - 1, rel=1e-12)
    assert m["cagr"] == pytest.approx((values[-1] / values[0]) ** (HOUR / len(r)) - 1, rel=1e-9)
    assert m["calmar"] == pytest.approx(m["cagr"] / -worst, rel=1e-12)
    periods = underwater_periods(eq)
    assert periods.depth.min() == pytest.approx(worst, rel=1e-12) and periods.bars.max() == longest


def test_buy_and_hold_btc_against_itself_as_benchmark(btc):
    eq = 10_000 * btc / btc.iloc[0]
    m = compute_metrics(eq, None, HOUR, benchmark=btc)
    assert m["beta"] == pytest.approx(1.0, abs=1e-12) and m["alpha"] == pytest.approx(0.0, abs=1e-12)
    assert m["r2"] == pytest.approx(1.0, abs=1e-12) and m["correlation"] == pytest.approx(1.0, abs=1e-12)
    assert m["benchmark_return"] == pytest.approx(m["total_return"], rel=1e-12)
    with pytest.raises(DataError, match="benchmark"):
        compute_metrics(eq, None, HOUR, benchmark=btc.iloc[:1])


def test_agrees_with_empyrical_on_real_data(btc):
    """A second opinion from empyrical-reloaded (test-only; skipped when it is not installed)."""
    ep = pytest.importorskip("empyrical")
    eq = 10_000 * btc / btc.iloc[0]
    r = eq.pct_change().iloc[1:]
    m = compute_metrics(eq, None, HOUR)
    assert m["sharpe"] == pytest.approx(ep.sharpe_ratio(r, annualization=HOUR), rel=1e-9)
    assert m["sortino"] == pytest.approx(ep.sortino_ratio(r, annualization=HOUR), rel=1e-9)
    assert m["volatility"] == pytest.approx(ep.annual_volatility(r, annualization=HOUR), rel=1e-9)
    assert m["max_drawdown"] == pytest.approx(ep.max_drawdown(r), rel=1e-9)
    assert m["cagr"] == pytest.approx(ep.cagr(r, annualization=HOUR), rel=1e-9)
    assert m["calmar"] == pytest.approx(ep.calmar_ratio(r, annualization=HOUR), rel=1e-9)

"""Parameter sweeps: every row of sweep_ma_cross equals qlab.backtest on the same pair, on real bundled data."""

from __future__ import annotations

import math
import re
from functools import cache

import numpy as np
import pandas as pd
import pytest
import talib

import qlab
from qlab.analytics.result import backtest
from qlab.costs import CostModel, FeeSchedule, FixedSlippage, FixedSpread, Funding, HighLowSpread, SqrtImpact, VolatilitySlippage
from qlab.data.candles import bars_per_year
from qlab.engine.orders import OrderSpec, SizeSpec
from qlab.engine.sweep import METRICS, ma_cross_signals, moving_averages, sweep_ma_cross, sweep_ma_cross_nb
from qlab.errors import ConfigError, QlabError

RTOL = 1e-9
FAST = [3, 5, 8, 13, 21, 34]
SLOW = [10, 20, 40, 80, 160, 200]  # 31 pairs with fast < slow
SMALL_FAST, SMALL_SLOW = [5, 8], [10, 40, 160, 200]  # 8 pairs
SIZES = {"percent": SizeSpec(), "amount": SizeSpec("amount", 5_000.0), "units": SizeSpec("units", 0.05)}


@cache
def perp_5m() -> pd.DataFrame:
    return qlab.load_sample("BTC/USDT:USDT", "5m")  # all 10,999 bars


@cache
def spot_1h() -> pd.DataFrame:
    return qlab.load_sample("BTC/USDT", "1h").iloc[-20_000:]


DATA = {"perp_5m": perp_5m, "spot_1h": spot_1h}


def plain_sharpe(equity: np.ndarray, bpy: float) -> float:
    """mean / std(ddof=1) of simple per-bar returns, annualised (no ruin, no zero std in these runs)."""
    r = equity[1:] / equity[:-1] - 1.0
    return float(r.mean() / r.std(ddof=1) * math.sqrt(bpy))


def plain_max_drawdown(equity: np.ndarray) -> float:
    return float((equity / np.maximum.accumulate(equity) - 1.0).min())


def expected_row(candles, fast, slow, *, kind, direction, orders, size, costs) -> dict[str, float]:
    """What qlab.backtest reports for one pair, from its trades and equity curve in plain pandas/numpy."""
    signals = ma_cross_signals(candles, fast, slow, kind=kind, direction=direction)
    result = backtest(candles, signals, orders=orders, size=size, costs=costs)
    eq = result.equity.to_numpy()
    t = result.trades
    closed = t[~t["is_open"]]
    fees = float(t["entry_fee"].sum() + t["exit_fee"].sum())
    parts = {"fees": fees, "spread": float(t["spread_cost"].sum()), "slippage": float(t["slippage_cost"].sum()),
             "impact": float(t["impact_cost"].sum()), "funding": float(t["funding"].sum())}
    return {
        "final_equity": float(eq[-1]),
        "total_return": float(eq[-1] / eq[0] - 1.0),
        "n_trades": len(closed),
        "win_rate": float((closed["net_pnl"] > 0).mean()) if len(closed) else math.nan,
        **parts,
        "total_cost": sum(parts.values()),
        "exposure": float((result.positions.to_numpy() != 0).any(axis=1).mean()),
        "sharpe": plain_sharpe(eq, bars_per_year(result.timeframe)),
        "max_drawdown": plain_max_drawdown(eq),
    }


def assert_rows_match(table, candles, *, kind="sma", direction="long", orders=None, size=None, costs="default"):
    assert len(table) > 0
    traded = 0
    for row in table.itertuples(index=False):
        want = expected_row(candles, row.fast, row.slow, kind=kind, direction=direction, orders=orders, size=size, costs=costs)
        where = f"pair ({row.fast}, {row.slow}), {kind} {direction}, {orders}, {size}"
        assert row.n_trades == want["n_trades"], where
        traded += row.n_trades
        for name, value in want.items():
            got = getattr(row, name)
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(got), f"{name} of {where}: {got} vs NaN"
            else:
                np.testing.assert_allclose(got, value, rtol=RTOL, atol=1e-9, err_msg=f"{name} of {where}")
    assert traded > 0


CASES = (
    # the full 31-pair grid: every direction, default timing and sizing, SMA and EMA
    [(d, kind, "next_open", "percent", True) for d in ("long", "short", "both") for kind in ("sma", "ema")]
    # the other timings and sizings on 8 pairs
    + [(d, "sma", timing, sizing, False) for d in ("long", "short", "both") for timing in ("next_open", "close")
       for sizing in SIZES if (timing, sizing) != ("next_open", "percent")]
)


@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.parametrize(("direction", "kind", "timing", "sizing", "full"), CASES)
def test_sweep_equals_backtest_per_pair(data, direction, kind, timing, sizing, full):
    candles = DATA[data]()
    orders = OrderSpec(timing=timing)
    size = SIZES[sizing]
    fast, slow = (FAST, SLOW) if full else (SMALL_FAST, SMALL_SLOW)
    table = sweep_ma_cross(candles, fast, slow, kind=kind, direction=direction, orders=orders, size=size)
    assert len(table) == (31 if full else 8)
    assert list(table.columns) == ["fast", "slow", *METRICS]
    assert (table["fast"] < table["slow"]).all()
    assert_rows_match(table, candles, kind=kind, direction=direction, orders=orders, size=size)


def test_variable_costs_and_funding_equal_backtest():
    """Per-bar spread and slippage estimates, impact with a binding participation cap, and a perpetual's funding."""
    candles = qlab.load_sample("XRP/USDT:USDT", "5m")
    funding = Funding(qlab.load_sample_funding("XRP/USDT:USDT"))
    costs = CostModel(fees=FeeSchedule(0.0002, 0.0005), spread=HighLowSpread(), slippage=VolatilitySlippage(),
                      impact=SqrtImpact(k=2.0, participation_cap=0.001), funding=funding)
    table = sweep_ma_cross(candles, [3, 8], [12, 30, 60], direction="both", costs=costs)
    assert (table["funding"] != 0).all() and (table["impact"] > 0).all()
    assert_rows_match(table, candles, direction="both", costs=costs)
    arrays = costs.prepare(candles)
    pd.testing.assert_frame_equal(sweep_ma_cross(candles, [3, 8], [12, 30, 60], direction="both", costs=arrays), table)


def _spiky_candles(gap: bool) -> pd.DataFrame:
    """A rise, a fall that crosses the MAs down (a short entry), then the price more than doubles: by a gap at the
    open (gap=True) or by a spike of the high inside one bar."""
    close = np.r_[np.linspace(100, 120, 15), np.linspace(119, 90, 15), np.full(10, 90.0), np.full(10, 95.0)]
    open_ = np.r_[close[0], close[:-1]]
    high, low = np.maximum(open_, close) + 0.5, np.minimum(open_, close) - 0.5
    jump = 25  # while short
    if gap:
        open_[jump:], close[jump:] = 250.0, 250.0
        high[jump:], low[jump:] = 251.0, 249.0
    else:
        high[jump] = 260.0
    index = pd.date_range("2024-01-01", periods=len(close), freq="1h", tz="UTC", name="timestamp")
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": 1_000.0}, index=index)


@pytest.mark.parametrize("gap", [True, False])
def test_short_liquidation_equals_backtest(gap):
    candles = _spiky_candles(gap)
    size = SizeSpec("percent", 0.5)  # half the equity at risk: liquidated, not ruined
    result = backtest(candles, ma_cross_signals(candles, 2, 5, direction="short"), size=size, costs=None)
    assert list(result.trades["exit_reason"]) == ["liquidation"]
    assert result.trades["exit_price"].iloc[0] == (250.0 if gap else pytest.approx(result.trades["entry_price"].iloc[0] * 2 / 1.005))
    table = sweep_ma_cross(candles, [2], [5], direction="short", size=size, costs=None)
    assert_rows_match(table, candles, direction="short", size=size, costs=None)


def test_moving_averages_are_talib_and_signals_use_them():
    close = spot_1h()["close"].to_numpy()
    windows = [2, 3, 5, 9, 20, 50, 200]
    sma, ema = moving_averages(close, windows, "sma"), moving_averages(close, windows, "ema")
    for j, w in enumerate(windows):
        np.testing.assert_array_equal(sma[j], talib.SMA(close, w))  # bit for bit
        np.testing.assert_allclose(ema[j], talib.EMA(close, w), rtol=1e-13)  # bit for bit where TA-Lib uses FMA
        np.testing.assert_allclose(sma[j], pd.Series(close).rolling(w).mean().to_numpy(), rtol=1e-12)
    np.testing.assert_array_equal(moving_averages(close, [1], "ema")[0], close)
    sig = ma_cross_signals(spot_1h(), 5, 20, direction="both")
    f, s = sma[2], sma[4]
    up = (f > s) & (np.r_[np.nan, f[:-1]] <= np.r_[np.nan, s[:-1]])
    np.testing.assert_array_equal(sig["entry_long"].to_numpy(), up)
    np.testing.assert_array_equal(sig["exit_short"].to_numpy(), up)
    assert (sig["entry_long"] & sig["entry_short"]).sum() == 0 and sig["entry_long"].sum() > 10
    assert not ma_cross_signals(spot_1h(), 5, 20, direction="long")[["entry_short", "exit_short"]].any().any()


def test_default_costs_differ_from_none_and_none_costs_nothing():
    candles = perp_5m()
    with_costs = sweep_ma_cross(candles, [5, 13], [40, 160])
    free = sweep_ma_cross(candles, [5, 13], [40, 160], costs=None)
    assert (with_costs["final_equity"] < free["final_equity"]).all()
    assert (with_costs[["fees", "spread", "slippage", "impact"]] > 0).all().all()
    assert (free[["fees", "spread", "slippage", "impact", "total_cost"]] == 0).all().all()
    assert (with_costs["n_trades"] == free["n_trades"]).all()  # same signals; here no entry is skipped


def test_pairs_order_duplicates_and_empty_grid():
    candles = perp_5m().iloc[:3_000]
    table = sweep_ma_cross(candles, [20, 5, 5], [10, 30, 20])
    assert list(zip(table["fast"], table["slow"], strict=True)) == [(20, 30), (5, 10), (5, 30), (5, 20)]
    assert table["n_trades"].dtype == np.int64
    empty = sweep_ma_cross(candles, [50], [10, 20])
    assert empty.empty and list(empty.columns) == ["fast", "slow", *METRICS]
    single = sweep_ma_cross(candles, 5, 20)
    assert len(single) == 1 and single.iloc[0]["n_trades"] > 0
    never = sweep_ma_cross(candles, [5], [5_000])  # the slow MA never exists: no trade, flat equity
    assert never.iloc[0]["n_trades"] == 0 and never.iloc[0]["sharpe"] == 0.0 and never.iloc[0]["final_equity"] == 10_000.0
    assert math.isnan(never.iloc[0]["win_rate"])


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"orders": OrderSpec(stop_loss=0.02)}, "stop_loss=0.02"),
    ({"orders": OrderSpec(entry="limit", entry_offset=0.01)}, "entry='limit'"),
    ({"orders": OrderSpec(trailing_atr=2.0)}, "trailing_atr=2.0"),
    ({"size": SizeSpec(leverage=3)}, "leverage=3"),
    ({"size": SizeSpec("vol_target", 0.5)}, "size mode='vol_target'"),
    ({"kind": "wma"}, "kind='wma'"),
    ({"direction": "longs"}, "direction='longs'"),
    ({"costs": "cheap"}, "costs='cheap'"),
    ({"cash": 0}, "cash=0"),
])
def test_settings_the_fast_path_cannot_match_are_refused(kwargs, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        sweep_ma_cross(perp_5m(), [5], [20], **kwargs)


@pytest.mark.parametrize(("fast", "slow"), [([0], [20]), ([5.5], [20]), ([], [20]), ([5], [True])])
def test_bad_windows_are_refused(fast, slow):
    with pytest.raises(ConfigError, match=r"window|empty"):
        sweep_ma_cross(perp_5m(), fast, slow)


def test_bad_inputs_are_refused():
    candles = perp_5m()
    with pytest.raises(ConfigError, match="one Candles frame"):
        sweep_ma_cross({"a": candles}, [5], [20])
    with pytest.raises(ConfigError, match="CostArrays of"):
        sweep_ma_cross(candles, [5], [20], costs=CostModel().prepare(candles.iloc[:100]))
    broken = candles.copy()
    broken.iloc[5, broken.columns.get_loc("high")] = 0.0
    with pytest.raises(QlabError):
        sweep_ma_cross(broken, [5], [20])


def test_kernels_are_cached_numba():
    assert type(sweep_ma_cross_nb._cache).__name__ != "NullCache"
    no_costs = CostModel(fees=FeeSchedule(0.0, 0.0), spread=FixedSpread(0.0), slippage=FixedSlippage(0.0), impact=None)
    a = sweep_ma_cross(perp_5m(), [5], [20], costs=no_costs)
    b = sweep_ma_cross(perp_5m(), [5], [20], costs=None)
    pd.testing.assert_frame_equal(a, b)


def test_ruin_follows_the_metrics_conventions():
    """All equity at risk in a short that gaps through its liquidation: the sweep's metrics are Result.metrics()'s."""
    candles = _spiky_candles(gap=True)
    signals = ma_cross_signals(candles, 2, 5, direction="short")
    want = backtest(candles, signals, costs=None).metrics()
    row = sweep_ma_cross(candles, [2], [5], direction="short", costs=None).iloc[0]
    for name in ("final_equity", "total_return", "sharpe", "max_drawdown", "n_trades", "win_rate", "exposure"):
        np.testing.assert_allclose(row[name], want[name], rtol=RTOL, atol=1e-12, err_msg=name)

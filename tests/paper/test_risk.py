"""Every risk limit on hand-made scenarios: it triggers exactly when it should, and the rejection is journaled."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from qlab.execution import SizeSpec
from qlab.paper import RiskLimits, paper_trade


def candles(closes, start="2024-01-01", freq="1min", volume=1e6) -> pd.DataFrame:
    """Bars whose open is the previous close and whose range is +-0.1 % around the move."""
    c = np.asarray(closes, dtype=float)
    o = np.concatenate(([c[0]], c[:-1]))
    index = pd.date_range(start, periods=len(c), freq=freq, tz="UTC", name="timestamp")
    return pd.DataFrame({"open": o, "high": np.maximum(o, c) * 1.001, "low": np.minimum(o, c) * 0.999, "close": c,
                         "volume": volume}, index=index)


def signals_at(entries: dict[int, int], exits: tuple[int, ...] = ()):
    """A signal function: entry of direction d at the listed bar numbers (counted from the first bar of the data)."""
    def fn(window: pd.DataFrame) -> pd.DataFrame:
        n0 = round((window.index[0] - pd.Timestamp("2024-01-01", tz="UTC")) / (window.index[1] - window.index[0]))
        out = pd.DataFrame(False, index=window.index, columns=["entry_long", "exit_long", "entry_short", "exit_short"])
        for k in range(len(window)):
            d = entries.get(n0 + k, 0)
            out.iloc[k, 0], out.iloc[k, 2] = d > 0, d < 0
            if n0 + k in exits:
                out.iloc[k, 1] = out.iloc[k, 3] = True
        return out
    return fn


def run(closes, entries, exits=(), size=None, **kw):
    return paper_trade(signals_at(entries, exits), candles(closes), costs=None, size=size or SizeSpec(), warmup=0, lookback=3, **kw)


def test_max_notional_caps_the_entry():
    res = run([100.0] * 10, {2: 1}, risk=RiskLimits(max_notional=2500))
    fill = res.fills.iloc[0]
    assert fill["price"] == 100.0 and fill["size"] == pytest.approx(25.0)  # 10 000 of equity would buy 100 units


def test_max_position_caps_units():
    res = run([100.0] * 10, {2: -1}, risk=RiskLimits(max_position=7.5))
    assert res.fills.iloc[0]["size"] == pytest.approx(7.5) and res.fills.iloc[0]["side"] == -1


def test_max_leverage_and_total_notional_count_other_positions():
    a = candles([100.0] * 10)
    b = candles([50.0] * 10)
    fn = signals_at({2: 1})
    res = paper_trade(fn, {"A": a, "B": b}, costs=None, size=SizeSpec(value=0.6), warmup=0, lookback=3,
                      risk=RiskLimits(max_total_notional=9000, max_leverage=0.8))
    fills = res.fills.set_index("asset")
    # A: 60 % of 10 000 = 6000 (under both caps). B: the leverage room 0.8 * equity - 6000 = 2000 beats the total room 3000
    assert fills.loc["A", "size"] * 100.0 == pytest.approx(6000.0)
    assert fills.loc["B", "size"] * 50.0 == pytest.approx(0.8 * 10_000 - 6000)


def test_leverage_limit_rejects_when_no_room_is_left():
    res = paper_trade(signals_at({2: 1}), {"A": candles([100.0] * 10), "B": candles([50.0] * 10)}, costs=None, warmup=0, lookback=3,
                      risk=RiskLimits(max_leverage=1.0))
    rej = res.rejections()
    assert list(rej["rule"]) == ["max_leverage"] and rej.iloc[0]["symbol"] == "B"


def test_vol_target_sizes_to_the_target():
    rng = np.random.default_rng(1)
    closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, 40)))
    res = run(closes, {30: 1}, risk=RiskLimits(vol_target=0.3, vol_window=20))
    returns = np.diff(np.log(closes))[30 - 20: 30]  # the 20 returns ln(c_j / c_j-1) up to the signal bar 30
    ann = returns.std(ddof=1) * math.sqrt(365 * 24 * 60)
    notional = res.fills.iloc[0]["size"] * res.fills.iloc[0]["price"]
    assert notional == pytest.approx(10_000 * 0.3 / ann, rel=1e-9)


def test_drawdown_kill_switch_fires_at_the_first_breach_then_flattens_and_refuses():
    closes = [100, 100, 100, 99, 98, 96, 95, 94.5, 94, 93, 95, 96]
    res = run(closes, {1: 1, 9: 1}, risk=RiskLimits(max_drawdown=0.05))
    kills = [e for e in res.events if e.kind == "kill"]
    assert len(kills) == 1
    # independent: equity = 10 000 + q * (close - 100), q = 100 units bought at the open of bar 2 (100.0)
    equity = [10_000 + 100 * (c - 100) if k >= 2 else 10_000 for k, c in enumerate(closes)]
    first = next(k for k, e in enumerate(equity) if (max(equity[: k + 1]) - e) / max(equity[: k + 1]) >= 0.05)
    assert kills[0]["bar"] == first
    last = res.trades.iloc[-1]
    assert last["exit_reason"] == "kill_switch" and last["exit_bar"] == first + 1
    assert list(res.rejections()["rule"]) == ["kill_switch"]  # the entry at bar 9


def test_daily_loss_kill_switch_uses_the_day_start():
    closes = [100.0] * 4 + [100, 99, 98.5, 98, 97.8]
    frame = candles(closes, freq="6h")  # bars 0-3 on day 1, 4-8 on day 2
    res = paper_trade(_hourly_entry(), frame, costs=None, warmup=0, lookback=3,
                      risk=RiskLimits(max_daily_loss=0.02))
    kills = [e for e in res.events if e.kind == "kill"]
    # long 100 units from bar 2's open at 100; day 2 starts at equity 10 000; a 2 % loss is reached at close 98 (bar 7)
    assert len(kills) == 1 and kills[0]["bar"] == 7


def test_a_daily_loss_halt_ends_with_its_utc_day():
    # 6h bars: day 1 = bars 0-3, day 2 = 4-7, day 3 = 8-11. The signal at bar 3 buys 100 units at bar 4's open (100);
    # bar 5 closes at 97: 3 % below day 2's start (10 000) -> halt at bar 5, flattened at bar 6's open. The signal at
    # bar 6 (still day 2) is refused; the one at bar 9 (day 3) is taken and fills at bar 10's open.
    frame = candles([100.0] * 5 + [97.0] * 7, freq="6h")

    def fn(window):
        out = pd.DataFrame(False, index=window.index, columns=["entry_long", "exit_long", "entry_short", "exit_short"])
        for k in (3, 6, 9):
            out.loc[out.index == frame.index[k], "entry_long"] = True
        return out

    res = paper_trade(fn, frame, costs=None, warmup=0, lookback=3, risk=RiskLimits(max_daily_loss=0.02))
    kills = [e for e in res.events if e.kind == "kill"]
    assert len(kills) == 1 and kills[0]["rule"] == "max_daily_loss" and kills[0]["bar"] == 5
    rej = res.rejections()
    assert list(rej["bar"].astype(int)) == [6] and "next UTC day" in rej.iloc[0]["reason"]
    entries = [f for f in res.fills.to_dict("records") if f["kind"] == "entry"]
    assert [int(f["bar"]) for f in entries] == [4, 10]
    assert not res.state.killed


def _hourly_entry():
    def fn(window):
        out = pd.DataFrame(False, index=window.index, columns=["entry_long", "exit_long", "entry_short", "exit_short"])
        out.loc[out.index == pd.Timestamp("2024-01-01 06:00", tz="UTC"), "entry_long"] = True
        return out
    return fn


def test_order_rate_limit_refuses_the_reversal_entry():
    # entries flip every bar from bar 3: each reversal is an exit plus an entry in the same minute
    flips = {k: (1 if k % 2 else -1) for k in range(3, 8)}
    res = run([100.0] * 12, flips, risk=RiskLimits(max_orders_per_minute=1))
    rej = res.rejections()
    # bar 3: flat, one entry. bars 4 and 6: exit + entry in one minute -> the entry is refused. bars 5 and 7: flat after the
    # exit at the open, the previous minute's orders are exactly 60 s old (outside the window) -> the entry is taken
    assert list(rej["rule"]) == ["max_orders_per_minute"] * 2 and list(rej["bar"].astype(int)) == [4, 6]
    assert rej.iloc[0]["reason"].startswith("1 orders in the last minute")


def test_stale_data_guard_blocks_new_orders_only_when_late():
    frame = candles([100.0] * 10)
    calls = []

    def clock():  # called once per close; the close of bar 4 is seen 10 minutes late
        k = len(calls)
        calls.append(k)
        return frame.index[k] + pd.Timedelta(minutes=1) + (pd.Timedelta(minutes=10) if k == 4 else pd.Timedelta(0))

    res = paper_trade(signals_at({2: 1, 4: -1, 6: 1}), frame, costs=None, warmup=0, lookback=3, clock=clock,
                      risk=RiskLimits(max_data_age=120))
    rej = res.rejections()
    assert list(rej["rule"]) == ["stale_data"] and int(rej.iloc[0]["bar"]) == 4
    # the short entry of bar 4 is refused but its exit is not: the long is closed; the entry at bar 6 is taken
    assert list(res.trades["entry_bar"]) == [3, 7] and res.trades.iloc[0]["exit_bar"] == 5


def test_bad_limits_are_named():
    with pytest.raises(ValueError, match=r"max_drawdown=1\.5"):
        RiskLimits(max_drawdown=1.5)

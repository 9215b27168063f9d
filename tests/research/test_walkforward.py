"""qlab.research.walkforward: window arithmetic against hand-listed windows, out-of-sample isolation (a spy on
the optimiser and a planted future), and an end-to-end run on real BTC/USDT 1h data with every reported
number recomputed here from the result's own curves."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import qlab
import qlab.research.walkforward as wfmod
from qlab.analytics.result import backtest
from qlab.errors import ConfigError, DataError
from qlab.research.optimize import optimize
from qlab.research.walkforward import walk_forward, walk_forward_windows
from qlab.strategy.compile import strategy_signals

SPACE = {"fast.period": (5, 30, 5), "slow.period": (40, 120, 20)}
BPY = 8760.0
POS = ["is_start", "is_end", "oos_start", "oos_end"]


# ---------------------------------------------------------------- windows


def _hours(hours: list[int]) -> pd.DatetimeIndex:
    return pd.DatetimeIndex([pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(hours=h) for h in hours], name="timestamp")


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"in_sample": 4, "out_of_sample": 2}, [(0, 4, 4, 6), (2, 6, 6, 8), (4, 8, 8, 10), (6, 10, 10, 12)]),
    ({"in_sample": 4, "out_of_sample": 2, "anchored": True}, [(0, 4, 4, 6), (0, 6, 6, 8), (0, 8, 8, 10), (0, 10, 10, 12)]),
    ({"in_sample": 4, "out_of_sample": 2, "step": 3}, [(0, 4, 4, 6), (3, 7, 7, 9), (6, 10, 10, 12)]),
    ({"in_sample": 5, "out_of_sample": 3}, [(0, 5, 5, 8), (3, 8, 8, 11)]),  # the partial (6, 11, 11, 12) is dropped
    ({"in_sample": "4h", "out_of_sample": "2h"}, [(0, 4, 4, 6), (2, 6, 6, 8), (4, 8, 8, 10), (6, 10, 10, 12)]),
    ({"in_sample": "4h", "out_of_sample": pd.Timedelta("2h"), "step": "3h", "anchored": True},
     [(0, 4, 4, 6), (0, 7, 7, 9), (0, 10, 10, 12)]),
])
def test_windows_by_hand(kwargs, expected):
    index = _hours(list(range(12)))
    table = walk_forward_windows(index, **kwargs)
    assert [tuple(r) for r in table[POS].itertuples(index=False)] == expected
    assert list(table.window) == list(range(len(expected)))
    for col in POS:  # times are the bars' times; the end of the data is the last bar's close
        assert list(table[f"{col}_time"]) == [index[p] if p < 12 else index[-1] + pd.Timedelta("1h") for p in table[col]]


def test_duration_windows_follow_the_clock_across_a_gap():
    index = _hours([0, 1, 2, 3, 4, 7, 8, 9, 10, 11])  # 05:00 and 06:00 missing
    table = walk_forward_windows(pd.DataFrame(index=index), "4h", "2h")
    assert [tuple(r) for r in table[POS].itertuples(index=False)] == [(0, 4, 4, 5), (2, 5, 5, 6), (4, 6, 6, 8), (5, 8, 8, 10)]
    assert list(table.oos_start_time.dt.hour) == [4, 6, 8, 10]
    gap = walk_forward_windows(_hours([0, 1, 2, 3, 6, 7, 8, 9, 10, 11]), "4h", "2h")  # OOS 04:00-06:00 holds no bar
    assert list(gap.oos_start_time.dt.hour) == [6, 8, 10] and list(gap.window) == [0, 1, 2]


def test_window_errors():
    index = _hours(list(range(12)))
    with pytest.raises(ConfigError, match="not a mix"):
        walk_forward_windows(index, 4, "2h")
    with pytest.raises(ConfigError, match="positive duration"):
        walk_forward_windows(index, "four hours", 2)
    with pytest.raises(DataError, match="no complete walk-forward window"):
        walk_forward_windows(index, 10, 3)


# ---------------------------------------------------------------- real data, a spy on the optimiser


@pytest.fixture(scope="module")
def year():
    c = qlab.load_sample("BTC/USDT", "1h")
    return c[(c.index >= "2023-01-01") & (c.index < "2024-01-01")]


def _spied(candles, calls, **kwargs):
    real = wfmod.optimize

    def spy(strategy, is_candles, *args, **kw):
        calls.append((is_candles.index.copy(), {k: s.index.copy() for k, s in (kw.get("data") or {}).items()}))
        return real(strategy, is_candles, *args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(wfmod, "optimize", spy)
        return walk_forward("sma_cross", candles, SPACE, "sharpe", method="grid", **kwargs)


@pytest.fixture(scope="module")
def rolling(year):
    calls = []
    extra = {"x": year["close"].pct_change().rename("x")}  # an extra data series, to check that it is cut too
    return _spied(year, calls, in_sample="120D", out_of_sample="30D", data=extra), calls


def _assert_isolated(candles, wf, calls):
    assert len(calls) == len(wf.windows)
    for (seen, data), w in zip(calls, wf.windows.itertuples(), strict=True):
        assert seen.equals(candles.index[w.is_start:w.is_end])  # exactly the IS slice, nothing else
        assert seen.max() < w.oos_start_time and not (seen >= w.oos_start_time).any()
        assert all(ix.max() < w.oos_start_time for ix in data.values())


def test_no_oos_bar_reaches_the_optimiser_rolling(year, rolling):
    _assert_isolated(year, *rolling)
    assert rolling[1][0][1]  # the data series was passed (and cut)


def test_no_oos_bar_reaches_the_optimiser_anchored(year):
    calls = []
    wf = _spied(year, calls, in_sample="180D", out_of_sample="60D", anchored=True)
    _assert_isolated(year, wf, calls)
    assert (wf.windows.is_start == 0).all() and len(wf.windows) == 3
    assert [len(ix) for ix, _ in calls] == list(wf.windows.is_end)


def test_a_planted_future_does_not_change_past_choices(year, rolling):
    wf = rolling[0]
    k = 3
    w = wf.windows.iloc[k]
    t = np.arange(len(year)) - w.oos_start
    planted = year.copy()  # from window 3's OOS start on, prices swing +-25 % with a 100-bar period
    planted[["open", "high", "low", "close"]] = year[["open", "high", "low", "close"]].mul(
        np.where(t >= 0, 1 + 0.25 * np.sin(2 * np.pi * t / 100), 1.0), axis=0)
    # had the optimiser seen window 3's OOS bars, it would have chosen otherwise:
    leaky = optimize("sma_cross", planted.iloc[w.is_start:w.oos_end], SPACE, method="grid").best
    chosen = {p: w[p] for p in SPACE}
    assert {p: leaky[p] for p in SPACE} != chosen
    other = walk_forward("sma_cross", planted, SPACE, "sharpe", method="grid", in_sample="120D", out_of_sample="30D")
    cols = [*SPACE, "is_sharpe", "is_return", "is_n_trades"]
    pd.testing.assert_frame_equal(other.windows[cols].iloc[:k + 1], wf.windows[cols].iloc[:k + 1])
    for a, b in zip(other.optimizations[:k + 1], wf.optimizations[:k + 1], strict=True):
        pd.testing.assert_frame_equal(a.trials, b.trials)
    assert other.windows.oos_return.iloc[k] != wf.windows.oos_return.iloc[k]  # the plant did reach the evaluation
    pd.testing.assert_series_equal(other.oos_equity.iloc[:720 * k], wf.oos_equity.iloc[:720 * k])


# ---------------------------------------------------------------- end to end


def _cagr(curve: pd.Series) -> float:
    return (curve.iloc[-1] / curve.iloc[0]) ** (BPY / (len(curve) - 1)) - 1


def test_end_to_end_grid(year, rolling):
    wf, _ = rolling
    w = wf.windows
    covered = year.index[-1] + pd.Timedelta("1h")
    assert len(w) == (covered - year.index[0] - pd.Timedelta("120D")) // pd.Timedelta("30D") == 8
    assert len(wf.oos_equity) == (w.oos_end - w.oos_start).sum() and wf.oos_equity.index.is_unique
    assert wf.oos_equity.iloc[0] == 10_000.0
    total = wf.oos_equity.iloc[-1] / wf.oos_equity.iloc[0] - 1
    assert total == pytest.approx(np.prod(1 + w.oos_return) - 1, abs=1e-9)
    assert wf.metrics()["total_return"] == pytest.approx(total, abs=1e-12)
    for k, curve in enumerate(wf.oos_window_equity):  # each window starts with the previous one's ending equity
        assert curve.index.equals(year.index[w.oos_start[k]:w.oos_end[k]])
        if k:
            assert curve.iloc[0] == pytest.approx(wf.oos_window_equity[k - 1].iloc[-1], rel=1e-12)
        assert w.oos_ann_return[k] == pytest.approx(_cagr(curve), rel=1e-9)
        assert w.is_ann_return[k] == pytest.approx(_cagr(wf.is_equity[k]), rel=1e-9)
        expected = w.oos_ann_return[k] / w.is_ann_return[k] if w.is_ann_return[k] > 0 else math.nan
        assert w.efficiency[k] == pytest.approx(expected, rel=1e-12, nan_ok=True)
        assert w.is_sharpe[k] == pytest.approx(wf.optimizations[k].best["sharpe"], rel=1e-9)  # what the optimiser saw
    assert w.efficiency.isna().sum() == (w.is_ann_return <= 0).sum()
    assert w.note[w.efficiency.isna()].str.contains("negative").all()
    assert wf.efficiency == pytest.approx(_cagr(wf.oos_equity) / w.is_ann_return.mean(), rel=1e-9)
    assert wf.objective_efficiency["sharpe"] == pytest.approx(wf.metrics()["sharpe"] / w.is_sharpe.mean(), rel=1e-9)
    t = wf.oos_trades  # trades stay inside their window and none is left open
    starts, ends = w.oos_start[t.window].to_numpy(), w.oos_end[t.window].to_numpy()
    assert (t.entry_bar > starts).all() and (t.exit_bar < ends).all() and not t.is_open.any()
    assert (t.exit_reason == "window_end").sum() <= len(w) and wf.metrics()["n_trades"] == len(t) == w.oos_n_trades.sum()
    fig = wf.figure()
    assert len(fig.data) == 3 and len(fig.layout.shapes) == 2 * len(w)  # OOS windows shaded in both rows
    assert len(wf.windows_figure().data) == 2 * len(w)


def test_oos_run_equals_a_full_history_run_masked_outside_the_window(year, rolling):
    wf, _ = rolling
    w = wf.windows.iloc[5]
    chosen = wf.optimizations[5].best_strategy()
    signals = strategy_signals(chosen, year.iloc[:w.oos_end])
    signals.iloc[:w.oos_start] = False
    full = backtest(year.iloc[:w.oos_end], signals, orders=chosen.order_spec(), size=chosen.size_spec(),
                    costs=chosen.cost_model(), cash=float(wf.oos_window_equity[5].iloc[0]))
    np.testing.assert_allclose(full.equity.iloc[w.oos_start:].to_numpy(), wf.oos_window_equity[5].to_numpy(), rtol=1e-9)


def test_bayes_is_reproducible_and_settings_are_checked(year):
    run = [walk_forward("sma_cross", year, SPACE, "sharpe", method="bayes", n_trials=5, seed=3,
                        in_sample="120D", out_of_sample="60D") for _ in range(2)]
    assert len(run[0].windows) == 4 and not run[0].windows[list(SPACE)].isna().any().any()
    pd.testing.assert_frame_equal(run[0].windows, run[1].windows)
    pd.testing.assert_series_equal(run[0].oos_equity, run[1].oos_equity)
    with pytest.raises(ConfigError, match="overlap"):
        walk_forward("sma_cross", year, SPACE, in_sample="120D", out_of_sample="30D", step="10D")
    with pytest.raises(ConfigError, match="needs at least"):
        walk_forward("sma_cross", year.iloc[:4000], SPACE, method="grid", in_sample=3000, out_of_sample=500, warmup=20)


def test_a_window_without_a_feasible_trial_stays_flat(year):
    wf = walk_forward("sma_cross", year.iloc[:4000], SPACE, method="grid", in_sample=3000, out_of_sample=500,
                      constraints={"n_trades": (">=", 10_000)})
    assert wf.windows[list(SPACE)].isna().all().all() and wf.windows.note.str.contains("no feasible").all()
    assert (wf.oos_equity == 10_000.0).all() and wf.oos_trades.empty and math.isnan(wf.efficiency)

"""The lookahead guard on real bundled candles: honest indicators pass, peeking ones are named."""

from __future__ import annotations

import time
from functools import cache

import numpy as np
import pandas as pd
import pytest
import talib
from hypothesis import given, settings
from hypothesis import strategies as st
from talib import abstract

import qlab
from qlab.engine.lookahead import OFFENDER_COLUMNS, LookaheadReport, assert_no_lookahead, check_lookahead
from qlab.errors import ConfigError, LookaheadError, NotFoundError, QlabError, StrategyError


@cache
def perp_1h() -> pd.DataFrame:
    return qlab.load_sample("BTC/USDT:USDT", "1h")  # 916 bars


@cache
def spot_1h() -> pd.DataFrame:
    return qlab.load_sample("BTC/USDT", "1h")  # 58k bars


@cache
def perp_5m() -> pd.DataFrame:
    return qlab.load_sample("BTC/USDT:USDT", "5m")


def honest(c: pd.DataFrame) -> pd.DataFrame:
    """SMA cross with pandas, TA-Lib EMA/RSI/MACD/BBANDS/ATR, expanding mean, shift(+1)."""
    close, high, low = (c[k].to_numpy() for k in ("close", "high", "low"))
    out = pd.DataFrame(index=c.index)
    out["sma_fast"] = c["close"].rolling(10).mean()
    out["sma_slow"] = c["close"].rolling(50).mean()
    out["entry"] = (out["sma_fast"] > out["sma_slow"]) & (out["sma_fast"].shift(1) <= out["sma_slow"].shift(1))
    out["exit"] = (out["sma_fast"] < out["sma_slow"]) & (out["sma_fast"].shift(1) >= out["sma_slow"].shift(1))
    out["ema"] = talib.EMA(close, timeperiod=20)
    out["rsi"] = talib.RSI(close, timeperiod=14)
    out["macd"], out["macd_signal"], out["macd_hist"] = talib.MACD(close)
    out["bb_upper"], out["bb_middle"], out["bb_lower"] = talib.BBANDS(close, timeperiod=20)
    out["atr"] = talib.ATR(high, low, close, timeperiod=14)
    out["expanding_mean"] = c["close"].expanding().mean()
    out["prev_close"] = c["close"].shift(1)
    return out


def with_column(name: str, make):
    """An honest compute plus one extra column."""
    def compute(c):
        out = honest(c)
        out[name] = make(c)
        return out
    return compute


def test_honest_strategy_passes_on_real_data():
    report = check_lookahead(honest, perp_1h())
    assert isinstance(report, LookaheadReport)
    assert report.ok, str(report)
    assert report.offenders.empty and list(report.offenders.columns) == OFFENDER_COLUMNS
    assert report.failures == [] and report.warnings == []
    assert report.columns == list(honest(perp_1h()).columns)
    assert_no_lookahead(honest, perp_1h())
    assert "OK" in str(report) and "OK" in report._repr_html_()


def test_58k_bars_under_five_seconds():
    c = spot_1h()
    assert len(c) > 50_000
    start = time.perf_counter()
    report = check_lookahead(honest, c)
    elapsed = time.perf_counter() - start
    assert report.ok, str(report)
    assert len(report.checked_cutoffs) == 20
    assert elapsed < 5, f"{elapsed:.2f} s"


@pytest.mark.parametrize(("name", "make"), [
    ("next_up", lambda c: c["close"].shift(-1) > c["close"]),
    ("sma_fast_next", lambda c: c["close"].rolling(10).mean().shift(-1)),
    ("centered", lambda c: c["close"].rolling(5, center=True).mean()),
    ("zscore", lambda c: (c["close"] - c["close"].mean()) / c["close"].std()),
    ("below_last", lambda c: c["close"] < c["close"].iloc[-1]),
    ("bfilled", lambda c: c["close"].where(c.index.hour == 0).bfill()),
])
def test_peeking_column_is_named(name, make):
    compute = with_column(name, make)
    report = check_lookahead(compute, perp_1h())
    assert not report.ok
    assert report.offenders["column"].tolist() == [name]  # the honest columns beside it are not flagged
    row = report.offenders.iloc[0]
    assert row["first_bar_time"] <= row["cutoff_time"]
    assert row["differing_bars"] >= 1
    with pytest.raises(LookaheadError, match=f"lookahead in column '{name}'"):
        assert_no_lookahead(compute, perp_1h())


def test_message_names_column_bars_values_and_fix():
    c = perp_1h()
    compute = with_column("sma_fast_next", lambda c: c["close"].rolling(10).mean().shift(-1))
    with pytest.raises(LookaheadError) as info:
        assert_no_lookahead(compute, c)
    report = check_lookahead(compute, c)
    first = report.checked_cutoffs[0]
    stamp = first.strftime("%Y-%m-%d %H:%M UTC")
    full = c["close"].rolling(10).mean().shift(-1)[first]
    assert str(info.value) == (
        f"lookahead in column 'sma_fast_next': its value at {stamp} changes when data after {stamp} is removed "
        f"(full={full:.10g}, truncated=NaN); it uses future bars, e.g. shift(-1), centered rolling windows, "
        "or a fit on the whole series; compute it from data up to each bar only")
    assert isinstance(info.value, StrategyError) and isinstance(info.value, QlabError) and isinstance(info.value, ValueError)


def test_centered_window_first_differing_bar_is_before_the_cutoff():
    report = check_lookahead(lambda c: c["close"].rolling(5, center=True).mean().rename("centered"), perp_1h())
    row = report.offenders.iloc[0]
    step = pd.Timedelta("1h")
    assert row["first_bar_time"] == row["cutoff_time"] - step  # a 5-bar centred window at t-1 needs bar t+1
    assert row["differing_bars"] == 2 and pd.isna(row["truncated_value"])


def _hourly_close_on_5m(c: pd.DataFrame, shift: int) -> pd.Series:
    hourly = c["close"].resample("1h", label="left", closed="left").last()
    return hourly.shift(shift).reindex(c.index, method="ffill")


def test_higher_timeframe_leak_is_caught_and_shifted_version_passes():
    c = perp_5m()

    def leaky(c):
        htf = _hourly_close_on_5m(c, 0)  # the 10:00 hour's close (known at 10:55's close) shown from 10:00 on
        return pd.DataFrame({"sma": c["close"].rolling(12).mean(), "h1_close": htf, "above_h1": c["close"] > htf})

    def shifted(c):
        htf = _hourly_close_on_5m(c, 1)  # the previous hour's close: known at every bar of this hour
        return pd.DataFrame({"sma": c["close"].rolling(12).mean(), "h1_close": htf, "above_h1": c["close"] > htf})

    report = check_lookahead(leaky, c)
    assert set(report.offenders["column"]) == {"h1_close", "above_h1"}
    with pytest.raises(LookaheadError, match="'h1_close'"):
        assert_no_lookahead(leaky, c)
    assert_no_lookahead(shifted, c)


def test_misaligned_output_gets_a_clear_error():
    c = perp_1h()
    with pytest.raises(StrategyError, match=r"915 row\(s\) for 916 bar\(s\); row 1 is labelled .*dropna\(\)") as info:
        check_lookahead(lambda c: c["close"].shift(1).dropna(), c)
    assert not isinstance(info.value, LookaheadError)
    with pytest.raises(StrategyError, match="does not match the candles"):
        assert_no_lookahead(lambda c: c["close"].iloc[:-1], c)
    naive = c["close"].copy()
    naive.index = naive.index.tz_localize(None)
    with pytest.raises(StrategyError, match="row 1 is labelled Timestamp"):
        check_lookahead(lambda c: naive.iloc[: len(c)], c)


def test_misaligned_only_on_truncated_data_is_a_failure():
    full_index = perp_1h().index

    def sticky(c):  # always returns the full index: it cannot be right on shorter candles
        return pd.Series(1.0, index=full_index, name="x")

    report = check_lookahead(sticky, perp_1h())
    assert not report.ok and report.offenders.empty
    assert len(report.failures) == 1 and "extra row(s)" in report.failures[0]
    assert "more cutoff(s)" in report.failures[0]


def test_compute_that_fails_on_short_history_is_reported():
    def needs_500(c):
        if len(c) < 500:
            raise ValueError(f"need 500 bars, got {len(c)}")
        return c["close"].rolling(20).mean().rename("sma")

    report = check_lookahead(needs_500, perp_1h())
    assert not report.ok and report.offenders.empty
    assert report.failures[0].startswith("compute raised ValueError('need 500 bars, got 200') on the first 200 bars")
    assert "cannot run on shorter history" in report.failures[0]
    with pytest.raises(LookaheadError, match="cannot run on shorter history"):
        assert_no_lookahead(needs_500, perp_1h())
    assert check_lookahead(needs_500, perp_1h(), min_history=500).ok


def test_columns_that_never_fire_are_warnings_not_lookahead():
    def compute(c):
        return pd.DataFrame({"sma": c["close"].rolling(5).mean(), "never": c["close"] < 0,
                             "too_long": c["close"].rolling(5000).mean()})

    report = check_lookahead(compute, perp_1h())
    assert report.ok
    assert len(report.warnings) == 2
    assert "'never' is False on every bar" in report.warnings[0]
    assert "'too_long' is NaN on every bar" in report.warnings[1]
    assert "warning:" in str(report)


def test_series_output_is_named():
    report = check_lookahead(lambda c: c["close"].rolling(3).mean(), perp_1h())
    assert report.ok and report.columns == ["close"]
    report = check_lookahead(lambda c: pd.Series(c["close"].shift(-2).to_numpy(), index=c.index), perp_1h())
    assert report.offenders["column"].tolist() == ["value"]


def test_columns_argument_limits_the_check():
    compute = with_column("peek", lambda c: c["close"].shift(-1))
    assert check_lookahead(compute, perp_1h(), columns=["ema", "rsi"]).ok
    assert not check_lookahead(compute, perp_1h(), columns="peek").ok
    with pytest.raises(NotFoundError, match="did you mean 'peek'"):
        check_lookahead(compute, perp_1h(), columns=["peak"])


def test_cutoffs_are_deterministic_and_seeded():
    c = perp_1h()
    a = check_lookahead(honest, c).checked_cutoffs
    assert a == check_lookahead(honest, c, seed=0).checked_cutoffs
    assert len(a) == 20 and a == sorted(a) and len(set(a)) == 20
    assert a[0] == c.index[199] and a[-1] == c.index[-2]  # shortest input: min_history bars; longest: all but one
    b = check_lookahead(honest, c, seed=1).checked_cutoffs
    assert a != b and len(set(a) & set(b)) >= 15  # the evenly spread ones are shared
    assert len(check_lookahead(honest, c, cutoffs=3).checked_cutoffs) == 3


def test_short_candles_are_checked_with_a_warning():
    c = perp_1h().iloc[:60]
    report = check_lookahead(lambda c: c["close"].shift(-1).rename("peek"), c)
    assert not report.ok and "fewer than min_history" in report.warnings[0]
    short = check_lookahead(lambda c: c["close"].rolling(3).mean(), c.iloc[:5])
    assert short.ok and len(short.checked_cutoffs) == 2


def test_bad_arguments_and_outputs():
    c = perp_1h()
    for kw in ({"cutoffs": 0}, {"cutoffs": 2.5}, {"min_history": 0}, {"rtol": -1}):
        with pytest.raises(ConfigError):
            check_lookahead(honest, c, **kw)
    with pytest.raises(StrategyError, match="returned ndarray"):
        check_lookahead(lambda c: c["close"].to_numpy(), c)
    with pytest.raises(StrategyError, match="duplicate column"):
        check_lookahead(lambda c: pd.concat([c["close"], c["close"]], axis=1), c)
    with pytest.raises(StrategyError, match="no columns"):
        check_lookahead(lambda c: pd.DataFrame(index=c.index), c)


def test_object_and_nullable_columns():
    def compute(c):
        up = c["close"] > c["open"]
        return pd.DataFrame({"label": np.where(up, "up", "down"), "nullable": up.astype("boolean").shift(1),
                             "peek_label": np.where(c["close"].shift(-1) > c["close"], "up", "down")}, index=c.index)

    report = check_lookahead(compute, perp_1h())
    assert report.offenders["column"].tolist() == ["peek_label"]


def test_tolerance_absorbs_float_noise_only():
    def noisy(c):  # a value that wobbles at 1e-13 relative with the length of the input: not lookahead
        return (c["close"] * (1 + 1e-13 * (len(c) % 3))).rename("noisy")

    assert check_lookahead(noisy, perp_1h()).ok
    assert not check_lookahead(noisy, perp_1h(), rtol=0, atol=0).ok


def test_every_talib_function_is_bitwise_stable_under_truncation():
    """TA-Lib's unstable-period functions (EMA, RSI, ...) are still causal: truncation changes nothing."""
    def everything(c):
        inputs = {k: c[k].to_numpy() for k in ("open", "high", "low", "close", "volume")}
        inputs["periods"] = 10.0 + np.arange(len(c)) % 7
        cols = {}
        for name in talib.get_functions():
            fn = abstract.Function(name)
            out = fn(inputs, minperiod=2, maxperiod=30) if name == "MAVP" else fn(inputs)
            for label, values in zip(fn.output_names, out if isinstance(out, list) else [out], strict=True):
                cols[f"{name}.{label}"] = values
        return pd.DataFrame(cols, index=c.index)

    report = check_lookahead(everything, perp_1h(), rtol=0, atol=0, cutoffs=8)
    assert len(report.columns) > 200
    assert report.ok, str(report)


WINDOWS = st.tuples(st.sampled_from(["mean", "max", "min", "std", "shift"]), st.integers(0, 40))


def _causal(kind: str, n: int):
    if kind == "shift":
        return lambda s: s.shift(n)
    return lambda s: getattr(s.rolling(max(n, 2)), kind)()


@settings(max_examples=25, deadline=None)
@given(ops=st.lists(WINDOWS, min_size=1, max_size=4), k=st.integers(1, 30), where=st.integers(0, 4))
def test_property_causal_windows_pass_and_negative_shifts_are_named(ops, k, where):
    c = perp_1h()
    fns = [_causal(kind, n) for kind, n in ops]

    def causal(c):
        return pd.DataFrame({f"f{i}": fn(c["close"]) for i, fn in enumerate(fns)}, index=c.index)

    assert check_lookahead(causal, c, cutoffs=6, min_history=100).ok

    def peeking(c):
        out = causal(c)
        out.insert(min(where, len(fns)), "peek", out.iloc[:, 0].shift(-k))
        return out

    report = check_lookahead(peeking, c, cutoffs=6, min_history=100)
    assert report.offenders["column"].tolist() == ["peek"]
    with pytest.raises(LookaheadError, match="'peek'"):
        assert_no_lookahead(peeking, c, cutoffs=6, min_history=100)

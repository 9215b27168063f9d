"""compile_strategy: every indicator column equal to TA-Lib's own values, signal and rule columns boolean
on the candles' index, `input:` chains, warm-up, extra data as known at each bar's close (checked
against a plain loop on the real XRP funding), and the diagnosis of a strategy that never trades."""

from __future__ import annotations

import warnings
from functools import cache

import numpy as np
import pandas as pd
import pytest
import talib

import qlab
from qlab.errors import StrategyError
from qlab.strategy.compile import Diagnosis, align_data, compile_strategy, diagnose, strategy_signals, warmup_bars
from qlab.strategy.spec import RULES, Strategy
from qlab.strategy.templates import templates

NAN = float("nan")


@cache
def btc() -> pd.DataFrame:
    return qlab.load_sample("BTC/USDT", "1h").iloc[-3000:]


@cache
def xrp_8h() -> pd.DataFrame:
    return qlab.load_sample("XRP/USDT:USDT", "8h")


@cache
def funding() -> pd.Series:
    return qlab.load_sample_funding("XRP/USDT:USDT")


SPEC = {
    "version": 1, "name": "many",
    "indicators": {
        "sma20": {"fn": "sma", "params": {"period": 20}},
        "ema50": {"fn": "ema", "params": {"period": 50}},
        "rsi": {"fn": "rsi"},
        "macd": {"fn": "macd", "params": {"fast": 12, "slow": 26, "signal": 9}},
        "bb": {"fn": "bbands", "params": {"period": 20, "nbdev_up": 2.0, "nbdev_down": 1.5}},
        "atr": {"fn": "atr", "params": {"period": 14}},
        "stoch": {"fn": "stoch"},
        "rsi_sma": {"fn": "sma", "input": "rsi", "params": {"period": 10}},       # an SMA of the RSI
        "upper_sma": {"fn": "sma", "input": "bb.upper", "params": {"period": 5}},  # of a component
        "vol_ema": {"fn": "ema", "input": "volume", "params": {"period": 30}},     # of volume
        "mid_rsi": {"fn": "rsi", "input": "hl2", "params": {"period": 7}},         # of a derived candle series
        "smooth": {"fn": "ema", "input": "rsi_sma", "params": {"period": 3}},      # three deep, defined after its input
    },
    "signals": {"up": "crossover(sma20, ema50)", "hot": "rsi > 70"},
    "entry_long": "up & ~hot",
    "exit_long": "crossunder(macd.macd, macd.signal)",
    "entry_short": "close > bb.upper",
}


def talib_columns(c: pd.DataFrame) -> dict[str, np.ndarray]:
    _o, h, lo, cl, v = (c[k].to_numpy() for k in ("open", "high", "low", "close", "volume"))
    macd, signal, hist = talib.MACD(cl, fastperiod=12, slowperiod=26, signalperiod=9)
    upper, middle, lower = talib.BBANDS(cl, timeperiod=20, nbdevup=2.0, nbdevdn=1.5, matype=0)
    k, d = talib.STOCH(h, lo, cl)
    rsi = talib.RSI(cl, timeperiod=14)
    return {
        "sma20": talib.SMA(cl, timeperiod=20), "ema50": talib.EMA(cl, timeperiod=50), "rsi": rsi,
        "macd.macd": macd, "macd.signal": signal, "macd.hist": hist,
        "bb.upper": upper, "bb.middle": middle, "bb.lower": lower,
        "atr": talib.ATR(h, lo, cl, timeperiod=14), "stoch.k": k, "stoch.d": d,
        "rsi_sma": talib.SMA(rsi, timeperiod=10), "upper_sma": talib.SMA(upper, timeperiod=5),
        "vol_ema": talib.EMA(v, timeperiod=30), "mid_rsi": talib.RSI((h + lo) / 2, timeperiod=7),
        "smooth": talib.EMA(talib.SMA(rsi, timeperiod=10), timeperiod=3),
    }


def lead_nan(a) -> int:
    a = np.asarray(a, dtype=float)
    return int(np.argmax(~np.isnan(a))) if (~np.isnan(a)).any() else len(a)


def test_indicator_columns_equal_talib_and_rules_are_bool_on_the_candles_index():
    c = btc()
    s = Strategy.from_dict(SPEC)
    out = compile_strategy(s, c)
    expected = talib_columns(c)
    assert out.index.equals(c.index)
    assert set(out.columns) == {*expected, "up", "hot", *RULES} and list(out.columns)[-6:] == ["up", "hot", *RULES]
    for name, values in expected.items():
        assert out[name].dtype == np.float64
        np.testing.assert_array_equal(out[name].to_numpy(), values, err_msg=name)  # bit for bit, NaN where TA-Lib has NaN
    for name in ("up", "hot", *RULES):
        assert out[name].dtype == bool and not out[name].isna().any(), name
    assert not out["exit_short"].any()  # no rule given: never


def test_rule_columns_equal_the_rules_computed_by_hand():
    c = btc()
    out = compile_strategy(Strategy.from_dict(SPEC), c)
    t = {k: pd.Series(v, index=c.index) for k, v in talib_columns(c).items()}
    up = (t["sma20"] > t["ema50"]) & (t["sma20"].shift() <= t["ema50"].shift())
    hot = t["rsi"] > 70
    pd.testing.assert_series_equal(out["up"], up, check_names=False)
    pd.testing.assert_series_equal(out["hot"], hot, check_names=False)
    pd.testing.assert_series_equal(out["entry_long"], up & (t["rsi"] <= 70), check_names=False)
    cross_down = (t["macd.macd"] < t["macd.signal"]) & (t["macd.macd"].shift() >= t["macd.signal"].shift())
    pd.testing.assert_series_equal(out["exit_long"], cross_down, check_names=False)
    pd.testing.assert_series_equal(out["entry_short"], c["close"] > t["bb.upper"], check_names=False)
    assert out["entry_long"].sum() > 5 and out["exit_long"].sum() > 5 and out["entry_short"].sum() > 5
    only_rules = strategy_signals(Strategy.from_dict(SPEC), c)
    assert list(only_rules.columns) == list(RULES)
    pd.testing.assert_frame_equal(only_rules, out[list(RULES)])


def test_warmup_adds_up_along_input_chains():
    s = Strategy.from_dict(SPEC)
    out = compile_strategy(s, btc())
    expected = talib_columns(btc())
    assert lead_nan(expected["rsi_sma"]) == 14 + 9 and lead_nan(expected["smooth"]) == 14 + 9 + 2
    assert lead_nan(expected["upper_sma"]) == 19 + 4
    assert warmup_bars(s) == max(lead_nan(v) for v in expected.values()) == 49  # ema50 is the longest
    assert out.attrs["warmup"] >= warmup_bars(s)
    for name in templates:
        t = templates[name]
        c = xrp_8h() if t.data else btc()
        compiled = compile_strategy(t, c, {"funding_rate": funding()} if t.data else None)
        floats = [col for col in compiled.columns if compiled[col].dtype == np.float64]
        assert warmup_bars(t) == max(lead_nan(compiled[col]) for col in floats), name


def test_warmup_longer_than_the_data_is_refused_at_compile():
    s = Strategy.from_dict({"indicators": {"slow": {"fn": "sma", "params": {"period": 200}}}, "entry_long": "close > slow"})
    with pytest.raises(StrategyError, match=r"needs 199 bars of warm-up, but the candles have only 150; load more history"):
        compile_strategy(s, btc().iloc[:150])
    chain = Strategy.from_dict({"indicators": {"r": {"fn": "rsi", "params": {"period": 100}},
                                               "s": {"fn": "sma", "input": "r", "params": {"period": 100}}},
                                "entry_long": "s > 50"})
    assert warmup_bars(chain) == 199
    with pytest.raises(StrategyError, match="needs 199 bars of warm-up"):
        compile_strategy(chain, btc().iloc[:190])
    assert compile_strategy(chain, btc().iloc[:200]).index.size == 200
    window = Strategy.from_dict({"entry_long": "rising(close, n=400) | (close > open)"})
    with pytest.raises(StrategyError, match=r"entry_long `rising\(close, n=400\) \| \(close > open\)` has no value on any of the 300 bars"):
        compile_strategy(window, btc().iloc[:300])
    with pytest.raises(StrategyError, match="warm-up"):
        qlab.backtest(btc().iloc[:300], window)


def test_missing_or_unusable_extra_data():
    t = templates["funding_carry"]
    with pytest.raises(StrategyError, match=r"needs the data series \['funding_rate'\]; pass data=\{'funding_rate': series\}"):
        compile_strategy(t, xrp_8h())
    for bad, pattern in [(funding().to_frame(), "must be a pandas Series"),
                         (funding().tz_localize(None), "UTC DatetimeIndex"),
                         (funding().astype(str), "holds object values|holds str values")]:
        with pytest.raises(StrategyError, match=pattern):
            compile_strategy(t, xrp_8h(), {"funding_rate": bad})


def test_a_timeframe_in_the_spec_must_match_the_candles():
    s = Strategy.from_dict({"timeframe": "4h", "entry_long": "close > open"})
    with pytest.raises(StrategyError, match=r"written for timeframe '4h', but the candles are 1h bars"):
        compile_strategy(s, btc())
    assert compile_strategy(Strategy.from_dict({"timeframe": "1h", "entry_long": "close > open"}), btc()).shape[0] == len(btc())


def test_no_timeframe_is_needed_without_extra_data():
    c = btc().iloc[:300].copy()
    c.index = pd.date_range("2024-01-01", periods=len(c), freq="10min", tz="UTC", name="timestamp")  # no standard timeframe
    out = compile_strategy(templates["sma_cross"], c)
    assert out.index.equals(c.index) and out["entry_long"].any()


# ---------------------------------------------------------------- extra data as known at the close
def aligned_by_loop(series: pd.Series, index: pd.DatetimeIndex, bar: pd.Timedelta) -> list[float]:
    """For each bar, the last value stamped strictly before the bar's close (open + bar length)."""
    out = []
    events = sorted(zip(series.index, series.to_numpy(), strict=True))
    for t in index:
        close = t + bar
        known = [v for stamp, v in events if stamp < close]
        out.append(known[-1] if known else NAN)
    return out


@pytest.mark.parametrize("timeframe", ["8h", "1h"])
def test_align_data_equals_a_plain_loop_on_the_real_xrp_funding(timeframe):
    c = qlab.load_sample("XRP/USDT:USDT", timeframe)
    f = funding()
    got = align_data(f, c.index, timeframe)
    assert got.index.equals(c.index) and got.name == "funding_rate"
    np.testing.assert_array_equal(got.to_numpy(), aligned_by_loop(f, c.index, pd.Timedelta(timeframe)))
    shuffled = f.sample(frac=1.0, random_state=1)
    np.testing.assert_array_equal(align_data(shuffled, c.index, timeframe).to_numpy(), got.to_numpy())


def test_a_rate_stamped_after_the_close_is_not_known_at_that_close():
    f, c = funding(), xrp_8h()
    got = align_data(f, c.index, "8h")
    at = pd.Timestamp
    # the rate stamped 08:00:00.003 (0.000335) comes 3 ms after the close of the bar 00:00-08:00
    assert f[at("2021-11-24 08:00:00.003", tz="UTC")] == pytest.approx(0.000335, abs=1e-6)
    assert got[at("2021-11-24 00:00", tz="UTC")] == f[at("2021-11-24 00:00:00.001", tz="UTC")] != f[at("2021-11-24 08:00:00.003", tz="UTC")]
    assert got[at("2021-11-24 08:00", tz="UTC")] == f[at("2021-11-24 08:00:00.003", tz="UTC")]
    # a rate stamped exactly at a bar's close (00:00:00.000) is counted from the next bar on: "stamped before the close"
    assert got[at("2021-11-24 16:00", tz="UTC")] == f[at("2021-11-24 16:00:00.010", tz="UTC")]
    assert got[at("2021-11-25 00:00", tz="UTC")] == f[at("2021-11-25 00:00:00.000", tz="UTC")]
    # the first bar (00:00-08:00) knows only the rate stamped 00:00:00.017
    assert f.index[0] == at("2021-11-18 00:00:00.017", tz="UTC") and got.iloc[0] == f.iloc[0]
    before = align_data(f, c.index - pd.Timedelta("8h"), "8h")  # bars that close before the first rate: nothing known
    assert np.isnan(before.iloc[0])


def test_compiled_rules_read_the_aligned_data():
    c, f = xrp_8h(), funding()
    s = Strategy.from_dict({"data": ["funding_rate"], "signals": {"hi": "funding_rate > 0.00015"},
                            "entry_short": "hi", "exit_short": "funding_rate <= 0.0001"})
    out = compile_strategy(s, c, {"funding_rate": f})
    known = pd.Series(aligned_by_loop(f, c.index, pd.Timedelta("8h")), index=c.index)
    pd.testing.assert_series_equal(out["hi"], known > 0.00015, check_names=False)
    pd.testing.assert_series_equal(out["exit_short"], known <= 0.0001, check_names=False)
    assert out["hi"].sum() == 9  # 9 bars know a rate above 0.015 %


# ---------------------------------------------------------------- diagnosis
NEVER = {"name": "never", "indicators": {"fast": {"fn": "sma", "params": {"period": 20}},
                                          "slow": {"fn": "sma", "params": {"period": 50}}, "rsi": {"fn": "rsi"}},
         "signals": {"calm": "volume > 0"},
         "entry_long": "crossover(fast, slow) & (rsi > 99) & calm", "exit_long": "crossunder(fast, slow)"}


def test_diagnosis_names_the_part_that_was_never_true_with_counts_checked_by_hand():
    c = btc()
    cl = c["close"].to_numpy()
    fast, slow = pd.Series(talib.SMA(cl, 20), index=c.index), pd.Series(talib.SMA(cl, 50), index=c.index)
    rsi = pd.Series(talib.RSI(cl, 14), index=c.index)
    crossings = int(((fast > slow) & (fast.shift() <= slow.shift())).sum())
    crossings_down = int(((fast < slow) & (fast.shift() >= slow.shift())).sum())
    extreme, calm = int((rsi > 99).sum()), int((c["volume"] > 0).sum())
    assert crossings > 10 and extreme == 0 and calm > 2900  # the facts the diagnosis must report

    d = diagnose(Strategy.from_dict(NEVER), c)
    assert isinstance(d, Diagnosis) and (d.bars, d.warmup) == (3000, 50)  # SMA(50) and one bar for the crossover
    assert d.never == ["entry_long"]
    rows = {(r.rule, r.part): r.true_bars for r in d.table.itertuples()}
    assert rows == {  # the parts of `a & b & c`, and the signal `calm` by its expression; crossunder's inputs are numbers
        ("entry_long", "(whole rule)"): 0, ("entry_long", "crossover(fast, slow)"): crossings,
        ("entry_long", "rsi > 99"): extreme, ("entry_long", "calm"): calm, ("entry_long", "volume > 0"): calm,
        ("exit_long", "(whole rule)"): crossings_down,
    }
    assert d.table.share.tolist() == (d.table.true_bars / 3000).tolist()
    text = str(d)
    assert "entry_long: never true" in text
    assert "`rsi > 99`: true on 0 bars (0.00%)  <- never true: this part blocks the rule" in text
    assert f"`crossover(fast, slow)`: true on {crossings} bars" in text
    assert text.count("blocks the rule") == 1
    assert "<table" in d._repr_html_()


def test_a_rule_whose_parts_are_true_but_never_together():
    d = diagnose(Strategy.from_dict({"indicators": {"rsi": {"fn": "rsi"}}, "entry_long": "(rsi > 70) & (rsi < 30)"}), btc())
    rows = {r.part: r.true_bars for r in d.table.itertuples()}
    rsi = pd.Series(talib.RSI(btc()["close"].to_numpy(), 14))
    assert rows == {"(whole rule)": 0, "rsi > 70": int((rsi > 70).sum()), "rsi < 30": int((rsi < 30).sum())}
    assert d.never == ["entry_long"] and "blocks the rule" not in str(d)


def test_backtest_warns_with_the_diagnosis_when_there_are_no_trades():
    s = Strategy.from_dict(NEVER)
    with pytest.warns(UserWarning, match="strategy 'never' made no trades") as caught:
        result = qlab.backtest(btc(), s)
    message = str(caught[0].message)
    assert "entry_long: never true" in message and "`rsi > 99`: true on 0 bars (0.00%)  <- never true" in message
    assert result.trades.empty
    assert str(result.diagnose()) == str(diagnose(s, btc()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a strategy that trades does not warn
        assert len(qlab.backtest(btc(), templates["sma_cross"]).trades) > 10


def test_the_diagnosis_looks_inside_the_signals_a_rule_reads():
    s = Strategy.from_dict({"indicators": {"fast": {"fn": "sma", "params": {"period": 20}},
                                           "slow": {"fn": "sma", "params": {"period": 50}}, "rsi": {"fn": "rsi"}},
                            "signals": {"hot": "rsi > 99", "up": "crossover(fast, slow) & hot"}, "entry_long": "up"})
    d = diagnose(s, btc())
    rows = {r.part: r.true_bars for r in d.table.itertuples()}
    cl = btc()["close"].to_numpy()
    fast, slow = pd.Series(talib.SMA(cl, 20)), pd.Series(talib.SMA(cl, 50))
    crossings = int(((fast > slow) & (fast.shift() <= slow.shift())).sum())
    assert rows == {"(whole rule)": 0, "crossover(fast, slow) & hot": 0, "crossover(fast, slow)": crossings, "hot": 0,
                    "rsi > 99": 0}
    assert "`rsi > 99`: true on 0 bars (0.00%)  <- never true: this part blocks the rule" in str(d)

"""The indicator registry: TA-Lib parity, lookbacks, names, parameter checks, user indicators, hand-built ones."""

from __future__ import annotations

import math
import statistics
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import talib
from numpy.testing import assert_allclose, assert_array_equal

import qlab
from qlab.errors import NotFoundError, StrategyError
from qlab.strategy import indicators as ind
from qlab.strategy.indicators import CATEGORIES, REGISTRY, Param, get_indicator, indicator_markdown, indicator_table, register_indicator


@pytest.fixture(scope="module")
def candles() -> pd.DataFrame:
    return qlab.load_sample("BTC/USDT", "1h").iloc[-3000:]


# Every TA-Lib-backed entry, called directly with TA-Lib's own keywords; outputs in the registry's order.
TALIB = {
    "sma": lambda x, p: talib.SMA(x.c, timeperiod=p["period"]),
    "ema": lambda x, p: talib.EMA(x.c, timeperiod=p["period"]),
    "wma": lambda x, p: talib.WMA(x.c, timeperiod=p["period"]),
    "dema": lambda x, p: talib.DEMA(x.c, timeperiod=p["period"]),
    "tema": lambda x, p: talib.TEMA(x.c, timeperiod=p["period"]),
    "trima": lambda x, p: talib.TRIMA(x.c, timeperiod=p["period"]),
    "kama": lambda x, p: talib.KAMA(x.c, timeperiod=p["period"]),
    "t3": lambda x, p: talib.T3(x.c, timeperiod=p["period"], vfactor=p["vfactor"]),
    "mama": lambda x, p: talib.MAMA(x.c, fastlimit=p["fast_limit"], slowlimit=p["slow_limit"]),
    "sar": lambda x, p: talib.SAR(x.h, x.l, acceleration=p["acceleration"], maximum=p["maximum"]),
    "ht_trendline": lambda x, p: talib.HT_TRENDLINE(x.c),
    "adx": lambda x, p: talib.ADX(x.h, x.l, x.c, timeperiod=p["period"]),
    "adxr": lambda x, p: talib.ADXR(x.h, x.l, x.c, timeperiod=p["period"]),
    "plus_di": lambda x, p: talib.PLUS_DI(x.h, x.l, x.c, timeperiod=p["period"]),
    "minus_di": lambda x, p: talib.MINUS_DI(x.h, x.l, x.c, timeperiod=p["period"]),
    "aroon": lambda x, p: talib.AROON(x.h, x.l, timeperiod=p["period"])[::-1],  # TA-Lib returns (down, up)
    "aroonosc": lambda x, p: talib.AROONOSC(x.h, x.l, timeperiod=p["period"]),
    "linearreg": lambda x, p: talib.LINEARREG(x.c, timeperiod=p["period"]),
    "linearreg_slope": lambda x, p: talib.LINEARREG_SLOPE(x.c, timeperiod=p["period"]),
    "rsi": lambda x, p: talib.RSI(x.c, timeperiod=p["period"]),
    "macd": lambda x, p: talib.MACD(x.c, fastperiod=p["fast"], slowperiod=p["slow"], signalperiod=p["signal"]),
    "stoch": lambda x, p: talib.STOCH(x.h, x.l, x.c, fastk_period=p["fastk_period"], slowk_period=p["slowk_period"],
                                      slowk_matype=p["slowk_matype"], slowd_period=p["slowd_period"], slowd_matype=p["slowd_matype"]),
    "stochf": lambda x, p: talib.STOCHF(x.h, x.l, x.c, fastk_period=p["fastk_period"], fastd_period=p["fastd_period"],
                                        fastd_matype=p["fastd_matype"]),
    "stochrsi": lambda x, p: talib.STOCHRSI(x.c, timeperiod=p["period"], fastk_period=p["fastk_period"],
                                            fastd_period=p["fastd_period"], fastd_matype=p["fastd_matype"]),
    "cci": lambda x, p: talib.CCI(x.h, x.l, x.c, timeperiod=p["period"]),
    "mom": lambda x, p: talib.MOM(x.c, timeperiod=p["period"]),
    "roc": lambda x, p: talib.ROC(x.c, timeperiod=p["period"]),
    "returns": lambda x, p: talib.ROCP(x.c, timeperiod=p["period"]),
    "willr": lambda x, p: talib.WILLR(x.h, x.l, x.c, timeperiod=p["period"]),
    "ultosc": lambda x, p: talib.ULTOSC(x.h, x.l, x.c, timeperiod1=p["period1"], timeperiod2=p["period2"], timeperiod3=p["period3"]),
    "cmo": lambda x, p: talib.CMO(x.c, timeperiod=p["period"]),
    "apo": lambda x, p: talib.APO(x.c, fastperiod=p["fast"], slowperiod=p["slow"], matype=p["matype"]),
    "ppo": lambda x, p: talib.PPO(x.c, fastperiod=p["fast"], slowperiod=p["slow"], matype=p["matype"]),
    "trix": lambda x, p: talib.TRIX(x.c, timeperiod=p["period"]),
    "bop": lambda x, p: talib.BOP(x.o, x.h, x.l, x.c),
    "atr": lambda x, p: talib.ATR(x.h, x.l, x.c, timeperiod=p["period"]),
    "natr": lambda x, p: talib.NATR(x.h, x.l, x.c, timeperiod=p["period"]),
    "trange": lambda x, p: talib.TRANGE(x.h, x.l, x.c),
    "bbands": lambda x, p: talib.BBANDS(x.c, timeperiod=p["period"], nbdevup=p["nbdev_up"], nbdevdn=p["nbdev_down"], matype=p["matype"]),
    "stddev": lambda x, p: talib.STDDEV(x.c, timeperiod=p["period"], nbdev=p["nbdev"]),
    "obv": lambda x, p: talib.OBV(x.c, x.v),
    "ad": lambda x, p: talib.AD(x.h, x.l, x.c, x.v),
    "adosc": lambda x, p: talib.ADOSC(x.h, x.l, x.c, x.v, fastperiod=p["fast"], slowperiod=p["slow"]),
    "mfi": lambda x, p: talib.MFI(x.h, x.l, x.c, x.v, timeperiod=p["period"]),
}
TALIB_BACKED = sorted(n for n, d in REGISTRY.items() if d.talib_name)


def _arrays(candles):
    return SimpleNamespace(**{k[0]: candles[k].to_numpy() for k in ("open", "high", "low", "close", "volume")})


def _param_sets(defn) -> dict[str, dict]:
    """defaults, every parameter at its minimum, at its maximum, and a seeded random draw (only sets that pass the rules)."""
    rng = np.random.default_rng(sum(map(ord, defn.name)))

    def draw(p):
        if p.kind is int:
            return int(rng.integers(p.min, min(p.max, 120) + 1))
        return float(rng.uniform(p.min, p.max))

    sets = {"defaults": defn.defaults(), "min": {p.name: p.min for p in defn.params}, "max": {p.name: p.max for p in defn.params}}
    for _ in range(50):
        params = {p.name: draw(p) for p in defn.params}
        if not defn.check_params(params, "x"):
            sets["random"] = params
            break
    return {k: {n: (int(v) if p.kind is int else float(v)) for (n, v), p in zip(s.items(), defn.params, strict=True)}
            for k, s in sets.items() if not defn.check_params(s, "x")}


def _leading_nans(frame: pd.DataFrame) -> int:
    nan = frame.isna().any(axis=1).to_numpy()
    return len(nan) if nan.all() else int(np.argmin(nan))


def test_every_talib_backed_entry_is_checked_here():
    assert set(TALIB) == set(TALIB_BACKED)


@pytest.mark.parametrize("name", TALIB_BACKED)
def test_values_equal_talib_and_lookback_equals_leading_nans(candles, name):
    defn = get_indicator(name)
    sets = _param_sets(defn)
    assert "defaults" in sets and (not defn.params or "random" in sets)
    for label, params in sets.items():
        out = defn.compute(candles, **params)
        assert list(out.columns) == list(defn.outputs) and out.index.equals(candles.index)
        assert (out.dtypes == np.float64).all()
        expected = TALIB[name](_arrays(candles), params)
        expected = [expected] if isinstance(expected, np.ndarray) else list(expected)
        assert len(expected) == len(defn.outputs)
        for column, values in zip(defn.outputs, expected, strict=True):
            assert_array_equal(out[column].to_numpy(), values, err_msg=f"{name}.{column} with {label} params {params}")
        assert _leading_nans(out) == min(defn.lookback(**params), len(candles)), f"{name} with {label} params"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_default_lookback_is_the_leading_nan_count_and_values_are_causal(candles, name):
    defn = get_indicator(name)
    out = defn.compute(candles)
    lookback = defn.lookback()
    assert _leading_nans(out) == lookback
    assert out.iloc[lookback:].notna().all().all()  # real data: no gaps after the warm-up
    cut = candles.iloc[:2000]  # truncating the future leaves the past unchanged
    pd.testing.assert_frame_equal(defn.compute(cut), out.iloc[:2000])


def test_registry_size_docs_and_categories():
    assert len(REGISTRY) >= 30
    for name, defn in REGISTRY.items():
        assert defn.name == name and name == name.lower()
        assert defn.category in CATEGORIES[:4], name
        assert defn.doc and "\n" not in defn.doc, name
        assert set(defn.inputs) <= {"open", "high", "low", "close", "volume"}
        for p in defn.params:
            assert p.kind in (int, float) and p.min <= p.default <= p.max
    for category in CATEGORIES[:4]:
        assert sum(d.category == category for d in REGISTRY.values()) >= 5, category


def test_multi_output_names_and_aliases(candles):
    assert get_indicator("macd").outputs == ("macd", "signal", "hist")
    assert get_indicator("bbands").outputs == ("upper", "middle", "lower")
    assert get_indicator("stoch").outputs == ("k", "d") and get_indicator("stochrsi").outputs == ("k", "d")
    assert get_indicator("aroon").outputs == ("up", "down") and get_indicator("donchian").outputs == ("upper", "middle", "lower")
    assert get_indicator("rsi").outputs == ("value",)
    assert get_indicator("bb") is get_indicator("bbands") is get_indicator(" BBands ")
    bb = get_indicator("bb").compute(candles, period=20).iloc[19:]
    assert (bb["upper"] >= bb["middle"]).all() and (bb["middle"] >= bb["lower"]).all()
    up, _down = get_indicator("aroon").compute(candles, period=14)[["up", "down"]].T.to_numpy()
    assert_array_equal(up, talib.AROON(candles.high.to_numpy(), candles.low.to_numpy(), 14)[1])
    table = indicator_table()
    assert len(table) == len(REGISTRY) and table.set_index("name").loc["bbands", "aliases"] == "bb"
    assert {"name", "category", "inputs", "params", "outputs", "lookback", "doc"} <= set(table.columns)
    markdown = indicator_markdown()
    assert "| `bbands` (alias `bb`) | volatility | close | period=20 (2..1000)" in markdown
    assert markdown.count("\n") == len(REGISTRY) + 2


def test_unknown_names_suggest():
    with pytest.raises(StrategyError, match="unknown indicator 'rsii'; did you mean 'rsi'") as err:
        get_indicator("rsii")
    assert isinstance(err.value, NotFoundError) and isinstance(err.value, KeyError)
    with pytest.raises(NotFoundError, match="did you mean 'bbands'"):
        get_indicator("bband")
    with pytest.raises(StrategyError, match=r"'macd\.signal' names an output; the indicator is 'macd'"):
        get_indicator("macd.signal")
    with pytest.raises(StrategyError, match="known indicators: ad, adosc"):
        get_indicator("qqqqqq")


def test_check_params_reports_every_problem_with_its_location():
    macd = get_indicator("macd")
    where = "indicators.macd.params"
    problems = macd.check_params({"fast": 30, "slow": 20, "signal": 9.0, "sigal": 3}, where)
    assert len(problems) == 3, problems
    assert "indicators.macd.params.signal: expected a whole number from 1 to 1000, got 9.0 (float); write 9" in problems
    assert any(p.startswith(f"{where}.sigal: unknown parameter 'sigal'") and "did you mean 'signal'" in p for p in problems)
    assert f"{where}: fast (30) must be less than slow (20) for macd" in problems
    assert macd.check_params({"fast": 5}, where) == [] and macd.check_params({}, where) == []
    assert macd.check_params({"fast": 26}, where) == [f"{where}: fast (26) must be less than slow (26) for macd"]

    bb = get_indicator("bb")
    problems = bb.check_params({"period": 1, "nbdev_up": 20, "matype": "ema", "nbdevup": 2}, "indicators.bb.params")
    assert len(problems) == 4, problems
    assert "indicators.bb.params.period: 1 is below the minimum; use a whole number from 2 to 1000" in problems
    assert "indicators.bb.params.nbdev_up: 20 is above the maximum; use a number from 0 to 10" in problems
    assert "indicators.bb.params.matype: expected a whole number from 0 to 6, got 'ema' (str)" in problems
    assert any("did you mean 'nbdev_up'" in p for p in problems)
    assert get_indicator("rsi").check_params([14], "x") == ["x: expected a mapping of parameter names to numbers, got list"]
    assert get_indicator("sar").check_params({"acceleration": 0.3}, "s") == ["s: acceleration (0.3) must be at most maximum (0.2) for sar"]


def test_param_check_types():
    p = Param("period", int, 14, 2, 1000)
    assert p.check(np.int64(20), "w") == [] and p.check(1000, "w") == []
    assert p.check(True, "w") and p.check(None, "w") and p.check(14.5, "w") and p.check(1001, "w")
    f = Param("nbdev", float, 2.0, 0.0, 10.0)
    assert f.check(3, "w") == [] and f.check(np.float32(2.5), "w") == []
    assert f.check(math.nan, "w") == ["w: nan is not finite; use a number from 0 to 10"]
    with pytest.raises(StrategyError, match="outside"):
        Param("period", int, 1, 2, 10)


def test_compute_rejects_bad_params_and_missing_columns(candles):
    with pytest.raises(StrategyError, match=r"(?s)macd\.params\.fast: 1 is below.*macd\.params\.signal: expected a whole number"):
        get_indicator("macd").compute(candles, fast=1, signal=2.5)
    with pytest.raises(StrategyError, match="reads column\\(s\\) 'high', 'low'"):
        get_indicator("atr").compute(candles[["close"]])
    with pytest.raises(StrategyError, match="put it in a 'close' column"):
        get_indicator("sma").compute(candles[["volume"]])
    with pytest.raises(StrategyError, match="'close' is str"):
        get_indicator("sma").compute(pd.DataFrame({"close": ["a", "b"]}))
    empty = get_indicator("macd").compute(candles.iloc[:0])
    assert list(empty.columns) == ["macd", "signal", "hist"] and len(empty) == 0


def test_single_input_indicators_take_any_series(candles):
    rsi = get_indicator("rsi").compute(candles)["value"]
    sma_of_rsi = get_indicator("sma").compute(rsi.to_frame("close"), period=10)["value"]
    assert_array_equal(sma_of_rsi.to_numpy(), talib.SMA(talib.RSI(candles.close.to_numpy(), 14), 10))
    assert sma_of_rsi.first_valid_index() == candles.index[14 + 9]
    sma_of_volume = get_indicator("sma").compute(candles[["volume"]].rename(columns={"volume": "close"}), period=5)
    assert_array_equal(sma_of_volume["value"].to_numpy(), talib.SMA(candles.volume.to_numpy(), 5))
    assert get_indicator("sma").single_input and not get_indicator("atr").single_input


# ---------------------------------------------------------------- hand-built indicators against plain loops
def test_donchian_against_a_loop(candles):
    out = get_indicator("donchian").compute(candles, period=7)
    h, lo = candles.high.tolist(), candles.low.tolist()
    for i in range(len(candles)):
        if i < 6:
            assert out.iloc[i].isna().all()
            continue
        upper, lower = max(h[i - 6:i + 1]), min(lo[i - 6:i + 1])
        assert (out["upper"].iat[i], out["lower"].iat[i], out["middle"].iat[i]) == (upper, lower, (upper + lower) / 2)


def test_keltner_is_ema_plus_minus_atr(candles):
    out = get_indicator("keltner").compute(candles, period=20, atr_period=30, multiplier=1.5)
    x = _arrays(candles)
    ema, atr = talib.EMA(x.c, 20), talib.ATR(x.h, x.l, x.c, 30)
    ema[:30] = np.nan  # all three lines start when the later of the two is ready
    assert_array_equal(out["middle"].to_numpy(), ema)
    assert_array_equal(out["upper"].to_numpy(), ema + 1.5 * atr)
    assert_array_equal(out["lower"].to_numpy(), ema - 1.5 * atr)
    assert get_indicator("keltner").lookback(period=20, atr_period=30) == 30


def test_zscore_vwap_log_returns_against_loops(candles):
    n = 20
    c, v = candles.close.tolist(), candles.volume.tolist()
    typical = ((candles.high + candles.low + candles.close) / 3).tolist()
    z = get_indicator("zscore").compute(candles, period=n)["value"].to_numpy()
    vwap = get_indicator("vwap").compute(candles, period=n)["value"].to_numpy()
    logr = get_indicator("log_returns").compute(candles, period=3)["value"].to_numpy()
    want_z, want_vwap, want_logr = (np.full(len(c), np.nan) for _ in range(3))
    for i in range(n - 1, len(c)):
        window = c[i - n + 1:i + 1]
        want_z[i] = (c[i] - statistics.fmean(window)) / statistics.pstdev(window)
        want_vwap[i] = sum(t * w for t, w in zip(typical[i - n + 1:i + 1], v[i - n + 1:i + 1], strict=True)) / sum(v[i - n + 1:i + 1])
    for i in range(3, len(c)):
        want_logr[i] = math.log(c[i] / c[i - 3])
    assert_allclose(z, want_z, rtol=1e-7, atol=1e-9)
    assert_allclose(vwap, want_vwap, rtol=1e-10)
    assert_allclose(logr, want_logr, rtol=1e-12, atol=1e-15)


def test_hand_built_edge_cases():
    flat = pd.DataFrame({"close": [1.0] * 5, "high": [1.0] * 5, "low": [1.0] * 5, "volume": [0.0] * 5})
    assert get_indicator("zscore").compute(flat, period=3)["value"].isna().all()  # std 0 -> NaN, not inf
    assert get_indicator("vwap").compute(flat, period=3)["value"].isna().all()  # no volume -> NaN
    prices = pd.DataFrame({"close": [1.0, 0.0, 2.0, -1.0]})
    assert get_indicator("log_returns").compute(prices)["value"].isna().all()


# ---------------------------------------------------------------- user indicators
@pytest.fixture
def registry():
    """Restore the registry after a test that registers indicators."""
    saved, aliases = dict(REGISTRY), dict(ind.ALIASES)
    yield REGISTRY
    REGISTRY.clear()
    REGISTRY.update(saved)
    ind.ALIASES.clear()
    ind.ALIASES.update(aliases)


def test_user_indicator_returning_a_series(candles, registry):
    @register_indicator("hl_range", params={"period": (5, 1, 100, "bars")}, inputs=("high", "low"), lookback=lambda period: period - 1)
    def hl_range(data, period):
        """Mean high-low range."""
        return (data.high - data.low).rolling(period).mean()

    assert callable(hl_range)
    defn = get_indicator("hl_range")
    assert (defn.category, defn.doc, defn.outputs, defn.source) == ("custom", "Mean high-low range.", ("value",), "user")
    assert defn.params == (Param("period", int, 5, 1, 100, "bars"),)
    out = defn.compute(candles, period=3)
    pd.testing.assert_series_equal(out["value"], (candles.high - candles.low).rolling(3).mean(), check_names=False)
    assert defn.lookback(period=3) == 2 == _leading_nans(out)
    assert defn.check_params({"period": 3.0}, "indicators.r.params") == [
        "indicators.r.params.period: expected a whole number from 1 to 100, got 3.0 (float); write 3"]
    assert "hl_range" in set(indicator_table()["name"])


def test_user_indicator_with_named_outputs(candles, registry):
    @register_indicator("envelope", params={"period": (10, 2, 500), "width": (0.05, 0.0, 1.0)}, outputs=("upper", "lower"),
                        category="volatility", doc="Moving-average envelope")
    def envelope(data, period, width):
        mid = data.close.rolling(period).mean()
        return {"lower": mid * (1 - width), "upper": mid * (1 + width)}

    out = get_indicator("envelope").compute(candles, width=0.1)
    assert list(out.columns) == ["upper", "lower"] and (out.dtypes == np.float64).all()
    assert_allclose(out["upper"].to_numpy(), candles.close.rolling(10).mean().to_numpy() * 1.1)
    assert get_indicator("envelope").params[1].kind is float

    @register_indicator("flags")
    def flags(data):
        return data.close > data.close.shift()  # booleans become 0/1

    assert set(get_indicator("flags").compute(candles)["value"].unique()) == {0.0, 1.0}


@pytest.mark.parametrize(("result", "message"), [
    (lambda d: pd.Series("buy", index=d.index), r"indicator 'bad' output 'value' is not numeric \(dtype .*'buy'"),
    (lambda d: d.close.iloc[1:], "indicator 'bad' output 'value' has 2999 values for 3000 bars"),
    (lambda d: d.close.reset_index(drop=True), "indicator 'bad' output 'value' is not aligned with the data: 0 at position 0"),
    (lambda d: d.close.iloc[::-1], "is not aligned with the data"),
    (lambda d: {"value": [1.0] * len(d)}, "indicator 'bad' output 'value' is list; expected a pandas Series"),
    (lambda d: d.close.to_numpy()[:-1], "output 'value' has 2999 values for 3000 bars"),
    (lambda d: 3.0, "indicator 'bad' returned float; expected a pandas Series, a DataFrame or a dict"),
])
def test_user_indicator_bad_results_name_it(candles, registry, result, message):
    register_indicator("bad")(lambda data: result(data))
    with pytest.raises(StrategyError, match=message):
        get_indicator("bad").compute(candles)


def test_user_indicator_missing_or_extra_outputs(candles, registry):
    @register_indicator("two", outputs=("upper", "lower"))
    def two(data):
        return pd.DataFrame({"upper": data.close, "lowr": data.close})

    with pytest.raises(StrategyError, match="indicator 'two' returned output\\(s\\) 'upper', 'lowr' but declares 'upper', 'lower'; "
                                            "'lowr' looks like a misspelt 'lower'"):
        get_indicator("two").compute(candles)
    register_indicator("one_of_two", outputs=("a", "b"))(lambda data: data.close)
    with pytest.raises(StrategyError, match="returned one series but declares outputs"):
        get_indicator("one_of_two").compute(candles)


def test_register_protects_names_and_checks_declarations(registry):
    def f(data, period=14):
        return data.close

    for taken in ("rsi", "bb", "RSI"):
        with pytest.raises(StrategyError, match="already exists; pick another name or pass replace=True"):
            register_indicator(taken, params={"period": (14, 2, 100)})(f)
    assert get_indicator("rsi").source == "ta-lib"
    register_indicator("rsi", params={"period": (14, 2, 100)}, replace=True)(f)
    assert get_indicator("rsi").source == "user"
    with pytest.raises(StrategyError, match="cannot take the data and the declared params \\(length\\)"):
        register_indicator("mine", params={"length": (14, 2, 100)})(f)
    with pytest.raises(StrategyError, match=r"lookback\(n\) cannot take the declared params \(period\)"):
        register_indicator("mine", params={"period": (14, 2, 100)}, lookback=lambda n: n)(f)
    with pytest.raises(StrategyError, match="lower-case identifier"):
        register_indicator("my.rsi")
    with pytest.raises(StrategyError, match="did you mean 'volatility'"):
        register_indicator("mine", category="volatilty")
    with pytest.raises(StrategyError, match=r"inputs .* must be candle columns"):
        register_indicator("mine", inputs=("price",))
    with pytest.raises(StrategyError, match="distinct lower-case identifiers"):
        register_indicator("mine", outputs=("a", "a"))
    with pytest.raises(StrategyError, match="default must be an int or a float"):
        register_indicator("mine", params={"on": (True, 0, 1)})
    with pytest.raises(StrategyError, match="give \\(default, min, max\\)"):
        register_indicator("mine", params={"period": 14})
    with pytest.raises(StrategyError, match="default 500 is outside"):
        register_indicator("mine", params={"period": (500, 2, 100)})


def test_user_errors_carry_the_indicator_name(candles, registry):
    @register_indicator("boom")
    def boom(data):
        raise ZeroDivisionError("oops")

    with pytest.raises(ZeroDivisionError) as err:
        get_indicator("boom").compute(candles)
    assert "while computing indicator 'boom'" in str(err.value.__notes__)
    ind.unregister_indicator("boom")
    with pytest.raises(NotFoundError):
        get_indicator("boom")


def test_import_does_not_load_talib():
    import subprocess
    import sys

    code = "import sys, qlab.strategy.indicators as i; print('talib' in sys.modules, len(i.REGISTRY))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False" and int(out[1]) >= 30


def test_readme_lists_match_the_registries():
    """README's indicator, signal and template tables are generated; regenerate with `python -m qlab.strategy --readme`."""
    from qlab.strategy.__main__ import README, generated_sections, section

    text = README.read_text()
    for name, body in generated_sections().items():
        assert section(text, name) == body.strip(), f"README {name} list is stale: run python -m qlab.strategy --readme"

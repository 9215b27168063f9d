"""The cost model: estimators against slow reference formulas on real data, no lookahead, fees, funding, fills."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from qlab.costs import (
    DEFAULT_COSTS,
    CostArrays,
    CostModel,
    FeeSchedule,
    FixedSlippage,
    FixedSpread,
    Funding,
    HighLowSpread,
    SqrtImpact,
    VolatilitySlippage,
    corwin_schultz,
    cost_breakdown,
    cost_share,
    impact_fraction,
    resolve_costs,
)
from qlab.data.sample import load_sample, load_sample_funding
from qlab.data.store import Store
from qlab.errors import ConfigError, DataError


def frame(rows, start="2024-01-01", freq="1h"):
    """Candles from (open, high, low, close, volume) rows."""
    index = pd.date_range(start, periods=len(rows), freq=freq, tz="UTC", name="timestamp").as_unit("ns")
    return pd.DataFrame(np.array(rows, dtype=np.float64), index=index, columns=["open", "high", "low", "close", "volume"])


# -- slow references, written from the papers' formulas, one bar at a time -----------------------------------------------
def slow_corwin_schultz(high, low, close):
    """Corwin & Schultz (2012): two-day estimate for each pair (t-1, t), with the overnight adjustment of Section II."""
    out = [math.nan]
    for t in range(1, len(high)):
        h1, l1 = high[t], low[t]
        if l1 > close[t - 1]:  # the price rose between the bars: move bar t down by the gap
            gap = l1 - close[t - 1]
            h1, l1 = h1 - gap, l1 - gap
        elif h1 < close[t - 1]:  # the price fell between the bars: move bar t up by the gap
            gap = close[t - 1] - h1
            h1, l1 = h1 + gap, l1 + gap
        beta = math.log(high[t - 1] / low[t - 1]) ** 2 + math.log(h1 / l1) ** 2
        gamma = math.log(max(high[t - 1], h1) / min(low[t - 1], l1)) ** 2
        denom = 3 - 2 * math.sqrt(2)
        alpha = (math.sqrt(2 * beta) - math.sqrt(beta)) / denom - math.sqrt(gamma / denom)
        s = 2 * (math.exp(alpha) - 1) / (1 + math.exp(alpha))
        out.append(max(s, 0.0))
    return out


def slow_half_spread(candles, window):
    """Bar t: half the mean of the pair estimates ending at bars t-window .. t-1; the first bars take the first value."""
    raw = slow_corwin_schultz(*(candles[c].tolist() for c in ("high", "low", "close")))
    out = []
    for t in range(len(raw)):
        pairs = [raw[j] for j in range(max(1, t - window), t)]
        out.append(sum(pairs) / len(pairs) / 2 if pairs else None)
    first = next(v for v in out if v is not None)
    return [first if v is None else v for v in out]


def slow_sigma(close, window):
    """Bar t: sample std of the log returns of bars t-window .. t-1 (>= 2 of them); the first bars take the first value."""
    out = []
    for t in range(len(close)):
        rets = [math.log(close[j] / close[j - 1]) for j in range(max(1, t - window), t)]
        if len(rets) < 2:
            out.append(None)
            continue
        mean = sum(rets) / len(rets)
        out.append(math.sqrt(sum((r - mean) ** 2 for r in rets) / (len(rets) - 1)))
    first = next(v for v in out if v is not None)
    return [first if v is None else v for v in out]


@pytest.fixture(scope="module")
def btc1h():
    return load_sample("BTC/USDT", "1h")


@pytest.fixture(scope="module")
def ada5m():
    return load_sample("ADA/BTC", "5m")


# -- Corwin-Schultz ----------------------------------------------------------------------------------------------------
def test_corwin_schultz_by_hand_three_bars():
    candles = frame([
        [100.0, 101.0, 99.0, 100.0, 1.0],
        [100.0, 101.0, 99.0, 100.0, 1.0],
        [100.5, 101.6, 100.2, 101.0, 1.0],  # its low 100.2 is above close 100: an up-gap of 0.2
    ])
    raw = corwin_schultz(candles.high.to_numpy(), candles.low.to_numpy(), candles.close.to_numpy())
    assert np.isnan(raw[0])
    # Pair (0, 1), two identical bars with range [99, 101]: beta = 2 ln(101/99)^2, gamma = ln(101/99)^2, so
    # alpha = ln(101/99) * ((2 - sqrt 2) / (3 - 2 sqrt 2) - 1 / sqrt(3 - 2 sqrt 2)) = ln(101/99) * (sqrt2/(sqrt2-1) - 1/(sqrt2-1))
    #       = ln(101/99), and S = 2 (101/99 - 1) / (1 + 101/99) = 2 * 2 / 200 = 0.02.
    assert raw[1] == pytest.approx(0.02, rel=1e-12)
    # Pair (1, 2): bar 2 shifted down by the 0.2 gap -> high 101.4, low 100.0.
    #   ln(101/99) = 0.0200006667, ln(101.4/100) = 0.0139029052 -> beta = 0.000400027 + 0.000193291 = 0.000593317
    #   sqrt(beta) = 0.0243581083; (sqrt(2 beta) - sqrt(beta)) / (3 - 2 sqrt 2) = 0.0243581083 * 0.414213562 / 0.171572875 = 0.0588056755
    #   gamma = ln(101.4 / 99)^2, ln = 0.0239532410; sqrt(gamma / 0.171572875) = 0.0239532410 / 0.414213562 = 0.0578282393
    #   alpha = 0.0588056755 - 0.0578282393 = 0.0009774362; S = 2 (e^a - 1)/(1 + e^a) ~= alpha = 0.000977436
    # (without the gap adjustment, high 101.6 / low 100.2 give alpha = -0.0038 -> 0)
    assert raw[2] == pytest.approx(0.000977436, rel=1e-5)
    # bar 2 may only use pairs ending at bars <= 1: the pair (0, 1); bars 0 and 1 (warm-up) take that first estimate
    half, warmup = HighLowSpread(window=2).half_spread(candles)
    np.testing.assert_allclose(half, [0.01, 0.01, 0.01], rtol=1e-12)
    assert warmup == 2


def test_negative_estimates_are_zero():
    # a trending pair: bar 1 entirely above bar 0's range with no gap at the close -> alpha < 0
    candles = frame([[100.0, 101.0, 99.0, 101.0, 1.0], [101.0, 104.0, 101.0, 104.0, 1.0]])
    raw = corwin_schultz(candles.high.to_numpy(), candles.low.to_numpy(), candles.close.to_numpy())
    assert raw[1] == 0.0


@pytest.mark.parametrize("name", ["btc1h", "ada5m"])
@pytest.mark.parametrize("window", [1, 20])
def test_high_low_spread_matches_slow_reference_on_real_data(name, window, request):
    candles = request.getfixturevalue(name)
    raw = corwin_schultz(candles.high.to_numpy(), candles.low.to_numpy(), candles.close.to_numpy())
    slow = slow_corwin_schultz(candles.high.tolist(), candles.low.tolist(), candles.close.tolist())
    np.testing.assert_allclose(raw[1:], slow[1:], rtol=1e-9, atol=1e-15)
    half, _ = HighLowSpread(window=window).half_spread(candles)
    np.testing.assert_allclose(half, slow_half_spread(candles, window), rtol=1e-8, atol=1e-15)
    assert 0 < np.median(half) < 0.01  # plausible: a few bps, well under 1 %


def test_volatility_and_adv_match_slow_reference(btc1h):
    candles = btc1h.iloc[:3000]
    arrays = CostModel(slippage=VolatilitySlippage(multiple=0.3, window=10), impact=SqrtImpact(window=10)).prepare(candles)
    sigma = slow_sigma(candles.close.tolist(), 10)
    np.testing.assert_allclose(arrays.sigma, sigma, rtol=1e-8)
    np.testing.assert_allclose(arrays.slippage, 0.3 * np.array(sigma), rtol=1e-8)
    vol = candles.volume.tolist()
    adv = [vol[0]] + [sum(vol[max(0, t - 10):t]) / len(vol[max(0, t - 10):t]) for t in range(1, len(vol))]
    np.testing.assert_allclose(arrays.adv, adv, rtol=1e-9)


def test_sigma_and_adv_by_hand():
    candles = frame([[100, 100, 100, 100, 10], [110, 110, 110, 110, 20], [99, 99, 99, 99, 30], [108.9, 108.9, 108.9, 108.9, 40]])
    arrays = CostModel(impact=SqrtImpact(window=2)).prepare(candles)
    # returns ln 1.1, ln 0.9 before bar 3: sample std of two values = |a - b| / sqrt 2; bars 0-2 take it (warm-up 3)
    expected = abs(math.log(1.1) - math.log(0.9)) / math.sqrt(2)
    np.testing.assert_allclose(arrays.sigma, [expected] * 4, rtol=1e-12)
    # mean volume of the 2 bars before: bar 1 -> 10, bar 2 -> (10 + 20) / 2, bar 3 -> (20 + 30) / 2; bar 0 takes volume 0
    np.testing.assert_allclose(arrays.adv, [10, 10, 15, 25])
    assert arrays.warmup == 3


def test_adv_is_floored_above_zero():
    candles = frame([[100, 100, 100, 100, 0.0]] * 5)
    arrays = CostModel().prepare(candles)
    assert (arrays.adv > 0).all() and np.isfinite(arrays.sigma).all()


# -- no lookahead ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [3, 4, 50, 199])
def test_changing_bar_t_never_changes_costs_at_or_before_t(btc1h, t):
    model = CostModel(spread=HighLowSpread(window=10), slippage=VolatilitySlippage(window=10), impact=SqrtImpact(window=10))
    candles = btc1h.iloc[:200].copy()
    base = model.prepare(candles)
    assert t >= base.warmup
    changed = candles.copy()
    row = changed.iloc[t]
    changed.iloc[t] = [row.open, row.high * 1.05, row.low * 0.95, row.low * 0.96, row.volume * 7 + 1]
    after = model.prepare(changed)
    for name in ("half_spread", "slippage", "sigma", "adv"):
        np.testing.assert_array_equal(getattr(after, name)[: t + 1], getattr(base, name)[: t + 1], err_msg=name)
        if t + 1 < len(candles):  # the test can fail: bar t does reach bar t+1
            assert getattr(after, name)[t + 1] != getattr(base, name)[t + 1], name


# -- fees --------------------------------------------------------------------------------------------------------------
def test_fees_from_store(tmp_path):
    with Store(tmp_path / "s.duckdb") as store:
        store.write_fee("binance", 0.0002, 0.0004)
        store.write_fee("binance", 0.0001, 0.0003, symbol="ETH/USDT")
        fees = FeeSchedule.from_store(store, "binance", "BTC/USDT")
        assert (fees.maker, fees.taker, fees.source, fees.exchange) == (0.0002, 0.0004, "store", "binance")
        assert FeeSchedule.from_store(store, "binance", "ETH/USDT").taker == 0.0003  # the symbol's own row wins
        unknown = FeeSchedule.from_store(store, "okx", "BTC/USDT")
        assert (unknown.maker, unknown.taker, unknown.source) == (0.001, 0.001, "default")
        before = FeeSchedule.from_store(store, "binance", "BTC/USDT", at="1960-01-01")
        assert before.source == "default"
        # the store beats the built-in table; CostModel.for_market takes the same fees
        assert FeeSchedule.for_market("binance", "BTC/USDT:USDT", store).taker == 0.0004
        assert CostModel.for_market("binance", "BTC/USDT", store).prepare(load_sample("BTC/USDT", "1d")).taker_fee == 0.0004


def test_builtin_fee_table_and_default():
    perp = FeeSchedule.for_market("bybit", "BTC/USDT:USDT")
    assert (perp.maker, perp.taker, perp.source) == (0.0002, 0.00055, "builtin")
    assert FeeSchedule.for_market("bybit", "BTC/USDT").taker == 0.001
    assert FeeSchedule.for_market("binance", "XRP/USDT:USDT").taker == 0.0005
    assert FeeSchedule.for_market("kucoinfutures", "XBT/USDT:USDT").taker == 0.0006
    unknown = FeeSchedule.for_market("someexchange", "BTC/USDT")
    assert (unknown.taker, unknown.source) == (0.001, "default")
    assert FeeSchedule().source == "default" and FeeSchedule(0.0002, 0.0004).source == "given"
    assert CostModel().fees.taker == 0.001


# -- funding -----------------------------------------------------------------------------------------------------------
def test_funding_on_the_real_xrp_perpetual():
    candles = load_sample("XRP/USDT:USDT", "5m")
    rates = load_sample_funding("XRP/USDT:USDT")
    charged = CostModel(funding=Funding(rates)).prepare(candles, "5m").funding
    end = candles.index[-1] + pd.Timedelta("5min")
    inside = rates[(rates.index >= candles.index[0]) & (rates.index < end)]
    assert 0 < len(inside) < len(rates)  # some rates fall outside the candles and are ignored
    assert charged.sum() == pytest.approx(inside.sum(), rel=1e-12)
    assert (inside.index != inside.index.floor("s")).any()  # millisecond offsets such as 00:00:00.017
    expected = np.zeros(len(candles))
    for when, rate in inside.items():
        expected[candles.index.get_loc(when.floor("5min"))] += rate  # the bar whose [open, next open) holds it
    np.testing.assert_array_equal(charged, expected)
    assert np.count_nonzero(charged) == len(inside)


def test_funding_sums_several_rates_and_skips_gaps_rightly():
    candles = frame([[1, 1, 1, 1, 1]] * 3, freq="1h").iloc[[0, 2]]  # bars at 00:00 and 02:00 (01:00 missing)
    times = ["2023-12-31T23:59", "2024-01-01T00:00", "2024-01-01T01:30", "2024-01-01T02:59:59.999", "2024-01-01T03:00"]
    rates = pd.Series([0.1, 0.2, 0.4, 0.8, 1.6], index=pd.to_datetime(times, utc=True, format="ISO8601"))
    # [00:00, 02:00) holds 0.2 and 0.4 (the gap belongs to the bar before it); [02:00, 03:00) holds 0.8; 0.1 and 1.6 are outside
    np.testing.assert_allclose(Funding(rates).per_bar(candles.index, "1h"), [0.6, 0.8])


def test_for_market_takes_funding_from_the_store(store):
    rates = load_sample_funding("XRP/USDT:USDT")
    store.write_funding(rates, "binance", "XRP/USDT:USDT")
    model = CostModel.for_market("binance", "XRP/USDT:USDT", store)
    assert model.funding is not None and model.funding == Funding(rates)
    assert model.fees.source == "builtin" and model.fees.taker == 0.0005
    assert CostModel.for_market("binance", "BTC/USDT:USDT", store).funding is None  # a perp the store has no rates for
    assert CostModel.for_market("binance", "BTC/USDT", store, spread=HighLowSpread()).spread == HighLowSpread()


# -- fills -------------------------------------------------------------------------------------------------------------
def hand_arrays(**kw):
    values = dict(maker_fee=0.0002, taker_fee=0.0005, half_spread=[0.0005], slippage=[0.0002], sigma=[0.01], adv=[1000.0],
                  impact_k=0.5, participation_cap=0.1, funding=[0.0])
    return CostArrays(**{**values, **kw})


def test_impact_formula_by_hand():
    assert impact_fraction(0.5, 0.01, 40, 1000) == pytest.approx(0.001)  # 0.5 * 0.01 * sqrt(0.04) = 0.5 * 0.01 * 0.2
    np.testing.assert_allclose(impact_fraction(1.0, np.array([0.02, 0.01]), np.array([10.0, 90.0]), 1000.0), [0.002, 0.003])
    assert isinstance(impact_fraction(1, 0.1, 1, 4), float)


def test_taker_fill_by_hand():
    arrays = hand_arrays()
    buy = arrays.fill(100.0, +1, 40.0, 0)
    # impact = 0.5 * 0.01 * sqrt(40 / 1000) = 0.001; cost fraction = 0.0005 + 0.0002 + 0.001 = 0.0017
    assert buy.price == pytest.approx(100.17)
    assert buy.fee == pytest.approx(0.0005 * 100.17 * 40)  # 2.0034
    assert (buy.spread, buy.slippage, buy.impact) == pytest.approx((2.0, 0.8, 4.0))  # fractions * 100 * 40
    sell = arrays.fill(100.0, -1, 40.0, 0)
    assert sell.price == pytest.approx(99.83) and sell.fee == pytest.approx(1.9966)
    assert buy.total == pytest.approx(2.0034 + 6.8)
    assert (buy.price - 100.0) * 40 == pytest.approx(buy.spread + buy.slippage + buy.impact)


def test_maker_fill_by_hand():
    fill = hand_arrays().fill(100.0, +1, 40.0, 0, maker=True)
    assert (fill.price, fill.spread, fill.slippage, fill.impact) == (100.0, 0.0, 0.0, 0.0)
    assert fill.fee == pytest.approx(0.8)  # 0.0002 * 100 * 40


def test_participation_cap_is_reported(btc1h):
    arrays = CostModel().prepare(btc1h.iloc[:100])
    assert arrays.participation_cap == 0.1 and arrays.impact_k == 1.0
    assert arrays.max_quantity(50) == pytest.approx(0.1 * btc1h.volume.iloc[30:50].mean())
    assert CostModel(impact=SqrtImpact(participation_cap=None)).prepare(btc1h.iloc[:100]).participation_cap == math.inf
    no_impact = CostModel(impact=None).prepare(btc1h.iloc[:100])
    assert (no_impact.impact_k, no_impact.participation_cap) == (0.0, math.inf)
    assert (no_impact.sigma == 0).all() and (no_impact.adv == 1).all()
    fill = hand_arrays().fill(100.0, +1, 1e6, 0)  # 1000x the adv: the fill is not cut here, the engine cuts it
    assert fill.impact == pytest.approx(0.5 * 0.01 * math.sqrt(1000) * 100 * 1e6)


def test_cost_arrays_are_read_only_and_checked():
    arrays = hand_arrays()
    with pytest.raises(ValueError):
        arrays.half_spread[0] = 1.0
    with pytest.raises(ConfigError, match="adv"):
        hand_arrays(adv=[0.0])
    with pytest.raises(ConfigError, match="sigma"):
        hand_arrays(sigma=[math.nan])


# -- the model ---------------------------------------------------------------------------------------------------------
def test_resolve_costs():
    assert resolve_costs("default") == CostModel() == DEFAULT_COSTS
    assert resolve_costs(None) == CostModel.none()
    model = CostModel(spread=FixedSpread(5))
    assert resolve_costs(model) is model
    for bad in ("none", 0, False, {}):
        with pytest.raises(ConfigError, match=repr(bad)):
            resolve_costs(bad)


def test_none_prepares_all_zeros(btc1h):
    arrays = CostModel.none().prepare(btc1h.iloc[:500])
    assert (arrays.maker_fee, arrays.taker_fee, arrays.impact_k) == (0.0, 0.0, 0.0)
    for name in ("half_spread", "slippage", "sigma", "funding"):
        assert (getattr(arrays, name) == 0).all(), name
    fill = arrays.fill(100.0, 1, 5.0, 10)
    assert (fill.price, fill.total) == (100.0, 0.0)


def test_default_arrays(btc1h):
    arrays = CostModel().prepare(btc1h.iloc[:300])
    assert len(arrays) == 300
    for name in ("half_spread", "slippage", "sigma", "adv", "funding"):
        values = getattr(arrays, name)
        assert values.dtype == np.float64 and values.shape == (300,) and np.isfinite(values).all()
    assert (arrays.half_spread == 0.0001).all() and (arrays.slippage == 0.0001).all()  # 2 bps / 2, 1 bp
    assert (arrays.sigma > 0).all() and arrays.taker_fee == 0.001


def test_stressed_and_with():
    model = CostModel(spread=HighLowSpread(), slippage=VolatilitySlippage(multiple=0.2))
    stressed = model.stressed()
    assert stressed.spread.multiple == 10 and stressed.slippage.multiple == pytest.approx(1.0) and stressed.impact.k == 5
    assert stressed.fees == model.fees
    assert CostModel().stressed(spread=2, slippage=3, impact=0).spread == FixedSpread(4.0)
    assert CostModel.none().stressed().impact is None
    candles = load_sample("BTC/USDT", "1d")
    a, b = model.prepare(candles), stressed.prepare(candles)
    np.testing.assert_allclose(b.half_spread, 10 * a.half_spread)
    assert model.with_(impact=None).impact is None
    assert dataclasses.replace(model, fees=FeeSchedule(0, 0)).fees.taker == 0
    with pytest.raises(ConfigError, match="did you mean 'spread'"):
        model.with_(sprad=FixedSpread())


@pytest.mark.parametrize(("make", "text"), [
    (lambda: FixedSpread(-1), "bps=-1"),
    (lambda: FixedSlippage(math.nan), "bps=nan"),
    (lambda: FeeSchedule(taker=0.1), "taker=0.1"),
    (lambda: FeeSchedule(maker="0.001"), "maker='0.001'"),
    (lambda: HighLowSpread(window=0), "window=0"),
    (lambda: VolatilitySlippage(window=1), "window=1"),
    (lambda: SqrtImpact(participation_cap=1.5), "participation_cap=1.5"),
    (lambda: SqrtImpact(k=-1), "k=-1"),
    (lambda: CostModel(spread=None), "spread=None"),
    (lambda: CostModel(fees=0.001), "fees=0.001"),
    (lambda: CostModel().stressed(spread=-2), "spread=-2"),
    (lambda: Funding(pd.Series([0.1], index=pd.to_datetime(["2024-01-01"]))), "tz_localize"),
    (lambda: Funding([0.1]), "pandas Series"),
])
def test_validation_names_the_value(make, text):
    with pytest.raises(ConfigError, match=text.replace("(", r"\(")):
        make()


def test_prepare_validates_candles():
    bad = frame([[100, 99, 98, 100, 1]])  # high below the close
    with pytest.raises(DataError, match="high"):
        CostModel().prepare(bad)


def test_cost_breakdown_and_share():
    trades = pd.DataFrame({
        "net_pnl": [10.0, -5.0, 3.0], "entry_fee": [1.0, 1.0, 1.0], "exit_fee": [1.0, 1.0, 0.0],
        "spread_cost": [0.5, 0.5, 0.5], "slippage_cost": [0.2, 0.2, 0.2], "impact_cost": [0.3, 0.3, 0.3],
        "funding": [0.0, 1.0, -0.5],
    })
    got = cost_breakdown(trades)
    want = {"fees": 5.0, "spread": 1.5, "slippage": 0.6, "impact": 0.9, "funding": 0.5, "total": 8.5}
    assert got.to_dict() == pytest.approx(want)
    # before costs: 10 + 3 = 13, -5 + 4 = -1, 3 + 1.5 = 4.5 -> gross profit 17.5
    assert cost_share(trades) == pytest.approx(8.5 / 17.5)
    losers = trades.assign(net_pnl=[-10.0, -10.0, -10.0])
    assert cost_share(losers) == math.inf and cost_share(trades.iloc[:0]) == math.inf
    assert cost_breakdown(trades.iloc[:0])["total"] == 0.0
    with pytest.raises(DataError, match="impact_cost"):
        cost_breakdown(trades.drop(columns="impact_cost"))


def test_models_are_frozen_and_hashable():
    model = CostModel(funding=Funding(load_sample_funding("XRP/USDT:USDT")))
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.spread = FixedSpread(3)  # type: ignore[misc]
    assert hash(model) == hash(CostModel(funding=Funding(load_sample_funding("XRP/USDT:USDT"))))
    assert model != CostModel()

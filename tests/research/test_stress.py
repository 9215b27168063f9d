"""Stress scenarios: each transform does exactly what it says on a tiny hand-made frame; stress_test on real data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import qlab
from qlab.costs import CostModel, FixedSlippage, FixedSpread, SqrtImpact
from qlab.errors import ConfigError, NotFoundError
from qlab.execution import OrderSpec
from qlab.research import scenarios as sc
from qlab.research.stress import defer_signals, freeze, stress_test


def tiny(n: int = 10, freq: str = "1h") -> pd.DataFrame:
    """Bars whose close climbs 1 % a bar from 100; open = previous close, high/low 0.5 % beyond."""
    close = 100 * 1.01 ** np.arange(1, n + 1)
    open_ = np.concatenate(([100.0], close[:-1]))
    idx = pd.date_range("2024-01-01", periods=n, freq=freq, tz="UTC", name="timestamp")
    return pd.DataFrame({"open": open_, "high": np.maximum(open_, close) * 1.005, "low": np.minimum(open_, close) * 0.995,
                         "close": close, "volume": 10.0}, index=idx)


def case_of(frames: dict, baseline=None, costs: CostModel | None = None) -> sc.StressCase:
    n = len(next(iter(frames.values())))
    return sc.StressCase(frames, dict.fromkeys(frames, costs or CostModel()), "1h", np.zeros(n, dtype=bool), baseline=baseline)


def test_flash_crash_drops_within_one_bar_recovers_partly_and_keeps_later_returns():
    f = tiny()
    out = sc.flash_crash(case_of({"X": f}), drop=0.3, recovery=0.5, at=4).candles["X"]
    o = f["open"].iat[4]
    assert out["open"].iat[4] == pytest.approx(o) and out["high"].iat[4] == pytest.approx(o)
    assert out["low"].iat[4] == pytest.approx(o * 0.7) and out["close"].iat[4] == pytest.approx(o * 0.85)
    pd.testing.assert_frame_equal(out.iloc[:4], f.iloc[:4], rtol=1e-12)
    level = out["close"].iat[4] / f["close"].iat[4]
    pd.testing.assert_frame_equal(out.iloc[5:][["open", "high", "low", "close"]], f.iloc[5:][["open", "high", "low", "close"]] * level,
                                  rtol=1e-12)
    qlab.validate_candles(out, "1h")


def test_volatility_x3_triples_the_moves_around_the_mean_inside_its_window_only():
    f = tiny(12)
    f["close"] = f["close"] * np.array([1, 1.02, 0.99, 1.03, 1, 0.98, 1.01, 1, 1, 1.02, 1, 1])
    f["open"] = np.concatenate(([100.0], f["close"].to_numpy()[:-1]))
    f["high"], f["low"] = f[["open", "close"]].max(axis=1) * 1.004, f[["open", "close"]].min(axis=1) * 0.996
    out = sc.volatility_spike(case_of({"X": f}), factor=3.0, start=2, end=8).candles["X"]
    r, r3 = np.diff(np.log(f["close"].to_numpy())), np.diff(np.log(out["close"].to_numpy()))
    inside = slice(1, 7)  # returns of bars 2..7
    assert r3[inside].std() == pytest.approx(3 * r[inside].std(), rel=1e-9)
    assert r3[inside].mean() == pytest.approx(r[inside].mean(), abs=1e-12)
    np.testing.assert_allclose(r3[:1], r[:1], rtol=1e-9)
    np.testing.assert_allclose(r3[7:], r[7:], rtol=1e-9)
    up = np.log(f["high"] / f["close"].shift(1)).to_numpy()[2:8]
    mu = np.log(f["close"] / f["close"].shift(1)).to_numpy()[2:8].mean()
    np.testing.assert_allclose(np.log(out["high"] / out["close"].shift(1)).to_numpy()[2:8], mu + 3 * (up - mu), rtol=1e-9)
    qlab.validate_candles(out, "1h")


def test_gap_through_stops_moves_the_stop_bar_open_beyond_the_stop_fill():
    f = tiny(10)
    f.loc[f.index[5], "low"] = f["open"].iat[5] * 0.90  # the long's 5 % stop is hit inside bar 5
    entries = pd.DataFrame({"entry_long": False, "exit_long": False}, index=f.index)
    entries.iloc[1, 0] = True  # enters at bar 2's open
    orders = OrderSpec(stop_loss=0.05)
    base = qlab.backtest(f, entries, orders=orders, costs=None)
    stop = base.trades.iloc[0]
    assert stop.exit_reason == "stop_loss" and stop.exit_bar == 5
    assert stop.exit_price == pytest.approx(f["open"].iat[2] * 0.95)
    out = sc.gap_through_stops(case_of({"asset": f}, baseline=base), gap=0.05).candles["asset"]
    assert out["open"].iat[5] == pytest.approx(stop.exit_price * 0.95)
    assert out["low"].iat[5] == min(f["low"].iat[5], out["open"].iat[5])
    pd.testing.assert_frame_equal(out.drop(index=f.index[5]), f.drop(index=f.index[5]))
    again = qlab.backtest(out, entries, orders=orders, costs=None).trades.iloc[0]
    assert again.exit_reason == "stop_loss" and again.exit_price == pytest.approx(stop.exit_price * 0.95)


def test_liquidity_dryup_multiplies_spread_slippage_and_impact():
    model = CostModel(spread=FixedSpread(2.0), slippage=FixedSlippage(1.0), impact=SqrtImpact(k=0.5))
    out = sc.liquidity_dryup(case_of({"X": tiny()}, costs=model)).costs["X"]
    assert out.spread.bps == 20.0 and out.slippage.bps == 5.0 and out.impact.k == 2.5 and out.fees == model.fees
    prepared = out.prepare(tiny())
    assert prepared.half_spread == pytest.approx(np.full(10, 10e-4)) and prepared.slippage == pytest.approx(np.full(10, 5e-4))


def test_exchange_outage_freezes_prices_and_defers_decisions_to_the_first_bar_after():
    f = tiny(12)
    case = sc.exchange_outage(case_of({"X": f}), bars=3, at=4)
    assert case.outage.tolist() == [False] * 4 + [True] * 3 + [False] * 5
    frozen = freeze(f, case.outage)
    assert (frozen.iloc[4:7][["open", "high", "low", "close"]] == f["close"].iat[3]).all().all()
    pd.testing.assert_frame_equal(frozen.drop(index=f.index[4:7]), f.drop(index=f.index[4:7]))
    sig = pd.DataFrame(False, index=f.index, columns=["entry_long", "exit_long", "entry_short", "exit_short"])
    sig.iloc[3, 1] = True  # exit at bar 3's close: would act at bar 4 (in the outage)
    sig.iloc[5, 0] = True  # then an entry inside it: the last decision
    sig.iloc[9, 2] = True  # after the outage: untouched
    moved = defer_signals(sig, case.outage)
    assert moved.iloc[6].tolist() == [True, False, False, False]  # bar 6's signals act at bar 7, the first open after
    assert not moved.iloc[3:6].to_numpy().any() and moved.iloc[9, 2]
    sig.iloc[5, 0], sig.iloc[5, 1] = False, True  # only exits: the exit survives
    assert defer_signals(sig, case.outage).iloc[6].tolist() == [False, True, False, False]


def test_an_outage_on_real_data_has_no_fill_inside_it():
    candles = qlab.load_sample("BTC/USDT", "1h").iloc[-2000:]
    report = stress_test("ema_cross", candles, [("exchange_outage", {"bars": 48, "at": 1000})])
    fills = report.results["exchange_outage(bars=48, at=1000)"].orders
    assert not fills.bar.between(1000, 1047).any()
    assert report.results["baseline"].orders.bar.between(1000, 1047).any()


def test_funding_spike_charges_the_rate_at_each_funding_time_in_its_window():
    f = tiny(48)
    case = sc.funding_spike(case_of({"X": f}), rate=0.003, hours=24, at=2, side="long")
    arrays = CostModel().prepare(f, "1h")
    for hook in case.cost_hooks:
        arrays = hook("X", arrays, f)
    charged = np.flatnonzero(arrays.funding)
    assert f.index[charged].strftime("%d %H:%M").tolist() == ["01 08:00", "01 16:00", "02 00:00"]
    assert arrays.funding[charged] == pytest.approx([0.003] * 3)
    spot = sc.funding_spike(case_of({"BTC/USDT": f}), side="long", at=2)
    assert spot.cost_hooks == () and "spot" in spot.notes[-1]


def test_correlation_breakdown_on_real_btc_and_eth():
    btc, eth = (qlab.load_sample(s, "1h").loc["2022-03-01":"2022-06-01"] for s in ("BTC/USDT", "ETH/USDT"))
    idx = btc.index.intersection(eth.index)
    frames = {"BTC/USDT": btc.loc[idx], "ETH/USDT": eth.loc[idx]}

    def corr(fr: dict) -> float:
        a, b = (np.diff(np.log(fr[s]["close"].to_numpy())) for s in ("BTC/USDT", "ETH/USDT"))
        return float(np.corrcoef(a, b)[0, 1])

    before = corr(frames)
    assert before > 0.7
    assert corr(sc.correlation_breakdown(case_of(frames), mode="together").candles) == pytest.approx(1.0, abs=1e-9)
    assert corr(sc.correlation_breakdown(case_of(frames), mode="invert").candles) == pytest.approx(-before, abs=1e-9)
    shuffled = sc.correlation_breakdown(case_of(frames), mode="shuffle", seed=3).candles
    assert abs(corr(shuffled)) < 0.1
    start = frames["ETH/USDT"]["open"].iat[0]  # bar 0's move is measured from its open
    r0, r1 = (np.diff(np.log(np.r_[start, fr["ETH/USDT"]["close"].to_numpy()])) for fr in (frames, shuffled))
    np.testing.assert_allclose(np.sort(r1), np.sort(r0), rtol=1e-9, atol=1e-12)
    for fr in shuffled.values():
        qlab.validate_candles(fr, "1h")
    one = sc.correlation_breakdown(case_of({"BTC/USDT": btc}))
    assert one.candles["BTC/USDT"] is btc and "needs a portfolio" in one.notes[-1]


def test_scenarios_compose_register_and_reject_unknown_names():
    both = qlab.scenario("flash_crash", at=3) + qlab.scenario("liquidity_dryup")
    out = both.apply(case_of({"X": tiny()}))
    assert both.name == "flash_crash(at=3) + liquidity_dryup" and len(out.notes) == 2
    assert out.candles["X"]["low"].iat[3] == pytest.approx(tiny()["open"].iat[3] * 0.7) and out.costs["X"].spread.bps == 20.0

    @qlab.register_scenario("volume_gone")
    def volume_gone(case: sc.StressCase, share: float = 0.01) -> sc.StressCase:
        """Volume falls to `share` of itself."""
        return case.with_(candles={s: f.assign(volume=f.volume * share) for s, f in case.candles.items()})

    try:
        assert "volume_gone" in sc.scenario_table().index
        with pytest.raises(ConfigError, match="exists already"):
            qlab.register_scenario("volume_gone")(lambda case: case)
        with pytest.raises(ConfigError, match="did you mean 'share'"):
            qlab.scenario("volume_gone", shar=0.1)
    finally:
        sc.REGISTRY.pop("volume_gone")
    with pytest.raises(NotFoundError, match="did you mean 'flash_crash'"):
        qlab.scenario("flash_crsh")
    with pytest.raises(NotFoundError, match="did you mean 'worst_drawdowns'"):
        stress_test("ema_cross", tiny(), ["worst_drawdown"])
    with pytest.raises(ConfigError, match="must be a number in \\(0, 1\\)"):
        sc.flash_crash(case_of({"X": tiny()}), drop=1.5)


def _first_breach(equity: np.ndarray, limit: float) -> int | None:
    peak = equity[0]
    for k, v in enumerate(equity):
        peak = max(peak, v)
        if v / peak - 1 <= -limit:
            return k
    return None


def test_stress_test_report_baseline_history_and_limits():
    candles = qlab.load_sample("BTC/USDT", "1h").loc["2022-01-01":"2022-06-30"]
    report = stress_test("ema_cross", candles, ["volatility_x3", "worst_drawdowns", ("largest_moves", {"count": 2})],
                         limits={"max_drawdown": 0.2, "daily_loss": 0.05})
    t = report.table
    assert list(t.index) == ["baseline", "volatility_x3", "worst_drawdowns #1", "worst_drawdowns #2", "worst_drawdowns #3",
                             "largest_moves #1", "largest_moves #2"]
    plain = qlab.backtest(candles, "ema_cross").metrics()
    assert t.loc["baseline", "total_return"] == pytest.approx(plain["total_return"], rel=1e-12)
    assert t.loc["baseline", "n_trades"] == plain["n_trades"]
    eq = report.results["baseline"].equity
    first = _first_breach(eq.to_numpy(), 0.2)
    row = report.breaches[(report.breaches.scenario == "baseline") & (report.breaches.limit == "max_drawdown")]
    assert row["first"].iloc[0] == eq.index[first] and "max_drawdown" in t.loc["baseline", "limits"]
    close = candles["close"].to_numpy()
    depth = (close / np.maximum.accumulate(close) - 1).min()
    assert t.loc["worst_drawdowns #1", "market_return"] == pytest.approx(depth, rel=1e-12)
    biggest = int(np.argmax(np.abs(np.diff(np.log(close))))) + 1
    assert f"{candles.index[biggest]:%Y-%m-%d %H:%M}" in t.loc["largest_moves #1", "notes"]
    assert report.figure().data[0].name == "total return" and "Stress test" in report.to_html()
    with pytest.raises(ConfigError, match="did you mean 'daily_loss'"):
        stress_test("ema_cross", candles, ["volatility_x3"], limits={"daily_los": 0.1})

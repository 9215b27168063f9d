"""The fast numba engine against the plain reference loop, trade by trade, on the bundled real data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import qlab
from qlab.costs import CostModel, Funding, SqrtImpact
from qlab.engine.backtest import simulate
from qlab.engine.orders import OrderSpec, SizeSpec
from qlab.engine.reference import reference_backtest

NUMERIC = ["entry_price", "exit_price", "size", "entry_fee", "exit_fee", "spread_cost", "slippage_cost",
           "impact_cost", "funding", "gross_pnl", "net_pnl"]
EXACT = ["asset", "direction", "entry_bar", "exit_bar", "exit_reason", "is_open"]


def crossover_signals(candles: pd.DataFrame, fast: int = 10, slow: int = 30, both: bool = True) -> pd.DataFrame:
    f, s = candles.close.rolling(fast).mean(), candles.close.rolling(slow).mean()
    up = ((f > s) & (f.shift() <= s.shift())).fillna(False)
    down = ((f < s) & (f.shift() >= s.shift())).fillna(False)
    sig = pd.DataFrame({"entry_long": up, "exit_long": down})
    if both:
        sig["entry_short"], sig["exit_short"] = down, up
    return sig


def assert_same(fast, ref, initial_cash):
    ours, theirs = fast.trades.reset_index(drop=True), ref.trades.reset_index(drop=True)
    n = min(len(ours), len(theirs))
    for k in range(n):  # report the first trade that differs, with both rows
        a, b = ours.iloc[k], theirs.iloc[k]
        same = all(a[c] == b[c] for c in EXACT) and np.allclose(a[NUMERIC].astype(float), b[NUMERIC].astype(float),
                                                                 rtol=1e-9, atol=1e-9)
        assert same, f"trade {k} differs:\nfast\n{a}\nreference\n{b}"
    assert len(ours) == len(theirs), f"{len(ours)} trades vs {len(theirs)} in the reference"
    np.testing.assert_allclose(fast.equity.to_numpy(), ref.equity.to_numpy(), rtol=1e-9, atol=1e-7)
    fills, ref_fills = fast.orders, ref.orders
    assert len(fills) == len(ref_fills)
    for col in ("bar", "asset", "side", "kind", "reason", "maker"):
        assert fills[col].tolist() == ref_fills[col].tolist(), col
    for col in ("price", "size", "fee"):
        np.testing.assert_allclose(fills[col].to_numpy(float), ref_fills[col].to_numpy(float), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fast.asset_pnl.to_numpy(), ref.asset_pnl.to_numpy(), rtol=1e-9, atol=1e-7)


@pytest.fixture(scope="module")
def btc5m():
    return qlab.load_sample("BTC/USDT:USDT", "5m")


ORDER_CASES = {
    "market": OrderSpec(),
    "market_close_timing": OrderSpec(timing="close"),
    "bracket": OrderSpec(stop_loss=0.004, take_profit=0.008),
    "bracket_pessimistic": OrderSpec(stop_loss=0.004, take_profit=0.008, path="pessimistic"),
    "limit_gtc": OrderSpec(entry="limit", entry_offset=0.001),
    "limit_ioc": OrderSpec(entry="limit", entry_offset=0.0005, tif="ioc", stop_loss=0.005),
    "limit_3_bars": OrderSpec(entry="limit", entry_offset=0.001, tif=3, take_profit=0.006),
    "stop_entry": OrderSpec(entry="stop", entry_offset=0.001, stop_loss=0.003),
    "stop_limit": OrderSpec(entry="stop_limit", entry_offset=0.0008, limit_offset=0.0005, tif=5),
    "trailing": OrderSpec(trailing_stop=0.004),
    "trailing_atr_and_atr_stop": OrderSpec(trailing_atr=2.0, stop_loss_atr=3.0),
    "everything_close": OrderSpec(entry="limit", entry_offset=0.0005, tif=2, stop_loss=0.004, take_profit=0.01,
                                  trailing_stop=0.006, timing="close"),
}


@pytest.mark.parametrize("case", list(ORDER_CASES))
def test_order_types_match_the_reference(btc5m, case):
    sig = crossover_signals(btc5m)
    orders = ORDER_CASES[case]
    fast = simulate(btc5m, sig, orders=orders)
    ref = reference_backtest(btc5m, sig, orders=orders, costs=CostModel().prepare(btc5m))
    assert len(fast.trades) > 20
    assert_same(fast, ref, 10_000)


SIZE_CASES = {
    "units": SizeSpec("units", 0.3),
    "amount": SizeSpec("amount", 2_500.0),
    "percent_half": SizeSpec("percent", 0.5),
    "risk": SizeSpec("risk", 0.01),
    "vol_target": SizeSpec("vol_target", 0.4, vol_window=30),
    "leverage_20": SizeSpec("percent", 0.5, leverage=20.0),
    "leverage_100_liquidations": SizeSpec("percent", 1.0, leverage=100.0, maintenance_margin=0.004),
}


@pytest.mark.parametrize("case", list(SIZE_CASES))
def test_sizing_and_leverage_match_the_reference(btc5m, case):
    sig = crossover_signals(btc5m)
    orders = OrderSpec(stop_loss=0.006, take_profit=0.012)
    size = SIZE_CASES[case]
    costs = CostModel(impact=SqrtImpact(k=1.0, participation_cap=0.05))
    fast = simulate(btc5m, sig, orders=orders, size=size, costs=costs)
    ref = reference_backtest(btc5m, sig, orders=orders, size=size, costs=costs.prepare(btc5m))
    assert len(fast.trades) > 20
    if case == "leverage_100_liquidations":
        assert (fast.trades.exit_reason == "liquidation").any()
    assert_same(fast, ref, 10_000)


def test_funding_on_the_real_xrp_perpetual_matches_the_reference():
    candles = qlab.load_sample("XRP/USDT:USDT", "5m")
    costs = CostModel(funding=Funding(qlab.load_sample_funding("XRP/USDT:USDT")))
    sig = crossover_signals(candles, 20, 60)
    fast = simulate(candles, sig, costs=costs, size=SizeSpec("percent", 1.0, leverage=3.0))
    ref = reference_backtest(candles, sig, costs=costs.prepare(candles), size=SizeSpec("percent", 1.0, leverage=3.0))
    assert fast.trades.funding.abs().sum() > 0
    assert_same(fast, ref, 10_000)


def test_portfolio_of_three_spot_pairs_matches_the_reference():
    frames = {s: qlab.load_sample(s, "5m") for s in ("ETH/BTC", "LTC/BTC", "TRX/BTC")}
    common = frames["ETH/BTC"].index
    for f in frames.values():
        common = common.intersection(f.index)
    frames = {s: f.loc[common] for s, f in frames.items()}
    sigs = {s: crossover_signals(f, 12, 48) for s, f in frames.items()}
    size = SizeSpec("percent", 0.6)
    orders = OrderSpec(stop_loss=0.01, take_profit=0.02)
    fast = simulate(frames, sigs, orders=orders, size=size, cash=1.0)
    ref = reference_backtest(frames, sigs, orders=orders, size=size, cash=1.0,
                             costs={s: CostModel().prepare(f) for s, f in frames.items()})
    assert set(fast.trades.asset) == set(frames)
    assert_same(fast, ref, 1.0)

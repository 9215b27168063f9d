"""The fast engine against vectorbt (an independent implementation) and the accounting invariants, on real data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import qlab
from qlab.costs import CostModel, FeeSchedule, FixedSlippage, FixedSpread
from qlab.engine.orders import OrderSpec, SizeSpec
from qlab.errors import ConfigError, DataError

FEE_ONLY = CostModel(fees=FeeSchedule(0.001, 0.001), spread=FixedSpread(0.0), slippage=FixedSlippage(0.0), impact=None)


def sma_cross(candles: pd.DataFrame, fast: int = 20, slow: int = 50, both: bool = False) -> pd.DataFrame:
    f, s = candles.close.rolling(fast).mean(), candles.close.rolling(slow).mean()
    up = ((f > s) & (f.shift() <= s.shift())).fillna(False)
    down = ((f < s) & (f.shift() >= s.shift())).fillna(False)
    out = pd.DataFrame({"entry_long": up, "exit_long": down})
    if both:
        out["entry_short"], out["exit_short"] = down, up
    return out


@pytest.fixture(scope="module")
def btc1h():
    return qlab.load_sample("BTC/USDT", "1h").iloc[-20_000:]


def test_long_only_matches_vectorbt_trade_by_trade(btc1h):
    """vectorbt fills the signal of bar t at bar t+1's open when given shifted signals and price=open."""
    import vectorbt as vbt

    sig = sma_cross(btc1h)
    ours = qlab.backtest(btc1h, sig, costs=FEE_ONLY, size=SizeSpec("percent", 1.0), cash=10_000)
    pf = vbt.Portfolio.from_signals(
        btc1h.close, sig.entry_long.shift(fill_value=False), sig.exit_long.shift(fill_value=False),
        price=btc1h.open, fees=0.001, init_cash=10_000, size=np.inf, freq="1h",
    )
    theirs = pf.trades.records_readable
    closed = ours.trades[~ours.trades.is_open]
    assert len(closed) == int((theirs["Status"] == "Closed").sum()) > 50
    t = theirs[theirs["Status"] == "Closed"].reset_index(drop=True)
    np.testing.assert_array_equal(closed.entry_time.to_numpy(), pd.DatetimeIndex(t["Entry Timestamp"]).to_numpy())
    np.testing.assert_allclose(closed.entry_price.to_numpy(), t["Avg Entry Price"].to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(closed["size"].to_numpy(), t["Size"].to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(closed.net_pnl.to_numpy(), t["PnL"].to_numpy(), rtol=1e-7, atol=1e-6)
    np.testing.assert_allclose(ours.equity.to_numpy(), pf.value().to_numpy(), rtol=1e-9)


def test_accounting_invariants_with_default_costs_stops_and_shorts(btc1h):
    sig = sma_cross(btc1h, both=True)
    r = qlab.backtest(btc1h, sig, orders=OrderSpec(stop_loss=0.02, take_profit=0.04, trailing_stop=0.03))
    trades = r.trades
    assert set(trades.exit_reason) >= {"signal", "stop_loss", "take_profit"}
    assert (trades.exit_bar >= trades.entry_bar).all()
    costs = trades[["entry_fee", "exit_fee", "spread_cost", "slippage_cost", "impact_cost"]]
    assert (costs.to_numpy() >= 0).all() and costs.to_numpy().sum() > 0
    # all PnL, realised and open, adds up to the equity change
    assert trades.net_pnl.sum() == pytest.approx(r.equity.iloc[-1] - 10_000, rel=1e-9)
    assert r.asset_pnl.iloc[:, 0].to_numpy() == pytest.approx(r.equity.to_numpy() - 10_000, rel=1e-9, abs=1e-6)
    # the gross move minus every cost component is the net PnL of each closed trade
    closed = trades[~trades.is_open]
    before = closed.direction * closed["size"] * (closed.exit_price - closed.entry_price)
    np.testing.assert_allclose(closed.gross_pnl, before, rtol=1e-12)
    np.testing.assert_allclose(closed.net_pnl, closed.gross_pnl - closed.entry_fee - closed.exit_fee - closed.funding, rtol=1e-9)


def test_costs_are_on_by_default_and_off_only_when_asked(btc1h):
    sig = sma_cross(btc1h)
    default = qlab.backtest(btc1h, sig)
    none = qlab.backtest(btc1h, sig, costs=None)
    assert default.costs()["total"] > 0 and none.costs()["total"] == 0
    assert default.equity.iloc[-1] < none.equity.iloc[-1]
    with pytest.raises(ConfigError):
        qlab.backtest(btc1h, sig, costs="cheap")


def test_portfolio_shares_one_cash_balance():
    btc = qlab.load_sample("BTC/USDT", "1h")
    eth = qlab.load_sample("ETH/USDT", "1h")
    common = btc.index.intersection(eth.index)[-5000:]
    btc, eth = btc.loc[common], eth.loc[common]
    frames = {"BTC/USDT": btc, "ETH/USDT": eth}
    sigs = {k: sma_cross(v) for k, v in frames.items()}
    r = qlab.backtest(frames, sigs, size=SizeSpec("percent", 0.5))
    assert set(r.trades.asset) == {"BTC/USDT", "ETH/USDT"}
    assert r.cash.min() >= -1e-6
    per_asset = r.asset_metrics()
    assert per_asset["pnl"].sum() == pytest.approx(r.equity.iloc[-1] - 10_000, rel=1e-9)
    assert per_asset["n_trades"].sum() == (~r.trades.is_open).sum()
    report = r.portfolio_report(benchmark=btc.close)
    assert report is not None
    total = r.asset_pnl.sum(axis=1)
    np.testing.assert_allclose(total.to_numpy(), r.equity.to_numpy() - 10_000, rtol=1e-9, atol=1e-6)
    with pytest.raises(DataError, match="share the index"):
        qlab.backtest({"a": btc, "b": eth.iloc[1:]}, {"a": sigs["BTC/USDT"], "b": sigs["ETH/USDT"].iloc[1:]})


def test_bad_signals_are_named(btc1h):
    sig = sma_cross(btc1h)
    with pytest.raises(ConfigError, match="did you mean 'entry_long'"):
        qlab.backtest(btc1h, sig.rename(columns={"entry_long": "entry_lng"}))
    with pytest.raises(DataError, match="not aligned"):
        qlab.backtest(btc1h, sig.iloc[1:])
    with pytest.raises(DataError, match="boolean"):
        qlab.backtest(btc1h, sig.astype(float) * 2)
    with pytest.raises(ConfigError, match="needs a stop distance"):
        qlab.backtest(btc1h, sig, size=SizeSpec("risk", 0.01))

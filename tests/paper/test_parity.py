"""Parity: the paper trader with fill model "backtest" reproduces qlab.backtest trade by trade on real data."""

from __future__ import annotations

import numpy as np
import pytest

import qlab
from qlab.execution import OrderSpec, SizeSpec
from qlab.paper import paper_trade
from qlab.strategy.compile import strategy_signals
from tests.paper.conftest import assert_same_trades, sma_cross


@pytest.mark.parametrize("template", ["sma_cross", "rsi_macd_confirm", "volatility_breakout"])
def test_templates_match_the_backtest(btc_1h, template):
    """Same strategy spec, costs on: same trades (times, prices, sizes, fees) and final equity, < 1e-9 relative."""
    candles = btc_1h.iloc[-450:]
    bt = qlab.backtest(candles, template)
    paper = paper_trade(template, candles)
    assert_same_trades(bt.trades, paper.trades)
    assert list(bt.trades["entry_time"]) == list(paper.trades["entry_time"])
    assert paper.final_equity == pytest.approx(bt.equity.iloc[-1], rel=1e-9)
    np.testing.assert_allclose(paper.equity.to_numpy(), bt.equity.to_numpy(), rtol=1e-9)


def test_rolling_window_gives_the_vectorised_decision(btc_1h):
    """The signal row computed on a rolling window at each close equals the full-series row (recursive EMA/MACD included)."""
    strategy = qlab.templates["rsi_macd_confirm"]
    full = strategy_signals(strategy, btc_1h)
    from qlab.paper.market import MarketHistory
    from qlab.paper.signals import StrategySignals

    sig = StrategySignals(strategy)
    hist = MarketHistory("x", "1h", qlab.CostModel())
    mismatches = 0
    for k, (ts, row) in enumerate(btc_1h.iterrows()):
        hist.append(ts, *row[["open", "high", "low", "close", "volume"]])
        if k % 3 == 0 or k < sig.lookback - 5:  # every third bar past the point where the window starts rolling
            continue
        got = sig.at_close(hist)
        mismatches += sum(got[c] != bool(full[c].iloc[k]) for c in got)
    assert mismatches == 0


CASES = {
    "limit_long_short": (OrderSpec(entry="limit", entry_offset=0.002, tif=3), SizeSpec()),
    "stop_limit_gtc": (OrderSpec(entry="stop_limit", entry_offset=0.001, limit_offset=0.002), SizeSpec()),
    "stop_entry_sl_tp": (OrderSpec(entry="stop", entry_offset=0.001, stop_loss=0.01, take_profit=0.02, tif="ioc"), SizeSpec()),
    "trailing_pessimistic_leverage": (OrderSpec(trailing_stop=0.015, path="pessimistic"), SizeSpec(value=0.5, leverage=5)),
    "atr_stops_risk_sizing": (OrderSpec(stop_loss_atr=2.0, trailing_atr=3.0), SizeSpec(mode="risk", value=0.01)),
    "vol_target_close_timing": (OrderSpec(timing="close", take_profit=0.01), SizeSpec(mode="vol_target", value=0.5)),
    "liquidation_high_leverage": (OrderSpec(), SizeSpec(value=1.0, leverage=50, maintenance_margin=0.01)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("side", ["both", "short"])
def test_order_types_match_the_backtest(btc_1h, case, side):
    """Every entry type, protective exit, sizing mode and timing: paper = backtest (fees, spread, slippage, impact on)."""
    orders, size = CASES[case]
    fn = sma_cross(long=side == "both")
    candles = btc_1h.iloc[-300:]
    costs = qlab.CostModel()
    bt = qlab.backtest(candles, fn(candles), orders=orders, size=size, costs=costs)
    paper = paper_trade(fn, candles, orders=orders, size=size, costs=costs, warmup=22, lookback=60)
    assert_same_trades(bt.trades, paper.trades)
    assert paper.final_equity == pytest.approx(bt.equity.iloc[-1], rel=1e-9)
    if case == "liquidation_high_leverage":
        assert "liquidation" in set(bt.trades.exit_reason)
    if side == "short":
        assert (paper.trades.direction == -1).all()

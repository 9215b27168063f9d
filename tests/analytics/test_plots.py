"""Result figures: the right traces, markers and numbers in them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import qlab
from qlab.analytics.plots import (
    MAX_CHART_BARS,
    correlation_figure,
    cost_breakdown_figure,
    equity_figure,
    trades_figure,
)
from qlab.errors import ConfigError

TRADE_DEFAULTS = {"asset": "BTC/USDT", "direction": 1, "entry_bar": 0, "exit_bar": 1, "entry_price": 100.0, "exit_price": 100.0,
                  "size": 1.0, "entry_fee": 0.0, "exit_fee": 0.0, "spread_cost": 0.0, "slippage_cost": 0.0, "impact_cost": 0.0,
                  "funding": 0.0, "gross_pnl": 0.0, "net_pnl": 0.0, "exit_reason": "signal", "is_open": False}


def make_trades(index: pd.DatetimeIndex, *rows: dict) -> pd.DataFrame:
    frame = pd.DataFrame([{**TRADE_DEFAULTS, **r} for r in rows], columns=list(TRADE_DEFAULTS))
    frame.insert(4, "entry_time", index[frame.entry_bar.to_numpy()])
    frame.insert(5, "exit_time", index[frame.exit_bar.to_numpy()])
    return frame


@pytest.fixture(scope="module")
def candles():
    return qlab.load_sample("BTC/USDT", "1h").iloc[:500]


def book(index):
    # 3 long (2 winners, 1 open), 2 short (1 winner, 1 loser)
    return make_trades(
        index,
        {"entry_bar": 10, "exit_bar": 20, "net_pnl": 50.0, "exit_reason": "take_profit"},
        {"entry_bar": 30, "exit_bar": 40, "net_pnl": 5.0},
        {"entry_bar": 50, "exit_bar": 60, "direction": -1, "net_pnl": -20.0, "exit_reason": "stop_loss"},
        {"entry_bar": 70, "exit_bar": 80, "direction": -1, "net_pnl": 10.0},
        {"entry_bar": 490, "exit_bar": 499, "net_pnl": -3.0, "is_open": True, "exit_reason": "end"},
    )


def test_equity_figure_has_equity_over_drawdown_on_a_shared_axis():
    eq = pd.Series([100.0, 110, 99, 104.5, 120, 108], index=pd.date_range("2024", periods=6, freq="D", tz="UTC"))
    fig = equity_figure(eq)
    assert [t.name for t in fig.data] == ["equity", "drawdown %"]
    assert fig.data[0].yaxis == "y" and fig.data[1].yaxis == "y2"
    assert fig.layout.xaxis.matches == "x2" or fig.layout.xaxis2.matches == "x"
    # drawdown in percent: 99 / 110 - 1 = -10 %, 108 / 120 - 1 = -10 %
    np.testing.assert_allclose(fig.data[1].y, [0, 0, -10, 100 * (104.5 / 110 - 1), 0, -10], atol=1e-12)
    bench = pd.Series([50.0, 55, 60, 50, 45, 40], index=eq.index)
    with_bench = equity_figure(eq, bench, benchmark_name="BTC")
    assert [t.name for t in with_bench.data] == ["equity", "BTC", "drawdown %"]
    np.testing.assert_allclose(with_bench.data[1].y, [100, 110, 120, 100, 90, 80])  # rescaled to start at 100


def test_trades_figure_marks_entries_and_exits(candles):
    fig = trades_figure(candles, book(candles.index), "1h")
    names = [t.name for t in fig.data]
    assert names == ["price", "long entry", "short entry", "winning exit", "losing exit"]
    sizes = {t.name: len(t.x) for t in fig.data[1:]}
    assert sizes == {"long entry": 3, "short entry": 2, "winning exit": 3, "losing exit": 1}  # the open trade: no exit
    assert len(fig.data[0].x) == 500
    loser = fig.data[4]
    assert "stop_loss" in loser.text[0] and "-20.00" in loser.text[0]
    assert pd.Timestamp(loser.x[0]) == candles.index[60].tz_convert(None)  # plotly keeps UTC wall time
    only_longs = trades_figure(candles, book(candles.index).iloc[:2], "1h")
    assert [t.name for t in only_longs.data] == ["price", "long entry", "winning exit"]
    assert len(trades_figure(candles, book(candles.index).iloc[:0], "1h").data) == 1


def test_trades_figure_picks_the_asset_and_downsamples():
    candles = qlab.load_sample("BTC/USDT", "1h").iloc[:MAX_CHART_BARS + 1000]
    trades = book(candles.index)
    trades.loc[3, "asset"] = "ETH/USDT"
    with pytest.raises(ConfigError, match="asset="):
        trades_figure(candles, trades, "1h")
    with pytest.raises(ConfigError, match="did you mean 'BTC/USDT'"):
        trades_figure(candles, trades, "1h", asset="BTC/USDC")
    fig = trades_figure(candles, trades, "1h", asset="BTC/USDT")
    assert sum(len(t.x) for t in fig.data if t.name == "short entry") == 1
    assert "shown as 4h bars" in fig.layout.title.text
    assert len(fig.data[0].x) < MAX_CHART_BARS


def test_cost_breakdown_figure_walks_from_before_costs_to_net(candles):
    trades = make_trades(
        candles.index,
        {"net_pnl": 90.0, "entry_fee": 2.0, "exit_fee": 3.0, "spread_cost": 1.0, "slippage_cost": 0.5, "impact_cost": 1.5},
        {"net_pnl": -30.0, "funding": 4.0, "entry_fee": 1.0},
    )
    fig = cost_breakdown_figure(trades)
    assert len(fig.data) == 1 and fig.data[0].type == "waterfall"
    bar = fig.data[0]
    assert list(bar.x) == ["before costs", "fees", "spread", "slippage", "impact", "funding", "net PnL"]
    # net 60; costs: fees 6, spread 1, slippage 0.5, impact 1.5, funding 4 -> 13; before costs 73
    np.testing.assert_allclose(bar.y, [73, -6, -1, -0.5, -1.5, -4, 0])
    assert sum(bar.y[:-1]) == pytest.approx(60.0)
    assert list(bar.measure) == ["absolute"] + ["relative"] * 5 + ["total"]
    assert bar.text[-1] == "60.00"


def test_correlation_figure_is_a_labelled_heatmap():
    corr = pd.DataFrame([[1.0, 0.3, -0.2], [0.3, 1.0, np.nan], [-0.2, np.nan, 1.0]], index=list("abc"), columns=list("abc"))
    fig = correlation_figure(corr)
    assert len(fig.data) == 1 and fig.data[0].type == "heatmap"
    heat = fig.data[0]
    np.testing.assert_allclose(np.array(heat.z, dtype=float), corr.to_numpy())
    assert (heat.zmin, heat.zmax) == (-1, 1)
    assert list(heat.x) == list("abc") and heat.text[0][1] == "0.30" and heat.text[1][2] == ""

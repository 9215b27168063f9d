"""Shared helpers of the paper-trading tests: a cheap signal function and trade-table comparison."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import qlab

TRADE_COLS = ("direction", "entry_bar", "exit_bar", "entry_price", "exit_price", "size", "entry_fee", "exit_fee", "spread_cost",
              "slippage_cost", "impact_cost", "funding", "gross_pnl", "net_pnl")


def sma_cross(fast: int = 8, slow: int = 21, long: bool = True, short: bool = True):
    """A signal function candles -> four rule columns (plain numpy SMA crossings), usable on a window or on all bars."""
    def fn(candles: pd.DataFrame) -> pd.DataFrame:
        c = candles["close"].to_numpy()
        f = pd.Series(c).rolling(fast).mean().to_numpy()
        s = pd.Series(c).rolling(slow).mean().to_numpy()
        above = f > s
        prev = np.concatenate(([False], above[:-1]))
        valid = ~np.isnan(s) & ~np.isnan(np.concatenate(([np.nan], s[:-1])))
        up, down = above & ~prev & valid, ~above & prev & valid
        z = np.zeros(len(c), dtype=bool)
        return pd.DataFrame({"entry_long": up if long else z, "exit_long": down if long else z,
                             "entry_short": down if short else z, "exit_short": up if short else z}, index=candles.index)
    return fn


def assert_same_trades(expected: pd.DataFrame, got: pd.DataFrame, rel: float = 1e-9) -> None:
    """Same trades, same exit reasons, numbers within `rel` relative."""
    assert len(expected) == len(got), f"{len(expected)} backtest trades vs {len(got)} paper trades"
    assert len(expected) > 0
    assert list(expected["exit_reason"]) == list(got["exit_reason"])
    assert list(expected["is_open"]) == list(got["is_open"])
    for col in TRADE_COLS:
        x, y = expected[col].to_numpy(float), got[col].to_numpy(float)
        np.testing.assert_allclose(y, x, rtol=rel, atol=1e-9 * max(1.0, float(np.abs(x).max())), err_msg=col)


@pytest.fixture(scope="session")
def btc_1h() -> pd.DataFrame:
    """Real Binance BTC/USDT 1h candles (the last 700 bars of the bundled set)."""
    return qlab.load_sample("BTC/USDT", "1h").iloc[-700:]

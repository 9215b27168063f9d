"""Market history of one symbol as the paper trader has seen it: bars appended one by one, and the
per-bar inputs of the fill model (cost arrays, ATR, volatility) computed on the prefix seen so far.

Every input at bar t uses data up to t only (the engine's estimates use up to t-1), so computing them on
the prefix gives the values the backtester computes on the whole series; they are computed lazily (when
an order needs them) and cached per bar.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from qlab.costs import CostArrays, CostModel
from qlab.engine.backtest import _past_vol
from qlab.engine.orders import atr

COLUMNS = ("open", "high", "low", "close", "volume")


class MarketHistory:
    """Growing OHLCV arrays of one symbol plus lazily computed cost arrays, ATR and volatility."""

    def __init__(self, symbol: str, timeframe: str, costs: CostModel, atr_period: int = 14, vol_window: int = 20) -> None:
        self.symbol, self.timeframe, self.costs = symbol, timeframe, costs
        self.atr_period, self.vol_window = atr_period, vol_window
        self._cols: dict[str, list[float]] = {c: [] for c in COLUMNS}
        self._ts: list[pd.Timestamp] = []
        self._cost_cache: tuple[int, CostArrays] | None = None
        self._atr_cache: tuple[int, np.ndarray] | None = None
        self._vol_cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self._ts)

    def append(self, ts: pd.Timestamp, o: float, h: float, lo: float, c: float, v: float) -> int:
        """Add the next bar; returns its index."""
        for name, value in zip(COLUMNS, (o, h, lo, c, v), strict=True):
            self._cols[name].append(float(value))
        self._ts.append(ts)
        return len(self._ts) - 1

    def value(self, column: str, i: int) -> float:
        """One OHLCV value of bar i."""
        return self._cols[column][i]

    def time(self, i: int) -> pd.Timestamp:
        """The open time of bar i."""
        return self._ts[i]

    def frame(self, start: int = 0, end: int | None = None) -> pd.DataFrame:
        """Bars [start, end) as Candles."""
        end = len(self._ts) if end is None else end
        index = pd.DatetimeIndex(self._ts[start:end], name="timestamp")
        return pd.DataFrame({c: np.asarray(self._cols[c][start:end], dtype=np.float64) for c in COLUMNS}, index=index)

    def cost_arrays(self, i: int) -> CostArrays:
        """The CostModel prepared on bars 0..i (cached for the latest bar)."""
        if self._cost_cache is None or self._cost_cache[0] != i:
            self._cost_cache = (i, self.costs.prepare(self.frame(0, i + 1), self.timeframe))
        return self._cost_cache[1]

    def atr(self, i: int) -> float:
        """Wilder's ATR at bar i (NaN before it exists)."""
        if i < 0:
            return math.nan
        if self._atr_cache is None or self._atr_cache[0] < i or len(self._atr_cache[1]) <= i:
            n = len(self._ts)
            values = atr(np.asarray(self._cols["high"][:n]), np.asarray(self._cols["low"][:n]), np.asarray(self._cols["close"][:n]),
                         self.atr_period)
            self._atr_cache = (n - 1, values)
        return float(self._atr_cache[1][i])

    def vol(self, i: int) -> float:
        """Std of the `vol_window` log returns before bar i (vol_target sizing); NaN before it exists."""
        if self._vol_cache is None or self._vol_cache[0] != i:
            self._vol_cache = (i, _past_vol(np.asarray(self._cols["close"][: i + 1]), self.vol_window))
        return float(self._vol_cache[1][i])

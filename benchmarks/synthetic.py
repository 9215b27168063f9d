"""Seeded synthetic candles: a geometric random walk with valid OHLCV, as a qlab Candles frame."""

from __future__ import annotations

import numpy as np
import pandas as pd

from qlab.data.candles import timeframe_delta


def synthetic_candles(
    n: int,
    *,
    timeframe: str = "1m",
    start: str = "2021-01-01",
    seed: int = 42,
    price: float = 30_000.0,
    annual_vol: float = 0.6,
) -> pd.DataFrame:
    """`n` bars of a GBM-ish walk starting at `price`; same seed, same frame.

    open is the previous close, high/low reach past max/min(open, close) by a half-normal wick,
    volume is lognormal. The frame passes `validate_candles(df, timeframe)`.
    """
    if n < 1:
        raise ValueError(f"n={n} must be at least 1")
    step = timeframe_delta(timeframe)
    sigma = annual_vol * np.sqrt(step / pd.Timedelta(days=365))  # per-bar log-return volatility
    rng = np.random.default_rng(seed)
    log_returns = rng.normal(-0.5 * sigma**2, sigma, n)
    close = price * np.exp(np.cumsum(log_returns))
    open_ = np.empty(n)
    open_[0] = price
    open_[1:] = close[:-1]
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.5 * sigma, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.5 * sigma, n)))
    volume = rng.lognormal(mean=2.0, sigma=1.0, size=n)
    index = pd.date_range(pd.Timestamp(start, tz="UTC"), periods=n, freq=step, name="timestamp").as_unit("ns")
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=index)

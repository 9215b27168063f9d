"""What every notebook's `run(params)` shares: checking parameter names and cutting a bundled sample to dates."""

from __future__ import annotations

from typing import Any

import pandas as pd

from qlab.data.candles import Candles
from qlab.data.sample import load_sample, load_sample_funding
from qlab.errors import ConfigError, NotFoundError, did_you_mean


def merge_params(params: dict[str, Any] | None, defaults: dict[str, Any], what: str) -> dict[str, Any]:
    """The defaults updated with `params`; an unknown name raises ConfigError with "did you mean"."""
    merged = dict(defaults)
    for key, value in (params or {}).items():
        if key not in defaults:
            raise ConfigError(f"unknown {what} parameter {key!r}; use {', '.join(defaults)}." + did_you_mean(key, defaults))
        merged[key] = value
    return merged


def date_window(candles: Candles, start: Any, end: Any) -> Candles:
    """Bars with start <= timestamp < end (UTC; None = open); an empty window is an error, not an empty chart."""
    lo = pd.Timestamp(start, tz="UTC") if start else candles.index[0]
    hi = pd.Timestamp(end, tz="UTC") if end else candles.index[-1] + pd.Timedelta(1, "ns")
    out = candles[(candles.index >= lo) & (candles.index < hi)]
    if out.empty:
        raise NotFoundError(f"no bars between {start} and {end}; the data runs from {candles.index[0]} to {candles.index[-1]}")
    return out


def sample_window(symbol: str, timeframe: str, start: Any, end: Any, exchange: str | None = None) -> Candles:
    """A bundled sample series cut to [start, end)."""
    return date_window(load_sample(symbol, timeframe, exchange), start, end)


def sample_data(required: tuple[str, ...], symbol: str) -> dict[str, pd.Series] | None:
    """The extra series a strategy declares (`data: [funding_rate]`), from the bundled sample."""
    unknown = [d for d in required if d != "funding_rate"]
    if unknown:
        raise ConfigError(f"the bundled sample has no {unknown[0]!r} series; it has funding_rate for perpetuals")
    return {"funding_rate": load_sample_funding(symbol)} if required else None

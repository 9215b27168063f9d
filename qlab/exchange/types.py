"""Plain qlab types for what exchanges return (tickers, books, trades, orders, balances), free of ccxt dicts.

Times are UTC pandas Timestamps; amounts are in base currency, prices in quote currency. Every type keeps the
ccxt dict it came from in `raw` (excluded from repr and equality) for fields qlab does not model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

ORDER_SIDES = ("buy", "sell")
ORDER_TYPES = ("market", "limit", "stop_market", "stop_limit")
ORDER_STATUSES = ("open", "closed", "canceled", "rejected", "expired")




@dataclass(frozen=True)
class Market:
    """One tradable instrument: unified symbol, kind ('spot', 'swap', 'future'), limits and fees."""

    symbol: str
    base: str
    quote: str
    kind: str
    linear: bool | None
    price_step: float | None
    amount_step: float | None
    min_amount: float | None
    min_notional: float | None
    maker: float | None
    taker: float | None
    active: bool = True
    raw: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Bar:
    """One OHLCV candle; `closed` is False while the bar is still forming (live streams)."""

    symbol: str
    timeframe: str
    ts: pd.Timestamp
    open: float
    high: float
    low: float
    close: float
    volume: float
    closed: bool = True


@dataclass(frozen=True)
class Ticker:
    """Best bid/ask and last price at a time."""

    symbol: str
    ts: pd.Timestamp
    bid: float | None
    ask: float | None
    last: float | None
    volume_24h: float | None = None
    raw: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class OrderBook:
    """An L2 snapshot: bids best (highest) first, asks best (lowest) first, as (price, amount) tuples."""

    symbol: str
    ts: pd.Timestamp
    bids: tuple[tuple[float, float], ...]
    asks: tuple[tuple[float, float], ...]
    raw: Any = field(default=None, repr=False, compare=False)

    @property
    def mid(self) -> float | None:
        """Mid price, or None when a side is empty."""
        return (self.bids[0][0] + self.asks[0][0]) / 2 if self.bids and self.asks else None


@dataclass(frozen=True)
class Trade:
    """One public trade (a print on the tape), or one of the account's own fills when `order_id` is set."""

    symbol: str
    ts: pd.Timestamp
    side: str
    price: float
    amount: float
    id: str | None = None
    order_id: str | None = None
    fee: float | None = None
    fee_currency: str | None = None
    maker: bool | None = None
    raw: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Order:
    """An order as the exchange reports it."""

    id: str
    client_id: str | None
    symbol: str
    side: str
    type: str
    amount: float
    price: float | None
    stop_price: float | None
    status: str
    filled: float
    average: float | None
    ts: pd.Timestamp | None
    fee: float | None = None
    reduce_only: bool = False
    raw: Any = field(default=None, repr=False, compare=False)

    @property
    def remaining(self) -> float:
        """Amount not filled yet."""
        return max(self.amount - self.filled, 0.0)


@dataclass(frozen=True)
class Balance:
    """Per-currency balances: free, used (in orders / margin) and total."""

    ts: pd.Timestamp
    free: dict[str, float]
    used: dict[str, float]
    total: dict[str, float]
    raw: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class FundingRate:
    """One funding-rate print of a perpetual."""

    symbol: str
    ts: pd.Timestamp
    rate: float

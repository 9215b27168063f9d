"""Order books for the realistic fill model: a synthetic L2 book built from a candle (spread from the
CostModel, depth from `DepthModel`) when the feed has no real snapshots, and the walk of a taker order
through a book (real or synthetic)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from qlab.errors import ConfigError
from qlab.exchange.types import OrderBook


@dataclass(frozen=True)
class DepthModel:
    """Synthetic depth: `levels` price levels per side, `tick_bps` apart beyond the best price; the best level
    holds `top_share` of the average volume per bar (the 20 bars before), and each further level `growth` times the one before."""

    levels: int = 20
    tick_bps: float = 1.0
    top_share: float = 0.002
    growth: float = 1.15

    def __post_init__(self) -> None:
        if not (self.levels >= 1 and self.tick_bps > 0 and self.top_share > 0 and self.growth > 0):
            raise ConfigError(f"DepthModel: levels={self.levels!r} >= 1, tick_bps={self.tick_bps!r}, top_share={self.top_share!r} and "
                              f"growth={self.growth!r} > 0 are needed")


def synthetic_book(symbol: str, ts: pd.Timestamp, mid: float, half_spread: float, adv: float, depth: DepthModel) -> OrderBook:
    """A book around `mid`: best bid/ask at mid * (1 -/+ half_spread), then levels every tick_bps."""
    bids, asks = [], []
    size = depth.top_share * adv
    for k in range(depth.levels):
        off = half_spread + k * depth.tick_bps / 1e4
        bids.append((mid * (1.0 - off), size))
        asks.append((mid * (1.0 + off), size))
        size *= depth.growth
    return OrderBook(symbol, ts, tuple(bids), tuple(asks))


def walk_book(book: OrderBook, side: int, qty: float) -> tuple[float, float]:
    """(average price, filled quantity) of a taker order of `qty` (side +1 buys the asks, -1 sells the bids)."""
    levels = book.asks if side > 0 else book.bids
    left, cost = qty, 0.0
    for price, amount in levels:
        take = min(left, amount)
        cost += take * price
        left -= take
        if left <= 0.0:
            break
    got = qty - max(left, 0.0)
    return (cost / got if got > 0 else float("nan")), got

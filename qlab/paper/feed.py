"""Feeds: where the paper trader's market events come from. A feed is a small protocol, an async iterator
of `Bar` (closed candles) and optional `OrderBook` events, re-openable after the last bar it delivered.

  * `ReplayFeed`: candles from a DataFrame (or dict of them) or from the store, at any speed (None: as
    fast as possible; 60.0: one hour of market time per minute), with optional L2 snapshots interleaved.
  * `ReconnectingFeed`: wraps any feed; when it raises a NetworkError the feed is re-opened with
    exponential backoff (seeded jitter) and resumes after the last bar it delivered.
A live feed (planned) wraps qlab.exchange's watch_bars in the same `open(after=...)` shape.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol

import pandas as pd

from qlab.data.candles import infer_timeframe, timeframe_delta, validate_candles
from qlab.errors import ConfigError, NetworkError
from qlab.exchange.types import Bar, OrderBook


class Feed(Protocol):
    """Market events for the paper trader: bars of `symbols` in time order (and books), resumable."""

    symbols: tuple[str, ...]
    timeframe: str

    def open(self, after: pd.Timestamp | None = None) -> AsyncIterator[Bar | OrderBook]:
        """Events with a bar time strictly after `after` (None: from the start)."""
        ...


class ReplayFeed:
    """Replays candles (a frame, a dict {symbol: frame}, or the store's) bar by bar at a chosen speed."""

    def __init__(self, candles: pd.DataFrame | dict[str, pd.DataFrame] | None = None, *, symbol: str = "asset",
                 timeframe: str | None = None, store: Any = None, exchange: str | None = None, start: Any = None, end: Any = None,
                 speed: float | None = None, books: Iterable[OrderBook] = (), fail_after: int | None = None) -> None:
        if candles is None:
            if store is None or timeframe is None or symbol == "asset" or exchange is None:
                raise ConfigError("ReplayFeed needs candles, or store=..., exchange=..., symbol=... and timeframe=... to read them "
                                  "from the store")
            candles = store.candles(exchange, symbol, timeframe, start=start, end=end)
        frames = dict(candles) if isinstance(candles, dict) else {symbol: candles}
        for name, frame in frames.items():
            validate_candles(frame, where=f"candles of {name} for the replay feed")
        if speed is not None and not speed > 0:
            raise ConfigError(f"speed={speed!r} must be > 0 (market seconds per real second), or None for as fast as possible")
        self.frames = frames
        self.symbols = tuple(frames)
        first = next(iter(frames.values()))
        self.timeframe = timeframe or infer_timeframe(first.index)
        self.speed = speed
        self.books = sorted(books, key=lambda b: pd.Timestamp(b.ts))
        self.fail_after = fail_after  # tests: raise NetworkError after this many bars of each opening
        self.opened = 0

    async def open(self, after: pd.Timestamp | None = None) -> AsyncIterator[Bar | OrderBook]:
        """Bars (and books) after `after`, paced by `speed`."""
        self.opened += 1
        rows: list[tuple[pd.Timestamp, int, Any]] = []
        for k, (symbol, frame) in enumerate(self.frames.items()):
            part = frame if after is None else frame[frame.index > after]
            for ts, o, h, lo, c, v in zip(part.index, part["open"].to_numpy(), part["high"].to_numpy(), part["low"].to_numpy(),
                                          part["close"].to_numpy(), part["volume"].to_numpy(), strict=True):
                rows.append((ts, k, Bar(symbol, self.timeframe, ts, float(o), float(h), float(lo), float(c), float(v))))
        rows.sort(key=lambda r: (r[0], r[1]))
        books = [b for b in self.books if after is None or pd.Timestamp(b.ts) > after]
        step = timeframe_delta(self.timeframe).total_seconds() / self.speed if self.speed else 0.0
        nb = 0
        for sent, (ts, _, bar) in enumerate(rows):
            while nb < len(books) and pd.Timestamp(books[nb].ts) < ts + timeframe_delta(self.timeframe):
                yield books[nb]
                nb += 1
            if self.fail_after is not None and sent >= self.fail_after:
                raise NetworkError(f"replay feed dropped after {sent} bars (test fault)")
            if step:
                await asyncio.sleep(step)
            yield bar


class ReconnectingFeed:
    """Re-opens a feed after a NetworkError (exponential backoff with seeded jitter), resuming after the last bar."""

    def __init__(self, feed: Feed, *, retries: int = 10, base_delay: float = 0.5, max_delay: float = 30.0, seed: int = 0) -> None:
        self.feed, self.retries, self.base_delay, self.max_delay = feed, retries, base_delay, max_delay
        self.symbols, self.timeframe = feed.symbols, feed.timeframe
        self.reconnects = 0
        self._rng = random.Random(seed)

    async def open(self, after: pd.Timestamp | None = None) -> AsyncIterator[Bar | OrderBook]:
        """The wrapped feed's events; on a drop, the rest from where it stopped."""
        last = after
        failures = 0
        while True:
            try:
                async for event in self.feed.open(last):
                    if isinstance(event, Bar):
                        last, failures = pd.Timestamp(event.ts), 0
                    yield event
                return
            except NetworkError:
                failures += 1
                self.reconnects += 1
                if failures > self.retries:
                    raise
                delay = min(self.max_delay, self.base_delay * 2 ** (failures - 1))
                await asyncio.sleep(delay * (0.5 + self._rng.random() / 2))


class YieldingFeed:
    """Wraps a feed so a replay at full speed still lets the event loop serve clicks and redraws between bars (notebooks)."""

    def __init__(self, feed: Feed) -> None:
        self.feed, self.symbols, self.timeframe = feed, feed.symbols, feed.timeframe

    async def open(self, after: pd.Timestamp | None = None) -> AsyncIterator[Bar | OrderBook]:
        """The wrapped feed's items, with one pass of the event loop after each."""
        async for item in self.feed.open(after):
            yield item
            await asyncio.sleep(0)

"""LiveFeed: the paper trader's feed over live WebSocket candles (`qlab.exchange.stream.watch_bars` on a ccxt.pro
client: Bybit demo/testnet/live, or the loopback fake exchange's WebSocket), with REST backfill and reconnects.

    client = make_stream_client("bybit", "demo")          # or fake.point(ccxt.pro.bybit()) in tests
    feed = live_feed(client, ["BTC/USDT:USDT"], "1m")     # a ReconnectingFeed around a LiveFeed
    await PaperTrader("sma_cross", feed, broker, store=store, run_id="demo-1").run()

Each closed bar is delivered once, in time order; with several symbols a bar time is released when every symbol
has delivered it (the trader closes a bar when it holds all symbols). Bars the stream misses while disconnected
(`on_gap`) and the bars between a restart's last journaled bar and the stream's first are fetched by REST
(`fetch_ohlcv`) before newer ones. watch_bars reconnects dropped sockets with backoff by itself; when it gives up
(a NetworkError), `ReconnectingFeed` re-opens the whole feed after the last delivered bar.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pandas as pd

from qlab.data.candles import timeframe_delta
from qlab.errors import ConfigError
from qlab.exchange.stream import Backoff, watch_bars
from qlab.exchange.types import Bar, OrderBook
from qlab.paper.feed import ReconnectingFeed

log = logging.getLogger(__name__)
_END = object()


class LiveFeed:
    """Closed bars of `symbols` from a ccxt.pro client, merged by bar time, backfilled by REST after gaps and restarts."""

    def __init__(self, client: Any, symbols: Sequence[str], timeframe: str, *, rest: Any = None, backoff: Backoff | None = None,
                 close_grace: float | None = 2.0, backfill_limit: int = 1000) -> None:
        if isinstance(symbols, str):
            symbols = [symbols]
        if not symbols:
            raise ConfigError("LiveFeed needs at least one symbol, e.g. ['BTC/USDT:USDT']")
        self.client, self.symbols, self.timeframe = client, tuple(symbols), timeframe
        self.step = timeframe_delta(timeframe)
        self.rest = rest  # a qlab Exchange for backfill (None: a CcxtExchange over the same client)
        self.backoff, self.close_grace, self.backfill_limit = backoff, close_grace, backfill_limit
        self.backfilled = 0  # bars fetched by REST (gaps and restarts), for monitoring and tests

    def _rest(self) -> Any:
        if self.rest is None:
            from qlab.exchange.ccxt_exchange import CcxtExchange

            self.rest = CcxtExchange(self.client)
        return self.rest

    async def _fetch(self, symbol: str, start: pd.Timestamp, end: pd.Timestamp | None) -> list[Bar]:
        """Closed bars of `symbol` with start <= open time < end (end None: up to the last closed bar), by REST."""
        now = pd.Timestamp.now(tz="UTC")
        out: list[Bar] = []
        since = start
        while True:
            frame = await self._rest().fetch_ohlcv(symbol, self.timeframe, since=since, limit=self.backfill_limit)
            frame = frame[frame.index >= since]
            if end is not None:
                frame = frame[frame.index < end]
            frame = frame[frame.index + self.step <= now]  # the forming bar is not a bar yet
            out += [Bar(symbol, self.timeframe, ts, float(r.open), float(r.high), float(r.low), float(r.close), float(r.volume))
                    for ts, r in zip(frame.index, frame.itertuples(), strict=True)]
            if len(frame) < 2 or (end is not None and frame.index[-1] + self.step >= end):
                break
            since = frame.index[-1] + self.step
        self.backfilled += len(out)
        return out

    async def _pump(self, symbol: str, after: pd.Timestamp | None, queue: asyncio.Queue) -> None:
        """One symbol: REST bars after `after` (a restart), then the stream; gaps backfilled in order."""
        last = after
        if after is not None:
            for bar in await self._fetch(symbol, after + self.step, None):
                await queue.put(bar)
                last = bar.ts

        async def on_gap(start: pd.Timestamp, end: pd.Timestamp) -> None:
            log.warning("live feed %s %s: backfilling %s .. %s by REST", symbol, self.timeframe, start, end)
            for bar in await self._fetch(symbol, start, end):
                await queue.put(bar)

        try:
            async for bar in watch_bars(self.client, symbol, self.timeframe, reconnect=self.backoff, close_grace=self.close_grace,
                                        on_gap=on_gap):
                if last is not None and bar.ts <= last:
                    continue  # delivered already (by REST before the stream caught up)
                await queue.put(bar)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            await queue.put(exc)
            return
        await queue.put(_END)

    async def open(self, after: pd.Timestamp | None = None) -> AsyncIterator[Bar | OrderBook]:
        """Closed bars strictly after `after`, in time order; a time is released once every symbol delivered it."""
        queue: asyncio.Queue = asyncio.Queue()
        tasks = [asyncio.ensure_future(self._pump(s, after, queue)) for s in self.symbols]
        waiting: dict[pd.Timestamp, dict[str, Bar]] = {}
        released = after
        ended = 0
        try:
            while ended < len(tasks):
                item = await queue.get()
                if item is _END:
                    ended += 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                ts = pd.Timestamp(item.ts)
                if released is not None and ts <= released:
                    continue
                waiting.setdefault(ts, {})[item.symbol] = item
                while waiting:
                    first = min(waiting)
                    if len(waiting[first]) < len(self.symbols):
                        break
                    for symbol in self.symbols:
                        yield waiting[first][symbol]
                    released = first
                    del waiting[first]
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task


def live_feed(client: Any, symbols: Sequence[str], timeframe: str, *, retries: int = 10, **kwargs: Any) -> ReconnectingFeed:
    """A LiveFeed that is re-opened after the last delivered bar whenever the stream gives up (NetworkError)."""
    return ReconnectingFeed(LiveFeed(client, symbols, timeframe, **kwargs), retries=retries)

"""Record a live candle stream into the Store with no gap and no duplicate: WebSocket bars, REST backfill of what it missed.

    stream, rest = ccxt.pro.bybit(), ccxt.async_support.bybit()
    stats = await record_bars(stream, rest, store, "bybit", "BTC/USDT:USDT", "1m")      # runs until cancelled
    task = asyncio.create_task(record_bars(...)); ...; task.cancel()                 # as a background task

Each closed bar from `qlab.exchange.stream.watch_bars` is written in its own transaction. Before a bar is written,
every bar between the last stored one and it is fetched by REST (`sync_candles`) and stored first: bars missed while
the WebSocket was reconnecting (announced by the stream's on_gap, so the backfill runs at once) and, with resume=True,
the bars between the stored series' end and the first streamed bar. A bar already stored is not written again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from qlab.data.candles import timeframe_delta
from qlab.data.store import Store
from qlab.data.sync import sync_candles
from qlab.errors import ConfigError
from qlab.exchange.stream import Backoff, watch_bars
from qlab.exchange.types import Bar

log = logging.getLogger(__name__)


@dataclass
class RecordStats:
    """What a recording did: bars written from the stream and by REST backfill, reconnects, and the backfilled ranges.

    gaps and unfilled hold [start, end) open-time ranges; unfilled are the bars REST could not supply either."""

    streamed: int = 0
    backfilled: int = 0
    reconnects: int = 0
    last: pd.Timestamp | None = None
    gaps: list[tuple[pd.Timestamp, pd.Timestamp]] = field(default_factory=list)
    unfilled: list[tuple[pd.Timestamp, pd.Timestamp]] = field(default_factory=list)

    @property
    def written(self) -> int:
        """Bars this recording added to the store (streamed + backfilled)."""
        return self.streamed + self.backfilled


def _last_stored(store: Store, exchange_id: str, symbol: str, timeframe: str) -> pd.Timestamp | None:
    frame = store.sql("SELECT max(ts) AS ts FROM candles WHERE exchange = ? AND symbol = ? AND timeframe = ?",
                      [exchange_id, symbol, timeframe])
    value = frame["ts"].iloc[0] if len(frame) else None
    return None if value is None or pd.isna(value) else pd.Timestamp(value).tz_localize("UTC")


def _bar_frame(bar: Bar) -> pd.DataFrame:
    index = pd.DatetimeIndex([bar.ts], name="timestamp").as_unit("ns")
    return pd.DataFrame({"open": [bar.open], "high": [bar.high], "low": [bar.low], "close": [bar.close],
                         "volume": [bar.volume]}, index=index)


async def record_bars(
    stream_client: Any,
    rest_client: Any,
    store: Store,
    exchange_id: str,
    symbol: str,
    timeframe: str,
    *,
    stop_after: int | None = None,
    until: Any = None,
    resume: bool = True,
    reconnect: Backoff | None = None,
    close_grace: float | None = 2.0,
    retry: dict[str, Any] | None = None,
    on_bar: Callable[[Bar], Any] | None = None,
    stats: RecordStats | None = None,
) -> RecordStats:
    """Write `symbol`'s closed `timeframe` bars from `stream_client` (ccxt.pro) into `store` as they close, backfilling
    by REST through `rest_client` (ccxt async) whatever the stream missed, so the stored series has no gap.

    Stops after `stop_after` bars were written in all (streamed + backfilled), or once the bar opening at or after
    `until` is stored; with neither it runs until cancelled. resume=True also backfills from the stored series' last
    bar up to the first streamed one. `reconnect` and `close_grace` go to watch_bars, `retry` to sync_candles;
    `on_bar(bar)` sees each streamed bar after it is stored. Pass your own `stats` to read progress while it runs
    (or after cancelling). The caller owns and closes both clients.
    """
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"stop_after={stop_after} must be a positive number of bars, or None to run until cancelled")
    step = timeframe_delta(timeframe)
    stop_at = None if until is None else pd.Timestamp(until)
    if stop_at is not None:
        stop_at = stop_at.tz_localize("UTC") if stop_at.tzinfo is None else stop_at.tz_convert("UTC")
    stats = stats if stats is not None else RecordStats()
    last = _last_stored(store, exchange_id, symbol, timeframe) if resume else None
    where = f"{exchange_id} {symbol} {timeframe}"

    def done() -> bool:
        return (stop_after is not None and stats.written >= stop_after) or (
            stop_at is not None and last is not None and last >= stop_at)

    async def backfill(start: pd.Timestamp, end: pd.Timestamp) -> None:
        """Fetch and store the bars with open time in [start, end) by REST, then move `last` to end - step."""
        nonlocal last
        if last is not None:
            start = max(start, last + step)
        if start >= end:
            return
        stats.gaps.append((start, end))
        log.info("record_bars %s: backfilling %s to %s by REST", where, start, end)
        written = await sync_candles(rest_client, store, exchange_id, [symbol], timeframe, start, end, retry=retry)
        stats.backfilled += written.get(symbol, 0)
        have = store.sql("SELECT count(*) AS n FROM candles WHERE exchange = ? AND symbol = ? AND timeframe = ? "
                         "AND ts >= ? AND ts < ?", [exchange_id, symbol, timeframe, start.tz_localize(None),
                                                    end.tz_localize(None)])["n"].iloc[0]
        if int(have) < (end - start) // step:
            stats.unfilled.append((start, end))
            log.warning("record_bars %s: REST has only %d of the %d bars from %s to %s; the store keeps the hole",
                        where, int(have), (end - start) // step, start, end)
        last = max(last, end - step) if last is not None else end - step

    def count_reconnect(exc: BaseException, failures: int, delay: float) -> None:
        stats.reconnects += 1

    if done():
        return stats
    bars = watch_bars(stream_client, symbol, timeframe, reconnect=reconnect, close_grace=close_grace, on_gap=backfill,
                      on_reconnect=count_reconnect)
    try:
        async for bar in bars:
            if last is not None and bar.ts <= last:
                continue  # stored already (by a backfill or an earlier recording)
            if last is not None and bar.ts > last + step:
                await backfill(last + step, bar.ts)
            store.write_candles(_bar_frame(bar), exchange_id, symbol, timeframe)  # one transaction per bar
            stats.streamed += 1
            last = stats.last = bar.ts
            if on_bar is not None:
                on_bar(bar)
            if done():
                break
    finally:
        await bars.aclose()
        stats.last = last
    return stats

"""Record a live candle stream from redundant exchanges: stream from the first that works, switch back when it recovers.

    sources = [(ccxt.pro.bybit(), ccxt.async_support.bybit(), "bybit"),
               (ccxt.pro.binance(), ccxt.async_support.binance(), "binance")]       # priority order
    stats = await record_with_failover(sources, store, "bybit", "BTC/USDT:USDT", "1m")   # until cancelled
    store.candles("bybit", "BTC/USDT:USDT", "1m", with_source=True)                 # each bar names who served it

One series (`name`) is written, one closed bar at a time, each stamped with the exchange that served it. The stream
of the active source is read through `qlab.exchange.stream.watch_bars`; it fails over to the next source when it
fails past its reconnect backoff (a NetworkError after `reconnect.max_tries`) or goes stale (no new closed bar for
`stale_bars` bar intervals, or `stale_after` seconds). Bars missed meanwhile (and any hole the new stream starts
after) are backfilled by REST with `qlab.data.failover.Failover`, from the first source whose REST answers. While a
lower source streams, the higher ones are probed (a 1-bar REST request, at most every `probe_every` seconds); one
that answers with the newest stored bar is streamed from again ("switch back"). A bar already stored is never
written twice, so the series has neither a gap nor a duplicate across switches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from qlab.data.candles import timeframe_delta
from qlab.data.failover import FAILOVER_ERRORS, Failover, FailoverEvent
from qlab.data.live import RecordStats, _bar_frame, _last_stored
from qlab.data.store import Store
from qlab.errors import ConfigError, ExchangeDownError
from qlab.exchange.stream import Backoff, watch_bars
from qlab.exchange.types import Bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveSource:
    """One exchange of a failover recording: its ccxt.pro stream client, its ccxt async REST client and its id."""

    stream: Any
    rest: Any
    id: str


@dataclass
class FailoverRecordStats(RecordStats):
    """RecordStats plus bars written per source, the source streaming now, stream switches and the failover events."""

    by_source: dict[str, int] = field(default_factory=dict)
    active: str | None = None
    switches: int = 0
    events: list[FailoverEvent] = field(default_factory=list)


def _sources(sources: Sequence[Any]) -> list[LiveSource]:
    out = []
    for s in sources:
        if isinstance(s, LiveSource):
            out.append(s)
        elif isinstance(s, (tuple, list)) and len(s) == 3 and isinstance(s[2], str):
            out.append(LiveSource(*s))
        else:
            raise ConfigError(f"a live source is (stream client, rest client, exchange id) or a LiveSource, got {s!r}")
    if not out:
        raise ConfigError("record_with_failover needs at least one source, e.g. [(ccxt.pro.bybit(), ccxt.async_support.bybit(), 'bybit')]")
    ids = [s.id for s in out]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"source ids must be unique, got {ids}; name a second account of one exchange e.g. 'bybit-backup'")
    return out


async def _unwatch(client: Any, symbol: str, timeframe: str) -> None:
    """Unsubscribe a stream we stopped reading (best effort: not every exchange in ccxt can, and it may be gone)."""
    if not (getattr(client, "has", None) or {}).get("unWatchOHLCV"):
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.un_watch_ohlcv(symbol, timeframe), 5)


async def record_with_failover(
    sources: Sequence[Any],
    store: Store,
    name: str,
    symbol: str,
    timeframe: str,
    *,
    stop_after: int | None = None,
    until: Any = None,
    resume: bool = True,
    stale_bars: int = 3,
    stale_after: float | None = None,
    probe_every: float = 60.0,
    reconnect: Backoff | None = None,
    close_grace: float | None = 2.0,
    retry: dict[str, Any] | None = None,
    max_rounds: int | None = None,
    on_bar: Callable[[Bar, str], Any] | None = None,
    stats: FailoverRecordStats | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> FailoverRecordStats:
    """Write `symbol`'s closed `timeframe` bars into the series `name`, streaming from the first working source.

    `sources`: (stream client, rest client, exchange id) or LiveSource, in priority order; the caller closes the
    clients. Stops like `record_bars` (`stop_after` bars written, or the bar at `until` stored; else when cancelled).
    `reconnect` (default Backoff(max_tries=5)) must give up at some point for a failover to happen. A stream is stale
    after `stale_after` seconds without a new closed bar (default stale_bars intervals + close_grace). When every
    source failed in turn, it waits `probe_every` seconds and starts again from the first; after `max_rounds` such
    rounds (None: never) it raises ExchangeDownError. `on_bar(bar, source)` sees each streamed bar once stored.
    """
    live = _sources(sources)
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"stop_after={stop_after} must be a positive number of bars, or None to run until cancelled")
    if max_rounds is not None and max_rounds < 1:
        raise ConfigError(f"max_rounds={max_rounds} must be at least 1, or None to keep trying")
    reconnect = reconnect or Backoff(max_tries=5)
    if reconnect.max_tries is None:
        raise ConfigError("reconnect=Backoff(max_tries=None) retries a stream for ever, so it could never fail over; "
                          "give max_tries, e.g. Backoff(max_tries=5)")
    step = timeframe_delta(timeframe)
    if stale_after is None:
        stale_after = stale_bars * step.total_seconds() + (close_grace or 0.0)
    if stale_after <= 0:
        raise ConfigError(f"stale_after={stale_after} must be a positive number of seconds")
    failover = Failover([(s.id, s.rest) for s in live], stale_bars=stale_bars, probe_every=probe_every, clock=clock)
    stop_at = None if until is None else pd.Timestamp(until)
    if stop_at is not None:
        stop_at = stop_at.tz_localize("UTC") if stop_at.tzinfo is None else stop_at.tz_convert("UTC")
    stats = stats if stats is not None else FailoverRecordStats()
    stats.events = failover.events
    last = _last_stored(store, name, symbol, timeframe) if resume else None
    where = f"{name} {symbol} {timeframe}"

    def done() -> bool:
        return (stop_after is not None and stats.written >= stop_after) or (
            stop_at is not None and last is not None and last >= stop_at)

    def count(source: str, n: int) -> None:
        if n:
            stats.by_source[source] = stats.by_source.get(source, 0) + n

    def stored(start: pd.Timestamp, end: pd.Timestamp) -> int:
        frame = store.sql("SELECT count(*) AS n FROM candles WHERE exchange = ? AND symbol = ? AND timeframe = ? "
                          "AND ts >= ? AND ts < ?", [name, symbol, timeframe, start.tz_localize(None), end.tz_localize(None)])
        return int(frame["n"].iloc[0])

    async def backfill(start: pd.Timestamp, end: pd.Timestamp) -> None:
        """Bars with open time in [start, end) by REST, from the first source that serves them; `last` -> end - step."""
        nonlocal last
        stats.gaps.append((start, end))
        log.info("record_with_failover %s: backfilling %s to %s by REST", where, start, end)
        try:
            result = await failover.sync(store, name, [symbol], timeframe, start, end, now=end, retry=retry)
            for source, per in result.written.items():
                count(source, per.get(symbol, 0))
                stats.backfilled += per.get(symbol, 0)
        except ExchangeDownError as exc:  # no REST source answers: keep the hole (a later `qlab data sync` fills it)
            log.warning("record_with_failover %s: %s", where, exc)
        have = stored(start, end)
        if have < (end - start) // step:
            stats.unfilled.append((start, end))
            log.warning("record_with_failover %s: REST had only %d of the %d bars from %s to %s; the store keeps the hole",
                        where, have, (end - start) // step, start, end)
        last = max(last, end - step) if last is not None else end - step

    def count_reconnect(exc: BaseException, failures: int, delay: float) -> None:
        stats.reconnects += 1

    async def stream_from(index: int) -> int | None:
        """Stream from source `index` until done (None), it fails (index + 1) or a higher source answers (its index)."""
        nonlocal last
        source = live[index]
        bars = watch_bars(source.stream, symbol, timeframe, reconnect=reconnect, close_grace=close_grace,
                          on_reconnect=count_reconnect)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + stale_after
        try:
            while True:
                try:
                    bar = await asyncio.wait_for(anext(bars), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    failover.mark(source.id, "stale", f"stream: no new closed bar for {stale_after:g} s")
                    return index + 1
                except StopAsyncIteration:
                    failover.mark(source.id, "down", "stream: the client was closed")
                    return index + 1
                except FAILOVER_ERRORS as exc:
                    failover.mark(source.id, "down", f"stream: {exc}")
                    return index + 1
                if last is not None and bar.ts <= last:
                    continue  # stored already (by a backfill, another source or an earlier recording)
                if last is not None and bar.ts > last + step:
                    await backfill(last + step, bar.ts)
                store.write_candles(_bar_frame(bar), name, symbol, timeframe, source=source.id)  # one transaction a bar
                stats.streamed += 1
                count(source.id, 1)
                last = stats.last = bar.ts
                deadline = loop.time() + stale_after
                if on_bar is not None:
                    on_bar(bar, source.id)
                if done():
                    return None
                at_ms = int(last.value // 1_000_000)
                for higher in range(index):  # switch back as soon as a higher source answers with the newest bar
                    if await failover.usable(live[higher].id, symbol, timeframe, at_ms, retry):
                        return higher
        finally:
            await bars.aclose()
            stats.last = last

    index, rounds, previous = 0, 0, None
    while not done():
        source = live[index]
        stats.active = source.id
        if previous != source.id:
            failover.note(source.id, "stream", f"from {previous}" if previous else "start")
            stats.switches += previous is not None
            log.info("record_with_failover %s: streaming from %s", where, source.id)
        before = stats.written
        nxt = await stream_from(index)
        previous = source.id
        if nxt is None:
            break
        if stats.written > before:
            rounds = 0
        await _unwatch(source.stream, symbol, timeframe)
        if nxt < len(live):  # the next source down, or back up to a higher one that answered
            index = nxt
            continue
        rounds += 1  # the last source failed too
        if max_rounds is not None and rounds >= max_rounds:
            states = "; ".join(f"{s.name}: {s.status} ({s.reason})" for s in failover.states.values())
            raise ExchangeDownError(f"no source could stream {symbol} {timeframe} for {name}: {states}; the bars stored "
                                    "so far are kept, start the recorder again later")
        await sleep(probe_every)
        index = 0
    stats.last = last
    return stats

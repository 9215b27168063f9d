"""Historical candle sync: download closed bars from an exchange into the Store, incrementally and gap-filling.

    async with ...:  # any ccxt async client, e.g. qlab.exchange.ccxt_client.make_client("bybit", {}, "live")
        written = await sync_candles(client, store, "bybit", ["BTC/USDT:USDT"], "1h", "2024-01-01")
    written = sync("bybit", ["BTC/USDT:USDT"], "1h", "2024-01-01")   # builds and closes its own client

For each symbol the bars wanted are those with open time in [since, until) that are closed by now. The
stored series decides what is fetched: the part before its first bar, every hole inside it (gap_table) and
the part after its last bar. Each range is paged forward with windows of at most one page limit of bars;
every page is written by Store.write_candles in its own transaction, so an interrupted sync keeps whole
pages only and the next sync resumes after them. An empty window moves on to the next one (an empty body
that is not valid JSON is retried, never read as "no data"); a range ends when the windows reach its end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd

from qlab.data.candles import timeframe_delta
from qlab.data.quality import gap_table
from qlab.data.store import Store
from qlab.errors import ConfigError, NotFoundError
from qlab.exchange.retry import call_with_retry, fetch_ohlcv_checked, ohlcv_page_limit

OHLCV = ("open", "high", "low", "close", "volume")


def _ms(value: Any, what: str) -> int:
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}={value!r} is not a date or time; use e.g. '2024-01-01' or '2024-01-01T12:00Z'") from None
    if stamp is pd.NaT:
        raise ConfigError(f"{what}={value!r} is not a date or time; use e.g. '2024-01-01'")
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.value // 1_000_000)


def _frame(rows: list[list[float]]) -> pd.DataFrame:
    arr = np.asarray([r[:6] for r in rows], dtype=float)
    index = pd.DatetimeIndex(pd.to_datetime(arr[:, 0].astype(np.int64), unit="ms", utc=True), name="timestamp")
    return pd.DataFrame({c: arr[:, i + 1] for i, c in enumerate(OHLCV)}, index=index)


def _ranges(store: Store, exchange_id: str, symbol: str, timeframe: str, start: int, stop: int, step: int) -> list[tuple[int, int]]:
    """[a, b) ranges of open times (ms) still to fetch: before the stored series, its holes, after it."""
    try:
        stored = store.candles(exchange_id, symbol, timeframe, pd.Timestamp(start, unit="ms", tz="UTC"),
                               pd.Timestamp(stop, unit="ms", tz="UTC"))
    except NotFoundError:
        return [(start, stop)]
    first, last = (int(t.value // 1_000_000) for t in (stored.index[0], stored.index[-1]))
    out = [(start, first)] if first > start else []
    for gap in gap_table(stored.index, timeframe).itertuples():
        out.append((int(gap.start.value // 1_000_000), int(gap.end.value // 1_000_000) + step))
    if last + step < stop:
        out.append((last + step, stop))
    return out


async def _sync_symbol(client: Any, store: Store, exchange_id: str, symbol: str, timeframe: str, start: int,
                       stop: int, step: int, page_limit: int | None, retry: dict[str, Any], bar: Any) -> int:
    limit = page_limit or ohlcv_page_limit(client, symbol)
    written = 0
    for a, b in _ranges(store, exchange_id, symbol, timeframe, start, stop, step):
        cursor = a
        while cursor < b:
            window_end = min(b, cursor + limit * step)  # at most one page of bars, whichever end the exchange fills from
            page = await call_with_retry(fetch_ohlcv_checked, client, symbol, timeframe, cursor, limit,
                                         {"until": window_end - 1}, **retry)
            rows = sorted({int(r[0]): r for r in page if r and r[0] is not None
                           and cursor <= int(r[0]) < b and int(r[0]) % step == 0}.items())
            if not rows:  # an empty window (before a listing, an exchange outage): go on to the next one
                if page and max(int(r[0]) for r in page) >= cursor:
                    break  # bars only past the range: nothing more inside it
                cursor = window_end
                continue
            frame = _frame([r for _, r in rows])
            written += store.write_candles(frame, exchange_id, symbol, timeframe)  # one transaction per page
            if bar is not None:
                bar.update(len(frame))
            cursor = rows[-1][0] + step
    return written


async def sync_candles(
    client: Any,
    store: Store,
    exchange_id: str,
    symbols: Iterable[str],
    timeframe: str,
    since: Any,
    until: Any = None,
    *,
    page_limit: int | None = None,
    concurrency: int = 4,
    progress: bool = False,
    now: Any = None,
    retry: dict[str, Any] | None = None,
) -> dict[str, int]:
    """Download the closed `timeframe` bars of `symbols` with open time in [since, until) into `store`.

    `client` is a ccxt async exchange (the caller closes it); rows are stored under `exchange_id`.
    `until` defaults to now; bars not yet closed at `now` (default: the wall clock) are never stored.
    `retry` holds keyword arguments for `call_with_retry` (max_tries, base, cap, sleep, rng).
    Returns the rows written per symbol (0 when the store was already complete).
    """
    symbols = list(dict.fromkeys(symbols))
    if not symbols:
        raise ConfigError("no symbols to sync; pass e.g. ['BTC/USDT:USDT']")
    if concurrency < 1:
        raise ConfigError(f"concurrency={concurrency} must be at least 1")
    step = int(timeframe_delta(timeframe).value // 1_000_000)
    now_ms = _ms(now, "now") if now is not None else int(time.time() * 1000)
    start = -(-_ms(since, "since") // step) * step  # first grid bar at or after since
    stop = min(_ms(until, "until") if until is not None else now_ms, now_ms - step + 1)  # exclusive bound on open time
    if stop <= start:
        return dict.fromkeys(symbols, 0)
    retry = dict(retry or {})
    await call_with_retry(client.load_markets, **retry)
    missing = [s for s in symbols if s not in client.markets]
    if missing:
        from qlab.errors import BadSymbolError, did_you_mean

        raise BadSymbolError(f"{client.id} does not list {', '.join(missing)}.{did_you_mean(missing[0], client.markets)}")

    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = sum((b - a) // step for s in symbols for a, b in _ranges(store, exchange_id, s, timeframe, start, stop, step))
        bar = tqdm(total=total, unit="bar", desc=f"sync {exchange_id} {timeframe}")
    gate = asyncio.Semaphore(concurrency)

    async def one(symbol: str) -> int:
        async with gate:
            return await _sync_symbol(client, store, exchange_id, symbol, timeframe, start, stop, step, page_limit, retry, bar)

    tasks = [asyncio.ensure_future(one(s)) for s in symbols]
    try:
        counts = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    return dict(zip(symbols, counts, strict=True))


def sync(
    exchange_id: str,
    symbols: Iterable[str],
    timeframe: str,
    since: Any,
    until: Any = None,
    *,
    store: Store | None = None,
    client_factory: Callable[[], Any] | None = None,
    **kw: Any,
) -> dict[str, int]:
    """`sync_candles` from synchronous code: builds a public (key-less) live client unless `client_factory` is given,
    opens the default Store unless `store` is given, and closes what it opened."""

    async def main() -> dict[str, int]:
        if client_factory is not None:
            client = client_factory()
        else:
            from qlab.exchange.ccxt_client import make_client

            client = make_client(exchange_id, {}, "live")
        try:
            return await sync_candles(client, own_store or store, exchange_id, symbols, timeframe, since, until, **kw)
        finally:
            await client.close()

    own_store = Store() if store is None else None
    try:
        return asyncio.run(main())
    finally:
        if own_store is not None:
            own_store.close()

"""Historical candle sync: download closed bars from an exchange into the Store, incrementally and gap-filling.

    async with ...:  # any ccxt async client, e.g. qlab.exchange.ccxt_client.make_client("bybit", {}, "live")
        written = await sync_candles(client, store, "bybit", ["BTC/USDT:USDT"], "1h", "2024-01-01")
    written = sync("bybit", ["BTC/USDT:USDT"], "1h", "2024-01-01")   # builds and closes its own client
    written = sync("bybit", [...], "1h", "2024-01-01", rate=5, budget=Budget(calls_per_day=10_000), key_id="public")

For each symbol the bars wanted are those with open time in [since, until) that are closed by now. The
stored series decides what is fetched: the part before its first bar, every hole inside it (gap_table) and
the part after its last bar. Each range is paged forward with windows of at most one page limit of bars;
every page is written by Store.write_candles in its own transaction, so an interrupted sync keeps whole
pages only and the next sync resumes after them. An empty window moves on to the next one (an empty body
that is not valid JSON is retried, never read as "no data"); a range ends when the windows reach its end.

With a `UsageMeter` (qlab.exchange.ratelimit) every HTTP request waits for the key's rate limit and budget and
lands in the store's usage ledger; `sync()` and `run_sync()` always meter (ccxt's rate model unless `rate=`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from qlab.data.candles import timeframe_delta
from qlab.data.quality import gap_table
from qlab.data.store import Store
from qlab.errors import ConfigError, NotFoundError
from qlab.exchange.ratelimit import Budget, UsageMeter
from qlab.exchange.retry import call_with_retry, fetch_ohlcv_checked, ohlcv_page_limit

OHLCV = ("open", "high", "low", "close", "volume")
T = TypeVar("T")


@contextlib.asynccontextmanager
async def metered(client: Any, meter: UsageMeter | None) -> AsyncIterator[Any]:
    """`meter` attached to `client` for the block (then detached and flushed); nothing when None or already attached."""
    if meter is None or getattr(client, "_qlab_meter", None) is meter:
        yield client
        return
    async with meter.attached(client):
        yield client


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
    meter: UsageMeter | None = None,
) -> dict[str, int]:
    """Download the closed `timeframe` bars of `symbols` with open time in [since, until) into `store`.

    `client` is a ccxt async exchange (the caller closes it); rows are stored under `exchange_id`.
    `until` defaults to now; bars not yet closed at `now` (default: the wall clock) are never stored.
    `retry` holds keyword arguments for `call_with_retry` (max_tries, base, cap, sleep, rng).
    `meter` (a UsageMeter) throttles and records every request of the sync (see `metered`).
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
    async with metered(client, meter):
        return await _sync_candles(client, store, exchange_id, symbols, timeframe, start, stop, step, page_limit,
                                   concurrency, progress, dict(retry or {}))


async def _sync_candles(client: Any, store: Store, exchange_id: str, symbols: list[str], timeframe: str, start: int,
                        stop: int, step: int, page_limit: int | None, concurrency: int, progress: bool,
                        retry: dict[str, Any]) -> dict[str, int]:
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

    try:
        counts = await gather_or_cancel([one(s) for s in symbols])
    finally:
        if bar is not None:
            bar.close()
    return dict(zip(symbols, counts, strict=True))


async def gather_or_cancel(coros: list[Any]) -> list[Any]:
    """Run coroutines concurrently; when one fails (or we are cancelled) cancel the rest and wait for them, then raise."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def run_sync(
    exchange_id: str,
    work: Callable[[Any, Store, UsageMeter], Awaitable[T]],
    *,
    store: Store | None = None,
    client_factory: Callable[[], Any] | None = None,
    key_id: str = "public",
    rate: float | None = None,
    burst: float = 1.0,
    budget: Budget | None = None,
    over_budget: bool = False,
) -> T:
    """Run `await work(client, store, meter)` from synchronous code, metered and recorded in the usage ledger.

    Builds a public (key-less) live client unless `client_factory` is given, opens the default Store unless
    `store` is given, and closes what it opened. The meter (key `key_id`) limits the client to `rate` requests a
    second (default: ccxt's own rate model for the exchange), continues `budget` from the ledger, and writes one
    ledger row per HTTP request.
    """
    from qlab.data.usage import StoreUsageSink, resume_budget

    async def main(store: Store) -> T:
        if client_factory is not None:
            client = client_factory()
        else:
            from qlab.exchange.ccxt_client import make_client

            client = make_client(exchange_id, {}, "live")
        try:
            if budget is not None:
                resume_budget(store, key_id, budget)
            meter = UsageMeter.for_client(client, key_id, rate=rate, burst=burst, budget=budget,
                                          sink=StoreUsageSink(store), over_budget=over_budget)
            async with metered(client, meter):
                return await work(client, store, meter)
        finally:
            await client.close()

    own_store = Store() if store is None else None
    try:
        return asyncio.run(main(own_store or store))  # type: ignore[arg-type]
    finally:
        if own_store is not None:
            own_store.close()


def sync(
    exchange_id: str,
    symbols: Iterable[str],
    timeframe: str,
    since: Any,
    until: Any = None,
    *,
    store: Store | None = None,
    client_factory: Callable[[], Any] | None = None,
    key_id: str = "public",
    rate: float | None = None,
    budget: Budget | None = None,
    over_budget: bool = False,
    **kw: Any,
) -> dict[str, int]:
    """`sync_candles` from synchronous code through `run_sync`: its own client and store unless given, every request
    limited to `rate` a second (default ccxt's model), counted against `budget` and recorded under `key_id`."""
    symbols = list(symbols)

    async def work(client: Any, store: Store, meter: UsageMeter) -> dict[str, int]:
        return await sync_candles(client, store, exchange_id, symbols, timeframe, since, until, meter=meter, **kw)

    return run_sync(exchange_id, work, store=store, client_factory=client_factory, key_id=key_id, rate=rate,
                    budget=budget, over_budget=over_budget)

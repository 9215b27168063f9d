"""Live market data over ccxt.pro WebSockets as async iterators of qlab types, reconnecting with backoff.

    client = ccxt.pro.bybit()
    async for bar in watch_bars(client, "BTC/USDT:USDT", "1m", on_gap=backfill):
        ...                                   # each closed bar exactly once, oldest first

ccxt's watch_ohlcv hands back the forming bar again and again; `watch_bars` emits a bar once it is closed: when a
newer bar starts, or when the clock is `close_grace` seconds past the bar's end with no newer bar yet (quiet markets).
A dropped connection or any other ccxt NetworkError is retried with exponential backoff and jitter (`Backoff`); errors
that retrying cannot fix (auth, bad symbol, bad request) are raised at once as qlab errors. Bars the stream missed while
disconnected are never skipped silently: `on_gap(start, end)` is called (and awaited) with the open times [start, end)
of the missing bars before any newer bar is yielded, so a recorder can backfill them by REST first.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import ccxt
import pandas as pd

from qlab.errors import BadSymbolError, ConfigError, did_you_mean
from qlab.exchange.retry import call_with_retry, scrub, translate
from qlab.exchange.types import Bar, OrderBook, Trade

log = logging.getLogger(__name__)

# what a reconnect can fix: ccxt's network family (dropped socket, timeouts, 5xx, order-book checksum) and raw socket errors
RECONNECTABLE = (ccxt.NetworkError, ConnectionError, TimeoutError)
_IDLE = object()  # _results() yields this when its wait timed out without a message


@dataclass(frozen=True)
class Backoff:
    """How a stream reconnects: the wait before reconnect n (0-based) is min(cap, base * 2**n), less up to
    `jitter` (a fraction) of it at random; after `max_tries` failed tries in a row (None: never) the error is raised.
    With `reset_after_success` a message received resets the count, so one drop a day never exhausts the budget.
    `sleep` and `rng` are injectable for tests."""

    base: float = 0.5
    cap: float = 30.0
    max_tries: int | None = 10
    jitter: float = 0.5
    reset_after_success: bool = True
    sleep: Callable[[float], Awaitable[Any]] = field(default=asyncio.sleep, repr=False, compare=False)
    rng: random.Random | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (self.base > 0 and self.cap >= self.base):
            raise ConfigError(f"Backoff(base={self.base}, cap={self.cap}) needs 0 < base <= cap, e.g. base=0.5, cap=30")
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"Backoff(jitter={self.jitter}) must be a fraction in [0, 1], e.g. 0.5")
        if self.max_tries is not None and self.max_tries < 1:
            raise ConfigError(f"Backoff(max_tries={self.max_tries}) must be at least 1, or None to retry forever")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before reconnect number `attempt` (0 for the first)."""
        bound = min(self.cap, self.base * 2.0 ** min(attempt, 64))
        return bound * (1.0 - self.jitter * (self.rng or random).random())


def make_stream_client(exchange_id: str, mode: str = "live", credentials: dict[str, str] | None = None) -> Any:
    """A ccxt.pro client (WebSocket and REST) for `exchange_id` in `mode` ('live', 'testnet', 'demo'); public streams
    need no credentials. The caller must `await client.close()`."""
    import ccxt.pro

    from qlab.exchange.ccxt_client import CCXT_IDS, MODES, supported_modes

    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}.{did_you_mean(mode, MODES)}")
    modes = supported_modes(exchange_id)  # also names an unknown exchange, with 'did you mean'
    if mode not in modes:
        raise ConfigError(f"{exchange_id} has no {mode} environment in the installed ccxt; use one of {', '.join(modes)}")
    config: dict[str, Any] = {"enableRateLimit": True, **{k: v for k, v in (credentials or {}).items() if v}}
    client = getattr(ccxt.pro, CCXT_IDS[exchange_id])(config)
    if mode == "demo":
        client.enable_demo_trading(True)
    elif mode == "testnet":
        client.set_sandbox_mode(True)
    return client


def _require(client: Any, has_key: str, what: str) -> None:
    """ConfigError unless the ccxt client offers `has_key` (a ccxt.pro client of an exchange with that stream)."""
    has = getattr(client, "has", None) or {}
    if has.get(has_key):
        return
    name = getattr(client, "id", type(client).__name__)
    modules = [cls.__module__ for cls in type(client).__mro__]
    if any(m.startswith("ccxt.") for m in modules) and not any(m.startswith("ccxt.pro.") for m in modules):
        raise ConfigError(f"{what} needs a ccxt.pro client with WebSocket support; pass ccxt.pro.{name}() "
                          f"instead of {type(client).__module__}.{type(client).__name__}")
    raise ConfigError(f"{name} has no {has_key} in ccxt (has[{has_key!r}] is {has.get(has_key)!r}); "
                      f"use an exchange that streams it (e.g. bybit) or poll the REST endpoint instead")


async def _prepare(client: Any, symbol: str, backoff: Backoff, what: str) -> None:
    """Load markets (retrying network errors) and check the symbol, so a typo fails at once with 'did you mean'."""
    if not getattr(client, "markets", None):
        await call_with_retry(client.load_markets, max_tries=backoff.max_tries or 10, base=backoff.base, cap=backoff.cap,
                              sleep=backoff.sleep, rng=backoff.rng, retry_client=client, retry_what="load_markets")
    if symbol not in client.markets:
        raise BadSymbolError(f"{client.id} does not list {symbol!r} for {what}.{did_you_mean(symbol, client.markets)} "
                             "Use a ccxt unified symbol, e.g. BTC/USDT:USDT for a linear perpetual")


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


async def _results(client: Any, call: Callable[[], Awaitable[Any]], backoff: Backoff, what: str,
                   on_reconnect: Callable[[BaseException, int, float], Any] | None = None,
                   wait_s: Callable[[], float | None] = lambda: None,
                   peek: Callable[[], Any] | None = None) -> AsyncIterator[tuple[Any, bool]]:
    """(result, resumed) for each `await call()`, reconnecting on network errors; resumed is True for the first
    result after a reconnect. Yields (_IDLE, False) when `wait_s()` seconds pass without one (the call keeps running).
    Before each new call, `peek()` may hand back what already arrived unread (yielded as (result, False))."""
    failures = 0
    resumed = False
    task: asyncio.Future[Any] | None = None
    try:
        while True:
            if task is None:
                unread = peek() if peek is not None and not resumed else None
                if unread:
                    yield unread, False
                    continue
                task = asyncio.ensure_future(call())
            timeout = wait_s()
            done, _ = await asyncio.wait({task}, timeout=None if timeout is None else max(0.0, timeout))
            if not done:
                yield _IDLE, False
                continue
            finished, task = task, None
            try:
                result = finished.result()
            except RECONNECTABLE as exc:
                failures += 1
                if backoff.max_tries is not None and failures >= backoff.max_tries:
                    raise translate(exc, client, f"{what} after {failures} tries") from None
                delay = backoff.delay(failures - 1)
                log.warning("%s: %s; reconnecting in %.2f s (try %d)", what, scrub(f"{type(exc).__name__}: {exc}", client),
                            delay, failures + 1)
                if on_reconnect is not None:
                    await _maybe_await(on_reconnect(exc, failures, delay))
                await backoff.sleep(delay)
                resumed = True
                continue
            except ccxt.ExchangeClosedByUser:
                return  # the caller closed the client: the stream ends
            except ccxt.BaseError as exc:
                raise translate(exc, client, what) from None
            if backoff.reset_after_success:
                failures = 0
            yield result, resumed
            resumed = False
    finally:
        if task is not None and not task.done():
            task.cancel()


def _stamp(ms: int) -> pd.Timestamp:
    return pd.Timestamp(int(ms), unit="ms", tz="UTC")


async def watch_bars(
    client: Any,
    symbol: str,
    timeframe: str,
    *,
    closed_only: bool = True,
    reconnect: Backoff | None = None,
    close_grace: float | None = 2.0,
    on_gap: Callable[[pd.Timestamp, pd.Timestamp], Any] | None = None,
    on_reconnect: Callable[[BaseException, int, float], Any] | None = None,
    clock: Callable[[], int] | None = None,
) -> AsyncIterator[Bar]:
    """Stream `symbol`'s `timeframe` candles from a ccxt.pro client as qlab Bars, each closed bar once, oldest first.

    closed_only=False also yields the forming bar on every update (closed=False). A bar is closed when a newer bar
    starts, or `close_grace` seconds after its end by `clock` (ms, default the client's) with no newer bar (None: only
    a newer bar closes it). After a reconnect the forming bar's last values may be stale: it is dropped when the stream
    comes back on a newer bar, and `on_gap(start, end)` (sync or async, awaited) names the open times [start, end) of
    the bars the stream will not deliver; it is also called when the exchange itself skips bars.
    `on_reconnect(exc, failures, delay)` is called before each reconnect wait.
    """
    _require(client, "watchOHLCV", "watch_bars")
    if timeframe not in (getattr(client, "timeframes", None) or {}):
        raise ConfigError(f"{client.id} has no timeframe {timeframe!r} for watch_bars; use one of "
                          f"{', '.join(client.timeframes)}.{did_you_mean(timeframe, client.timeframes)}")
    backoff = reconnect or Backoff()
    await _prepare(client, symbol, backoff, f"watch_bars {symbol} {timeframe}")
    step = int(client.parse_timeframe(timeframe)) * 1000
    grace = None if close_grace is None else float(close_grace) * 1000
    now = clock or client.milliseconds
    pending: list[float] | None = None  # the forming bar [ts, o, h, l, c, v]
    stale = False  # reconnected since the forming bar's last update
    last: int | None = None  # open time of the last closed bar emitted

    def bar(row: list[float], closed: bool) -> Bar:
        return Bar(symbol, timeframe, _stamp(row[0]), *(float(x) for x in row[1:6]), closed=closed)

    def wait_s() -> float | None:
        if pending is None or grace is None or stale:  # a stale forming bar waits for the stream, not the clock
            return None
        return (pending[0] + step + grace - now()) / 1000

    newest: list[Any] = []  # the newest row handled

    def peek() -> list[list[float]]:
        # ccxt resolves a watch on the next message only: rows that came in while we were busy would wait for it
        # (for ever when the stream goes quiet), so read them from ccxt's own cache first
        try:
            cached = list(client.ohlcvs[symbol][timeframe])
        except (AttributeError, KeyError, TypeError):
            return []
        if not newest:
            return []
        return [r for r in cached if r and r[0] is not None and (r[0] > newest[0] or (r[0] == newest[0] and list(r) != newest))]

    results = _results(client, lambda: client.watch_ohlcv(symbol, timeframe), backoff, f"watch_bars {symbol} {timeframe}",
                       on_reconnect, wait_s, peek)
    async with contextlib.aclosing(results):  # closing the stream cancels its pending watch at once, not at GC
        async for result, resumed in results:
            if result is _IDLE:  # the clock closed the forming bar
                if pending is not None and not stale and grace is not None and now() >= pending[0] + step + grace:
                    yield bar(pending, True)
                    last, pending = int(pending[0]), None
                continue
            if resumed and pending is not None:
                stale = True
            rows = sorted((r for r in result if r and len(r) >= 6 and None not in r[:6]), key=lambda r: r[0])
            if rows and (not newest or rows[-1][0] >= newest[0]):
                newest[:] = list(rows[-1])
            for row in rows:
                ts = int(row[0])
                if (last is not None and ts <= last) or (pending is not None and ts < pending[0]):
                    continue  # a late update of a bar already closed
                if pending is not None and ts == pending[0]:
                    pending, stale = list(row), False
                else:  # a newer bar starts
                    gap_start = None if last is None else last + step
                    if pending is not None and stale:
                        gap_start = int(pending[0])  # its final values came while we were away
                    elif pending is not None:
                        yield bar(pending, True)
                        last = int(pending[0])
                        gap_start = last + step
                    pending, stale = list(row), False
                    if gap_start is not None and ts > gap_start:
                        log.warning("watch_bars %s %s: no bars from %s to %s on the stream", symbol, timeframe,
                                    _stamp(gap_start), _stamp(ts))
                        if on_gap is not None:
                            await _maybe_await(on_gap(_stamp(gap_start), _stamp(ts)))
                if grace is not None and now() >= pending[0] + step + grace:
                    yield bar(pending, True)  # closed by the clock already (a quiet market, or replayed history)
                    last, pending = int(pending[0]), None
                elif not closed_only:
                    yield bar(pending, False)


def _trade(symbol: str, t: dict[str, Any]) -> Trade:
    fee = t.get("fee") or {}
    return Trade(symbol, _stamp(t["timestamp"]), str(t.get("side")), float(t["price"]), float(t["amount"]),
                 id=None if t.get("id") is None else str(t["id"]), order_id=t.get("order"),
                 fee=fee.get("cost"), fee_currency=fee.get("currency"),
                 maker=None if t.get("takerOrMaker") is None else t["takerOrMaker"] == "maker", raw=t)


async def watch_trades(client: Any, symbol: str, *, reconnect: Backoff | None = None,
                       on_reconnect: Callable[[BaseException, int, float], Any] | None = None) -> AsyncIterator[Trade]:
    """Stream `symbol`'s public trades as qlab Trades, oldest first, each trade id once (trades printed while
    disconnected are not replayed by exchanges; use fetch_trades for those)."""
    _require(client, "watchTrades", "watch_trades")
    backoff = reconnect or Backoff()
    await _prepare(client, symbol, backoff, f"watch_trades {symbol}")
    seen: deque[str] = deque(maxlen=4096)  # recent ids: a resubscribe or newUpdates=False must not repeat a print
    seen_set: set[str] = set()
    results = _results(client, lambda: client.watch_trades(symbol), backoff, f"watch_trades {symbol}", on_reconnect)
    async with contextlib.aclosing(results):
        async for result, _ in results:
            for t in sorted(result, key=lambda t: t.get("timestamp") or 0):
                if t.get("timestamp") is None or t.get("price") is None or t.get("amount") is None:
                    continue
                tid = t.get("id")
                if tid is not None:
                    if tid in seen_set:
                        continue
                    if len(seen) == seen.maxlen:
                        seen_set.discard(seen[0])
                    seen.append(tid)
                    seen_set.add(tid)
                yield _trade(symbol, t)


def _levels(side: Any, limit: int | None) -> tuple[tuple[float, float], ...]:
    return tuple((float(level[0]), float(level[1])) for level in list(side)[:limit])


async def watch_order_book(client: Any, symbol: str, limit: int | None = None, *, reconnect: Backoff | None = None,
                           on_reconnect: Callable[[BaseException, int, float], Any] | None = None) -> AsyncIterator[OrderBook]:
    """Stream `symbol`'s L2 book as qlab OrderBook snapshots (best `limit` levels a side), one per update.

    `limit` is also the subscription depth asked of the exchange (Bybit linear: 1, 50, 200 or 500)."""
    _require(client, "watchOrderBook", "watch_order_book")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit={limit} must be a positive number of levels, or None for the exchange default")
    backoff = reconnect or Backoff()
    await _prepare(client, symbol, backoff, f"watch_order_book {symbol}")
    results = _results(client, lambda: client.watch_order_book(symbol, limit), backoff, f"watch_order_book {symbol}",
                       on_reconnect)
    async with contextlib.aclosing(results):
        async for book, _ in results:
            ts = book.get("timestamp") or client.milliseconds()
            yield OrderBook(symbol, _stamp(ts), _levels(book["bids"], limit), _levels(book["asks"], limit),
                            raw={"nonce": book.get("nonce"), "timestamp": book.get("timestamp"), "datetime": book.get("datetime")})

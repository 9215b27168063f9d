"""Redundant data sources: one instrument from several exchanges in order, failing over and back, with provenance.

    sources = Failover([("bybit", bybit), ("binance", binance), ("kucoin", kucoin)], stale_bars=3)
    result = await sources.sync(store, "bybit", ["BTC/USDT"], "1h", "2024-01-01")
    result.events        # when which source went down / stale / came back
    store.candles("bybit", "BTC/USDT", "1h", with_source=True)   # each bar names the exchange that served it

The series is stored under one name (the primary's, by default) and every bar records its `source`. The window is
synced in chunks of `chunk_bars` bars. For each chunk the sources are tried in order: a source that is down is
skipped until a probe (one 1-bar OHLCV request, at most every `probe_every` seconds) shows it answers with the bar
the sync needs next, and then it is used again ("switch back"). A source fails over when a call ends in a
NetworkError / ExchangeDownError after its retries, or a RateLimitError (BudgetExceededError included); it is stale
when, after it synced a chunk, the newest stored bar lags the chunk's last bar by `stale_bars` intervals or more.
The next source then fills exactly what is still missing (sync_candles reads the gaps from the store), page by page,
so the stored series has neither a gap nor a duplicate across a switch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from qlab.data.candles import timeframe_delta
from qlab.data.coverage import expected_window
from qlab.data.store import Store
from qlab.data.sync import sync_candles
from qlab.errors import BudgetExceededError, ConfigError, ExchangeDownError, NetworkError, NotFoundError, RateLimitError
from qlab.exchange.ccxt_exchange import CcxtExchange
from qlab.exchange.retry import call_with_retry, fetch_ohlcv_checked

FAILOVER_ERRORS = (NetworkError, RateLimitError)  # ExchangeDownError and BudgetExceededError are subclasses


class SourcedStore:
    """A Store view whose candle writes are stamped with `source` (the exchange that served them); all else delegates."""

    def __init__(self, store: Store, source: str) -> None:
        self._store, self.source = store, source
        self.written: dict[str, int] = {}  # rows per symbol, counted as pages land (a failing sync keeps its pages)

    def write_candles(self, candles: pd.DataFrame, exchange: str, symbol: str, timeframe: str, **kw: Any) -> int:
        """Store.write_candles with source=this view's source."""
        kw.setdefault("source", self.source)
        n = self._store.write_candles(candles, exchange, symbol, timeframe, **kw)
        self.written[symbol] = self.written.get(symbol, 0) + n
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@dataclass
class SourceState:
    """Health of one source as the failover sees it: 'ok', 'down' or 'stale', why, and when it was last probed."""

    name: str
    status: str = "ok"
    reason: str = ""
    last_probe: float | None = None


@dataclass(frozen=True)
class FailoverEvent:
    """One change: a source went 'down' or 'stale', 'recovered' (a probe passed), or the sync 'switched' to it."""

    at: pd.Timestamp
    source: str
    kind: str
    detail: str = ""


@dataclass
class FailoverResult:
    """Rows written per source and symbol, the events, and [start, end) chunks no source could complete."""

    written: dict[str, dict[str, int]] = field(default_factory=dict)
    events: list[FailoverEvent] = field(default_factory=list)
    incomplete: list[tuple[pd.Timestamp, pd.Timestamp]] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Rows written, all sources together."""
        return sum(n for per in self.written.values() for n in per.values())


def _client(source: Any) -> Any:
    """The ccxt async client of a CcxtExchange, or the client itself."""
    return source.client if isinstance(source, CcxtExchange) else source  # a ccxt client has a .client() method


class Failover:
    """Sources of one instrument in priority order (name, ccxt client or CcxtExchange); remembers which are down."""

    def __init__(self, sources: Sequence[tuple[str, Any]] | Mapping[str, Any], *, stale_bars: int = 3,
                 probe_every: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.sources = list(sources.items() if isinstance(sources, Mapping) else sources)
        if not self.sources:
            raise ConfigError("a Failover needs at least one source, e.g. [('bybit', client), ('binance', client)]")
        names = [n for n, _ in self.sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"source names must be unique, got {names}")
        if not isinstance(stale_bars, int) or stale_bars < 1:
            raise ConfigError(f"stale_bars={stale_bars!r} must be a whole number of bars >= 1")
        self.stale_bars, self.probe_every, self.clock = stale_bars, float(probe_every), clock
        self.states = {n: SourceState(n) for n in names}
        self.events: list[FailoverEvent] = []
        self.active: str | None = None

    def __repr__(self) -> str:
        return "Failover(" + ", ".join(f"{s.name}: {s.status}" for s in self.states.values()) + ")"

    def _event(self, source: str, kind: str, detail: str = "") -> None:
        self.events.append(FailoverEvent(pd.Timestamp.now("UTC"), source, kind, detail))

    def _mark(self, name: str, status: str, reason: str) -> None:
        state = self.states[name]
        state.status, state.reason, state.last_probe = status, reason, self.clock()
        self._event(name, status, reason)

    async def _probe(self, name: str, source: Any, symbol: str, timeframe: str, at_ms: int, retry: dict[str, Any]) -> bool:
        """True when the source answers a 1-bar OHLCV request with a bar opening at or after `at_ms`."""
        state = self.states[name]
        state.last_probe = self.clock()
        try:
            rows = await call_with_retry(fetch_ohlcv_checked, _client(source), symbol, timeframe, at_ms, 1, {},
                                         **{**retry, "max_tries": 1})
        except FAILOVER_ERRORS as exc:
            state.reason = str(exc)
            return False
        if not any(r and r[0] is not None and int(r[0]) >= at_ms for r in rows):
            state.reason = f"no bar at or after {pd.Timestamp(at_ms, unit='ms', tz='UTC')}"
            return False
        state.status, state.reason = "ok", ""
        self._event(name, "recovered", "probe answered")
        return True

    async def _usable(self, name: str, source: Any, symbol: str, timeframe: str, at_ms: int, retry: dict[str, Any]) -> bool:
        state = self.states[name]
        if state.status == "ok":
            return True
        if state.last_probe is not None and self.clock() - state.last_probe < self.probe_every:
            return False
        return await self._probe(name, source, symbol, timeframe, at_ms, retry)

    def mark(self, name: str, status: str, reason: str) -> None:
        """Record that source `name` went 'down' or 'stale' (why), so it is skipped until a probe passes."""
        self._mark(name, status, reason)

    def note(self, source: str, kind: str, detail: str = "") -> None:
        """Append an event of another kind (the live recorder's 'stream' switches) to `events`."""
        self._event(source, kind, detail)

    async def usable(self, name: str, symbol: str, timeframe: str, at_ms: int, retry: dict[str, Any] | None = None) -> bool:
        """True when source `name` is 'ok', or is due a probe (every `probe_every` s) and answers with a bar at or
        after `at_ms` (it is then 'ok' again, a 'recovered' event)."""
        source = dict(self.sources)[name]
        return await self._usable(name, source, symbol, timeframe, at_ms, dict(retry or {}))

    def _newest(self, store: Store, name: str, symbol: str, timeframe: str, lo: pd.Timestamp, hi: pd.Timestamp) -> pd.Timestamp | None:
        try:
            return store.candles(name, symbol, timeframe, lo, hi).index[-1]
        except NotFoundError:
            return None

    async def sync(self, store: Store, name: str | None, symbols: Sequence[str], timeframe: str, since: Any,
                   until: Any = None, *, now: Any = None, chunk_bars: int | None = None, page_limit: int | None = None,
                   retry: dict[str, Any] | None = None) -> FailoverResult:
        """Sync [since, until) of `symbols` into the series stored as `name` (default: the first source's name).

        Raises ExchangeDownError naming every source when all of them failed on the same chunk (the pages stored
        so far stay; a rerun resumes), or BudgetExceededError when each of them failed on a spent budget (one budget
        shared by every source, as `qlab data sync --watchlist` has). Bars that no source has are left missing and
        listed in `incomplete`.
        """
        symbols = list(dict.fromkeys(symbols))
        if not symbols:
            raise ConfigError("no symbols to sync; pass e.g. ['BTC/USDT']")
        name = name or self.sources[0][0]
        step = timeframe_delta(timeframe)
        now_ts = pd.Timestamp.now("UTC") if now is None else pd.Timestamp(now)
        now_ts = now_ts.tz_localize("UTC") if now_ts.tzinfo is None else now_ts
        first, stop = expected_window(timeframe, since, until, now_ts)
        chunk = step * (chunk_bars or max(1, -((first - stop) // step)))
        retry = dict(retry or {})
        result = FailoverResult()
        first_event = len(self.events)
        cursor = first
        while cursor < stop:
            end = min(stop, cursor + chunk)
            last_expected = cursor + ((end - cursor - pd.Timedelta(1, "ns")) // step) * step
            errors: list[str] = []
            budget_only = True  # every failure on this chunk was a spent budget (then that is the error raised)
            done = stale = False
            for source_name, source in self.sources:
                at_ms = int(cursor.value // 1_000_000)
                if not await self._usable(source_name, source, symbols[0], timeframe, at_ms, retry):
                    continue
                if self.active != source_name:
                    self._event(source_name, "switched", f"from {self.active}" if self.active else "start")
                    self.active = source_name
                view = SourcedStore(store, source_name)
                try:
                    # ceil: expected_window's stop is 1 ns past the last open time, which sync_candles' ms would drop
                    await sync_candles(_client(source), view, name, symbols, timeframe, cursor, end.ceil("ms"), now=now_ts,
                                       page_limit=page_limit, retry=retry, meter=getattr(source, "meter", None))
                except FAILOVER_ERRORS as exc:
                    errors.append(f"{source_name}: {exc}")
                    budget_only = budget_only and isinstance(exc, BudgetExceededError)
                    self._mark(source_name, "down", str(exc))
                    continue
                finally:
                    per = result.written.setdefault(source_name, {})
                    for symbol, n in view.written.items():
                        per[symbol] = per.get(symbol, 0) + n
                lags = [(last_expected - newest) // step if newest is not None else (last_expected - cursor) // step + 1
                        for newest in (self._newest(store, name, s, timeframe, cursor, end) for s in symbols)]
                if max(lags) >= self.stale_bars:
                    self._mark(source_name, "stale", f"newest bar {max(lags)} interval(s) behind {last_expected}")
                    stale = True
                    continue
                done = True
                break
            if not done and not stale:
                reasons = errors + [f"{s.name}: {s.status} ({s.reason})" for s in self.states.values()
                                    if s.status != "ok" and not any(e.startswith(s.name + ":") for e in errors)]
                result.events = self.events[first_event:]
                if errors and budget_only:
                    raise BudgetExceededError("; ".join(errors) + " (the pages stored so far are kept)")
                raise ExchangeDownError(f"every source failed for {name} {', '.join(symbols)} {timeframe} from {cursor}: "
                                        + "; ".join(reasons) + "; rerun later (stored pages are kept)")
            if not done:
                result.incomplete.append((cursor, end))
            cursor = end
        result.events = self.events[first_event:]
        return result


async def sync_watchlist(watchlist: Any, store: Store, *, client_factory: Callable[[str], Any] | None = None,
                         now: Any = None, retry: dict[str, Any] | None = None, probe_every: float = 60.0,
                         page_limit: int | None = None, meter_factory: Callable[[Any], Any] | None = None,
                         ) -> dict[tuple[str, str], FailoverResult]:
    """Fill what a watch list (qlab.data.coverage) is missing: every entry's timeframes synced with failover across
    its exchange and fallbacks. `client_factory(exchange_id)` makes a ccxt async client (default: a public live one);
    `meter_factory(client)` may return a UsageMeter (qlab.exchange.ratelimit) attached to that client for the whole
    run, so every request, probes included, is rate limited, counted against its budget and written to the ledger.
    The clients are closed here (their meters detached and flushed first). Returns the FailoverResult per (entry
    exchange, timeframe)."""
    if client_factory is None:
        from qlab.exchange.ccxt_client import make_client

        def client_factory(exchange_id: str) -> Any:
            return make_client(exchange_id, {}, "live")

    clients: dict[str, Any] = {}
    meters: list[tuple[Any, Any]] = []
    results: dict[tuple[str, str], FailoverResult] = {}
    try:
        for name in watchlist.exchanges():
            clients[name] = client_factory(name)
            meter = meter_factory(clients[name]) if meter_factory is not None else None
            if meter is not None:
                meter.attach(clients[name])
                meters.append((meter, clients[name]))
        for entry in watchlist.entries:
            failover = Failover([(n, clients[n]) for n in entry.sources], stale_bars=entry.stale_bars, probe_every=probe_every)
            for timeframe in entry.timeframes:
                result = await failover.sync(store, entry.exchange, entry.symbols, timeframe, entry.since, entry.until,
                                             now=now, retry=retry, page_limit=page_limit)
                previous = results.get((entry.exchange, timeframe))
                if previous is not None:  # two entries for the same exchange and timeframe: add them up
                    for source, per in result.written.items():
                        for symbol, n in per.items():
                            previous.written.setdefault(source, {})[symbol] = previous.written.get(source, {}).get(symbol, 0) + n
                    previous.events.extend(result.events)
                    previous.incomplete.extend(result.incomplete)
                else:
                    results[(entry.exchange, timeframe)] = result
    finally:
        for meter, client in meters:
            meter.detach(client)
            meter.flush()
        for client in clients.values():
            await client.close()
    return results

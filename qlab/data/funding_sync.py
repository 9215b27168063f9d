"""Funding-rate history and fee schedules from an exchange into the Store, incrementally.

    written = await sync_funding(client, store, "bybit", ["BTC/USDT:USDT"], "2024-01-01")
    table = await sync_fees(client, store, "bybit", ["BTC/USDT:USDT"], overrides={"vip2": (0.00016, 0.00044)})
    run_sync("bybit", lambda client, store, meter: sync_funding(client, store, "bybit", ["BTC/USDT:USDT"], "2024-01-01"))

Funding: for each perpetual the rates with funding time in [since, until) that the store lacks (before its first
stored rate, after its last) are paged forward through ccxt's fetch_funding_rate_history, in windows of
(page - 1.5) funding intervals, so a window holds fewer rates than a page even when funding times jitter by a
few milliseconds; a full page (the funding interval shrank) splits its window in two. Each page is written in
its own transaction, oldest first, so an interrupted sync resumes after the last stored rate. When the next
funding is not due before `until`, nothing is asked.

Fees: maker/taker per symbol from the markets ccxt loaded, stored with Store.write_fee under tier "default";
`overrides` (VIP tiers) are written under their own tier (`FeeSchedule.for_market(..., tier="vip2")` reads them)
and, for tier "default", replace the market's numbers. A changed fee gets a new row valid from now, so backtests
of earlier dates keep the fee that was in force then; the first row of a symbol is valid from 1970.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from qlab.data.store import DEFAULT_SYMBOL, Store
from qlab.data.sync import _ms, gather_or_cancel, metered
from qlab.errors import BadSymbolError, ConfigError, DataError, NotSupportedError, did_you_mean
from qlab.exchange.ratelimit import UsageMeter
from qlab.exchange.retry import call_with_retry

FUNDING_PAGE_LIMITS = {"bybit": 200, "binance": 1000, "binanceusdm": 1000, "kucoin": 100, "kucoinfutures": 100}
DEFAULT_FUNDING_MS = 8 * 3600 * 1000  # most perpetuals fund every 8 hours
EPOCH = pd.Timestamp("1970-01-01")


def funding_interval_ms(market: Mapping[str, Any]) -> int:
    """Milliseconds between fundings of a ccxt market: Bybit's info.fundingInterval (minutes) or
    info.fundingIntervalHours where the exchange sends it, else 8 hours."""
    info = market.get("info") or {}
    for key, scale in (("fundingInterval", 60_000), ("fundingIntervalHours", 3_600_000)):
        try:
            value = float(info.get(key))
        except (TypeError, ValueError):
            continue
        if math.isfinite(value) and value > 0:
            return int(value * scale)
    return DEFAULT_FUNDING_MS


def _stored_bounds(store: Store, exchange_id: str, symbol: str) -> tuple[int, int] | None:
    frame = store.sql("SELECT min(ts) AS lo, max(ts) AS hi FROM funding_rates WHERE exchange = ? AND symbol = ?",
                      [exchange_id, symbol])
    lo, hi = frame["lo"].iloc[0], frame["hi"].iloc[0]
    if pd.isna(lo):
        return None
    return tuple(int(pd.Timestamp(t).tz_localize("UTC").value // 1_000_000) for t in (lo, hi))  # type: ignore[return-value]


def _funding_ranges(bounds: tuple[int, int] | None, start: int, stop: int, interval: int) -> list[tuple[int, int]]:
    """[a, b) ranges of funding times (ms) still to fetch: before the stored rates and after them."""
    if bounds is None:
        return [(start, stop)] if stop > start else []
    first, last = bounds
    out = [(start, min(first, stop))] if start < first and start < stop else []
    lo = max(start, last + 1)
    if stop > lo and stop > last + interval - 60_000:  # the next funding may be due (a minute of slack for jitter)
        out.append((lo, stop))
    return out


async def _sync_funding_symbol(client: Any, store: Store, exchange_id: str, symbol: str, start: int, stop: int,
                               limit: int, retry: dict[str, Any]) -> int:
    interval = funding_interval_ms(client.market(symbol))
    span = max(interval // 2, int((limit - 1.5) * interval))  # at most limit-1 rates even with jittered times

    async def window(a: int, b: int) -> int:
        rows = await call_with_retry(client.fetch_funding_rate_history, symbol, a, limit, {"until": b - 1}, **retry)
        if len(rows) >= limit and b - a > 1:  # a full page may hide more rates: split, oldest half first
            mid = a + (b - a) // 2
            return await window(a, mid) + await window(mid, b)
        got: dict[int, float] = {}
        for row in rows:
            ts = row.get("timestamp")
            if ts is None or not a <= int(ts) < b:
                continue
            rate = row.get("fundingRate")
            if rate is None or not math.isfinite(float(rate)):
                raise DataError(f"{client.id} sent funding for {symbol} at {pd.Timestamp(int(ts), unit='ms', tz='UTC')} "
                                f"without a rate ({rate!r}); rerun later or report it to the exchange")
            got[int(ts)] = float(rate)
        if not got:
            return 0
        times = sorted(got)
        index = pd.DatetimeIndex(pd.to_datetime(times, unit="ms", utc=True), name="timestamp")
        return store.write_funding(pd.Series([got[t] for t in times], index=index, name="funding_rate"),
                                   exchange_id, symbol)  # one transaction per page

    written = 0
    for a, b in _funding_ranges(_stored_bounds(store, exchange_id, symbol), start, stop, interval):
        cursor = a
        while cursor < b:
            end = min(b, cursor + span)
            written += await window(cursor, end)
            cursor = end
    return written


async def _markets(client: Any, symbols: Iterable[str] | None, retry: dict[str, Any]) -> list[str]:
    await call_with_retry(client.load_markets, **retry)
    if symbols is None:
        return sorted(client.markets)
    symbols = list(dict.fromkeys(symbols))
    if not symbols:
        raise ConfigError("no symbols given; pass e.g. ['BTC/USDT:USDT'] (or symbols=None for every market)")
    missing = [s for s in symbols if s not in client.markets]
    if missing:
        raise BadSymbolError(f"{client.id} does not list {', '.join(missing)}.{did_you_mean(missing[0], client.markets)}")
    return symbols


async def sync_funding(
    client: Any,
    store: Store,
    exchange_id: str,
    symbols: Iterable[str],
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
    """Download the funding rates of perpetuals `symbols` with funding time in [since, until) into `store`.

    `client` is a ccxt async exchange (the caller closes it); rates are stored under `exchange_id`. `until`
    defaults to `now` (default: the wall clock). `page_limit` defaults to the exchange's page size (Bybit 200,
    Binance 1000). `meter` throttles and records every request. Returns the new rates stored per symbol.
    """
    if concurrency < 1:
        raise ConfigError(f"concurrency={concurrency} must be at least 1")
    retry = dict(retry or {})
    now_ms = _ms(now, "now") if now is not None else int(time.time() * 1000)
    start, stop = _ms(since, "since"), min(_ms(until, "until") if until is not None else now_ms, now_ms + 1)
    async with metered(client, meter):
        names = await _markets(client, symbols, retry)
        if not (getattr(client, "has", None) or {}).get("fetchFundingRateHistory"):
            raise NotSupportedError(f"{client.id} has no funding-rate history in ccxt (has['fetchFundingRateHistory'] is "
                                    "false); import the rates from a CSV with `qlab data import --funding`")
        spot = [s for s in names if not client.markets[s].get("swap")]
        if spot:
            raise ConfigError(f"{', '.join(spot)} is not a perpetual; funding exists for swaps such as "
                              f"'{spot[0].split(':')[0]}:{client.markets[spot[0]].get('quote') or 'USDT'}'")
        limit = int(page_limit or FUNDING_PAGE_LIMITS.get(client.id, 100))
        if limit < 2:
            raise ConfigError(f"page_limit={page_limit} must be at least 2")
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(names), unit="symbol", desc=f"funding {exchange_id}")
        gate = asyncio.Semaphore(concurrency)

        async def one(symbol: str) -> int:
            async with gate:
                n = await _sync_funding_symbol(client, store, exchange_id, symbol, start, stop, limit, retry)
            if bar is not None:
                bar.update(1)
            return n

        try:
            counts = await gather_or_cancel([one(s) for s in names])
        finally:
            if bar is not None:
                bar.close()
    return dict(zip(names, counts, strict=True))


def _fee_pair(value: Any, where: str) -> tuple[float, float]:
    if isinstance(value, Mapping) and set(value) >= {"maker", "taker"}:
        value = (value["maker"], value["taker"])
    if (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        return float(value[0]), float(value[1])
    raise ConfigError(f"fee override {where}={value!r}: give (maker, taker) or {{'maker': m, 'taker': t}} as fractions, "
                      "e.g. (0.0002, 0.00055) for 0.02 %/0.055 %")


def normalize_overrides(overrides: Mapping[str, Any] | None, markets: Iterable[str]) -> dict[str, dict[str, tuple[float, float]]]:
    """{tier: {symbol or '*': (maker, taker)}} from {tier: (maker, taker)} or {tier: {symbol: (maker, taker)}}."""
    known = set(markets)
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for tier, value in (overrides or {}).items():
        if not isinstance(tier, str) or not tier.strip():
            raise ConfigError(f"fee override tier {tier!r} must be a name such as 'vip1'")
        if isinstance(value, Mapping) and not set(value) >= {"maker", "taker"}:
            per = {}
            for symbol, pair in value.items():
                if symbol != DEFAULT_SYMBOL and symbol not in known:
                    raise BadSymbolError(f"fee override for tier {tier!r}: unknown symbol {symbol!r} (use '*' for every "
                                         f"symbol).{did_you_mean(str(symbol), known)}")
                per[symbol] = _fee_pair(pair, f"{tier}[{symbol}]")
            out[tier] = per
        else:
            out[tier] = {DEFAULT_SYMBOL: _fee_pair(value, tier)}
    return out


def _latest_fee(table: pd.DataFrame, symbol: str, tier: str) -> tuple[float, float] | None:
    rows = table[(table["symbol"] == symbol) & (table["tier"] == tier)]
    if rows.empty:
        return None
    last = rows.sort_values("valid_from").iloc[-1]
    return float(last["maker"]), float(last["taker"])


async def sync_fees(
    client: Any,
    store: Store,
    exchange_id: str,
    symbols: Iterable[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    now: Any = None,
    retry: dict[str, Any] | None = None,
    meter: UsageMeter | None = None,
) -> pd.DataFrame:
    """Store each symbol's maker/taker from the markets ccxt loads (every market when `symbols` is None), plus
    `overrides` {tier: (maker, taker) | {symbol or '*': (maker, taker)}} under their tier, in one transaction.

    A fee equal to the latest stored one for its symbol and tier is not written again; a changed one is stored
    valid from `now`. Returns one row per fee considered: symbol, tier, maker, taker, source, valid_from, written.
    """
    retry = dict(retry or {})
    stamp = pd.Timestamp(_ms(now, "now") if now is not None else int(time.time() * 1000), unit="ms").floor("s")
    async with metered(client, meter):
        names = await _markets(client, symbols, retry)
    tiers = normalize_overrides(overrides, client.markets)
    plan: dict[tuple[str, str], tuple[float, float, str]] = {}
    for symbol in names:
        market = client.markets[symbol]
        if market.get("maker") is not None and market.get("taker") is not None:
            plan[(symbol, "default")] = (float(market["maker"]), float(market["taker"]), "market")
    for tier, per in tiers.items():
        for symbol, (maker, taker) in per.items():
            if tier == "default" and symbol == DEFAULT_SYMBOL:  # the user's own default fees beat every market's
                for key in [k for k in plan if k[1] == "default"]:
                    plan[key] = (maker, taker, "override")
            plan[(symbol, tier)] = (maker, taker, "override")
    if not plan:
        raise DataError(f"{client.id} markets carry no maker/taker fees for {', '.join(names[:5])}; give overrides")
    table = store.fee_schedules(exchange_id)
    out = []
    with store.transaction():
        for (symbol, tier), (maker, taker, source) in sorted(plan.items()):
            latest = _latest_fee(table, symbol, tier)
            unchanged = latest is not None and math.isclose(latest[0], maker, abs_tol=1e-12) \
                and math.isclose(latest[1], taker, abs_tol=1e-12)
            valid_from = EPOCH if latest is None else stamp
            if not unchanged:
                store.write_fee(exchange_id, maker, taker, symbol=symbol, tier=tier, valid_from=valid_from)
            out.append({"exchange": exchange_id, "symbol": symbol, "tier": tier, "maker": maker, "taker": taker,
                        "source": source, "valid_from": None if unchanged else valid_from, "written": not unchanged})
    return pd.DataFrame(out)

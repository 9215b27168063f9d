"""Exchange health checks: is every exchange qlab reads from reachable, in time, and answering in the expected shape?

    report = run_health([HealthTarget("bybit", "BTC/USDT:USDT")], on_failure=alert)   # or health_targets(watchlist)
    print(report.text()); sys.exit(0 if report.ok else 1)

Checks per exchange, in order: reachability (the exchange's time endpoint), time_drift (server time against the local
clock, at the midpoint of the request), markets (loaded, and listing the symbol), ohlcv, ticker, order_book, trades
(answering with data of the expected shape), credentials (fetch_balance, only when an account is configured) and
rate_limit (headroom from the limit headers of the last responses, when the exchange sends them). A check is 'ok',
'warn', 'fail' or 'skip' (not run: the exchange is unreachable, or nothing to check). `on_failure(report)` is called
when any check failed: the alert hook (qlab.alerts sits above the data layer, so it is passed in, not imported).

Weekly from cron (CRON_LINE) or in the foreground with `run_every(...)` / `qlab exchange check --schedule`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from qlab.errors import AuthError, ConfigError, ExchangeError
from qlab.events import report_event
from qlab.exchange.retry import call_with_retry

CHECKS = ("reachability", "time_drift", "markets", "ohlcv", "ticker", "order_book", "trades", "credentials", "rate_limit")
CRON_LINE = "0 6 * * 1  cd /path/to/project && .venv/bin/qlab exchange check >> $HOME/qlab-health.log 2>&1"
WEEK = 7 * 24 * 3600.0
RETRY = {"max_tries": 2, "base": 0.2, "cap": 1.0}  # a health check reports a flaky exchange, it does not wait it out
# limit headers: (used header, limit header or a fixed limit); Bybit sends the remaining calls and the limit
LIMIT_HEADERS: dict[str, tuple[str, str | int]] = {
    "binance": ("x-mbx-used-weight-1m", 6000),
    "kucoin": ("gw-ratelimit-remaining", "gw-ratelimit-limit"),
}


@dataclass(frozen=True)
class HealthTarget:
    """One exchange to check: a symbol and timeframe to exercise its endpoints, and optionally an account's key."""

    exchange: str
    symbol: str = "BTC/USDT"
    timeframe: str = "1h"
    account: str | None = None
    mode: str = "live"


@dataclass(frozen=True)
class Check:
    """One check's outcome: status 'ok', 'warn', 'fail' or 'skip', a detail line and how long it took (ms)."""

    exchange: str
    name: str
    status: str
    detail: str
    ms: float = 0.0


@dataclass(frozen=True, eq=False)
class HealthReport:
    """Every check of every exchange; `ok` when none failed."""

    checks: tuple[Check, ...]
    at: pd.Timestamp = field(default_factory=lambda: pd.Timestamp.now("UTC"))

    @property
    def ok(self) -> bool:
        """True when no check failed (warnings pass)."""
        return not self.failures

    @property
    def failures(self) -> list[Check]:
        """The failed checks."""
        return [c for c in self.checks if c.status == "fail"]

    def table(self) -> pd.DataFrame:
        """One row per check: exchange, check, status, ms, detail."""
        return pd.DataFrame([{"exchange": c.exchange, "check": c.name, "status": c.status, "ms": round(c.ms, 1),
                              "detail": c.detail} for c in self.checks])

    def text(self) -> str:
        """The table as plain text plus a verdict line, for terminals, logs and cron mail."""
        verdict = ("all checks passed" if self.ok else
                   "FAILED: " + ", ".join(f"{c.exchange} {c.name}" for c in self.failures))
        return self.table().to_string(index=False) + f"\n{self.at:%Y-%m-%d %H:%M UTC}: {verdict}"


def rate_limit_headroom(exchange_id: str, headers: Mapping[str, Any]) -> tuple[float, float] | None:
    """(used, limit) of the request-weight window from an exchange's response headers, or None when absent."""
    h = {str(k).lower(): v for k, v in (headers or {}).items()}
    try:
        if exchange_id == "bybit" and "x-bapi-limit-status" in h and "x-bapi-limit" in h:
            limit = float(h["x-bapi-limit"])
            return limit - float(h["x-bapi-limit-status"]), limit  # Bybit reports what is left
        used_key, limit_key = LIMIT_HEADERS.get(exchange_id, ("", ""))
        if used_key in h:
            limit = float(limit_key) if isinstance(limit_key, int) else float(h[limit_key])
            value = float(h[used_key])
            return (limit - value, limit) if "remaining" in used_key else (value, limit)
    except (KeyError, TypeError, ValueError):
        return None
    return None


def _shape_problem(frame: pd.DataFrame) -> str | None:
    cols = ("open", "high", "low", "close", "volume")
    if frame is None or len(frame) == 0:
        return "no bars"
    if any(c not in frame.columns for c in cols):
        return f"columns {list(frame.columns)}"
    values = frame[list(cols)].to_numpy(dtype=float)
    if not all(math.isfinite(v) for v in values.ravel()):
        return "non-finite values"
    if (frame["high"] < frame["low"]).any() or (values[:, :4] <= 0).any():
        return "high < low or a non-positive price"
    if not frame.index.is_monotonic_increasing:
        return "bars out of order"
    return None


async def check_exchange(ex: Any, target: HealthTarget, *, credentials: bool = False, max_drift_ms: float = 1000.0,
                         min_headroom: float = 0.2, clock: Callable[[], float] = time.time,
                         retry: Mapping[str, Any] | None = None) -> list[Check]:
    """Run every check against one CcxtExchange; never raises for an exchange failure (it becomes a 'fail')."""
    name, symbol = target.exchange, target.symbol
    out: list[Check] = []
    retry = dict(retry or RETRY)

    async def run(check: str, probe: Callable[[], Any]) -> Check:
        t0 = time.perf_counter()
        try:
            status, detail = await probe()
        except ExchangeError as exc:
            status, detail = "fail", f"{type(exc).__name__}: {exc}"
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            status, detail = "fail", f"unexpected answer: {type(exc).__name__}: {exc}"
        result = Check(name, check, status, detail[:300], (time.perf_counter() - t0) * 1000)
        out.append(result)
        return result

    drift: dict[str, float] = {}

    async def reach():
        before = clock()
        server = await call_with_retry(ex.client.fetch_time, retry_client=ex.client, retry_what="fetch_time", **retry)
        after = clock()
        if not isinstance(server, int | float) or server <= 0:
            return "fail", f"time endpoint answered {server!r}, not a time"
        drift["ms"] = float(server) - (before + after) / 2 * 1000
        return "ok", f"time endpoint answered in {(after - before) * 1000:.0f} ms"

    async def time_drift():
        ms = drift["ms"]
        status = "fail" if abs(ms) > max_drift_ms else "ok"
        return status, f"server - local clock = {ms:+.0f} ms (limit {max_drift_ms:.0f} ms)" + (
            "; sync the clock (chrony/ntp), signed requests will be refused" if status == "fail" else "")

    async def markets():
        loaded = await ex.load_markets(reload=True)
        if not loaded:
            return "fail", "no markets loaded"
        ex.market(symbol)  # BadSymbolError (with did-you-mean) when not listed
        return "ok", f"{len(loaded)} markets, {symbol} listed"

    async def ohlcv():
        frame = await ex.fetch_ohlcv(symbol, target.timeframe, limit=5)
        problem = _shape_problem(frame)
        return ("fail", f"{symbol} {target.timeframe}: {problem}") if problem else (
            "ok", f"{len(frame)} {target.timeframe} bars, last {frame.index[-1]:%Y-%m-%d %H:%M}")

    async def ticker():
        t = await ex.fetch_ticker(symbol)
        prices = [p for p in (t.last, t.bid, t.ask) if p is not None]
        if not prices or not all(math.isfinite(p) and p > 0 for p in prices):
            return "fail", f"{symbol}: no usable price (last={t.last}, bid={t.bid}, ask={t.ask})"
        if t.bid is not None and t.ask is not None and t.bid > t.ask:
            return "fail", f"{symbol}: crossed ticker bid {t.bid} > ask {t.ask}"
        return "ok", f"last {t.last}"

    async def order_book():
        book = await ex.fetch_order_book(symbol, 5)
        if not book.bids or not book.asks:
            return "fail", f"{symbol}: empty side (bids {len(book.bids)}, asks {len(book.asks)})"
        if book.bids[0][0] >= book.asks[0][0]:
            return "fail", f"{symbol}: crossed book, best bid {book.bids[0][0]} >= best ask {book.asks[0][0]}"
        return "ok", f"best bid {book.bids[0][0]} / ask {book.asks[0][0]}"

    async def trades():
        rows = await ex.fetch_trades(symbol, limit=5)
        if not rows:
            return "warn", f"{symbol}: no recent trades"
        if not all(r.price > 0 and r.amount > 0 for r in rows):
            return "fail", f"{symbol}: a trade without a positive price and amount"
        return "ok", f"{len(rows)} trades, last at {rows[-1].price}"

    async def creds():
        try:
            balance = await ex.fetch_balance()
        except AuthError as exc:
            return "fail", f"key refused: {exc}"
        return "ok", f"key accepted; {len(getattr(balance, 'total', {}) or {})} currencies"

    async def headroom():
        found = rate_limit_headroom(name, getattr(ex.client, "last_response_headers", None) or {})
        if found is None:
            return "skip", "no rate-limit headers in the last response"
        used, limit = found
        left = 1 - used / limit if limit else 0.0
        return ("warn" if left < min_headroom else "ok"), f"{used:g} of {limit:g} used ({left:.0%} left)"

    first = await run("reachability", reach)
    if first.status == "fail":
        out += [Check(name, c, "skip", "not run: the exchange is unreachable") for c in CHECKS[1:]]
        return out
    await run("time_drift", time_drift)
    if (await run("markets", markets)).status == "fail":
        out += [Check(name, c, "skip", "not run: no markets") for c in ("ohlcv", "ticker", "order_book", "trades")]
    else:
        for check, probe in (("ohlcv", ohlcv), ("ticker", ticker), ("order_book", order_book), ("trades", trades)):
            await run(check, probe)
    if credentials:
        await run("credentials", creds)
    else:
        out.append(Check(name, "credentials", "skip", "no account configured for this exchange"))
    await run("rate_limit", headroom)
    return out


def _open(target: HealthTarget, *, allow_live: bool, retry: Mapping[str, Any] | None) -> tuple[Any, bool]:
    """A CcxtExchange for the target (public, or signed with its account's key) and whether it has credentials."""
    from qlab.exchange import ccxt_client
    from qlab.exchange.ccxt_exchange import CcxtExchange

    credentials: Mapping[str, Any] = {}
    mode = target.mode
    if target.account:
        from qlab.accounts import load_account

        account = load_account(target.account, allow_live=allow_live)
        if account.exchange != target.exchange:
            raise ConfigError(f"account {target.account!r} is a {account.exchange} account, not {target.exchange}")
        credentials, mode = account.ccxt_credentials(), account.mode
    client = ccxt_client.make_client(target.exchange, credentials, mode)
    return CcxtExchange(client, retry=retry), bool(credentials)


async def acheck(targets: Iterable[HealthTarget], *, on_failure: Callable[[HealthReport], Any] | None = None,
                 allow_live: bool = False, retry: Mapping[str, Any] | None = None, **kw: Any) -> HealthReport:
    """Check every target (concurrently) and return the report; `on_failure(report)` runs when a check failed."""
    targets, retry = list(targets), dict(retry or RETRY)
    if not targets:
        raise ConfigError("no exchanges to check; pass --exchange NAME or a watch list that names exchanges")

    async def one(target: HealthTarget) -> list[Check]:
        ex, signed = _open(target, allow_live=allow_live, retry=retry)
        try:
            return await check_exchange(ex, target, credentials=signed, retry=retry, **kw)
        finally:
            await ex.close()

    results = await asyncio.gather(*(one(t) for t in targets))
    report = HealthReport(tuple(c for checks in results for c in checks))
    for target, checks in zip(targets, results, strict=True):  # alert rules (health_failed) fire and re-arm on these
        failed = [c for c in checks if c.status == "fail"]
        report_event("health", exchange=target.exchange, ok=not failed, failed=[c.name for c in failed],
                     detail="; ".join(f"{c.name}: {c.detail}" for c in failed)[:500])
    if not report.ok and on_failure is not None:
        done = on_failure(report)
        if asyncio.iscoroutine(done):
            await done
    return report


def run_health(targets: Iterable[HealthTarget], **kw: Any) -> HealthReport:
    """`acheck` from synchronous code (the CLI, cron)."""
    return asyncio.run(acheck(targets, **kw))


def health_targets(watchlist: Any, exchanges: Iterable[str] | None = None) -> list[HealthTarget]:
    """One target per exchange named in a watch list (primaries and fallbacks), with the first symbol and timeframe
    it is used for and the account an entry names; `exchanges` narrows the list (a name it lacks is checked too)."""
    found: dict[str, HealthTarget] = {}
    for entry in watchlist.entries if watchlist is not None else ():
        for name in entry.sources:
            if name not in found:
                account = entry.account if name == entry.exchange else None
                found[name] = HealthTarget(name, entry.symbols[0], entry.timeframes[0], account)
    if exchanges:
        return [found.get(x, HealthTarget(x)) for x in exchanges]
    return list(found.values())


def run_every(check: Callable[[], HealthReport], every: float = WEEK, *, sleep: Callable[[float], Any] = time.sleep,
              times: int | None = None) -> list[HealthReport]:
    """Run `check()` now and then every `every` seconds in the foreground (`times` runs, or until interrupted)."""
    reports: list[HealthReport] = []
    while times is None or len(reports) < times:
        reports.append(check())
        if times is not None and len(reports) >= times:
            break
        sleep(every)
    return reports

"""Per-API-key rate limits, adaptive throttling and API budgets for every REST request qlab sends.

    meter = UsageMeter.for_client(client, "my-bybit", budget=Budget(calls_per_day=50_000), sink=StoreUsageSink(store))
    async with meter.attached(client):   # every HTTP request of the ccxt client waits for the meter and is recorded
        await client.fetch_ohlcv("BTC/USDT:USDT", "1h")

One `TokenBucket` per key: a request of weight w takes w tokens; tokens come back at `rate` a second up to
`burst`. The rate adapts: it shrinks with the share of the exchange's quota left in its limit headers
(Bybit X-Bapi-Limit-Status / X-Bapi-Limit, Binance X-MBX-USED-WEIGHT-1M, KuCoin gw-ratelimit-remaining),
halves for `cooldown` seconds after each 429 (status "RateLimitError"), and the bucket waits out any
Retry-After. A `Budget` counts calls and money per UTC day and month, warns at 50/80/100 % and refuses the
call that would pass a hard limit with `BudgetExceededError`. Each request becomes a usage row (key_id,
exchange, endpoint, weight, ts, status, cost) handed, buffered, to `sink` (qlab.data.usage.StoreUsageSink
writes them to the store's ledger). No store access here: this is the exchange layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import time
import urllib.parse
import warnings
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from qlab.errors import BudgetExceededError, ConfigError
from qlab.events import report_event

logger = logging.getLogger(__name__)

THRESHOLDS = (50, 80, 100)  # budget warnings, in % of a limit
PERIODS = ("day", "month")
MAX_HALVINGS = 5  # repeated 429s slow a key down to 1/32 of its rate at most
# Binance sends the weight used in the current minute but not the limit: the documented IP limits per minute
BINANCE_WEIGHT_LIMITS = {"/fapi/": 2400.0, "/dapi/": 2400.0, "/api/": 6000.0, "/sapi/": 12000.0}

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[Any]]
Sink = Callable[[list[dict[str, Any]]], Any]


def _positive(owner: str, name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{owner}: {name}={value!r} must be a number > 0")


def _lower(headers: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in (headers or {}).items()}


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


# ---------------------------------------------------------------------------------------------- bucket
class TokenBucket:
    """`rate` tokens a second up to `burst`; `await acquire(w)` waits until w tokens (at most `burst`) are there and
    takes them (the balance may go negative for w > burst, so heavy calls still pay their full weight).

    `clock` (seconds, monotonic) and `sleep` are injectable so tests run on a fake clock; waiters queue in order."""

    def __init__(self, rate: float, burst: float = 1.0, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        _positive("TokenBucket", "rate", rate)
        _positive("TokenBucket", "burst", burst)
        self._rate, self.burst = float(rate), float(burst)
        self._clock, self._sleep = clock, sleep
        self._tokens = self.burst
        self._stamp = clock()
        self._paused_until = -math.inf
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self._rate:g}/s, burst={self.burst:g}, tokens={self.tokens:.3g})"

    @property
    def rate(self) -> float:
        """Tokens added per second."""
        return self._rate

    @property
    def tokens(self) -> float:
        """Tokens available now (negative after a call heavier than the burst)."""
        self._refill(self._clock())
        return self._tokens

    def _refill(self, now: float) -> None:
        start = max(self._stamp, self._paused_until)  # nothing accrues during a pause
        if now > start:
            self._tokens = min(self.burst, self._tokens + (now - start) * self._rate)
        self._stamp = max(self._stamp, now)

    def set_rate(self, rate: float) -> None:
        """Change the refill rate from now on (tokens earned so far are kept)."""
        _positive("TokenBucket", "rate", rate)
        self._refill(self._clock())
        self._rate = float(rate)

    def pause_until(self, when: float) -> None:
        """Hand out nothing before clock time `when` (a Retry-After, an exhausted quota); the bucket restarts empty."""
        self._refill(self._clock())
        self._paused_until = max(self._paused_until, when)
        self._tokens = min(self._tokens, 0.0)

    def delay(self, weight: float = 1.0) -> float:
        """Seconds until `weight` tokens could be taken (0: now)."""
        now = self._clock()
        self._refill(now)
        pause = max(0.0, self._paused_until - now)
        need = min(weight, self.burst)
        refill = max(0.0, need - self._tokens) / self._rate
        return pause + refill if pause > 0 else refill

    def _get_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:  # a lock belongs to one event loop
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def acquire(self, weight: float = 1.0) -> float:
        """Wait for and take `weight` tokens; returns the seconds waited."""
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ConfigError(f"weight={weight!r} must be a number >= 0")
        waited = 0.0
        async with self._get_lock():
            while True:
                wait = self.delay(weight)
                if wait <= 1e-9:
                    self._tokens -= weight
                    return waited
                await self._sleep(wait)
                waited += wait


# ---------------------------------------------------------------------------------------------- headers
@dataclass(frozen=True)
class Quota:
    """What an exchange's limit headers said: `used` of `limit` in the current window, reset in `reset_after` s."""

    used: float
    limit: float
    reset_after: float | None
    source: str

    @property
    def remaining(self) -> float:
        """Share of the window's quota left, 0..1."""
        return min(1.0, max(0.0, 1.0 - self.used / self.limit)) if self.limit > 0 else 1.0


def quota_from_headers(headers: Mapping[str, Any] | None, endpoint: str = "", *, now: float | None = None,
                       binance_limits: Mapping[str, float] | None = None) -> Quota | None:
    """The quota state in a response's headers (Bybit, Binance, KuCoin), or None when it carries none.

    `now` is the wall clock (epoch seconds) for Bybit's reset timestamp and Binance's minute window;
    `binance_limits` maps a path prefix to the weight limit per minute (Binance sends only the weight used)."""
    h = _lower(headers)
    now = time.time() if now is None else now
    if "x-bapi-limit-status" in h:  # Bybit: requests left in the window, the window's limit, its end (epoch ms)
        left, limit = _float(h.get("x-bapi-limit-status")), _float(h.get("x-bapi-limit"))
        if left is not None and limit:
            reset_ms = _float(h.get("x-bapi-limit-reset-timestamp"))
            reset = max(0.0, reset_ms / 1000 - now) if reset_ms is not None else None
            return Quota(limit - left, limit, reset, "bybit")
    if "gw-ratelimit-remaining" in h:  # KuCoin: left, limit, ms until the window resets
        left, limit = _float(h.get("gw-ratelimit-remaining")), _float(h.get("gw-ratelimit-limit"))
        if left is not None and limit:
            reset_ms = _float(h.get("gw-ratelimit-reset"))
            return Quota(limit - left, limit, reset_ms / 1000 if reset_ms is not None else None, "kucoin")
    used = _float(h.get("x-mbx-used-weight-1m"))
    if used is not None:  # Binance: weight used in the current minute
        limits = dict(BINANCE_WEIGHT_LIMITS, **(binance_limits or {}))
        limit = next((v for k, v in limits.items() if endpoint.startswith(k)), min(limits.values()))
        return Quota(used, limit, 60.0 - now % 60.0, "binance")
    return None


def retry_after(headers: Mapping[str, Any] | None) -> float | None:
    """Seconds from a Retry-After header (seconds form; an HTTP date gives None), capped at one hour."""
    value = _float(_lower(headers).get("retry-after"))
    return min(value, 3600.0) if value is not None and value >= 0 else None


# ---------------------------------------------------------------------------------------------- budget
class BudgetWarning(UserWarning):
    """An API key has used 50, 80 or 100 % of a budget limit."""


@dataclass(frozen=True)
class BudgetEvent:
    """One budget warning: `key_id` used `used` of `allowed` (`threshold` %) of `limit` in `period` (UTC)."""

    key_id: str
    exchange: str
    limit: str
    threshold: int
    used: float
    allowed: float
    period: str
    message: str


def _period_key(period: str, now: float) -> str:
    stamp = datetime.fromtimestamp(now, UTC)
    return stamp.strftime("%Y-%m-%d") if period == "day" else stamp.strftime("%Y-%m")


def period_start(period: str, now: float | None = None) -> datetime:
    """Start (UTC) of the day or month holding `now` (epoch seconds, default the wall clock)."""
    if period not in PERIODS:
        raise ConfigError(f"period={period!r}: use 'day' or 'month'")
    stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    stamp = stamp.replace(hour=0, minute=0, second=0, microsecond=0)
    return stamp.replace(day=1) if period == "month" else stamp


def _period_end(period: str, now: float) -> datetime:
    start = period_start(period, now)
    if period == "day":
        return datetime.fromtimestamp(start.timestamp() + 86400, UTC)
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


@dataclass
class Budget:
    """An API-cost budget for one key: calls and/or money per UTC day and month.

    Each call costs `cost_per_call` money. At 50, 80 and 100 % of each limit a `BudgetEvent` goes to every
    function in `callbacks`, to Python `warnings` (BudgetWarning) and to the log, once per period. A call that
    would pass a limit raises BudgetExceededError before it is made, unless `hard_limit=False` (warn only) or
    the meter was told `over_budget=True`. `seed` continues a period from the usage ledger after a restart.
    """

    calls_per_day: int | None = None
    calls_per_month: int | None = None
    money_per_day: float | None = None
    money_per_month: float | None = None
    cost_per_call: float = 0.0
    hard_limit: bool = True
    callbacks: list[Callable[[BudgetEvent], Any]] = field(default_factory=list, repr=False)
    _used: dict[str, tuple[str, float]] = field(default_factory=dict, init=False, repr=False)
    _emitted: set[tuple[str, str, int]] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("calls_per_day", "calls_per_month", "money_per_day", "money_per_month"):
            _positive("Budget", name, getattr(self, name), allow_none=True)
        if not self.limits:
            raise ConfigError("Budget: give at least one of calls_per_day, calls_per_month, money_per_day, money_per_month")
        if isinstance(self.cost_per_call, bool) or not isinstance(self.cost_per_call, (int, float)) or not self.cost_per_call >= 0:
            raise ConfigError(f"Budget: cost_per_call={self.cost_per_call!r} must be a number >= 0 (money per API call)")
        if (self.money_per_day or self.money_per_month) and not self.cost_per_call:
            raise ConfigError("Budget: a money limit needs cost_per_call > 0 (what one API call costs)")

    @property
    def limits(self) -> dict[str, tuple[str, str, float]]:
        """The configured limits: name -> (unit 'calls' | 'money', period 'day' | 'month', allowed)."""
        out = {}
        for unit in ("calls", "money"):
            for period in PERIODS:
                allowed = getattr(self, f"{unit}_per_{period}")
                if allowed is not None:
                    out[f"{unit}_per_{period}"] = (unit, period, float(allowed))
        return out

    def used(self, name: str, now: float | None = None) -> float:
        """Calls or money used so far in the current period of limit `name` (e.g. 'calls_per_day')."""
        _unit, period, _ = self.limits[name]
        key = _period_key(period, time.time() if now is None else now)
        stored = self._used.get(name)
        return stored[1] if stored and stored[0] == key else 0.0

    def seed(self, period: str, calls: float, money: float = 0.0, now: float | None = None) -> None:
        """Start the current `period` ('day' | 'month') at `calls` and `money` already used (from the ledger).

        Thresholds already passed count as warned (they were, when the calls were made), so each warns once."""
        if period not in PERIODS:
            raise ConfigError(f"period={period!r}: use 'day' or 'month'")
        now = time.time() if now is None else now
        key = _period_key(period, now)
        for name, (unit, p, allowed) in self.limits.items():
            if p != period:
                continue
            value = float(calls if unit == "calls" else money)
            self._used[name] = (key, value)
            self._emitted |= {(name, key, t) for t in THRESHOLDS if value >= allowed * t / 100 - 1e-9}

    def status(self, now: float | None = None) -> list[dict[str, Any]]:
        """One row per limit: limit, used, allowed, percent, period, resets (UTC)."""
        now = time.time() if now is None else now
        return [{"limit": name, "used": self.used(name, now), "allowed": allowed,
                 "percent": 100 * self.used(name, now) / allowed, "period": _period_key(period, now),
                 "resets": _period_end(period, now).isoformat()}
                for name, (unit, period, allowed) in self.limits.items()]

    def check(self, key_id: str, exchange: str, endpoint: str, now: float, override: bool = False) -> None:
        """Raise BudgetExceededError when one more call would pass a hard limit."""
        if not self.hard_limit or override:
            return
        for name, (unit, period, allowed) in self.limits.items():
            step = 1.0 if unit == "calls" else float(self.cost_per_call)
            used = self.used(name, now)
            if used + step > allowed * (1 + 1e-12):
                what = f"{used:g} calls" if unit == "calls" else f"{used:g} money ({used / self.cost_per_call:g} calls)"
                raise BudgetExceededError(
                    f"API budget of key {key_id!r} on {exchange} is spent: {name}={allowed:g} reached ({what} in "
                    f"{_period_key(period, now)} UTC); refused the call to {endpoint}. It resets at "
                    f"{_period_end(period, now):%Y-%m-%d %H:%M} UTC; raise {name}, or pass hard_limit=False (warn only) "
                    "or over_budget=True (this run, `--over-budget` on the command line) to go past it")

    def charge(self, key_id: str, exchange: str, endpoint: str, now: float, override: bool = False) -> list[BudgetEvent]:
        """Count one call made at `now` (after `check`); emit and return the warnings it triggers."""
        self.check(key_id, exchange, endpoint, now, override)
        events = []
        for name, (unit, period, allowed) in self.limits.items():
            key = _period_key(period, now)
            used = self.used(name, now) + (1.0 if unit == "calls" else float(self.cost_per_call))
            self._used[name] = (key, used)
            for threshold in THRESHOLDS:
                if used >= allowed * threshold / 100 - 1e-9 and (name, key, threshold) not in self._emitted:
                    self._emitted.add((name, key, threshold))
                    tail = ("further calls are refused" if self.hard_limit else "hard_limit=False: calls go on") \
                        if threshold == 100 else f"the budget resets at {_period_end(period, now):%Y-%m-%d %H:%M} UTC"
                    message = (f"API key {key_id!r} on {exchange} used {threshold} % of {name}={allowed:g} "
                               f"({used:g} in {key} UTC); {tail}")
                    events.append(BudgetEvent(key_id, exchange, name, threshold, used, allowed, key, message))
        for event in events:
            self._emit(event)
        return events

    def _emit(self, event: BudgetEvent) -> None:
        if logger.hasHandlers():  # a configured log gets the event; without one, the warning alone says it (not twice)
            logger.warning(event.message)
        warnings.warn(event.message, BudgetWarning, stacklevel=4)
        report_event("budget", name=f"{event.key_id} {event.exchange} {event.limit}", used=event.used, limit=event.allowed,
                     key_id=event.key_id, exchange=event.exchange, threshold=event.threshold)
        for callback in list(self.callbacks):
            callback(event)


# ---------------------------------------------------------------------------------------------- meter
_WEIGHT: contextvars.ContextVar[float | None] = contextvars.ContextVar("qlab_request_weight", default=None)
_RESPONSE: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("qlab_response", default=None)


class UsageMeter:
    """Rate limit, adaptive throttle, budget and usage record for one API key.

    `rate` is tokens per second and `burst` the bucket size; each request takes its weight in tokens.
    `weights`: "requests" (1 per request), "ccxt" (ccxt's cost of the endpoint, in units of its rateLimit) or a
    mapping URL path -> weight (1 for the rest). Callers either wrap each request in `await acquire(...)` and
    `record(...)`, or `attach(client)` a ccxt client so all its HTTP requests are metered (not both: that counts twice).
    """

    def __init__(
        self,
        key_id: str,
        exchange: str,
        *,
        rate: float = 10.0,
        burst: float = 1.0,
        budget: Budget | None = None,
        sink: Sink | None = None,
        weights: str | Mapping[str, float] = "requests",
        over_budget: bool = False,
        cooldown: float = 30.0,
        slow_below: float = 0.5,
        min_factor: float = 0.05,
        binance_limits: Mapping[str, float] | None = None,
        flush_rows: int = 100,
        flush_seconds: float = 2.0,
        history: int = 10_000,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not isinstance(key_id, str) or not key_id:
            raise ConfigError(f"key_id={key_id!r} must be a non-empty name for the API key (e.g. the account name)")
        if isinstance(weights, str) and weights not in ("requests", "ccxt"):
            raise ConfigError(f"weights={weights!r}: use 'requests', 'ccxt' or a mapping of URL path -> weight")
        _positive("UsageMeter", "cooldown", cooldown)
        if not 0 < slow_below <= 1 or not 0 < min_factor <= 1:
            raise ConfigError(f"UsageMeter: slow_below={slow_below!r} and min_factor={min_factor!r} must be in (0, 1]")
        self.key_id, self.exchange = key_id, str(exchange)
        self.base_rate = float(rate)
        self.bucket = TokenBucket(rate, burst, clock=clock, sleep=sleep)
        self.budget, self.sink, self.weights = budget, sink, weights
        self.over_budget = over_budget
        self.cooldown, self.slow_below, self.min_factor = float(cooldown), float(slow_below), float(min_factor)
        self.binance_limits = dict(binance_limits or {})
        self.flush_rows, self.flush_seconds = int(flush_rows), float(flush_seconds)
        self._clock, self._wall = clock, wall
        self.quota_factor = 1.0  # from the last limit headers
        self.halvings = 0  # 429s in the current cooldown
        self._penalty_until = -math.inf
        self.last_quota: Quota | None = None
        self.history: deque[dict[str, Any]] = deque(maxlen=history)
        self._buffer: list[dict[str, Any]] = []
        self._last_flush = wall()
        self.counts = {"calls": 0, "errors": 0, "rate_limited": 0}
        self.waited = 0.0

    def __repr__(self) -> str:
        return (f"UsageMeter(key_id={self.key_id!r}, exchange={self.exchange!r}, rate={self.rate:g}/s of "
                f"{self.base_rate:g}/s, calls={self.counts['calls']})")

    @classmethod
    def for_client(cls, client: Any, key_id: str, *, rate: float | None = None, burst: float = 1.0,
                   weights: str | Mapping[str, float] | None = None, **kw: Any) -> UsageMeter:
        """A meter for a ccxt client's exchange. Without `rate` it takes ccxt's own model: 1000 / client.rateLimit
        tokens a second and ccxt's endpoint costs as weights; with `rate` (requests a second) each request weighs 1."""
        if rate is None:
            limit_ms = _float(getattr(client, "rateLimit", None))
            rate = 1000.0 / limit_ms if limit_ms and limit_ms > 0 else 10.0
            weights = weights or "ccxt"
        return cls(key_id, str(getattr(client, "id", "exchange")), rate=rate, burst=burst, weights=weights or "requests", **kw)

    # -- throttling -------------------------------------------------------------------------------------------
    @property
    def rate(self) -> float:
        """The rate in force now: base rate x quota factor x 1/2 per 429 in the cooldown."""
        if self.halvings and self._clock() >= self._penalty_until:
            self.halvings = 0
        return self.base_rate * self.quota_factor * 0.5**self.halvings

    def _apply_rate(self) -> None:
        rate = self.rate
        if abs(rate - self.bucket.rate) > 1e-12 * rate:
            self.bucket.set_rate(rate)

    async def acquire(self, endpoint: str, weight: float = 1.0) -> float:
        """Wait until a request of `weight` to `endpoint` may go; refuses (BudgetExceededError) past a hard budget.

        Returns the seconds waited. Counts the call against the budget once the wait is over."""
        if self.budget is not None:
            self.budget.check(self.key_id, self.exchange, endpoint, self._wall(), self.over_budget)
        self._apply_rate()
        waited = await self.bucket.acquire(weight)
        self.waited += waited
        if self.budget is not None:
            self.budget.charge(self.key_id, self.exchange, endpoint, self._wall(), self.over_budget)
        return waited

    def record(self, endpoint: str, weight: float, status: str, headers: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Record one request made: its usage row, and what its status and headers say about the quota.

        status: "ok" or the qlab error class name ("RateLimitError" after a 429 halves the rate for `cooldown` s)."""
        wall = self._wall()
        row = {"key_id": self.key_id, "exchange": self.exchange, "endpoint": str(endpoint), "weight": float(weight),
               "ts": datetime.fromtimestamp(wall, UTC), "status": str(status),
               "cost": float(self.budget.cost_per_call) if self.budget is not None else 0.0}
        self.history.append(row)
        self.counts["calls"] += 1
        self.counts["errors"] += status != "ok"
        now = self._clock()
        if status == "RateLimitError":
            self.counts["rate_limited"] += 1
            self.halvings = min(self.halvings + 1, MAX_HALVINGS) if now < self._penalty_until else 1
            self._penalty_until = now + self.cooldown
            logger.warning("%s on %s: rate limited at %s; slowing to %.3g requests/s for %gs", self.key_id, self.exchange,
                           endpoint, self.rate, self.cooldown)
        wait = retry_after(headers)
        if wait:
            self.bucket.pause_until(now + wait)
        quota = quota_from_headers(headers, endpoint, now=wall, binance_limits=self.binance_limits)
        if quota is not None:
            self.last_quota = quota
            self.quota_factor = min(1.0, max(self.min_factor, quota.remaining / self.slow_below))
            if quota.limit - quota.used < 1 and quota.reset_after:  # nothing left: wait for the window to reset
                self.bucket.pause_until(now + quota.reset_after)
        self._apply_rate()
        if self.sink is not None:
            self._buffer.append(row)
            if len(self._buffer) >= self.flush_rows or wall - self._last_flush >= self.flush_seconds:
                try:
                    self.flush()
                except Exception:  # a failing sink must not fail the request; rows stay buffered for the next flush
                    logger.exception("usage sink failed; %d rows kept for the next flush", len(self._buffer))
        return row

    def flush(self) -> int:
        """Hand the buffered usage rows to the sink; returns how many (they stay buffered if the sink raises)."""
        self._last_flush = self._wall()
        if self.sink is None or not self._buffer:
            return 0
        rows, self._buffer = self._buffer, []
        try:
            self.sink(rows)
        except BaseException:
            self._buffer = rows + self._buffer
            raise
        return len(rows)

    @property
    def pending(self) -> int:
        """Usage rows not yet handed to the sink."""
        return len(self._buffer)

    # -- ccxt clients ----------------------------------------------------------------------------------------
    def _weight_of(self, client: Any, url_path: str, api: Any, method: str, path: str, params: Any, config: Any) -> float:
        if isinstance(self.weights, Mapping):
            return float(self.weights.get(url_path, 1.0))
        if self.weights == "ccxt":
            try:
                return float(client.calculate_rate_limiter_cost(api, method, path, params, config))
            except Exception:  # an exchange-specific cost function that cannot price this call: one unit
                return 1.0
        return 1.0

    def attach(self, client: Any, *, replace_ccxt_limiter: bool = True) -> Any:
        """Meter every HTTP request `client` (a ccxt async exchange) sends, its internal ones included.

        Each request waits in `acquire`, then is `record`ed with its URL path as endpoint and, as status, "ok" or the
        qlab error class its failure translates to. ccxt's own limiter is switched off (the meter replaces it)
        unless `replace_ccxt_limiter=False`. Undo with `detach(client)`."""
        from qlab.exchange.retry import translate

        if getattr(client, "_qlab_meter", None) is not None:
            raise ConfigError(f"{getattr(client, 'id', 'client')} already has a usage meter attached; detach it first")
        fetch2, fetch, on_rest_response = client.fetch2, client.fetch, client.on_rest_response

        async def metered_fetch2(path: Any, api: Any = "public", method: str = "GET", params: Any = None, config: Any = None):
            params = {} if params is None else params
            config = {} if config is None else config
            token = _WEIGHT.set(self._weight_of(client, "", api, method, path, params, config)
                                if self.weights == "ccxt" else None)
            try:
                return await fetch2(path, api, method, params, config)
            finally:
                _WEIGHT.reset(token)

        async def metered_fetch(url: str, method: str = "GET", headers: Any = None, body: Any = None):
            endpoint = urllib.parse.urlsplit(str(url)).path or str(url)
            weight = _WEIGHT.get()
            if weight is None:
                weight = self._weight_of(client, endpoint, None, method, endpoint, {}, {})
            await self.acquire(endpoint, weight)
            box: dict[str, Any] = {}
            token = _RESPONSE.set(box)
            try:
                result = await fetch(url, method, headers, body)
            except asyncio.CancelledError:
                self.record(endpoint, weight, "cancelled", box.get("headers"))
                raise
            except Exception as exc:
                status = type(translate(exc, client)).__name__ if _is_ccxt_error(exc) else type(exc).__name__
                self.record(endpoint, weight, status, box.get("headers"))
                raise
            finally:
                _RESPONSE.reset(token)
            self.record(endpoint, weight, "ok", box.get("headers"))
            return result

        def metered_on_rest_response(code: Any, reason: Any, url: Any, method: Any, headers: Any, *rest: Any) -> Any:
            box = _RESPONSE.get()
            if box is not None:
                box["headers"] = dict(headers or {})
            return on_rest_response(code, reason, url, method, headers, *rest)

        client._qlab_meter = self
        client._qlab_limiter = getattr(client, "enableRateLimit", None)
        client.fetch2, client.fetch, client.on_rest_response = metered_fetch2, metered_fetch, metered_on_rest_response
        if replace_ccxt_limiter:
            client.enableRateLimit = False
        return client

    def detach(self, client: Any) -> Any:
        """Undo `attach`: the client's own fetch and rate limiter come back."""
        if getattr(client, "_qlab_meter", None) is not self:
            return client
        for name in ("fetch2", "fetch", "on_rest_response"):
            client.__dict__.pop(name, None)
        if client._qlab_limiter is not None:
            client.enableRateLimit = client._qlab_limiter
        client._qlab_meter = None
        return client

    @contextlib.asynccontextmanager
    async def attached(self, client: Any, *, replace_ccxt_limiter: bool = True) -> AsyncIterator[Any]:
        """`attach` for the block, then `detach` and `flush` (also when the block fails)."""
        self.attach(client, replace_ccxt_limiter=replace_ccxt_limiter)
        try:
            yield client
        finally:
            self.detach(client)
            self.flush()

    def summary(self) -> dict[str, Any]:
        """Calls, errors, 429s, seconds waited and the rate in force, for this meter's lifetime."""
        return dict(self.counts, waited=self.waited, rate=self.rate, base_rate=self.base_rate)


def _is_ccxt_error(exc: BaseException) -> bool:
    import ccxt

    return isinstance(exc, ccxt.BaseError)


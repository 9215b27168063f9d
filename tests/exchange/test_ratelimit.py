"""Token bucket, adaptive throttling, budgets and the ccxt hook of qlab.exchange.ratelimit (fake clock; one fake server)."""

from __future__ import annotations

import asyncio
import itertools
import random
import warnings
from datetime import UTC, datetime

import ccxt.async_support as ccxt
import pytest

import qlab
from qlab.errors import BudgetExceededError, ConfigError, RateLimitError
from qlab.exchange.fake import FakeExchange
from qlab.exchange.ratelimit import Budget, BudgetWarning, TokenBucket, UsageMeter, quota_from_headers
from qlab.exchange.retry import call_with_retry

NOON = datetime(2025, 3, 14, 12, 0, tzinfo=UTC).timestamp()  # a wall-clock time well inside a UTC day and month


class FakeClock:
    """A monotonic clock and a sleep that advances it (no real waiting)."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def _meter(clock: FakeClock, **kw) -> UsageMeter:
    kw.setdefault("wall", lambda: NOON + clock.now)
    return UsageMeter("acct-1", "bybit", clock=clock, sleep=clock.sleep, **kw)


def _times(bucket_or_meter, n, weight=1.0, clock=None, endpoint="/x"):
    """Clock times at which n serial acquisitions were granted."""

    async def main():
        out = []
        for _ in range(n):
            if isinstance(bucket_or_meter, TokenBucket):
                await bucket_or_meter.acquire(weight)
            else:
                await bucket_or_meter.acquire(endpoint, weight)
            out.append(clock())
        return out

    return asyncio.run(main())


# ------------------------------------------------------------------------------------------------ token bucket
def test_bucket_spaces_calls_one_over_rate_after_the_burst():
    clock = FakeClock()
    times = _times(TokenBucket(10, burst=1, clock=clock, sleep=clock.sleep), 50, clock=clock)
    assert times[0] == 100.0  # the first token is there at once
    assert max(abs(b - a - 0.1) for a, b in itertools.pairwise(times)) < 1e-9
    clock = FakeClock()
    times = _times(TokenBucket(10, burst=5, clock=clock, sleep=clock.sleep), 20, clock=clock)
    assert times[:5] == [100.0] * 5 and times[5] == pytest.approx(100.1) and times[-1] == pytest.approx(101.5)


@pytest.mark.parametrize("seed", range(5))
def test_bucket_never_grants_more_than_burst_plus_rate_times_any_window(seed):
    rng = random.Random(seed)
    rate, burst = rng.uniform(1, 50), rng.choice([1, 2, 5])
    clock = FakeClock()
    bucket = TokenBucket(rate, burst, clock=clock, sleep=clock.sleep)

    async def main():
        out = []
        for _ in range(120):
            clock.now += rng.expovariate(rate * 1.5)  # callers arrive faster than the rate, with idle gaps
            await bucket.acquire(1)
            out.append(clock.now)
        return out

    times = asyncio.run(main())
    for i in range(len(times)):  # plain reference check over every window [t_i, t_j]
        for j in range(i, len(times)):
            assert j - i + 1 <= burst + rate * (times[j] - times[i]) + 1e-6


def test_heavier_calls_take_their_weight_and_concurrent_waiters_are_served_in_turn():
    clock = FakeClock()
    times = _times(TokenBucket(10, 1, clock=clock, sleep=clock.sleep), 4, weight=3, clock=clock)
    assert times == pytest.approx([100.0, 100.3, 100.6, 100.9])  # weight 3 at 10 tokens/s: 0.3 s each
    bucket = TokenBucket(20, 1, clock=clock, sleep=clock.sleep)
    clock.now = 200.0

    async def worker(name, out):
        for _ in range(5):
            await bucket.acquire()
            out.append((clock.now, name))

    async def main():
        out = []
        await asyncio.gather(*(worker(n, out) for n in "abc"))
        return out

    grants = asyncio.run(main())
    assert [t for t, _ in grants] == pytest.approx([200.0 + 0.05 * i for i in range(15)])
    assert {n for _, n in grants} == {"a", "b", "c"}


def test_pause_holds_every_token_until_its_end():
    clock = FakeClock()
    bucket = TokenBucket(10, 3, clock=clock, sleep=clock.sleep)
    bucket.pause_until(102.5)
    times = _times(bucket, 2, clock=clock)
    assert times[0] >= 102.5 and times[1] - times[0] == pytest.approx(0.1)


def test_bad_rates_and_weights_are_config_errors():
    with pytest.raises(ConfigError, match="rate=0"):
        TokenBucket(0)
    with pytest.raises(ConfigError, match="weight=-1"):
        asyncio.run(TokenBucket(1).acquire(-1))
    with pytest.raises(ConfigError, match="key_id"):
        UsageMeter("", "bybit")
    with pytest.raises(ConfigError, match="weights='bytes'"):
        UsageMeter("k", "bybit", weights="bytes")


# ------------------------------------------------------------------------------------------------ adaptive throttle
def test_a_429_waits_out_retry_after_and_halves_the_rate_for_the_cooldown():
    clock = FakeClock()
    meter = _meter(clock, rate=20, cooldown=10)
    _times(meter, 1, clock=clock)
    meter.record("/v5/market/kline", 1, "RateLimitError", {"Retry-After": "2"})
    assert meter.rate == 10  # halved
    t429 = clock.now
    times = _times(meter, 3, clock=clock)
    assert times[0] >= t429 + 2  # nothing before the Retry-After
    assert times[2] - times[1] == pytest.approx(0.1)  # 10/s, not 20/s
    meter.record("/v5/market/kline", 1, "RateLimitError", {})  # a second 429 inside the cooldown: a quarter
    assert meter.rate == 5
    clock.now += 10.01
    assert meter.rate == 20  # the cooldown is over
    assert meter.counts == {"calls": 2, "errors": 2, "rate_limited": 2}


@pytest.mark.parametrize(("headers", "endpoint", "remaining"), [
    ({"X-Bapi-Limit-Status": "10", "X-Bapi-Limit": "100"}, "/v5/order/create", 0.10),     # Bybit: 10 of 100 left
    ({"x-mbx-used-weight-1m": "2160"}, "/fapi/v1/klines", 1 - 2160 / 2400),               # Binance futures: 2400/min
    ({"X-MBX-USED-WEIGHT-1M": "2160"}, "/api/v3/klines", 1 - 2160 / 6000),                # Binance spot: 6000/min
    ({"gw-ratelimit-remaining": "500", "gw-ratelimit-limit": "2000"}, "/api/v1/orders", 0.25),  # KuCoin
])
def test_limit_headers_slow_the_rate_as_the_quota_shrinks(headers, endpoint, remaining):
    quota = quota_from_headers(headers, endpoint, now=NOON)
    assert quota is not None and quota.remaining == pytest.approx(remaining)
    clock = FakeClock()
    meter = _meter(clock, rate=40, slow_below=0.5, min_factor=0.05)
    meter.record(endpoint, 1, "ok", headers)
    expected = 40 * min(1.0, remaining / 0.5)  # full speed above half the quota, then in proportion
    assert meter.rate == pytest.approx(expected)
    meter.record(endpoint, 1, "ok", {})  # a response without headers keeps the last reading
    assert meter.rate == pytest.approx(expected)
    assert quota_from_headers({"Content-Type": "application/json"}) is None


def test_an_exhausted_bybit_quota_pauses_until_its_reset_and_recovers():
    clock = FakeClock()
    meter = _meter(clock, rate=40)
    reset_ms = int((NOON + clock.now + 3.0) * 1000)
    meter.record("/v5/order/create", 1, "ok", {"X-Bapi-Limit-Status": "0", "X-Bapi-Limit": "10",
                                               "X-Bapi-Limit-Reset-Timestamp": str(reset_ms)})
    assert meter.rate == pytest.approx(40 * 0.05)  # the floor
    start = clock.now
    assert _times(meter, 1, clock=clock)[0] >= start + 3.0 - 1e-6
    meter.record("/v5/order/create", 1, "ok", {"X-Bapi-Limit-Status": "9", "X-Bapi-Limit": "10"})
    assert meter.rate == 40


# ------------------------------------------------------------------------------------------------ budgets
def _calls(meter, n):
    async def main():
        for _ in range(n):
            await meter.acquire("/v5/market/kline", 1)
            meter.record("/v5/market/kline", 1, "ok")

    asyncio.run(main())


def test_budget_warns_at_50_80_100_percent_once_and_refuses_past_the_hard_limit():
    events = []
    budget = Budget(calls_per_day=10, callbacks=[events.append])
    clock = FakeClock()
    meter = _meter(clock, rate=1000, budget=budget)
    with pytest.warns(BudgetWarning) as caught:
        _calls(meter, 10)
    assert [(e.threshold, e.used) for e in events] == [(50, 5), (80, 8), (100, 10)]
    assert [str(w.message) for w in caught] == [e.message for e in events]
    assert all(e.key_id == "acct-1" and e.limit == "calls_per_day" and e.period == "2025-03-14" for e in events)
    with pytest.raises(BudgetExceededError) as info:
        _calls(meter, 1)
    assert isinstance(info.value, RateLimitError)
    message = str(info.value)
    assert "'acct-1'" in message and "calls_per_day=10" in message and "hard_limit=False" in message
    assert meter.counts["calls"] == 10 and len(events) == 3  # the refused call was never made nor recorded


def test_budget_hard_limit_off_or_override_lets_calls_through_and_a_new_day_starts_over():
    events = []
    clock = FakeClock()
    meter = _meter(clock, rate=1000, budget=Budget(calls_per_day=4, hard_limit=False, callbacks=[events.append]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BudgetWarning)
        _calls(meter, 7)
        assert [e.threshold for e in events] == [50, 80, 100]  # once each, nothing more past 100 %
        meter = _meter(clock, rate=1000, budget=Budget(calls_per_day=2, callbacks=[events.append]), over_budget=True)
        _calls(meter, 3)
        events.clear()
        clock.now += 86400  # the next UTC day
        _calls(meter, 1)
    assert [(e.threshold, e.used, e.period) for e in events] == [(50, 1, "2025-03-15")]


def test_money_budget_counts_cost_per_call_and_month_limits_span_days():
    clock = FakeClock()
    budget = Budget(money_per_day=0.05, calls_per_month=8, cost_per_call=0.01)
    meter = _meter(clock, rate=1000, budget=budget)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BudgetWarning)
        _calls(meter, 5)  # 5 x 0.01 = the whole day's money
        with pytest.raises(BudgetExceededError, match=r"money_per_day=0\.05"):
            _calls(meter, 1)
        clock.now += 86400
        _calls(meter, 3)  # a new day, but the month allows 8 calls in all
        with pytest.raises(BudgetExceededError, match="calls_per_month=8"):
            _calls(meter, 1)
    assert [r["cost"] for r in meter.history] == [0.01] * 8


def test_a_seeded_budget_continues_where_the_ledger_left_it():
    events = []
    budget = Budget(calls_per_day=10, callbacks=[events.append])
    budget.seed("day", calls=6, now=NOON)  # a restart after 6 calls today: 50 % was warned already
    clock = FakeClock()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BudgetWarning)
        _calls(_meter(clock, rate=1000, budget=budget), 4)
    assert [(e.threshold, e.used) for e in events] == [(80, 8), (100, 10)]
    with pytest.raises(BudgetExceededError):
        _calls(_meter(clock, rate=1000, budget=budget), 1)


def test_budget_config_errors_name_the_value():
    with pytest.raises(ConfigError, match="at least one"):
        Budget()
    with pytest.raises(ConfigError, match="calls_per_day=-5"):
        Budget(calls_per_day=-5)
    with pytest.raises(ConfigError, match="cost_per_call"):
        Budget(money_per_month=10)


# ------------------------------------------------------------------------------------------------ sink
def test_rows_are_buffered_then_flushed_and_kept_when_the_sink_fails():
    batches = []
    clock = FakeClock()
    meter = _meter(clock, rate=1000, sink=batches.append, flush_rows=3, flush_seconds=1e9)
    _calls(meter, 7)
    assert [len(b) for b in batches] == [3, 3] and meter.pending == 1
    assert meter.flush() == 1 and sum(len(b) for b in batches) == 7
    row = batches[0][0]
    assert set(row) == {"key_id", "exchange", "endpoint", "weight", "ts", "status", "cost"}
    assert row["key_id"] == "acct-1" and row["endpoint"] == "/v5/market/kline" and row["status"] == "ok"

    def broken(rows):
        raise OSError("disk full")

    meter.sink = broken
    _calls(meter, 3)  # the failing sink is logged, the calls go on
    assert meter.pending == 3
    with pytest.raises(OSError):
        meter.flush()
    meter.sink = batches.append
    assert meter.flush() == 3


# ------------------------------------------------------------------------------------------------ ccxt hook
def test_attached_meter_records_every_http_request_with_ccxt_weights_and_honours_a_429():
    btc = qlab.load_sample("BTC/USDT:USDT", "1h").iloc[:50]
    sleeps = []

    async def no_sleep(seconds):
        sleeps.append(seconds)

    async def main():
        async with FakeExchange() as fake:
            fake.add_candles("BTC/USDT:USDT", "1h", btc)
            client = fake.point(ccxt.bybit({"enableRateLimit": True}))
            meter = UsageMeter.for_client(client, "acct-1", cooldown=5)
            try:
                async with meter.attached(client):
                    assert client.enableRateLimit is False  # the meter replaces ccxt's limiter
                    await client.load_markets()
                    fake.inject("/v5/market/kline", "429", retry_after=0.5)
                    await call_with_retry(client.fetch_ohlcv, "BTC/USDT:USDT", "1h", None, 10, sleep=no_sleep)
                    rate_after = meter.rate
                assert client.enableRateLimit is True and "fetch" not in client.__dict__  # detached
                return fake.requests, list(meter.history), rate_after, meter.base_rate
            finally:
                await client.close()

    requests, rows, rate_after, base = asyncio.run(main())
    assert base == 1000 / ccxt.bybit().rateLimit  # ccxt's model: 50 tokens/s for Bybit
    assert [r["endpoint"] for r in rows] == [r.path for r in requests]  # one row per request the server saw
    assert all(r["weight"] == 5 for r in rows)  # ccxt's cost of Bybit's market endpoints
    kline = [(req, row) for req, row in zip(requests, rows, strict=True) if req.path == "/v5/market/kline"]
    assert [row["status"] for _, row in kline] == ["RateLimitError", "ok"]
    assert kline[1][0].time - kline[0][0].time >= 0.5 - 0.01  # the meter itself waited out the Retry-After
    assert rate_after == base / 2


def test_the_meter_slows_down_as_the_fakes_limit_headers_count_its_quota_down():
    btc = qlab.load_sample("BTC/USDT:USDT", "1h").iloc[:50]
    limit = 30

    async def main():
        async with FakeExchange(rate_window=(limit, 1_000_000.0)) as fake:  # no window ends during the test
            fake.add_candles("BTC/USDT:USDT", "1h", btc)
            client = fake.point(ccxt.bybit())
            meter = UsageMeter.for_client(client, "acct-1", slow_below=0.5, min_factor=0.2)
            seen = []
            try:
                async with meter.attached(client):
                    await client.load_markets()
                    for _ in range(limit - 1 - fake.count("/v5/")):  # down to 1 left (at 0 it pauses till the reset)
                        await client.fetch_ohlcv("BTC/USDT:USDT", "1h", None, 5)
                        seen.append((fake.count("/v5/"), meter.rate))
            finally:
                await client.close()
            return seen, meter.base_rate

    seen, base = asyncio.run(main())
    for used, rate in seen:
        left = max(limit - used, 0) / limit
        assert rate == pytest.approx(base * max(0.2, min(1.0, left / 0.5))), (used, rate)
    rates = [rate for _, rate in seen]
    assert rates[0] == base and rates == sorted(rates, reverse=True)  # full speed above half the quota, then slower
    assert rates[-1] == pytest.approx(base * 0.2)  # the floor, with 1 of 30 left

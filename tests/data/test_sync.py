"""Historical candle sync against the loopback fake exchange: exact rows, incremental, resumable, fault-tolerant."""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import warnings

import ccxt.async_support as ccxt
import pandas as pd
import pytest

import qlab
from qlab.data.store import Store
from qlab.data.sync import sync, sync_candles
from qlab.errors import AuthError, ExchangeDownError
from qlab.exchange.fake import FakeExchange
from qlab.exchange.retry import call_with_retry

BTC, ETH = "BTC/USDT:USDT", "ETH/USDT:USDT"
KLINE = "/v5/market/kline"


def _served() -> dict[str, pd.DataFrame]:
    btc = qlab.load_sample(BTC, "1h")
    eth = qlab.load_sample("ETH/USDT", "1h").iloc[-900:].copy()
    eth.index = btc.index[-900:]  # real ETH bars served over BTC's last 900 hours (ETH starts 16 bars later)
    return {BTC: btc, ETH: eth}


class Sleeps:
    """A sleep that returns at once and records what it was asked to wait."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def _run(test, served=None):
    served = served if served is not None else _served()

    async def main():
        async with FakeExchange() as fake:
            for symbol, frame in served.items():
                fake.add_candles(symbol, "1h", frame)
            client = fake.point(ccxt.bybit({"enableRateLimit": False, "timeout": 2000}))
            try:
                return await test(fake, client, served)
            finally:
                await client.close()

    return asyncio.run(main())


def _retry(sleeps=None):
    return {"sleep": sleeps or Sleeps(), "rng": random.Random(0)}


def _since(served):
    return min(f.index[0] for f in served.values())


def _until(served):
    return max(f.index[-1] for f in served.values()) + pd.Timedelta("1h")


def _assert_stored(store, served):
    for symbol, frame in served.items():
        got = store.candles("bybit", symbol, "1h")
        assert not got.index.duplicated().any()
        pd.testing.assert_frame_equal(got, frame[list(got.columns)], check_freq=False, check_names=False)


def test_multi_symbol_sync_stores_exactly_the_served_candles_and_a_second_sync_fetches_nothing(tmp_path):
    async def test(fake, client, served):
        with Store(tmp_path / "s.duckdb") as store:
            first = await sync_candles(client, store, "bybit", [BTC, ETH], "1h", _since(served), _until(served),
                                       page_limit=200, concurrency=2, retry=_retry())
            calls = fake.count(KLINE)
            again = await sync_candles(client, store, "bybit", [BTC, ETH], "1h", _since(served), _until(served),
                                       page_limit=200, retry=_retry())
            _assert_stored(store, served)
            return first, calls, again, fake.count(KLINE) - calls

    first, calls, again, second_calls = _run(test)
    served = _served()
    assert first == {BTC: len(served[BTC]), ETH: len(served[ETH])}
    assert calls == 5 + 5  # 200-bar windows over 916 hours for each symbol
    assert again == {BTC: 0, ETH: 0}
    assert second_calls == 1  # only ETH's 16 empty hours before its first bar are asked again


def test_second_sync_with_until_at_the_last_bar_makes_no_kline_request(tmp_path):
    served = {BTC: qlab.load_sample(BTC, "1h")}

    async def test(fake, client, served):
        with Store(tmp_path / "s.duckdb") as store:
            await sync_candles(client, store, "bybit", [BTC], "1h", _since(served), _until(served), retry=_retry())
            before = fake.count(KLINE)
            again = await sync_candles(client, store, "bybit", [BTC], "1h", _since(served), _until(served), retry=_retry())
            return before, again, fake.count(KLINE) - before

    before, again, after = _run(test, served)
    assert before == 1  # one page of 916 bars (limit 1000) reaches until
    assert again == {BTC: 0} and after == 0


def test_interrupted_sync_resumes_to_exactly_the_served_candles(tmp_path):
    served = {BTC: qlab.load_sample(BTC, "1h")}

    async def test(fake, client, served):
        with Store(tmp_path / "s.duckdb") as store:
            fake.inject(KLINE, "auth", times=1)  # fault the 3rd kline request: 2 whole pages are stored first
            fake.faults[-1].times = 0
            original = fake._take_fault
            seen = {"n": 0}

            def take(path):
                if path.startswith(KLINE):
                    seen["n"] += 1
                    if seen["n"] == 3:
                        fake.faults[-1].times = 1
                return original(path)

            fake._take_fault = take
            with pytest.raises(AuthError):
                await sync_candles(client, store, "bybit", [BTC], "1h", _since(served), _until(served),
                                   page_limit=100, retry=_retry())
            partial = len(store.candles("bybit", BTC, "1h"))
            resumed = await sync_candles(client, store, "bybit", [BTC], "1h", _since(served), _until(served),
                                         page_limit=100, retry=_retry())
            _assert_stored(store, served)
            return partial, resumed

    partial, resumed = _run(test, served)
    assert partial == 200
    assert resumed == {BTC: len(served[BTC]) - 200}


def test_cancelled_sync_keeps_whole_pages_and_resumes(tmp_path):
    served = {BTC: qlab.load_sample(BTC, "1h")}

    async def test(fake, client, served):
        with Store(tmp_path / "s.duckdb") as store:
            fake.inject(KLINE, "slow", times=100, delay=0.05)
            task = asyncio.ensure_future(sync_candles(client, store, "bybit", [BTC], "1h", _since(served),
                                                      _until(served), page_limit=50, retry=_retry()))
            while fake.count(KLINE) < 4:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            partial = len(store.candles("bybit", BTC, "1h"))
            fake.clear_faults()
            await sync_candles(client, store, "bybit", [BTC], "1h", _since(served), _until(served), page_limit=50,
                               retry=_retry())
            _assert_stored(store, served)
            return partial

    partial = _run(test, served)
    assert partial % 50 == 0 and 0 < partial < len(served[BTC])


@pytest.mark.parametrize(("kind", "options"), [("429", {"retry_after": 3}), ("500", {}), ("503", {}),
                                                ("slow", {"delay": 1.0}), ("bad_json", {}), ("disconnect", {})])
def test_each_fault_is_survived_with_nothing_lost(tmp_path, kind, options):
    served = {BTC: qlab.load_sample(BTC, "1h")}
    sleeps = Sleeps()

    async def test(fake, client, served):
        client.timeout = 400
        with Store(tmp_path / "s.duckdb") as store:
            await client.load_markets()
            fake.inject(KLINE, kind, times=2, **options)
            written = await sync_candles(client, store, "bybit", [BTC], "1h", _since(served), _until(served),
                                         page_limit=300, retry=_retry(sleeps))
            _assert_stored(store, served)
            return written, [r.fault for r in fake.requests if r.fault]

    written, faults = _run(test, served)
    assert written == {BTC: len(served[BTC])}
    assert faults == [kind] * 2
    if kind == "429":
        assert sleeps.calls == [3, 3]  # the Retry-After, not the shorter jittered backoff
    elif kind != "disconnect":  # aiohttp resends once by itself on a dropped keep-alive connection
        assert len(sleeps.calls) == 2 and all(0 <= s <= 1.0 for s in sleeps.calls)


def test_auth_error_is_raised_after_exactly_one_request_and_never_retried(tmp_path):
    served = {BTC: qlab.load_sample(BTC, "1h")}
    sleeps = Sleeps()

    async def test(fake, client, served):
        with Store(tmp_path / "s.duckdb") as store:
            await client.load_markets()  # before the keys: with keys ccxt also asks a private currencies endpoint
            client.apiKey, client.secret = "KEY-abcdef123456", "SECRET-zyxw987654"
            fake.inject(KLINE, "auth", times=5)
            with pytest.raises(AuthError) as info:
                await sync_candles(client, store, "bybit", [BTC], "1h", _since(served), _until(served),
                                   retry=_retry(sleeps))
            return fake.count(KLINE), str(info.value)

    count, message = _run(test, served)
    assert count == 1 and sleeps.calls == []
    assert "KEY-abcdef123456" not in message and "SECRET-zyxw987654" not in message and "bybit" in message


def test_persistent_faults_give_up_with_a_qlab_error_after_max_tries():
    sleeps = Sleeps()

    async def test(fake, client, served):
        await client.load_markets()
        fake.inject(KLINE, "503", times=10)
        with pytest.raises(ExchangeDownError, match="after every retry"):
            await call_with_retry(client.fetch_ohlcv, BTC, "1h", None, 5, max_tries=3, sleep=sleeps,
                                  rng=random.Random(1))
        return fake.count(KLINE)

    assert _run(test, {BTC: qlab.load_sample(BTC, "1h").iloc[:10]}) == 3
    assert len(sleeps.calls) == 2 and sleeps.calls[1] <= 1.0


def test_holes_in_the_store_are_refilled_and_unfinished_bars_are_never_stored(tmp_path):
    served = {BTC: qlab.load_sample(BTC, "1h")}
    frame = served[BTC]

    async def test(fake, client, served):
        with Store(tmp_path / "s.duckdb") as store:
            await sync_candles(client, store, "bybit", [BTC], "1h", _since(served), _until(served), retry=_retry())
            lo, hi = frame.index[300], frame.index[420]
            store.sql("DELETE FROM candles WHERE ts >= ? AND ts < ?", [lo.tz_localize(None), hi.tz_localize(None)])
            store.sql("DELETE FROM candles WHERE ts = ?", [frame.index[600].tz_localize(None)])
            assert len(store.candles("bybit", BTC, "1h")) == len(frame) - 121
            before = fake.count(KLINE)
            refill = await sync_candles(client, store, "bybit", [BTC], "1h", _since(served), _until(served),
                                        page_limit=50, retry=_retry())
            _assert_stored(store, served)
            calls = fake.count(KLINE) - before
            # "now" inside the served range: the bar still forming is not stored
            store.delete_candles("bybit", BTC, "1h")
            now = frame.index[100] + pd.Timedelta("30min")
            early = await sync_candles(client, store, "bybit", [BTC], "1h", _since(served), None, now=now,
                                       retry=_retry())
            last = store.candles("bybit", BTC, "1h").index[-1]
            return refill, calls, early, last

    refill, calls, early, last = _run(test, served)
    assert refill == {BTC: 121}
    assert calls == 3 + 1  # 120 bars in 3 pages of 50, plus the single missing bar
    assert early == {BTC: 100} and last == frame.index[99]


def test_sync_wrapper_runs_with_its_own_event_loop(tmp_path):
    served = {BTC: qlab.load_sample(BTC, "1h").iloc[:300]}
    loop = asyncio.new_event_loop()
    fake = FakeExchange()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(fake.start(), loop).result(10)
        fake.add_candles(BTC, "1h", served[BTC])
        with Store(tmp_path / "s.duckdb") as store:
            written = sync("bybit", [BTC], "1h", _since(served), _until(served), store=store,
                           client_factory=lambda: fake.point(ccxt.bybit({"enableRateLimit": False})))
            _assert_stored(store, served)
        assert written == {BTC: 300}
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def test_cli_data_sync_builds_a_public_client_and_stores_the_candles(tmp_path, monkeypatch):
    from qlab import cli
    from qlab.exchange import ccxt_client

    served = {BTC: qlab.load_sample(BTC, "1h").iloc[:120]}
    loop = asyncio.new_event_loop()
    fake = FakeExchange()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    made = []

    def make_client(exchange_id, credentials, mode):
        made.append((exchange_id, dict(credentials), mode))
        return fake.point(ccxt.bybit({"enableRateLimit": False}))

    monkeypatch.setattr(ccxt_client, "make_client", make_client)
    try:
        asyncio.run_coroutine_threadsafe(fake.start(), loop).result(10)
        fake.add_candles(BTC, "1h", served[BTC])
        code = cli.main(["--store", str(tmp_path / "s.duckdb"), "data", "sync", "--exchange", "bybit", "--symbols", BTC,
                         "--timeframe", "1h", "--since", str(_since(served)), "--until", str(_until(served)), "--quiet"])
        assert code == 0 and made == [("bybit", {}, "live")]
        with Store(tmp_path / "s.duckdb") as store:
            _assert_stored(store, served)
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


# ------------------------------------------------------------------------------------------------ rate limits and budgets
def _three_symbols() -> dict[str, pd.DataFrame]:
    served = _served()
    xrp = qlab.load_sample("XRP/USDT:USDT", "1h").copy()
    xrp.index = served[BTC].index[-len(xrp):]  # the 100 real XRP perpetual bars served over BTC's last 100 hours
    return {**served, "XRP/USDT:USDT": xrp}


def _max_in_any_second(times: list[float]) -> int:
    """The most requests inside any sliding one-second window (a plain two-pointer count)."""
    times, best, lo = sorted(times), 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def test_concurrent_sync_stays_under_the_configured_rate_at_the_server_and_the_ledger_counts_every_request(tmp_path):
    from qlab.data.usage import StoreUsageSink
    from qlab.exchange.ratelimit import UsageMeter

    served = _three_symbols()
    symbols = list(served)

    async def test(fake, client, served):
        with Store(tmp_path / "free.duckdb") as store:  # control: the same kind of sync without a meter is far faster
            await sync_candles(client, store, "bybit", symbols, "1h", _since(served), _until(served), page_limit=50,
                               concurrency=3, retry=_retry())
            unmetered = max(fake.per_second("/").values())
        fake.requests.clear()
        fresh = fake.point(ccxt.bybit({"enableRateLimit": False}))  # loads the markets again, through the meter
        try:
            with Store(tmp_path / "s.duckdb") as store:
                meter = UsageMeter("public", "bybit", rate=20, sink=StoreUsageSink(store))
                await sync_candles(fresh, store, "bybit", symbols, "1h", _since(served), _until(served), page_limit=100,
                                   concurrency=3, meter=meter, retry=_retry())
                _assert_stored(store, served)
                return unmetered, list(fake.requests), fake.per_second("/"), store.usage("public")
        finally:
            await fresh.close()

    unmetered, requests, per_second, ledger = _run(test, served)
    assert unmetered > 21  # the check below can fail
    assert len(requests) >= 30  # 11 markets pages plus 22 kline pages: over 1.5 s at 20/s
    assert max(per_second.values()) <= 20 + 1  # the rate plus the one-token burst, counted at the server
    assert _max_in_any_second([r.time for r in requests]) <= 20 + 2  # plus one for network jitter
    assert len(ledger) == len(requests)  # one ledger row per request the server saw
    assert sorted(ledger["endpoint"]) == sorted(r.path for r in requests)
    assert set(ledger["status"]) == {"ok"} and set(ledger["key_id"]) == {"public"}


def test_a_429_with_retry_after_slows_the_metered_sync(tmp_path):
    from qlab.data.usage import StoreUsageSink
    from qlab.exchange.ratelimit import UsageMeter

    served = {BTC: qlab.load_sample(BTC, "1h")}

    async def test(fake, client, served):
        await client.load_markets()
        fake.requests.clear()
        with Store(tmp_path / "s.duckdb") as store:
            meter = UsageMeter("public", "bybit", rate=20, cooldown=30, sink=StoreUsageSink(store))
            fake.inject(KLINE, "429", retry_after=0.6)
            await sync_candles(client, store, "bybit", [BTC], "1h", _since(served), _until(served), page_limit=100,
                               meter=meter, retry=_retry())  # call_with_retry's own sleep returns at once
            _assert_stored(store, served)
            return list(fake.requests), store.usage("public"), meter.rate

    requests, ledger, rate = _run(test, served)
    times = [r.time for r in requests]
    assert requests[0].fault == "429" and list(ledger["status"]) == ["RateLimitError"] + ["ok"] * (len(requests) - 1)
    assert times[1] - times[0] >= 0.6 - 0.02  # the meter waited out the Retry-After
    gaps = [b - a for a, b in itertools.pairwise(times[1:])]
    assert len(gaps) >= 8 and min(gaps) >= 1 / 10 - 0.02  # then 10/s (halved), not 20/s
    assert rate == 10


def test_budget_warns_refuses_past_the_hard_limit_and_survives_a_restart(tmp_path):
    from qlab.errors import BudgetExceededError
    from qlab.exchange.ratelimit import Budget, BudgetWarning

    served = {BTC: qlab.load_sample(BTC, "1h")}
    loop = asyncio.new_event_loop()
    fake = FakeExchange()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    events = []

    def run(**kw):
        return sync("bybit", [BTC], "1h", _since(served), _until(served), store=store, page_limit=50, rate=200,
                    key_id="alice", retry=_retry(),
                    client_factory=lambda: fake.point(ccxt.bybit({"enableRateLimit": False})), **kw)

    try:
        asyncio.run_coroutine_threadsafe(fake.start(), loop).result(10)
        fake.add_candles(BTC, "1h", served[BTC])
        with Store(tmp_path / "s.duckdb") as store:
            with pytest.warns(BudgetWarning), pytest.raises(BudgetExceededError) as info:
                run(budget=Budget(calls_per_day=15, callbacks=[events.append]))
            first = (fake.count("/"), len(store.usage("alice")), len(store.candles("bybit", BTC, "1h")))
            # a restart: a fresh Budget with the same limit continues from the ledger and refuses at once
            with pytest.raises(BudgetExceededError):
                run(budget=Budget(calls_per_day=15, callbacks=[events.append]))
            second = fake.count("/")
            with warnings.catch_warnings():
                warnings.simplefilter("error", BudgetWarning)  # every threshold was warned already today
                written = run(budget=Budget(calls_per_day=15, callbacks=[events.append]), over_budget=True)
            _assert_stored(store, served)
            ledger = len(store.usage("alice"))
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    message = str(info.value)
    assert "'alice'" in message and "calls_per_day=15" in message
    assert [(e.threshold, e.used) for e in events] == [(50, 8), (80, 12), (100, 15)]
    markets_calls = first[0] - first[2] // 50  # requests that were not kline pages
    assert first[0] == 15 and first[1] == 15  # 15 calls made, 15 in the ledger; the 16th was refused before sending
    assert first[2] == 50 * (15 - markets_calls) and markets_calls > 0
    assert second == first[0]  # the restarted run sent nothing
    assert written == {BTC: len(served[BTC]) - first[2]}
    assert ledger == fake.count("/")

"""Failover between two loopback fake exchanges serving the same real candles: outages, staleness, recovery, provenance."""

from __future__ import annotations

import asyncio
import random

import ccxt.async_support as ccxt
import numpy as np
import pandas as pd
import pytest

import qlab
from qlab.data.failover import Failover
from qlab.data.quality import cross_source_check
from qlab.data.store import Store
from qlab.errors import BudgetExceededError, ExchangeDownError
from qlab.exchange.fake import FakeExchange

SYMBOL, TF = "BTC/USDT", "1h"
KLINE = "/v5/market/kline"
N = 600


class Sleeps:
    """A sleep that returns at once (retry backoff without waiting)."""

    async def __call__(self, seconds: float) -> None:
        return None


RETRY = {"max_tries": 2, "sleep": Sleeps(), "rng": random.Random(0)}


def _served() -> pd.DataFrame:
    return qlab.load_sample(SYMBOL, TF, "binance").iloc[-N:]  # real Binance spot hours, no gap in this stretch


def _window(served):
    return served.index[0], served.index[-1] + pd.Timedelta(TF)


def _fault_from(fake, nth: int, kind: str, times: int) -> None:
    """Make the fake fail `times` kline requests with `kind`, starting at its `nth` kline request."""
    fault = fake.inject(KLINE, kind, times=0)
    original, seen = fake._take_fault, {"n": 0}

    def take(path):
        if path.startswith(KLINE):
            seen["n"] += 1
            if seen["n"] == nth:
                fault.times = times
        return original(path)

    fake._take_fault = take


def _run(test, primary_frame=None):
    served = _served()

    async def main():
        async with FakeExchange() as fa, FakeExchange() as fb:
            fa.add_candles(SYMBOL, TF, served if primary_frame is None else primary_frame)
            fb.add_candles(SYMBOL, TF, served)
            bybit = fa.point(ccxt.bybit({"enableRateLimit": False, "timeout": 2000}))
            binance = fb.point(ccxt.binance({"enableRateLimit": False, "timeout": 2000}))
            try:
                return await test(fa, fb, bybit, binance, served)
            finally:
                await bybit.close()
                await binance.close()

    return asyncio.run(main())


def _check_stored(store, served, expected_sources):
    got = store.candles("bybit", SYMBOL, TF, with_source=True)
    assert not got.index.duplicated().any()
    assert len(got) == len(served)  # no gap: every served bar, exactly once
    pd.testing.assert_frame_equal(got.drop(columns="source"), served, check_freq=False, check_names=False)
    assert list(got["source"]) == expected_sources


@pytest.mark.parametrize(("kind", "per_try"), [("503", 1), ("429", 1), ("disconnect", 2)])  # aiohttp resends once on a
def test_outage_on_the_primary_fails_over_and_switches_back_after_a_probe(tmp_path, kind, per_try):  # dropped keep-alive
    async def test(fa, fb, bybit, binance, served):
        # chunk 1 (bars 0-99): bybit, 2 pages; chunk 2: page 1 from bybit, then bybit fails both tries of page 2 ->
        # binance fills bars 150-199; chunk 3: the probe of bybit is faulted too -> binance; chunk 4 on: bybit is back
        _fault_from(fa, nth=4, kind=kind, times=3 * per_try)
        failover = Failover([("bybit", bybit), ("binance", binance)], probe_every=0)
        with Store(tmp_path / "s.duckdb") as store:
            result = await failover.sync(store, "bybit", [SYMBOL], TF, *_window(served), chunk_bars=100, page_limit=50,
                                         retry=RETRY)
            _check_stored(store, served, ["bybit"] * 150 + ["binance"] * 150 + ["bybit"] * 300)
            summary = store.sources("bybit", SYMBOL, TF)
        return result, summary, fb.count("/api/v3/klines")

    result, summary, binance_calls = _run(test)
    assert result.written == {"bybit": {SYMBOL: 450}, "binance": {SYMBOL: 150}}
    assert [(e.source, e.kind) for e in result.events] == [
        ("bybit", "switched"), ("bybit", "down"), ("binance", "switched"), ("bybit", "recovered"), ("bybit", "switched")]
    assert binance_calls == 1 + 2  # page 2 of chunk 2, then chunk 3 in two pages
    assert list(summary["source"]) == ["bybit", "binance", "bybit"] and list(summary["rows"]) == [150, 150, 300]
    assert not result.incomplete


def test_a_stale_primary_hands_over_to_the_next_source_and_stays_off_while_its_probe_finds_no_new_bar(tmp_path):
    served = _served()
    stale_primary = served.iloc[:351]  # bybit stops publishing after bar 350

    async def test(fa, fb, bybit, binance, served):
        failover = Failover([("bybit", bybit), ("binance", binance)], stale_bars=3, probe_every=0)
        with Store(tmp_path / "s.duckdb") as store:
            result = await failover.sync(store, None, [SYMBOL], TF, *_window(served), chunk_bars=100, retry=RETRY)
            _check_stored(store, served, ["bybit"] * 351 + ["binance"] * 249)
        return result, failover

    result, failover = _run(test, stale_primary)
    assert [(e.source, e.kind) for e in result.events][:3] == [("bybit", "switched"), ("bybit", "stale"), ("binance", "switched")]
    assert failover.states["bybit"].status == "stale" and "no bar at or after" in failover.states["bybit"].reason


def test_a_spent_budget_on_the_primary_fails_over(tmp_path):
    async def test(fa, fb, bybit, binance, served):
        calls = {"n": 0}
        original = bybit.fetch_ohlcv

        async def budgeted(*args, **kw):  # what qlab.exchange.ratelimit's meter raises once a key's budget is spent
            calls["n"] += 1
            if calls["n"] > 2:
                raise BudgetExceededError("key-1234 spent its budget of 2 calls a day; raise it or wait")
            return await original(*args, **kw)

        bybit.fetch_ohlcv = budgeted
        failover = Failover([("bybit", bybit), ("binance", binance)], probe_every=3600)
        with Store(tmp_path / "s.duckdb") as store:
            result = await failover.sync(store, None, [SYMBOL], TF, *_window(served), chunk_bars=100, page_limit=100,
                                         retry=RETRY)
            _check_stored(store, served, ["bybit"] * 200 + ["binance"] * 400)
        return result

    result = _run(test)
    assert ("bybit", "down") in [(e.source, e.kind) for e in result.events]
    assert "budget" in next(e.detail for e in result.events if e.kind == "down")


def test_every_source_down_raises_and_keeps_what_was_stored(tmp_path):
    async def test(fa, fb, bybit, binance, served):
        _fault_from(fa, nth=2, kind="503", times=100)
        fb.inject("/api/v3/klines", "503", times=100)
        failover = Failover([("bybit", bybit), ("binance", binance)], probe_every=0)
        with Store(tmp_path / "s.duckdb") as store:
            with pytest.raises(ExchangeDownError, match=r"every source failed.*bybit.*binance"):
                await failover.sync(store, None, [SYMBOL], TF, *_window(served), chunk_bars=100, page_limit=50, retry=RETRY)
            return len(store.candles("bybit", SYMBOL, TF))

    assert _run(test) == 50  # the one page bybit served before the outage


def test_cross_source_check_flags_exactly_the_bars_beyond_the_tolerance_on_real_spot_and_perp_hours():
    spot = qlab.load_sample("BTC/USDT", "1h", "binance")
    perp = qlab.load_sample("BTC/USDT:USDT", "1h", "binance")
    tolerance = 0.001  # 10 bps: the perp/spot basis crosses it now and then
    acc = cross_source_check(perp, spot, tolerance)
    common = perp.index.intersection(spot.index)
    flagged = []
    for t in common:  # plain loop reference
        devs = [abs(perp.at[t, c] - spot.at[t, c]) / abs(spot.at[t, c]) for c in ("close", "high", "low")]
        if max(devs) > tolerance:
            flagged.append(t)
    assert acc["common_bars"] == len(common) > 800
    assert 0 < len(flagged) < len(common)
    assert list(acc["disagreements"]["timestamp"]) == flagged
    # a hand-made disagreement: one close moved by 1 % is flagged, a 0.05 % move is not
    b = spot.iloc[:100].copy()
    b.iloc[10, b.columns.get_loc("close")] *= 1.01
    b.iloc[20, b.columns.get_loc("close")] *= 1.0005
    b["high"] = np.maximum(b["high"], b["close"])
    got = cross_source_check(b, spot.iloc[:100], 0.005)["disagreements"]["timestamp"]
    assert list(got) == [spot.index[10]]


def test_provenance_column_is_added_to_older_v2_stores_once_and_defaults_to_the_exchange(tmp_path):
    path = tmp_path / "old.duckdb"
    served = _served().iloc[:10]
    with Store(path) as store:
        store._rows("ALTER TABLE candles DROP COLUMN source")  # a v2 store made before provenance existed
        store._has_source = False
        store._rows("INSERT INTO candles SELECT 'bybit', ?, ?, ts, open, high, low, close, volume FROM (SELECT "
                    "TIMESTAMP '2020-01-01' AS ts, 1.0 AS open, 2.0 AS high, 0.5 AS low, 1.5 AS close, 3.0 AS volume)",
                    [SYMBOL, TF])
    with Store(path, read_only=True) as store:  # read-only: not migrated, sources read as missing
        assert store.candles("bybit", SYMBOL, TF, with_source=True)["source"].isna().all()
    for _ in range(2):  # the migration runs once, then is a no-op
        with Store(path) as store:
            assert store.schema_version == 2
    with Store(path) as store:
        store.write_candles(served, "bybit", SYMBOL, TF)
        store.write_candles(served.iloc[5:], "bybit", SYMBOL, TF, source="binance")
        got = store.candles("bybit", SYMBOL, TF, with_source=True)
    assert got["source"].isna().sum() == 1 and list(got["source"].iloc[1:]) == ["bybit"] * 5 + ["binance"] * 5


def test_cli_sync_watchlist_fills_the_gaps_with_failover_and_coverage_reaches_100(tmp_path, monkeypatch, capsys):
    import threading

    from qlab.cli import main
    from qlab.exchange import ccxt_client
    from qlab.exchange import retry as retry_module

    served = _served().iloc[:300]
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fakes = {"bybit": FakeExchange(), "binance": FakeExchange()}
    for fake in fakes.values():
        asyncio.run_coroutine_threadsafe(fake.start(), loop).result(10)
        fake.add_candles(SYMBOL, TF, served)
    fakes["bybit"].inject(KLINE, "503", times=1000)  # the primary is down for the whole sync

    def make_client(exchange_id, credentials, mode):
        return fakes[exchange_id].point(getattr(ccxt, exchange_id)({"enableRateLimit": False, "timeout": 2000}))

    monkeypatch.setattr(ccxt_client, "make_client", make_client)
    monkeypatch.setattr(retry_module, "_RNG", type("NoJitter", (), {"uniform": staticmethod(lambda a, b: 0.0)})())  # no backoff wait
    since, until = _window(served)
    watch = tmp_path / "watch.yaml"
    watch.write_text(f"entries:\n  - {{exchange: bybit, fallback: [binance], symbols: ['{SYMBOL}'], timeframes: [{TF}], "
                     f"since: '{since.isoformat()}', until: '{until.isoformat()}'}}\n")
    store = str(tmp_path / "s.duckdb")
    Store(store).close()  # an empty store
    try:
        assert main(["--store", store, "data", "coverage", "--watchlist", str(watch), "--require-full"]) == 1
        assert main(["--store", store, "data", "sync", "--watchlist", str(watch)]) == 0
        assert main(["--store", store, "data", "coverage", "--watchlist", str(watch), "--require-full"]) == 0
    finally:
        for fake in fakes.values():
            asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    out = capsys.readouterr().out
    assert "bybit 1h: 300 new rows (binance: 300)" in out and "bybit down" in out and "coverage now 100.0000 %" in out
    with Store(store) as s:
        _check_stored(s, served, ["binance"] * 300)


def test_three_sources_bybit_and_binance_down_kucoin_serves_then_bybit_comes_back(tmp_path):
    """bybit -> binance -> kucoin against three fakes speaking each exchange's REST (the fake's KuCoin paging)."""
    served = _served()

    async def main():
        async with FakeExchange() as fa, FakeExchange() as fb, FakeExchange() as fk:
            for fake in (fa, fb, fk):
                fake.add_candles(SYMBOL, TF, served)
            clients = [fake.point(cls({"enableRateLimit": False, "timeout": 2000}))
                       for fake, cls in ((fa, ccxt.bybit), (fb, ccxt.binance), (fk, ccxt.kucoin))]
            # bybit: chunk 1 in 2 pages, then 503 on both tries of chunk 2 and on the probe before chunk 3; back for chunk 4
            _fault_from(fa, nth=3, kind="503", times=3)
            fb.inject("/api/v3/klines", "503", times=1000)  # binance is down throughout
            failover = Failover([("bybit", clients[0]), ("binance", clients[1]), ("kucoin", clients[2])], probe_every=0)
            try:
                with Store(tmp_path / "s.duckdb") as store:
                    result = await failover.sync(store, "bybit", [SYMBOL], TF, *_window(served), chunk_bars=100,
                                                 page_limit=50, retry=RETRY)
                    _check_stored(store, served, ["bybit"] * 100 + ["kucoin"] * 200 + ["bybit"] * 300)
                    summary = store.sources("bybit", SYMBOL, TF)
                return result, summary, [f.count(p) for f, p in ((fa, KLINE), (fb, "/api/v3/klines"),
                                                                   (fk, "/api/v1/market/candles"))]
            finally:
                for client in clients:
                    await client.close()

    result, summary, calls = asyncio.run(main())
    assert result.written == {"bybit": {SYMBOL: 400}, "binance": {}, "kucoin": {SYMBOL: 200}}
    assert [(e.source, e.kind) for e in result.events] == [
        ("bybit", "switched"), ("bybit", "down"), ("binance", "switched"), ("binance", "down"), ("kucoin", "switched"),
        ("bybit", "recovered"), ("bybit", "switched")]
    # bybit: 2 pages + 2 failed tries + failed probe + passed probe + 6 pages; binance: 2 failed tries + 1 failed probe;
    # kucoin: 2 chunks of 2 pages
    assert calls == [2 + 2 + 1 + 1 + 6, 2 + 1, 4]
    assert list(summary["source"]) == ["bybit", "kucoin", "bybit"] and list(summary["rows"]) == [100, 200, 300]
    assert not result.incomplete


def _cli_with_fakes(tmp_path, monkeypatch, served, inject, runs):
    """Run `qlab` commands (each a list of args after --store) against two fakes standing for bybit and binance, from a
    background loop; returns (exit codes, {exchange: the requests that reached its fake}, store path)."""
    import threading

    from qlab.cli import main
    from qlab.exchange import ccxt_client
    from qlab.exchange import retry as retry_module

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fakes = {"bybit": FakeExchange(), "binance": FakeExchange()}
    for fake in fakes.values():
        asyncio.run_coroutine_threadsafe(fake.start(), loop).result(10)
        fake.add_candles(SYMBOL, TF, served)
    inject(fakes)
    monkeypatch.setattr(ccxt_client, "make_client", lambda exchange_id, credentials, mode: fakes[exchange_id].point(
        getattr(ccxt, exchange_id)({"enableRateLimit": False, "timeout": 2000})))
    monkeypatch.setattr(retry_module, "_RNG", type("NoJitter", (), {"uniform": staticmethod(lambda a, b: 0.0)})())
    since, until = _window(served)
    watch = tmp_path / "watch.yaml"
    watch.write_text(f"entries:\n  - {{exchange: bybit, fallback: [binance], symbols: ['{SYMBOL}'], timeframes: [{TF}], "
                     f"since: '{since.isoformat()}', until: '{until.isoformat()}'}}\n")
    store = str(tmp_path / "s.duckdb")
    codes = []
    try:
        for args in runs:
            codes.append(main(["--store", store, "data", "sync", "--watchlist", str(watch), *args]))
    finally:
        for fake in fakes.values():
            asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    return codes, {name: list(fake.requests) for name, fake in fakes.items()}, store


def test_cli_sync_watchlist_records_every_request_in_the_usage_ledger(tmp_path, monkeypatch, capsys):
    served = _served().iloc[:300]

    def inject(fakes):
        fakes["bybit"].inject(KLINE, "503", times=1000)  # bybit is down: binance serves, bybit's tries are errors

    codes, requests, store = _cli_with_fakes(tmp_path, monkeypatch, served, inject, [["--key-id", "pub"]])
    assert codes == [0]
    with Store(store) as s:
        ledger = s.usage("pub")
        _check_stored(s, served, ["binance"] * 300)
    assert ledger.groupby("exchange").size().to_dict() == {name: len(reqs) for name, reqs in requests.items()}
    failed = sum(r.fault is not None for reqs in requests.values() for r in reqs)
    assert failed >= 2 and (ledger["status"] != "ok").sum() == failed  # every 503 is in the ledger as an error
    total = sum(len(reqs) for reqs in requests.values())
    assert f"{total} API calls ({failed} errors" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::qlab.exchange.ratelimit.BudgetWarning")  # the 50/80/100 % warnings on the way
def test_cli_sync_watchlist_stops_at_the_budget_and_a_rerun_continues_it_from_the_ledger(tmp_path, monkeypatch, capsys):
    served = _served().iloc[:300]
    limit = 4  # fewer calls than loading both exchanges' markets and the candles take

    codes, requests, store = _cli_with_fakes(tmp_path, monkeypatch, served, lambda fakes: None,
                                             [["--calls-per-day", str(limit)]] * 2)
    assert codes == [2, 2]
    assert "budget" in capsys.readouterr().err
    assert sum(len(reqs) for reqs in requests.values()) == limit  # the second run made no request at all: the ledger already holds 4 today
    with Store(store) as s:
        assert len(s.usage("public")) == limit

"""Live recording with failover between two loopback fakes: a dead primary stream, a stale one, recovery, provenance.

The fake's WebSocket speaks Bybit's public protocol only, so both exchanges are Bybit-protocol fakes: "bybit" (the
primary) and "bybit-backup" stand for two different exchanges serving the same real candles. Each fake replays the
candles on its stream from its own cursor; the tests move the cursors to model the world going on while the
recorder is away.
"""

from __future__ import annotations

import asyncio
import random

import ccxt.async_support as ccxt_async
import ccxt.pro as pro
import numpy as np
import pandas as pd
import pytest

import qlab
from qlab.data.live_failover import FailoverRecordStats, record_with_failover
from qlab.data.store import Store
from qlab.errors import ConfigError, ExchangeDownError
from qlab.exchange.fake import FakeExchange
from qlab.exchange.stream import Backoff

SYMBOL, TF = "BTC/USDT:USDT", "5m"
WS, TOPIC, KLINE = "/v5/public/linear", "kline.5.BTCUSDT", "/v5/market/kline"
KEY = (WS, TOPIC)
COLS = ["open", "high", "low", "close", "volume"]


class NoWait:
    """A sleep that returns at once (REST retry backoff without waiting)."""

    async def __call__(self, seconds: float) -> None:
        return None


RETRY = {"max_tries": 2, "sleep": NoWait(), "rng": random.Random(0)}


def _candles(n: int) -> pd.DataFrame:
    return qlab.load_sample(SYMBOL, TF).iloc[:n]


def _run(test, primary: pd.DataFrame, backup: pd.DataFrame):
    async def main():
        async with FakeExchange(ws_interval=0.003) as fa, FakeExchange(ws_interval=0.003) as fb:
            fa.add_candles(SYMBOL, TF, primary)
            fb.add_candles(SYMBOL, TF, backup)
            clients = [f.point(cls({"enableRateLimit": False, "timeout": 2000}))
                       for f in (fa, fb) for cls in (pro.bybit, ccxt_async.bybit)]
            sources = [(clients[0], clients[1], "bybit"), (clients[2], clients[3], "bybit-backup")]
            try:
                return await test(fa, fb, sources)
            finally:
                for client in clients:
                    await client.close()

    return asyncio.run(main())


def _check(store: Store, served: pd.DataFrame, sources: list[str]) -> pd.DataFrame:
    """Row by row: every served bar once, bit-identical OHLCV, and the expected source for each bar."""
    got = store.candles("bybit", SYMBOL, TF, with_source=True)
    assert got.index.is_unique and got.index.is_monotonic_increasing
    assert list(got.index) == list(served.index)
    np.testing.assert_array_equal(got[COLS].to_numpy(), served[COLS].to_numpy())
    assert list(got["source"]) == sources
    return got


def test_a_dead_primary_stream_fails_over_backfills_the_gap_from_the_backup_and_switches_back_when_it_recovers(tmp_path):
    served = _candles(200)
    first, lost, tries, on_backup = 40, 4, 3, 30  # primary streams 40 bars; 3 tries; the backup streams 30 bars

    async def test(fa, fb, sources):
        async def away(seconds: float) -> None:
            """A reconnect wait: the world moves on by `lost` bars on both exchanges' streams."""
            fa.ws_cursor[KEY] = fb.ws_cursor[KEY] = max(fa.ws_cursor[KEY], fb.ws_cursor[KEY]) + lost

        fa.inject(WS, "ws_drop", times=1, drop_after=first)  # the first connection drops after 40 bars ...
        dead_ws = fa.inject(WS, "ws_drop", times=10_000, drop_after=0)  # ... and every reconnect at once
        dead_rest = fa.inject(KLINE, "503", times=10_000)  # its REST is down too
        streamed: dict[str, int] = {}

        def on_bar(bar, source):
            streamed[source] = streamed.get(source, 0) + 1
            if source == "bybit-backup" and streamed[source] == on_backup:
                dead_ws.times = dead_rest.times = 0  # the primary recovers

        with Store(tmp_path / "live.duckdb") as store:
            stats = await asyncio.wait_for(record_with_failover(
                sources, store, "bybit", SYMBOL, TF, until=served.index[-1], probe_every=0, stale_after=5,
                reconnect=Backoff(base=0.01, cap=0.05, max_tries=tries, sleep=away), retry=RETRY, on_bar=on_bar), 60)
            gap = 2 * lost  # two reconnect waits before the third try gave up
            switch_back = first + gap + on_backup
            _check(store, served, ["bybit"] * first + ["bybit-backup"] * (gap + on_backup) + ["bybit"] * (len(served) - switch_back))
            return stats, streamed, fb.count(KLINE)

    stats, streamed, backup_klines = _run(test, _candles(200), _candles(200))
    assert stats.gaps == [(served.index[first], served.index[first + 2 * lost])]
    assert (stats.backfilled, stats.streamed, stats.unfilled) == (2 * lost, len(served) - 2 * lost, [])
    assert stats.by_source == {"bybit": len(served) - 2 * lost - on_backup, "bybit-backup": 2 * lost + on_backup}
    assert streamed == {"bybit": len(served) - 2 * lost - on_backup, "bybit-backup": on_backup}
    assert backup_klines == 1  # the gap, one REST page, from the backup
    kinds = [(e.source, e.kind) for e in stats.events]
    assert kinds[0] == ("bybit", "stream") and ("bybit", "down") in kinds and ("bybit", "recovered") in kinds
    assert [e for e in kinds if e[1] == "stream"] == [("bybit", "stream"), ("bybit-backup", "stream"), ("bybit", "stream")]
    assert stats.switches == 2 and stats.active == "bybit" and stats.reconnects == tries - 1


def test_a_stale_primary_hands_over_and_stays_off_while_its_probe_finds_no_newer_bar(tmp_path):
    served = _candles(160)
    quiet_after, lost = 100, 6  # the primary publishes 100 bars and then nothing, the backup goes on

    async def test(fa, fb, sources):
        fb.ws_cursor[KEY] = quiet_after + lost  # the backup's live stream is 6 bars further when we get there
        with Store(tmp_path / "live.duckdb") as store:
            stats = await asyncio.wait_for(record_with_failover(
                sources, store, "bybit", SYMBOL, TF, stop_after=len(served), probe_every=0, stale_after=1.0,
                reconnect=Backoff(base=0.01, max_tries=2), retry=RETRY), 60)
            _check(store, served, ["bybit"] * quiet_after + ["bybit-backup"] * (len(served) - quiet_after))
        return stats

    stats = _run(test, _candles(quiet_after), _candles(160))
    assert stats.gaps == [(served.index[quiet_after], served.index[quiet_after + lost])]
    assert stats.backfilled == lost and stats.active == "bybit-backup"
    kinds = [(e.source, e.kind) for e in stats.events]
    assert ("bybit", "stale") in kinds and ("bybit", "recovered") not in kinds


def test_every_source_down_raises_after_max_rounds_and_keeps_what_was_stored(tmp_path):
    served = _candles(100)
    waits: list[float] = []

    async def test(fa, fb, sources):
        fa.inject(WS, "ws_drop", times=1, drop_after=25)
        fa.inject(WS, "ws_drop", times=10_000, drop_after=0)
        fb.inject(WS, "ws_drop", times=10_000, drop_after=0)
        for fake in (fa, fb):
            fake.inject(KLINE, "503", times=10_000)

        async def wait(seconds):
            waits.append(seconds)

        stats = FailoverRecordStats()
        with Store(tmp_path / "live.duckdb") as store:
            with pytest.raises(ExchangeDownError, match=r"no source could stream.*bybit: down.*bybit-backup: down"):
                await asyncio.wait_for(record_with_failover(
                    sources, store, "bybit", SYMBOL, TF, probe_every=7, max_rounds=2, stats=stats, sleep=wait,
                    reconnect=Backoff(base=0.01, max_tries=2), retry=RETRY), 60)
            return stats, store.candles("bybit", SYMBOL, TF, with_source=True)

    stats, stored = _run(test, served, served)
    assert list(stored.index) == list(served.index[:25]) and set(stored["source"]) == {"bybit"}
    assert waits == [7]  # one wait between the two rounds
    assert [e.source for e in stats.events if e.kind == "stream"] == ["bybit", "bybit-backup", "bybit", "bybit-backup"]


def test_bad_arguments_are_named(tmp_path):
    with Store(tmp_path / "x.duckdb") as store:
        with pytest.raises(ConfigError, match="at least one source"):
            asyncio.run(record_with_failover([], store, "bybit", SYMBOL, TF))
        with pytest.raises(ConfigError, match="must be unique"):
            asyncio.run(record_with_failover([(None, None, "bybit"), (None, None, "bybit")], store, "bybit", SYMBOL, TF))
        with pytest.raises(ConfigError, match="max_tries=None"):
            asyncio.run(record_with_failover([(None, None, "bybit")], store, "bybit", SYMBOL, TF,
                                             reconnect=Backoff(max_tries=None)))


def _cli_record(tmp_path, monkeypatch, frames: dict[str, pd.DataFrame], inject, argv: list[str]):
    """Run `qlab data record ARGV` with every exchange id pointed at its own Bybit-protocol fake (the fake's WebSocket
    speaks Bybit only, so a 'binance' backup here is a second Bybit-protocol fake); returns (exit code, the client
    factory calls, the stored candles with their sources)."""
    import threading

    from qlab.cli import main
    from qlab.exchange import ccxt_client, stream

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fakes = {name: FakeExchange(ws_interval=0.003) for name in frames}
    _cli_record.last_fakes = fakes
    made = []
    for name, fake in fakes.items():
        asyncio.run_coroutine_threadsafe(fake.start(), loop).result(10)
        fake.add_candles(SYMBOL, TF, frames[name])
    inject(fakes)

    def make(kind):
        def factory(exchange_id, *args):
            made.append((kind, exchange_id, args[-1] if kind == "rest" else args[0]))
            cls = pro.bybit if kind == "stream" else ccxt_async.bybit
            return fakes[exchange_id].point(cls({"enableRateLimit": False, "timeout": 2000}))
        return factory

    monkeypatch.setattr(stream, "make_stream_client", make("stream"))
    monkeypatch.setattr(ccxt_client, "make_client", make("rest"))
    path = tmp_path / "rec.duckdb"
    try:
        code = main(["--store", str(path), "data", "record", "--symbol", SYMBOL, "--timeframe", TF, *argv])
    finally:
        for fake in fakes.values():
            asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    with Store(path) as store:
        ledger = store.sql("SELECT endpoint FROM api_usage WHERE key_id = 'public'")["endpoint"]
        served = sorted(r.path for fake in fakes.values() for r in fake.requests if r.path != WS)  # WS: no REST call
        assert sorted(ledger) == served  # every REST request the fakes saw (markets, backfill, failures) is metered
        return code, made, store.candles("bybit", SYMBOL, TF, with_source=True)


def test_cli_record_writes_n_bars_and_with_a_backup_fails_over_when_the_primary_stream_dies(tmp_path, monkeypatch, capsys):
    served = _candles(120)
    code, made, stored = _cli_record(tmp_path / "a", monkeypatch, {"bybit": served}, lambda fakes: None,
                                     ["--exchange", "bybit", "--bars", "30"])
    assert code == 0 and made == [("stream", "bybit", "live"), ("rest", "bybit", "live")]
    assert list(stored.index) == list(served.index[:30]) and set(stored["source"]) == {"bybit"}
    np.testing.assert_array_equal(stored[COLS].to_numpy(), served[COLS].to_numpy()[:30])
    out = capsys.readouterr().out
    assert out.count(f"{SYMBOL} {TF} o=") == 30 and "recorded 30 bars" in out

    def kill_primary(fakes):
        fakes["bybit"].inject(WS, "ws_drop", times=1, drop_after=20)
        fakes["bybit"].inject(WS, "ws_drop", times=10_000, drop_after=0)
        fakes["bybit"].inject(KLINE, "503", times=10_000)

    code, made, stored = _cli_record(tmp_path / "b", monkeypatch, {"bybit": served, "binance": served}, kill_primary,
                                     ["--exchange", "bybit", "--backup", "binance", "--bars", "60", "--reconnect-tries", "2",
                                      "--quiet"])
    assert code == 0 and [m[1] for m in made] == ["bybit", "bybit", "binance", "binance"]
    assert list(stored.index) == list(served.index[:60])  # the backup's stream starts from its bar 0: 20 skipped, no gap
    np.testing.assert_array_equal(stored[COLS].to_numpy(), served[COLS].to_numpy()[:60])
    assert list(stored["source"]) == ["bybit"] * 20 + ["binance"] * 40
    out = capsys.readouterr().out
    assert "o=" not in out and "recorded 60 bars" in out and "by source: bybit 20, binance 40" in out
    rest = sum(r.path != WS for f in _cli_record.last_fakes.values() for r in f.requests)
    assert rest > 0 and f"{rest} REST calls recorded under key 'public'" in out


def test_cli_record_rejects_a_bad_bar_count(tmp_path, capsys):
    from qlab.cli import main

    assert main(["--store", str(tmp_path / "x.duckdb"), "data", "record", "--exchange", "bybit", "--symbol", SYMBOL,
                 "--bars", "0"]) == 2
    assert "--bars 0" in capsys.readouterr().err

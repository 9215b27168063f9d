"""Recording a live candle stream against the loopback fake: dropped sockets, lost bars backfilled by REST, no duplicates."""

from __future__ import annotations

import asyncio

import ccxt.async_support as ccxt_async
import ccxt.pro as pro
import numpy as np
import pandas as pd
import pytest

import qlab
from qlab.data.live import RecordStats, record_bars
from qlab.data.quality import gap_table
from qlab.data.store import Store
from qlab.errors import AuthError, ConfigError
from qlab.exchange.fake import FakeExchange
from qlab.exchange.stream import Backoff

SYMBOL = "BTC/USDT:USDT"
WS, TOPIC = "/v5/public/linear", "kline.5.BTCUSDT"
STEP = pd.Timedelta("5min")


def _candles(n: int = 300) -> pd.DataFrame:
    return qlab.load_sample(SYMBOL, "5m").iloc[:n]


def _run(test, candles: pd.DataFrame):
    async def main():
        async with FakeExchange(ws_interval=0.003) as fake:
            fake.add_candles(SYMBOL, "5m", candles)
            stream = fake.point(pro.bybit({"enableRateLimit": False, "timeout": 2000}))
            rest = fake.point(ccxt_async.bybit({"enableRateLimit": False, "timeout": 2000}))
            try:
                return await test(fake, stream, rest)
            finally:
                await stream.close()
                await rest.close()

    return asyncio.run(main())


def _assert_same_rows(stored: pd.DataFrame, served: pd.DataFrame) -> None:
    """Row by row: the same open times (each once) and bit-identical OHLCV."""
    assert stored.index.is_unique and stored.index.is_monotonic_increasing
    assert list(stored.index) == list(served.index)
    cols = ["open", "high", "low", "close", "volume"]
    np.testing.assert_array_equal(stored[cols].to_numpy(), served[cols].to_numpy())


def test_dropped_sockets_that_lost_bars_are_backfilled_so_the_store_equals_the_served_candles(tmp_path):
    candles = _candles(200)
    drop_after, lost = 40, 5
    sleeps: list[float] = []

    async def test(fake, stream, rest):
        async def away(seconds: float) -> None:
            """The reconnect wait: while we are away the live stream moves on by `lost` bars we will never see."""
            sleeps.append(seconds)
            fake.ws_cursor[(WS, TOPIC)] += lost

        fake.inject(WS, "ws_drop", times=3, drop_after=drop_after)
        with Store(tmp_path / "live.duckdb") as store:
            stats = await asyncio.wait_for(
                record_bars(stream, rest, store, "bybit", SYMBOL, "5m", stop_after=len(candles),
                            reconnect=Backoff(base=0.01, cap=0.05, sleep=away)), 30)
            return stats, store.candles("bybit", SYMBOL, "5m"), fake.count("/v5/market/kline")

    stats, stored, kline_calls = _run(test, candles)
    _assert_same_rows(stored, candles)
    assert gap_table(stored.index, "5m").empty
    # connection k (0-based) delivered bars [k*(drop_after+lost), k*(drop_after+lost)+drop_after); the next `lost` were skipped
    expected_gaps = [(candles.index[k * (drop_after + lost) + drop_after], candles.index[(k + 1) * (drop_after + lost)])
                     for k in range(3)]
    assert stats.gaps == expected_gaps
    assert (stats.backfilled, stats.streamed, stats.reconnects) == (3 * lost, len(candles) - 3 * lost, 3)
    assert stats.unfilled == [] and stats.last == candles.index[-1] and len(sleeps) == 3
    assert kline_calls == 3  # one REST page per gap, nothing else re-downloaded


def test_resume_backfills_from_the_stored_series_and_never_rewrites_stored_bars(tmp_path):
    candles = _candles(200)
    stored_before, stream_starts = 80, 120

    async def test(fake, stream, rest):
        fake.ws_cursor[(WS, TOPIC)] = stream_starts  # the recorder comes back late: the stream is at bar 120
        with Store(tmp_path / "live.duckdb") as store:
            old = candles.iloc[:stored_before].copy()
            old.iloc[-1, old.columns.get_loc("volume")] += 1.0  # a marker: a rewrite of stored bars would erase it
            store.write_candles(old, "bybit", SYMBOL, "5m")
            stats = await asyncio.wait_for(
                record_bars(stream, rest, store, "bybit", SYMBOL, "5m", until=candles.index[-1]), 30)
            return stats, store.candles("bybit", SYMBOL, "5m")

    stats, stored = _run(test, candles)
    expected = candles.copy()
    expected.iloc[stored_before - 1, expected.columns.get_loc("volume")] += 1.0
    _assert_same_rows(stored, expected)
    assert stats.gaps == [(candles.index[stored_before], candles.index[stream_starts])]
    assert (stats.backfilled, stats.streamed) == (stream_starts - stored_before, len(candles) - stream_starts)


def test_recorder_runs_as_a_task_until_cancelled_keeping_every_written_bar(tmp_path):
    candles = _candles(300)

    async def test(fake, stream, rest):
        stats = RecordStats()
        seen: list = []
        with Store(tmp_path / "live.duckdb") as store:
            task = asyncio.create_task(record_bars(stream, rest, store, "bybit", SYMBOL, "5m", stats=stats,
                                                   on_bar=seen.append))
            while stats.streamed < 40:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return stats, seen, store.candles("bybit", SYMBOL, "5m")

    stats, seen, stored = _run(test, candles)
    assert 40 <= stats.streamed < len(candles) and stats.backfilled == 0
    assert len(stored) == stats.streamed == len(seen)
    _assert_same_rows(stored, candles.iloc[: len(stored)])
    assert stats.last == stored.index[-1] == seen[-1].ts


def test_an_auth_error_on_the_backfill_is_raised_once_not_retried(tmp_path):
    candles = _candles(120)
    retried: list[float] = []

    async def test(fake, stream, rest):
        async def away(seconds):
            fake.ws_cursor[(WS, TOPIC)] += 5

        async def no_sleep(seconds):
            retried.append(seconds)

        fake.inject(WS, "ws_drop", drop_after=30)
        fake.inject("/v5/market/kline", "auth", times=100)
        with Store(tmp_path / "live.duckdb") as store:
            with pytest.raises(AuthError, match="rejected the credentials"):
                await asyncio.wait_for(record_bars(stream, rest, store, "bybit", SYMBOL, "5m",
                                                   reconnect=Backoff(base=0.01, sleep=away),
                                                   retry={"sleep": no_sleep, "max_tries": 5}), 30)
            return fake.count("/v5/market/kline"), store.candles("bybit", SYMBOL, "5m")

    kline_calls, stored = _run(test, candles)
    assert kline_calls == 1 and retried == []
    _assert_same_rows(stored, candles.iloc[:30])  # what came before the hole stays; nothing after it is written


def test_bad_arguments_are_named(tmp_path):
    with Store(tmp_path / "x.duckdb") as store, pytest.raises(ConfigError, match="stop_after=0"):
        asyncio.run(record_bars(None, None, store, "bybit", SYMBOL, "5m", stop_after=0))

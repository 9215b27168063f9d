"""Live streams over ccxt.pro: bars closed once and in order, trades and books as qlab types, reconnect with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import random

import ccxt
import ccxt.async_support as ccxt_async
import ccxt.pro as pro
import pandas as pd
import pytest

import qlab
from qlab.errors import AuthError, BadSymbolError, ConfigError, NetworkError
from qlab.exchange.fake import FakeExchange
from qlab.exchange.stream import Backoff, watch_bars, watch_order_book, watch_trades
from qlab.exchange.types import Bar, OrderBook, Trade

SYMBOL = "BTC/USDT:USDT"
WS = "/v5/public/linear"


class Sleeps:
    """A sleep that returns at once and records what it was asked to wait."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def _candles(n: int = 300) -> pd.DataFrame:
    return qlab.load_sample(SYMBOL, "5m").iloc[:n]


def _expected_bars(candles: pd.DataFrame, timeframe: str = "5m") -> list[Bar]:
    return [Bar(SYMBOL, timeframe, ts, row.open, row.high, row.low, row.close, row.volume, closed=True)
            for ts, row in zip(candles.index, candles.itertuples(), strict=True)]


async def _take(stream, n: int, timeout: float = 20.0) -> list:
    """The first `n` items of an async iterator (closing it), failing after `timeout` seconds."""
    out = []

    async def go():
        async for item in stream:
            out.append(item)
            if len(out) >= n:
                break
        await stream.aclose()

    await asyncio.wait_for(go(), timeout)
    return out


async def _more_within(stream, seconds: float) -> bool:
    """True when the stream yields anything more within `seconds`."""
    try:
        await asyncio.wait_for(stream.__anext__(), seconds)
    except (TimeoutError, StopAsyncIteration):
        return False
    finally:
        await stream.aclose()
    return True


def _with_fake(test, candles=None, ws_interval: float = 0.003):
    async def main():
        async with FakeExchange(ws_interval=ws_interval) as fake:
            fake.add_candles(SYMBOL, "5m", candles if candles is not None else _candles())
            client = fake.point(pro.bybit({"enableRateLimit": False, "timeout": 2000}))
            try:
                return await test(fake, client)
            finally:
                await client.close()

    return asyncio.run(main())


@pytest.mark.parametrize("ws_interval", [0.003, 0.0])  # 0: one burst, then silence (ccxt resolves only on a next message)
def test_watch_bars_yields_every_served_bar_once_in_order_closed_only(ws_interval):
    candles = _candles(300)

    async def test(fake, client):
        bars = await _take(watch_bars(client, SYMBOL, "5m"), len(candles))
        extra = await _more_within(watch_bars(client, SYMBOL, "5m"), 0.3)  # the replay is over: nothing more comes
        return bars, extra

    bars, extra = _with_fake(test, candles, ws_interval)
    assert bars == _expected_bars(candles)  # row by row: ts, open, high, low, close, volume, closed
    assert len({b.ts for b in bars}) == len(candles) and all(b.closed for b in bars)
    assert not extra


def test_without_the_clock_a_bar_closes_only_when_the_next_one_starts():
    candles = _candles(40)

    async def test(fake, client):
        stream = watch_bars(client, SYMBOL, "5m", close_grace=None)
        bars = await _take(stream, len(candles) - 1)
        last_too = await _more_within(watch_bars(client, SYMBOL, "5m", close_grace=None), 0.3)
        return bars, last_too

    bars, last_too = _with_fake(test, candles)
    assert bars == _expected_bars(candles)[:-1]  # the newest bar never saw a successor, so it is not closed yet
    assert not last_too


def test_several_dropped_connections_reconnect_with_nothing_lost_or_repeated():
    candles = _candles(300)
    sleeps = Sleeps()

    async def test(fake, client):
        fake.inject(WS, "ws_drop", times=3, drop_after=60)
        seen: list = []
        bars = await _take(watch_bars(client, SYMBOL, "5m", reconnect=Backoff(base=0.01, cap=0.05, sleep=sleeps),
                                      on_reconnect=lambda exc, n, delay: seen.append((type(exc), n))), len(candles))
        connections = [r for r in fake.requests if r.method == "WS" and r.body == ""]
        return bars, seen, connections

    bars, seen, connections = _with_fake(test, candles)
    assert bars == _expected_bars(candles)
    assert [c.fault for c in connections] == ["ws_drop"] * 3 + [None]
    assert seen == [(ccxt.NetworkError, 1)] * 3  # each drop is one failure: a message in between resets the count
    assert len(sleeps.calls) == 3 and all(0 < s <= 0.01 for s in sleeps.calls)


def test_trades_and_order_books_arrive_as_qlab_types():
    candles = _candles(50)
    step = pd.Timedelta("5min")

    async def test(fake, client):
        trades = await _take(watch_trades(client, SYMBOL), len(candles))
        books = await _take(watch_order_book(client, SYMBOL, limit=50), 10)
        return trades, books

    trades, books = _with_fake(test, candles)
    assert all(isinstance(t, Trade) for t in trades) and all(isinstance(b, OrderBook) for b in books)
    # the fake prints one trade at each bar's close: price = close, amount = volume, side from the bar's direction
    for trade, (ts, row) in zip(trades, candles.iterrows(), strict=True):
        assert trade.symbol == SYMBOL and trade.ts == ts + step - pd.Timedelta("1ms")
        assert (trade.price, trade.amount) == (row.close, row.volume)
        assert trade.side == ("buy" if row.close >= row.open else "sell")
    assert len({t.id for t in trades}) == len(trades)
    for book in books:
        (bid, bid_size), (ask, ask_size) = book.bids[0], book.asks[0]
        row = candles.loc[book.ts + pd.Timedelta("1ms") - step]  # stamped at its bar's close, one level a side around it
        assert bid < row.close < ask and ask - bid <= 2.01e-5 * row.close and book.mid == pytest.approx(row.close, rel=1e-12)
        assert bid_size == ask_size == row.volume
        assert book.symbol == SYMBOL and book.ts.tzinfo is not None
    assert [b.ts for b in books] == sorted({b.ts for b in books})


class ScriptedClient:
    """A stand-in ccxt.pro client whose watch_* calls play a script: a list of rows to return, or an exception."""

    id = "scripted"
    def __init__(self, script, now_ms: int = 0) -> None:
        self.has = {"watchOHLCV": True, "watchTrades": True, "watchOrderBook": True}
        self.timeframes = {"1m": "1", "5m": "5"}
        self.script = list(script)
        self.markets = {SYMBOL: {"symbol": SYMBOL}}
        self.calls = 0
        self.now_ms = now_ms

    def parse_timeframe(self, timeframe: str) -> int:
        return {"1m": 60, "5m": 300}[timeframe]

    def milliseconds(self) -> int:
        return self.now_ms

    async def watch_ohlcv(self, symbol, timeframe=None):
        self.calls += 1
        if not self.script:
            await asyncio.Event().wait()  # nothing more: wait forever, like a quiet socket
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    watch_trades = watch_ohlcv


def _ms(ts) -> int:
    return int(pd.Timestamp(ts).value // 1_000_000)


def test_forming_updates_are_folded_into_one_closed_bar_with_the_final_values():
    c = _candles(4)
    t = [_ms(x) for x in c.index]
    r = c.to_numpy().tolist()  # open high low close volume
    partial = [[t[i], r[i][0], r[i][0], r[i][0], r[i][0], r[i][4] / 3] for i in range(4)]  # early in each bar
    script = [[partial[0]], [partial[0]], [[t[0], *r[0]]], [[t[0], *r[0]], partial[1]], [[t[1], *r[1]]],
              [[t[1], *r[1]], [t[2], *r[2]], partial[3]]]

    async def collect(closed_only):
        out: list[Bar] = []
        client = ScriptedClient(script, now_ms=t[0])
        stream = watch_bars(client, SYMBOL, "5m", closed_only=closed_only)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_drain(stream, out), 0.5)
        return out

    closed = asyncio.run(collect(True))
    assert closed == _expected_bars(c.iloc[:3])  # bars 0, 1, 2 once each, final values; bar 3 still forming
    everything = asyncio.run(collect(False))
    forming = [b for b in everything if not b.closed]
    assert [b for b in everything if b.closed] == closed
    # one forming bar per row received; a bar's close comes just before the first row of the next bar
    sequence = [(0, False)] * 4 + [(0, True)] + [(1, False)] * 3 + [(1, True), (2, False), (2, True), (3, False)]
    assert [(c.index.get_loc(b.ts), b.closed) for b in everything] == sequence
    assert forming[0].volume == r[0][4] / 3 and forming[-1].volume == r[3][4] / 3


async def _drain(stream, out):
    async for item in stream:
        out.append(item)


def test_the_clock_closes_a_bar_when_no_newer_one_comes():
    c = _candles(2)
    t = [_ms(x) for x in c.index]
    r = c.to_numpy().tolist()
    client = ScriptedClient([[[t[0], *r[0]]]], now_ms=t[0] + 300_000 + 1_000)  # 1 s after the bar's end

    async def main():
        stream = watch_bars(client, SYMBOL, "5m", close_grace=2.0)
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.05)
        early = first.done()  # not yet: 1 s of grace left
        client.now_ms += 1100  # now 2.1 s past the end
        bar = await asyncio.wait_for(first, 3.0)
        await stream.aclose()
        return early, bar

    early, bar = asyncio.run(main())
    assert not early
    assert bar == _expected_bars(c.iloc[:1])[0]


def test_a_reconnect_that_lost_bars_reports_the_gap_and_drops_the_stale_forming_bar():
    c = _candles(6)
    t = [_ms(x) for x in c.index]
    r = c.to_numpy().tolist()
    partial2 = [t[2], r[2][0], r[2][0], r[2][0], r[2][0], 1.0]
    script = [[[t[0], *r[0]]], [[t[1], *r[1]]], [partial2], ccxt.NetworkError("closing code 1006"),
              [[t[4], *r[4]]], [[t[5], *r[5]]]]
    gaps: list = []
    sleeps = Sleeps()

    async def on_gap(start, end):
        await asyncio.sleep(0)
        gaps.append((start, end))

    async def main():
        client = ScriptedClient(script, now_ms=t[0])
        stream = watch_bars(client, SYMBOL, "5m", on_gap=on_gap, reconnect=Backoff(base=1, cap=2, jitter=0, sleep=sleeps))
        out: list[Bar] = []
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_drain(stream, out), 0.5)
        return out

    bars = asyncio.run(main())
    # bar 2 was forming when the socket dropped and bar 3 passed unseen: both are a gap, neither is guessed
    assert gaps == [(c.index[2], c.index[4])]
    assert bars == _expected_bars(c.iloc[[0, 1, 4]])
    assert sleeps.calls == [1.0]


def test_backoff_delays_grow_exponentially_are_capped_and_reset_after_a_message():
    script = [ccxt.NetworkError("down")] * 6 + [[]] + [ccxt.RequestTimeout("slow")] * 2 + [[]]
    sleeps = Sleeps()

    async def main():
        client = ScriptedClient(script)
        stream = watch_trades(client, SYMBOL, reconnect=Backoff(base=0.1, cap=1.0, jitter=0, max_tries=None, sleep=sleeps))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(stream.__anext__(), 0.5)  # empty batches yield no trades
        return client.calls

    calls = asyncio.run(main())
    assert sleeps.calls == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 0.1, 0.2])
    assert calls == len(script) + 1

    jittered = Backoff(base=0.1, cap=1.0, jitter=0.5, rng=random.Random(7))
    for n in range(12):
        bound = min(1.0, 0.1 * 2**n)
        delays = [jittered.delay(n) for _ in range(50)]
        assert all(bound / 2 <= d <= bound for d in delays) and max(delays) - min(delays) > 0


def test_max_tries_gives_up_with_a_qlab_network_error():
    sleeps = Sleeps()
    client = ScriptedClient([ccxt.NetworkError("socket closed")] * 10)

    async def main():
        await _take(watch_bars(client, SYMBOL, "5m", reconnect=Backoff(base=0.1, max_tries=3, jitter=0, sleep=sleeps)), 1)

    with pytest.raises(NetworkError, match="after 3 tries"):
        asyncio.run(main())
    assert client.calls == 3 and sleeps.calls == pytest.approx([0.1, 0.2])


@pytest.mark.parametrize(("exc", "error"), [(ccxt.AuthenticationError("invalid api key"), AuthError),
                                             (ccxt.BadSymbol("symbol not listed"), BadSymbolError)])
def test_auth_and_bad_symbol_errors_from_the_stream_are_raised_not_retried(exc, error):
    sleeps = Sleeps()
    client = ScriptedClient([exc, [[0, 1, 1, 1, 1, 1]]])

    async def main():
        await _take(watch_bars(client, SYMBOL, "5m", reconnect=Backoff(sleep=sleeps)), 1)

    with pytest.raises(error):
        asyncio.run(main())
    assert client.calls == 1 and sleeps.calls == []


def test_auth_failure_and_unknown_symbol_against_the_fake():
    sleeps = Sleeps()

    async def auth(fake, client):
        probe = fake.point(pro.bybit({"enableRateLimit": False}))
        await probe.load_markets()  # how many requests one load_markets makes (bybit: one per category and coin)
        await probe.close()
        one_load = fake.count("/v5/market/instruments-info")
        fake.inject("/v5/market/instruments-info", "auth", times=50)
        with pytest.raises(AuthError, match="rejected the credentials"):
            await _take(watch_bars(client, SYMBOL, "5m", reconnect=Backoff(sleep=sleeps)), 1)
        return fake.count("/v5/market/instruments-info") - one_load, one_load, fake.count(WS)

    def typo(fake, client):
        async def go():
            with pytest.raises(BadSymbolError, match="did you mean 'BTC/USDT:USDT'"):
                await _take(watch_bars(client, "BTC/USDT:USDTT", "5m"), 1)
            return fake.count(WS)
        return go()

    info_calls, one_load, ws_calls = _with_fake(auth)
    assert sleeps.calls == [] and info_calls == one_load and ws_calls == 0  # one load_markets, no retry, no socket
    assert _with_fake(typo) == 0


def test_missing_capabilities_are_config_errors():
    async def main(client, fn, *args):
        await _take(fn(client, SYMBOL, *args), 1)

    rest = ccxt_async.bybit()
    try:
        with pytest.raises(ConfigError, match=r"ccxt\.pro\.bybit\(\)"):
            asyncio.run(main(rest, watch_bars, "5m"))
    finally:
        asyncio.run(rest.close())
    no_books = ScriptedClient([])
    no_books.has = {"watchOHLCV": True, "watchOrderBook": False}
    with pytest.raises(ConfigError, match="has no watchOrderBook"):
        asyncio.run(main(no_books, watch_order_book))
    with pytest.raises(ConfigError, match="has no timeframe '7m'"):
        asyncio.run(main(ScriptedClient([]), watch_bars, "7m"))
    with pytest.raises(ConfigError, match="base <= cap"):
        Backoff(base=5, cap=1)


def test_make_stream_client_builds_a_ccxt_pro_client_and_names_bad_choices():
    from qlab.exchange.stream import make_stream_client

    client = make_stream_client("bybit", "testnet")
    try:
        assert type(client).__module__ == "ccxt.pro.bybit" and client.has["watchOHLCV"]
        assert "testnet" in str(client.urls["api"])
    finally:
        asyncio.run(client.close())
    with pytest.raises(ConfigError, match="did you mean 'bybit'"):
        make_stream_client("bybitt")
    with pytest.raises(ConfigError, match="kucoin has no demo"):
        make_stream_client("kucoin", "demo")

"""The loopback fake exchange, driven by ccxt's own Bybit client: candles, recorded responses, faults, counting."""

from __future__ import annotations

import asyncio
import time

import ccxt.async_support as ccxt
import pytest

import qlab
from qlab.errors import ConfigError
from qlab.exchange.fake import FakeExchange

SYMBOL = "BTC/USDT:USDT"


def _run(test):
    """Run ``test(fake, bybit)`` against a started fake with a ccxt bybit pointed at it."""

    async def main():
        async with FakeExchange() as fake:
            bybit = fake.point(ccxt.bybit({"enableRateLimit": False, "timeout": 2000}))
            try:
                return await test(fake, bybit)
            finally:
                await bybit.close()

    return asyncio.run(main())


def _ms(ts) -> int:
    return int(ts.timestamp() * 1000)


def test_fetch_ohlcv_pages_through_the_served_candles_row_by_row():
    candles = qlab.load_sample(SYMBOL, "1h")
    expected = [[_ms(t), *row] for t, row in zip(candles.index, candles.to_numpy().tolist(), strict=True)]

    async def test(fake, bybit):
        fake.add_candles(SYMBOL, "1h", candles)
        await bybit.load_markets()
        rows, since = [], _ms(candles.index[0])
        while True:  # manual forward pagination, 200 bars a page
            page = await bybit.fetch_ohlcv(SYMBOL, "1h", since, 200)
            if not page:
                break
            rows += page
            since = page[-1][0] + 1
        paginated = await bybit.fetch_ohlcv(
            SYMBOL, "1h", _ms(candles.index[0]), None,
            {"paginate": True, "until": _ms(candles.index[-1]) + 1, "maxEntriesPerRequest": 300},
        )
        newest = await bybit.fetch_ohlcv(SYMBOL, "1h", None, 3)  # no start: the newest bars
        return rows, paginated, newest, fake.count("/v5/market/kline")

    rows, paginated, newest, kline_calls = _run(test)
    assert len(candles) > 600
    assert rows == expected
    assert paginated == expected
    assert newest == expected[-3:]
    assert kline_calls == -(-len(candles) // 200) + 1 + -(-len(candles) // 300) + 1


def test_load_markets_and_recorded_public_endpoints():
    async def test(fake, bybit):
        markets = await bybit.load_markets()
        ticker = await bybit.fetch_ticker(SYMBOL)
        book = await bybit.fetch_order_book("BTC/USDT", 2)
        trades = await bybit.fetch_trades(SYMBOL, None, 1)
        server_time = await bybit.fetch_time()
        return markets, ticker, book, trades, server_time, fake

    markets, ticker, book, trades, server_time, fake = _run(test)
    assert {"BTC/USDT", "BTC/USDT:USDT", "ETH/USDT", "XRP/USDT:USDT", "BTC/USD:BTC"} <= set(markets)
    assert markets[SYMBOL]["linear"] and markets[SYMBOL]["precision"]["amount"] == 0.001
    assert ticker["last"] == 51444.4 and ticker["bid"] == 51444.3  # recorded ccxt fixture values
    assert book["bids"][0] == [29861.0, 0.00101] and book["asks"][0] == [29971.81, 0.001161]
    assert trades[0]["price"] == 51444.4 and trades[0]["side"] == "buy"
    assert abs(server_time - time.time() * 1000) < 5000
    assert fake.count("/v5/market/instruments-info") >= 4 and fake.count("/v5/market/tickers") == 1
    assert sum(fake.per_second("/v5/market/").values()) == fake.count("/v5/market/") == len(fake.requests)
    assert all(r.fault is None for r in fake.requests)


@pytest.mark.parametrize(
    ("kind", "times", "options", "error"),
    [
        ("429", 1, {"retry_after": 3}, ccxt.RateLimitExceeded),
        ("500", 1, {}, ccxt.ExchangeNotAvailable),
        ("503", 1, {}, ccxt.ExchangeNotAvailable),
        ("slow", 1, {"delay": 1.5}, ccxt.RequestTimeout),
        ("auth", 1, {}, ccxt.AuthenticationError),
        ("auth", 1, {"code": 10004}, ccxt.AuthenticationError),
        # aiohttp silently resends once on a dropped keep-alive connection, so it takes two drops to fail
        ("disconnect", 2, {}, ccxt.ExchangeNotAvailable),
        ("disconnect", 1, {}, None),
    ],
)
def test_each_fault_surfaces_as_the_ccxt_exception(kind, times, options, error):
    candles = qlab.load_sample(SYMBOL, "1h").iloc[:10]

    async def test(fake, bybit):
        fake.add_candles(SYMBOL, "1h", candles)
        await bybit.load_markets()
        bybit.timeout = 500
        fake.inject("/v5/market/kline", kind, times=times, **options)
        caught = None
        try:
            await bybit.fetch_ohlcv(SYMBOL, "1h", _ms(candles.index[0]), 5)
        except ccxt.BaseError as exc:
            caught = exc
        again = await bybit.fetch_ohlcv(SYMBOL, "1h", _ms(candles.index[0]), 5)  # the faults were used up
        return caught, again, fake

    caught, again, fake = _run(test)
    assert type(caught) is type(None) if error is None else type(caught) is error, repr(caught)
    assert len(again) == 5
    faulted = [r for r in fake.requests if r.fault]
    assert [r.fault for r in faulted] == [kind] * times and {r.path for r in faulted} == {"/v5/market/kline"}


def test_bad_json_is_not_raised_by_ccxt_so_the_adapter_must_check():
    """ccxt swallows a malformed 200 body: unified calls return empty data, raw calls the raw text."""

    async def test(fake, bybit):
        fake.add_candles(SYMBOL, "1h", qlab.load_sample(SYMBOL, "1h").iloc[:10])
        await bybit.load_markets()
        fake.inject("/v5/market/kline", "bad_json")
        rows = await bybit.fetch_ohlcv(SYMBOL, "1h", None, 5)
        fake.inject("/v5/market/kline", "bad_json")
        raw = await bybit.publicGetV5MarketKline({"symbol": "BTCUSDT", "interval": "60", "category": "linear"})
        return rows, raw, await bybit.fetch_ohlcv(SYMBOL, "1h", None, 5)

    rows, raw, again = _run(test)
    assert rows == []
    assert isinstance(raw, str) and raw.startswith('{"retCode":0')
    assert len(again) == 5


def test_429_carries_retry_after_and_faults_repeat_times():
    async def test(fake, bybit):
        import aiohttp

        fake.inject("/v5/market/time", "429", times=2, retry_after=7)
        async with aiohttp.ClientSession() as session:
            answers = []
            for _ in range(3):
                async with session.get(fake.url + "/v5/market/time") as resp:
                    answers.append((resp.status, resp.headers.get("Retry-After")))
        return answers

    assert _run(test) == [(429, "7"), (429, "7"), (200, None)]


def test_bad_arguments_are_named():
    with pytest.raises(ConfigError, match="unknown fault kind 'teapot'"):
        FakeExchange().inject("/", "teapot")
    with pytest.raises(KeyError, match="did you mean"):
        FakeExchange().add_candles("BTC/USDT:USDTT", "1h", qlab.load_sample(SYMBOL, "1h"))
    with pytest.raises(ConfigError, match="not started"):
        _ = FakeExchange().url


def test_binance_spot_and_futures_klines_page_through_the_served_candles():
    spot = qlab.load_sample("BTC/USDT", "1h").iloc[:2500]
    perp = qlab.load_sample(SYMBOL, "1h")

    async def main():
        async with FakeExchange() as fake:
            fake.add_candles("BTC/USDT", "1h", spot)
            fake.add_candles(SYMBOL, "1h", perp)
            binance = fake.point(ccxt.binance({"enableRateLimit": False, "timeout": 2000}))
            try:
                markets = await binance.load_markets()
                spot_rows = await binance.fetch_ohlcv(
                    "BTC/USDT", "1h", _ms(spot.index[0]), None, {"paginate": True, "until": _ms(spot.index[-1]) + 1}
                )
                perp_rows = await binance.fetch_ohlcv(SYMBOL, "1h", _ms(perp.index[0]), 1500)
                fake.inject("/api/v3/klines", "auth")
                with pytest.raises(ccxt.AuthenticationError):
                    await binance.fetch_ohlcv("BTC/USDT", "1h", None, 5)
                fake.inject("/fapi/v1/klines", "429", retry_after=2)
                with pytest.raises(ccxt.DDoSProtection) as caught:  # binance: the parent of RateLimitExceeded
                    await binance.fetch_ohlcv(SYMBOL, "1h", None, 5)
                assert type(caught.value) is ccxt.DDoSProtection
                return markets, spot_rows, perp_rows, fake.count("/api/v3/klines"), fake.count("/fapi/v1/klines")
            finally:
                await binance.close()

    markets, spot_rows, perp_rows, spot_calls, perp_calls = asyncio.run(main())
    assert {"BTC/USDT", "ETH/USDT", SYMBOL, "XRP/USDT:USDT"} <= set(markets)
    for rows, candles in ((spot_rows, spot), (perp_rows, perp)):
        assert rows == [[_ms(t), *row] for t, row in zip(candles.index, candles.to_numpy().tolist(), strict=True)]
    assert spot_calls == 3 + 1 and perp_calls == 1 + 1  # 1000 bars a call on spot; the 429 is counted too


def _watch_all(fake, candles):
    """Watch BTC/USDT:USDT 1h klines with ccxt.pro until every served bar arrived; the errors met on the way."""
    import ccxt.pro as pro

    async def main():
        bybit = fake.point(pro.bybit({"enableRateLimit": False}))
        rows, errors = [], []
        try:
            await bybit.load_markets()
            while len(rows) < len(candles) and len(errors) < 3:
                try:
                    rows += await asyncio.wait_for(bybit.watch_ohlcv(SYMBOL, "1h"), 5)
                except ccxt.NetworkError as exc:
                    errors.append(exc)
            trades = await asyncio.wait_for(bybit.watch_trades(SYMBOL), 5)
            book = await asyncio.wait_for(bybit.watch_order_book(SYMBOL), 5)
        finally:
            await bybit.close()
        return rows, errors, trades, book

    return main()


def test_bybit_websocket_replays_the_candles_and_survives_a_dropped_connection():
    candles = qlab.load_sample(SYMBOL, "1h").iloc[:12]
    expected = [[_ms(t), *row] for t, row in zip(candles.index, candles.to_numpy().tolist(), strict=True)]

    async def main():
        async with FakeExchange(ws_interval=0.005) as fake:
            fake.add_candles(SYMBOL, "1h", candles)
            clean = await _watch_all(fake, candles)
        async with FakeExchange(ws_interval=0.005) as fake:
            fake.add_candles(SYMBOL, "1h", candles)
            fake.inject("/v5/public/linear", "ws_drop", drop_after=5)
            dropped = await _watch_all(fake, candles)
            connections = [r for r in fake.requests if r.method == "WS" and r.query == {} and r.body == ""]
        return clean, dropped, connections

    (rows, errors, trades, book), (drop_rows, drop_errors, _, _), connections = asyncio.run(main())
    assert rows == expected and errors == []
    assert trades[0]["price"] == expected[0][4] and trades[0]["amount"] == expected[0][5]
    assert book["bids"][0][0] < expected[0][4] < book["asks"][0][0]
    # the drop surfaces once as a ccxt NetworkError; the reconnected stream resumes at the next bar
    assert len(drop_errors) == 1 and "1011" in str(drop_errors[0])
    assert drop_rows == expected
    assert [c.fault for c in connections] == ["ws_drop", None]

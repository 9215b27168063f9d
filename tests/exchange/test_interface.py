"""The Exchange interface over ccxt (CcxtExchange) against the loopback fake: Bybit, Binance and KuCoin market data,
capabilities, error translation and 'did you mean'."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import ccxt.async_support as ccxt
import pandas as pd
import pytest

import qlab
from qlab.errors import AuthError, BadSymbolError, ConfigError, NotSupportedError
from qlab.exchange.ccxt_exchange import CcxtExchange, open_exchange
from qlab.exchange.fake import FakeExchange
from qlab.exchange.interface import Capabilities, Exchange, endpoint_weight
from qlab.exchange.types import Market, OrderBook, Ticker, Trade

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ccxt"
LINEAR = "BTC/USDT:USDT"


def _recorded(exchange: str, method: str, index: int = 0) -> dict:
    return json.loads((FIXTURES / "response" / f"{exchange}.json").read_text())["methods"][method][index]["httpResponse"]


def _run(exchange_id: str, test, candles: dict | None = None, **client_options):
    """Run ``test(fake, ex)`` with a CcxtExchange over a ccxt client of `exchange_id` pointed at a fresh fake."""

    async def main():
        async with FakeExchange() as fake:
            for (symbol, timeframe), frame in (candles or {}).items():
                fake.add_candles(symbol, timeframe, frame)
            client = fake.point(getattr(ccxt, exchange_id)({"enableRateLimit": False, "timeout": 3000, **client_options}))
            async with CcxtExchange(client, retry={"max_tries": 2, "base": 0.01}) as ex:
                return await test(fake, ex)

    return asyncio.run(main())


def _expected_frame(candles: pd.DataFrame) -> pd.DataFrame:
    # the served candles as the interface must return them: float columns, UTC index named timestamp
    out = candles[["open", "high", "low", "close", "volume"]].astype(float).copy()
    out.index = pd.DatetimeIndex(out.index.tz_convert("UTC").as_unit("ns"), name="timestamp")
    return out


def test_ccxt_exchange_satisfies_the_protocol_and_capabilities_follow_ccxt():
    client = ccxt.kucoin()
    ex = CcxtExchange(client)
    assert isinstance(ex, Exchange)
    caps = ex.capabilities
    assert caps.exchange_id == "kucoin" and "live" in caps.modes
    assert caps.supports("fetch_ohlcv") and caps.supports("create_order")
    client.has["fetchFundingRateHistory"] = False  # an exchange without the capability
    lacking = Capabilities.from_ccxt(client)
    assert not lacking.supports("fetch_funding_rate_history")
    with pytest.raises(NotSupportedError, match=r"kucoin does not support fetch_funding_rate_history.*fetchFundingRateHistory"):
        lacking.require("fetch_funding_rate_history")
    asyncio.run(client.close())


def test_missing_capability_raises_before_any_request():
    async def test(fake, ex):
        ex.client.has["fetchTrades"] = False
        with pytest.raises(NotSupportedError, match="does not support fetch_trades"):
            await ex.fetch_trades(LINEAR)
        return fake.count("/v5/market/recent-trade")

    assert _run("bybit", test) == 0


def test_bybit_market_data_spot_and_linear():
    candles = qlab.load_sample(LINEAR, "1h")
    ticker_raw = _recorded("bybit", "fetchTicker")["result"]["list"][0]

    async def test(fake, ex):
        markets = await ex.load_markets()
        first = await ex.fetch_ohlcv(LINEAR, "1h", since=candles.index[0], limit=200)
        second = await ex.fetch_ohlcv(LINEAR, "1h", since=first.index[-1] + pd.Timedelta("1h"), limit=200)
        ticker = await ex.fetch_ticker(LINEAR)
        book = await ex.fetch_order_book("BTC/USDT", 2)
        trades = await ex.fetch_trades(LINEAR, limit=1)
        return markets, first, second, ticker, book, trades, ex.capabilities

    markets, first, second, ticker, book, trades, caps = _run("bybit", test, {(LINEAR, "1h"): candles})
    assert isinstance(markets[LINEAR], Market) and markets[LINEAR].kind == "swap" and markets[LINEAR].linear
    assert markets["BTC/USDT"].kind == "spot" and markets[LINEAR].amount_step == 0.001
    assert {"spot", "linear_swap"} <= caps.market_kinds
    got = pd.concat([first, second])
    pd.testing.assert_frame_equal(got, _expected_frame(candles.iloc[:400]))
    assert isinstance(ticker, Ticker) and ticker.last == float(ticker_raw["lastPrice"])
    assert ticker.bid == float(ticker_raw["bid1Price"]) and ticker.ask == float(ticker_raw["ask1Price"])
    assert isinstance(book, OrderBook) and book.bids[0] == (29861.0, 0.00101) and book.asks[0] == (29971.81, 0.001161)
    assert book.bids[0][0] < book.asks[0][0]
    assert isinstance(trades[0], Trade) and trades[0].price == 51444.4 and trades[0].side == "buy"


def test_binance_market_data():
    symbol = "BTC/USDT"
    candles = qlab.load_sample(symbol, "1h").iloc[:700]

    async def test(fake, ex):
        markets = await ex.load_markets()
        frame = await ex.fetch_ohlcv(symbol, "1h", since=int(candles.index[0].timestamp() * 1000), limit=1000)
        return markets, frame

    markets, frame = _run("binance", test, {(symbol, "1h"): candles})
    assert markets[symbol].kind == "spot" and markets[symbol].quote == "USDT"
    pd.testing.assert_frame_equal(frame, _expected_frame(candles))


def test_kucoin_market_data_with_kucoin_paging():
    symbol = "BTC/USDT"
    candles = qlab.load_sample(symbol, "1h").iloc[:1800]
    ticker_raw = _recorded("kucoin", "fetchTicker")["data"]
    book_raw = _recorded("kucoin", "fetchOrderBook")["data"]

    async def test(fake, ex):
        markets = await ex.load_markets()
        pages, since = [], candles.index[0]
        while since <= candles.index[-1]:  # KuCoin sends at most 1500 rows a call, newest first
            page = await ex.fetch_ohlcv(symbol, "1h", since=since, limit=1500)
            if page.empty:
                break
            pages.append(page)
            since = page.index[-1] + pd.Timedelta("1h")
        ticker = await ex.fetch_ticker(symbol)
        book = await ex.fetch_order_book(symbol, 20)
        trades = await ex.fetch_trades(symbol)
        with pytest.raises(BadSymbolError):
            await ex.fetch_ticker("ETH/USDT")  # listed, but the fake has no recorded ticker for it
        return markets, pages, ticker, book, trades, fake.count("/api/v1/market/candles")

    markets, pages, ticker, book, trades, calls = _run("kucoin", test, {(symbol, "1h"): candles})
    assert set(markets) == {"BTC/USDT", "ETH/USDT", "ADA/USDT", "LTC/USDT", "XRP/USDT", "DOGE/USDT", "TRX/USDT"}
    window = candles.index < candles.index[0] + pd.Timedelta(hours=1500)  # ccxt asks for 1500 hours a call
    assert [len(p) for p in pages] == [int(window.sum()), int((~window).sum())] and calls == 2
    pd.testing.assert_frame_equal(pd.concat(pages), _expected_frame(candles))
    assert ticker.last == float(ticker_raw["last"]) and ticker.bid == float(ticker_raw["buy"])
    assert book.bids[0] == tuple(float(x) for x in book_raw["bids"][0])
    assert trades[0].price == 67347.4 and trades[0].side == "sell"


@pytest.mark.parametrize(("exchange", "path", "symbol"), [
    ("bybit", "/v5/market/tickers", LINEAR), ("binance", "/api/v3/ticker", "BTC/USDT"),
    ("kucoin", "/api/v1/market/stats", "BTC/USDT"),
])
def test_an_injected_auth_fault_speaks_each_exchanges_format_and_becomes_auth_error(exchange, path, symbol):
    async def test(fake, ex):
        await ex.load_markets()
        fake.inject(path, "auth")
        with pytest.raises(AuthError):
            await ex.fetch_ticker(symbol)
        return [r.fault for r in fake.requests if r.path.startswith(path)]

    assert _run(exchange, test) == ["auth"]  # one request: an auth error is never retried


def test_unknown_symbol_timeframe_and_exchange_get_did_you_mean():
    async def test(fake, ex):
        await ex.load_markets()
        with pytest.raises(BadSymbolError, match=r"'BTC/USDT:USD'.*did you mean 'BTC/USDT:USDT'"):
            ex.market("BTC/USDT:USD")
        with pytest.raises(BadSymbolError, match="did you mean"):
            await ex.fetch_ticker("ETH/USTD")
        with pytest.raises(ConfigError, match=r"timeframe '1hr'.*did you mean '1h'"):
            await ex.fetch_ohlcv(LINEAR, "1hr")
        return fake.count("/v5/market/tickers") + fake.count("/v5/market/kline")

    assert _run("bybit", test) == 0  # refused before any request
    with pytest.raises(ConfigError, match=r"unknown exchange 'bybitt'.*did you mean 'bybit'"):
        open_exchange("bybitt")
    with pytest.raises(ConfigError, match=r"unknown mode 'demoo'.*did you mean 'demo'"):
        open_exchange("bybit", "demoo")


def test_funding_history_of_a_spot_symbol_is_a_clear_error():
    async def test(fake, ex):
        with pytest.raises(NotSupportedError, match=r"BTC/USDT is a spot market.*perpetual"):
            await ex.fetch_funding_rate_history("BTC/USDT")

    _run("bybit", test)


def test_open_exchange_builds_every_mode_ccxt_has():
    ex = open_exchange("bybit", "testnet", {"apiKey": "abcd1234", "secret": "s3cr3t-value"})
    try:
        assert ex.id == "bybit" and ex.key_id.startswith("key-") and "abcd1234" not in ex.key_id
        assert "s3cr3t-value" not in repr(ex) and ex.capabilities.modes == ("demo", "testnet", "live")
        assert "testnet" in ex.client.urls["api"]["public"]
    finally:
        asyncio.run(ex.close())


class _Meter:
    """A recording stand-in for the rate limiter: what acquire/record were told."""

    def __init__(self):
        self.acquired, self.recorded = [], []

    async def acquire(self, endpoint, weight):
        self.acquired.append((endpoint, weight))

    def record(self, endpoint, weight, status, headers):
        self.recorded.append((endpoint, weight, status, dict(headers)))


def test_meter_is_called_around_every_attempt_with_status():
    candles = qlab.load_sample(LINEAR, "1h").iloc[:20]
    meter = _Meter()

    async def test(fake, ex):
        ex.meter = meter
        ex.client.options["qlabWeights"] = {"fetch_ohlcv": 2}
        await ex.load_markets()
        fake.inject("/v5/market/kline", "503")
        await ex.fetch_ohlcv(LINEAR, "1h", since=candles.index[0], limit=5)
        return fake.count("/v5/market/kline")

    assert _run("bybit", test, {(LINEAR, "1h"): candles}) == 2
    assert meter.acquired == [("load_markets", 1.0), ("fetch_ohlcv", 2.0), ("fetch_ohlcv", 2.0)]
    assert [(e, s) for e, _, s, _ in meter.recorded] == [("load_markets", "ok"), ("fetch_ohlcv", "ExchangeDownError"),
                                                         ("fetch_ohlcv", "ok")]
    assert endpoint_weight(ccxt.bybit(), "fetch_ticker") == 1.0


def test_funding_rate_history_of_a_perpetual_matches_the_served_rates():
    times = pd.date_range("2024-01-01", periods=6, freq="8h", tz="UTC")
    rates = pd.Series([0.0001, -0.00005, 0.0002, 0.0001, 0.00003, -0.0001], index=times)

    async def test(fake, ex):
        if not hasattr(fake, "add_funding"):
            pytest.skip("the fake has no funding route yet")
        fake.add_funding(LINEAR, rates)
        return await ex.fetch_funding_rate_history(LINEAR, since=times[0], limit=6)

    got = _run("bybit", test)
    assert [(f.symbol, f.ts, f.rate) for f in got] == [(LINEAR, t, r) for t, r in rates.items()]


def test_a_usage_meter_meters_every_http_request_once():
    """A UsageMeter attaches at the HTTP level: each request the server sees is one ledger row, load_markets pages included."""
    from qlab.exchange.ratelimit import UsageMeter

    async def main():
        rows: list[dict] = []
        async with FakeExchange() as fake:
            fake.add_candles("BTC/USDT:USDT", "1h", qlab.load_sample("BTC/USDT:USDT", "1h").iloc[:300])
            meter = UsageMeter("key-test", "bybit", rate=1000, burst=10, sink=rows.extend)
            ex = CcxtExchange(fake.point(ccxt.bybit()), meter=meter, key_id="key-test")
            await ex.load_markets()
            await ex.fetch_ohlcv("BTC/USDT:USDT", "1h", since=qlab.load_sample("BTC/USDT:USDT", "1h").index[0], limit=200)
            await ex.close()
            return rows, fake.count("/")

    rows, served = asyncio.run(main())
    assert served > 2 and len(rows) == served
    assert {r["key_id"] for r in rows} == {"key-test"} and any(r["endpoint"] == "/v5/market/kline" for r in rows)

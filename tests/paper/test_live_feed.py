"""LiveFeed over the fake exchange's Bybit WebSocket: every bar once and in order, dropped sockets reconnected, a
restart backfilled by REST, and the paper trader on the live feed trading exactly as on the replayed candles."""

from __future__ import annotations

import asyncio

import ccxt.pro as pro
import pandas as pd

import qlab
from qlab.exchange.fake import FakeExchange
from qlab.exchange.stream import Backoff
from qlab.paper import PaperTrader, paper_trade
from qlab.paper.live_feed import LiveFeed, live_feed
from tests.paper.conftest import assert_same_trades, sma_cross

SYMBOL, WS = "BTC/USDT:USDT", "/v5/public/linear"


def _candles(n: int) -> pd.DataFrame:
    return qlab.load_sample(SYMBOL, "5m").iloc[:n]


def _with_fake(test, candles):
    async def main():
        async with FakeExchange(ws_interval=0.002) as fake:
            fake.add_candles(SYMBOL, "5m", candles)
            client = fake.point(pro.bybit({"enableRateLimit": False, "timeout": 3000}))
            try:
                return await asyncio.wait_for(test(fake, client), 60)
            finally:
                await client.close()

    return asyncio.run(main())


async def _take(feed, n, after=None):
    out = []
    async for bar in feed.open(after):
        out.append(bar)
        if len(out) >= n:
            break
    return out


def test_bars_arrive_once_in_order_through_dropped_connections():
    candles = _candles(150)

    async def test(fake, client):
        fake.inject(WS, "ws_drop", times=2, drop_after=40)
        feed = live_feed(client, [SYMBOL], "5m", backoff=Backoff(base=0.01, cap=0.02))
        return await _take(feed, len(candles)), [r.fault for r in fake.requests if r.method == "WS" and r.body == ""]

    bars, connections = _with_fake(test, candles)
    assert [b.ts for b in bars] == list(candles.index)
    assert [(b.open, b.high, b.low, b.close, b.volume) for b in bars] == list(candles.itertuples(index=False, name=None))
    assert connections.count("ws_drop") == 2 and len(connections) >= 3


def test_a_restart_is_backfilled_by_rest_from_the_last_journaled_bar():
    candles = _candles(120)
    after = candles.index[29]

    async def test(fake, client):
        fake.ws_cursor[(WS, "kline.5." + fake.markets[SYMBOL]["id"])] = 80  # the stream resumes at bar 80 (as live would)
        feed = LiveFeed(client, [SYMBOL], "5m")
        bars = await _take(feed, len(candles) - 30, after=after)
        return bars, feed.backfilled

    bars, backfilled = _with_fake(test, candles)
    assert [b.ts for b in bars] == list(candles.index[30:])  # nothing skipped, nothing repeated
    assert backfilled >= 50  # bars 30..79 came by REST


def test_paper_trader_on_the_live_feed_trades_as_on_the_replay():
    candles = _candles(200)

    async def test(fake, client):
        trader = PaperTrader(sma_cross(), LiveFeed(client, [SYMBOL], "5m"), warmup=22, lookback=60, stop_after=len(candles))
        return await trader.run()

    live = _with_fake(test, candles)
    replay = paper_trade(sma_cross(), candles, symbol=SYMBOL, warmup=22, lookback=60)
    assert_same_trades(replay.trades, live.trades, rel=1e-12)
    assert live.final_equity == replay.final_equity

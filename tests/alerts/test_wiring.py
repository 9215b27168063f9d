"""Components below the alerts layer report through qlab.events: a real paper replay, an API budget and a failing
exchange health check raise the alerts their rules describe."""

from __future__ import annotations

import asyncio
import time
import warnings

import qlab
from qlab.alerts import AlertEngine, BudgetThreshold, DashboardChannel, DrawdownBeyond, PriceCross, TraderDown
from qlab.alerts.rules import HealthFailed


def _wait_for(channel: DashboardChannel, count: int, seconds: float = 10.0) -> list:
    deadline = time.monotonic() + seconds
    while len(channel.recent(100)) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return channel.recent(100)


def test_a_paper_replay_reports_price_drawdown_and_its_stop():
    candles = qlab.load_sample("BTC/USDT", "1h").iloc[-600:]
    level = float(candles["close"].iloc[300])  # a level the replay's closes cross (computed from the data, not the code)
    ups = sum(1 for a, b in zip(candles["close"].iloc[:-1], candles["close"].iloc[1:], strict=True) if a < level <= b)
    assert ups > 0
    dashboard = DashboardChannel(maxlen=1000)
    rules = [TraderDown("down", statuses=("stopped",)), PriceCross("cross", symbol="BTC/USDT", level=level, dedup_window=0),
             DrawdownBeyond("dd", pct=0.1)]
    with AlertEngine(rules, [dashboard], dedup_window=0):
        result = qlab.paper_trade("sma_cross", candles, symbol="BTC/USDT")
        alerts = _wait_for(dashboard, ups + 1)
        time.sleep(0.2)
        alerts = dashboard.recent(1000)
    titles = [a.title for a in alerts]
    assert any(a.rule == "down" and "stopped" in a.title for a in alerts), titles
    assert sum(a.rule == "cross" for a in alerts) == ups, titles
    peak_dd = float((1 - result.equity / result.equity.cummax()).max())
    assert any(a.rule == "dd" for a in alerts) == (peak_dd > 0.001), (peak_dd, titles)


def test_an_api_budget_crossing_raises_budget_alerts():
    from qlab.exchange.ratelimit import Budget

    dashboard = DashboardChannel()
    budget = Budget(calls_per_day=10, hard_limit=False)
    with AlertEngine([BudgetThreshold("budget")], [dashboard], dedup_window=0), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        now = time.time()
        for _ in range(10):
            budget.charge("k1", "bybit", "fetch_ohlcv", now)
        alerts = _wait_for(dashboard, 3)
    assert sorted(a.data["threshold"] for a in alerts) == [50.0, 80.0, 100.0]


def test_a_failing_health_check_alerts_once_and_rearms_when_it_passes(monkeypatch):
    import ccxt.async_support as ccxt

    from qlab.data.health import HealthTarget, acheck
    from qlab.exchange import ccxt_client
    from qlab.exchange.fake import FakeExchange

    dashboard = DashboardChannel()
    fakes: list[FakeExchange] = []
    monkeypatch.setattr(ccxt_client, "make_client", lambda exchange_id, credentials, mode: fakes[0].point(
        getattr(ccxt, exchange_id)({"enableRateLimit": False, "timeout": 3000})))

    async def check(fake: FakeExchange, fail: bool):
        fake.clear_faults()
        if fail:
            fake.inject("/v5/market/orderbook", "500", times=100)
        return await acheck([HealthTarget("bybit", "BTC/USDT:USDT")], retry={"max_tries": 1})

    async def main():
        async with FakeExchange() as fake:
            fakes.append(fake)
            fake.add_candles("BTC/USDT:USDT", "1h", qlab.load_sample("BTC/USDT:USDT", "1h").iloc[-200:])
            return [await check(fake, fail) for fail in (True, True, False, True)]

    with AlertEngine([HealthFailed("health")], [dashboard], dedup_window=0):
        reports = asyncio.run(main())
        alerts = _wait_for(dashboard, 2)
    assert [r.ok for r in reports] == [False, False, True, False]
    assert len(alerts) == 2 and all("order_book" in a.title for a in alerts)  # once, then again after it recovered

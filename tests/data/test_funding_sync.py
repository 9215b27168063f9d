"""Funding-rate history and fee schedules from the loopback fake exchange into the store: exact, incremental, metered."""

from __future__ import annotations

import asyncio
import math
import threading

import ccxt.async_support as ccxt
import pandas as pd
import pytest

import qlab
from qlab.costs import FeeSchedule
from qlab.data.funding_sync import sync_fees, sync_funding
from qlab.data.store import Store
from qlab.errors import BadSymbolError, ConfigError
from qlab.exchange.fake import FakeExchange

XRP, BTC = "XRP/USDT:USDT", "BTC/USDT:USDT"
FUNDING = "/v5/market/funding/history"


def _served() -> pd.Series:
    return qlab.load_sample_funding(XRP)  # 91 real 8-hourly XRP perpetual funding rates, millisecond times kept


def _run(test, funding: pd.Series | None = None, exchange: str = "bybit"):
    async def main():
        async with FakeExchange() as fake:
            fake.add_funding(XRP, _served() if funding is None else funding)
            options = {"defaultType": "swap", "fetchMarkets": {"types": ["linear"]}} if exchange == "binance" else {}
            client = fake.point(getattr(ccxt, exchange)({"enableRateLimit": False, "options": options}))
            try:
                return await test(fake, client)
            finally:
                await client.close()

    return asyncio.run(main())


def _end(series: pd.Series) -> pd.Timestamp:
    return series.index[-1] + pd.Timedelta("1ms")


def _assert_exact(store: Store, served: pd.Series, exchange: str = "bybit") -> None:
    got = store.funding(exchange, XRP)
    assert len(got) == len(served)
    for (t_got, r_got), (t_exp, r_exp) in zip(got.items(), served.items(), strict=True):  # row by row
        assert t_got == t_exp and r_got == r_exp


def test_funding_is_stored_exactly_and_a_second_run_asks_nothing(tmp_path):
    served = _served()

    async def test(fake, client):
        with Store(tmp_path / "s.duckdb") as store:
            first = await sync_funding(client, store, "bybit", [XRP], served.index[0], _end(served), page_limit=20)
            calls = fake.count(FUNDING)
            _assert_exact(store, served)
            again = await sync_funding(client, store, "bybit", [XRP], served.index[0], _end(served), page_limit=20)
            # the day after: until defaults to now, but the next funding is not due before it
            later = await sync_funding(client, store, "bybit", [XRP], served.index[0], page_limit=20,
                                       now=served.index[-1] + pd.Timedelta("5h"))
            _assert_exact(store, served)
            return first, calls, again, later, fake.count(FUNDING) - calls, [r.query for r in fake.requests if r.path == FUNDING]

    first, calls, again, later, extra, queries = _run(test)
    assert first == {XRP: 91} and again == {XRP: 0} and later == {XRP: 0}
    assert extra == 0  # nothing new: not one more request
    # windows of 20 - 1.5 = 18.5 funding intervals (8 h, as the market says) cover first..last, one page each
    span_ms = (served.index[-1] - served.index[0]).value // 1_000_000 + 1
    assert calls == math.ceil(span_ms / (18.5 * 8 * 3600 * 1000)) == 5
    assert all(int(q["limit"]) == 20 and int(q["endTime"]) >= int(q["startTime"]) for q in queries)


def test_an_interrupted_sync_continues_after_the_last_stored_rate_and_fills_before_the_first(tmp_path):
    served = _served()
    last_stored_ms = int(served.index[59].value // 1_000_000)

    async def test(fake, client):
        with Store(tmp_path / "s.duckdb") as store:
            store.write_funding(served.iloc[30:60], "bybit", XRP)  # a run that stored rates 30..59 only
            written = await sync_funding(client, store, "bybit", [XRP], served.index[0], _end(served), page_limit=200)
            _assert_exact(store, served)
            return written, [r.query for r in fake.requests if r.path == FUNDING]

    written, queries = _run(test)
    assert written == {XRP: 30 + 31}
    starts = sorted(int(q["startTime"]) for q in queries)
    assert len(queries) == 2 and starts[0] == served.index[0].value // 1_000_000 and starts[1] == last_stored_ms + 1


def test_a_funding_interval_shorter_than_the_market_says_splits_full_pages_and_loses_nothing(tmp_path):
    hourly = _served()
    hourly.index = pd.date_range("2023-01-01", periods=len(hourly), freq="1h", tz="UTC", name="timestamp")  # real rates

    async def test(fake, client):
        with Store(tmp_path / "s.duckdb") as store:
            written = await sync_funding(client, store, "bybit", [XRP], hourly.index[0], _end(hourly), page_limit=20)
            _assert_exact(store, hourly)
            return written

    assert _run(test, hourly) == {XRP: 91}  # the market says 8h: windows of 152 hours hold 152 rates, pages 20


def test_binance_funding_pages_oldest_first(tmp_path):
    served = _served()

    async def test(fake, client):
        with Store(tmp_path / "s.duckdb") as store:
            written = await sync_funding(client, store, "binance", [XRP], served.index[0], _end(served), page_limit=30)
            _assert_exact(store, served, "binance")
            return written, fake.count("/fapi/v1/fundingRate")

    written, calls = _run(test, exchange="binance")
    assert written == {XRP: 91} and calls == math.ceil(90 / 28.5)  # windows of 28.5 intervals over 90 intervals


def test_funding_sync_rejects_spot_and_unknown_symbols():
    async def test(fake, client):
        with Store(":memory:") as store:
            with pytest.raises(ConfigError, match=r"BTC/USDT is not a perpetual.*'BTC/USDT:USDT'"):
                await sync_funding(client, store, "bybit", ["BTC/USDT"], "2024-01-01")
            with pytest.raises(BadSymbolError, match="did you mean 'XRP/USDT:USDT'"):
                await sync_funding(client, store, "bybit", ["XRP/USDT:USDC"], "2024-01-01")
        return True

    assert _run(test)


def test_fees_come_from_the_markets_vip_overrides_get_their_tier_and_a_change_keeps_history(tmp_path):
    async def test(fake, client):
        with Store(tmp_path / "s.duckdb") as store:
            first = await sync_fees(client, store, "bybit", [XRP, BTC], {"vip2": (0.0001, 0.0004),
                                                                          "vip3": {BTC: (0.00005, 0.0003)}})
            market = {s: (client.markets[s]["maker"], client.markets[s]["taker"]) for s in (XRP, BTC)}
            again = await sync_fees(client, store, "bybit", [XRP, BTC], {"vip2": (0.0001, 0.0004)})
            changed = await sync_fees(client, store, "bybit", [XRP], {"vip2": (0.00008, 0.00038)}, now="2025-06-01")
            mine = await sync_fees(client, store, "bybit", [XRP], {"default": (0.0, 0.0002)}, now="2025-06-02")
            fees = {
                "xrp": FeeSchedule.for_market("bybit", XRP, store),
                "vip2_old": FeeSchedule.for_market("bybit", XRP, store, tier="vip2", at="2025-01-01"),
                "vip2_new": FeeSchedule.for_market("bybit", XRP, store, tier="vip2", at="2025-07-01"),
                "vip3_btc": FeeSchedule.for_market("bybit", BTC, store, tier="vip3"),
                "btc": FeeSchedule.for_market("bybit", BTC, store, at="2025-07-01"),
            }
            return first, again, changed, mine, market, fees, len(store.fee_schedules("bybit"))

    first, again, changed, mine, market, fees, rows = _run(test)
    assert first["written"].all() and len(first) == 4  # 2 market rows + vip2 '*' + vip3 BTC
    assert set(first.loc[first["tier"] == "default", "source"]) == {"market"}
    assert not again["written"].any()  # nothing changed: nothing written
    assert changed.loc[changed["tier"] == "vip2", "written"].item()
    assert (fees["vip2_old"].maker, fees["vip2_old"].taker) == (0.0001, 0.0004)  # history kept
    assert (fees["vip2_new"].maker, fees["vip2_new"].taker) == (0.00008, 0.00038)
    assert (fees["vip3_btc"].maker, fees["vip3_btc"].taker) == (0.00005, 0.0003)
    assert (fees["btc"].maker, fees["btc"].taker) == market[BTC] and fees["btc"].source == "store"
    assert (fees["xrp"].maker, fees["xrp"].taker) == (0.0, 0.0002)  # the user's own default fees beat the market's
    assert mine.loc[mine["symbol"] == XRP, "source"].item() == "override"
    assert rows == 4 + 1 + 2  # first 4, the vip2 change, the default override for XRP and its '*' row


def test_fee_overrides_are_checked_before_anything_is_written():
    async def test(fake, client):
        with Store(":memory:") as store:
            with pytest.raises(ConfigError, match=r"vip1=0\.1"):
                await sync_fees(client, store, "bybit", [XRP], {"vip1": 0.1})
            with pytest.raises(BadSymbolError, match="did you mean"):
                await sync_fees(client, store, "bybit", [XRP], {"vip1": {"XRP/USDT:USDTT": (0.0, 0.0)}})
            return len(store.fee_schedules())

    assert _run(test) == 0


def test_cli_syncs_funding_and_fees_and_api_usage_prints_the_ledger(tmp_path, monkeypatch, capsys):
    from qlab import cli
    from qlab.exchange import ccxt_client

    served = _served()
    loop = asyncio.new_event_loop()
    fake = FakeExchange()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(ccxt_client, "make_client",
                        lambda exchange_id, credentials, mode: fake.point(ccxt.bybit({"enableRateLimit": False})))
    path = str(tmp_path / "s.duckdb")
    try:
        asyncio.run_coroutine_threadsafe(fake.start(), loop).result(10)
        fake.add_funding(XRP, served)
        code = cli.main(["--store", path, "data", "sync", "--exchange", "bybit", "--symbols", XRP, "--funding", "--fees",
                         "--since", str(served.index[0]), "--until", str(_end(served)), "--quiet", "--rate", "200",
                         "--key-id", "bob", "--fee-override", "vip1=0.0001,0.0004", "--calls-per-day", "1000"])
        sync_out = capsys.readouterr().out
        assert code == 0
        with Store(path) as store:
            _assert_exact(store, served)
            assert FeeSchedule.for_market("bybit", XRP, store, tier="vip1").taker == 0.0004
        assert cli.main(["--store", path, "api", "usage", "--key", "bob"]) == 0
        usage_out = capsys.readouterr().out
        assert cli.main(["--store", path, "api", "usage", "--key", "bobb"]) == 2
        err = capsys.readouterr().err
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    assert f"{XRP} funding: 91 new rates" in sync_out and "fees: 2 written" in sync_out
    lines = {line.split()[2]: line.split() for line in usage_out.splitlines() if line.split()[:1] == ["bob"]}
    assert int(lines[FUNDING][3]) == fake.count(FUNDING)  # calls per endpoint = requests the server saw
    assert int(lines["/v5/market/instruments-info"][3]) == fake.count("/v5/market/instruments-info")
    assert f"total: {len(fake.requests)} calls" in usage_out
    assert "did you mean 'bob'" in err

"""Binance spot private endpoints of the fake through CcxtExchange: HMAC query signatures, balances, the order
lifecycle (market, limit, stop-limit), fills and fees, refusals with Binance's codes, lookup by client order id."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import urllib.parse

import aiohttp
import ccxt.async_support as ccxt
import pytest

from qlab.errors import AuthError, InsufficientFundsError, OrderRejectedError
from qlab.exchange.ccxt_exchange import CcxtExchange
from qlab.exchange.fake import DEFAULT_FIXTURES, FakeExchange

KEY, SECRET = "bn-fake-key-0001", "bn-very-secret-value-42"
SPOT = "BTC/USDT"
FEE = 0.001  # the Binance fixture market's maker and taker rate


def _run(test, key=KEY, secret=SECRET, half_spread=0.0, balances=None, exchange="binance"):
    async def main():
        async with FakeExchange(half_spread=half_spread) as fake:
            fake.add_account(KEY, SECRET, balances)
            client = fake.point(getattr(ccxt, exchange)({"apiKey": key, "secret": secret, "enableRateLimit": False, "timeout": 3000}))
            async with CcxtExchange(client, retry={"max_tries": 2, "base": 0.01}) as ex:
                return await test(fake, ex)

    return asyncio.run(main())


def _signed(params: dict, body: dict | None = None, secret: str = SECRET) -> tuple[str, str]:
    """Binance's documented scheme, written independently: HMAC-SHA256 of the query string followed by the body."""
    query = urllib.parse.urlencode(params)
    form = urllib.parse.urlencode(body or {})
    sig = hmac.new(secret.encode(), (query + form).encode(), hashlib.sha256).hexdigest()
    return query, (form + "&" if form else "") + "signature=" + sig


async def _raw(fake, method: str, path: str, params: dict, body: dict | None = None, key: str = KEY, secret: str = SECRET):
    query, form = _signed(params, body, secret)
    if method in ("GET", "DELETE"):  # no body: the signature ends the query string
        query, form = query + "&" + form, None
    async with aiohttp.ClientSession() as s, s.request(method, f"{fake.url}{path}?{query}", data=form,
                                                       headers={"X-MBX-APIKEY": key,
                                                                "Content-Type": "application/x-www-form-urlencoded"}) as r:
        return r.status, await r.json()


def test_market_buy_and_sell_move_balances_and_fees_as_binance_books_them():
    async def test(fake, ex):
        fake.set_price(SPOT, 30000.0)
        before = await ex.fetch_balance()
        buy = await ex.create_order(SPOT, "buy", "market", 0.1, client_id="q-buy-1")
        sell = await ex.create_order(SPOT, "sell", "market", 0.05)
        after = await ex.fetch_balance()
        return before, buy, sell, after, await ex.fetch_my_trades(SPOT)

    before, buy, sell, after, trades = _run(test, half_spread=0.001, balances={"USDT": 10000.0})
    ask, bid = 30000.0 * 1.001, 30000.0 * 0.999
    assert before.total == {"USDT": 10000.0}
    assert buy.status == "closed" and buy.client_id == "q-buy-1" and buy.average == pytest.approx(ask)
    assert buy.fee == pytest.approx(0.1 * FEE)  # from the FULL answer's fills: in BTC
    assert sell.status == "closed" and sell.average == pytest.approx(bid)
    assert after.total["BTC"] == pytest.approx(0.1 * (1 - FEE) - 0.05)
    assert after.total["USDT"] == pytest.approx(10000.0 - 0.1 * ask + 0.05 * bid * (1 - FEE))
    assert [(t.side, t.order_id, t.fee_currency, t.maker) for t in trades] == [("buy", buy.id, "BTC", False),
                                                                              ("sell", sell.id, "USDT", False)]
    assert trades[1].fee == pytest.approx(0.05 * bid * FEE)


def test_limit_rests_fills_as_maker_cancel_and_open_orders():
    async def test(fake, ex):
        fake.set_price(SPOT, 30000.0)
        rest = await ex.create_order(SPOT, "buy", "limit", 0.01, 29000.0, client_id="q-lim-1")
        other = await ex.create_order(SPOT, "buy", "limit", 0.02, 28000.0)
        open_all = await ex.fetch_open_orders()  # no symbol: allowed (warnOnFetchOpenOrdersWithoutSymbol off)
        locked = await ex.fetch_balance()
        fake.set_price(SPOT, 29500.0)
        still = await ex.fetch_order(rest.id, SPOT)
        fake.set_price(SPOT, 28990.0)
        filled = await ex.fetch_order(rest.id, SPOT)
        canceled = await ex.cancel_order(other.id, SPOT)
        return rest, other, open_all, locked, still, filled, canceled, await ex.fetch_open_orders(SPOT), \
            await ex.fetch_my_trades(SPOT), await ex.fetch_balance()

    rest, other, open_all, locked, still, filled, canceled, open_after, trades, balance = _run(test)
    assert rest.status == "open" and rest.type == "limit" and rest.price == 29000.0 and rest.client_id == "q-lim-1"
    assert {o.id for o in open_all} == {rest.id, other.id}
    assert locked.used["USDT"] == pytest.approx(0.01 * 29000 + 0.02 * 28000)  # spot: the quote is locked
    assert still.status == "open" and still.filled == 0
    assert filled.status == "closed" and filled.average == 29000.0 and filled.fee is None  # GET /api/v3/order: no fee
    assert canceled.status == "canceled" and open_after == []
    assert [(t.order_id, t.price, t.amount, t.maker, t.fee) for t in trades] == \
           [(rest.id, 29000.0, 0.01, True, pytest.approx(0.01 * FEE))]
    assert balance.total["USDT"] == pytest.approx(10000 - 0.01 * 29000) and balance.used["USDT"] == 0


def test_stop_limit_triggers_and_stop_market_is_refused_on_btcusdt():
    async def test(fake, ex):
        fake.set_price(SPOT, 30000.0)
        await ex.create_order(SPOT, "buy", "market", 0.1)
        stop = await ex.create_order(SPOT, "sell", "stop_limit", 0.05, 28900.0, stop_price=29000.0)
        with pytest.raises(OrderRejectedError):  # STOP_LOSS (market) is not in BTCUSDT's orderTypes
            await ex.create_order(SPOT, "sell", "stop_market", 0.05, stop_price=29000.0)
        fake.set_price(SPOT, 29500.0)
        waiting = await ex.fetch_order(stop.id, SPOT)
        fake.set_price(SPOT, 28950.0)  # through the stop: a limit sell at 28900, marketable at 28950
        return stop, waiting, await ex.fetch_order(stop.id, SPOT)

    stop, waiting, fired = _run(test)
    assert stop.type == "stop_limit" and stop.stop_price == 29000.0 and stop.status == "open"
    assert stop.raw["info"]["type"] == "STOP_LOSS_LIMIT"
    assert waiting.status == "open" and waiting.filled == 0
    assert fired.status == "closed" and fired.average == 28950.0


def test_refusals_use_binance_codes_and_leave_no_order():
    async def test(fake, ex):
        fake.set_price(SPOT, 30000.0)
        with pytest.raises(InsufficientFundsError, match="Account has insufficient balance for requested action"):
            await ex.create_order(SPOT, "buy", "market", 1.0)
        with pytest.raises(InsufficientFundsError):
            await ex.create_order(SPOT, "sell", "limit", 0.01, 31000.0)  # no BTC to sell
        with pytest.raises(OrderRejectedError, match=r"-1013.*NOTIONAL"):
            await ex.create_order(SPOT, "buy", "limit", 0.0001, 30000.0)  # 3 USDT < minNotional 5
        await ex.load_markets()
        now = int(time.time() * 1000)
        lot = await _raw(fake, "POST", "/api/v3/order", {"symbol": "BTCUSDT", "timestamp": now},
                         {"side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.000015", "price": "30000"})
        tick = await _raw(fake, "POST", "/api/v3/order", {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timestamp": now},
                          {"timeInForce": "GTC", "quantity": "0.001", "price": "30000.005"})
        stale = await _raw(fake, "GET", "/api/v3/account", {"timestamp": now - 60_000})
        ok = await _raw(fake, "POST", "/api/v3/order", {"symbol": "BTCUSDT", "timestamp": now},  # query + body signed
                        {"side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.001", "price": "25000",
                         "newClientOrderId": "dup-1"})
        dup = await _raw(fake, "POST", "/api/v3/order", {"symbol": "BTCUSDT", "timestamp": now},
                         {"side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.001", "price": "25000",
                          "newClientOrderId": "dup-1"})
        return lot, tick, stale, ok, dup, fake.orders

    lot, tick, stale, ok, dup, orders = _run(test, balances={"USDT": 1000.0})
    assert lot == (400, {"code": -1013, "msg": "Filter failure: LOT_SIZE"})
    assert tick == (400, {"code": -1013, "msg": "Filter failure: PRICE_FILTER"})
    assert stale[1]["code"] == -1021
    assert ok[0] == 200 and ok[1]["status"] == "NEW" and ok[1]["clientOrderId"] == "dup-1"
    assert dup == (400, {"code": -2010, "msg": "Duplicate order sent."})
    assert [o.link_id for o in orders] == ["dup-1"]


def test_bad_key_or_signature_is_auth_error_with_binance_codes_and_no_secret(caplog, capsys):
    caplog.set_level(logging.DEBUG)
    bad_secret = "bn-wrong-secret-value-99"

    async def failing(fake, ex):
        with pytest.raises(AuthError) as info:
            await ex.fetch_balance()
        return info.value

    sig_error = _run(failing, secret=bad_secret)
    key_error = _run(failing, key="unknown-key-7")
    assert "-1022" in str(sig_error) and "Signature for this request is not valid" in str(sig_error)
    assert "-2015" in str(key_error)
    out = capsys.readouterr()
    for text in (str(sig_error), repr(sig_error), str(key_error), repr(key_error), caplog.text, out.out, out.err):
        assert bad_secret not in text and SECRET not in text


@pytest.mark.parametrize("exchange, symbol", [("binance", SPOT), ("bybit", SPOT), ("bybit", "BTC/USDT:USDT")])
def test_fetch_order_by_client_id_finds_open_and_finished_orders_and_none_for_unknown(exchange, symbol):
    async def test(fake, ex):
        fake.set_price(symbol, 30000.0)
        resting = await ex.create_order(symbol, "buy", "limit", 0.01, 29000.0, client_id="cid-rest")
        done = await ex.create_order(symbol, "buy", "market", 0.01, client_id="cid-done")
        return resting, done, [await ex.fetch_order_by_client_id(c, symbol) for c in ("cid-rest", "cid-done", "cid-none")]

    resting, done, (a, b, c) = _run(test, exchange=exchange)
    assert a is not None and (a.id, a.client_id, a.status) == (resting.id, "cid-rest", "open")
    assert b is not None and (b.id, b.client_id, b.status, b.filled) == (done.id, "cid-done", "closed", 0.01)
    assert c is None


def test_answers_have_the_recorded_binance_shapes():
    """Every field of ccxt's recorded Binance spot answers is present in the fake's answers."""
    recorded = json.loads((DEFAULT_FIXTURES / "response" / "binance.json").read_text())["methods"]

    async def test(fake, ex):
        fake.set_price(SPOT, 30000.0)
        await ex.load_markets()
        now = int(time.time() * 1000)
        created = await _raw(fake, "POST", "/api/v3/order", {"timestamp": now},
                             {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.01"})
        oid = created[1]["orderId"]
        return {
            "fetchBalance": await _raw(fake, "GET", "/api/v3/account", {"timestamp": now}),
            "createOrder": created,
            "fetchOrder": await _raw(fake, "GET", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": oid, "timestamp": now}),
            "fetchMyTrades": await _raw(fake, "GET", "/api/v3/myTrades", {"symbol": "BTCUSDT", "timestamp": now}),
        }

    answers = _run(test)
    for method, (status, body) in answers.items():
        case = next(c for c in recorded[method] if not c.get("input") or c["input"][-1] != {"type": "swap"})
        want = case["httpResponse"][0] if isinstance(case["httpResponse"], list) else case["httpResponse"]
        got = body[0] if isinstance(body, list) else body
        optional = {"icebergQty", "workingTime"} if method == "createOrder" else set()  # sent for iceberg orders only
        assert status == 200 and set(want) - set(got) - optional == set(), method


def test_a_thin_book_expires_a_market_orders_rest_and_fills_a_limit_in_pieces():
    """set_liquidity on the Binance routes: a market buy's unfilled rest EXPIREs (ccxt 'expired', filled part kept);
    a resting limit sell is PARTIALLY_FILLED ('open') until later price events fill it."""
    async def test(fake, ex):
        fake.set_price(SPOT, 30000.0)
        fake.set_liquidity(SPOT, 0.04)
        market = await ex.create_order(SPOT, "buy", "market", 0.1)
        limit = await ex.create_order(SPOT, "sell", "limit", 0.03, 30500.0)
        fake.set_liquidity(SPOT, 0.02)
        states = []
        for price in (30600.0, 30700.0):
            fake.set_price(SPOT, price)
            states.append(await ex.fetch_order(limit.id, SPOT))
        return market, states, await ex.fetch_balance()

    market, states, balance = _run(test, balances={"USDT": 10000.0})
    assert market.status == "expired" and market.filled == pytest.approx(0.04) and market.remaining == pytest.approx(0.06)
    assert [(o.status, round(o.filled, 9)) for o in states] == [("open", 0.02), ("closed", 0.03)]
    assert states[-1].average == 30500.0
    assert balance.total["BTC"] == pytest.approx(0.04 * (1 - FEE) - 0.03)  # the buy's fee is paid in BTC

"""Bybit v5 private endpoints of the fake through CcxtExchange: HMAC auth, balances, the order lifecycle, fills."""

from __future__ import annotations

import asyncio
import logging

import ccxt.async_support as ccxt
import pytest

from qlab.errors import AuthError, InsufficientFundsError, OrderRejectedError, PermissionDeniedError
from qlab.exchange.ccxt_exchange import CcxtExchange
from qlab.exchange.fake import FakeExchange

KEY, SECRET = "fake-key-0001", "very-secret-value-42"
SPOT, LINEAR = "BTC/USDT", "BTC/USDT:USDT"
SPOT_FEE, LINEAR_TAKER, LINEAR_MAKER = 0.001, 0.0006, 0.0001  # the fixture markets' fee rates


def _run(test, key=KEY, secret=SECRET, half_spread=0.0, **account):
    async def main():
        async with FakeExchange(half_spread=half_spread) as fake:
            fake.add_account(KEY, SECRET, account.get("balances"), read_only=account.get("read_only", False))
            client = fake.point(ccxt.bybit({"apiKey": key, "secret": secret, "enableRateLimit": False, "timeout": 3000}))
            async with CcxtExchange(client, retry={"max_tries": 2, "base": 0.01}) as ex:
                return await test(fake, ex)

    return asyncio.run(main())


def test_spot_market_buy_fills_at_price_plus_half_spread_and_updates_balance():
    async def test(fake, ex):
        fake.set_price(SPOT, 30000.0)
        before = await ex.fetch_balance()
        order = await ex.create_order(SPOT, "buy", "market", 0.1)
        after = await ex.fetch_balance()
        trades = await ex.fetch_my_trades(SPOT)
        return before, order, after, trades, fake

    before, order, after, trades, fake = _run(test, half_spread=0.001, balances={"USDT": 10000.0})
    px = 30000.0 * 1.001
    assert before.total == {"USDT": 10000.0}
    assert order.status == "closed" and order.filled == pytest.approx(0.1) and order.average == pytest.approx(px)
    assert after.total["USDT"] == pytest.approx(10000.0 - 0.1 * px)
    assert after.total["BTC"] == pytest.approx(0.1 * (1 - SPOT_FEE))  # Bybit spot buys pay the fee in base
    assert [(t.order_id, t.price, t.amount, t.fee_currency) for t in trades] == [(order.id, pytest.approx(px), 0.1, "BTC")]
    assert trades[0].fee == pytest.approx(0.1 * SPOT_FEE) and trades[0].maker is False
    assert len(fake.orders) == 1 and fake.orders[0].status == "Filled"


def test_limit_rests_then_fills_on_set_price_cancel_and_open_orders():
    async def test(fake, ex):
        fake.set_price(LINEAR, 20000.0)
        buy = await ex.create_order(LINEAR, "buy", "limit", 0.01, 19000.0, client_id="qlab-1")
        other = await ex.create_order(LINEAR, "buy", "limit", 0.02, 18000.0)
        open_before = await ex.fetch_open_orders(LINEAR)
        balance_open = await ex.fetch_balance()
        fake.set_price(LINEAR, 19500.0)  # not reached
        still = await ex.fetch_order(buy.id, LINEAR)
        fake.set_price(LINEAR, 18990.0)  # crosses the 19000 bid
        filled = await ex.fetch_order(buy.id, LINEAR)
        canceled = await ex.cancel_order(other.id, LINEAR)
        open_after = await ex.fetch_open_orders()
        trades = await ex.fetch_my_trades()
        balance = await ex.fetch_balance()
        return buy, other, None, open_before, balance_open, still, filled, canceled, open_after, trades, balance

    buy, other, _, open_before, balance_open, still, filled, canceled, open_after, trades, balance = _run(test)
    assert buy.status == "open" and buy.client_id == "qlab-1" and buy.price == 19000.0 and buy.type == "limit"
    assert {o.id for o in open_before} == {buy.id, other.id}
    assert balance_open.used["USDT"] == pytest.approx((0.01 * 19000 + 0.02 * 18000) / 10)  # 10x order margin
    assert still.status == "open" and still.filled == 0
    assert filled.status == "closed" and filled.average == 19000.0 and filled.fee == pytest.approx(0.01 * 19000 * LINEAR_MAKER)
    assert canceled.status == "canceled" and open_after == []
    assert [(t.order_id, t.price, t.amount, t.maker) for t in trades] == [(buy.id, 19000.0, 0.01, True)]
    assert balance.total["USDT"] == pytest.approx(10000 - 0.01 * 19000 * LINEAR_MAKER)
    assert balance.used["USDT"] == pytest.approx(0.01 * 19000 / 10)  # position margin only


def test_stop_triggers_and_linear_round_trip_realises_pnl():
    async def test(fake, ex):
        fake.set_price(LINEAR, 20000.0)
        entry = await ex.create_order(LINEAR, "buy", "market", 0.1)
        stop = await ex.create_order(LINEAR, "sell", "stop_market", 0.1, stop_price=19000.0, reduce_only=True)
        fake.set_price(LINEAR, 19500.0)
        untouched = await ex.fetch_order(stop.id, LINEAR)
        fake.set_price(LINEAR, 18900.0)  # falls through the stop: a market sell at 18900
        fired = await ex.fetch_order(stop.id, LINEAR)
        return entry, stop, untouched, fired, await ex.fetch_balance(), await ex.fetch_my_trades(LINEAR)

    entry, stop, untouched, fired, balance, trades = _run(test)
    assert stop.type == "stop_market" and stop.stop_price == 19000.0 and stop.status == "open"
    assert untouched.status == "open" and fired.status == "closed" and fired.average == 18900.0
    fees = 0.1 * 20000 * LINEAR_TAKER + 0.1 * 18900 * LINEAR_TAKER
    assert balance.total["USDT"] == pytest.approx(10000 + 0.1 * (18900 - 20000) - fees)
    assert balance.used["USDT"] == pytest.approx(0.0)
    assert [t.side for t in trades] == ["buy", "sell"] and [t.order_id for t in trades] == [entry.id, stop.id]


def test_order_refusals_use_the_exchange_codes():
    async def test(fake, ex):
        fake.set_price(SPOT, 30000.0)
        fake.set_price(LINEAR, 30000.0)
        refused = []
        for args in ((SPOT, "buy", "market", 1.0), (LINEAR, "buy", "limit", 1.0, 30000.0)):
            with pytest.raises(InsufficientFundsError, match="insufficient funds") as info:
                await ex.create_order(*args)
            refused.append(str(info.value))
        with pytest.raises(OrderRejectedError, match="170136"):
            await ex.create_order(SPOT, "buy", "limit", 0.000006, 20000.0)  # Bybit min qty 0.000011
        with pytest.raises(OrderRejectedError, match="110017"):
            await ex.create_order(LINEAR, "sell", "market", 0.01, reduce_only=True)  # nothing to reduce
        return refused, fake.orders, await ex.fetch_balance()

    refused, orders, balance = _run(test, balances={"USDT": 1000.0})
    assert "170131" in refused[0] and "110007" in refused[1]
    assert orders == [] and balance.total == {"USDT": 1000.0}


def test_bad_key_or_signature_is_auth_error_and_never_leaks_the_secret(caplog, capsys):
    caplog.set_level(logging.DEBUG)
    bad_secret = "wrong-secret-value-99"

    async def wrong_secret(fake, ex):
        with pytest.raises(AuthError) as info:
            await ex.fetch_balance()
        return info.value

    async def wrong_key(fake, ex):
        with pytest.raises(AuthError) as info:
            await ex.fetch_balance()
        return info.value, fake.count("/v5/")

    sig_error = _run(wrong_secret, secret=bad_secret)
    key_error, calls = _run(wrong_key, key="unknown-key-7")
    assert "10004" in str(sig_error) and "10003" in str(key_error)
    assert calls == 1  # the first private call (load_markets asks for currencies) failed and was never retried
    out = capsys.readouterr()
    for text in (str(sig_error), repr(sig_error), str(key_error), repr(key_error), caplog.text, out.out, out.err):
        assert bad_secret not in text and SECRET not in text


def test_read_only_key_cannot_trade():
    async def test(fake, ex):
        fake.set_price(SPOT, 30000.0)
        with pytest.raises(PermissionDeniedError, match="permission"):
            await ex.create_order(SPOT, "buy", "market", 0.001)
        return (await ex.fetch_balance()).total

    assert _run(test, read_only=True) == {"USDT": 10000.0}


def test_limited_liquidity_fills_a_resting_limit_in_pieces_and_cancels_a_market_orders_rest():
    """set_liquidity: each price event offers 0.03 BTC, oldest order first; a limit keeps its rest, a market order's
    rest is cancelled (Bybit PartiallyFilledCanceled, 'closed' in ccxt with the filled part)."""
    async def test(fake, ex):
        fake.set_price(LINEAR, 20000.0)
        fake.set_liquidity(LINEAR, 0.03)
        first = await ex.create_order(LINEAR, "buy", "limit", 0.05, 19000.0)
        second = await ex.create_order(LINEAR, "buy", "limit", 0.02, 19000.0)
        seen = []
        for price in (18990.0, 18980.0, 18970.0):  # three price events reaching both bids
            fake.set_price(LINEAR, price)
            seen.append([await ex.fetch_order(o.id, LINEAR) for o in (first, second)])
        market = await ex.create_order(LINEAR, "sell", "market", 0.1)
        trades = await ex.fetch_my_trades(LINEAR)
        return seen, market, trades, fake, first

    seen, market, trades, fake, first = _run(test)
    filled = [[o.filled for o in event] for event in seen]
    assert filled == [[pytest.approx(0.03), 0.0], [pytest.approx(0.05), pytest.approx(0.01)], [pytest.approx(0.05), pytest.approx(0.02)]]
    assert [[o.status for o in event] for event in seen] == [["open", "open"], ["closed", "open"], ["closed", "closed"]]
    assert seen[0][0].remaining == pytest.approx(0.02) and seen[2][0].average == 19000.0  # a resting limit fills at its price
    assert market.status == "closed" and market.filled == pytest.approx(0.03) and market.remaining == pytest.approx(0.07)
    assert fake.orders[-1].status == "PartiallyFilledCanceled"
    assert [round(t.amount, 9) for t in trades if t.order_id == first.id] == [0.03, 0.02]
    assert sum(t.amount for t in trades) == pytest.approx(0.05 + 0.02 + 0.03)
    position = fake.accounts[KEY].positions[LINEAR][0]
    assert position == pytest.approx(0.07 - 0.03)  # bought 0.07, sold the 0.03 the book had

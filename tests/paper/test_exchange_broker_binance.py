"""ExchangeBroker end to end on Binance spot against the loopback fake (HMAC query signatures, the shared matching
engine): market round trips booked as the exchange reports them (base fees on buys, dust), limit entries that rest,
fill or expire and are cancelled, rejections, and restart idempotency through fetch_order_by_client_id."""

from __future__ import annotations

import asyncio

import ccxt.async_support as ccxt
import numpy as np
import pandas as pd
import pytest

import qlab
from qlab.costs import CostModel, FeeSchedule, FixedSlippage, FixedSpread
from qlab.exchange.ccxt_exchange import CcxtExchange
from qlab.exchange.fake import FakeExchange
from qlab.execution import OrderSpec, SizeSpec
from qlab.paper import MemoryJournal, PaperTrader, ReplayFeed
from qlab.paper.exchange_broker import ExchangeBroker
from tests.paper.conftest import sma_cross

KEY, SECRET = "bn-paper-key-0001", "bn-paper-secret-value-42"
SPOT = "BTC/USDT"
FEE = 0.001  # the Binance fixture market's maker and taker rate
HALF_SPREAD = 0.0001
STEP = 1e-5  # BTCUSDT LOT_SIZE stepSize


class SpotPathFeed:
    """Replays candles, walking the fake's BTC/USDT price open -> extremes -> close, then to the next open."""

    def __init__(self, fake: FakeExchange, candles: pd.DataFrame, steps: int = 12) -> None:
        self.fake, self.steps = fake, steps
        self.inner = ReplayFeed(candles, symbol=SPOT, timeframe="1h")
        self.symbols, self.timeframe = self.inner.symbols, self.inner.timeframe
        self.next_open = dict(zip(candles.index[:-1], candles["open"].to_numpy()[1:], strict=True))

    async def open(self, after=None):
        async for bar in self.inner.open(after):
            o, h, lo, c = bar.open, bar.high, bar.low, bar.close
            e1, e2 = (h, lo) if (h - o) <= (o - lo) else (lo, h)
            for a, b in ((o, e1), (e1, e2), (e2, c)):
                for x in np.linspace(a, b, self.steps + 1)[1:]:
                    self.fake.set_price(SPOT, float(x))
            if bar.ts in self.next_open:
                self.fake.set_price(SPOT, float(self.next_open[bar.ts]))
            yield bar


def costs() -> CostModel:
    return CostModel(fees=FeeSchedule(maker=FEE, taker=FEE), spread=FixedSpread(bps=2e4 * HALF_SPREAD),
                     slippage=FixedSlippage(bps=0.0), impact=None)


def run_on_fake(candles, strategy, *, balances=None, journal=None, **trader_kwargs):
    async def main():
        async with FakeExchange(half_spread=HALF_SPREAD) as fake:
            fake.add_account(KEY, SECRET, balances or {"USDT": 100_000.0})
            fake.set_price(SPOT, float(candles["open"].iloc[0]))
            client = fake.point(ccxt.binance({"apiKey": KEY, "secret": SECRET, "enableRateLimit": False, "timeout": 5000}))
            async with CcxtExchange(client, retry={"max_tries": 2, "base": 0.01}) as ex:
                specs = {k: trader_kwargs[k] for k in ("orders", "size") if k in trader_kwargs}
                broker = ExchangeBroker(ex, costs=costs(), **specs)
                trader = PaperTrader(strategy, SpotPathFeed(fake, candles), broker, journal=journal, costs=costs(), **trader_kwargs)
                try:
                    out = await trader.run()
                except BaseException as exc:  # returned to the test, which asserts on it
                    out = exc
                return out, fake, broker

    return asyncio.run(main())


def wallet_equity(fake: FakeExchange) -> float:
    bal = fake.accounts[KEY].balances
    return bal.get("USDT", 0.0) + bal.get("BTC", 0.0) * fake.price(SPOT)


@pytest.fixture(scope="module")
def candles() -> pd.DataFrame:
    return qlab.load_sample("BTC/USDT", "1h").iloc[-200:]


def test_market_round_trips_are_booked_as_binance_reports_them(candles):
    res, fake, broker = run_on_fake(candles, sma_cross(short=False), warmup=22, lookback=60, size=SizeSpec(value=0.5))
    assert not isinstance(res, BaseException), res
    assert ExchangeBroker.deterministic is False
    assert len(fake.fills) >= 4 and len(res.trades) >= 2
    links = [o.link_id for o in fake.orders]
    assert sorted(links) == sorted(e.payload["cid"] for e in res.events if e.kind == "order")  # one order per decision
    assert all(o.venue == "binance" for o in fake.orders)
    fills = [e.payload for e in res.events if e.kind == "fill"]
    by_order = {o.id: o.link_id for o in fake.orders}
    assert [by_order[f.order_id] for f in fake.fills] == [f["cid"] for f in fills]
    for f, ev in zip(fake.fills, fills, strict=True):
        assert ev["price"] == pytest.approx(f.price, rel=1e-12)
        if f.side == "Buy":  # fee paid in BTC: the position holds what reached the wallet, the fee is booked in USDT
            assert ev["qty"] == pytest.approx(f.qty * (1 - FEE), rel=1e-9) and ev["order_qty"] == pytest.approx(f.qty)
            assert ev["fee"] == pytest.approx(f.qty * FEE * f.price, rel=1e-9)
        else:  # the sale is the held quantity rounded down to the lot step; the dust left is booked with it
            held = fills[fills.index(ev) - 1]["qty"]
            assert f.qty == pytest.approx(np.floor(held / STEP + 1e-9) * STEP, abs=1e-12)
            assert ev["qty"] == pytest.approx(held) and ev["fee"] == pytest.approx(f.qty * f.price * FEE, rel=1e-9)
    assert abs(round(sum(f.qty for f in fake.fills if f.side == "Buy") / STEP) * STEP -
               sum(f.qty for f in fake.fills if f.side == "Buy")) < 1e-9  # entries on the lot step
    dust = fake.accounts[KEY].balances.get("BTC", 0.0) - sum(p.open_size for p in broker.state.positions.values())
    assert 0 <= dust < STEP * len(res.trades)
    # the trader's equity equals the wallet's but for the dust, booked as sold at its exit prices, held here at today's
    st = broker.state
    assert st.mark_equity({SPOT: fake.price(SPOT)}) == pytest.approx(wallet_equity(fake), abs=dust * fake.price(SPOT) + 1e-6)


def test_limit_entries_rest_then_fill_or_expire_and_are_cancelled_on_binance(candles):
    orders = OrderSpec(entry="limit", entry_offset=0.003, tif=2)
    res, fake, _ = run_on_fake(candles, sma_cross(short=False), warmup=22, lookback=60, orders=orders)
    assert not isinstance(res, BaseException), res
    expired = {e.payload["cid"] for e in res.events if e.kind == "cancel" and e.payload["reason"] == "expired"}
    status = {o.link_id: o.status for o in fake.orders}
    assert expired and all(status[c] == "Cancelled" for c in expired)
    rested = [o for o in fake.orders if o.order_type == "Limit" and o.status == "Filled"]
    assert rested, "some limit entries should rest, then fill"
    makers = [f for f in fake.fills if f.maker]
    assert makers and all(f.fee == pytest.approx(f.qty * FEE) for f in makers)  # maker buy: fee in BTC
    for o in rested:  # a resting limit buy fills at its own price, never above
        assert o.value / o.filled == pytest.approx(o.price, rel=1e-12)
    accepted = {e.payload["cid"] for e in res.events if e.kind == "accepted"}
    assert any(o.link_id in accepted and o.updated > o.created for o in rested)  # accepted resting, filled at a later bar


def test_short_entries_on_spot_are_rejected_for_insufficient_balance(candles):
    """Spot cannot sell BTC it does not hold: Binance's -2010 becomes a "reject" event and the trader keeps going."""
    res, fake, broker = run_on_fake(candles.iloc[:150], sma_cross(long=False, short=True), warmup=22, lookback=60)
    assert not isinstance(res, BaseException), res
    rejects = [e.payload for e in res.events if e.kind == "reject"]
    assert rejects and all(r["error"] == "InsufficientFundsError" and "insufficient balance" in r["reason"] for r in rejects)
    assert fake.orders == [] and not broker.state.positions and len(res.equity) == 150


class Crash(BaseException):
    """A simulated kill of the process."""


class CrashingJournal(MemoryJournal):
    """Dies when asked to journal the n-th "placed" event (the order is at the exchange by then)."""

    def __init__(self, run_id: str, crash_at: int | None) -> None:
        super().__init__(run_id)
        self.crash_at, self.placed = crash_at, 0

    def append(self, event):
        if event.kind == "placed" and self.crash_at is not None:
            self.placed += 1
            if self.placed == self.crash_at:
                raise Crash(f"killed before journaling placed #{self.placed}")
        return super().append(event)


def test_restart_adopts_the_order_binance_already_has_by_client_id(candles):
    bars = candles.iloc[:160]
    clean, clean_fake, _ = run_on_fake(bars, sma_cross(short=False), journal=MemoryJournal("bn"), warmup=22, lookback=60)
    journal = CrashingJournal("bn", crash_at=2)
    shared: dict = {}

    async def main():
        async with FakeExchange(half_spread=HALF_SPREAD) as fake:
            fake.add_account(KEY, SECRET, {"USDT": 100_000.0})
            fake.set_price(SPOT, float(bars["open"].iloc[0]))
            results = []
            for _ in range(2):
                client = fake.point(ccxt.binance({"apiKey": KEY, "secret": SECRET, "enableRateLimit": False}))
                async with CcxtExchange(client, retry={"max_tries": 2, "base": 0.01}) as ex:
                    broker = ExchangeBroker(ex, costs=costs())
                    trader = PaperTrader(sma_cross(short=False), SpotPathFeed(fake, bars), broker, journal=journal, costs=costs(),
                                         warmup=22, lookback=60)
                    try:
                        results.append(await trader.run())
                        shared["adopted"] = broker.adopted
                    except Crash as exc:
                        results.append(exc)
                        journal.crash_at = None
            shared["fake"] = fake
            return results

    crashed, resumed = asyncio.run(main())
    fake = shared["fake"]
    assert isinstance(crashed, Crash) and len(shared["adopted"]) >= 1
    links = [o.link_id for o in fake.orders]
    assert len(links) == len(set(links))  # no client id placed twice at the fake
    assert sorted(links) == sorted(o.link_id for o in clean_fake.orders)
    assert [(f.side, f.price, f.qty) for f in fake.fills] == [(f.side, f.price, f.qty) for f in clean_fake.fills]
    assert resumed.final_equity == pytest.approx(clean.final_equity, rel=1e-12)
    lookups = [r for r in fake.requests if r.path == "/api/v3/order" and r.method == "GET" and "origClientOrderId" in r.query]
    assert lookups  # the restart asked Binance by client id

"""ExchangeBroker end to end against the loopback fake exchange (Bybit v5 private REST with HMAC auth and a matching
engine): placement, fills, protective orders, cancels, rejections, auth failure, rate limits, restart idempotency,
and the difference between simulated and exchange-reported fills on the same real bars."""

from __future__ import annotations

import asyncio
import collections

import ccxt.async_support as ccxt
import numpy as np
import pandas as pd
import pytest

import qlab
from qlab.costs import CostModel, FeeSchedule, FixedSlippage, FixedSpread
from qlab.errors import AuthError
from qlab.exchange.ccxt_exchange import CcxtExchange
from qlab.exchange.fake import FakeExchange
from qlab.execution import OrderSpec, SizeSpec
from qlab.paper import MemoryJournal, PaperTrader, ReplayFeed, SimBroker
from qlab.paper.exchange_broker import ExchangeBroker
from tests.paper.conftest import sma_cross

KEY, SECRET = "paper-key-0001", "paper-secret-value-42"
FEED_SYMBOL, LINEAR = "BTC/USDT", "BTC/USDT:USDT"
TAKER, MAKER = 0.0006, 0.0001  # the fixture market's fee rates (tests/exchange/test_fake_private.py)
HALF_SPREAD = 0.0001


class PricePathFeed:
    """Replays candles and walks the fake's price along each bar's path before handing the bar over: open -> nearer
    extreme -> other extreme -> close in `steps` steps a leg (the order SimBroker assumes), then the next bar's open, which
    is where the market stands when orders decided at this close arrive."""

    def __init__(self, fake: FakeExchange, candles: pd.DataFrame, steps: int = 60) -> None:
        self.fake, self.candles, self.steps = fake, candles, steps
        self.inner = ReplayFeed(candles, symbol=FEED_SYMBOL, timeframe="1h")
        self.symbols, self.timeframe = self.inner.symbols, self.inner.timeframe
        self.next_open = dict(zip(candles.index[:-1], candles["open"].to_numpy()[1:], strict=True))

    async def open(self, after=None):
        async for bar in self.inner.open(after):
            o, h, lo, c = bar.open, bar.high, bar.low, bar.close
            e1, e2 = (h, lo) if (h - o) <= (o - lo) else (lo, h)
            for a, b in ((o, e1), (e1, e2), (e2, c)):
                for x in np.linspace(a, b, self.steps + 1)[1:]:
                    self.fake.set_price(LINEAR, float(x))
            nxt = self.next_open.get(bar.ts)
            if nxt is not None:
                self.fake.set_price(LINEAR, float(nxt))
            yield bar


def exchange_costs() -> CostModel:
    """The fake's costs as a CostModel: its fees, its half spread, no slippage or impact."""
    return CostModel(fees=FeeSchedule(maker=MAKER, taker=TAKER), spread=FixedSpread(bps=2e4 * HALF_SPREAD),
                     slippage=FixedSlippage(bps=0.0), impact=None)


def run_on_fake(candles, strategy, *, balances=None, faults=(), journal=None, broker_kwargs=None, before=None, retry=None,
                **trader_kwargs):
    """Run the paper trader with an ExchangeBroker on the fake; returns (result or exception, fake, broker, trader)."""
    async def main():
        async with FakeExchange(half_spread=HALF_SPREAD) as fake:
            fake.add_account(KEY, SECRET, balances or {"USDT": 100_000.0})
            fake.set_price(LINEAR, float(candles["open"].iloc[0]))
            for fault in faults:
                fake.inject(*fault[:2], **fault[2] if len(fault) > 2 else {})
            client = fake.point(ccxt.bybit({"apiKey": KEY, "secret": SECRET, "enableRateLimit": False, "timeout": 5000}))
            async with CcxtExchange(client, retry=retry or {"max_tries": 2, "base": 0.01}) as ex:
                specs = {k: trader_kwargs[k] for k in ("orders", "size") if k in trader_kwargs}
                broker = ExchangeBroker(ex, costs=exchange_costs(), symbols={FEED_SYMBOL: LINEAR}, **{**specs, **(broker_kwargs or {})})
                trader = PaperTrader(strategy, PricePathFeed(fake, candles), broker, journal=journal, costs=exchange_costs(),
                                     **trader_kwargs)
                if before is not None:
                    before(fake, trader)
                try:
                    out = await trader.run()
                except BaseException as exc:  # returned to the test, which asserts on it
                    out = exc
                return out, fake, broker, trader

    return asyncio.run(main())


def fake_equity(fake: FakeExchange) -> float:
    """The fake account's equity: wallet plus unrealised PnL at its current price."""
    account = fake.accounts[KEY]
    upl = sum(q * (fake.price(s) - e) for s, (q, e) in account.positions.items())
    return account.balances["USDT"] + upl


@pytest.fixture(scope="module")
def candles() -> pd.DataFrame:
    return qlab.load_sample("BTC/USDT", "1h").iloc[-260:]


def test_market_orders_are_placed_filled_and_booked_as_the_exchange_reports(candles):
    """Every exchange execution becomes one fill event with the exchange's price, size and fee; equity agrees."""
    res, fake, broker, _trader = run_on_fake(candles, sma_cross(long=True, short=True), warmup=22, lookback=60,
                                            size=SizeSpec(value=0.5))
    assert not isinstance(res, BaseException), res
    assert len(fake.fills) >= 6 and len(res.trades) >= 3
    orders = [e.payload for e in res.events if e.kind == "order"]
    assert sorted(o.link_id for o in fake.orders) == sorted(o["cid"] for o in orders)  # one exchange order per decision
    fills = [e.payload for e in res.events if e.kind == "fill"]
    by_order = {o.id: o.link_id for o in fake.orders}
    assert [(by_order[f.order_id], f.price, f.qty, f.fee) for f in fake.fills] == \
           [(f["cid"], pytest.approx(f["price"], rel=1e-12), pytest.approx(f["qty"], rel=1e-12), pytest.approx(f["fee"], rel=1e-9))
            for f in fills]
    for f in fake.fills:  # market orders: the next open plus or minus the half spread, taker fee
        assert f.fee == pytest.approx(f.qty * f.price * TAKER, rel=1e-9) and not f.maker
    assert all(abs(f["qty"] / 0.001 - round(f["qty"] / 0.001)) < 1e-6 for f in fills)  # the market's amount step
    # the trader's own accounting of the account equals the exchange's at the exchange's price
    st = broker.state
    assert st.mark_equity({FEED_SYMBOL: fake.price(LINEAR)}) == pytest.approx(fake_equity(fake), rel=1e-9)
    pos = fake.accounts[KEY].positions.get(LINEAR, (0.0, 0.0))[0]
    held = sum(p.direction * p.open_size for p in st.positions.values())
    assert pos == pytest.approx(held, abs=1e-9)


def test_stop_loss_and_take_profit_live_on_the_exchange_as_reduce_only_orders(candles):
    """Protective exits are reduce-only stop/limit orders; the one that fills closes the position, its sibling is cancelled."""
    orders = OrderSpec(stop_loss=0.01, take_profit=0.015)
    res, fake, broker, _ = run_on_fake(candles, sma_cross(), warmup=22, lookback=60, orders=orders)
    assert not isinstance(res, BaseException), res
    reasons = set(res.trades.loc[~res.trades.is_open, "exit_reason"])
    assert {"stop_loss", "take_profit"} <= reasons
    protective = [o for o in fake.orders if o.link_id.endswith(("-sl", "-tp"))]
    assert protective and all(o.reduce_only for o in protective)
    for o in protective:
        assert (o.trigger_price is not None) == o.link_id.endswith("-sl")
    fired = {o.link_id[:-3] for o in protective if o.status == "Filled"}
    for entry in fired:  # OCO: the sibling of a filled protective order was cancelled, never left working
        siblings = [o for o in protective if o.link_id[:-3] == entry and o.status != "Filled"]
        assert all(o.status in ("Cancelled", "Deactivated") for o in siblings)
    for _, row in res.trades[res.trades.exit_reason == "stop_loss"].iterrows():  # the stop fired at or beyond its level
        level = row.entry_price * (1 - row.direction * 0.01)
        assert (row.exit_price - level) * row.direction <= 1e-9 * level + 0.1
    live = {o.link_id for o in fake.orders if o.status in ("New", "Untriggered")}
    assert live == set(broker.protect) | set(broker.state.orders)  # nothing working at the exchange that the trader forgot


def test_limit_entries_rest_expire_and_are_cancelled_on_the_exchange(candles):
    orders = OrderSpec(entry="limit", entry_offset=0.004, tif=2)
    res, fake, _broker, _ = run_on_fake(candles, sma_cross(), warmup=22, lookback=60, orders=orders)
    assert not isinstance(res, BaseException), res
    cancels = {e.payload["cid"] for e in res.events if e.kind == "cancel" and e.payload["reason"] == "expired"}
    assert cancels, "some limit entries should expire unfilled"
    status = {o.link_id: o.status for o in fake.orders}
    assert all(status[c] == "Cancelled" for c in cancels)
    limit_fills = [f for f in fake.fills if f.maker]
    assert limit_fills and all(f.fee == pytest.approx(f.qty * f.price * MAKER, rel=1e-9) for f in limit_fills)
    for o in fake.orders:  # a filled limit buy never paid more than its limit (sell: never got less)
        if o.order_type == "Limit" and o.status == "Filled" and not o.reduce_only:
            avg = o.value / o.filled
            assert (avg - o.price) * (1 if o.side == "Buy" else -1) <= 1e-9


@pytest.mark.parametrize("orders", [OrderSpec(), OrderSpec(entry="limit", entry_offset=0.002, tif=3),
                                    OrderSpec(stop_loss=0.01, take_profit=0.015)], ids=["market", "limit", "sl_tp"])
def test_partial_fills_keep_the_traders_books_equal_to_the_exchanges(candles, orders):
    """The fake's book offers 0.2 BTC per price event against ~0.7 BTC orders: market orders fill 0.2 and the exchange
    cancels their rest, resting limits fill in pieces. Every execution still becomes the trader's own fill, an exit's
    rest is sent again ("-r") until the position is flat, a reversal entry waits for that, and the trader's position and
    equity equal the exchange's."""
    res, fake, broker, _ = run_on_fake(candles, sma_cross(long=True, short=True), warmup=22, lookback=60,
                                       size=SizeSpec(value=0.5), orders=orders,
                                       before=lambda fake, trader: fake.set_liquidity(LINEAR, 0.2))
    assert not isinstance(res, BaseException), res
    assert all(f.qty <= 0.2 + 1e-12 for f in fake.fills)
    cut = [o for o in fake.orders if o.status == "PartiallyFilledCanceled"]
    assert cut, "some market orders should have been cut short by the book"
    if orders.entry == "limit":
        pieces = collections.Counter(f.order_id for f in fake.fills)
        assert any(n > 1 for n in pieces.values()), "some resting limits should fill in several pieces"
    # per order: what the exchange executed equals what the trader booked (quantity, value, fee)
    by_order = {o.id: o.link_id for o in fake.orders}
    exchange, booked = collections.defaultdict(lambda: np.zeros(3)), collections.defaultdict(lambda: np.zeros(3))
    for f in fake.fills:
        exchange[by_order[f.order_id]] += (f.qty, f.qty * f.price, f.fee)
    for e in res.events:
        if e.kind == "fill":
            q = e.payload.get("order_qty", e.payload["qty"])
            booked[e.payload["cid"]] += (q, q * e.payload["price"], e.payload["fee"])
    assert set(exchange) == set(booked)
    for cid, got in exchange.items():
        np.testing.assert_allclose(booked[cid], got, rtol=1e-9, err_msg=cid)
    # an exit the book cut short is followed by its rest, and no order was ever refused (no netting, no reduce-only error)
    exits = {o.link_id for o in cut if o.reduce_only and not o.link_id.endswith(("-sl", "-tp"))}
    assert all(f"{cid}-r" in by_order.values() for cid in exits)
    assert exits or orders.entry != "limit"  # limit entries fill whole (in pieces), so their exits meet the thin book
    assert not [e for e in res.events if e.kind == "reject"]
    st = broker.state
    pos = fake.accounts[KEY].positions.get(LINEAR, (0.0, 0.0))[0]
    assert sum(p.direction * p.open_size for p in st.positions.values()) == pytest.approx(pos, abs=1e-9)
    assert st.mark_equity({FEED_SYMBOL: fake.price(LINEAR)}) == pytest.approx(fake_equity(fake), rel=1e-9)
    live = {o.link_id for o in fake.orders if o.status in ("New", "Untriggered", "PartiallyFilled")}
    assert live == set(broker.protect) | set(broker.state.orders)


def test_rejections_are_events_and_the_trader_keeps_running(candles):
    """Insufficient funds (the exchange's 110007) and a refused order (injected 10001) become "reject" events with the
    reason, the order is cancelled in the journal, and every bar is still processed."""
    res, fake, broker, _ = run_on_fake(candles.iloc[:120], sma_cross(), warmup=22, lookback=60, balances={"USDT": 50.0},
                                       broker_kwargs={"cash": 1_000_000.0}, faults=[("/v5/order/create", "auth", {"code": 10001})])
    assert not isinstance(res, BaseException), res
    rejects = [e.payload for e in res.events if e.kind == "reject"]
    assert rejects[0]["error"] == "OrderRejectedError" and "10001" in rejects[0]["reason"]
    assert any(r["error"] == "InsufficientFundsError" and "110007" in r["reason"] for r in rejects[1:])
    cancelled = {e.payload["cid"] for e in res.events if e.kind == "cancel" and e.payload["reason"] == "rejected by the exchange"}
    assert {r["cid"] for r in rejects} == cancelled
    assert len(res.equity) == 120 and fake.orders == [] and not broker.state.orders


def test_auth_failure_stops_the_trader_with_a_clear_message_and_no_secret(candles):
    res, fake, *_ = run_on_fake(candles.iloc[:120], sma_cross(), warmup=22, lookback=60,
                                faults=[("/v5/order/create", "auth", {"code": 10003})])
    assert isinstance(res, AuthError)
    text = str(res)
    assert "exchange broker stopped" in text and "qlab accounts check" in text and "same run id" in text
    assert SECRET not in text and SECRET not in repr(res)
    assert fake.orders == []


def test_rate_limited_order_is_sent_at_the_next_bar_exactly_once(candles):
    """429 on every try of the first order: a broker_error event, then the order goes out at the next bar, once."""
    res, fake, _broker, _ = run_on_fake(candles.iloc[:120], sma_cross(), warmup=22, lookback=60,
                                       faults=[("/v5/order/create", "429", {"times": 2, "retry_after": 0})])
    assert not isinstance(res, BaseException), res
    errors = [e for e in res.events if e.kind == "broker_error"]
    assert len(errors) == 1 and errors[0].payload["error"] == "RateLimitError"
    cid = errors[0].payload["cid"]
    assert [o.link_id for o in fake.orders].count(cid) == 1
    placed_at = next(k for k, e in enumerate(res.events) if e.kind == "placed" and e.payload["cid"] == cid)
    error_at = res.events.index(errors[0])
    bars_between = sum(e.kind == "bar" for e in res.events[error_at:placed_at])
    assert bars_between == 1
    assert sum(r.fault == "429" for r in fake.requests) == 2


class Crash(BaseException):
    """A simulated kill of the process at one exact point."""


class CrashingJournal(MemoryJournal):
    """A memory journal that "dies" when asked to write the n-th "placed" event (the order is at the exchange by then)."""

    def __init__(self, run_id: str, crash_at: int | None) -> None:
        super().__init__(run_id)
        self.crash_at, self.placed = crash_at, 0

    def append(self, event):
        if event.kind == "placed" and self.crash_at is not None:
            self.placed += 1
            if self.placed == self.crash_at:
                raise Crash(f"killed before journaling placed #{self.placed}")
        return super().append(event)


def test_restart_after_a_crash_between_send_and_journal_places_no_duplicate(candles):
    """Killed after the exchange accepted an order but before its id was journaled: the restarted trader finds the order
    by its client id and adopts it; the exchange ends with exactly the orders and fills of an uninterrupted run."""
    bars = candles.iloc[:200]
    kwargs = {"warmup": 22, "lookback": 60, "run_id": "crashy"}
    clean, clean_fake, *_ = run_on_fake(bars, sma_cross(), journal=MemoryJournal("crashy"), **{k: v for k, v in kwargs.items()
                                                                                              if k != "run_id"})

    journal = CrashingJournal("crashy", crash_at=3)
    shared: dict = {}

    async def main():
        async with FakeExchange(half_spread=HALF_SPREAD) as fake:
            fake.add_account(KEY, SECRET, {"USDT": 100_000.0})
            fake.set_price(LINEAR, float(bars["open"].iloc[0]))
            results = []
            for _ in range(2):  # the first session crashes, the second resumes from the same journal
                client = fake.point(ccxt.bybit({"apiKey": KEY, "secret": SECRET, "enableRateLimit": False}))
                async with CcxtExchange(client, retry={"max_tries": 2, "base": 0.01}) as ex:
                    broker = ExchangeBroker(ex, costs=exchange_costs(), symbols={FEED_SYMBOL: LINEAR})
                    trader = PaperTrader(sma_cross(), PricePathFeed(fake, bars), broker, journal=journal, costs=exchange_costs(),
                                         warmup=22, lookback=60)
                    try:
                        results.append(await trader.run())
                        shared["adopted"] = broker.adopted
                    except Crash as exc:
                        results.append(exc)
                        shared["at_crash"] = journal.events()
                        journal.crash_at = None
            shared["fake"] = fake
            return results

    crashed, resumed = asyncio.run(main())
    fake = shared["fake"]
    assert isinstance(crashed, Crash)
    assert len(shared["adopted"]) >= 1  # the order sent before the crash was found by its client id
    crashed_cid = next(e.payload["cid"] for e in reversed(shared["at_crash"]) if e.kind in ("order", "protect"))
    assert crashed_cid in shared["adopted"]
    links = [o.link_id for o in fake.orders]
    assert len(links) == len(set(links))  # no client id placed twice
    assert sorted(links) == sorted(o.link_id for o in clean_fake.orders)
    assert [(f.side, f.price, f.qty) for f in fake.fills] == [(f.side, f.price, f.qty) for f in clean_fake.fills]
    assert resumed.final_equity == pytest.approx(clean.final_equity, rel=1e-12)


def sim_vs_exchange(candles, strategy, orders=None, **kwargs):
    """The same strategy on the same bars through SimBroker (fill model "backtest", the fake's costs) and through the
    ExchangeBroker on the fake: matched fills and PnL."""
    orders = orders or OrderSpec()
    sim = PaperTrader(strategy, ReplayFeed(candles, symbol=FEED_SYMBOL, timeframe="1h"),
                      SimBroker(orders=orders, size=kwargs.get("size") or SizeSpec(), costs=exchange_costs(), cash=100_000.0,
                                timeframe="1h"), orders=orders, costs=exchange_costs(), **kwargs)
    sim_res = asyncio.run(sim.run())
    ex_res, _fake, _broker, _ = run_on_fake(candles, strategy, orders=orders, broker_kwargs={"cash": 100_000.0}, **kwargs)
    assert not isinstance(ex_res, BaseException), ex_res
    return sim_res, ex_res


@pytest.mark.parametrize("orders", [OrderSpec(), OrderSpec(stop_loss=0.01, take_profit=0.02)], ids=["market", "sl_tp"])
def test_simulated_and_exchange_fills_differ_by_far_less_than_one_percent(candles, orders):
    """The seed's target: < 1 % between simulated and exchange-reported execution.

    Both brokers see the same real bars; the exchange fills market orders at the next open +- its half spread (what
    SimBroker's backtest model assumes), and stops where the walked price path crosses them (12 steps a leg, so within
    ~1/12 of a leg beyond the level, where SimBroker fills at the level exactly). Sizes differ only by the amount step
    (0.001 BTC on ~1.5 BTC orders: <= 0.07 %) and by sizing on the close rather than the next open. Tolerances: each fill
    price within 0.2 % (measured: market fills identical, stop/take-profit exits 0.6 bp mean, 6 bp max with 60 steps a
    leg), final equity within 1 % (the seed's target; measured 0.04 % market-only, 0.6 % with stops over 2000 bars)."""
    sim, ex = sim_vs_exchange(candles, sma_cross(), orders=orders, warmup=22, lookback=60)
    s, x = sim.trades, ex.trades
    assert len(s) == len(x) and len(s) >= 4
    assert list(s.entry_time) == list(x.entry_time) and list(s.exit_reason) == list(x.exit_reason)
    entry_diff = np.abs(x.entry_price.to_numpy() / s.entry_price.to_numpy() - 1)
    exit_diff = np.abs(x.exit_price.to_numpy() / s.exit_price.to_numpy() - 1)
    assert entry_diff.max() < 2e-3 and exit_diff.max() < 2e-3
    pnl_diff = abs(ex.final_equity - sim.final_equity) / sim.final_equity
    assert pnl_diff < 0.01

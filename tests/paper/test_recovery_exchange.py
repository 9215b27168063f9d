"""Recovery with a non-deterministic broker: the exchange keeps trading while the paper trader is down, so the restarted
bar may regenerate different events than the journaled tail. The trader supersedes the stale tail (append-only) and books
what the exchange did, exactly once; the simulated broker still refuses a tail that differs."""

from __future__ import annotations

import asyncio
import dataclasses

import ccxt.async_support as ccxt
import pandas as pd
import pytest

import qlab
from qlab.exchange.ccxt_exchange import CcxtExchange
from qlab.exchange.fake import FakeExchange
from qlab.execution import OrderSpec
from qlab.paper import MemoryJournal, PaperTrader, ReplayFeed, SimBroker
from qlab.paper.broker import OrderRequest
from qlab.paper.events import Event
from qlab.paper.exchange_broker import ExchangeBroker
from qlab.paper.journal import StoreJournal, live_entries
from qlab.paper.trader import JournalMismatchError
from tests.paper.conftest import sma_cross
from tests.paper.test_exchange_broker import FEED_SYMBOL, HALF_SPREAD, KEY, LINEAR, SECRET, PricePathFeed, exchange_costs, fake_equity

ORDERS = OrderSpec(entry="limit", entry_offset=0.004, tif=3)  # limit entries 0.4 % away: they rest on the book
BARS = 110


class Crash(BaseException):
    """A simulated kill of the process at one exact point."""


class CrashingJournal(StoreJournal):
    """A store journal that "dies" at the first append for which `when(kinds appended so far, event)` is true."""

    def __init__(self, store, run_id, when=None) -> None:
        super().__init__(store, run_id)
        self.when, self.kinds = when, []

    def append(self, event):
        if self.when is not None and self.when(self.kinds, event):
            self.when = None
            raise Crash(f"killed before journaling {event.kind}")
        self.kinds.append(event.kind)
        return super().append(event)


def mark_after_accepted(kinds, ev):
    """Mid-bar: the bar's resting entry is accepted and journaled, its close ("mark") is not."""
    since = kinds[len(kinds) - kinds[::-1].index("mark"):] if "mark" in kinds else kinds
    return ev.kind == "mark" and "accepted" in since


def first_after_supersede(kinds, ev):
    return bool(kinds) and kinds[-1] == "supersede"


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return qlab.load_sample("BTC/USDT", "1h").iloc[-260:].iloc[:BARS]


async def session(fake, journal, bars):
    """One process lifetime: a fresh exchange client, broker and trader on the same journal; returns (result or Crash, broker)."""
    client = fake.point(ccxt.bybit({"apiKey": KEY, "secret": SECRET, "enableRateLimit": False, "timeout": 5000}))
    async with CcxtExchange(client, retry={"max_tries": 2, "base": 0.01}) as ex:
        broker = ExchangeBroker(ex, costs=exchange_costs(), symbols={FEED_SYMBOL: LINEAR}, orders=ORDERS)
        trader = PaperTrader(sma_cross(), PricePathFeed(fake, bars), broker, journal=journal, costs=exchange_costs(), orders=ORDERS,
                             warmup=22, lookback=60)
        try:
            return await trader.run(), broker
        except Crash as exc:
            return exc, broker


def scenario(tmp_path, bars, *, crash_again: bool, orphan: bool = False):
    """Crash after a resting entry was journaled; while down the price crosses its limit (it fills at the exchange); restart
    (optionally crashing again right after the supersede, and optionally with an orphan order in the tail); run to the end;
    then restart once more on the finished feed (a pure fold)."""
    store = qlab.Store(str(tmp_path / "paper.duckdb"))
    journal = CrashingJournal(store, "exch", mark_after_accepted)
    out: dict = {"store": store, "journal": journal}

    async def main():
        async with FakeExchange(half_spread=HALF_SPREAD) as fake:
            fake.add_account(KEY, SECRET, {"USDT": 100_000.0})
            fake.set_price(LINEAR, float(bars["open"].iloc[0]))
            first, _ = await session(fake, journal, bars)
            assert isinstance(first, Crash), "the run should stop mid-bar after a resting entry was journaled"
            resting = [o for o in fake.orders if o.status == "New" and not o.reduce_only]
            assert len(resting) == 1
            order = out["order"] = resting[0]
            # down: the market trades through the limit, the order fills as maker at its limit price
            fake.set_price(LINEAR, order.price * (0.995 if order.side == "Buy" else 1.005))
            assert order.status == "Filled"
            out["fake_fills_while_down"] = [f for f in fake.fills if f.order_id == order.id]
            if orphan:  # an order the crashed session had "sent and journaled" that the restart will not decide again
                cid = "qp" + "0" * 30
                req = OrderRequest(cid, FEED_SYMBOL, 1, "limit", "entry", 0, price=round(order.price * 0.5, 1), qty=0.01)
                async with CcxtExchange(fake.point(ccxt.bybit({"apiKey": KEY, "secret": SECRET, "enableRateLimit": False}))) as ex:
                    await ex.load_markets()
                    placed = await ex.create_order(LINEAR, "buy", "limit", 0.01, req.price, client_id=cid)
                ts = journal.events()[-1].ts
                journal.append(Event("order", req.payload(), ts))
                journal.append(Event("placed", {"cid": cid, "symbol": FEED_SYMBOL, "order_id": placed.id}, ts))
                out["orphan"] = cid
            if crash_again:
                journal.when = first_after_supersede
                second, _ = await session(fake, journal, bars)
                assert isinstance(second, Crash)
            out["result"], out["broker"] = await session(fake, journal, bars)
            out["refold"], out["refold_broker"] = await session(fake, journal, bars)
            out["fake"] = fake

    asyncio.run(main())
    return out


def state_of(broker):
    st = broker.state
    return (st.cash, st.equity, {s: (p.direction, p.open_size, p.entry_price) for s, p in st.positions.items()}, list(st.fills),
            list(st.marks), sorted(st.orders), dict(broker.order_ids))


@pytest.mark.parametrize("crash_again", [False, True], ids=["one_restart", "restart_after_supersede_too"])
def test_fill_while_down_is_reconciled_and_booked_once(tmp_path, bars, crash_again):
    out = scenario(tmp_path, bars, crash_again=crash_again)
    res, broker, fake, order = out["result"], out["broker"], out["fake"], out["order"]
    assert not isinstance(res, BaseException), res
    entries = out["journal"].entries()
    kinds = [e.kind for _, e in entries]
    supersedes = [e for _, e in entries if e.kind == "supersede"]
    # the only journaled fact that stopped being true is "the entry rests on the book": that one entry is voided, once
    accepted = [s for s, e in entries if e.kind == "accepted" and e.payload["cid"] == order.link_id]
    assert len(supersedes) == 1 and supersedes[0].payload["seqs"] == accepted
    assert kinds.count("supersede") == 1 and len(entries) == len({s for s, _ in entries})  # append-only, nothing rewritten
    live = [e for _, e in live_entries(entries)]
    fills = [e.payload for e in live if e.kind == "fill" and e.payload["cid"] == order.link_id]
    (fake_fill,) = out["fake_fills_while_down"]
    assert [(f["qty"], f["price"], f["maker"]) for f in fills] == [(fake_fill.qty, order.price, True)]  # booked exactly once
    links = [o.link_id for o in fake.orders]
    assert len(links) == len(set(links)) and links.count(order.link_id) == 1  # never placed twice
    assert order.link_id in broker.adopted  # the restart found the order at the exchange by its client id
    # the books agree with the exchange: position, wallet (cash + margin held) and equity at its price
    st = broker.state
    held = sum(p.direction * p.open_size for p in st.positions.values())
    assert fake.accounts[KEY].positions.get(LINEAR, (0.0, 0.0))[0] == pytest.approx(held, abs=1e-9)
    margin = sum(p.margin * p.open_size / p.size for p in st.positions.values())
    assert st.cash + margin == pytest.approx(fake.accounts[KEY].balances["USDT"], rel=1e-12)
    assert st.mark_equity({FEED_SYMBOL: fake.price(LINEAR)}) == pytest.approx(fake_equity(fake), rel=1e-9)
    assert len(res.equity) == BARS
    # recovery is idempotent: a further restart (a pure fold, superseded entries skipped) rebuilds the same state
    assert state_of(out["refold_broker"]) == state_of(broker)
    assert not any(e.kind == "accepted" and e.payload["cid"] == order.link_id for e in out["refold"].events)


def test_second_restart_after_supersede_gives_the_same_books_as_one_restart(tmp_path, bars):
    once = scenario(tmp_path / "a", bars, crash_again=False)
    twice = scenario(tmp_path / "b", bars, crash_again=True)
    assert len(once["result"].fills) >= 3
    pd.testing.assert_frame_equal(once["result"].fills.drop(columns="time"), twice["result"].fills.drop(columns="time"))
    pd.testing.assert_series_equal(once["result"].equity, twice["result"].equity)
    assert [(f.side, f.price, f.qty) for f in once["fake"].fills] == [(f.side, f.price, f.qty) for f in twice["fake"].fills]


def test_a_voided_order_not_decided_again_is_cancelled_at_the_exchange(tmp_path, bars):
    out = scenario(tmp_path, bars, crash_again=False, orphan=True)
    cid, fake = out["orphan"], out["fake"]
    assert not isinstance(out["result"], BaseException), out["result"]
    (orphan,) = [o for o in fake.orders if o.link_id == cid]
    assert orphan.status == "Cancelled"  # nothing left working at the exchange that the trader does not know
    live = [e for _, e in live_entries(out["journal"].entries())]
    assert [e.kind for e in live if e.payload.get("cid") == cid] == ["order", "placed", "cancel"]
    assert next(e for e in live if e.kind == "cancel" and e.payload["cid"] == cid).payload["reason"] == "superseded"
    assert cid not in out["broker"].state.orders and cid not in out["refold_broker"].state.orders


def test_exchange_broker_declares_itself_non_deterministic():
    assert getattr(ExchangeBroker, "deterministic", True) is False
    assert getattr(SimBroker, "deterministic", True) is True


def sim_trader(journal, candles):
    return PaperTrader(sma_cross(), ReplayFeed(candles, symbol=FEED_SYMBOL), journal=journal, orders=ORDERS, fill_model="realistic",
                       seed=3, warmup=22, lookback=60)


def test_simulated_broker_still_refuses_a_tampered_tail(bars):
    """SimBroker is deterministic: a restart regenerates the journaled tail exactly (control), and a tail that differs in one
    number stops the restart with JournalMismatchError, writing nothing (no supersede)."""
    full = MemoryJournal("sim")
    reference = asyncio.run(sim_trader(full, bars).run())
    events = full.events()
    marks = [k for k, e in enumerate(events) if e.kind == "mark"]
    # an unfinished bar with a fill in it: the journal up to its previous close, then its events without its own mark
    k = next(i for i in range(1, len(marks)) if any(e.kind == "fill" for e in events[marks[i - 1] + 1:marks[i]]))
    head, tail = events[:marks[k - 1] + 1], events[marks[k - 1] + 1:marks[k]]

    def journal_with(tail_events):
        j = MemoryJournal("sim")
        for e in head + tail_events:
            j.append(e)
        return j

    control = asyncio.run(sim_trader(journal_with(tail), bars).run())
    pd.testing.assert_frame_equal(control.trades, reference.trades)
    at = next(i for i, e in enumerate(tail) if e.kind == "fill")
    bad = dataclasses.replace(tail[at], payload={**tail[at].payload, "price": tail[at].payload["price"] * 1.001})
    tampered = journal_with([*tail[:at], bad, *tail[at + 1:]])
    n = len(tampered.events())
    with pytest.raises(JournalMismatchError, match="fill"):
        asyncio.run(sim_trader(tampered, bars).run())
    assert len(tampered.events()) == n and not any(e.kind == "supersede" for e in tampered.events())

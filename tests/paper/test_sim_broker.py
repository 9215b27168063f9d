"""SimBroker's realistic fill model on hand-made bars: latency, book walk (synthetic and real L2), partial fills,
queue position, and idempotent client order ids."""

from __future__ import annotations

import asyncio

import pandas as pd
import pytest

from qlab.costs import CostModel, FeeSchedule
from qlab.exchange.types import Bar, OrderBook
from qlab.execution import SizeSpec
from qlab.paper import DepthModel, LatencyModel, OrderRequest, SimBroker, client_order_id
from qlab.paper.sim_broker import path_price

T0 = pd.Timestamp("2024-01-01", tz="UTC")
FEES = CostModel.none().with_(fees=FeeSchedule(maker=0.0002, taker=0.0005))


def bar(k: int, o: float, h: float, lo: float, c: float, v: float = 1000.0) -> Bar:
    return Bar("X", "1m", T0 + pd.Timedelta(minutes=k), o, h, lo, c, v)


def broker(**kw) -> SimBroker:
    kw.setdefault("costs", FEES)
    return SimBroker(timeframe="1m", size=kw.pop("size", SizeSpec(mode="units", value=10.0)), **kw)


def run(b: SimBroker, steps) -> None:
    async def go():
        for item in steps:
            if isinstance(item, OrderRequest):
                await b.submit(item)
            elif isinstance(item, OrderBook):
                await b.on_book(item)
            else:
                await b.on_bar(item)
                await b.close_bar()
    asyncio.run(go())


def test_latency_moves_the_fill_along_the_path():
    b = broker(fill_model="realistic", latency=LatencyModel(fixed_ms=15_000, jitter_ms=0), depth=DepthModel(top_share=1.0))
    run(b, [bar(0, 100, 100, 100, 100), OrderRequest("a", "X", 1, "market", "entry", 0), bar(1, 100, 104, 99, 103)])
    fill = b.state.fills[0]
    # 15 s of a 60 s bar = a quarter of the path 100 -> 99 -> 104 -> 103 (length 1 + 5 + 1 = 7): 1.75 along, at 99.75
    assert path_price(100, 104, 99, 103, 0.25) == pytest.approx(99.75)
    assert fill["price"] == pytest.approx(99.75) and fill["size"] == 10.0
    assert fill["fee"] == pytest.approx(0.0005 * 99.75 * 10)


def test_thin_book_gives_partial_fills_at_worse_prices():
    depth = DepthModel(levels=3, tick_bps=10, top_share=0.002, growth=1.0)  # 2 units per level, 3 levels, 10 bp apart
    b = broker(fill_model="realistic", latency=LatencyModel(fixed_ms=0, jitter_ms=0), depth=depth)
    run(b, [bar(0, 100, 100, 100, 100), OrderRequest("a", "X", 1, "market", "entry", 0), bar(1, 100, 100, 100, 100)])
    fills = b.state.fills
    # 6 units per book (3 levels x 0.002 x the 1000 volume of bar 0); the book refreshes at the next path point: 6 + 4
    assert [f["size"] for f in fills] == pytest.approx([6.0, 4.0])
    assert fills[0]["price"] == pytest.approx((100 + 100.1 + 100.2) / 3)
    assert fills[1]["price"] == pytest.approx((2 * 100 + 2 * 100.1) / 4)
    assert b.state.positions["X"].size == pytest.approx(10.0)


def test_real_l2_snapshot_is_walked_instead_of_the_synthetic_book():
    book = OrderBook("X", T0 + pd.Timedelta(minutes=1), bids=((99.9, 50.0),), asks=((100.5, 4.0), (101.0, 100.0)))
    b = broker(fill_model="realistic", latency=LatencyModel(fixed_ms=0, jitter_ms=0))
    run(b, [bar(0, 100, 100, 100, 100), OrderRequest("a", "X", 1, "market", "entry", 0), book, bar(1, 100, 100, 100, 100)])
    assert b.state.fills[0]["price"] == pytest.approx((4 * 100.5 + 6 * 101.0) / 10)


def test_resting_limit_waits_for_the_queue_ahead():
    depth = DepthModel(levels=5, tick_bps=10, top_share=0.01, growth=1.0)
    b = broker(fill_model="realistic", latency=LatencyModel(fixed_ms=0, jitter_ms=0), depth=depth)
    order = OrderRequest("lim", "X", 1, "limit", "entry", 0, price=99.8)
    # queue ahead: bids at and above 99.8 in a book around 100 (half spread 0): 100, 99.9, 99.8 -> 3 x 10 = 30 units
    run(b, [bar(0, 100, 100, 100, 100, v=1000), order, bar(1, 100, 100, 99.7, 99.9, v=50)])
    # bar 1: path 100 -> 100 (the high, a tie goes first) -> 99.7 -> 99.9, length 0.5; the way down spends 0.1 below 99.8:
    # 50 * 0.1 / 0.5 = 10 units trade through, all taken by the queue ahead of the order
    assert not b.state.fills
    assert b.state.orders["lim"].queue_ahead == pytest.approx(30.0 - 10.0)
    run(b, [bar(2, 99.9, 99.9, 99.0, 99.5, v=1000)])
    fill = b.state.fills[0]
    through = 1000 * (99.8 - 99.0) / (0.9 + 0.5)
    assert fill["maker"] and fill["price"] == 99.8
    assert fill["size"] == pytest.approx(min(10.0, through - 20.0)) and through - 20.0 > 10.0


def test_client_ids_are_deterministic_and_resubmission_is_ignored():
    cid = client_order_id("run-1", "BTC/USDT", 42, "entry")
    assert cid == client_order_id("run-1", "BTC/USDT", 42, "entry") != client_order_id("run-1", "BTC/USDT", 43, "entry")
    b = broker()
    req = OrderRequest(cid, "X", 1, "market", "entry", 0)
    run(b, [bar(0, 100, 100, 100, 100), req, req, bar(1, 100, 101, 99, 100), req])
    assert len(b.state.fills) == 1 and b.state.positions["X"].size == 10.0


def test_latency_is_seeded_per_order():
    model = LatencyModel(fixed_ms=20, jitter_ms=30)
    a, b_ = model.delay(1, "x"), model.delay(1, "y")
    assert a == model.delay(1, "x") and a != b_ and a >= 0.02 and model.delay(2, "x") != a


def test_unknown_fill_model_is_named():
    with pytest.raises(ValueError, match=r"realistik.*did you mean 'realistic'"):
        SimBroker(fill_model="realistik")

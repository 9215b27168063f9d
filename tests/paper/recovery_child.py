"""Child process of the crash-recovery test: trades a replay feed with a store journal; prints each bar it closes."""

from __future__ import annotations

import asyncio
import sys

import qlab
from qlab.execution import OrderSpec
from qlab.paper import PaperTrader, ReplayFeed
from qlab.paper.journal import MemoryJournal
from tests.paper.conftest import sma_cross

BARS = 300
ORDERS = OrderSpec(entry="limit", entry_offset=0.001, tif=4, stop_loss=0.01, take_profit=0.015)


def trader(store, run_id: str) -> PaperTrader:
    """The same run in the child and in the test's uninterrupted reference (store None: an in-memory journal)."""
    candles = qlab.load_sample("BTC/USDT", "1h").iloc[-BARS:]
    journal = MemoryJournal(run_id) if store is None else None
    return PaperTrader(sma_cross(5, 13), ReplayFeed(candles, symbol="BTC/USDT"), store=store, run_id=run_id if store else None,
                       journal=journal, orders=ORDERS, fill_model="realistic", seed=7, warmup=14, lookback=40)


async def main(path: str, run_id: str) -> None:
    t = trader(qlab.Store(path), run_id)
    t.broker.emit = t._emit
    original = t.broker.close_bar

    async def close_bar(*a):
        await original(*a)
        print("bar", flush=True)

    t.broker.close_bar = close_bar
    await t.run()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))

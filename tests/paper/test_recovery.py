"""Crash recovery: kill -9 a paper run at random points, restart it until done; the result equals an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import qlab
from qlab.paper import PaperTrader, ReconnectingFeed, ReplayFeed, paper_trade
from tests.paper.recovery_child import BARS, trader

ROOT = Path(__file__).resolve().parents[2]


def test_kill_9_at_random_points_then_restart_gives_the_uninterrupted_result(tmp_path):
    path = str(tmp_path / "paper.duckdb")
    rng = random.Random(8)
    kills = 0
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, "-m", "tests.paper.recovery_child", path, "run1"], cwd=ROOT, stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        target = rng.randint(20, 90)  # bars closed in this session before the kill (the kill lands anywhere in the next bar)
        done = False
        for seen, line in enumerate(proc.stdout, start=1):
            if line.startswith("done"):
                done = True
                break
            if seen >= target:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
                break
        proc.wait(timeout=60)
        if done:
            break
    assert done and kills >= 3
    store = qlab.Store(path)
    import asyncio

    restarted = asyncio.run(trader(store, "run1").run())  # the feed is finished: this only folds the journal
    reference = asyncio.run(trader(None, "run1").run())
    assert len(reference.trades) >= 10 and reference.fills.maker.any()
    pd.testing.assert_frame_equal(restarted.trades, reference.trades)
    pd.testing.assert_frame_equal(restarted.fills, reference.fills)
    pd.testing.assert_series_equal(restarted.equity, reference.equity)
    events = store.journal("paper/run1")
    cids = [qlab_json["cid"] for qlab_json in events[events.kind == "order"]["payload"].map(__import__("json").loads)]
    assert len(cids) == len(set(cids)) > 0
    assert (events["kind"] == "bar").sum() == BARS  # every bar exactly once: nothing lost, nothing repeated


def test_feed_drops_are_reconnected_and_resume_after_the_last_bar():
    candles = qlab.load_sample("BTC/USDT", "1h").iloc[-200:]
    fn_kwargs = {"fill_model": "backtest"}
    plain = paper_trade("sma_cross", candles, **fn_kwargs)
    flaky = ReplayFeed(candles, fail_after=70)
    feed = ReconnectingFeed(flaky, base_delay=0.0)
    import asyncio

    result = asyncio.run(PaperTrader("sma_cross", feed, **fn_kwargs).run())
    assert feed.reconnects == 2 and flaky.opened == 3
    pd.testing.assert_frame_equal(result.trades, plain.trades)
    np.testing.assert_array_equal(result.equity.to_numpy(), plain.equity.to_numpy())

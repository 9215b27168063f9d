"""Paper trader replay throughput (events and bars per second) in parity and realistic mode on real data, and the
PnL difference between the realistic fill model and the backtest."""

from __future__ import annotations

import time
from typing import Any

from benchmarks import Config, SectionResult, section


def _run(strategy: Any, candles: Any, **kw: Any) -> tuple[Any, float]:
    from qlab.paper import paper_trade

    t = time.perf_counter()
    result = paper_trade(strategy, candles, **kw)
    return result, time.perf_counter() - t


@section("paper", "Paper trading replay")
def paper_section(cfg: Config) -> SectionResult:
    """Replay BTC/USDT 1h through the paper trader: template strategy and broker-only (precomputed-signal-free) runs."""
    import qlab

    n = 300 if cfg.quick else 2000
    candles = qlab.load_sample("BTC/USDT", "1h").iloc[-n:]
    rows, results = [], {}
    bt = qlab.backtest(candles, "sma_cross")
    for label, kw in (("parity (backtest fill model), memory journal", {}),
                      ("parity, DuckDB journal (one commit per event)",
                       {"store": qlab.Store(cfg.tmp_dir / "paper.duckdb"), "run_id": "bench"}),
                      ("realistic (latency + book + queue), memory journal", {"fill_model": "realistic"})):
        res, took = _run("sma_cross", candles, **kw)
        ev = len(res.events)
        results[label] = {"bars": n, "events": ev, "seconds": took, "events_per_s": ev / took, "bars_per_s": n / took,
                          "final_equity": res.final_equity}
        rows.append(f"| {label} | {n:,} | {ev:,} | {took:.2f} | {ev / took:,.0f} | {n / took:,.0f} |")
    real = results["realistic (latency + book + queue), memory journal"]["final_equity"]
    big_bt = qlab.backtest(candles, "sma_cross", cash=5_000_000)
    big, _ = _run("sma_cross", candles, fill_model="realistic", cash=5_000_000)
    results["pnl"] = {"backtest": bt.equity.iloc[-1], "realistic": real, "backtest_5m": big_bt.equity.iloc[-1],
                      "realistic_5m": big.final_equity}
    pnl_bt, pnl_real = bt.equity.iloc[-1] - 10_000, real - 10_000
    pnl_bt5, pnl_real5 = big_bt.equity.iloc[-1] - 5_000_000, big.final_equity - 5_000_000
    md = "\n".join([
        "| run (sma_cross, BTC/USDT 1h) | bars | events | seconds | events/s | bars/s |", "|---|---:|---:|---:|---:|---:|", *rows, "",
        f"The strategy is recompiled on a rolling window at every close, which dominates the time; parity-mode final equity equals "
        f"`qlab.backtest` ({bt.equity.iloc[-1]:,.2f}).",
        f"Realistic vs backtest PnL: {pnl_real:,.2f} vs {pnl_bt:,.2f} on 10 000 cash; {pnl_real5:,.0f} vs {pnl_bt5:,.0f} on 5 000 000 "
        "(orders large enough to walk the synthetic book and fill partially).",
    ])
    return SectionResult(results, md)

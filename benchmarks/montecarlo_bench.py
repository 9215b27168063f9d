"""Monte Carlo speed: `qlab.monte_carlo` bootstrap paths with their metrics, against arch's stationary bootstrap.

Target (from the issue): 10,000 bootstrap paths of one year of hourly returns with metrics in under 2 s.
"""

from __future__ import annotations

import statistics
import warnings
from typing import Any

import numpy as np

from benchmarks import STANDARD_HEADERS, Config, SectionResult, fmt_rate, fmt_seconds, repeat, section, table, timed, verdict
from benchmarks.synthetic import synthetic_candles
from qlab.analytics.metrics import bar_returns
from qlab.analytics.result import backtest
from qlab.research.mc_paths import path_metrics
from qlab.research.monte_carlo import monte_carlo

TARGET = 2.0  # seconds for 10,000 paths x 8,760 hourly returns, metrics included


def _arch_baseline(returns: np.ndarray, paths: int, block: float, seed: int) -> float:
    """Seconds for arch's StationaryBootstrap to draw `paths` resamples, compound them and measure them with the
    same numba metrics (so only the resampling differs)."""
    from arch.bootstrap import StationaryBootstrap

    bs = StationaryBootstrap(block, returns, seed=seed)

    def run() -> None:
        draws = np.vstack([data[0][0] for data in bs.bootstrap(paths)])
        curves = 10_000 * np.cumprod(np.concatenate([np.ones((paths, 1)), 1 + draws], axis=1), axis=1)
        path_metrics(curves, per_year=8760.0)

    return timed(run)[0]


@section("montecarlo", "Monte Carlo")
def run(cfg: Config) -> SectionResult:
    n_paths = 1_000 if cfg.quick else 10_000
    candles = synthetic_candles(8_761, timeframe="1h", seed=cfg.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = backtest(candles, "ema_cross")
    returns = bar_returns(result.equity).to_numpy()
    monte_carlo(result, "block_bootstrap", n=20, seed=0)  # load the kernels from numba's cache (or compile them)
    monte_carlo(result, "reshuffle", n=20, seed=0)
    block = repeat(lambda: monte_carlo(result, "block_bootstrap", n=n_paths, seed=1, block=24), 3)
    iid = repeat(lambda: monte_carlo(result, "block_bootstrap", n=n_paths, seed=1, block=1), 3)
    reshuffle = repeat(lambda: monte_carlo(result, "reshuffle", n=n_paths, seed=1), 3)
    n_trades = int((~result.trades["is_open"]).sum())
    arch_paths = 200 if cfg.quick else 1_000
    arch_s = _arch_baseline(returns, arch_paths, 24.0, cfg.seed)
    arch_per_10k = arch_s * n_paths / arch_paths
    n_rerun = 5 if cfg.quick else 20
    rerun_s, _ = timed(lambda: monte_carlo(result, "gbm", n=n_rerun, seed=1))
    garch_s, _ = timed(lambda: monte_carlo(result, "garch", n=n_rerun, seed=1))
    med = statistics.median
    steps = n_paths * len(returns)
    results: dict[str, Any] = {
        "paths": n_paths, "returns_per_path": len(returns), "block_s": med(block), "iid_s": med(iid),
        "reshuffle_s": med(reshuffle), "trades": n_trades, "arch_s_per_paths": arch_per_10k, "arch_paths_timed": arch_paths,
        "gbm_s_per_run": rerun_s / n_rerun, "garch_s_per_run": garch_s / n_rerun,
    }
    size = f"{n_paths:,} paths x {len(returns):,} 1h returns"
    ok = (lambda s: verdict(s < TARGET)) if not cfg.quick else (lambda s: "quick run")
    rows = [
        ["`monte_carlo(result, 'block_bootstrap', block=24)`: stationary bootstrap + final equity, CAGR, Sharpe, "
         "max and longest drawdown, ruin", size, f"{fmt_seconds(med(block))} (median of 3)", fmt_rate(steps, med(block), "steps/s"),
         f"< {TARGET:.0f} s", ok(med(block))],
        ["same, iid bootstrap (`block=1`)", size, f"{fmt_seconds(med(iid))} (median of 3)", fmt_rate(steps, med(iid), "steps/s"),
         "—", "—"],
        ["`monte_carlo(result, 'reshuffle')`", f"{n_paths:,} paths x {n_trades} trades", f"{fmt_seconds(med(reshuffle))} (median of 3)",
         fmt_rate(n_paths * n_trades, med(reshuffle), "trade-steps/s"), "—", "—"],
        [f"baseline: arch `StationaryBootstrap` ({arch_paths:,} paths timed, scaled to {n_paths:,}) + the same metrics kernel",
         size, f"{fmt_seconds(arch_per_10k)} (scaled)", fmt_rate(steps, arch_per_10k, "steps/s"), "qlab faster",
         verdict(med(block) < arch_per_10k) + f": {arch_per_10k / med(block):.0f}x"],
        [f"`monte_carlo(result, 'gbm')`: the strategy re-run on synthetic paths ({n_rerun} runs)", "8,761 1h bars per run",
         f"{fmt_seconds(rerun_s / n_rerun)} per run", "—", "—", "—"],
        [f"`monte_carlo(result, 'garch')`: GARCH(1,1) fit (arch) + {n_rerun} re-runs", "8,761 1h bars per run",
         f"{fmt_seconds(garch_s / n_rerun)} per run", "—", "—", "—"],
    ]
    note = ("Data: seeded synthetic 1h candles (`benchmarks/synthetic.py`), one year; the backtest is the `ema_cross` template "
            "with default costs. Timings are warm (numba kernels loaded from the cache first) and include building the "
            "metrics table; the fused kernel draws each path, measures it and keeps 250 equity points per path for the fan "
            "chart, so memory stays O(paths x 250) (the baseline holds every path). Each path has its own splitmix64 "
            "stream, so results depend on the seed only, not on the thread count.")
    return SectionResult(results, table(STANDARD_HEADERS, rows) + "\n\n" + note)

"""Backtest engine and parameter sweeps: qlab against backtesting.py, the reference loop and vectorbt.

Targets (from the issue): one SMA(20)/SMA(50) crossover backtest with costs on 1,000,000 1m bars, qlab >= 30x
faster than backtesting.py and >= 100x faster than the reference loop (`qlab.engine.reference`); a sweep of 780
SMA fast/slow pairs on 200,000 bars, qlab's `sweep_ma_cross` >= 20x faster than vectorbt's `from_signals` over
the same pairs. Every tool's trades are checked against qlab's before anything is timed. numba compile time is
measured apart from run time, in fresh processes with an empty and with a filled kernel cache.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd

from benchmarks import STANDARD_HEADERS, Config, SectionResult, fmt_rate, fmt_seconds, repeat, section, table, timed, verdict
from benchmarks.synthetic import synthetic_candles
from qlab.analytics.result import backtest
from qlab.costs import CostModel, FeeSchedule, FixedSlippage, FixedSpread
from qlab.engine.orders import SizeSpec
from qlab.engine.sweep import ma_cross_signals, sweep_ma_cross

REPO_ROOT = Path(__file__).resolve().parent.parent
SINGLE_BARS, QUICK_SINGLE_BARS = 1_000_000, 20_000
SWEEP_BARS, QUICK_SWEEP_BARS = 200_000, 10_000
SWEEP_WINDOWS = tuple(range(10, 410, 10))  # 40 windows, every pair fast < slow: 40 * 39 / 2 = 780 pairs
QUICK_WINDOWS = tuple(range(10, 110, 10))  # 10 windows: 45 pairs
FAST, SLOW, FEE, CASH = 20, 50, 0.001, 10_000.0
WARM_RUNS = 3
BT_TARGET, REFERENCE_TARGET, SWEEP_TARGET = 30.0, 100.0, 20.0
BT_UNIT = 1e-15  # backtesting.py trades whole units: FractionalBacktest with units of 1e-15 BTC
BT_SIZE = 1 - 1e-12  # backtesting.py's "all in" (a fraction < 1 of the available margin)
SIZE = SizeSpec("percent", 1.0)


def fee_only() -> CostModel:
    """0.1 % fee per fill, nothing else: the one cost model all three single-run tools can share."""
    return CostModel(fees=FeeSchedule(FEE, FEE), spread=FixedSpread(0.0), slippage=FixedSlippage(0.0), impact=None)


# ---------------------------------------------------------------- the runs


def qlab_single(candles: pd.DataFrame) -> tuple[Any, dict[str, Any]]:
    """Signals, the general engine, and the metrics: what a user runs for one backtest."""
    result = backtest(candles, ma_cross_signals(candles, FAST, SLOW), size=SIZE, costs=fee_only())
    return result, result.metrics()


def qlab_fused(candles: pd.DataFrame) -> pd.DataFrame:
    """The same backtest through the fused sweep kernel (one pair, metrics only)."""
    return sweep_ma_cross(candles, [FAST], [SLOW], size=SIZE, costs=fee_only())


def backtesting_py(candles: pd.DataFrame) -> pd.Series:
    """backtesting.py's FractionalBacktest of the same strategy: TA-Lib SMAs, `crossover`, buy all in, close."""
    import talib
    from backtesting import Strategy
    from backtesting import backtesting as engine
    from backtesting.lib import FractionalBacktest, crossover

    class SmaCross(Strategy):
        def init(self) -> None:
            self.fast = self.I(talib.SMA, self.data.Close, FAST)
            self.slow = self.I(talib.SMA, self.data.Close, SLOW)

        def next(self) -> None:
            if not self.position:
                if crossover(self.fast, self.slow):
                    self.buy(size=BT_SIZE)
            elif crossover(self.slow, self.fast):
                self.position.close()

    data = candles.rename(columns=str.capitalize)
    data.index = data.index.tz_localize(None)
    bt = FractionalBacktest(data, SmaCross, fractional_unit=BT_UNIT, cash=CASH, commission=FEE, trade_on_close=False,
                            exclusive_orders=False, finalize_trades=False)
    with warnings.catch_warnings(), mock.patch.object(engine, "_tqdm", lambda seq, **_: seq):  # no progress bar
        warnings.simplefilter("ignore")
        return bt.run()


def reference_available() -> bool:
    return importlib.util.find_spec("qlab.engine.reference") is not None


def reference_loop(candles: pd.DataFrame) -> Any:
    from qlab.engine.reference import reference_backtest

    return reference_backtest(candles, ma_cross_signals(candles, FAST, SLOW), size=SIZE, costs=fee_only().prepare(candles),
                              cash=CASH)


def vectorbt_sweep(candles: pd.DataFrame, windows: tuple[int, ...]) -> dict[str, np.ndarray]:
    """vectorbt over the same pairs: its MAs, crossed above/below, signals shifted one bar and filled at the open."""
    import vectorbt as vbt

    close, open_ = candles["close"], candles["open"]
    fast, slow = vbt.MA.run_combs(close, window=list(windows), r=2, short_names=["fast", "slow"])
    entries = fast.ma_crossed_above(slow).shift(1, fill_value=False)
    exits = fast.ma_crossed_below(slow).shift(1, fill_value=False)
    pf = vbt.Portfolio.from_signals(close, entries, exits, price=open_, fees=FEE, init_cash=CASH, freq="1min")
    columns = pf.wrapper.columns
    return {"fast": columns.get_level_values(0).to_numpy(), "slow": columns.get_level_values(1).to_numpy(),
            "total_return": pf.total_return().to_numpy(), "final_value": pf.final_value().to_numpy(),
            "n_trades": pf.trades.closed.count().to_numpy()}


def qlab_sweep(candles: pd.DataFrame, windows: tuple[int, ...], costs: Any = None) -> pd.DataFrame:
    return sweep_ma_cross(candles, windows, windows, size=SIZE, costs=costs if costs is not None else fee_only())


# ---------------------------------------------------------------- agreement, checked before timing


def _closed_bars(result: Any) -> tuple[np.ndarray, np.ndarray]:
    t = result.trades[~result.trades["is_open"].astype(bool)]
    return t["entry_bar"].to_numpy(dtype=np.int64), t["exit_bar"].to_numpy(dtype=np.int64)


def check_single(candles: pd.DataFrame, first: tuple[Any, dict[str, Any]], with_reference: bool) -> dict[str, Any]:
    """Compare qlab's first run (`first`, from `qlab_single`) with the fused kernel, backtesting.py and the reference."""
    result, metrics = first
    entry, exit_ = _closed_bars(result)
    final = float(result.equity.iloc[-1])
    out: dict[str, Any] = {"trades": len(entry), "open_trades": int(result.trades["is_open"].sum()), "final_equity": final}
    fused = qlab_fused(candles).iloc[0]
    if fused["n_trades"] != len(entry) or not np.isclose(fused["final_equity"], final, rtol=1e-9, atol=0):
        raise AssertionError(f"sweep_ma_cross (1 pair) gives {fused['n_trades']} trades / {fused['final_equity']!r}, "
                             f"qlab.backtest {len(entry)} / {final!r}")
    stats = backtesting_py(candles)
    bt_trades = stats["_trades"]
    if not (np.array_equal(bt_trades["EntryBar"].to_numpy(), entry) and np.array_equal(bt_trades["ExitBar"].to_numpy(), exit_)):
        raise AssertionError(f"backtesting.py's {len(bt_trades)} closed trades differ from qlab's {len(entry)} (entry/exit bars)")
    bt_final = float(stats["Equity Final [$]"])
    out["backtesting_final_equity"] = bt_final
    out["backtesting_rel_diff"] = bt_final / final - 1.0
    if abs(out["backtesting_rel_diff"]) > 1e-4:
        raise AssertionError(f"backtesting.py ends at {bt_final!r}, qlab at {final!r}")
    if with_reference:
        ref = reference_loop(candles)
        r_entry, r_exit = _closed_bars(ref)
        r_final = float(ref.equity.iloc[-1])
        if not (np.array_equal(r_entry, entry) and np.array_equal(r_exit, exit_) and np.isclose(r_final, final, rtol=1e-9, atol=0)):
            raise AssertionError(f"the reference loop's {len(r_entry)} trades / final equity {r_final!r} differ from "
                                 f"qlab's {len(entry)} / {final!r}")
        out["reference_final_equity"] = r_final
    out["total_return"] = metrics["total_return"]
    return out


def check_sweep(candles: pd.DataFrame, windows: tuple[int, ...], ours: pd.DataFrame) -> dict[str, Any]:
    """Compare qlab's sweep table (`ours`) with vectorbt over the same pairs."""
    theirs = vectorbt_sweep(candles, windows)
    if not (np.array_equal(ours["fast"], theirs["fast"]) and np.array_equal(ours["slow"], theirs["slow"])):
        raise AssertionError("vectorbt's pair order differs from sweep_ma_cross's")
    trades_equal = np.array_equal(ours["n_trades"].to_numpy(), theirs["n_trades"])
    ret_diff = np.abs(ours["total_return"].to_numpy() - theirs["total_return"])
    value_rel = np.abs(ours["final_equity"].to_numpy() / theirs["final_value"] - 1.0)
    if not trades_equal or not np.allclose(ours["total_return"], theirs["total_return"], rtol=1e-6, atol=1e-12) \
            or value_rel.max() > 1e-6:
        raise AssertionError(f"vectorbt disagrees: trade counts equal={trades_equal}, max |return diff|={ret_diff.max():.3g}, "
                             f"max final value rel diff={value_rel.max():.3g}")
    return {"pairs": len(ours), "trades": int(ours["n_trades"].sum()), "max_return_diff": float(ret_diff.max()),
            "max_final_value_rel_diff": float(value_rel.max()),
            "best_total_return": float(ours["total_return"].max()), "worst_total_return": float(ours["total_return"].min())}


# ---------------------------------------------------------------- compile time, in fresh processes

_COMPILE_SCRIPT = """
import json, time
from benchmarks.engine_bench import fee_only, qlab_single, qlab_sweep
from benchmarks.synthetic import synthetic_candles
c = synthetic_candles(2_000, seed=1)
out = {}
for name, fn in (("backtest", lambda: qlab_single(c)), ("sweep", lambda: qlab_sweep(c, (5, 10, 20, 50)))):
    t = time.perf_counter(); fn(); first = time.perf_counter() - t
    t = time.perf_counter(); fn(); second = time.perf_counter() - t
    out[name] = {"first_s": first, "second_s": second}
print(json.dumps(out))
"""


def _fresh_process(cache_dir: Path | None) -> dict[str, Any]:
    """First and second call of each kernel family in a new Python process; NUMBA_CACHE_DIR=cache_dir if given."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(cache_dir)
    proc = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compile_times(cfg: Config) -> dict[str, Any]:
    """Per kernel family: compile = first - second call with an empty cache (full run only); cached = the same with
    the cache that run filled (quick run: the cache this process uses)."""
    out: dict[str, Any] = {}
    if not cfg.quick:
        cache = Path(cfg.tmp_dir) / "numba-cache"
        cold = _fresh_process(cache)
        out["cold"] = cold
        out["cached"] = _fresh_process(cache)
    else:
        out["cached"] = _fresh_process(None)
    for name in ("backtest", "sweep"):
        if "cold" in out:
            out[f"{name}_compile_s"] = out["cold"][name]["first_s"] - out["cold"][name]["second_s"]
        out[f"{name}_cache_load_s"] = out["cached"][name]["first_s"] - out["cached"][name]["second_s"]
    return out


# ---------------------------------------------------------------- the section


def _times(fn: Any, runs: int, first_s: float | None = None) -> dict[str, Any]:
    """The first call (unless already timed: `first_s`) and the median of `runs` warm calls."""
    if first_s is None:
        first_s = timed(fn)[0]
    warm = repeat(fn, runs)
    return {"first_s": first_s, "warm_s": warm, "warm_median_s": statistics.median(warm)}


def _single_runs(cfg: Config, r: dict[str, Any]) -> None:
    n = QUICK_SINGLE_BARS if cfg.quick else SINGLE_BARS
    candles = synthetic_candles(n, timeframe="1m", seed=cfg.seed)
    with_reference = reference_available()
    r.update(bars=n, reference_available=with_reference)
    first_s, first = timed(lambda: qlab_single(candles))  # the first call of this process: numba cache load or compile
    r["agreement"] = check_single(candles, first, with_reference)
    r["qlab"] = _times(lambda: qlab_single(candles), WARM_RUNS, first_s)
    r["fused"] = _times(lambda: qlab_fused(candles), WARM_RUNS)
    r["backtesting_s"] = repeat(lambda: backtesting_py(candles), 1)[0]
    if with_reference:
        r["reference_s"] = repeat(lambda: reference_loop(candles), 1)[0]


def _sweep_runs(cfg: Config, r: dict[str, Any]) -> None:
    windows = QUICK_WINDOWS if cfg.quick else SWEEP_WINDOWS
    m = QUICK_SWEEP_BARS if cfg.quick else SWEEP_BARS
    small = synthetic_candles(2_000, timeframe="1m", seed=cfg.seed)
    r["vectorbt_small_first_s"] = timed(lambda: vectorbt_sweep(small, (5, 10, 20)))[0]  # its compile or cache load
    candles = synthetic_candles(m, timeframe="1m", seed=cfg.seed)
    r["sweep_bars"] = m
    first_s, ours = timed(lambda: qlab_sweep(candles, windows))
    r["sweep_agreement"] = check_sweep(candles, windows, ours)
    r["sweep"] = _times(lambda: qlab_sweep(candles, windows), WARM_RUNS, first_s)
    r["sweep_default_costs"] = _times(lambda: qlab_sweep(candles, windows, CostModel()), WARM_RUNS)
    gc.collect()
    r["vectorbt_s"] = repeat(lambda: vectorbt_sweep(candles, windows), WARM_RUNS if cfg.quick else 1)


@section("engine", "Backtest engine and parameter sweeps")
def engine_section(cfg: Config) -> SectionResult:
    r: dict[str, Any] = {}
    _single_runs(cfg, r)
    gc.collect()
    _sweep_runs(cfg, r)
    gc.collect()
    r["compile"] = compile_times(cfg)
    return SectionResult(r, _markdown(r, cfg))


def _markdown(r: dict[str, Any], cfg: Config) -> str:
    n, m, a, sa = r["bars"], r["sweep_bars"], r["agreement"], r["sweep_agreement"]
    q, fz, sw, swc, comp = r["qlab"], r["fused"], r["sweep"], r["sweep_default_costs"], r["compile"]
    pairs = sa["pairs"]
    runs = f"median of {WARM_RUNS}"
    size = f"{n:,} 1m bars, {a['trades']:,} trades"
    sweep_size = f"{m:,} 1m bars × {pairs} pairs"
    bt_s, ref_s = r["backtesting_s"], r.get("reference_s")
    vbt_s = statistics.median(r["vectorbt_s"])
    vbt_runs = f"median of {len(r['vectorbt_s'])}" if len(r["vectorbt_s"]) > 1 else "one run"

    def ratio(base: float | None, ours: float, target: float) -> tuple[str, bool | None]:
        """('pass: 143× (≥ 30×)', True), or ('—', None) without a baseline."""
        if base is None:
            return "—", None
        x = base / ours
        return f"{verdict(x >= target)}: {x:,.0f}× ({'≥' if x >= target else '<'} {target:.0f}×)", x >= target

    bt_x, bt_ok = ratio(bt_s, q["warm_median_s"], BT_TARGET)
    ref_x, ref_ok = ratio(ref_s, q["warm_median_s"], REFERENCE_TARGET)
    fbt_x, fbt_ok = ratio(bt_s, fz["warm_median_s"], BT_TARGET)
    fref_x, fref_ok = ratio(ref_s, fz["warm_median_s"], REFERENCE_TARGET)
    vbt_x, vbt_ok = ratio(vbt_s, sw["warm_median_s"], SWEEP_TARGET)

    def compiled(name: str) -> str:
        if f"{name}_compile_s" in comp:
            return f"{fmt_seconds(comp[f'{name}_compile_s'])} compile; {fmt_seconds(comp[f'{name}_cache_load_s'])} cache load"
        return f"not measured in quick mode; {fmt_seconds(comp[f'{name}_cache_load_s'])} cache load"

    none_ref = "not run: qlab.engine.reference is missing"
    rows = [
        ["single backtest: `qlab.backtest` + `metrics()`, signals included, warm", size, f"{fmt_seconds(q['warm_median_s'])} ({runs})",
         fmt_rate(n, q["warm_median_s"], "bars/s"), "—", verdict(None)],
        ["↳ first call in this process (numba cache load or compile included)", size, fmt_seconds(q["first_s"]),
         fmt_rate(n, q["first_s"], "bars/s"), "—", verdict(None)],
        ["↳ numba, fresh process (2,000 bars): compile with an empty cache; load from the cache", "—", compiled("backtest"),
         "—", "—", verdict(None)],
        ["baseline: backtesting.py `FractionalBacktest.run`", size, f"{fmt_seconds(bt_s)} (one run)", fmt_rate(n, bt_s, "bars/s"),
         "qlab.backtest ≥ 30× faster", bt_x],
        ["baseline: reference loop `reference_backtest`", size,
         f"{fmt_seconds(ref_s)} (one run)" if ref_s else none_ref, fmt_rate(n, ref_s, "bars/s") if ref_s else "—",
         "qlab.backtest ≥ 100× faster", ref_x],
        ["fused kernel: `sweep_ma_cross` with this one pair (metrics, no trade table), warm", size,
         f"{fmt_seconds(fz['warm_median_s'])} ({runs})", fmt_rate(n, fz["warm_median_s"], "bars/s"),
         "≥ 30× backtesting.py, ≥ 100× reference", f"{fbt_x}; {fref_x}"],
        [f"sweep: `sweep_ma_cross`, {pairs} SMA pairs, fee only, warm", sweep_size, f"{fmt_seconds(sw['warm_median_s'])} ({runs})",
         fmt_rate(m * pairs, sw["warm_median_s"], "pair-bars/s"), "—", verdict(None)],
        ["↳ first call of this sweep in this process (its kernels were loaded by the one-pair run)", sweep_size, fmt_seconds(sw["first_s"]),
         fmt_rate(m * pairs, sw["first_s"], "pair-bars/s"), "—", verdict(None)],
        ["↳ numba, fresh process (2,000 bars, 6 pairs): compile with an empty cache; load from the cache", "—",
         compiled("sweep"), "—", "—", verdict(None)],
        ["↳ the same sweep with the default CostModel (spread, slippage, impact), warm", sweep_size,
         f"{fmt_seconds(swc['warm_median_s'])} ({runs})", fmt_rate(m * pairs, swc["warm_median_s"], "pair-bars/s"), "—", verdict(None)],
        ["baseline: vectorbt `MA.run_combs` + `from_signals` + returns and trade counts", sweep_size, f"{fmt_seconds(vbt_s)} ({vbt_runs})",
         fmt_rate(m * pairs, vbt_s, "pair-bars/s"), "qlab ≥ 20× faster", vbt_x],
    ]
    misses = [what for what, ok in (("`qlab.backtest` vs backtesting.py", bt_ok), ("`qlab.backtest` vs the reference loop", ref_ok),
                                    ("the fused kernel vs backtesting.py", fbt_ok), ("the fused kernel vs the reference loop", fref_ok),
                                    ("the sweep vs vectorbt", vbt_ok)) if ok is False]
    sentence = (
        f"On this machine `qlab.backtest` runs the {n:,}-bar SMA crossover in {fmt_seconds(q['warm_median_s'])}, "
        f"{bt_s / q['warm_median_s']:.1f}× faster than backtesting.py"
        + (f" and {ref_s / q['warm_median_s']:.1f}× faster than the reference loop" if ref_s else "")
        + f"; the fused kernel does the same run in {fmt_seconds(fz['warm_median_s'])} "
        f"({bt_s / fz['warm_median_s']:.0f}× backtesting.py"
        + (f", {ref_s / fz['warm_median_s']:.0f}× the reference loop" if ref_s else "") + "). "
        f"The {pairs}-pair sweep takes {fmt_seconds(sw['warm_median_s'])} against vectorbt's {fmt_seconds(vbt_s)} "
        f"({vbt_s / sw['warm_median_s']:.0f}×). "
        + ("Every target is met." if not misses else f"Targets missed: {'; '.join(misses)}.")
    )
    notes = [
        f"Data: seeded synthetic 1m candles (`benchmarks/synthetic.py`, seed {cfg.seed}); a random walk, so the crossover "
        f"with a 0.1 % fee per fill loses almost everything (qlab ends at {a['final_equity']:.3g} of {CASH:,.0f} USDT), "
        "which all tools reproduce. Strategy: SMA({FAST}) / SMA({SLOW}) long only, market orders at the next open, all in "
        "(`SizeSpec('percent', 1.0)`), `CostModel` with the 0.1 % fee only (no spread, slippage or impact).".replace(
            "{FAST}", str(FAST)).replace("{SLOW}", str(SLOW)),
        f"Agreement, checked before timing: backtesting.py and qlab have the same {a['trades']:,} closed trades (entry and exit "
        f"bars); backtesting.py trades whole units, so it runs as `FractionalBacktest` with units of {BT_UNIT:g} BTC and buys "
        f"`size={BT_SIZE!r}` of the available margin: its final equity differs from qlab's by "
        f"{a['backtesting_rel_diff']:.2e} (relative). "
        + ("The reference loop has the same trades and final equity (rtol 1e-9). " if r["reference_available"] else "")
        + f"`sweep_ma_cross` with the one pair gives the same trade count and final equity as `qlab.backtest`. "
        f"vectorbt (its own rolling-mean MAs, `ma_crossed_above/below`, signals shifted one bar, `price=open`, `fees={FEE}`) "
        f"has the same closed-trade count for all {pairs} pairs ({sa['trades']:,} trades in all), total returns within "
        f"{sa['max_return_diff']:.1e} and final values within {sa['max_final_value_rel_diff']:.1e} (relative).",
        f"Pairs: windows {', '.join(map(str, (QUICK_WINDOWS if cfg.quick else SWEEP_WINDOWS)[:3]))}, …, "
        f"{(QUICK_WINDOWS if cfg.quick else SWEEP_WINDOWS)[-1]} (every 10 bars), every fast < slow: {pairs} pairs. "
        "(Faster pairs trade so often that the 0.1 % fee grinds the account to dust, fractions of a cent, where "
        "vectorbt's float tolerances start rejecting orders; these pairs keep every account above that.)",
        "Timings: qlab warm runs are the median of 3 after a first call (kernels from numba's cache, `cache=True`); "
        "backtesting.py (TA-Lib SMAs in `init`, `crossover` in `next`, its progress bar switched off) and the reference loop "
        f"are timed once, and include their statistics / trade tables, as qlab's include `metrics()`. vectorbt's kernels "
        f"were compiled (or loaded from its cache) on a small run first ({fmt_seconds(r['vectorbt_small_first_s'])}), not "
        "counted above. Compile times come from fresh Python processes on 2,000 bars: first call minus second call, with an "
        "empty `NUMBA_CACHE_DIR` (compile) and with the cache that run filled (load).",
        f"Spread between warm runs: qlab.backtest {fmt_seconds(min(q['warm_s']))}–{fmt_seconds(max(q['warm_s']))}, sweep "
        f"{fmt_seconds(min(sw['warm_s']))}–{fmt_seconds(max(sw['warm_s']))}; the machine is a small shared VM "
        "(numba's `prange` runs the pairs on all its cores), so treat differences under ~20 % as noise.",
    ]
    if cfg.quick:
        notes.append(f"Quick mode: {n:,} bars for the single run and {m:,} bars × {pairs} pairs for the sweep, so the ratios "
                     "are dominated by fixed overheads and not comparable with the full run.")
    return "\n\n".join([table(STANDARD_HEADERS, rows), sentence, "\n".join(f"- {x}" for x in notes)])

"""`qlab.stress_test`: the strategy on historical stress windows of the data and on stressed versions of it.

    report = qlab.stress_test("ema_cross", candles, limits={"max_drawdown": 0.25, "daily_loss": 0.05})
    report.table        # every metric per scenario beside the baseline, the risk limits that triggered and when
    report.figure()

Scenarios (`scenarios=`: names, `scenario(name, **params)` objects, compositions `a + b`, or (name, params)):
* the library in `qlab.research.scenarios` (flash_crash, volatility_x3, gap_through_stops, liquidity_dryup,
  exchange_outage, funding_spike, correlation_breakdown, and any you register): the strategy is compiled and
  backtested again on the transformed market, costs prepared on the transformed candles;
* history: "worst_drawdowns" (the `count` deepest peak-to-trough falls of the market, the first symbol's close
  or for a portfolio the mean of the closes scaled to 1) and "largest_moves" (the `count` largest one-bar
  moves, `context` bars either side): the baseline run measured on each window (no re-run).

An outage freezes the prices the engine sees at the last close before it (nothing can fill) and moves the
signals that would have acted inside it to the first bar after it (the last decision per direction wins);
indicators still see the real prices. Risk limits (`limits`, fractions): max_drawdown (equity below its
running peak), daily_loss (equity below the previous day's last equity, intraday included) and total_loss
(equity below the start); the report names each limit breached and the first bar it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from qlab.analytics.metrics import compute_metrics, drawdown_series, underwater_periods
from qlab.analytics.result import Result, backtest
from qlab.costs import resolve_costs
from qlab.data.candles import Candles, bars_per_year, infer_timeframe
from qlab.errors import ConfigError, NotFoundError, did_you_mean
from qlab.research.scenarios import REGISTRY, Scenario, StressCase, scenario
from qlab.strategy.compile import strategy_signals
from qlab.strategy.spec import Strategy
from qlab.strategy.templates import resolve_strategy

HISTORY = {"worst_drawdowns": {"count": 3}, "largest_moves": {"count": 3, "context": 24}}
LIMITS = ("max_drawdown", "daily_loss", "total_loss")
DEFAULT_LIMITS = {"max_drawdown": 0.25, "daily_loss": 0.05}
COLUMNS = ("kind", "start", "end", "total_return", "vs_baseline", "cagr", "sharpe", "max_drawdown", "longest_drawdown",
           "worst_day", "n_trades", "win_rate", "worst_trade", "cost_total", "final_equity", "market_return", "limits", "notes")
SIGNALS = ("entry_long", "exit_long", "entry_short", "exit_short")


@dataclass
class StressReport:
    """The stress test's outcome: `table` (one row per scenario, the baseline first), the re-run `results`,
    the `limits` checked and the `breaches` (scenario, limit, value, first time)."""

    table: pd.DataFrame
    results: dict[str, Result]
    limits: dict[str, float]
    breaches: pd.DataFrame
    baseline: Result = field(repr=False)

    def __repr__(self) -> str:
        worst = self.table["total_return"].idxmin()
        return (f"StressReport({len(self.table) - 1} scenarios; worst: {worst} {self.table.loc[worst, 'total_return']:.1%} "
                f"against the baseline's {self.table['total_return'].iloc[0]:.1%}; "
                f"{self.breaches['scenario'].nunique() if len(self.breaches) else 0} breach a risk limit)")

    def formatted(self) -> pd.DataFrame:
        """The table with percentages, ratios and money formatted for reading."""
        t = self.table.copy()
        for c in ("total_return", "vs_baseline", "cagr", "max_drawdown", "worst_day", "win_rate", "market_return"):
            t[c] = t[c].map(lambda v: "n/a" if pd.isna(v) else f"{v:.1%}")
        for c in ("sharpe",):
            t[c] = t[c].map(lambda v: "n/a" if pd.isna(v) else f"{v:.2f}")
        for c in ("worst_trade", "cost_total", "final_equity"):
            t[c] = t[c].map(lambda v: "n/a" if pd.isna(v) else f"{v:,.0f}")
        for c in ("start", "end"):
            t[c] = t[c].map(lambda v: f"{v:%Y-%m-%d %H:%M}")
        return t

    def figure(self):
        """Total return and max drawdown per scenario, as bars."""
        from qlab.research.mc_plots import stress_figure

        return stress_figure(self.table)

    def to_html(self) -> str:
        """A self-contained HTML report: the table, the limit breaches and the figure."""
        parts = ["<h2>Stress test</h2>", self.formatted().to_html(), "<h3>Risk limits breached</h3>",
                 self.breaches.to_html(index=False) if len(self.breaches) else "<p>none</p>",
                 self.figure().to_html(full_html=False, include_plotlyjs=True)]
        return "<html><head><meta charset='utf-8'></head><body>" + "\n".join(parts) + "</body></html>"


# ---------------------------------------------------------------- inputs


def _limits(limits: dict[str, float] | None) -> dict[str, float]:
    out = dict(DEFAULT_LIMITS if limits is None else limits)
    for k, v in out.items():
        if k not in LIMITS:
            raise ConfigError(f"unknown risk limit {k!r}; use {', '.join(LIMITS)}." + did_you_mean(str(k), LIMITS))
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 1:
            raise ConfigError(f"risk limit {k}={v!r} must be a loss fraction in (0, 1], e.g. 0.25 for 25 %")
    return {k: float(v) for k, v in out.items()}


def _scenarios(scenarios: Any) -> list[Scenario | tuple[str, dict[str, Any]]]:
    """Scenario objects and ('history', kind, params) entries from names, objects and (name, params) pairs."""
    items = [*REGISTRY, *HISTORY] if scenarios is None else scenarios
    if isinstance(items, str | Scenario):
        items = [items]
    out: list[Any] = []
    for item in items:
        name, params = (item, {}) if isinstance(item, str) else item if isinstance(item, tuple) else (None, None)
        if isinstance(item, Scenario):
            out.append(item)
        elif name in HISTORY:
            unknown = [k for k in params if k not in HISTORY[name]]
            if unknown:
                raise ConfigError(f"{name} takes {', '.join(HISTORY[name])}; got {unknown[0]!r}." + did_you_mean(unknown[0], HISTORY[name]))
            out.append((name, {**HISTORY[name], **params}))
        elif isinstance(name, str) and isinstance(params, dict):
            if name not in REGISTRY:
                known = [*REGISTRY, *HISTORY]
                raise NotFoundError(f"unknown stress scenario {name!r}; scenarios: {', '.join(known)}." + did_you_mean(name, known))
            out.append(scenario(name, **params))
        else:
            raise ConfigError(f"a scenario is a name, qlab.scenario(name, **params) or (name, {{params}}); got {item!r}")
    if not out:
        raise ConfigError("scenarios is empty; leave it out for the whole library or name some, e.g. ['flash_crash']")
    return out


# ---------------------------------------------------------------- running a case


def defer_signals(signals: pd.DataFrame, outage: np.ndarray, close_timing: bool = False) -> pd.DataFrame:
    """Signals whose orders would act on an outage bar moved to the bar whose orders act right after it.

    With the default timing a signal of bar t acts at t+1's open, so the signals of bars s-1 .. e-2 (outage
    s .. e-1) move to bar e-1; with close timing those of s .. e-1 move to e. Per direction the last event
    (entry or exit) wins; if both last entries remain, the later one does. Signals that cannot act before the
    data ends are dropped.
    """
    out = signals.copy()
    values = {c: out[c].to_numpy(dtype=bool).copy() if c in out else np.zeros(len(out), dtype=bool) for c in SIGNALS}
    edges = np.diff(np.concatenate(([0], outage.astype(np.int8), [0])))
    for s, e in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        first, target = (s, e) if close_timing else (max(s - 1, 0), e - 1)
        last: dict[str, tuple[int, str] | None] = {"long": None, "short": None}
        stop = min(target, len(out) - 1)
        for t in range(first, stop + 1):
            for d in ("long", "short"):
                for kind in ("entry", "exit"):
                    if values[f"{kind}_{d}"][t]:
                        last[d] = (t, kind)
        for c in SIGNALS:
            values[c][first:stop + 1] = False
        if target >= len(out):
            continue
        entries = {d: ev[0] for d, ev in last.items() if ev is not None and ev[1] == "entry"}
        if len(entries) == 2:  # both directions want in: the later decision stands
            entries.pop(min(entries, key=entries.get))
        for d, ev in last.items():
            if ev is not None:
                values[f"{ev[1]}_{d}"][target] = ev[1] == "exit" or d in entries
    for c in SIGNALS:
        out[c] = values[c]
    return out


def freeze(frame: Candles, outage: np.ndarray) -> Candles:
    """Candles with open = high = low = close = the last close before each outage run (volume kept)."""
    out = frame.copy()
    edges = np.diff(np.concatenate(([0], outage.astype(np.int8), [0])))
    for s, e in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        price = frame["close"].iat[s - 1] if s > 0 else frame["open"].iat[0]
        for col in ("open", "high", "low", "close"):
            out.iloc[s:e, out.columns.get_loc(col)] = price
    return out


def run_case(strategy: Strategy, case: StressCase, cash: float, data: dict[str, pd.Series] | None) -> Result:
    """Compile the strategy on the case's candles and backtest it with the case's costs and outage."""
    signals = {s: strategy_signals(strategy, c, data) for s, c in case.candles.items()}
    arrays = {}
    for s, c in case.candles.items():
        prepared = case.costs[s].prepare(c, case.timeframe)
        for hook in case.cost_hooks:
            prepared = hook(s, prepared, c)
        arrays[s] = prepared
    frames = case.candles
    orders = strategy.order_spec()
    if case.outage.any():
        frames = {s: freeze(c, case.outage) for s, c in frames.items()}
        signals = {s: defer_signals(v, case.outage, orders.timing == "close") for s, v in signals.items()}
    result = backtest(frames, signals, orders=orders, size=strategy.size_spec(), costs=arrays, cash=cash, timeframe=case.timeframe)
    result.strategy, result.data = strategy, data
    return result


# ---------------------------------------------------------------- measuring


def daily_loss_series(equity: pd.Series) -> pd.Series:
    """Per bar: equity over the previous UTC day's last equity, minus 1 (the first day: over the first equity)."""
    day = equity.index.floor("D")
    last = equity.groupby(day).last()
    prev = pd.Series(last.shift(1).to_numpy(), index=last.index).fillna(float(equity.iloc[0]))
    return equity / prev.reindex(day).to_numpy() - 1.0


def limit_breaches(equity: pd.Series, limits: dict[str, float]) -> list[dict[str, Any]]:
    """Each limit the equity breaches: its worst value and the first bar it was breached."""
    series = {"max_drawdown": drawdown_series(equity), "daily_loss": daily_loss_series(equity),
              "total_loss": equity / float(equity.iloc[0]) - 1.0}
    out = []
    for name, bound in limits.items():
        s = series[name]
        hit = s.to_numpy() <= -bound + 1e-12
        if hit.any():
            out.append({"limit": name, "threshold": -bound, "worst": float(s.min()), "first": s.index[int(np.argmax(hit))]})
    return out


def _market(case_candles: dict[str, Candles]) -> pd.Series:
    """The market index: the first symbol's close, or the mean of every close scaled to 1 at the start."""
    closes = [c["close"] / float(c["close"].iloc[0]) for c in case_candles.values()]
    return closes[0] if len(closes) == 1 else sum(closes) / len(closes)


def _row(kind: str, equity: pd.Series, trades: pd.DataFrame, positions: pd.DataFrame | None, bpy: float, market: pd.Series,
         limits: dict[str, float], notes: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    m = compute_metrics(equity, trades, bpy, positions=positions)
    breaches = limit_breaches(equity, limits)
    text = "; ".join(f"{b['limit']} {b['worst']:.1%} (limit {b['threshold']:.0%}) from {b['first']:%Y-%m-%d %H:%M}" for b in breaches)
    row = {"kind": kind, "start": equity.index[0], "end": equity.index[-1], "total_return": m["total_return"], "cagr": m["cagr"],
           "sharpe": m["sharpe"], "max_drawdown": m["max_drawdown"], "longest_drawdown": m["max_drawdown_duration"],
           "worst_day": float(daily_loss_series(equity).min()), "n_trades": m["n_trades"], "win_rate": m["win_rate"],
           "worst_trade": m["worst_trade"], "cost_total": m["cost_total"], "final_equity": m["final_equity"],
           "market_return": float(market.reindex(equity.index).iloc[-1] / market.reindex(equity.index).iloc[0] - 1.0),
           "limits": text or "none", "notes": notes}
    return row, breaches


def history_windows(market: pd.Series, kind: str, count: int = 3, context: int = 24) -> list[tuple[int, int, str]]:
    """[(first bar, last bar, label)] of the deepest falls (peak to trough) or the largest one-bar moves of `market`."""
    for name, v in (("count", count), ("context", context)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "count" else 0):
            raise ConfigError(f"{kind}: {name}={v!r} must be a whole number >= {1 if name == 'count' else 0}")
    index, out = market.index, []
    if kind == "worst_drawdowns":
        periods = underwater_periods(market).sort_values("depth").head(count)
        for p in periods.itertuples():
            out.append((int(index.get_loc(p.start)), int(index.get_loc(p.trough)), f"market {p.depth:.1%} peak to trough"))
        return out
    moves = np.abs(np.diff(np.log(market.to_numpy())))
    taken: list[int] = []
    for k in np.argsort(-moves, kind="stable"):
        t = int(k) + 1
        if len(taken) == count:
            break
        if all(abs(t - u) > 2 * context for u in taken):
            taken.append(t)
            r = market.iat[t] / market.iat[t - 1] - 1
            label = f"market {r:+.1%} in one bar at {index[t]:%Y-%m-%d %H:%M}"
            out.append((max(t - context - 1, 0), min(t + context, len(market) - 1), label))
    return out


# ---------------------------------------------------------------- the function


def stress_test(
    strategy: Strategy | str | dict | Result,
    candles: Candles | dict[str, Candles] | None = None,
    scenarios: list[Any] | None = None,
    *,
    data: dict[str, pd.Series] | None = None,
    cash: float = 10_000.0,
    limits: dict[str, float] | None = None,
) -> StressReport:
    """Run `strategy` on `candles` (one frame or {symbol: Candles}) as they were and under each scenario (default:
    the whole library and both kinds of history windows); a Result stands for its strategy, candles and data."""
    if isinstance(strategy, Result):
        if strategy.strategy is None:
            raise ConfigError("this Result came from signal frames; stress_test re-runs a strategy, pass the Strategy")
        candles = candles if candles is not None else strategy.simulation.candles
        data = data if data is not None else strategy.data
        cash = strategy.simulation.initial_cash
        strategy = strategy.strategy
    strat = resolve_strategy(strategy)
    if candles is None:
        raise ConfigError(f"stress_test needs the candles to run {strat.name!r} on, e.g. qlab.load_sample('BTC/USDT', '1h')")
    frames = dict(candles) if isinstance(candles, dict) else {"asset": candles}
    lim = _limits(limits)
    items = _scenarios(scenarios)
    index = next(iter(frames.values())).index
    timeframe = strat.timeframe or infer_timeframe(index)
    bpy = bars_per_year(timeframe)
    model = resolve_costs(strat.cost_model())
    case = StressCase(frames, dict.fromkeys(frames, model), timeframe, np.zeros(len(index), dtype=bool))
    base = run_case(strat, case, cash, data)
    case = case.with_(baseline=base)
    market = _market(frames)
    rows, results, breaches = {}, {"baseline": base}, []
    row, b = _row("baseline", base.equity, base.trades, base.positions, bpy, market, lim, "the data as it was")
    rows["baseline"] = row
    breaches += [{"scenario": "baseline", **x} for x in b]
    for item in items:
        if isinstance(item, Scenario):
            stressed = item.apply(case)
            res = run_case(strat, stressed, cash, data)
            name = _unique(item.name, rows)
            results[name] = res
            row, b = _row("scenario", res.equity, res.trades, res.positions, bpy, _market(stressed.candles), lim, "; ".join(stressed.notes))
            rows[name] = row
            breaches += [{"scenario": name, **x} for x in b]
            continue
        kind, params = item
        for k, (lo, hi, label) in enumerate(history_windows(market, kind, **params), start=1):
            eq = base.equity.iloc[lo:hi + 1]
            tr = base.trades[(base.trades["entry_bar"] >= lo) & (base.trades["entry_bar"] <= hi)]
            name = _unique(f"{kind} #{k}", rows)
            row, b = _row("history", eq, tr, base.positions.iloc[lo:hi + 1], bpy, market, lim, label)
            rows[name] = row
            breaches += [{"scenario": name, **x} for x in b]
    table = pd.DataFrame.from_dict(rows, orient="index")
    table["vs_baseline"] = table["total_return"] - rows["baseline"]["total_return"]
    table.loc[table["kind"] == "history", "vs_baseline"] = math.nan  # a window is not comparable with the whole run
    table = table[list(COLUMNS)]
    table.index.name = "scenario"
    return StressReport(table, results, lim, pd.DataFrame(breaches, columns=["scenario", "limit", "threshold", "worst", "first"]), base)


def _unique(name: str, taken: dict[str, Any]) -> str:
    k, out = 2, name
    while out in taken:
        out, k = f"{name} #{k}", k + 1
    return out

"""`qlab.walk_forward`: optimise on an in-sample window, trade the chosen parameters on the out-of-sample
window that follows, move on; the stitched out-of-sample equity is what the method would have earned.

    wf = walk_forward("sma_cross", candles, {"fast.period": (5, 30, 5), "slow.period": (40, 120, 20)},
                      "sharpe", in_sample="120D", out_of_sample="30D", method="grid")
    wf.windows, wf.oos_equity, wf.efficiency, wf.metrics(), wf.figure()

Conventions (pinned by tests/research/test_walkforward.py)
----------------------------------------------------------
* Windows (`walk_forward_windows`) are half-open bar ranges [start, end). Rolling: the in-sample (IS)
  window of `in_sample` length starts at the first bar and moves by `step` (default: `out_of_sample`);
  anchored: it always starts at the first bar and grows by `step`. The out-of-sample (OOS) window is
  the `out_of_sample` bars (or time) right after it. Sizes are all bar counts (ints) or all durations
  ('180D', '12h', a Timedelta); durations are laid on a time grid from the first bar's time, a window
  holding the bars whose open time falls in it. A last OOS window the data does not fully cover is
  dropped, as is a window with no bar (a gap in the data).
* Isolation: the optimiser gets `candles[is_start:is_end]` and nothing else (extra `data` series are
  cut before the OOS window's start), so no OOS bar ever reaches its own optimisation.
* The chosen parameters are `OptimizationResult.best` (the first objective decides). A window
  without a feasible trial stays out of the market (flat OOS equity, NaN parameters, a note).
* OOS evaluation backtests `candles[oos_start - warmup : oos_end]` with every signal before
  `oos_start` forced False: the warm-up bars (past data, the end of the IS window) only feed the
  indicators. `warmup="auto"` is the whole IS window, so the indicators (and the cost model's rolling
  volatility and volume) continue the very history the optimiser saw; an int is that many bars (at
  least the strategy's `warmup_bars`). The first signal that counts is on the OOS window's first bar,
  so the first fill is at the open of its second bar (a signal on the IS window's last bar is not
  carried over). A position still open at the window's last close is valued mark-to-market there
  (no exit costs, as the engine does for open trades) and reported closed with exit_reason
  'window_end': the next window starts flat.
* Stitching: each OOS window is backtested with the previous window's ending equity as its cash (the
  first with `cash`), so `oos_equity` (the windows' curves one after another, one value per OOS bar)
  is one account, and its total return is the product of the windows' (1 + oos_return). With
  step > out_of_sample the bars between OOS windows are not in it; step < out_of_sample is refused.
* Returns: `oos_return` = ending / starting equity - 1 of the window; `is_return` likewise for the
  chosen parameters' backtest on the IS window with `cash` (what the optimiser saw; `is_n_trades`
  counts its closed trades, `oos_n_trades` every OOS trade, window-end exits included). Annualised
  returns are the metrics' CAGR, (E_last / E_first) ** (bars_per_year / (T - 1)) - 1.
* Walk-forward efficiency per window: oos_ann_return / is_ann_return; `efficiency_<objective>` is
  the same ratio of the objective metric (OOS Sharpe / IS Sharpe). Overall (`efficiency`,
  `objective_efficiency`): the stitched OOS CAGR (or objective) over the mean of the IS values of the
  windows that traded. NaN, with the reason in `note` / `efficiency_note`, when a value is not
  finite, the IS value is ~0 (|x| <= 1e-12), or the IS value is negative (a ratio of two losses is no
  efficiency; max_drawdown, negative by nature, excepted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from qlab.analytics.metrics import TINY, compute_metrics
from qlab.analytics.result import Result, backtest
from qlab.data.candles import Candles, bars_per_year, infer_timeframe, timeframe_delta, validate_candles
from qlab.errors import ConfigError, DataError, QlabError
from qlab.research.optimize import OptimizationResult, optimize, parse_objectives, resolve_strategy
from qlab.strategy.compile import strategy_signals, warmup_bars
from qlab.strategy.spec import Strategy

SIGNED = {"max_drawdown"}  # metrics that are negative by nature: their ratio compares depths
WINDOW_COLUMNS = ["window", "is_start", "is_end", "oos_start", "oos_end",
                  "is_start_time", "is_end_time", "oos_start_time", "oos_end_time"]


# ---------------------------------------------------------------- windows


def _size(value: Any, name: str) -> int | pd.Timedelta:
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(f"{name}={value!r} bars; give at least 1 bar")
        return int(value)
    try:
        delta = pd.Timedelta(value)
    except (ValueError, TypeError):
        delta = pd.NaT
    if delta is pd.NaT or delta <= pd.Timedelta(0):
        raise ConfigError(f"{name}={value!r}; give a number of bars (e.g. 720) or a positive duration such as '30D', '4W', '12h'")
    return delta


def _bar_delta(index: pd.DatetimeIndex) -> pd.Timedelta:
    try:
        return timeframe_delta(infer_timeframe(index))
    except QlabError:
        return pd.Timedelta(int(np.median(np.diff(index.asi8))), unit="ns") if len(index) > 1 else pd.Timedelta(0)


def walk_forward_windows(index: pd.Index | pd.DataFrame, in_sample: int | str | pd.Timedelta,
                         out_of_sample: int | str | pd.Timedelta, step: int | str | pd.Timedelta | None = None,
                         anchored: bool = False) -> pd.DataFrame:
    """The windows as bar positions (half-open: [is_start, is_end), [oos_start, oos_end), oos_start == is_end)
    and times (`*_time`: the boundaries; an end time is the first instant after the window).

    Sizes are all bar counts or all durations; `step` defaults to `out_of_sample`. Rolling windows keep
    the IS length; anchored ones start at the first bar and grow. Incomplete last OOS windows are dropped.
    """
    if isinstance(index, pd.DataFrame):
        index = index.index
    sizes = [_size(in_sample, "in_sample"), _size(out_of_sample, "out_of_sample"),
             _size(out_of_sample if step is None else step, "step")]
    n = len(index)
    if all(isinstance(s, int) for s in sizes):
        ins, oos, stp = sizes
        dated = isinstance(index, pd.DatetimeIndex) and n > 0
        after = index[-1] + _bar_delta(index) if dated else None
        rows, k = [], 0
        while ins + k * stp + oos <= n:
            bounds = [0 if anchored else k * stp, ins + k * stp, ins + k * stp, ins + k * stp + oos]
            rows.append(bounds + [index[b] if b < n else after for b in bounds])
            k += 1
    elif all(isinstance(s, pd.Timedelta) for s in sizes):
        if not isinstance(index, pd.DatetimeIndex):
            raise ConfigError("durations need a DatetimeIndex; give in_sample, out_of_sample and step in bars")
        ins, oos, stp = sizes
        origin, covered = index[0], index[-1] + _bar_delta(index)
        rows, k = [], 0
        while origin + ins + k * stp + oos <= covered:
            times = [origin if anchored else origin + k * stp, origin + ins + k * stp, origin + ins + k * stp,
                     origin + ins + k * stp + oos]
            rows.append([int(p) for p in index.searchsorted(times, side="left")] + times)
            k += 1
    else:
        raise ConfigError(f"in_sample={in_sample!r}, out_of_sample={out_of_sample!r}, step={step!r}: give all of them "
                          "as bar counts (ints) or all as durations ('120D'), not a mix")
    table = pd.DataFrame([[0, *r] for r in rows], columns=WINDOW_COLUMNS)
    table = table[(table.is_end > table.is_start) & (table.oos_end > table.oos_start)].reset_index(drop=True)
    if table.empty:
        raise DataError(f"no complete walk-forward window: in_sample={in_sample!r} + out_of_sample={out_of_sample!r} "
                        f"is longer than the {n} bars given ({index[0] if n else '-'} .. {index[-1] if n else '-'}); "
                        "load more history or shorten the windows")
    table["window"] = np.arange(len(table))
    return table


# ---------------------------------------------------------------- the result


@dataclass
class WalkForwardResult:
    """Windows table, stitched OOS equity and trades, efficiency; per-window IS/OOS equity for plots."""

    windows: pd.DataFrame  # window boundaries, chosen params, is_/oos_ objectives and returns, n_trades, efficiency
    oos_equity: pd.Series  # stitched over all OOS bars
    oos_trades: pd.DataFrame  # every OOS trade with its window; bars are positions in the full candles
    efficiency: float  # stitched OOS CAGR / mean IS CAGR (NaN with efficiency_note)
    objective_efficiency: dict[str, float]  # the same ratio per objective
    efficiency_note: str
    objectives: list[str]
    params: list[str]
    bars_per_year: float
    is_equity: list[pd.Series] = field(repr=False)  # chosen parameters on each IS window
    oos_window_equity: list[pd.Series] = field(repr=False)  # each OOS window's own curve (part of oos_equity)
    oos_positions: pd.DataFrame = field(repr=False)
    optimizations: list[OptimizationResult | None] = field(repr=False)

    def __repr__(self) -> str:
        total = self.oos_equity.iloc[-1] / self.oos_equity.iloc[0] - 1.0
        return (f"WalkForwardResult({len(self.windows)} windows, {len(self.oos_equity)} OOS bars, {len(self.oos_trades)} OOS "
                f"trades, OOS total return {total:.2%}, efficiency {self.efficiency:.2f})")

    def metrics(self, **kwargs: Any) -> dict[str, Any]:
        """compute_metrics on the stitched OOS equity and trades (window-end exits count as closed trades)."""
        return compute_metrics(self.oos_equity, self.oos_trades, self.bars_per_year, positions=self.oos_positions, **kwargs)

    def figure(self, objective: str | None = None):
        """Stitched OOS equity over the OOS windows (shaded), and per window the IS vs OOS objective."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        obj = objective or self.objectives[0]
        w = self.windows
        fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.08,
                            subplot_titles=("Stitched out-of-sample equity", f"{obj}: in-sample vs out-of-sample"))
        fig.add_trace(go.Scatter(x=self.oos_equity.index, y=self.oos_equity.to_numpy(), name="OOS equity",
                                 line={"color": "#1f77b4"}), row=1, col=1)
        mid = w.oos_start_time + (w.oos_end_time - w.oos_start_time) / 2
        for side, colour in (("is", "#7f7f7f"), ("oos", "#1f77b4")):
            y = w[f"{side}_{obj}"].replace([np.inf, -np.inf], np.nan)
            fig.add_trace(go.Bar(x=mid, y=y, name=f"{side.upper()} {obj}", marker_color=colour,
                                 customdata=w.window, hovertemplate="window %{customdata}: %{y:.3f}"), row=2, col=1)
        for row in w.itertuples():
            fig.add_vrect(x0=row.oos_start_time, x1=row.oos_end_time, line_width=0, opacity=0.08,
                          fillcolor="#2ca02c" if row.window % 2 else "#ff7f0e", row="all", col=1)  # after the traces: both rows
        eff = "n/a" if math.isnan(self.efficiency) else f"{self.efficiency:.2f}"
        fig.update_layout(barmode="group", template="plotly_white", height=650,
                          title=f"Walk-forward: {len(w)} windows, efficiency {eff}")
        return fig

    def windows_figure(self):
        """Each window's IS equity (dashed) and OOS equity (solid) of the chosen parameters, as growth of 1."""
        import plotly.express as px
        import plotly.graph_objects as go

        fig = go.Figure()
        colours = px.colors.qualitative.Plotly
        for k, (ins, oos) in enumerate(zip(self.is_equity, self.oos_window_equity, strict=True)):
            c = colours[k % len(colours)]
            for curve, dash, label in ((ins, "dot", "IS"), (oos, "solid", "OOS")):
                fig.add_trace(go.Scatter(x=curve.index, y=curve.to_numpy() / curve.iloc[0], name=f"window {k} {label}",
                                         legendgroup=str(k), line={"color": c, "dash": dash}))
        fig.update_layout(template="plotly_white", title="Walk-forward windows: IS (dotted) and OOS (solid) equity",
                          yaxis_title="growth of 1")
        return fig


# ---------------------------------------------------------------- the walk


def efficiency_ratio(oos: float, ins: float, name: str) -> tuple[float, str]:
    """oos / ins, or NaN and the reason (not finite, IS ~0, IS negative for a metric that is not negative by nature)."""
    if not (math.isfinite(oos) and math.isfinite(ins)):
        return math.nan, f"{name}: not finite (IS {ins:.4g}, OOS {oos:.4g})"
    if abs(ins) <= TINY:
        return math.nan, f"{name}: the in-sample value is ~0"
    if ins < 0 and name not in SIGNED:
        return math.nan, f"{name}: the in-sample value {ins:.4g} is negative"
    return oos / ins, ""


def _until(data: dict[str, pd.Series] | None, end: pd.Timestamp) -> dict[str, pd.Series] | None:
    return None if data is None else {k: s[s.index < end] for k, s in data.items()}


def _run(strategy: Strategy, candles: Candles, start: int, cash: float, data: dict[str, pd.Series] | None) -> Result:
    """Backtest `strategy` on `candles` with every signal before row `start` forced False."""
    signals = strategy_signals(strategy, candles, data)
    signals.iloc[:start] = False
    return backtest(candles, signals, orders=strategy.order_spec(), size=strategy.size_spec(), costs=strategy.cost_model(),
                    cash=cash, timeframe=strategy.timeframe)


def _window_trades(res: Result, w: Any, lead: int) -> pd.DataFrame:
    """The OOS run's trades: bars as positions in the full candles, open ones closed at the window's end."""
    tr = res.trades.copy()
    tr["entry_bar"] += w.oos_start - lead
    tr["exit_bar"] += w.oos_start - lead
    tr.loc[tr.is_open, "exit_reason"] = "window_end"
    tr["is_open"] = False
    tr.insert(0, "window", w.window)
    return tr


def _plain_metrics(equity: pd.Series, trades: pd.DataFrame, bpy: float, positions: pd.DataFrame) -> dict[str, Any]:
    m = compute_metrics(equity, trades, bpy, positions=positions)
    return {k: (v.total_seconds() if isinstance(v, pd.Timedelta) else v) for k, v in m.items()}


def walk_forward(
    strategy: Strategy | str | dict,
    candles: Candles,
    space: dict[str, Any],
    objective: str | list[str] | dict[str, str] = "sharpe",
    *,
    in_sample: int | str | pd.Timedelta = "180D",
    out_of_sample: int | str | pd.Timedelta = "30D",
    step: int | str | pd.Timedelta | None = None,
    anchored: bool = False,
    method: str = "bayes",
    n_trials: int | None = 50,
    seed: int | None = 0,
    constraints: dict[str, Any] | list[str] | None = None,
    data: dict[str, pd.Series] | None = None,
    cash: float = 10_000.0,
    warmup: int | str = "auto",
    **optimize_kwargs: Any,
) -> WalkForwardResult:
    """Optimise on each IS window (`qlab.optimize` with these settings), trade the best parameters on the
    following OOS window; see the module docstring for the conventions. Extra keywords go to `optimize`
    (a `study_name` gets '/window-k' appended per window)."""
    strat = resolve_strategy(strategy)
    validate_candles(candles, where="the candles to walk forward on")
    names, _ = parse_objectives(objective)
    if not (warmup == "auto" or (isinstance(warmup, int | np.integer) and not isinstance(warmup, bool) and warmup >= 0)):
        raise ConfigError(f"warmup={warmup!r}; give 'auto' (the whole in-sample window) or a number of bars >= 0")
    table = walk_forward_windows(candles.index, in_sample, out_of_sample, step, anchored)
    if (table.oos_start.to_numpy()[1:] < table.oos_end.to_numpy()[:-1]).any():
        raise ConfigError(f"step={step!r} is shorter than out_of_sample={out_of_sample!r}: the OOS windows would overlap "
                          "and cannot be stitched into one curve; use step >= out_of_sample")
    bpy = bars_per_year(strat.timeframe or infer_timeframe(candles.index))
    study_name = optimize_kwargs.pop("study_name", None)
    rows, is_curves, oos_curves, trades, positions, opts = [], [], [], [], [], []
    equity = float(cash)
    for w in table.itertuples(index=False):
        row: dict[str, Any] = dict(w._asdict())
        is_candles = candles.iloc[w.is_start:w.is_end]
        opt = optimize(strat, is_candles, space, objective, method=method, n_trials=n_trials, seed=seed,
                       constraints=constraints, data=_until(data, w.oos_start_time), cash=cash,
                       study_name=None if study_name is None else f"{study_name}/window-{w.window}", **optimize_kwargs)
        opts.append(opt)
        try:
            best = opt.best
        except QlabError as exc:
            best, notes = None, [f"no feasible in-sample trial ({exc}): out of the market"]
        else:
            notes = []
        if best is not None and equity <= 0:
            best, notes = None, ["the account was ruined in an earlier window: out of the market"]
        row.update({p: (best[p] if best else math.nan) for p in opt.space.names})
        if best is None:
            flat = pd.Series(equity, index=candles.index[w.oos_start:w.oos_end], name="equity")
            is_m, oos_m = {}, (_plain_metrics(flat, None, bpy, None) if equity > 0 else {})
            is_curves.append(pd.Series(float(cash), index=is_candles.index, name="equity"))
            oos_curves.append(flat)
            positions.append(pd.DataFrame({"asset": 0.0}, index=flat.index))
        else:
            chosen = opt.best_strategy()
            is_res = _run(chosen, is_candles, 0, cash, _until(data, w.oos_start_time))
            is_m = _plain_metrics(is_res.equity, is_res.trades, bpy, is_res.positions)
            lead = w.oos_start - w.is_start if warmup == "auto" else int(warmup)
            need = warmup_bars(chosen)
            if lead < need or lead > w.oos_start:
                raise ConfigError(f"warmup={warmup!r} bars for window {w.window}: the chosen strategy needs at least {need} "
                                  f"and at most {w.oos_start} bars lie before the window; use warmup='auto'")
            oos_res = _run(chosen, candles.iloc[w.oos_start - lead:w.oos_end], lead, equity, _until(data, w.oos_end_time))
            curve, pos, tr = oos_res.equity.iloc[lead:], oos_res.positions.iloc[lead:], _window_trades(oos_res, w, lead)
            oos_m = _plain_metrics(curve, tr, bpy, pos)
            is_curves.append(is_res.equity)
            oos_curves.append(curve)
            trades.append(tr)
            positions.append(pos)
        start, end = equity, float(oos_curves[-1].iloc[-1])
        row["is_return"] = is_m.get("total_return", math.nan)
        row["oos_return"] = end / start - 1.0 if start > 0 else math.nan
        row["is_ann_return"], row["oos_ann_return"] = is_m.get("cagr", math.nan), oos_m.get("cagr", math.nan)
        for n in names:
            row[f"is_{n}"], row[f"oos_{n}"] = is_m.get(n, math.nan), oos_m.get(n, math.nan)
        row["is_n_trades"], row["oos_n_trades"] = is_m.get("n_trades", 0), oos_m.get("n_trades", 0)
        row["efficiency"], why = efficiency_ratio(row["oos_ann_return"], row["is_ann_return"], "annualised return")
        notes += [why] if why and best is not None else []
        for n in names:
            row[f"efficiency_{n}"], why = efficiency_ratio(row[f"oos_{n}"], row[f"is_{n}"], n)
            notes += [why] if why and best is not None else []
        row["note"] = "; ".join(notes)
        rows.append(row)
        equity = max(end, 0.0)
    windows = pd.DataFrame(rows)
    oos_equity = pd.concat(oos_curves).rename("equity")
    oos_positions = pd.concat(positions).fillna(0.0)
    kept = [t for t in trades if len(t)] or trades[:1]  # concat warns about empty frames
    oos_trades = pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(columns=["window"])
    return _finish(windows, oos_equity, oos_trades, oos_positions, names, opts, bpy, is_curves, oos_curves)


def _finish(windows, oos_equity, oos_trades, oos_positions, names, opts, bpy, is_curves, oos_curves) -> WalkForwardResult:
    """The overall efficiencies: stitched OOS value over the mean IS value of the windows that traded."""
    traded = windows[windows["is_ann_return"].notna()]
    stitched = compute_metrics(oos_equity, oos_trades if len(oos_trades) else None, bpy, positions=oos_positions)
    eff, note = efficiency_ratio(float(stitched["cagr"]), float(traded["is_ann_return"].mean()), "annualised return")
    per_obj, notes = {}, [note] if note else []
    for n in names:
        ins = traded[f"is_{n}"].replace([np.inf, -np.inf], np.nan).mean()
        value = float(stitched[n]) if isinstance(stitched.get(n), int | float | np.number) else math.nan
        per_obj[n], why = efficiency_ratio(value, float(ins), n)
        notes += [why] if why else []
    params = list(opts[0].space.names) if opts else []
    return WalkForwardResult(windows, oos_equity, oos_trades, eff, per_obj, "; ".join(notes), names, params, bpy,
                             is_curves, oos_curves, oos_positions, opts)

"""Evaluating ML signals honestly: purged k-fold cross-validation with an embargo (for tuning), a leakage check
of the walk-forward, and the out-of-sample report (accuracy, log loss, AUC, calibration, permutation importance,
the trading result with costs against buy-and-hold and an SMA cross, the deflated Sharpe ratio, and a
shuffled-label control that must not beat chance).

    report = evaluate_ml(candles, "ml_gradient_boost")      # a spec with an ML indicator (or an MLConfig)
    report.metrics, report.calibration, report.importance, report.trading, report.dsr, report.figures
    cv = cross_validate(candles, config, n_splits=5)        # purged k-fold: one row per fold
    best = tune(candles, config, {"max_leaf_nodes": [7, 15, 31], "learning_rate": [0.03, 0.1]})
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from qlab.analytics.metrics import compute_metrics
from qlab.analytics.result import backtest
from qlab.data.candles import bars_per_year, infer_timeframe
from qlab.errors import ConfigError, DataError, LookaheadError, StrategyError, did_you_mean
from qlab.research.robustness import deflated_sharpe_from_returns
from qlab.strategy.compile import compile_strategy
from qlab.strategy.indicators import get_indicator
from qlab.strategy.labels import make_labels
from qlab.strategy.ml import (
    MLConfig,
    MLPrediction,
    fit_model,
    indicator_config,
    positive_proba,
    single_thread,
    walk_forward_folds,
    walk_forward_predict,
)
from qlab.strategy.ml_features import build_features
from qlab.strategy.spec import RULES, Strategy
from qlab.strategy.templates import resolve_strategy, templates

EPS = 1e-15


# ---------------------------------------------------------------- purged k-fold
def purged_kfold(positions: Iterable[int], horizon: int, n_splits: int = 5, embargo: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Contiguous k-fold splits of sample bar `positions` (sorted ints), purged and embargoed: a training
    sample is kept only when it is more than `horizon + embargo` bars away from every test sample, on both
    sides (before the fold its label would reach into the test labels; after it, its features would overlap
    the test labels' window). Returns (train positions, test positions) per fold."""
    pos = np.asarray(sorted(positions), dtype=np.int64)
    if isinstance(n_splits, bool) or not isinstance(n_splits, int) or n_splits < 2:
        raise ConfigError(f"n_splits={n_splits!r} must be a whole number >= 2, e.g. 5")
    if horizon < 0 or embargo < 0:
        raise ConfigError(f"horizon={horizon!r} and embargo={embargo!r} must be >= 0")
    if len(pos) < 2 * n_splits:
        raise DataError(f"{len(pos)} samples are too few for {n_splits} folds; pass more bars or fewer splits")
    gap = int(horizon) + int(embargo)
    out = []
    for test in np.array_split(pos, n_splits):
        lo, hi = int(test[0]), int(test[-1])
        train = pos[(pos < lo - gap) | (pos > hi + gap)]
        out.append((train, test))
    return out


def _samples(candles: pd.DataFrame, config: MLConfig) -> tuple[pd.DataFrame, pd.Series, np.ndarray]:
    feats = build_features(candles, config.features)
    labels = make_labels(candles, config.label, config.horizon, config.take_profit, config.stop_loss)
    ok = feats.notna().all(axis=1).to_numpy() & labels.notna().to_numpy()
    return feats, labels, np.flatnonzero(ok)


def classification_metrics(y: np.ndarray, p: np.ndarray, prior: float | None = None) -> dict[str, float]:
    """accuracy (p > 0.5), log loss, AUC (NaN with one class), Brier score, base rate and count; with `prior`
    (the training positive rate) also the log loss and accuracy of always predicting it."""
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    y, p = np.asarray(y, dtype=float), np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    both = len(np.unique(y)) == 2
    out = {"n": len(y), "base_rate": float(y.mean()) if len(y) else math.nan,
           "accuracy": float(((p > 0.5) == (y == 1)).mean()) if len(y) else math.nan,
           "log_loss": float(log_loss(y, p, labels=[0.0, 1.0])) if len(y) else math.nan,
           "auc": float(roc_auc_score(y, p)) if both else math.nan,
           "brier": float(brier_score_loss(y, p)) if len(y) else math.nan}
    if prior is not None and len(y):
        q = np.full(len(y), min(max(prior, EPS), 1 - EPS))
        out["prior_log_loss"] = float(log_loss(y, q, labels=[0.0, 1.0]))
        out["prior_accuracy"] = float(((q > 0.5) == (y == 1)).mean())
    return out


def cross_validate(candles: pd.DataFrame, config: MLConfig, n_splits: int = 5, embargo: int | None = None) -> pd.DataFrame:
    """Purged k-fold CV of `config` on the candles (embargo: default the label horizon); one row per fold with
    the test dates, sizes, accuracy, log loss, AUC and Brier score. For tuning: use history before the
    period you evaluate, then judge the tuned config by its walk-forward (`evaluate_ml`)."""
    feats, labels, pos = _samples(candles, config)
    x_all, y_all = feats.to_numpy(dtype=np.float64), labels.to_numpy(dtype=np.float64)
    embargo = config.horizon if embargo is None else embargo
    rows = []
    for i, (train, test) in enumerate(purged_kfold(pos, config.horizon, n_splits, embargo)):
        model = fit_model(config, x_all[train], y_all[train])
        m = classification_metrics(y_all[test], positive_proba(model, x_all[test]), float(y_all[train].mean()))
        rows.append({"fold": i, "test_start": candles.index[test[0]], "test_end": candles.index[test[-1]],
                     "n_train": len(train), **m})
    return pd.DataFrame(rows)


@dataclass
class TuneResult:
    """Every grid point's mean purged-CV scores (`table`, best first) and the best config."""

    table: pd.DataFrame
    best: MLConfig
    metric: str


def tune(candles: pd.DataFrame, config: MLConfig, grid: dict[str, list], *, n_splits: int = 5, embargo: int | None = None,
         metric: str = "log_loss") -> TuneResult:
    """Grid search over MLConfig fields scored by purged k-fold CV (`metric`: log_loss or brier, lower is better;
    auc or accuracy, higher is better). `len(table)` is the number of trials to deflate Sharpe ratios by."""
    known = [f for f in MLConfig.__dataclass_fields__ if f != "features"]
    for key in grid:
        if key not in known:
            raise ConfigError(f"grid key {key!r} is not an MLConfig field; use {', '.join(known)}." + did_you_mean(key, known))
    lower = {"log_loss": True, "brier": True, "auc": False, "accuracy": False}
    if metric not in lower:
        raise ConfigError(f"metric={metric!r}; use one of {', '.join(lower)}." + did_you_mean(metric, lower))
    rows, configs = [], []
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values, strict=True))
        cfg = config.with_(**params)
        cv = cross_validate(candles, cfg, n_splits, embargo)
        rows.append({**params, **{k: float(cv[k].mean()) for k in ("log_loss", "auc", "accuracy", "brier")}})
        configs.append(cfg)
    table = pd.DataFrame(rows)
    order = table[metric].sort_values(ascending=lower[metric], kind="stable").index
    return TuneResult(table.loc[order].reset_index(drop=True), configs[int(order[0])], metric)


# ---------------------------------------------------------------- leakage check
@dataclass
class LeakageReport:
    """Structural and truncation checks of an ML walk-forward: `problems` is empty when nothing leaks."""

    ok: bool
    problems: list[str]
    checked_folds: int

    def __str__(self) -> str:
        head = f"ML leakage check {'OK' if self.ok else 'FAILED'} ({self.checked_folds} fold(s) checked)"
        return "\n".join([head, *self.problems[:10]])


def check_ml_leakage(candles: pd.DataFrame, config: MLConfig, *, max_folds: int = 6, rtol: float = 1e-9) -> LeakageReport:
    """Two checks: (1) every fold's last training label ends before its OOS block starts; (2) recomputing on the
    candles cut right after the first bar of a block (and after bar horizon - 1 of it) gives the same predictions
    for the bars that remain: a model trained on labels that look into the block would change. Checks up to
    `max_folds` folds spread over the data (the lookahead guard's random cutoffs rarely land on those bars)."""
    n = len(candles)
    folds = walk_forward_folds(n, config)
    problems = [f"fold {i}: its training labels reach bar {f.train_end + config.horizon} "
                f"({candles.index[min(f.train_end + config.horizon, n - 1)]}), inside its OOS block from bar {f.test_start} "
                f"({candles.index[f.test_start]}); keep purge on (purge=1) so the last `horizon` bars before a block are not trained on"
                for i, f in enumerate(folds) if f.train_end + config.horizon >= f.test_start]
    if not folds:
        raise DataError(f"no walk-forward fold fits in {n} bars (the first prediction is at bar {config.first_prediction()}); "
                        "pass more bars or lower min_train")
    full = walk_forward_predict(candles, config).proba.to_numpy()
    chosen = sorted(set(np.linspace(0, len(folds) - 1, min(max_folds, len(folds))).round().astype(int)))
    for i in chosen:
        f = folds[i]
        for k in sorted({0, max(config.horizon - 1, 0)}):
            cut = min(f.test_start + k, n - 1)
            part = walk_forward_predict(candles.iloc[: cut + 1], config).proba.to_numpy()
            a, b = full[: cut + 1], part
            same = (np.isnan(a) & np.isnan(b)) | (np.abs(a - b) <= rtol * np.abs(a) + 1e-12)
            if not same.all():
                j = int(np.argmin(same))
                problems.append(f"fold {i}: the prediction at {candles.index[j]} changes from {a[j]:.6g} to {b[j]:.6g} when the "
                                f"data ends at {candles.index[cut]}: the model was trained on information from inside its OOS block")
                break
    return LeakageReport(not problems, problems, len(chosen))


def assert_no_ml_leakage(candles: pd.DataFrame, config: MLConfig, **kw: Any) -> None:
    """Raise LookaheadError with the findings of `check_ml_leakage`."""
    report = check_ml_leakage(candles, config, **kw)
    if not report.ok:
        raise LookaheadError(str(report))


# ---------------------------------------------------------------- evaluation
def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Reliability table: per probability bin [lo, hi), the count, mean predicted probability and observed rate."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        m = which == b
        rows.append({"bin_lo": edges[b], "bin_hi": edges[b + 1], "count": int(m.sum()),
                     "mean_predicted": float(p[m].mean()) if m.any() else math.nan,
                     "observed_rate": float(y[m].mean()) if m.any() else math.nan})
    return pd.DataFrame(rows)


def calibration_figure(table: pd.DataFrame, title: str = "Calibration (out of sample)"):
    """Reliability diagram: observed rate against mean predicted probability per bin, with the diagonal."""
    import plotly.graph_objects as go

    t = table[table["count"] > 0]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated", line={"dash": "dash", "color": "grey"}))
    fig.add_trace(go.Scatter(x=t["mean_predicted"], y=t["observed_rate"], mode="lines+markers", name="model",
                             text=[f"{c} bars" for c in t["count"]], marker={"size": 4 + 16 * np.sqrt(t["count"] / t["count"].max())}))
    fig.update_layout(title=title, xaxis_title="mean predicted probability", yaxis_title="observed frequency of label 1",
                      xaxis={"range": [0, 1]}, yaxis={"range": [0, 1]}, height=420)
    return fig


def permutation_importance_table(pred: MLPrediction, repeats: int = 5, seed: int = 0) -> pd.DataFrame:
    """Permutation importance on the OOS blocks, each with its own fold's model: the mean drop in AUC when
    one feature's OOS values are shuffled (weighted by block size), and its std across folds and repeats."""
    from sklearn.inspection import permutation_importance

    x_all, y_all = pred.features.to_numpy(dtype=np.float64), pred.labels.to_numpy(dtype=np.float64)
    drops, weights = [], []
    folds = walk_forward_folds(len(x_all), pred.config)
    for fold, model in zip(folds, pred.models, strict=True):
        rows = np.arange(fold.test_start, fold.test_end)
        rows = rows[~np.isnan(x_all[rows]).any(axis=1) & ~np.isnan(y_all[rows])]
        if model is None or not hasattr(model, "classes_") or len(np.unique(y_all[rows])) < 2 or type(model).__name__ == "DummyClassifier":
            continue
        with single_thread():
            r = permutation_importance(model, x_all[rows], y_all[rows], scoring="roc_auc", n_repeats=repeats, random_state=seed)
        drops.append(r.importances)
        weights.append(len(rows))
    if not drops:
        raise DataError("no OOS block has both classes and a fitted model; pass more bars")
    w = np.repeat(np.asarray(weights, dtype=float), repeats)
    stacked = np.concatenate(drops, axis=1)  # features x (folds * repeats)
    mean = (stacked * w).sum(axis=1) / w.sum()
    table = pd.DataFrame({"feature": pred.features.columns, "importance": mean, "std": stacked.std(axis=1)})
    return table.sort_values("importance", ascending=False, kind="stable").reset_index(drop=True)


def importance_figure(table: pd.DataFrame):
    """Horizontal bars of the permutation importance (AUC drop), with the spread as error bars."""
    import plotly.graph_objects as go

    t = table.iloc[::-1]
    fig = go.Figure(go.Bar(x=t["importance"], y=t["feature"], orientation="h", error_x={"type": "data", "array": t["std"]}))
    fig.update_layout(title="Permutation importance (drop in OOS AUC)", xaxis_title="AUC drop", height=max(300, 22 * len(t) + 120))
    return fig


@dataclass
class MLReport:
    """The out-of-sample evaluation of an ML signal (see `evaluate_ml`)."""

    metrics: dict[str, float]
    control: dict[str, float]
    calibration: pd.DataFrame
    importance: pd.DataFrame
    trading: pd.DataFrame
    dsr: dict[str, float]
    folds: pd.DataFrame
    prediction: MLPrediction = field(repr=False)
    equity: pd.DataFrame = field(repr=False)
    figures: dict[str, Any] = field(repr=False)

    def summary(self) -> pd.DataFrame:
        """The headline numbers as one table."""
        m, c = self.metrics, self.control
        rows = [("OOS bars", m["n"]), ("OOS base rate", m["base_rate"]), ("OOS accuracy", m["accuracy"]),
                ("prior accuracy", m.get("prior_accuracy")), ("OOS log loss", m["log_loss"]), ("prior log loss", m.get("prior_log_loss")),
                ("OOS AUC", m["auc"]), ("OOS Brier", m["brier"]), ("shuffled-label AUC", c.get("auc")),
                ("deflated Sharpe (prob.)", self.dsr.get("dsr")), ("trials deflated for", self.dsr.get("n_trials"))]
        return pd.DataFrame(rows, columns=["metric", "value"]).set_index("metric")

    def to_html(self) -> str:
        """A self-contained HTML report (plotly.js embedded once)."""
        parts = ["<h2>Out-of-sample classification</h2>", self.summary().to_html(), "<h2>Trading (with costs)</h2>",
                 self.trading.to_html()]
        for i, (name, fig) in enumerate(self.figures.items()):
            parts += [f"<h3>{html.escape(name)}</h3>", fig.to_html(full_html=False, include_plotlyjs=i == 0)]
        parts += ["<h2>Calibration table</h2>", self.calibration.to_html(index=False), "<h2>Walk-forward folds</h2>",
                  self.folds.to_html(index=False)]
        return "<html><head><meta charset='utf-8'></head><body>" + "\n".join(parts) + "</body></html>"


def ml_alias(strategy: Strategy, indicator: str | None = None) -> str:
    """The alias of the strategy's ML indicator (`indicator` when given and valid; else the only one)."""
    ml = [a for a, d in strategy.indicators.items() if get_indicator(d.fn).source == "ml"]
    if indicator is not None:
        if indicator not in ml:
            raise StrategyError(f"indicator {indicator!r} is not an ML indicator of strategy {strategy.name!r}; its ML indicators: "
                                f"{', '.join(ml) or 'none'}." + did_you_mean(indicator, ml))
        return indicator
    if len(ml) != 1:
        raise StrategyError(f"strategy {strategy.name!r} has {len(ml)} ML indicators ({', '.join(ml) or 'none'}); "
                            "name the one to evaluate with indicator=")
    return ml[0]


def _trade(candles: pd.DataFrame, signals: pd.DataFrame, start: int, strategy: Strategy | None, costs: Any, cash: float):
    sig = signals.iloc[start:].copy()
    if strategy is None:
        return backtest(candles.iloc[start:], sig, costs=costs, cash=cash)
    return backtest(candles.iloc[start:], sig, orders=strategy.order_spec(), size=strategy.size_spec(),
                    costs=strategy.cost_model() if costs == "strategy" else costs, cash=cash)


def _row(name: str, res, bpy: float) -> dict[str, Any]:
    m = compute_metrics(res.equity, res.trades, bpy, positions=res.positions)
    return {"run": name, "total_return": m["total_return"], "sharpe": m["sharpe"], "max_drawdown": m["max_drawdown"],
            "n_trades": m["n_trades"], "exposure": m["exposure"], "cost_total": m["cost_total"]}


def evaluate_ml(candles: pd.DataFrame, spec: Strategy | str | dict | MLConfig, *, indicator: str | None = None,
                entry: float = 0.55, exit: float = 0.5, thresholds: Iterable[float] = (0.5, 0.52, 0.55, 0.58, 0.6),
                n_trials: int | None = None, costs: Any = "strategy", cash: float = 10_000.0, bins: int = 10,
                importance_repeats: int = 3, control: bool = True, baseline: str = "sma_cross", seed: int = 0) -> MLReport:
    """Walk-forward OOS evaluation of an ML signal on `candles`.

    `spec` is a strategy (a Strategy, template name or dict) holding an ML indicator (`indicator` names it when
    there are several), whose own rules are traded; or an MLConfig, traded long-only: enter when the probability
    is above `entry`, exit when it is below `exit`. Everything is measured on the OOS bars only (from the first
    prediction on): classification metrics against the constant prior, the reliability table and figure,
    permutation importance, the trading result with costs next to buy-and-hold and the `baseline` template
    on the same bars, and the deflated Sharpe ratio of the traded rule against the long-only rules with each of
    `thresholds` (n_trials: how many configurations you really tried, if more). With `control`, the same
    walk-forward on shuffled training labels, whose OOS AUC should be ~0.5.
    """
    import plotly.graph_objects as go

    strategy = None
    if isinstance(spec, MLConfig):
        config = spec
    else:
        strategy = resolve_strategy(spec)
        alias = ml_alias(strategy, indicator)
        config = indicator_config(strategy.indicators[alias].fn, strategy.indicators[alias].params)
    pred = walk_forward_predict(candles, config)
    start = config.first_prediction()
    if start >= len(candles) - 2:
        raise DataError(f"the first prediction is at bar {start} but there are only {len(candles)} bars; pass more bars")
    p, y = pred.proba.to_numpy(), pred.labels.to_numpy()
    oos = ~np.isnan(p) & ~np.isnan(y)
    prior = float(np.nansum(pred.folds.train_positive_rate * pred.folds.n_test) / max(pred.folds.n_test.sum(), 1))
    metrics = classification_metrics(y[oos], p[oos], prior)
    ctrl: dict[str, float] = {}
    if control:
        shuffled = walk_forward_predict(candles, config.with_(shuffle_labels=True))
        q = shuffled.proba.to_numpy()
        ok = ~np.isnan(q) & ~np.isnan(y)
        ctrl = classification_metrics(y[ok], q[ok])
    calib = calibration_table(y[oos], p[oos], bins)
    importance = permutation_importance_table(pred, importance_repeats, seed)

    bpy = bars_per_year(infer_timeframe(candles.index))
    proba = pred.proba
    if strategy is None:
        signals = pd.DataFrame({"entry_long": proba > entry, "exit_long": proba < exit}, index=candles.index)
        signals["entry_short"] = signals["exit_short"] = False
        main = _trade(candles, signals, start, None, "default" if costs == "strategy" else costs, cash)
    else:
        signals = compile_strategy(strategy, candles)[list(RULES)]
        main = _trade(candles, signals, start, strategy, costs, cash)
    run_costs = "default" if costs == "strategy" else costs
    hold = pd.DataFrame(False, index=candles.index, columns=list(RULES))
    hold.iloc[start, 0] = True
    hold_res = _trade(candles, hold, start, None, run_costs, cash)
    base = templates[baseline] if isinstance(baseline, str) else resolve_strategy(baseline)
    base_res = _trade(candles, compile_strategy(base, candles)[list(RULES)], start, None, run_costs, cash)
    rows = [_row(strategy.name if strategy else f"ML long p>{entry:g}", main, bpy), _row("buy and hold", hold_res, bpy),
            _row(f"baseline {base.name}", base_res, bpy)]
    trial_sharpes, trial_curves = [rows[0]["sharpe"]], {}
    for t in thresholds:
        sig = pd.DataFrame({"entry_long": proba > t, "exit_long": proba <= t, "entry_short": False, "exit_short": False},
                           index=candles.index)
        res = _trade(candles, sig, start, None, run_costs, cash)
        trial_sharpes.append(_row("", res, bpy)["sharpe"])
        trial_curves[t] = res.equity
    trading = pd.DataFrame(rows).set_index("run")
    returns = main.equity.pct_change().dropna()
    finite = np.asarray([s for s in trial_sharpes if np.isfinite(s)])
    try:
        dsr = deflated_sharpe_from_returns(returns, finite, bpy, n_trials=max(n_trials or 0, len(finite)) or None)
    except DataError as exc:  # e.g. no trade at all: flat equity, no Sharpe to deflate
        dsr = {"dsr": math.nan, "note": str(exc), "n_trials": len(finite)}
    equity = pd.DataFrame({r["run"]: res.equity for r, res in zip(rows, (main, hold_res, base_res), strict=True)})
    fig_eq = go.Figure([go.Scatter(x=equity.index, y=equity[c], name=c, mode="lines") for c in equity.columns])
    fig_eq.update_layout(title="Out-of-sample equity with costs", yaxis_title="equity", height=420)
    fig_p = go.Figure([go.Histogram(x=p[oos & (y == 1)], name="label 1", opacity=0.6, nbinsx=40),
                       go.Histogram(x=p[oos & (y == 0)], name="label 0", opacity=0.6, nbinsx=40)])
    fig_p.update_layout(barmode="overlay", title="OOS predicted probability by outcome", xaxis_title="probability", height=360)
    figures = {"equity": fig_eq, "calibration": calibration_figure(calib), "importance": importance_figure(importance),
               "probabilities": fig_p}
    return MLReport(metrics, ctrl, calib, importance, trading, dsr, pred.folds, pred, equity, figures)

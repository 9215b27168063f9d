"""The ML signals lab behind notebooks/06_ml_signals.ipynb: `run(params)` for papermill, `widget()` for people.

A strategy with an ML indicator (default: the `ml_gradient_boost` template) is trained walk-forward on bundled
candles, checked for lookahead and leakage, and evaluated out of sample (qlab.research.ml_eval)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qlab.data.candles import Candles
from qlab.engine.lookahead import LookaheadReport, check_lookahead
from qlab.errors import ConfigError, did_you_mean
from qlab.research.ml_eval import LeakageReport, MLReport, check_ml_leakage, evaluate_ml, ml_alias
from qlab.strategy.compile import compile_strategy
from qlab.strategy.labels import LABELS
from qlab.strategy.ml import MODELS, MLConfig, indicator_config
from qlab.strategy.spec import Strategy
from qlab.strategy.templates import resolve_strategy
from qlab.ui.params import merge_params, sample_window

DEFAULTS: dict[str, Any] = {
    "spec": "ml_gradient_boost",  # a template, a .json/.yaml spec path or a spec dict with an ML indicator
    "symbol": "BTC/USDT",
    "timeframe": "1h",
    "start": "2023-11-01",
    "end": "2024-04-01",
    "model": None,  # None keeps the spec's; or "logistic", "hgb", "lightgbm"
    "label": None,  # None keeps the spec's; or "sign", "triple_barrier"
    "horizon": None,  # label horizon in bars (None keeps the spec's)
    "seed": None,
    "entry": None,  # None keeps the spec's rules; a number trades long-only: enter above it, exit below `exit`
    "exit": 0.5,
    "cash": 10_000.0,
    "control": True,  # also train on shuffled labels (must not beat chance)
    "checks": True,  # run the lookahead guard and the ML leakage check
}


@dataclass
class MLSignalsResult:
    """One run: the strategy, its ML config, the OOS report and the two leakage checks."""

    params: dict[str, Any]
    strategy: Strategy
    config: MLConfig
    candles: Candles
    report: MLReport
    lookahead: LookaheadReport | None
    leakage: LeakageReport | None

    @property
    def figures(self) -> dict[str, Any]:
        """The report's figures (equity, calibration, importance, probabilities)."""
        return self.report.figures


def _apply(strategy: Strategy, alias: str, p: dict[str, Any]) -> Strategy:
    overrides: dict[str, Any] = {}
    for key, names in (("model", MODELS), ("label", LABELS)):
        if p[key] is not None:
            if p[key] not in names:
                raise ConfigError(f"{key}={p[key]!r}; use one of {', '.join(names)}." + did_you_mean(str(p[key]), names))
            overrides[f"{alias}.{key}"] = names.index(p[key])
    for key in ("horizon", "seed"):
        if p[key] is not None:
            overrides[f"{alias}.{key}"] = int(p[key])
    if p["entry"] is not None:
        overrides["entry_long"] = f"{alias} > {float(p['entry'])!r}"
        overrides["exit_long"] = f"{alias} < {float(p['exit'])!r}"
    return strategy.with_params(**overrides) if overrides else strategy


def run(params: dict[str, Any] | None = None) -> MLSignalsResult:
    """Train walk-forward, check for lookahead and leakage, evaluate out of sample (what the notebook shows)."""
    p = merge_params(params, DEFAULTS, "ml-signals")
    base = resolve_strategy(p["spec"])
    alias = ml_alias(base, None)
    strategy = _apply(base, alias, p)
    config = indicator_config(strategy.indicators[alias].fn, strategy.indicators[alias].params)
    candles = sample_window(p["symbol"], p["timeframe"], p["start"], p["end"])
    report = evaluate_ml(candles, strategy, cash=float(p["cash"]), control=bool(p["control"]))
    lookahead = leakage = None
    if p["checks"]:
        start = min(config.first_prediction() + 50, len(candles) // 2)
        lookahead = check_lookahead(lambda c: compile_strategy(strategy, c), candles, cutoffs=8, min_history=start)
        leakage = check_ml_leakage(candles, config, max_folds=4)
    return MLSignalsResult(p, strategy, config, candles, report, lookahead, leakage)


def widget(params: dict[str, Any] | None = None):
    """Model, label, horizon and entry threshold controls; Run calls the same `run` the notebook runs."""
    import ipywidgets as w
    from IPython.display import display

    from qlab.ui.display import show

    p = merge_params(params, DEFAULTS, "ml-signals")
    model = w.Dropdown(options=list(MODELS), value=p["model"] or "hgb", description="model")
    label = w.Dropdown(options=list(LABELS), value=p["label"] or "sign", description="label")
    horizon = w.IntSlider(value=int(p["horizon"] or 4), min=1, max=48, description="horizon")
    entry = w.FloatSlider(value=float(p["entry"] or 0.55), min=0.5, max=0.8, step=0.01, description="entry >")
    start, end = w.Text(value=str(p["start"] or ""), description="start"), w.Text(value=str(p["end"] or ""), description="end")
    button = w.Button(description="Run", button_style="primary")
    out = w.Output()

    def on_run(*_: object) -> None:
        out.clear_output(wait=True)
        with out:
            try:
                res = run({**p, "model": model.value, "label": label.value, "horizon": horizon.value, "entry": entry.value,
                           "start": start.value or None, "end": end.value or None, "checks": False})
            except Exception as exc:  # shown in the widget: the parameter or data problem, from qlab's messages
                print(f"error: {exc}")
                return
            display(res.report.summary(), res.report.trading)
            show(res.figures["equity"], res.figures["calibration"], res.figures["importance"])

    button.on_click(on_run)
    return w.VBox([w.HBox([model, label, horizon]), w.HBox([entry, start, end, button]), out])

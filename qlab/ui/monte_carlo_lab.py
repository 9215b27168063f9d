"""The Monte Carlo lab behind notebooks/04_monte_carlo_lab.ipynb: `run(params)` for papermill, `widget()` for people."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qlab.analytics.result import Result, backtest
from qlab.data.candles import Candles
from qlab.research.monte_carlo import METHODS, MonteCarloResult, monte_carlo
from qlab.research.scenarios import REGISTRY
from qlab.research.stress import HISTORY, StressReport, stress_test
from qlab.strategy.spec import Strategy
from qlab.strategy.templates import resolve_strategy
from qlab.ui.params import merge_params, sample_data, sample_window

DEFAULTS: dict[str, Any] = {
    "spec": "ema_cross",  # a template name, a path to a .json/.yaml spec, or a spec dict
    "symbol": "BTC/USDT",
    "timeframe": "1h",
    "start": "2022-01-01",
    "end": "2023-01-01",
    "cash": 10_000.0,
    "method": "block_bootstrap",  # one of qlab.research.monte_carlo.METHODS
    "n_paths": 2000,
    "block": 24.0,  # mean block length (bars) of the stationary bootstrap
    "seed": 42,
    "ruin": 0.3,  # the loss that counts as ruin
    "scenarios": None,  # None: the whole library and the history windows
    "max_drawdown": 0.25,  # risk limits checked in every scenario
    "daily_loss": 0.05,
}


@dataclass
class LabResult:
    """One lab run: the backtest, its Monte Carlo simulation, the stress report and their figures."""

    params: dict[str, Any]
    strategy: Strategy
    candles: Candles
    result: Result
    mc: MonteCarloResult
    stress: StressReport
    figures: dict[str, Any]


def scenario_names() -> list[str]:
    """Every scenario the lab offers: the registered library, then the history windows."""
    return [*REGISTRY, *HISTORY]


def run(params: dict[str, Any] | None = None) -> LabResult:
    """Backtest the strategy on bundled candles, simulate it with the chosen method and stress it."""
    p = merge_params(params, DEFAULTS, "monte-carlo-lab")
    strategy = resolve_strategy(p["spec"])
    candles = sample_window(p["symbol"], p["timeframe"], p["start"], p["end"])
    data = sample_data(strategy.data, p["symbol"])
    result = backtest({p["symbol"]: candles}, strategy, cash=float(p["cash"]), data=data)
    mc = monte_carlo(result, p["method"], n=int(p["n_paths"]), seed=p["seed"], block=float(p["block"]), ruin=float(p["ruin"]))
    limits = {k: float(p[k]) for k in ("max_drawdown", "daily_loss") if p[k]}
    stress = stress_test(result, scenarios=p["scenarios"], limits=limits)
    figures = {"fan": mc.fan_chart(), "histograms": mc.histograms(), "stress": stress.figure()}
    return LabResult(p, strategy, candles, result, mc, stress, figures)


def widget(params: dict[str, Any] | None = None):
    """Pick the method, the number of paths and the scenarios, press Run (the same `run`)."""
    import ipywidgets as w
    from IPython.display import display

    from qlab.ui.display import show

    p = merge_params(params, DEFAULTS, "monte-carlo-lab")
    method = w.Dropdown(options=list(METHODS), value=p["method"], description="method")
    paths = w.IntText(value=int(p["n_paths"]), description="paths")
    block = w.FloatText(value=float(p["block"]), description="block")
    names = scenario_names()
    chosen = names if p["scenarios"] is None else [s for s in p["scenarios"] if isinstance(s, str)]
    scenarios = w.SelectMultiple(options=names, value=tuple(chosen), description="scenarios", rows=min(len(names), 9))
    button = w.Button(description="Run", button_style="primary")
    out = w.Output()

    def on_run(*_: object) -> None:
        out.clear_output(wait=True)
        with out:
            try:
                lab = run({**p, "method": method.value, "n_paths": paths.value, "block": block.value,
                           "scenarios": list(scenarios.value) or None})
            except Exception as exc:  # shown in the widget: a clear qlab error names the bad value
                print(f"error: {exc}")
                return
            print(lab.mc)
            show(lab.figures["fan"], lab.figures["histograms"])
            display(lab.mc.summary())
            display(lab.stress.formatted())
            show(lab.figures["stress"])

    button.on_click(on_run)
    return w.VBox([w.HBox([method, paths, block, button]), scenarios, out])

"""The optimiser behind notebooks/03_optimizer.ipynb: `run(params)` for papermill, `widget()` for people."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qlab.data.candles import Candles
from qlab.research.optimize import METHODS, OptimizationResult, optimize
from qlab.strategy.templates import resolve_strategy
from qlab.ui.params import merge_params, sample_data, sample_window

DEFAULTS: dict[str, Any] = {
    "strategy": "sma_cross",  # a template name, a spec path, or a spec dict
    "symbol": "BTC/USDT",
    "timeframe": "1h",
    "start": "2023-04-01",
    "end": "2024-04-01",
    # ranges as dicts (papermill turns tuples into lists, and a list means choices)
    "space": {"fast.period": {"low": 5, "high": 50, "step": 5}, "slow.period": {"low": 60, "high": 200, "step": 20}},
    "objective": ["sharpe", "max_drawdown"],
    "method": "grid",
    "n_trials": 100,
    "seed": 0,
    "constraints": {"n_trades": (">=", 30)},
    "walk_forward": True,
    "in_sample": "120D",
    "out_of_sample": "30D",
    "wf_method": "grid",
    "wf_trials": 30,
}


@dataclass
class OptimizerRun:
    """An optimisation (and its walk-forward check) with the figures the notebook shows."""

    params: dict[str, Any]
    candles: Candles
    result: OptimizationResult
    walk_forward: Any
    figures: dict[str, Any]
    robustness: Any = None


def _check(params: dict[str, Any] | None) -> dict[str, Any]:
    return merge_params(params, DEFAULTS, "optimiser")


def run(params: dict[str, Any] | None = None) -> OptimizerRun:
    """Optimise a strategy on bundled candles, then walk it forward; figures for the notebook."""
    p = _check(params)
    strategy = resolve_strategy(p["strategy"])
    candles = sample_window(p["symbol"], p["timeframe"], p["start"], p["end"])
    data = sample_data(strategy.data, p["symbol"])
    result = optimize(strategy, candles, p["space"], p["objective"], method=p["method"], n_trials=p["n_trials"],
                      seed=p["seed"], constraints=p["constraints"], data=data)
    figures = result.figures()
    robustness = result.robustness(candles, data=data)
    if robustness.pbo is not None:
        from qlab.research.robustness import pbo_figure

        figures["pbo"] = pbo_figure(robustness.pbo)
    wf = None
    if p["walk_forward"]:
        from qlab.research.walkforward import walk_forward

        wf = walk_forward(strategy, candles, p["space"], result.objectives[0], in_sample=p["in_sample"],
                          out_of_sample=p["out_of_sample"], method=p["wf_method"], n_trials=p["wf_trials"], seed=p["seed"],
                          constraints=p["constraints"], data=data)
        figures["walk_forward"] = wf.figure()
    return OptimizerRun(p, candles, result, wf, figures, robustness)


def widget(params: dict[str, Any] | None = None):  # an ipywidgets.VBox
    """Strategy, space, method and objectives as widgets; 'Optimise' calls the same `run(params)` as papermill."""
    import json

    import ipywidgets as w
    from IPython.display import display

    from qlab.strategy.templates import templates
    from qlab.ui.display import show

    p = _check(params)
    strategy = w.Dropdown(options=list(templates), value=p["strategy"] if p["strategy"] in templates else None, description="strategy")
    space = w.Textarea(value=json.dumps(p["space"]), description="space", layout=w.Layout(width="100%"))
    method = w.Dropdown(options=list(METHODS), value=p["method"], description="method")
    objective = w.Text(value=", ".join(p["objective"] if isinstance(p["objective"], list) else [p["objective"]]), description="objectives")
    n_trials = w.IntSlider(value=p["n_trials"], min=10, max=1000, step=10, description="trials")
    button = w.Button(description="Optimise", button_style="primary")
    out = w.Output()

    def on_click(*_: object) -> None:
        out.clear_output(wait=True)
        with out:
            try:
                res = run({**p, "strategy": strategy.value, "space": json.loads(space.value), "method": method.value,
                           "objective": [o.strip() for o in objective.value.split(",") if o.strip()],
                           "n_trials": n_trials.value, "walk_forward": False})
            except Exception as exc:  # shown in the widget rather than lost in a callback
                print(f"error: {exc}")
                return
            print(res.result.best)
            show(*res.figures.values())
            display(res.result.pareto.head(20))

    button.on_click(on_click)
    return w.VBox([w.HBox([strategy, method, n_trials]), objective, space, button, out])

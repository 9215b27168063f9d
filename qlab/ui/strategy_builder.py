"""The strategy builder behind notebooks/02_strategy_builder.ipynb: `run(params)` for papermill, `widget()` for people."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pandas as pd

from qlab.analytics.plots import cost_breakdown_figure, equity_figure, strategy_figure
from qlab.analytics.result import Result, backtest
from qlab.data.candles import Candles
from qlab.strategy.compile import compile_strategy
from qlab.strategy.spec import Strategy
from qlab.strategy.templates import resolve_strategy, templates
from qlab.ui.params import merge_params, sample_data, sample_window

DEFAULTS: dict[str, Any] = {
    "spec": "macd_trend",  # a template name, a path to a .json/.yaml spec, or a spec dict
    "symbol": "BTC/USDT",
    "timeframe": "1h",
    "start": "2023-01-01",
    "end": None,
    "cash": 10_000.0,
    "save_to": None,  # write the spec as JSON here
}


@dataclass
class BuilderResult:
    """A strategy run: the spec, the compiled columns, the backtest and its figures."""

    params: dict[str, Any]
    strategy: Strategy
    candles: Candles
    compiled: pd.DataFrame
    result: Result
    figures: dict[str, Any]

    def spec_json(self) -> str:
        """The spec as JSON text (what `save_to` writes)."""
        return self.strategy.to_json()


load_strategy = resolve_strategy  # kept for notebooks that call strategy_builder.load_strategy


def _check(params: dict[str, Any] | None) -> dict[str, Any]:
    return merge_params(params, DEFAULTS, "strategy-builder")


def run(params: dict[str, Any] | None = None) -> BuilderResult:
    """Compile and backtest a strategy on bundled candles; the charts, metrics and cost breakdown for the notebook."""
    p = _check(params)
    strategy = load_strategy(p["spec"])
    candles = sample_window(p["symbol"], p["timeframe"], p["start"], p["end"])
    data = sample_data(strategy.data, p["symbol"])
    compiled = compile_strategy(strategy, candles, data)
    result = backtest({p["symbol"]: candles}, strategy, cash=float(p["cash"]), data=data)
    title = f"{strategy.name} on {p['symbol']} {p['timeframe']}"
    figures = {
        "chart": strategy_figure(candles, compiled, result.trades, p["timeframe"], title=title),
        "equity": equity_figure(result.equity),
        "costs": cost_breakdown_figure(result.trades),
    }
    if p["save_to"]:
        strategy.save(p["save_to"])
    return BuilderResult(p, strategy, candles, compiled, result, figures)


def widget(params: dict[str, Any] | None = None):
    """Pick a template or edit the spec (add indicators and signals), run it, and save it as JSON."""
    import ipywidgets as w
    from IPython.display import display

    from qlab.strategy.indicators import REGISTRY
    from qlab.ui.display import show

    p = _check(params)
    template = w.Dropdown(options=list(templates), value=p["spec"] if p["spec"] in templates else None, description="template")
    editor = w.Textarea(layout=w.Layout(width="100%", height="260px"))
    alias = w.Text(placeholder="name, e.g. rsi_fast", description="indicator")
    fn = w.Dropdown(options=sorted(REGISTRY), value="rsi", description="function")
    fn_params = w.Text(placeholder='{"period": 7}', description="params")
    sig_name = w.Text(placeholder="name", description="signal")
    sig_expr = w.Text(placeholder="crossover(fast, slow) & (rsi < 70)", description="expression")
    save_path = w.Text(value="my_strategy.json", description="save as")
    run_button, add_ind, add_sig, save = (w.Button(description=d) for d in ("Run", "Add indicator", "Add signal", "Save JSON"))
    run_button.button_style = "primary"
    out = w.Output()

    def current() -> dict[str, Any]:
        return json.loads(editor.value)

    def on_template(*_: object) -> None:
        if template.value:
            editor.value = templates[template.value].to_json()

    def add_indicator(*_: object) -> None:
        spec = current()
        spec.setdefault("indicators", {})[alias.value] = {"fn": fn.value, "params": json.loads(fn_params.value or "{}")}
        editor.value = json.dumps(spec, indent=2)

    def add_signal(*_: object) -> None:
        spec = current()
        spec.setdefault("signals", {})[sig_name.value] = sig_expr.value
        editor.value = json.dumps(spec, indent=2)

    def on_run(*_: object) -> None:
        out.clear_output(wait=True)
        with out:
            try:
                res = run({**p, "spec": current()})
            except Exception as exc:  # shown in the widget: the spec's problems, listed by the validator
                print(f"error: {exc}")
                return
            show(res.figures["chart"])
            display(res.result.metrics_table())
            show(res.figures["costs"])

    def on_save(*_: object) -> None:
        with out:
            try:
                print(f"saved {Strategy.from_dict(current()).save(save_path.value)}")
            except Exception as exc:  # a spec that does not validate is not saved
                print(f"error: {exc}")

    template.observe(on_template, names="value")
    add_ind.on_click(add_indicator)
    add_sig.on_click(add_signal)
    run_button.on_click(on_run)
    save.on_click(on_save)
    on_template()
    return w.VBox([w.HBox([template, run_button]), editor, w.HBox([alias, fn, fn_params, add_ind]),
                   w.HBox([sig_name, sig_expr, add_sig]), w.HBox([save_path, save]), out])

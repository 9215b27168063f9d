"""Figures of an optimisation: history, parameter importance, Pareto front, parameter heatmap."""

from __future__ import annotations

from typing import Any

import numpy as np


def history_figure(result: Any):
    """Each trial's first objective and the best so far, by trial number."""
    import plotly.graph_objects as go

    t = result.trials.sort_values("number")
    name, maximise = result.objectives[0], result.directions[0] == "maximize"
    values = t[name].where(t.feasible)
    best = values.cummax() if maximise else values.cummin()
    fig = go.Figure([
        go.Scatter(x=t.number, y=t[name], mode="markers", name=name, marker={"color": np.where(t.feasible, "#1f77b4", "#bbbbbb")}),
        go.Scatter(x=t.number, y=best, mode="lines", name="best so far", line={"shape": "hv"}),
    ])
    fig.update_layout(title=f"Optimisation history ({result.method}, {len(t)} trials; grey: infeasible)",
                      xaxis_title="trial", yaxis_title=name, height=400)
    return fig


def importance_figure(result: Any):
    """optuna's fANOVA-free default importance of each parameter for the first objective; None with one parameter."""
    import optuna
    import plotly.graph_objects as go

    if len(result.space.names) < 2:
        return None
    sign = -1.0 if result.directions[0] == "maximize" else 1.0  # optuna ranks parameters for low target values

    def target(t: Any) -> float:
        return sign * t.values[0]

    import warnings

    try:
        with warnings.catch_warnings():  # optuna reminds that it ranks for low targets: `target` already flips the sign
            warnings.simplefilter("ignore", UserWarning)
            imp = optuna.importance.get_param_importances(result.study, target=target)
    except (ValueError, RuntimeError):  # too few completed trials to fit the importance model
        return None
    fig = go.Figure(go.Bar(x=list(imp.values()), y=list(imp.keys()), orientation="h"))
    fig.update_layout(title=f"Parameter importance for {result.objectives[0]}", height=300 + 20 * len(imp))
    return fig


def pareto_figure(result: Any):
    """All feasible trials on the first two objectives, the Pareto front highlighted; None for one objective."""
    import plotly.graph_objects as go

    if len(result.objectives) < 2:
        return None
    x, y = result.objectives[:2]
    ok = result.trials[result.trials.feasible]
    front = result.pareto.sort_values(x)
    hover = [", ".join(f"{p}={row[p]}" for p in result.space.names) for _, row in front.iterrows()]
    fig = go.Figure([
        go.Scatter(x=ok[x], y=ok[y], mode="markers", name="trials", marker={"color": "#bbbbbb"}),
        go.Scatter(x=front[x], y=front[y], mode="lines+markers", name="Pareto front", text=hover,
                   hovertemplate="%{text}<br>%{x:.4g}, %{y:.4g}<extra></extra>", marker={"size": 9, "color": "#d62728"}),
    ])
    fig.update_layout(title="Pareto front", xaxis_title=x, yaxis_title=y, height=450)
    return fig


def heatmap_figure(result: Any):
    """The first objective over the first two numeric parameters, optimum marked; None otherwise."""
    from qlab.research.robustness import neighbourhood_figure

    numeric = [d.name for d in result.space.dims if d.kind != "choice"]
    if len(numeric) < 2:
        return None
    ok = result.trials[result.trials.feasible]
    if ok.empty:
        return None
    metric = result.objectives[0]
    frame = ok if result.directions[0] == "maximize" else ok.assign(**{metric: -ok[metric]})
    return neighbourhood_figure(frame, numeric[0], numeric[1], metric, best={k: result.best[k] for k in numeric[:2]})


def optimisation_figures(result: Any) -> dict[str, Any]:
    """Every figure that applies to this result, by name."""
    figures = {"history": history_figure(result), "importance": importance_figure(result),
               "pareto": pareto_figure(result), "heatmap": heatmap_figure(result)}
    return {k: v for k, v in figures.items() if v is not None}

"""`qlab.optimize`: grid, random, Bayesian (TPE), CMA-ES and genetic (NSGA-II) search over any spec parameter,
single- or multi-objective with constraints, on an optuna study (in memory, SQLite, Journal file or PostgreSQL).

    result = qlab.optimize("sma_cross", candles, space={"fast.period": (5, 50), "slow.period": (20, 200, 5)},
                           objective=["sharpe", "max_drawdown"], method="genetic", n_trials=200,
                           constraints={"n_trades": (">=", 30)}, seed=1)
    result.trials, result.best, result.pareto

Grid and random search on a moving-average crossover go through the numba sweep (`qlab.engine.sweep`) in
one batch; everything else runs one backtest per trial. Before any trial, the strategy is checked for
lookahead on the candles (`qlab.engine.lookahead`).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from qlab.analytics.result import backtest
from qlab.data.candles import Candles, validate_candles
from qlab.errors import ConfigError, QlabError, StrategyError, did_you_mean
from qlab.research.fastpath import MaCross, as_ma_cross, evaluate_pairs
from qlab.research.space import Space, parse_space
from qlab.strategy.spec import Strategy
from qlab.strategy.templates import resolve_strategy

METHODS = ("grid", "random", "bayes", "cmaes", "genetic")
MAXIMISE = {"total_return", "cagr", "sharpe", "sortino", "calmar", "max_drawdown", "win_rate", "profit_factor",
            "expectancy", "avg_trade_return", "n_trades", "final_equity", "exposure"}
MINIMISE = {"volatility", "max_drawdown_bars", "cost_total", "turnover", "cost_share"}
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


@dataclass
class OptimizationResult:
    """A finished search: the tidy trials table, the best trial (or the Pareto set) and the optuna study."""

    study: Any
    trials: pd.DataFrame  # number, params..., objective columns, feasible, state, every metric
    objectives: list[str]
    directions: list[str]
    space: Space
    method: str
    strategy: Strategy
    fast_path: bool

    @property
    def pareto(self) -> pd.DataFrame:
        """The feasible trials no other feasible trial beats on every objective (the best one for one objective)."""
        ok = self.trials[self.trials.feasible & self.trials[self.objectives].notna().all(axis=1)]
        if ok.empty:
            return ok
        signs = np.array([1.0 if d == "maximize" else -1.0 for d in self.directions])
        values = ok[self.objectives].to_numpy(dtype=float) * signs
        keep = [not any((values[j] >= values[i]).all() and (values[j] > values[i]).any() for j in range(len(values)))
                for i in range(len(values))]
        return ok[keep].sort_values(self.objectives[0], ascending=self.directions[0] == "minimize")

    @property
    def best(self) -> dict[str, Any]:
        """Parameters and objective values of the best feasible trial (the first objective decides ties in the front)."""
        front = self.pareto
        if front.empty:
            raise QlabError("no feasible trial: loosen the constraints or widen the space")
        row = front.iloc[0]
        return {**{p: _plain(row[p]) for p in self.space.names}, **{o: float(row[o]) for o in self.objectives}}

    def best_strategy(self) -> Strategy:
        """The strategy with the best parameters filled in."""
        return self.strategy.with_params(**{p: v for p, v in self.best.items() if p in self.space.names})

    def robustness(self, candles: Candles, **kwargs: Any):  # a RobustnessReport
        """Regimes, parameter-neighbourhood stability, deflated Sharpe and PBO of this search on `candles`."""
        from qlab.research.robustness_report import robustness_report

        return robustness_report(self, candles, **kwargs)

    def figures(self) -> dict[str, Any]:
        """History, parameter importance, Pareto front and (for two parameters) a heatmap, as plotly figures."""
        from qlab.research.optimize_plots import optimisation_figures

        return optimisation_figures(self)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def parse_objectives(objective: str | list[str] | dict[str, str]) -> tuple[list[str], list[str]]:
    """Metric names and optuna directions; known metrics have a natural direction, others need one."""
    if isinstance(objective, dict):
        items = list(objective.items())
    else:
        items = [(o, None) for o in ([objective] if isinstance(objective, str) else objective)]
    if not items:
        raise ConfigError("objective is empty; give a metric name such as 'sharpe' or a list of them")
    names, dirs = [], []
    known = sorted(MAXIMISE | MINIMISE)
    for name, direction in items:
        if direction is None:
            if name not in MAXIMISE | MINIMISE:
                raise ConfigError(f"objective {name!r} is not a known metric; use one of {', '.join(known)}, or give its "
                                  "direction: {name: 'maximize'}." + did_you_mean(str(name), known))
            direction = "maximize" if name in MAXIMISE else "minimize"
        direction = {"max": "maximize", "min": "minimize"}.get(direction, direction)
        if direction not in ("maximize", "minimize"):
            raise ConfigError(f"direction {direction!r} for {name!r}; use 'maximize' or 'minimize'")
        names.append(name)
        dirs.append(direction)
    return names, dirs


def parse_constraints(constraints: dict[str, Any] | list[str] | None) -> list[tuple[str, str, float]]:
    """{"n_trades": (">=", 30)} or ["n_trades >= 30"] -> [(metric, op, bound)]."""
    out = []
    if constraints is None:
        return out
    items = [(m, *rule) for m, rule in constraints.items()] if isinstance(constraints, dict) else [tuple(c.split()) for c in constraints]
    for item in items:
        if len(item) != 3:
            raise ConfigError(f"constraint {item!r}: write it as 'n_trades >= 30' or {{'n_trades': ('>=', 30)}}")
        metric, op, bound = item
        if op not in OPS:
            raise ConfigError(f"constraint on {metric!r}: operator {op!r}; use one of {', '.join(OPS)}")
        out.append((str(metric), op, float(bound)))
    return out


def _feasible(metrics: dict[str, Any], constraints: list[tuple[str, str, float]]) -> bool:
    return all(OPS[op](float(metrics.get(m, math.nan)), bound) for m, op, bound in constraints)


def _violation(metrics: dict[str, Any], constraints: list[tuple[str, str, float]]) -> list[float]:
    """optuna's constraint values: <= 0 when satisfied."""
    out = []
    for m, op, bound in constraints:
        v = float(metrics.get(m, math.nan))
        if math.isnan(v):
            out.append(1.0)
        else:
            out.append(bound - v if op in (">=", ">") else v - bound)
    return out


def make_sampler(method: str, space: Space, seed: int | None, n_objectives: int):
    """The optuna sampler for a method name."""
    import optuna

    if method == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if method == "bayes":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if method == "cmaes":
        if n_objectives > 1:
            raise ConfigError("cmaes searches one objective; use method='genetic' (NSGA-II) or 'bayes' for several")
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if method == "genetic":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise ConfigError(f"method={method!r}; use one of {', '.join(METHODS)}." + did_you_mean(str(method), METHODS))


def open_study(storage: Any, study_name: str | None, directions: list[str], sampler: Any):
    """A new or existing optuna study on a storage: None (memory), an RDB URL, or a '*.log' Journal file."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if isinstance(storage, str) and storage.endswith((".log", ".journal", ".jsonl")) and "://" not in storage:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(storage))
    return optuna.create_study(storage=storage, study_name=study_name, directions=directions, sampler=sampler,
                               load_if_exists=study_name is not None)


def optimize(
    strategy: Strategy | str | dict,
    candles: Candles,
    space: dict[str, Any],
    objective: str | list[str] | dict[str, str] = "sharpe",
    *,
    method: str = "bayes",
    n_trials: int | None = 100,
    storage: Any = None,
    study_name: str | None = None,
    seed: int | None = 0,
    constraints: dict[str, Any] | list[str] | None = None,
    data: dict[str, pd.Series] | None = None,
    cash: float = 10_000.0,
    fast: bool = True,
    check_lookahead: bool = True,
    progress: bool = False,
    workers: int = 1,
) -> OptimizationResult:
    """Search `space` (dotted spec paths -> ranges or choices) for the best `objective` on `candles`.

    `storage` (an optuna RDB URL such as sqlite:///study.db or postgresql+psycopg://..., or a '*.log'
    Journal file) keeps the study; several processes or machines given the same storage and `study_name`
    share it. `workers=N` starts N processes on this machine that share the study.
    """
    if workers > 1:
        from qlab.research.workers import run_workers

        return run_workers(strategy, candles, space, objective, method=method, n_trials=n_trials, storage=storage,
                           study_name=study_name, seed=seed, constraints=constraints, data=data, cash=cash, fast=fast,
                           check_lookahead=check_lookahead, workers=workers, progress=progress)
    strat = resolve_strategy(strategy)
    validate_candles(candles, where="the candles to optimise on")
    sp = parse_space(space, strat)
    names, directions = parse_objectives(objective)
    cons = parse_constraints(constraints)
    if method not in METHODS:
        raise ConfigError(f"method={method!r}; use one of {', '.join(METHODS)}." + did_you_mean(str(method), METHODS))
    if check_lookahead:
        _assert_causal(strat, candles, data)
    sampler = make_sampler(method, sp, seed, len(names))
    study = open_study(storage, study_name, directions, sampler)
    total = sp.grid_size() if method == "grid" else n_trials
    if total is None or total < 1:
        raise ConfigError(f"n_trials={n_trials!r}; give a positive number of trials")
    cross = as_ma_cross(strat) if fast and method in ("grid", "random") else None
    use_fast = cross is not None and sp.names_subset_of(cross.param_paths) and evaluate_pairs.supports(names, cons)
    if use_fast:
        _run_fast(study, strat, cross, candles, sp, names, cons, total, cash, bulk=storage is None)
    else:
        _run_each(study, strat, candles, sp, names, cons, total, cash, data, progress)
    return OptimizationResult(study, trials_table(study, sp, names), names, directions, sp, method, strat, use_fast)


def _assert_causal(strategy: Strategy, candles: Candles, data: dict[str, pd.Series] | None) -> None:
    from qlab.engine.lookahead import assert_no_lookahead
    from qlab.strategy.compile import compile_strategy, warmup_bars

    history = max(min(500, len(candles) // 2), warmup_bars(strategy) + 1)  # long warm-ups (ML models) need their history
    assert_no_lookahead(lambda c: compile_strategy(strategy, c, data), candles, cutoffs=8, min_history=history)


def evaluate_params(strategy: Strategy, candles: Candles, params: dict[str, Any], cash: float = 10_000.0,
                    data: dict[str, pd.Series] | None = None) -> dict[str, Any]:
    """One backtest with `params` applied; its metrics (what every trial of the one-by-one path computes)."""
    result = backtest(candles, strategy.with_params(**params), cash=cash, data=data)
    metrics = result.metrics()
    return {k: (v.total_seconds() if isinstance(v, pd.Timedelta) else v) for k, v in metrics.items()}


def _record(trial: Any, metrics: dict[str, Any], names: list[str], cons: list) -> list[float]:
    for k, v in metrics.items():
        trial.set_user_attr(k, float(v) if isinstance(v, int | float | np.number) else str(v))
    for (m, op, bound), value in zip(cons, _violation(metrics, cons), strict=True):
        trial.set_constraint(f"{m} {op} {bound:g}", value)  # constraint-aware samplers (TPE, NSGA-II) read these
    trial.set_user_attr("feasible", _feasible(metrics, cons))
    values = [float(metrics[n]) for n in names]
    return [v if math.isfinite(v) else (-1e300 if v < 0 else 1e300) for v in values]  # optuna refuses inf/nan


def _run_each(study, strategy, candles, space, names, cons, total, cash, data, progress) -> None:
    import optuna

    def objective(trial: optuna.Trial) -> list[float] | float:
        params = space.suggest(trial)
        try:
            metrics = evaluate_params(strategy, candles, params, cash, data)
        except StrategyError as exc:  # a combination the spec refuses (e.g. fast >= slow) is pruned, with the reason
            trial.set_user_attr("error", str(exc).splitlines()[-1])
            raise optuna.TrialPruned(str(exc)) from None
        missing = [n for n in names if n not in metrics]
        if missing:
            hint = did_you_mean(missing[0], list(metrics))
            raise ConfigError(f"objective {missing[0]!r} is not a metric; metrics: {', '.join(metrics)}." + hint)
        values = _record(trial, metrics, names, cons)
        return values if len(values) > 1 else values[0]

    study.optimize(objective, n_trials=total, show_progress_bar=progress)


def _run_fast(study, strategy, cross: MaCross, candles, space, names, cons, total, cash, bulk: bool = False) -> None:
    """Evaluate the parameter sets in one sweep, then record them as trials of the same sampler.

    Grid: every grid point is swept first and the study runs over them with a lookup as objective (the
    grid sampler must finish inside `optimize`). Random: all trials are asked first (the sampler's own
    draws, so the same parameters as one by one), swept, then told.
    """
    import optuna

    if isinstance(study.sampler, optuna.samplers.GridSampler):
        points = space.grid_points()
        rows = evaluate_pairs(strategy, cross, candles, points, cash)
        if bulk:  # one process, a fresh in-memory study: add the finished trials at once (optuna's loop costs ~ms a trial)
            study.add_trials([_frozen(p, m, space, names, cons) for p, m in zip(points, rows, strict=True)])
            return
        lookup = {tuple(sorted(p.items())): m for p, m in zip(points, rows, strict=True)}

        def objective(trial: optuna.Trial) -> list[float] | float:
            values = _record(trial, lookup[tuple(sorted(space.suggest(trial).items()))], names, cons)
            return values if len(values) > 1 else values[0]

        study.optimize(objective, n_trials=total)
        return
    asked = [(trial, space.suggest(trial)) for trial in (study.ask() for _ in range(total))]
    rows = evaluate_pairs(strategy, cross, candles, [p for _, p in asked], cash)
    for (trial, _), metrics in zip(asked, rows, strict=True):
        study.tell(trial, _record(trial, metrics, names, cons))


def _frozen(params: dict[str, Any], metrics: dict[str, Any], space: Space, names: list[str], cons: list) -> Any:
    """A finished optuna trial for an evaluated grid point (the fast path's bulk insert)."""
    import optuna

    from qlab.research.space import distribution

    attrs = {k: float(v) if isinstance(v, int | float | np.number) else str(v) for k, v in metrics.items()}
    attrs["feasible"] = _feasible(metrics, cons)
    values = [float(metrics[n]) for n in names]
    values = [v if math.isfinite(v) else (-1e300 if v < 0 else 1e300) for v in values]
    return optuna.trial.create_trial(params=params, distributions={d.name: distribution(d) for d in space.dims},
                                     values=values, user_attrs=attrs,
                                     system_attrs={"constraints": _violation(metrics, cons)} if cons else None)


def trials_table(study: Any, space: Space, names: list[str]) -> pd.DataFrame:
    """One row per trial: number, parameters, objectives, feasibility, state and every recorded metric."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"number": t.number, "state": t.state.name, **{p: t.params.get(space.key(p)) for p in space.names}}
        values = t.values or [math.nan] * len(names)
        row.update({n: float(v) for n, v in zip(names, values, strict=True)})
        row["feasible"] = bool(t.user_attrs.get("feasible", False)) and t.state.name == "COMPLETE"
        row.update({k: v for k, v in t.user_attrs.items() if k not in ("constraints", "feasible") and k not in row})
        rows.append(row)
    return pd.DataFrame(rows)

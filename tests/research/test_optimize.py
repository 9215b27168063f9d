"""qlab.optimize: every method, objectives and directions, constraints, the Pareto set, seeds, the fast path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import qlab
from qlab.errors import ConfigError, LookaheadError
from qlab.research.optimize import evaluate_params, optimize, parse_constraints, parse_objectives

SPACE = {"fast.period": (5, 30, 5), "slow.period": (40, 100, 20)}


@pytest.fixture(scope="module")
def year():
    return qlab.load_sample("BTC/USDT", "1h").iloc[-8760:]


def test_grid_covers_the_grid_and_each_trial_is_a_real_backtest(year):
    r = optimize("sma_cross", year, SPACE, "sharpe", method="grid", fast=False)
    assert len(r.trials) == 6 * 4 and r.trials[["fast.period", "slow.period"]].drop_duplicates().shape[0] == 24
    row = r.trials.sample(1, random_state=0).iloc[0]
    direct = qlab.backtest(year, qlab.templates["sma_cross"].with_params(
        **{"fast.period": int(row["fast.period"]), "slow.period": int(row["slow.period"])})).metrics()
    assert row["sharpe"] == pytest.approx(direct["sharpe"], rel=1e-12)
    best = r.trials.loc[r.trials.sharpe.idxmax()]
    assert r.best["sharpe"] == best.sharpe and r.best["fast.period"] == best["fast.period"]


def test_fast_path_matches_the_one_by_one_path(year):
    fast = optimize("sma_cross", year, SPACE, ["sharpe", "total_return", "n_trades", "cost_total"], method="grid")
    slow = optimize("sma_cross", year, SPACE, ["sharpe", "total_return", "n_trades", "cost_total"], method="grid", fast=False)
    assert fast.fast_path and not slow.fast_path
    key = ["fast.period", "slow.period"]
    a, b = fast.trials.set_index(key).sort_index(), slow.trials.set_index(key).sort_index()
    for col in ("sharpe", "total_return", "cost_total"):
        np.testing.assert_allclose(a[col], b[col], rtol=1e-9, atol=1e-12)
    assert (a.n_trades == b.n_trades).all()
    rnd_fast = optimize("sma_cross", year, {"fast.period": (3, 40), "slow.period": (20, 120)}, "sharpe", method="random",
                        n_trials=25, seed=7)
    rnd_slow = optimize("sma_cross", year, {"fast.period": (3, 40), "slow.period": (20, 120)}, "sharpe", method="random",
                        n_trials=25, seed=7, fast=False)
    assert rnd_fast.fast_path
    pd.testing.assert_frame_equal(rnd_fast.trials[["fast.period", "slow.period"]], rnd_slow.trials[["fast.period", "slow.period"]])
    np.testing.assert_allclose(rnd_fast.trials.sharpe, rnd_slow.trials.sharpe, rtol=1e-9)


@pytest.mark.parametrize("method", ["random", "bayes", "cmaes", "genetic"])
def test_every_method_is_reproducible_with_a_seed(year, method):
    space = {"macd.fast": (5, 20), "trend.period": (50, 300, 10)}
    runs = [optimize("macd_trend", year, space, "sharpe", method=method, n_trials=12, seed=3) for _ in range(2)]
    assert len(runs[0].trials) == 12
    pd.testing.assert_frame_equal(runs[0].trials[["macd.fast", "trend.period", "sharpe"]],
                                  runs[1].trials[["macd.fast", "trend.period", "sharpe"]])


def test_multi_objective_pareto_front_is_non_dominated_and_complete(year):
    r = optimize("sma_cross", year, SPACE, ["sharpe", "max_drawdown", "n_trades"], method="grid")
    front = r.pareto
    values = r.trials[["sharpe", "max_drawdown", "n_trades"]].to_numpy()
    in_front = set(front.number)
    for i, row in r.trials.iterrows():  # brute force: a trial is on the front iff nothing dominates it
        dominated = ((values >= values[i]).all(axis=1) & (values > values[i]).any(axis=1)).any()
        assert (row.number in in_front) == (not dominated)


def test_constraints_are_honoured(year):
    r = optimize("sma_cross", year, SPACE, "sharpe", method="grid", constraints={"n_trades": (">=", 150)})
    feasible = r.trials[r.trials.feasible]
    assert (feasible.n_trades >= 150).all() and (r.trials[~r.trials.feasible].n_trades < 150).all()
    assert r.best["sharpe"] == feasible.sharpe.max()
    r2 = optimize("macd_trend", year, {"macd.fast": (5, 20), "trend.period": (50, 300, 10)}, "sharpe", method="bayes",
                  n_trials=15, constraints=["n_trades <= 200"], seed=1)
    assert (r2.pareto.n_trades <= 200).all()


def test_minimised_objectives_and_explicit_directions():
    assert parse_objectives("sharpe") == (["sharpe"], ["maximize"])
    assert parse_objectives(["volatility", "max_drawdown"]) == (["volatility", "max_drawdown"], ["minimize", "maximize"])
    assert parse_objectives({"expectancy": "min"}) == (["expectancy"], ["minimize"])
    with pytest.raises(ConfigError, match="did you mean 'sharpe'"):
        parse_objectives("sharp")
    assert parse_constraints(["n_trades >= 30"]) == [("n_trades", ">=", 30.0)]
    with pytest.raises(ConfigError, match="operator"):
        parse_constraints({"n_trades": ("=>", 30)})


def test_bad_space_and_method_are_named(year):
    with pytest.raises(ConfigError, match=r"did you mean 'fast\.period'"):
        optimize("sma_cross", year, {"fast.perod": (5, 30)}, method="grid")
    with pytest.raises(ConfigError, match="did you mean 'genetic'"):
        optimize("sma_cross", year, SPACE, method="genetik")
    with pytest.raises(ConfigError, match="needs a step"):
        optimize("sma_cross", year, {"orders.stop_loss": (0.01, 0.05)}, method="grid")


def test_invalid_combinations_are_pruned_with_the_reason(year):
    r = optimize("macd_trend", year, {"macd.fast": [10, 30], "macd.slow": [20, 40]}, "sharpe", method="grid")
    pruned = r.trials[r.trials.state == "PRUNED"]
    assert len(pruned) == 1 and "fast" in pruned.error.iloc[0]
    assert r.best["macd.fast"] < r.best["macd.slow"]


def test_a_peeking_strategy_is_refused_before_optimisation(year):
    peek = {"name": "peek", "indicators": {"fast": {"fn": "sma", "params": {"period": 10}}},
            "entry_long": "crossover(close, fast)", "exit_long": "crossunder(close, fast)"}
    optimize(peek, year.iloc[:3000], {"fast.period": (5, 15, 5)}, method="grid")  # honest: runs
    import qlab.research.optimize as opt
    from qlab.strategy import compile as comp

    original = comp.compile_strategy

    def peeking(strategy, candles, data=None):
        out = original(strategy, candles, data)
        out["entry_long"] = (candles.close.shift(-1) > candles.close).fillna(False)  # tomorrow's close
        return out

    comp.compile_strategy = peeking
    try:
        with pytest.raises(LookaheadError, match="entry_long"):
            opt.optimize(peek, year.iloc[:3000], {"fast.period": (5, 15, 5)}, method="grid")
    finally:
        comp.compile_strategy = original


def test_evaluate_params_equals_a_backtest(year):
    m = evaluate_params(qlab.templates["rsi_reversion"], year, {"rsi.period": 9})
    direct = qlab.backtest(year, qlab.templates["rsi_reversion"].with_params(**{"rsi.period": 9})).metrics()
    assert m["n_trades"] == direct["n_trades"] and m["sharpe"] == pytest.approx(direct["sharpe"])

"""Scale-out: worker processes sharing one optuna study on PostgreSQL, SQLite and a Journal file equal a one-process
run; worker errors reach the parent; `qlab optimize --config ... --storage ... --workers N`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from postgres import postgres_url  # noqa: F401  (the session fixture: a throwaway server on 127.0.0.1)

import qlab
from qlab.cli import main
from qlab.errors import ConfigError
from qlab.research.optimize import optimize

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "optimize_sma.yaml"
SPACE = {"fast.period": [5, 10, 15, 20], "slow.period": [30, 50, 70, 90]}
KEY = list(SPACE)
OBJECTIVES = ["sharpe", "total_return"]


@pytest.fixture(scope="module")
def candles():
    return qlab.load_sample("BTC/USDT", "1h").iloc[-3000:]


@pytest.fixture(scope="module")
def single(candles):
    """The reference: one process, in memory, every grid point a real backtest."""
    return optimize("sma_cross", candles, SPACE, OBJECTIVES, method="grid", fast=False)


def assert_equals_single_run(result, single) -> None:
    trials = result.study.trials  # every trial on the shared storage, duplicates included
    assert {t.user_attrs["worker"] for t in trials} == {0, 1}, "both worker processes ran trials"
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert {(t.params["fast.period"], t.params["slow.period"]) for t in trials} == set(map(tuple, single.trials[KEY].to_numpy()))
    assert len(trials) <= 16 + 4  # at the end, workers may re-evaluate points (optuna's GridSampler in parallel)
    table = result.trials  # one row per grid point
    assert len(table) == 16 and not table.duplicated(KEY).any() and set(table.worker) <= {0, 1}
    a, b = table.set_index(KEY).sort_index(), single.trials.set_index(KEY).sort_index()
    assert a.index.equals(b.index)
    np.testing.assert_allclose(a[OBJECTIVES].to_numpy(float), b[OBJECTIVES].to_numpy(float), rtol=1e-9, atol=1e-12)
    reference = {(int(f), int(s)): v for (f, s), v in b[OBJECTIVES].iterrows()}
    for t in trials:  # duplicated evaluations agree too
        np.testing.assert_allclose(t.values, reference[t.params["fast.period"], t.params["slow.period"]].to_numpy(float), rtol=1e-9)
    assert result.best == pytest.approx(single.best)


def test_two_workers_on_postgres_equal_a_single_process_grid_run(postgres_url, candles, single):  # noqa: F811
    result = optimize("sma_cross", candles, SPACE, OBJECTIVES, method="grid", fast=False, workers=2, storage=postgres_url,
                      study_name="sma-grid")
    assert_equals_single_run(result, single)
    stored = optuna.load_study(study_name="sma-grid", storage=postgres_url)  # the study lives on the server
    assert len(stored.trials) == len(result.study.trials)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_workers_on_a_file_storage_equal_a_single_process_grid_run(tmp_path, candles, single, kind):
    storage = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else str(tmp_path / "study.log")
    result = optimize("sma_cross", candles, SPACE, OBJECTIVES, method="grid", workers=2, storage=storage)  # the sweep path
    assert result.fast_path
    assert_equals_single_run(result, single)
    assert result.study.study_name.startswith("qlab-grid-")


def test_random_workers_split_the_trials_and_draw_different_points(candles):
    space = {"fast.period": (3, 40), "slow.period": (45, 200)}
    result = optimize("sma_cross", candles, space, "sharpe", method="random", n_trials=10, seed=5, workers=2)
    assert isinstance(result.study._storage, optuna.storages.InMemoryStorage)  # storage=None: the temporary Journal was copied
    assert result.trials.worker.value_counts().to_dict() == {0: 5, 1: 5}
    by_worker = [result.trials[result.trials.worker == k][KEY].to_numpy().tolist() for k in (0, 1)]
    assert by_worker[0] != by_worker[1]  # seeds 5 and 6
    assert len(result.trials[KEY].drop_duplicates()) >= 9


def test_a_worker_error_is_raised_in_the_parent_with_its_message(tmp_path, candles):
    with pytest.raises(ConfigError, match="'no_such_metric' is not a metric") as info:
        optimize("sma_cross", candles, SPACE, {"no_such_metric": "maximize"}, method="random", n_trials=4, fast=False,
                 workers=2, storage=str(tmp_path / "study.log"))
    assert any("qlab worker" in note for note in info.value.__notes__)
    with pytest.raises(ConfigError, match="in-memory database"):
        optimize("sma_cross", candles, SPACE, "sharpe", method="grid", workers=2, storage="sqlite:///:memory:")


def test_cli_optimize_with_workers_writes_the_trials_and_prints_the_best(tmp_path, capsys):
    out = tmp_path / "trials.csv"
    assert main(["optimize", "--config", str(EXAMPLE), "--storage", f"sqlite:///{tmp_path / 'cli.db'}", "--workers", "2",
                 "--study-name", "cli", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out)
    assert len(table) == 6 * 5 and not table.duplicated(KEY).any() and set(table.worker) == {0, 1}
    best = table[table.feasible].sort_values("sharpe").iloc[-1]
    assert f"fast.period={best['fast.period']}, slow.period={best['slow.period']}" in printed
    assert f"sharpe={best.sharpe:.6g}" in printed and "2 worker(s)" in printed

    broken = tmp_path / "broken.yaml"
    broken.write_text(EXAMPLE.read_text().replace("objective: sharpe", "objective: {no_such_metric: maximize}")
                      .replace("method: grid", "method: random\nn_trials: 4").replace("n_trials: 100", ""))
    assert main(["optimize", "--config", str(broken), "--workers", "2"]) == 2
    assert "'no_such_metric' is not a metric" in capsys.readouterr().err

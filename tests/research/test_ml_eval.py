"""Purged k-fold, classification metrics, calibration, tuning and the OOS report of an ML signal, on real BTC/USDT 1h."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pandas as pd
import pytest

import qlab
from qlab.errors import ConfigError, DataError
from qlab.research.ml_eval import (
    calibration_table,
    check_ml_leakage,
    classification_metrics,
    cross_validate,
    evaluate_ml,
    purged_kfold,
    tune,
)
from qlab.strategy.ml import MLConfig

FAST = MLConfig(model="logistic", train_bars=600, min_train=150, retrain=200)


@cache
def candles(n: int = 2000) -> pd.DataFrame:
    return qlab.load_sample("BTC/USDT", "1h").iloc[-n:]


@pytest.mark.parametrize(("horizon", "embargo", "splits"), [(4, 0, 5), (6, 10, 4), (1, 3, 7)])
def test_purged_kfold_keeps_every_training_sample_away_from_every_test_sample(horizon, embargo, splits):
    rng = np.random.default_rng(horizon)
    positions = np.sort(rng.choice(np.arange(50, 3000), size=800, replace=False))  # gaps like NaN rows leave
    folds = purged_kfold(positions, horizon, splits, embargo)
    assert len(folds) == splits
    seen = []
    for train, test in folds:
        assert len(train) > 0 and len(test) > 0
        for j in test:  # independent loop over every pair
            for i in train:
                assert abs(int(i) - int(j)) > horizon + embargo, (i, j)
        seen += list(test)
        purged = set(positions) - set(train) - set(test)
        for i in purged:  # nothing is dropped that did not have to be
            assert min(abs(int(i) - int(j)) for j in test) <= horizon + embargo
    assert sorted(seen) == list(positions)
    with pytest.raises(ConfigError, match="n_splits"):
        purged_kfold(positions, horizon, 1)
    with pytest.raises(DataError, match="too few"):
        purged_kfold(positions[:5], horizon, 5)


def test_classification_metrics_by_hand():
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0], dtype=float)
    p = np.array([0.9, 0.2, 0.6, 0.4, 0.55, 0.1, 0.8, 0.3])
    m = classification_metrics(y, p, prior=0.5)
    assert m["accuracy"] == 6 / 8  # 0.4 (a 1) and 0.55 (a 0) are wrong
    pairs = [(a, b) for a in p[y == 1] for b in p[y == 0]]
    assert m["auc"] == pytest.approx(sum(a > b for a, b in pairs) / len(pairs))  # Mann-Whitney
    assert m["log_loss"] == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["prior_log_loss"] == pytest.approx(math.log(2)) and m["base_rate"] == 0.5


def test_calibration_table_counts_by_hand():
    p = np.array([0.05, 0.15, 0.12, 0.55, 0.58, 0.95, 0.99])
    y = np.array([0, 1, 0, 1, 1, 1, 0], dtype=float)
    t = calibration_table(y, p, bins=10)
    assert t["count"].tolist() == [1, 2, 0, 0, 0, 2, 0, 0, 0, 2]
    assert t.loc[1, "mean_predicted"] == pytest.approx(0.135) and t.loc[1, "observed_rate"] == 0.5
    assert t.loc[9, "observed_rate"] == 0.5 and math.isnan(t.loc[2, "observed_rate"])


def test_cross_validation_and_tuning_on_real_data():
    c = candles()
    cv = cross_validate(c, FAST, n_splits=4)
    assert len(cv) == 4 and cv["n_train"].gt(500).all()
    assert cv["auc"].between(0.3, 0.7).all() and cv["log_loss"].between(0.5, 1.0).all()
    result = tune(c, FAST, {"c": [0.01, 1.0], "horizon": [2, 8]}, n_splits=3)
    assert len(result.table) == 4 and result.table["log_loss"].is_monotonic_increasing
    best = result.table.iloc[0]
    assert (result.best.c, result.best.horizon) == (best["c"], best["horizon"])
    with pytest.raises(ConfigError, match="did you mean 'horizon'"):
        tune(c, FAST, {"horizn": [2]})


def test_evaluate_ml_reports_oos_metrics_baselines_and_deflated_sharpe():
    c = candles()
    report = evaluate_ml(c, FAST, entry=0.52, exit=0.5, thresholds=(0.5, 0.55, 0.6), importance_repeats=2)
    start = FAST.first_prediction()
    assert report.metrics["n"] == int(report.prediction.proba.notna().sum() - FAST.horizon)  # the last labels are unknown
    assert abs(report.control["auc"] - 0.5) < 0.06  # shuffled labels: chance
    assert list(report.trading.index) == ["ML long p>0.52", "buy and hold", "baseline sma_cross"]
    hold = report.trading.loc["buy and hold", "total_return"]
    price = c.close.iloc[-1] / c.open.iloc[start + 1] - 1  # bought at the open after the first OOS bar
    assert hold == pytest.approx(price, abs=0.01)  # costs of one entry are small
    assert report.equity.index[0] == c.index[start]
    assert report.dsr["n_trials"] == 4 and 0 <= report.dsr["dsr"] <= report.dsr["psr"] <= 1
    assert set(report.importance.feature) == set(report.prediction.features.columns)
    assert report.calibration["count"].sum() == report.metrics["n"]
    assert report.trading.loc["ML long p>0.52", "cost_total"] > 0
    text = report.to_html()
    assert text.count("Plotly.newPlot") == 4 and "deflated Sharpe" in text


def test_evaluate_ml_on_the_template_trades_its_rules():
    c = candles(2500)
    report = evaluate_ml(c, "ml_gradient_boost", control=False, importance_repeats=1)
    assert report.trading.index[0] == "ml_gradient_boost" and report.trading.iloc[0]["n_trades"] > 0
    assert 0.4 < report.metrics["auc"] < 0.6 and not report.control


def test_leakage_check_passes_the_purged_walk_forward_only():
    c = candles(1500)
    assert check_ml_leakage(c, FAST, max_folds=3).ok
    leaky = check_ml_leakage(c, FAST.with_(purge=False), max_folds=3)
    assert not leaky.ok and "purge=1" in str(leaky)

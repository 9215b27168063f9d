"""The ML indicator on real BTC/USDT 1h candles: labels and features against plain loops, walk-forward predictions
that use only data before their block, seeds, a chance-level model on shuffled labels, and leaks that are caught."""

from __future__ import annotations

import itertools
import math
from functools import cache

import numpy as np
import pandas as pd
import pytest

import qlab
from qlab.engine.lookahead import check_lookahead
from qlab.errors import ConfigError, StrategyError
from qlab.strategy import ml
from qlab.strategy.compile import compile_strategy, warmup_bars
from qlab.strategy.indicators import get_indicator, register_indicator, unregister_indicator
from qlab.strategy.labels import sign_labels, triple_barrier_labels
from qlab.strategy.ml import MLConfig, walk_forward_folds, walk_forward_predict
from qlab.strategy.ml_features import FeatureSet, IndicatorFeature, build_features, feature_lookback
from qlab.strategy.spec import Strategy

FAST = MLConfig(model="logistic", train_bars=600, min_train=150, retrain=200)


@cache
def candles(n: int = 2000) -> pd.DataFrame:
    return qlab.load_sample("BTC/USDT", "1h").iloc[-n:]


def lead_nan(frame: pd.DataFrame | pd.Series) -> int:
    bad = frame.isna().to_numpy()
    bad = bad.any(axis=1) if bad.ndim == 2 else bad
    return int(np.argmin(bad)) if not bad.all() else len(bad)


# ---------------------------------------------------------------- labels
def test_sign_labels_by_hand():
    c = pd.Series([10.0, 11.0, 9.0, 12.0, 12.0], index=pd.date_range("2024-01-01", periods=5, freq="h", tz="UTC"))
    out = sign_labels(c, 2)
    assert out.iloc[:3].tolist() == [0.0, 1.0, 1.0]  # 9 < 10, 12 > 11, 12 > 9
    assert out.iloc[3:].isna().all()  # unknown, not 0


def test_triple_barrier_matches_a_plain_loop():
    c = candles(600)
    h, tp, sl = 6, 0.01, 0.008
    got = triple_barrier_labels(c, h, tp, sl).to_numpy()
    close, high, low = c.close.to_numpy(), c.high.to_numpy(), c.low.to_numpy()
    for t in range(len(c)):
        if t + h >= len(c):
            assert math.isnan(got[t])
            continue
        want = None
        for k in range(t + 1, t + h + 1):
            if low[k] <= close[t] * (1 - sl):  # the stop first when one bar touches both
                want = 0.0
                break
            if high[k] >= close[t] * (1 + tp):
                want = 1.0
                break
        if want is None:
            want = 1.0 if close[t + h] > close[t] else 0.0
        assert got[t] == want, t
    assert 0.2 < np.nanmean(got) < 0.8


# ---------------------------------------------------------------- features
def test_features_come_from_the_registry_are_causal_and_declare_their_warmup():
    c = candles()
    bands = {"fn": "bbands", "params": {"period": 30}, "output": "upper", "relative": True}
    fs = FeatureSet((IndicatorFeature("macd", output="hist"), bands, IndicatorFeature("rsi", {"period": 7}, input="log_return")),
                    lags=5, returns=(12, 48), volatility=(10,), feature_lags=2)
    out = build_features(c, fs)
    assert lead_nan(out) == feature_lookback(fs)
    assert out.iloc[feature_lookback(fs):].notna().all().all()
    bb = get_indicator("bbands").compute(c, period=30)["upper"] / c.close - 1
    pd.testing.assert_series_equal(out["bbands_30.upper_rel"], bb, check_names=False)
    np.testing.assert_allclose(out["ret_lag2"].iloc[10], math.log(c.close.iloc[8] / c.close.iloc[7]))
    np.testing.assert_allclose(out["vol_10"].iloc[100], np.log(c.close).diff().iloc[91:101].std(ddof=0), rtol=1e-6)
    pd.testing.assert_frame_equal(build_features(c.iloc[:700], fs), out.iloc[:700])
    assert {"hour_sin", "dow_cos", "macd.hist", "macd.hist_lag2"} <= set(out.columns)
    with pytest.raises(StrategyError, match="did you mean 'upper'"):
        FeatureSet((IndicatorFeature("bbands", output="uper"),))
    with pytest.raises(StrategyError, match="did you mean 'rsi'"):
        FeatureSet(("rsii",))


# ---------------------------------------------------------------- walk-forward
def test_folds_purge_the_label_horizon_and_tile_the_rest_of_the_data():
    cfg = FAST.with_(horizon=6, embargo=3)
    folds = walk_forward_folds(2000, cfg)
    assert folds[0].test_start == feature_lookback(cfg.features) + cfg.min_train + 9
    for a, b in itertools.pairwise(folds):
        assert a.test_end == b.test_start
    assert folds[-1].test_end == 2000
    for f in folds:
        assert f.train_end + cfg.horizon + cfg.embargo < f.test_start  # the last training label ends before the block
        assert f.train_end - f.train_start + 1 <= cfg.train_bars


@pytest.mark.parametrize("model", ["logistic", "hgb"])
def test_predictions_in_a_block_equal_a_model_trained_only_on_data_before_it(model):
    """Refit by hand on candles cut before each block (labels there end where the data ends): same probabilities."""
    from sklearn.base import clone

    c = candles()
    cfg = FAST.with_(model=model, max_iter=30)
    pred = walk_forward_predict(c, cfg)
    for f in walk_forward_folds(len(c), cfg)[::3]:
        past = c.iloc[: f.test_start]  # only bars < the block start
        x, y = build_features(past, cfg.features), sign_labels(past.close, cfg.horizon)
        ok = x.notna().all(axis=1) & y.notna()
        ok &= np.arange(len(past)) <= len(past) - 1 - cfg.horizon  # labels known when the block starts
        x, y = x[ok].iloc[-cfg.train_bars:], y[ok].iloc[-cfg.train_bars:]
        assert y.index[-1] < c.index[f.test_start] - pd.Timedelta(hours=cfg.horizon)
        model_ = clone(ml.make_model(cfg)).fit(x.to_numpy(), y.to_numpy())
        block = build_features(c, cfg.features).iloc[f.test_start: f.test_end]
        want = model_.predict_proba(block.to_numpy())[:, 1]
        np.testing.assert_allclose(pred.proba.iloc[f.test_start: f.test_end].to_numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("model", ["logistic", "hgb", "lightgbm"])
def test_same_seed_gives_identical_probabilities(model):
    c = candles(1200)
    cfg = FAST.with_(model=model, max_iter=20, seed=7)
    ml.clear_model_cache()
    first = walk_forward_predict(c, cfg).proba
    ml.clear_model_cache()  # refit from scratch
    second = walk_forward_predict(c, cfg).proba
    assert first.notna().sum() > 500
    pd.testing.assert_series_equal(first, second, check_exact=True)


def test_a_model_on_shuffled_labels_does_not_beat_chance():
    from sklearn.metrics import roc_auc_score

    c = candles(3000)
    cfg = MLConfig(model="hgb", horizon=1, max_iter=40, train_bars=1000, min_train=300, retrain=300, shuffle_labels=True)
    pred = walk_forward_predict(c, cfg)
    ok = pred.proba.notna() & pred.labels.notna()
    y, p = pred.labels[ok].to_numpy(), pred.proba[ok].to_numpy()
    auc = roc_auc_score(y, p)
    n1, n0 = y.sum(), len(y) - y.sum()
    sigma = math.sqrt((n0 + n1 + 1) / (12 * n0 * n1))  # the AUC's std when the scores carry no information
    assert abs(auc - 0.5) < 3 * sigma, (auc, sigma)
    assert len(y) > 2000 and p.std() > 0.01  # it did predict something, just nothing useful


# ---------------------------------------------------------------- in a strategy spec
SPEC = {"name": "ml_test", "indicators": {"ml": {"fn": "ml_proba", "params": {"model": 0, "train_bars": 600, "min_train": 150,
                                                                               "retrain": 200}}},
        "entry_long": "ml > 0.55", "exit_long": "ml < 0.5"}


def test_ml_indicator_in_a_spec_compiles_to_the_walk_forward_probability_and_passes_the_lookahead_guard():
    c = candles()
    strategy = Strategy.from_dict(SPEC)
    compiled = compile_strategy(strategy, c)
    direct = walk_forward_predict(c, FAST).proba
    np.testing.assert_array_equal(compiled["ml"].to_numpy(), direct.to_numpy())
    assert warmup_bars(strategy) == FAST.first_prediction() == lead_nan(direct)
    assert (compiled["entry_long"] == (direct > 0.55)).all() and compiled["entry_long"].sum() > 20
    report = check_lookahead(lambda x: compile_strategy(strategy, x), c, cutoffs=10, min_history=FAST.first_prediction() + 1)
    assert report.ok, str(report)
    result = qlab.backtest(c, strategy)
    assert len(result.trades) > 5


def test_the_bundled_template_uses_gradient_boosting():
    t = qlab.templates["ml_gradient_boost"]
    cfg = ml.indicator_config(t.indicators["ml"].fn, t.indicators["ml"].params)
    assert cfg.model == "hgb" and cfg.purge and warmup_bars(t) < 200  # fits the template suite's lookahead check


def test_bad_ml_parameters_are_named():
    with pytest.raises(StrategyError, match=r"ml\.params\.model: 3 is above the maximum"):
        Strategy.from_dict({**SPEC, "indicators": {"ml": {"fn": "ml_proba", "params": {"model": 3}}}})
    with pytest.raises(StrategyError, match=r"min_train \(500\) must be at most train_bars \(300\)"):
        Strategy.from_dict({**SPEC, "indicators": {"ml": {"fn": "ml_proba", "params": {"min_train": 500, "train_bars": 300}}}})
    with pytest.raises(StrategyError, match="did you mean 'horizon'"):
        Strategy.from_dict({**SPEC, "indicators": {"ml": {"fn": "ml_proba", "params": {"horizn": 3}}}})
    with pytest.raises(ConfigError, match="did you mean 'lightgbm'"):
        MLConfig(model="lightgbn")
    with pytest.raises(ConfigError, match="did you mean 'triple_barrier'"):
        MLConfig(label="triple_barier")


@pytest.fixture
def scratch_indicators():
    names: list[str] = []
    yield names
    for n in names:
        unregister_indicator(n)
    ml._FEATURES.clear()


def test_register_ml_indicator_with_registry_features_and_triple_barrier(scratch_indicators):
    scratch_indicators.append("ml_macd")
    features = [{"fn": "macd", "output": "hist"}, "adx", {"fn": "sma", "params": {"period": 20}, "relative": True}]
    ml.register_ml_indicator("ml_macd", features,
                             model="lightgbm", label="triple_barrier", take_profit=0.01, stop_loss=0.01, horizon=8,
                             train_bars=600, min_train=150, retrain=200, max_iter=30)
    c = candles()
    spec = {"name": "t", "indicators": {"p": {"fn": "ml_macd"}}, "entry_long": "p > 0.6", "exit_long": "p < 0.45"}
    compiled = compile_strategy(Strategy.from_dict(spec), c)
    cfg = ml.indicator_config("ml_macd")
    assert (cfg.model, cfg.label, cfg.horizon) == ("lightgbm", "triple_barrier", 8)
    assert lead_nan(compiled["p"]) == get_indicator("ml_macd").lookback() == cfg.first_prediction()
    assert compiled["p"].iloc[cfg.first_prediction():].between(0, 1).all()
    with pytest.raises(StrategyError, match="already exists"):
        ml.register_ml_indicator("ml_macd", ["rsi"])


def test_leaks_are_caught(scratch_indicators):
    """A feature holding the forward return is caught by the engine's lookahead guard; training without the purge
    by the ML leakage check (and both leaks make the in-sample-looking AUC implausibly good)."""
    from qlab.research.ml_eval import check_ml_leakage

    c = candles(1500)

    @register_indicator("peek_test", params={"period": (4, 1, 100)})
    def peek(data, period):
        "The forward return: a leak."
        return data.close.shift(-period) / data.close - 1

    scratch_indicators += ["peek_test", "ml_peek"]
    ml.register_ml_indicator("ml_peek", ["peek_test", "rsi"], model="logistic", train_bars=600, min_train=150, retrain=200)
    leaky = Strategy.from_dict({"name": "leaky", "indicators": {"ml": {"fn": "ml_peek"}}, "entry_long": "ml > 0.55"})
    report = check_lookahead(lambda x: compile_strategy(leaky, x), c, cutoffs=6, min_history=400)
    assert not report.ok and "ml" in set(report.offenders.column)

    no_purge = FAST.with_(purge=False)
    found = check_ml_leakage(c, no_purge, max_folds=3)
    assert not found.ok and any("training labels reach" in p for p in found.problems)
    assert any("changes from" in p for p in found.problems)
    assert check_ml_leakage(c, FAST, max_folds=3).ok

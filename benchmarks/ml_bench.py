"""ML signals: feature and label building, one model fit and prediction per model kind, and the whole walk-forward
indicator (`ml_proba`) from a cold and from a warm model cache."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks import Config, SectionResult, fmt_rate, fmt_seconds, section, table, timed
from benchmarks.synthetic import synthetic_candles
from qlab.strategy import ml
from qlab.strategy.labels import make_labels
from qlab.strategy.ml_features import build_features

MODELS = ("logistic", "hgb", "lightgbm")


@section("ml", "ML signals: training and prediction")
def run(cfg: Config) -> SectionResult:
    bars = 5_000 if cfg.quick else 50_000
    candles = synthetic_candles(bars, timeframe="1h", seed=cfg.seed)
    base = ml.MLConfig()  # ml_proba's defaults: 2,000-bar rolling window, a new model every 250 bars
    feat_s, feats = timed(lambda: build_features(candles, base.features))
    label_s, labels = timed(lambda: make_labels(candles, "sign", base.horizon))
    tb_s, _ = timed(lambda: make_labels(candles, "triple_barrier", 24, 0.02, 0.02))
    ok = feats.notna().all(axis=1).to_numpy() & labels.notna().to_numpy()
    x, y = feats.to_numpy()[ok], labels.to_numpy()[ok]
    x_train, y_train, x_test = x[-2250:-250], y[-2250:-250], x[-250:]
    results: dict[str, Any] = {"bars": bars, "features": feats.shape[1], "features_s": feat_s, "labels_s": label_s,
                               "triple_barrier_s": tb_s, "models": {}}
    rows = [["features (default set)", f"{bars:,} bars x {feats.shape[1]} features", fmt_seconds(feat_s), fmt_rate(bars, feat_s, "bars/s")],
            ["labels: sign over 4 bars", f"{bars:,} bars", fmt_seconds(label_s), fmt_rate(bars, label_s, "bars/s")],
            ["labels: triple barrier, 24-bar limit", f"{bars:,} bars", fmt_seconds(tb_s), fmt_rate(bars, tb_s, "bars/s")]]
    for kind in MODELS:
        conf = base.with_(model=kind)
        ml.fit_model(conf.with_(seed=1), x_train[:500], y_train[:500])  # imports and first-call set-up, not timed
        ml.clear_model_cache()
        fit_s, model = timed(lambda conf=conf: ml.fit_model(conf, x_train, y_train))
        pred_s, _ = timed(lambda model=model: ml.positive_proba(model, x_test))
        ml.clear_model_cache()
        cold_s, pred = timed(lambda conf=conf: ml.walk_forward_predict(candles, conf))
        warm_s, _ = timed(lambda conf=conf: ml.walk_forward_predict(candles, conf))
        n_folds = len(pred.folds)
        results["models"][kind] = {"fit_2000_s": fit_s, "predict_250_s": pred_s, "walk_forward_cold_s": cold_s,
                                   "walk_forward_warm_s": warm_s, "folds": n_folds, "oos_bars": int(np.isfinite(pred.proba).sum())}
        rows += [[f"`{kind}`: fit one model", f"2,000 rows x {x.shape[1]} features", fmt_seconds(fit_s), fmt_rate(2000, fit_s, "rows/s")],
                 [f"`{kind}`: predict one OOS block", f"250 rows x {x.shape[1]} features", fmt_seconds(pred_s),
                  fmt_rate(250, pred_s, "rows/s")],
                 [f"`{kind}`: walk-forward `ml_proba`, cold cache", f"{bars:,} bars, {n_folds} folds", fmt_seconds(cold_s),
                  fmt_rate(bars, cold_s, "bars/s")],
                 [f"`{kind}`: the same again, warm cache", f"{bars:,} bars, {n_folds} folds", fmt_seconds(warm_s),
                  fmt_rate(bars, warm_s, "bars/s")]]
    ml.clear_model_cache()
    note = ("Defaults of `ml_proba` (HistGradientBoosting: 100 rounds, 15 leaves, learning rate 0.05; LightGBM the same; "
            "logistic regression on standardised features), one thread per model (OpenMP and BLAS limited to 1: faster on these "
            "window sizes and bit-for-bit reproducible). A walk-forward run fits one model per 250-bar OOS block; the warm "
            "run finds every model in the cache (what recompiling a strategy, or the lookahead guard's truncated reruns, costs). "
            "Data: seeded synthetic 1h candles (`benchmarks/synthetic.py`).")
    return SectionResult(results, table(("what", "data size", "time", "rate"), rows) + "\n\n" + note)

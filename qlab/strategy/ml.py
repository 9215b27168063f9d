"""The ML indicator: a classifier's out-of-sample probability that the forward return is positive (or that the
take-profit comes before the stop), trained walk-forward so that bar t's value uses bars <= t only.

Walk-forward (the only way the indicator is ever fitted):
  * features (qlab.strategy.ml_features) are valid from bar f0 = feature_lookback(features);
  * out-of-sample (OOS) blocks of `retrain` bars start at s0 = f0 + min_train + gap and every `retrain`
    bars after it, where gap = horizon (the purge) + embargo; the blocks are anchored at the first bar, so
    cutting bars off the end of the data leaves every earlier block, and its model, unchanged;
  * the model for the block [s, e) is trained on bars t in [max(f0, s - gap - train_bars), s - gap - 1]
    (all of them from f0 with `expanding`): the label of t looks at bars up to t + horizon <= s - 1 - embargo,
    so no training label sees the OOS block; it then predicts bars s .. e - 1 only;
  * bars before s0, and bars with a missing feature, are NaN (no prediction), never a made-up 0.5.

In a spec it is the indicator `ml_proba` (default features: lagged returns, momentum, volatility, RSI, NATR,
distance from an SMA, volume z-score, time of day and week) or any indicator made with `register_ml_indicator`
(features from any registered indicators); a signal thresholds it: `entry_long: ml > 0.55`.
`purge: 0` switches the purge off: it leaks (the leakage tests show it is caught) and exists to demonstrate that.

Fitted models are cached by (model, hyper-parameters, training data hash), so recompiling a strategy (a
new threshold, the lookahead guard's truncated reruns) refits nothing that it has already fitted.
"""

from __future__ import annotations

import hashlib
import sys
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from qlab.errors import ConfigError, StrategyError, did_you_mean
from qlab.strategy.indicators import REGISTRY, IndicatorDef, Param, get_indicator
from qlab.strategy.labels import LABELS, make_labels
from qlab.strategy.ml_features import FeatureSet, IndicatorFeature, build_features, feature_lookback

MODELS = ("logistic", "hgb", "lightgbm")
OHLCV = ("open", "high", "low", "close", "volume")
_CACHE: OrderedDict[tuple, Any] = OrderedDict()
_CONTROLLER: Any = None
_POOL_MODULES = ("sklearn.ensemble", "lightgbm", "sklearn.linear_model", "scipy.linalg")
CACHE_SIZE = 1024


# ---------------------------------------------------------------- configuration
@dataclass(frozen=True)
class MLConfig:
    """Everything that defines an ML indicator: features, label, model, and the walk-forward schedule."""

    features: FeatureSet = field(default_factory=lambda: default_features())  # ml_proba's defaults
    label: str = "sign"  # "sign" of the forward return over `horizon`, or "triple_barrier"
    horizon: int = 4
    take_profit: float = 0.02  # triple barrier: fractions of the entry close
    stop_loss: float = 0.02
    model: str = "hgb"  # "logistic", "hgb" (HistGradientBoostingClassifier) or "lightgbm"
    max_iter: int = 100  # boosting rounds (hgb, lightgbm)
    learning_rate: float = 0.05
    max_leaf_nodes: int = 15
    c: float = 1.0  # logistic regression: inverse L2 strength
    train_bars: int = 2000  # rolling training window (bars)
    min_train: int = 200  # the first model needs this many training bars
    retrain: int = 250  # OOS block length: a new model every `retrain` bars
    expanding: bool = False  # train on everything from the first feature bar instead of a rolling window
    purge: bool = True  # drop the last `horizon` bars before each OOS block from its training data
    embargo: int = 0  # extra bars between the training labels and the OOS block
    seed: int = 0
    shuffle_labels: bool = False  # control experiment: permute the training labels (the model must not beat chance)

    def __post_init__(self):
        if self.label not in LABELS:
            raise ConfigError(f"label={self.label!r}; use one of {', '.join(LABELS)}." + did_you_mean(str(self.label), LABELS))
        if self.model not in MODELS:
            raise ConfigError(f"model={self.model!r}; use one of {', '.join(MODELS)}." + did_you_mean(str(self.model), MODELS))
        for name, least in (("horizon", 1), ("train_bars", 10), ("min_train", 10), ("retrain", 1), ("embargo", 0),
                            ("max_iter", 1), ("max_leaf_nodes", 2), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < least:
                raise ConfigError(f"{name}={v!r} must be a whole number >= {least}")
        for name in ("take_profit", "stop_loss", "learning_rate", "c"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0 or not np.isfinite(v):
                raise ConfigError(f"{name}={v!r} must be a number > 0")
        if self.min_train > self.train_bars:
            raise ConfigError(f"min_train={self.min_train} must be at most train_bars={self.train_bars}")

    @property
    def gap(self) -> int:
        """Bars between the last training bar and the OOS block start, minus one: horizon (purge) + embargo."""
        return (self.horizon if self.purge else 0) + self.embargo

    def first_prediction(self) -> int:
        """s0: the bar of the first prediction (also the indicator's declared warm-up)."""
        return feature_lookback(self.features) + self.min_train + self.gap

    def with_(self, **changes: Any) -> MLConfig:
        """A copy with fields replaced."""
        return replace(self, **changes)


# ---------------------------------------------------------------- models
def make_model(config: MLConfig):
    """A fresh, seeded scikit-learn classifier for the config (sklearn and lightgbm are imported here, lazily)."""
    if config.model == "logistic":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(C=config.c, solver="newton-cholesky", max_iter=1000,
                                                                random_state=config.seed))
    if config.model == "hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(max_iter=config.max_iter, learning_rate=config.learning_rate,
                                              max_leaf_nodes=config.max_leaf_nodes, early_stopping=False, random_state=config.seed)
    from lightgbm import LGBMClassifier

    return LGBMClassifier(n_estimators=config.max_iter, learning_rate=config.learning_rate, num_leaves=config.max_leaf_nodes,
                          random_state=config.seed, n_jobs=1, deterministic=True, force_row_wise=True, verbose=-1)


def single_thread():
    """OpenMP and BLAS limited to one thread: on these window sizes HistGradientBoosting is ~8x faster so (measured,
    2000 x 12, 2 cores), BLAS threads don't fight other processes, and results are identical on any machine."""
    global _CONTROLLER
    loaded = tuple(m in sys.modules for m in _POOL_MODULES)
    if _CONTROLLER is None or _CONTROLLER[0] != loaded:  # finding the thread pools takes ~7 ms: once per set of libraries
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = (loaded, ThreadpoolController())
    return _CONTROLLER[1].limit(limits=1)


def _model_key(config: MLConfig) -> tuple:
    return (config.model, config.max_iter, config.learning_rate, config.max_leaf_nodes, config.c, config.seed)


def fit_model(config: MLConfig, x: np.ndarray, y: np.ndarray):
    """The model fitted on (x, y), from the cache when the same model was fitted on the same data before.
    A training window with one class only gets a constant (prior) model: it predicts that class's rate."""
    digest = hashlib.blake2b(np.ascontiguousarray(x).tobytes() + np.ascontiguousarray(y).tobytes(), digest_size=16).hexdigest()
    key = (*_model_key(config), x.shape, digest)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    if len(np.unique(y)) < 2:
        from sklearn.dummy import DummyClassifier

        model = DummyClassifier(strategy="prior").fit(x, y)
    else:
        model = make_model(config)  # imports the library first, so single_thread() sees its thread pool
        with single_thread():
            model.fit(x, y)
    _CACHE[key] = model
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return model


def clear_model_cache() -> None:
    """Forget every cached fitted model (e.g. to time training)."""
    _CACHE.clear()


def positive_proba(model, x: np.ndarray) -> np.ndarray:
    """P(label = 1) for each row of x (0 when the model only ever saw label 0)."""
    with single_thread():
        proba = model.predict_proba(x)
    classes = list(model.classes_)
    return proba[:, classes.index(1.0)] if 1.0 in classes else np.zeros(len(x))


# ---------------------------------------------------------------- walk-forward
@dataclass(frozen=True)
class Fold:
    """One walk-forward step: train on bars [train_start, train_end] (inclusive), predict [test_start, test_end)."""

    train_start: int
    train_end: int
    test_start: int
    test_end: int


def walk_forward_folds(n_bars: int, config: MLConfig) -> list[Fold]:
    """The walk-forward folds over `n_bars` bars (positions), anchored at bar 0; see the module doc."""
    f0, s = feature_lookback(config.features), config.first_prediction()
    folds = []
    while s < n_bars:
        hi = s - 1 - config.gap
        lo = f0 if config.expanding else max(f0, hi - config.train_bars + 1)
        folds.append(Fold(lo, hi, s, min(s + config.retrain, n_bars)))
        s += config.retrain
    return folds


@dataclass
class MLPrediction:
    """A walk-forward run: `proba` (the indicator's values), the features and labels it used, one row per fold
    in `folds` (dates, sizes, class balance) and the fitted `models` (one per fold, for importance)."""

    proba: pd.Series
    features: pd.DataFrame
    labels: pd.Series
    folds: pd.DataFrame
    models: list = field(repr=False)
    config: MLConfig = field(repr=False)


def _check_candles(candles: pd.DataFrame) -> None:
    if not isinstance(candles, pd.DataFrame) or any(c not in candles.columns for c in OHLCV):
        got = list(candles.columns) if isinstance(candles, pd.DataFrame) else type(candles).__name__
        raise StrategyError(f"the ML indicator needs candles with columns {', '.join(OHLCV)}; got {got}")
    if not isinstance(candles.index, pd.DatetimeIndex):
        raise StrategyError("the ML indicator needs candles indexed by time (a DatetimeIndex) for its time features")


def walk_forward_predict(candles: pd.DataFrame, config: MLConfig | None = None) -> MLPrediction:
    """Fit on each training window, predict only the OOS block that follows; see the module doc for the windows."""
    config = config or MLConfig()
    _check_candles(candles)
    feats = build_features(candles, config.features)
    labels = make_labels(candles, config.label, config.horizon, config.take_profit, config.stop_loss)
    x_all, y_all = feats.to_numpy(dtype=np.float64), labels.to_numpy(dtype=np.float64)
    ok_x = ~np.isnan(x_all).any(axis=1)
    proba = np.full(len(candles), np.nan)
    rows, models = [], []
    for i, fold in enumerate(walk_forward_folds(len(candles), config)):
        sl = slice(fold.train_start, fold.train_end + 1)
        keep = ok_x[sl] & ~np.isnan(y_all[sl])
        x, y = x_all[sl][keep], y_all[sl][keep]
        if config.shuffle_labels:  # seeded by the fold's start bar, so truncating the data keeps every permutation
            y = np.random.default_rng([config.seed, fold.test_start]).permutation(y)
        if len(y) < min(config.min_train, 10) or len(y) == 0:
            models.append(None)
            continue
        model = fit_model(config, x, y)
        models.append(model)
        test = np.arange(fold.test_start, fold.test_end)
        test = test[ok_x[test]]
        if len(test):
            proba[test] = positive_proba(model, x_all[test])
        idx = candles.index
        rows.append({"fold": i, "train_start": idx[fold.train_start], "train_end": idx[fold.train_end],
                     "label_end": idx[min(fold.train_end + config.horizon, len(idx) - 1)], "test_start": idx[fold.test_start],
                     "test_end": idx[fold.test_end - 1], "n_train": len(y), "n_test": len(test),
                     "train_positive_rate": float(y.mean())})
    folds = pd.DataFrame(rows, columns=["fold", "train_start", "train_end", "label_end", "test_start", "test_end", "n_train",
                                        "n_test", "train_positive_rate"])
    return MLPrediction(pd.Series(proba, index=candles.index, name="ml_proba"), feats, labels, folds, models, config)


def ml_proba(candles: pd.DataFrame, config: MLConfig | None = None) -> pd.Series:
    """The walk-forward out-of-sample probability series (NaN before the first model)."""
    return walk_forward_predict(candles, config).proba


# ---------------------------------------------------------------- the indicator(s)
def _p(name: str, default, lo, hi, doc: str) -> Param:
    return Param(name, type(default), default, lo, hi, doc)


MODEL_PARAMS = (
    _p("model", 1, 0, 2, "0 logistic regression, 1 HistGradientBoosting, 2 LightGBM"),
    _p("label", 0, 0, 1, "0 sign of the forward return, 1 triple barrier"),
    _p("horizon", 4, 1, 500, "label horizon in bars"),
    _p("take_profit", 0.02, 0.0001, 5.0, "triple barrier: take-profit as a fraction"),
    _p("stop_loss", 0.02, 0.0001, 5.0, "triple barrier: stop-loss as a fraction"),
    _p("train_bars", 2000, 20, 100_000, "rolling training window in bars"),
    _p("min_train", 200, 20, 100_000, "training bars the first model needs"),
    _p("retrain", 250, 1, 100_000, "bars per out-of-sample block (a new model each block)"),
    _p("expanding", 0, 0, 1, "1 trains on all history instead of a rolling window"),
    _p("purge", 1, 0, 1, "1 purges the label horizon before each block; 0 leaks (for demonstrations)"),
    _p("embargo", 0, 0, 10_000, "extra bars between training labels and the block"),
    _p("seed", 0, 0, 2**31 - 1, "random seed of the model"),
    _p("max_iter", 100, 1, 5000, "boosting rounds"),
    _p("learning_rate", 0.05, 0.001, 1.0, "boosting learning rate"),
    _p("max_leaf_nodes", 15, 2, 1024, "leaves per tree"),
    _p("c", 1.0, 1e-6, 1e6, "logistic regression: inverse regularisation"),
)
FEATURE_PARAMS = (
    _p("lags", 3, 0, 100, "lagged 1-bar log returns"),
    _p("momentum", 24, 0, 1000, "log return over n bars (0 = off)"),
    _p("vol_period", 24, 0, 1000, "std of 1-bar log returns over n bars (below 2 = off)"),
    _p("rsi_period", 14, 0, 1000, "RSI period (below 2 = off)"),
    _p("natr_period", 14, 0, 1000, "NATR period (0 = off)"),
    _p("trend_period", 50, 0, 1000, "close / SMA(n) - 1 (0 = off)"),
    _p("volume_period", 24, 0, 1000, "z-score of volume over n bars (below 2 = off)"),
    _p("time", 1, 0, 1, "1 adds hour of day and day of week"),
)
_RULES = (("min_train", "<=", "train_bars"),)


def default_features(lags: int = 3, momentum: int = 24, vol_period: int = 24, rsi_period: int = 14, natr_period: int = 14,
                     trend_period: int = 50, volume_period: int = 24, time: int = 1) -> FeatureSet:
    """The feature set of `ml_proba` (each family off when its window is 0, or below 2 where 1 makes no sense)."""
    inds = []
    if rsi_period >= 2:
        inds.append(IndicatorFeature("rsi", {"period": rsi_period}))
    if natr_period >= 1:
        inds.append(IndicatorFeature("natr", {"period": natr_period}))
    if trend_period >= 1:
        inds.append(IndicatorFeature("sma", {"period": trend_period}, relative=True))
    if volume_period >= 2:
        inds.append(IndicatorFeature("zscore", {"period": volume_period}, input="volume"))
    return FeatureSet(tuple(inds), lags=lags, returns=(momentum,) if momentum else (),
                      volatility=(vol_period,) if vol_period >= 2 else (), time=bool(time))


def config_from_params(values: dict[str, Any], features: FeatureSet | None = None) -> MLConfig:
    """An MLConfig from the indicator's numeric parameters (the feature ones too when `features` is None)."""
    if features is None:
        features = default_features(**{p.name: values[p.name] for p in FEATURE_PARAMS})
    return MLConfig(features=features, label=LABELS[values["label"]], horizon=values["horizon"], take_profit=values["take_profit"],
                    stop_loss=values["stop_loss"], model=MODELS[values["model"]], max_iter=values["max_iter"],
                    learning_rate=values["learning_rate"], max_leaf_nodes=values["max_leaf_nodes"], c=values["c"],
                    train_bars=values["train_bars"], min_train=values["min_train"], retrain=values["retrain"],
                    expanding=bool(values["expanding"]), purge=bool(values["purge"]), embargo=values["embargo"], seed=values["seed"])


def _indicator(name: str, features: FeatureSet | None, params: tuple[Param, ...], doc: str) -> IndicatorDef:
    def run(frame: pd.DataFrame, values: dict) -> list:
        return [ml_proba(frame, config_from_params(values, features)).to_numpy()]

    def lookback(**values) -> int:
        return config_from_params(values, features).first_prediction()

    return IndicatorDef(name, "momentum", OHLCV, params, ("value",), doc, run, lookback, _RULES, source="ml")


def indicator_config(fn: str, params: dict[str, Any] | None = None) -> MLConfig:
    """The MLConfig behind an ML indicator of the registry with `params` (e.g. a spec's indicator entry)."""
    ind = get_indicator(fn)
    if ind.source != "ml":
        ml = sorted(k for k, d in REGISTRY.items() if d.source == "ml")
        raise StrategyError(f"indicator {fn!r} is not an ML indicator; ML indicators: {', '.join(ml)}")
    return config_from_params(ind.resolve(params or {}), _FEATURES.get(ind.name))


_FEATURES: dict[str, FeatureSet] = {}


def register_builtin() -> None:
    """Register `ml_proba` (called once by qlab.strategy.indicators when it is imported)."""
    REGISTRY["ml_proba"] = _indicator("ml_proba", None, MODEL_PARAMS + FEATURE_PARAMS,
                                      "ML probability that the close rises over `horizon` bars (walk-forward, purged)")


def register_ml_indicator(name: str, features: FeatureSet | list | tuple, *, replace: bool = False, doc: str | None = None,
                          **defaults: Any) -> IndicatorDef:
    """Register an ML indicator `name` whose features are `features` (a FeatureSet, or a list of indicator names /
    {fn, params, output, relative, input} dicts used with the default lags, returns, volatility and time features).
    `defaults` override the defaults of the model parameters (model may be given by name: model="lightgbm").
    Specs then use it like any indicator: {fn: name, params: {horizon: 8}}."""
    key = str(name).strip().lower()
    if (key in REGISTRY) and not replace:
        raise StrategyError(f"indicator {key!r} already exists; pick another name or pass replace=True to override it")
    fs = features if isinstance(features, FeatureSet) else FeatureSet(tuple(features))
    names = {"model": MODELS, "label": LABELS}
    params = []
    for p in MODEL_PARAMS:
        if p.name in defaults:
            value = defaults.pop(p.name)
            value = names[p.name].index(value) if p.name in names and value in names[p.name] else value
            problems = p.check(value, f"register_ml_indicator({key}).{p.name}")
            if problems:
                raise StrategyError("; ".join(problems))
            p = replace_param(p, value)
        params.append(p)
    if defaults:
        bad = next(iter(defaults))
        raise StrategyError(f"register_ml_indicator: unknown parameter {bad!r}." + did_you_mean(bad, [p.name for p in MODEL_PARAMS]))
    doc = doc or f"ML probability from {len(fs.indicators)} indicator feature(s) (walk-forward, purged)"
    definition = _indicator(key, fs, tuple(params), doc)
    definition.lookback()  # checks the defaults together (min_train <= train_bars)
    REGISTRY[key] = definition
    _FEATURES[key] = fs
    return definition


def replace_param(p: Param, default: Any) -> Param:
    """The parameter with another default."""
    return Param(p.name, p.kind, p.kind(default), p.min, p.max, p.doc)


register_builtin()

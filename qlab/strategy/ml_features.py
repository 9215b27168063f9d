"""Features for the ML indicator, built from the indicator registry: any registered indicator (name, params,
output), lagged returns, returns over longer windows, realised volatility, and the time of day and week.

Every feature at bar t uses bars <= t only (registered indicators are causal, lags shift forward), and
`feature_lookback(features)` is the exact number of leading bars without every feature, so the ML
indicator can declare its warm-up from its parameters alone.

    FeatureSet(indicators=(IndicatorFeature("rsi", {"period": 14}), IndicatorFeature("macd", output="hist"),
                           IndicatorFeature("sma", {"period": 50}, relative=True)),
               lags=3, returns=(24,), volatility=(24,), time=True)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from qlab.errors import StrategyError, did_you_mean
from qlab.strategy.indicators import get_indicator

SOURCES = ("close", "volume", "log_return")  # what a single-input indicator feature may read


@dataclass(frozen=True)
class IndicatorFeature:
    """One registered indicator as a feature: `fn` with `params`, its `output`; `relative` turns a price-level
    value into value / close - 1 (so an SMA becomes the distance of the close from it); `input` feeds a
    single-input indicator the close, the volume or the 1-bar log return."""

    fn: str
    params: Mapping[str, Any] = field(default_factory=dict)
    output: str = "value"
    relative: bool = False
    input: str = "close"

    @classmethod
    def from_any(cls, value: Any) -> IndicatorFeature:
        """From an IndicatorFeature, an indicator name, or a dict {fn, params, output, relative, input}."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, Mapping):
            keys = ("fn", "params", "output", "relative", "input")
            unknown = [k for k in value if k not in keys]
            if unknown or "fn" not in value:
                hint = did_you_mean(str(unknown[0]), keys) if unknown else " (fn is missing)"
                raise StrategyError(f"feature {dict(value)!r}: write {{fn: rsi, params: {{period: 14}}, output: value, "
                                    f"relative: false, input: close}}" + hint)
            return cls(str(value["fn"]), dict(value.get("params") or {}), str(value.get("output", "value")),
                       bool(value.get("relative", False)), str(value.get("input", "close")))
        raise StrategyError(f"feature {value!r}: give an indicator name, a dict {{fn, params, output}} or an IndicatorFeature")

    def check(self) -> dict[str, Any]:
        """The resolved parameters; StrategyError naming the bad name, parameter, output or input."""
        ind = get_indicator(self.fn)
        problems = ind.check_params(dict(self.params), f"feature {self.fn}.params")
        if problems:
            raise StrategyError("; ".join(problems))
        outputs = ind.outputs
        if self.output not in outputs:
            raise StrategyError(f"feature {self.fn}: no output {self.output!r}; it has {', '.join(outputs)}."
                                + did_you_mean(self.output, outputs))
        if self.input != "close" and not ind.single_input:
            raise StrategyError(f"feature {self.fn}: input {self.input!r} is only for single-input indicators; {self.fn} reads "
                                f"{', '.join(ind.inputs)}")
        if self.input not in SOURCES:
            raise StrategyError(f"feature {self.fn}: input {self.input!r}; use one of {', '.join(SOURCES)}."
                                + did_you_mean(self.input, SOURCES))
        return ind.resolve(dict(self.params))

    @property
    def name(self) -> str:
        """A column name such as 'rsi_14', 'macd_12_26_9.hist', 'sma_50_rel', 'zscore_24_volume'."""
        values = "_".join(f"{v:g}" if isinstance(v, float) else str(v) for v in dict(self.params).values())
        base = self.fn + (f"_{values}" if values else "")
        return base + ("" if self.output == "value" else f".{self.output}") + ("_rel" if self.relative else "") \
            + ("" if self.input == "close" else f"_{self.input}")

    def lookback(self) -> int:
        """Leading bars without a value."""
        ind = get_indicator(self.fn)
        return ind.lookback(**self.check()) + (1 if self.input == "log_return" else 0)


def _positive_ints(values: Any, name: str, least: int) -> tuple[int, ...]:
    values = (values,) if isinstance(values, int | np.integer) else tuple(values)
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < least]
    if bad:
        raise StrategyError(f"{name}={values!r}: every window must be a whole number of bars >= {least}, got {bad[0]!r}")
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class FeatureSet:
    """What the model sees at bar t: `indicators` (with `feature_lags` lagged copies of each), the last `lags`
    one-bar log returns (t, t-1, ...), log returns over each of `returns` bars, the standard deviation of the
    one-bar log returns over each of `volatility` bars, and (with `time`) hour of day and day of week as sin/cos."""

    indicators: tuple[IndicatorFeature, ...] = ()
    lags: int = 3
    returns: tuple[int, ...] = (24,)
    volatility: tuple[int, ...] = (24,)
    time: bool = True
    feature_lags: int = 0

    def __post_init__(self):
        object.__setattr__(self, "indicators", tuple(IndicatorFeature.from_any(f) for f in self.indicators))
        object.__setattr__(self, "returns", _positive_ints(self.returns, "returns", 1))
        object.__setattr__(self, "volatility", _positive_ints(self.volatility, "volatility", 2))
        for name in ("lags", "feature_lags"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or not 0 <= v <= 500:
                raise StrategyError(f"{name}={v!r} must be a whole number from 0 to 500")
        for f in self.indicators:
            f.check()
        if not (self.indicators or self.lags or self.returns or self.volatility or self.time):
            raise StrategyError("the feature set is empty; give indicators, lags, returns, volatility or time=True")

    def key(self) -> str:
        """A stable text form (for caches and reports)."""
        inds = ";".join(f"{f.name}" for f in self.indicators)
        return f"{inds}|lags={self.lags}|ret={self.returns}|vol={self.volatility}|time={self.time}|flags={self.feature_lags}"


def feature_lookback(features: FeatureSet) -> int:
    """The number of leading bars on which some feature is missing (from the parameters alone)."""
    spans = [features.lags, *features.returns, *features.volatility]  # lag k of the 1-bar return starts at bar 1 + k
    spans += [f.lookback() + features.feature_lags for f in features.indicators]
    return max(spans, default=0)


def build_features(candles: pd.DataFrame, features: FeatureSet) -> pd.DataFrame:
    """One float64 column per feature on the candles' index; bar t uses bars <= t only."""
    close = candles["close"]
    log_ret = pd.Series(get_indicator("log_returns").compute(candles[["close"]], period=1)["value"].to_numpy(), index=candles.index)
    cols: dict[str, pd.Series] = {}
    for k in range(features.lags):
        cols[f"ret_lag{k}"] = log_ret.shift(k)
    for n in features.returns:
        cols[f"ret_{n}"] = get_indicator("log_returns").compute(candles[["close"]], period=n)["value"]
    for n in features.volatility:
        cols[f"vol_{n}"] = get_indicator("stddev").compute(log_ret.to_frame("close"), period=n)["value"]
    for f in features.indicators:
        ind = get_indicator(f.fn)
        source = {"close": close, "volume": candles["volume"], "log_return": log_ret}[f.input]
        frame = source.to_frame("close") if ind.single_input else candles[list(ind.inputs)]
        value = ind.compute(frame, **f.check())[f.output]
        if f.relative:
            value = value / close - 1.0
        cols[f.name] = value
        for k in range(1, features.feature_lags + 1):
            cols[f"{f.name}_lag{k}"] = value.shift(k)
    if features.time:
        index = pd.DatetimeIndex(candles.index)
        hour = (index.hour + index.minute / 60.0).to_numpy(dtype=np.float64)
        dow = (index.day_of_week + hour / 24.0).to_numpy(dtype=np.float64)
        cols["hour_sin"], cols["hour_cos"] = np.sin(2 * np.pi * hour / 24), np.cos(2 * np.pi * hour / 24)
        cols["dow_sin"], cols["dow_cos"] = np.sin(2 * np.pi * dow / 7), np.cos(2 * np.pi * dow / 7)
    out = pd.DataFrame({k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}, index=candles.index)
    out[~np.isfinite(out)] = np.nan
    return out

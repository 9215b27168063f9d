"""The indicator registry: TA-Lib indicators, a few hand-built ones, and a decorator for your own.

Every indicator is an `IndicatorDef`: named, typed parameters with ranges, the candle columns it reads,
and named outputs. `compute(data, **params)` returns a float64 DataFrame on `data.index` whose columns
are exactly the declared outputs, so the result joins to the candles as it is and a multi-output
component is addressed by name: `macd.macd`, `macd.signal`, `macd.hist`; `bbands.upper`/`middle`/`lower`
(alias `bb`); `stoch.k`, `stoch.d`. A single-output indicator has the one output `value`.

TA-Lib-backed indicators call the `ta-lib` function itself, so their values equal TA-Lib's bit for bit,
and their `lookback` (leading NaN bars) comes from `talib.abstract`. TA-Lib skips leading NaNs of its
input, but a NaN in the middle of an input poisons recursive indicators (EMA, RSI, ...) from there on.

Single-input indicators (`inputs == ("close",)`) can be fed any series, e.g. an SMA of RSI or of
volume: pass a frame whose "close" column holds that series.

    @register_indicator("spread", params={"period": (20, 2, 1000)}, inputs=("high", "low"))
    def spread(data, period):
        "Mean high-low range over `period` bars."
        return (data.high - data.low).rolling(period).mean()
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from difflib import get_close_matches
from functools import lru_cache

import numpy as np
import pandas as pd

from qlab.errors import NotFoundError, StrategyError, did_you_mean

CATEGORIES = ("trend", "momentum", "volatility", "volume", "custom")
COLUMNS = ("open", "high", "low", "close", "volume")
MAX_PERIOD = 1000
_IDENT = re.compile(r"[a-z][a-z0-9_]*\Z")


class UnknownIndicatorError(StrategyError, NotFoundError):
    """An indicator name that is not registered (both a StrategyError and a NotFoundError)."""


def _fmt(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass(frozen=True)
class Param:
    """One parameter of an indicator (or signal block): an int or float within [min, max]."""

    name: str
    kind: type
    default: float | int
    min: float
    max: float
    doc: str = ""

    def __post_init__(self):
        if self.kind not in (int, float):
            raise StrategyError(f"parameter {self.name!r}: kind must be int or float, not {self.kind!r}")
        if not self.min <= self.default <= self.max:
            raise StrategyError(f"parameter {self.name!r}: default {self.default!r} is outside [{self.min}, {self.max}]")

    def describe(self) -> str:
        """'period=14 (2..1000)'."""
        return f"{self.name}={_fmt(self.default)} ({_fmt(self.min)}..{_fmt(self.max)})"

    def check(self, value, where: str) -> list[str]:
        """Problems with `value` (wrong type, not finite, out of range) as readable strings; [] when fine."""
        allowed = f"{'a whole number' if self.kind is int else 'a number'} from {_fmt(self.min)} to {_fmt(self.max)}"
        wrong_int = self.kind is int and isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or wrong_int:
            fix = f"; write {int(value)}" if wrong_int and float(value).is_integer() else ""
            return [f"{where}: expected {allowed}, got {value!r} ({type(value).__name__}){fix}"]
        if not math.isfinite(value) or not self.min <= value <= self.max:
            side = "not finite" if not math.isfinite(value) else "below the minimum" if value < self.min else "above the maximum"
            return [f"{where}: {_fmt(value)} is {side}; use {allowed}"]
        return []


@dataclass(frozen=True)
class IndicatorDef:
    """A registered indicator: what it reads, its parameters, its named outputs, and how to compute it."""

    name: str
    category: str
    inputs: tuple[str, ...]
    params: tuple[Param, ...]
    outputs: tuple[str, ...]
    doc: str
    func: Callable[[pd.DataFrame, dict], list] = field(repr=False, compare=False)  # (inputs frame, params) -> arrays
    lookback_fn: Callable[..., int] | int = field(default=0, repr=False, compare=False)
    rules: tuple[tuple[str, str, str], ...] = ()  # (a, "<" or "<=", b) between parameters
    talib_name: str | None = None  # the TA-Lib function behind it, None for hand-built and user ones
    source: str = "ta-lib"  # "ta-lib", "qlab" (hand-built) or "user"

    @property
    def single_input(self) -> bool:
        """True when it reads only "close", so it can be fed any series under that name."""
        return self.inputs == ("close",)

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}

    def check_params(self, params: dict, where: str) -> list[str]:
        """Unknown names (with did-you-mean), types, ranges and relational rules; one string per problem."""
        if not isinstance(params, Mapping):
            return [f"{where}: expected a mapping of parameter names to numbers, got {type(params).__name__}"]
        known = {p.name: p for p in self.params}
        problems, bad = [], set()
        for key, value in params.items():
            if key not in known:
                takes = ", ".join(known) or "no parameters"
                problems.append(f"{where}.{key}: unknown parameter {key!r} of indicator {self.name!r};"
                                f"{did_you_mean(key, known) or ''} it takes {takes}")
                continue
            found = known[key].check(value, f"{where}.{key}")
            problems += found
            bad.update([key] if found else [])
        merged = {**self.defaults(), **{k: v for k, v in params.items() if k in known}}
        for a, op, b in self.rules:
            if a in bad or b in bad:
                continue
            ok = merged[a] < merged[b] if op == "<" else merged[a] <= merged[b]
            if not ok:
                word = "less than" if op == "<" else "at most"
                problems.append(f"{where}: {a} ({_fmt(merged[a])}) must be {word} {b} ({_fmt(merged[b])}) for {self.name}")
        return problems

    def resolve(self, params: Mapping, where: str | None = None) -> dict:
        """Defaults overlaid with `params`, checked and cast to each parameter's kind; StrategyError listing every problem."""
        problems = self.check_params(params, where or f"{self.name}.params")
        if problems:
            raise StrategyError(f"invalid parameters for indicator {self.name!r}:\n  " + "\n  ".join(problems))
        return {p.name: p.kind(params.get(p.name, p.default)) for p in self.params}

    def lookback(self, **params) -> int:
        """Warm-up bars: every output is NaN on the first `lookback` bars (given clean inputs)."""
        values = self.resolve(params)
        return int(self.lookback_fn(**values) if callable(self.lookback_fn) else self.lookback_fn)

    def compute(self, data: pd.DataFrame, **params) -> pd.DataFrame:
        """Columns = outputs, index = data.index, float64; `data` must hold the input columns (others are ignored)."""
        values = self.resolve(params)
        if not isinstance(data, pd.DataFrame):
            raise StrategyError(f"indicator {self.name!r} needs a DataFrame with column(s) {', '.join(self.inputs)}, "
                                f"got {type(data).__name__}")
        missing = [c for c in self.inputs if c not in data.columns]
        if missing:
            hint = "; to feed another series, put it in a 'close' column" if self.single_input else ""
            raise StrategyError(f"indicator {self.name!r} reads column(s) {', '.join(map(repr, missing))}, "
                                f"but the data has {list(data.columns)}{hint}")
        frame = pd.DataFrame({c: _as_float(data[c], self.name, c) for c in self.inputs}, index=data.index)
        arrays = self.func(frame, values) if len(frame) else [np.empty(0)] * len(self.outputs)
        return pd.DataFrame({o: np.asarray(a, dtype=np.float64) for o, a in zip(self.outputs, arrays, strict=True)}, index=data.index)


def _numeric(dtype) -> bool:
    api = pd.api.types
    return (api.is_numeric_dtype(dtype) or api.is_bool_dtype(dtype)) and not api.is_complex_dtype(dtype)


def _as_float(column: pd.Series, name: str, col: str) -> np.ndarray:
    if not _numeric(column.dtype):
        raise StrategyError(f"indicator {name!r}: column {col!r} is {column.dtype}, not numeric; convert it with pd.to_numeric")
    return np.ascontiguousarray(column.to_numpy(dtype=np.float64, na_value=np.nan))


# ---------------------------------------------------------------- the registry
REGISTRY: dict[str, IndicatorDef] = {}
ALIASES: dict[str, str] = {"bb": "bbands"}


def get_indicator(name: str) -> IndicatorDef:
    """The indicator registered as `name` (case-insensitive, aliases resolved); UnknownIndicatorError with did-you-mean."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key in REGISTRY:
        return REGISTRY[key]
    if "." in key and key.split(".")[0] in REGISTRY.keys() | ALIASES.keys():
        base = key.split(".")[0]
        raise UnknownIndicatorError(f"{name!r} names an output; the indicator is {base!r} (its outputs: "
                                    f"{', '.join(get_indicator(base).outputs)})")
    names = list(REGISTRY) + list(ALIASES)
    hint = did_you_mean(key, names) or f" known indicators: {', '.join(sorted(names))}"
    raise UnknownIndicatorError(f"unknown indicator {name!r};{hint}")


def _params(spec: Mapping) -> tuple[Param, ...]:
    out = []
    for pname, value in spec.items():
        if isinstance(value, Param):
            out.append(value)
            continue
        if not (isinstance(pname, str) and _IDENT.match(pname)):
            raise StrategyError(f"parameter name {pname!r} must be a lower-case identifier like 'period'")
        if not isinstance(value, tuple) or len(value) not in (3, 4):
            raise StrategyError(f"parameter {pname!r}: give (default, min, max) or (default, min, max, doc), got {value!r}")
        default = value[0]
        if isinstance(default, bool) or not isinstance(default, int | float):
            raise StrategyError(f"parameter {pname!r}: the default must be an int or a float, got {default!r}")
        out.append(Param(pname, type(default), *value))
    return tuple(out)


def register_indicator(name: str, *, params: Mapping | None = None, outputs=("value",), inputs=("close",), category: str = "custom",
                       doc: str | None = None, lookback: Callable[..., int] | int | None = None, replace: bool = False):
    """Decorator: register `f(data: DataFrame, **params) -> Series | DataFrame | dict of Series` as indicator `name`.

    `params` maps a name to (default, min, max[, doc]); the kind (int or float) is the default's type.
    `f` gets a float64 frame of the `inputs` columns on the data's index, and must return one numeric value
    per bar on that index: a Series (single output) or a DataFrame / dict with every declared output.
    `lookback` (an int or a function of the params) declares the warm-up bars (0 when not given).
    Existing names are protected unless `replace=True`. Returns `f` unchanged.
    """
    key = str(name).strip().lower()
    outputs, inputs = tuple(outputs), tuple(inputs)
    if not _IDENT.match(key):
        raise StrategyError(f"indicator name {name!r} must be a lower-case identifier (letters, digits, _), e.g. 'my_rsi'")
    if (key in REGISTRY or key in ALIASES) and not replace:
        raise StrategyError(f"indicator {key!r} already exists; pick another name or pass replace=True to override it")
    if not outputs or len(set(outputs)) != len(outputs) or not all(isinstance(o, str) and _IDENT.match(o) for o in outputs):
        raise StrategyError(f"indicator {key!r}: outputs {outputs!r} must be distinct lower-case identifiers, e.g. ('upper', 'lower')")
    if not inputs or any(c not in COLUMNS for c in inputs):
        raise StrategyError(f"indicator {key!r}: inputs {inputs!r} must be candle columns among {', '.join(COLUMNS)}")
    if category not in CATEGORIES:
        raise StrategyError(f"indicator {key!r}: category {category!r} is not one of {', '.join(CATEGORIES)};"
                            + did_you_mean(category, CATEGORIES))
    declared = _params(params or {})
    if lookback is not None and not callable(lookback) and not (isinstance(lookback, int) and lookback >= 0):
        raise StrategyError(f"indicator {key!r}: lookback must be an int >= 0 or a function of the params, got {lookback!r}")

    def decorate(f):
        defaults = {p.name: p.default for p in declared}
        for what, fn, args in [(f.__name__, f, (None,)), ("lookback", lookback, ())]:
            try:
                if callable(fn):
                    inspect.signature(fn).bind(*args, **defaults)
            except TypeError as exc:
                raise StrategyError(f"indicator {key!r}: {what}{inspect.signature(fn)} cannot take "
                                    f"{'the data and ' * len(args)}the declared params ({', '.join(defaults) or 'none'}): {exc}") from None

        def run(frame: pd.DataFrame, values: dict) -> list:
            try:
                result = f(frame, **values)
            except Exception as exc:
                exc.add_note(f"while computing indicator {key!r} with {values}")
                raise
            return _user_outputs(key, result, outputs, frame.index)

        line = (doc or inspect.getdoc(f) or f"user indicator {f.__name__}").strip().split("\n")[0]
        REGISTRY[key] = IndicatorDef(key, category, inputs, declared, outputs, line, run,
                                     lookback if lookback is not None else 0, source="user")
        ALIASES.pop(key, None)
        return f

    return decorate


def unregister_indicator(name: str) -> None:
    """Remove a registered indicator (built-in ones too); unknown names raise UnknownIndicatorError."""
    REGISTRY.pop(get_indicator(name).name)


def _user_outputs(name: str, result, outputs: tuple[str, ...], index: pd.Index) -> list[np.ndarray]:
    """Check a user function's result and return one float64 array per declared output."""
    if isinstance(result, pd.Series | np.ndarray) and len(outputs) == 1:
        result = {outputs[0]: result}
    elif isinstance(result, pd.Series | np.ndarray):
        raise StrategyError(f"indicator {name!r} returned one series but declares outputs {outputs}; return a dict or DataFrame of them")
    if not isinstance(result, pd.DataFrame | Mapping):
        raise StrategyError(f"indicator {name!r} returned {type(result).__name__}; expected a pandas Series, a DataFrame "
                            f"or a dict of Series named {', '.join(outputs)}")
    items = {str(k): result[k] for k in result}
    missing, extra = [o for o in outputs if o not in items], [k for k in items if k not in outputs]
    if missing or extra:
        typos = "".join(f" {close[0]!r} looks like a misspelt {m!r};" for m in missing if (close := get_close_matches(m, extra, 1, 0.5)))
        raise StrategyError(f"indicator {name!r} returned output(s) {', '.join(map(repr, items)) or 'none'} but declares "
                            f"{', '.join(map(repr, outputs))};{typos} return exactly the declared outputs")
    return [_user_column(f"indicator {name!r} output {o!r}", items[o], index) for o in outputs]


def _user_column(what: str, value, index: pd.Index) -> np.ndarray:
    if not isinstance(value, pd.Series) and not (isinstance(value, np.ndarray) and value.ndim == 1):
        raise StrategyError(f"{what} is {type(value).__name__}; expected a pandas Series (or a 1-D numpy array)")
    if len(value) != len(index):
        raise StrategyError(f"{what} has {len(value)} values for {len(index)} bars; return one value per bar of the data")
    value = pd.Series(value, index=index) if isinstance(value, np.ndarray) else value
    if not value.index.equals(index):
        i = next((i for i in range(len(index)) if not _same(value.index[i], index[i])), 0)
        raise StrategyError(f"{what} is not aligned with the data: {value.index[i]!r} at position {i} where the data has "
                            f"{index[i]!r}; build it from the data's columns or use .reindex(data.index)")
    if not _numeric(value.dtype):
        sample = next((v for v in value if not isinstance(v, numbers.Real)), None)
        raise StrategyError(f"{what} is not numeric (dtype {value.dtype}, e.g. {sample!r}); return numbers (booleans become 0/1)")
    return value.to_numpy(dtype=np.float64, na_value=np.nan)


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except TypeError:  # e.g. naive vs UTC timestamps
        return False


def indicator_table() -> pd.DataFrame:
    """One row per indicator: name, aliases, category, inputs, params (default and range), outputs, lookback, source, doc."""
    rows = []
    for key in sorted(REGISTRY, key=lambda k: (CATEGORIES.index(REGISTRY[k].category), k)):
        d = REGISTRY[key]
        rows.append({
            "name": key, "aliases": ", ".join(a for a, t in ALIASES.items() if t == key), "category": d.category,
            "inputs": ", ".join(d.inputs), "params": ", ".join(p.describe() for p in d.params), "outputs": ", ".join(d.outputs),
            "lookback": d.lookback(), "source": f"TA-Lib {d.talib_name}" if d.talib_name else d.source, "doc": d.doc,
        })
    return pd.DataFrame(rows)


def indicator_markdown() -> str:
    """The registry as a Markdown table (for the README)."""
    table = indicator_table()
    cols = ["name", "category", "inputs", "params", "outputs", "doc"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        name = f"`{r['name']}`" + (f" (alias `{r['aliases']}`)" if r["aliases"] else "")
        lines.append("| " + " | ".join([name] + [str(r[c]) or "-" for c in cols[1:]]) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- TA-Lib-backed indicators
def _talib():
    import talib  # lazily: keeps `import qlab.strategy.indicators` light

    return talib


@lru_cache(maxsize=4096)
def _talib_lookback(function: str, kwargs: tuple) -> int:
    from talib import abstract

    return int(abstract.Function(function, **dict(kwargs)).lookback)


def _p(name: str, default, lo, hi=MAX_PERIOD, doc: str = "") -> Param:
    return Param(name, type(default), default, lo, hi, doc)


def _period(default: int, lo: int = 2, name: str = "period") -> Param:
    return _p(name, default, lo, MAX_PERIOD, "bars in the window")


def _matype(name: str = "matype", default: int = 0) -> Param:
    return _p(name, default, 0, 6, "moving average: 0 SMA, 1 EMA, 2 WMA, 3 DEMA, 4 TEMA, 5 TRIMA, 6 KAMA")


def _ta(name, function, category, inputs, params, doc, *, outputs=("value",), kw=None, picks=None, rules=()):
    """Register TA-Lib's `function`; `kw` maps our parameter names to TA-Lib's, `picks` reorders its outputs."""
    kw = {"period": "timeperiod"} if kw is None else kw

    def talib_kwargs(values: dict) -> dict:
        return {kw.get(k, k): v for k, v in values.items()}

    def run(frame: pd.DataFrame, values: dict) -> list:
        result = getattr(_talib(), function)(*(frame[c].to_numpy() for c in inputs), **talib_kwargs(values))
        result = [result] if isinstance(result, np.ndarray) else list(result)
        return [result[i] for i in picks] if picks else result

    def lookback(**values) -> int:
        return _talib_lookback(function, tuple(sorted(talib_kwargs(values).items())))

    REGISTRY[name] = IndicatorDef(name, category, tuple(inputs), tuple(params), tuple(outputs), doc, run, lookback,
                                  tuple(rules), talib_name=function)


C, HL, HLC, HLCV = ("close",), ("high", "low"), ("high", "low", "close"), ("high", "low", "close", "volume")
_FAST_SLOW = {"fast": "fastperiod", "slow": "slowperiod"}

# trend
for _n, _doc in [("sma", "Simple moving average"), ("ema", "Exponential moving average"), ("wma", "Weighted moving average"),
                 ("dema", "Double exponential moving average"), ("tema", "Triple exponential moving average"),
                 ("trima", "Triangular moving average"), ("kama", "Kaufman adaptive moving average")]:
    _ta(_n, _n.upper(), "trend", C, [_period(30, 1)], _doc)
del _n, _doc
_ta("t3", "T3", "trend", C, [_period(5, 1), _p("vfactor", 0.7, 0.0, 1.0, "volume factor")], "Tillson T3 moving average")
_ta("mama", "MAMA", "trend", C, [_p("fast_limit", 0.5, 0.01, 0.99), _p("slow_limit", 0.05, 0.01, 0.99)],
    "MESA adaptive moving average (mama) and following adaptive MA (fama)", outputs=("mama", "fama"),
    kw={"fast_limit": "fastlimit", "slow_limit": "slowlimit"})
_ta("sar", "SAR", "trend", HL, [_p("acceleration", 0.02, 0.0, 1.0), _p("maximum", 0.2, 0.0, 1.0)], "Parabolic SAR",
    rules=[("acceleration", "<=", "maximum")])
_ta("ht_trendline", "HT_TRENDLINE", "trend", C, [], "Hilbert transform instantaneous trendline")
_ta("adx", "ADX", "trend", HLC, [_period(14)], "Average directional index (trend strength, 0-100)")
_ta("adxr", "ADXR", "trend", HLC, [_period(14)], "Average directional index rating")
_ta("plus_di", "PLUS_DI", "trend", HLC, [_period(14, 1)], "Plus directional indicator (+DI)")
_ta("minus_di", "MINUS_DI", "trend", HLC, [_period(14, 1)], "Minus directional indicator (-DI)")
_ta("aroon", "AROON", "trend", HL, [_period(14)], "Aroon up and down (bars since the high / low, 0-100)",
    outputs=("up", "down"), picks=(1, 0))
_ta("aroonosc", "AROONOSC", "trend", HL, [_period(14)], "Aroon oscillator (up - down)")
_ta("linearreg", "LINEARREG", "trend", C, [_period(14)], "Linear regression end point over the window")
_ta("linearreg_slope", "LINEARREG_SLOPE", "trend", C, [_period(14)], "Linear regression slope over the window")
# momentum
_ta("rsi", "RSI", "momentum", C, [_period(14)], "Relative strength index (0-100)")
_ta("macd", "MACD", "momentum", C, [_period(12, 2, "fast"), _period(26, 2, "slow"), _period(9, 1, "signal")],
    "MACD line, its signal line and histogram", outputs=("macd", "signal", "hist"),
    kw={**_FAST_SLOW, "signal": "signalperiod"}, rules=[("fast", "<", "slow")])
_ta("stoch", "STOCH", "momentum", HLC, [_period(5, 1, "fastk_period"), _period(3, 1, "slowk_period"), _matype("slowk_matype"),
                                        _period(3, 1, "slowd_period"), _matype("slowd_matype")],
    "Slow stochastic oscillator %K and %D (0-100)", outputs=("k", "d"), kw={})
_ta("stochf", "STOCHF", "momentum", HLC, [_period(5, 1, "fastk_period"), _period(3, 1, "fastd_period"), _matype("fastd_matype")],
    "Fast stochastic oscillator %K and %D (0-100)", outputs=("k", "d"), kw={})
_ta("stochrsi", "STOCHRSI", "momentum", C, [_period(14), _period(5, 1, "fastk_period"), _period(3, 1, "fastd_period"),
                                            _matype("fastd_matype")], "Stochastic RSI %K and %D (0-100)", outputs=("k", "d"))
_ta("cci", "CCI", "momentum", HLC, [_period(14)], "Commodity channel index")
_ta("mom", "MOM", "momentum", C, [_period(10, 1)], "Momentum: close - close n bars ago")
_ta("roc", "ROC", "momentum", C, [_period(10, 1)], "Rate of change in percent: 100 * (close / close n bars ago - 1)")
_ta("willr", "WILLR", "momentum", HLC, [_period(14)], "Williams %R (-100-0)")
_ta("ultosc", "ULTOSC", "momentum", HLC, [_period(7, 1, "period1"), _period(14, 1, "period2"), _period(28, 1, "period3")],
    "Ultimate oscillator (0-100)", kw={f"period{i}": f"timeperiod{i}" for i in (1, 2, 3)},
    rules=[("period1", "<", "period2"), ("period2", "<", "period3")])
_ta("cmo", "CMO", "momentum", C, [_period(14)], "Chande momentum oscillator (-100-100)")
_ta("apo", "APO", "momentum", C, [_period(12, 2, "fast"), _period(26, 2, "slow"), _matype(default=1)],
    "Absolute price oscillator: fast MA - slow MA", kw=_FAST_SLOW, rules=[("fast", "<", "slow")])
_ta("ppo", "PPO", "momentum", C, [_period(12, 2, "fast"), _period(26, 2, "slow"), _matype(default=1)],
    "Percentage price oscillator: 100 * (fast MA - slow MA) / slow MA", kw=_FAST_SLOW, rules=[("fast", "<", "slow")])
_ta("returns", "ROCP", "momentum", C, [_period(1, 1)], "Simple return over n bars: (x - x n bars ago) / x n bars ago")
_ta("trix", "TRIX", "momentum", C, [_period(30, 1)], "One-bar rate of change (percent) of a triple-smoothed EMA")
_ta("bop", "BOP", "momentum", ("open", "high", "low", "close"), [], "Balance of power: (close - open) / (high - low)")
# volatility
_ta("atr", "ATR", "volatility", HLC, [_period(14, 1)], "Average true range")
_ta("natr", "NATR", "volatility", HLC, [_period(14, 1)], "Normalised average true range (percent of close)")
_ta("trange", "TRANGE", "volatility", HLC, [], "True range")
_ta("bbands", "BBANDS", "volatility", C, [_period(20), _p("nbdev_up", 2.0, 0.0, 10.0, "standard deviations above"),
                                          _p("nbdev_down", 2.0, 0.0, 10.0, "standard deviations below"), _matype()],
    "Bollinger bands: MA +- n standard deviations", outputs=("upper", "middle", "lower"),
    kw={"period": "timeperiod", "nbdev_up": "nbdevup", "nbdev_down": "nbdevdn"})
_ta("stddev", "STDDEV", "volatility", C, [_period(5), _p("nbdev", 1.0, 0.0, 10.0, "multiplier")],
    "Rolling standard deviation (population) times nbdev")
# volume
_ta("obv", "OBV", "volume", ("close", "volume"), [], "On-balance volume")
_ta("ad", "AD", "volume", HLCV, [], "Chaikin accumulation/distribution line")
_ta("adosc", "ADOSC", "volume", HLCV, [_period(3, 2, "fast"), _period(10, 2, "slow")],
    "Chaikin A/D oscillator: fast EMA - slow EMA of the A/D line", kw=_FAST_SLOW, rules=[("fast", "<", "slow")])
_ta("mfi", "MFI", "volume", HLCV, [_period(14)], "Money flow index (volume-weighted RSI, 0-100)")


# ---------------------------------------------------------------- hand-built indicators (TA-Lib lacks them)
def _builtin(name, category, inputs, params, outputs, doc, lookback):
    def register(f):
        REGISTRY[name] = IndicatorDef(name, category, inputs, tuple(params), outputs, doc, f, lookback, source="qlab")
        return f

    return register


def _nan_if_inf(x: pd.Series) -> np.ndarray:
    out = x.to_numpy(dtype=np.float64, copy=True)
    out[~np.isfinite(out)] = np.nan
    return out


# TA-Lib has no Donchian channel (MAX/MIN exist, but not the three-line channel over high and low).
@_builtin("donchian", "volatility", HL, [_period(20, 1)], ("upper", "middle", "lower"),
          "Donchian channel: highest high, midpoint and lowest low of the last n bars", lambda period: period - 1)
def _donchian(frame, p):
    upper = frame["high"].rolling(p["period"]).max().to_numpy()
    lower = frame["low"].rolling(p["period"]).min().to_numpy()
    return [upper, (upper + lower) / 2, lower]


def _keltner_lookback(period, atr_period, multiplier):
    return max(_talib_lookback("EMA", (("timeperiod", period),)), _talib_lookback("ATR", (("timeperiod", atr_period),)))


# TA-Lib has no Keltner channel; built from its EMA and ATR (ATR bands around an EMA).
@_builtin("keltner", "volatility", HLC, [_period(20, 1), _period(10, 1, "atr_period"), _p("multiplier", 2.0, 0.0, 10.0)],
          ("upper", "middle", "lower"), "Keltner channel: EMA(close) +- multiplier * ATR", _keltner_lookback)
def _keltner(frame, p):
    talib = _talib()
    h, lo, c = (frame[k].to_numpy() for k in HLC)
    middle, atr = talib.EMA(c, timeperiod=p["period"]), talib.ATR(h, lo, c, timeperiod=p["atr_period"])
    middle[: _keltner_lookback(**p)] = np.nan  # every output starts together
    return [middle + p["multiplier"] * atr, middle, middle - p["multiplier"] * atr]


# TA-Lib has no rolling z-score.
@_builtin("zscore", "volatility", C, [_period(20)], ("value",),
          "Rolling z-score: (x - mean) / population std over n bars (NaN when the std is 0)", lambda period: period - 1)
def _zscore(frame, p):
    x = frame["close"]
    roll = x.rolling(p["period"])
    return [_nan_if_inf((x - roll.mean()) / roll.std(ddof=0))]


# TA-Lib has no VWAP; this one is rolling (n bars), not session-anchored.
@_builtin("vwap", "volume", HLCV, [_period(20, 1)], ("value",),
          "Rolling VWAP of the typical price (high + low + close) / 3 over n bars", lambda period: period - 1)
def _vwap(frame, p):
    typical = (frame["high"] + frame["low"] + frame["close"]) / 3
    return [_nan_if_inf((typical * frame["volume"]).rolling(p["period"]).sum() / frame["volume"].rolling(p["period"]).sum())]


# TA-Lib has no log return (ROCR is the ratio, LN the log; one step here, with non-positive prices giving NaN).
@_builtin("log_returns", "momentum", C, [_period(1, 1)], ("value",), "Log return over n bars: ln(x / x n bars ago)",
          lambda period: period)
def _log_returns(frame, p):
    x = frame["close"]
    with np.errstate(divide="ignore", invalid="ignore"):
        return [_nan_if_inf(np.log(x / x.shift(p["period"])))]


# ---------------------------------------------------------------- the ML indicator `ml_proba` (walk-forward, purged)
import qlab.strategy.ml  # noqa: E402, F401  (registers itself; sklearn loads only when it is computed)

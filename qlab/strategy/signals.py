"""Signal blocks: small causal functions from series to true/false series, and their registry.

Convention (every block, no exceptions):
  * the result is a `pd.Series` of dtype bool on the index of its series inputs; never NaN, never text;
  * a bar where an input is missing (NaN) or a window is not yet full is False;
  * `result.attrs["warmup"]` (an int) is the number of leading bars that are False because the history
    they need is missing. A float input brings its count of leading NaN, a boolean input its own
    `attrs["warmup"]` (0 when absent); a block adds the history its window needs (crosses_above +1,
    rising(n) +n, zscore(n) +n-1 ...), capped at the length. Combinations (all_of, any_of, not_) take the
    maximum of their parts, and every result is False on its first `warmup` bars: `not_` and `any_of`
    don't turn "not known yet" into True;
  * a bar's value uses that bar and earlier bars only (no lookahead).

Series inputs must share one index; a float input may also be a number (a constant level), as long
as one input is a series. Bool series are read as 1/0 where numbers are expected. Parameters are
checked against the registry (`SIGNALS[name].params`) on every call, so a block cannot run with a
parameter of the wrong type or out of range.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from qlab.errors import StrategyError, did_you_mean


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))


class SignalParam(NamedTuple):
    """One parameter of a block: (name, kind (int or float), default, min, max)."""

    name: str
    kind: type
    default: float
    min: float
    max: float

    def describe(self) -> str:
        """'n=3 (1..100000)'."""
        return f"{self.name}={_fmt(self.default)} ({_fmt(self.min)}..{_fmt(self.max)})"

    def check(self, value: Any, where: str) -> list[str]:
        """Problems with `value` (wrong type, not finite, out of range) as readable strings; [] when fine."""
        allowed = f"{'a whole number' if self.kind is int else 'a number'} from {_fmt(self.min)} to {_fmt(self.max)}"
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return [f"{where}: expected {allowed}, got {value!r} ({type(value).__name__})"]
        if self.kind is int and not isinstance(value, numbers.Integral):
            fix = f"; write {int(value)}" if math.isfinite(value) and float(value).is_integer() else ""
            return [f"{where}: expected {allowed}, got {value!r}{fix}"]
        if not math.isfinite(value):
            return [f"{where}: expected {allowed}, got {value!r}"]
        if not self.min <= value <= self.max:
            side = "below the minimum " + _fmt(self.min) if value < self.min else "above the maximum " + _fmt(self.max)
            return [f"{where}: {_fmt(value)} is {side}; use {allowed}"]
        return []


@dataclass(frozen=True)
class SignalDef:
    """A registered block: its series inputs ((name, kind) with kind 'float', 'bool' or 'any'), its
    parameters, a one-line doc, and the function. `n_series` counts the series inputs (the minimum
    count when `variadic`, i.e. all_of/any_of take one or more conditions)."""

    name: str
    n_series: int
    params: tuple[SignalParam, ...]
    doc: str
    fn: Callable[..., pd.Series]
    aliases: tuple[str, ...] = ()
    inputs: tuple[tuple[str, str], ...] = ()
    variadic: bool = False

    @property
    def signature(self) -> str:
        """'rising(x, n=3)', 'all_of(cond, ...)'."""
        parts = [n for n, _ in self.inputs] + (["..."] if self.variadic else [])
        parts += [f"{p.name}={_fmt(p.default)}" for p in self.params]
        return f"{self.name}({', '.join(parts)})"

    def bind(self, args: Sequence, kwargs: Mapping[str, Any], where: str = "") -> tuple[list, dict, list[str]]:
        """Match positional and keyword arguments to (series inputs, params); problems as strings.
        Positional arguments fill the inputs, then the parameters in order; missing params are not
        filled in (the function's defaults apply)."""
        loc = f"{where}: " if where else ""
        names = [n for n, _ in self.inputs]
        pnames = [p.name for p in self.params]
        problems: list[str] = []
        if self.variadic:
            inputs, rest = list(args), []
        else:
            inputs, rest = list(args[: len(names)]), list(args[len(names):])
        if len(rest) > len(pnames):
            problems.append(f"{loc}{self.signature} takes at most {len(names) + len(pnames)} arguments, got {len(args)}")
        params = dict(zip(pnames, rest, strict=False))
        given = dict.fromkeys(names[: len(inputs)], True)
        for key, value in kwargs.items():
            if key in names and not self.variadic:
                if key in given:
                    problems.append(f"{loc}{self.name}: input {key!r} is given twice")
                else:
                    inputs.extend([None] * (names.index(key) + 1 - len(inputs)))
                    inputs[names.index(key)] = value
                    given[key] = True
            elif key in pnames:
                if key in params:
                    problems.append(f"{loc}{self.name}: parameter {key!r} is given twice")
                params[key] = value
            else:
                hint = did_you_mean(key, names + pnames) or f" {self.name} takes {self.signature}"
                problems.append(f"{loc}{self.name}: unknown parameter {key!r};{hint}")
        missing = [n for i, n in enumerate(names) if i >= len(inputs) or inputs[i] is None]
        if missing or (self.variadic and not inputs):
            what = ", ".join(missing) if missing else "at least one condition"
            problems.append(f"{loc}{self.name} needs {self.n_series} series argument(s), missing {what}: write {self.signature}")
        return inputs, params, problems


SIGNALS: dict[str, SignalDef] = {}
_ALIASES: dict[str, str] = {}

_N = SignalParam("n", int, 3, 1, 100_000)


def _block(inputs: str, params: tuple[SignalParam, ...] = (), aliases: tuple[str, ...] = (), variadic: bool = False):
    """Register the decorated function as a block; `inputs` like 'a b' or 'cond:bool'."""

    def register(fn):
        ins = tuple((p.partition(":")[0], p.partition(":")[2] or "float") for p in inputs.split())
        doc = (fn.__doc__ or "").strip().splitlines()[0]
        SIGNALS[fn.__name__] = SignalDef(fn.__name__, len(ins), params, doc, fn, aliases, ins, variadic)
        _ALIASES.update(dict.fromkeys(aliases, fn.__name__))
        return fn

    return register


def signal_names() -> list[str]:
    """Every name a block can be called by: canonical names and aliases."""
    return sorted([*SIGNALS, *_ALIASES])


def find_signal(name: str) -> SignalDef | None:
    """The block called `name` (or an alias of it), or None."""
    return SIGNALS.get(_ALIASES.get(name, name))


def get_signal(name: str) -> SignalDef:
    """The block called `name` (or an alias of it); StrategyError with a did-you-mean otherwise."""
    found = find_signal(name)
    if found is None:
        raise StrategyError(f"unknown signal block {name!r};{did_you_mean(name, signal_names()) or ' known blocks: ' + ', '.join(SIGNALS)}")
    return found


def _params(block: str, **values) -> None:
    problems = [m for p in SIGNALS[block].params for m in p.check(values[p.name], f"{block}({p.name})")]
    if problems:
        raise StrategyError("; ".join(problems))


def _lead_nan(a: np.ndarray) -> int:
    ok = ~np.isnan(a)
    return int(ok.argmax()) if ok.any() else len(a)


def value_kind(x) -> str | None:
    """'bool' or 'float' for a series or a number that blocks accept (NaN compares False); None otherwise."""
    if isinstance(x, pd.Series):
        if pd.api.types.is_bool_dtype(x.dtype):
            return "bool"
        numeric = pd.api.types.is_numeric_dtype(x.dtype) and not pd.api.types.is_complex_dtype(x.dtype)
        return "float" if numeric else None
    if isinstance(x, bool | np.bool_):
        return "bool"
    try:
        return "float" if isinstance(x, numbers.Real) and isinstance(float(x), float) else None
    except OverflowError:
        return None


def _prepare(block: str, kinds: str, **operands) -> tuple[pd.Index, list[np.ndarray], int]:
    """Check operands, return (index, float or bool arrays, warm-up of the inputs). kinds: one letter
    per operand, 'f' float (series or number) or 'b' boolean series."""
    index = next((v.index for v in operands.values() if isinstance(v, pd.Series)), None)
    if index is None:
        raise StrategyError(f"{block}: needs at least one series among {', '.join(operands)}; got only numbers")
    first = next(k for k, v in operands.items() if isinstance(v, pd.Series))
    arrays, lead = [], 0
    for (name, x), kind in zip(operands.items(), kinds, strict=True):
        if isinstance(x, pd.Series):
            if x.index is not index and not x.index.equals(index):
                raise StrategyError(f"{block}: series {name!r} has another index than {first!r}; align them first "
                                    "(e.g. .reindex(candles.index))")
            boolean = value_kind(x) == "bool"
            if kind == "b" and not boolean:
                raise StrategyError(f"{block}: {name!r} must be a boolean series (a condition), got dtype {x.dtype}")
            if value_kind(x) is None:
                raise StrategyError(f"{block}: {name!r} must hold numbers or booleans, got dtype {x.dtype}")
            if boolean:
                known = x.notna().to_numpy(dtype=bool)
                a = x.fillna(False).to_numpy(dtype=bool)
                first_known = int(known.argmax()) if known.any() else len(known)
                lead = max(lead, int(x.attrs.get("warmup", 0)), first_known)
                a = a if kind == "b" else a.astype(np.float64)
            else:
                a = x.to_numpy(dtype=np.float64, na_value=np.nan)
                lead = max(lead, _lead_nan(a))
        elif kind == "f" and value_kind(x) is not None:
            a = np.full(len(index), float(x))
        else:
            need = "a boolean series" if kind == "b" else "a series or a number"
            raise StrategyError(f"{block}: {name!r} must be {need}, got {x!r} ({type(x).__name__})")
        arrays.append(a)
    return index, arrays, lead


def _out(index: pd.Index, values: np.ndarray, warmup: int, name: str) -> pd.Series:
    values = np.asarray(values, dtype=bool).copy()
    warmup = int(min(max(warmup, 0), len(values)))
    values[:warmup] = False
    out = pd.Series(values, index=index, name=name, dtype=bool)
    out.attrs["warmup"] = warmup
    return out


def as_signal(x: pd.Series, name: str | None = None) -> pd.Series:
    """A boolean series in the block convention: dtype bool, missing values False, attrs['warmup'] kept
    (or the count of leading missing values)."""
    index, (a,), lead = _prepare("as_signal", "b", cond=x)
    return _out(index, a, lead, name if name is not None else x.name)


def _shift(a: np.ndarray, k: int) -> np.ndarray:
    out = np.full(len(a), np.nan)
    if k < len(a):
        out[k:] = a[: len(a) - k]
    return out


def _runs(flags: np.ndarray, n: int) -> np.ndarray:
    """True where `flags` held on each of the last n bars (this one included)."""
    c = np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])
    out = np.zeros(len(flags), dtype=bool)
    if n <= len(flags):
        out[n - 1:] = (c[n:] - c[:-n]) == n
    return out


def _finite(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return np.where(np.isfinite(a), a, np.nan)


# ---- comparisons and levels -------------------------------------------------------------------

def _compare(block: str, a, b, op, names: tuple[str, str] = ("a", "b")) -> pd.Series:
    index, (x, y), lead = _prepare(block, "ff", **dict(zip(names, (a, b), strict=True)))
    with np.errstate(invalid="ignore"):
        v = op(x, y) & ~np.isnan(x) & ~np.isnan(y)
    return _out(index, v, lead, block)


def _comparison(name: str, op, doc: str, inputs: str = "a b"):
    def fn(a, b) -> pd.Series:
        return _compare(name, a, b, op)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    return _block(inputs)(fn)


_NAN_FALSE = " (series or number on either side; a missing value compares False)"
gt = _comparison("gt", np.greater, "a > b" + _NAN_FALSE)
lt = _comparison("lt", np.less, "a < b" + _NAN_FALSE)
ge = _comparison("ge", np.greater_equal, "a >= b" + _NAN_FALSE)
le = _comparison("le", np.less_equal, "a <= b" + _NAN_FALSE)
eq = _comparison("eq", np.equal, "a == b (booleans count as 1/0; a missing value compares False)", "a:any b:any")
ne = _comparison("ne", np.not_equal, "a != b (booleans count as 1/0; a missing value compares False, not True)", "a:any b:any")


@_block("x level")
def above(x, level) -> pd.Series:
    """x is above level (a series or a number)."""
    return _compare("above", x, level, np.greater, ("x", "level"))


@_block("x level")
def below(x, level) -> pd.Series:
    """x is below level (a series or a number)."""
    return _compare("below", x, level, np.less, ("x", "level"))


@_block("x lo hi")
def between(x, lo, hi) -> pd.Series:
    """lo <= x <= hi (bounds are series or numbers; False where lo > hi)."""
    index, (v, a, b), lead = _prepare("between", "fff", x=x, lo=lo, hi=hi)
    with np.errstate(invalid="ignore"):
        return _out(index, (v >= a) & (v <= b), lead, "between")


@_block("x level", (SignalParam("pct", float, 1.0, 0, 100),), aliases=("within",))
def near(x, level, pct: float = 1.0) -> pd.Series:
    """x is within pct % of level: |x - level| <= pct/100 * |level|."""
    _params("near", pct=pct)
    index, (v, lv), lead = _prepare("near", "ff", x=x, level=level)
    with np.errstate(invalid="ignore"):
        return _out(index, np.abs(v - lv) <= pct / 100 * np.abs(lv), lead, "near")


# ---- crossings, trends, breakouts --------------------------------------------------------------

@_block("a b", aliases=("crossover",))
def crosses_above(a, b) -> pd.Series:
    """a moves above b: a <= b on the previous bar and a > b on this bar."""
    index, (x, y), lead = _prepare("crosses_above", "ff", a=a, b=b)
    with np.errstate(invalid="ignore"):
        return _out(index, (x > y) & (_shift(x, 1) <= _shift(y, 1)), lead + 1, "crosses_above")


@_block("a b", aliases=("crossunder",))
def crosses_below(a, b) -> pd.Series:
    """a moves below b: a >= b on the previous bar and a < b on this bar."""
    index, (x, y), lead = _prepare("crosses_below", "ff", a=a, b=b)
    with np.errstate(invalid="ignore"):
        return _out(index, (x < y) & (_shift(x, 1) >= _shift(y, 1)), lead + 1, "crosses_below")


def _on_x(block: str, x, compute, offset: int = 0, **params) -> pd.Series:
    """The body of the one-series blocks: check params, read x, compute, warm-up = lead + n + offset."""
    _params(block, **params)
    index, (v,), lead = _prepare(block, "f", x=x)
    with np.errstate(all="ignore"):
        return _out(index, compute(v), lead + params["n"] + offset, block)


@_block("x", (_N,))
def rising(x, n: int = 3) -> pd.Series:
    """x rose on each of the last n bars (strictly: x[t] > x[t-1], n times in a row)."""
    return _on_x("rising", x, lambda v: _runs(v > _shift(v, 1), n), n=n)


@_block("x", (_N,))
def falling(x, n: int = 3) -> pd.Series:
    """x fell on each of the last n bars (strictly: x[t] < x[t-1], n times in a row)."""
    return _on_x("falling", x, lambda v: _runs(v < _shift(v, 1), n), n=n)


def _prev(v: np.ndarray, n: int, how: str) -> np.ndarray:
    roll = pd.Series(v).rolling(n, min_periods=n)
    return _shift((roll.max() if how == "max" else roll.min()).to_numpy(), 1)


_N20 = SignalParam("n", int, 20, 1, 100_000)


@_block("x", (_N20,))
def breakout_high(x, n: int = 20) -> pd.Series:
    """x is above the highest value of the previous n bars."""
    return _on_x("breakout_high", x, lambda v: v > _prev(v, n, "max"), n=n)


@_block("x", (_N20,))
def breakout_low(x, n: int = 20) -> pd.Series:
    """x is below the lowest value of the previous n bars."""
    return _on_x("breakout_low", x, lambda v: v < _prev(v, n, "min"), n=n)


def _pct_change(v: np.ndarray, n: int) -> np.ndarray:
    return _finite((v / _shift(v, n) - 1.0) * 100.0)


_PCT = (SignalParam("n", int, 1, 1, 100_000), SignalParam("pct", float, 0.0, -100, 1_000_000))


@_block("x", _PCT)
def pct_change_above(x, n: int = 1, pct: float = 0.0) -> pd.Series:
    """x changed by more than pct % over the last n bars (pct may be negative)."""
    return _on_x("pct_change_above", x, lambda v: _pct_change(v, n) > pct, n=n, pct=pct)


@_block("x", _PCT)
def pct_change_below(x, n: int = 1, pct: float = 0.0) -> pd.Series:
    """x changed by less than pct % over the last n bars (e.g. pct=-5: fell more than 5 %)."""
    return _on_x("pct_change_below", x, lambda v: _pct_change(v, n) < pct, n=n, pct=pct)


def zscore(x: pd.Series | np.ndarray, n: int) -> np.ndarray:
    """(x - mean) / std over the last n bars (this one included; population std); NaN for a flat window."""
    v = np.asarray(x, dtype=np.float64)
    roll = pd.Series(v).rolling(n, min_periods=n)
    mean, std = roll.mean().to_numpy(), roll.std(ddof=0).to_numpy()
    with np.errstate(all="ignore"):
        std = np.where(std > 1e-12 * np.maximum(np.abs(mean), 1e-300), std, np.nan)
        return _finite((v - mean) / std)


_ZN = SignalParam("n", int, 20, 2, 100_000)


@_block("x", (_ZN, SignalParam("k", float, 2.0, -100, 100)))
def zscore_above(x, n: int = 20, k: float = 2.0) -> pd.Series:
    """The z-score of x over the last n bars (this one included) is above k."""
    return _on_x("zscore_above", x, lambda v: zscore(v, n) > k, -1, n=n, k=k)


@_block("x", (_ZN, SignalParam("k", float, -2.0, -100, 100)))
def zscore_below(x, n: int = 20, k: float = -2.0) -> pd.Series:
    """The z-score of x over the last n bars (this one included) is below k (e.g. k=-2)."""
    return _on_x("zscore_below", x, lambda v: zscore(v, n) < k, -1, n=n, k=k)


# ---- conditions over time and logic ------------------------------------------------------------

@_block("cond:bool", (SignalParam("n", int, 2, 1, 100_000),))
def confirmed(cond, n: int = 2) -> pd.Series:
    """cond has been true on each of the last n bars (this one included)."""
    _params("confirmed", n=n)
    index, (c,), lead = _prepare("confirmed", "b", cond=cond)
    return _out(index, _runs(c, n), lead + n - 1, "confirmed")


@_block("cond:bool", (SignalParam("n", int, 5, 1, 100_000),))
def cooldown(cond, n: int = 5) -> pd.Series:
    """cond, except that a True suppresses further Trues for the next n bars."""
    _params("cooldown", n=n)
    index, (c,), lead = _prepare("cooldown", "b", cond=cond)
    c = c.copy()
    c[: min(lead, len(c))] = False
    out, last = np.zeros(len(c), dtype=bool), -n - 1
    for i in np.flatnonzero(c):
        if i - last > n:
            out[i], last = True, i
    return _out(index, out, lead, "cooldown")


def _logic(block: str, conds: tuple, reduce) -> pd.Series:
    if not conds:
        raise StrategyError(f"{block}: needs at least one condition")
    index, arrays, lead = _prepare(block, "b" * len(conds), **{f"cond{i + 1}": c for i, c in enumerate(conds)})
    return _out(index, reduce(np.vstack(arrays), axis=0), lead, block)


@_block("cond:bool", variadic=True, aliases=("and_",))
def all_of(*conds) -> pd.Series:
    """Every condition is true (and)."""
    return _logic("all_of", conds, np.all)


@_block("cond:bool", variadic=True, aliases=("or_",))
def any_of(*conds) -> pd.Series:
    """At least one condition is true (or); False while any part is still warming up."""
    return _logic("any_of", conds, np.any)


@_block("cond:bool")
def not_(cond) -> pd.Series:
    """cond is false (and stays False while cond is still warming up)."""
    index, (c,), lead = _prepare("not_", "b", cond=cond)
    return _out(index, ~c, lead, "not_")


# ---- the table for the README --------------------------------------------------------------------

def signal_table() -> pd.DataFrame:
    """One row per block: name, aliases, series arguments, parameters (default and range), doc."""
    rows = [{"name": d.name, "aliases": ", ".join(d.aliases),
             "args": ", ".join(n + (":bool" if k == "bool" else "") for n, k in d.inputs) + (", ..." if d.variadic else ""),
             "params": ", ".join(p.describe() for p in d.params), "doc": d.doc} for d in SIGNALS.values()]
    return pd.DataFrame(rows, columns=["name", "aliases", "args", "params", "doc"])


def signal_markdown() -> str:
    """The signal table as a Markdown table."""
    lines = ["| block | aliases | series | params | what it means |", "|---|---|---|---|---|"]
    for r in signal_table().itertuples(index=False):
        cells = [f"`{r.name}`", r.aliases, r.args, r.params, r.doc.replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

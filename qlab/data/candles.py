"""Candles: the OHLCV frame every layer passes around, its timeframes, and its validator.

A `Candles` frame has a UTC `DatetimeIndex` named `timestamp` (bar open time, sorted, unique)
and float64 columns `open high low close volume` with high >= max(open, close),
low <= min(open, close) and volume >= 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from qlab.errors import DataError, NotFoundError, did_you_mean

Candles = pd.DataFrame  # a type alias: the checks live in validate_candles, not in a subclass
OHLCV = ("open", "high", "low", "close", "volume")

TIMEFRAMES: dict[str, pd.Timedelta] = {
    tf: pd.Timedelta(spec)
    for tf, spec in {
        "1m": "1min", "3m": "3min", "5m": "5min", "15m": "15min", "30m": "30min",
        "1h": "1h", "2h": "2h", "4h": "4h", "6h": "6h", "8h": "8h", "12h": "12h",
        "1d": "1D", "3d": "3D", "1w": "7D",
    }.items()
}


def timeframe_delta(timeframe: str) -> pd.Timedelta:
    """The bar length of a ccxt-style timeframe such as '5m' or '1h'."""
    try:
        return TIMEFRAMES[timeframe]
    except (KeyError, TypeError):
        raise NotFoundError(
            f"unknown timeframe {timeframe!r}; use one of {', '.join(TIMEFRAMES)}."
            + did_you_mean(str(timeframe), TIMEFRAMES)
        ) from None


def bars_per_year(timeframe: str) -> float:
    """How many bars of this timeframe a 365-day year holds (crypto trades every day)."""
    return pd.Timedelta(days=365) / timeframe_delta(timeframe)


def timeframe_name(delta: pd.Timedelta) -> str | None:
    """The timeframe name for a bar length, or None when it is not a standard one."""
    for name, value in TIMEFRAMES.items():
        if value == delta:
            return name
    return None


def infer_timeframe(index: pd.DatetimeIndex) -> str:
    """The timeframe of an index from its most common spacing."""
    if len(index) < 2:
        raise DataError("cannot infer a timeframe from fewer than 2 bars; pass timeframe=... explicitly")
    diffs = np.diff(index.asi8)
    values, counts = np.unique(diffs, return_counts=True)
    step = pd.Timedelta(int(values[np.argmax(counts)]), unit=_unit(index))
    name = timeframe_name(step)
    if name is None:
        raise DataError(f"bars are spaced {step} apart, which is no standard timeframe; use one of {', '.join(TIMEFRAMES)}")
    return name


def _unit(index: pd.DatetimeIndex) -> str:
    return np.datetime_data(index.dtype.base if hasattr(index.dtype, "base") else index.dtype)[0]


def _stamp(index: pd.DatetimeIndex, i: int) -> str:
    return index[i].strftime("%Y-%m-%d %H:%M UTC")


def _at(index: pd.DatetimeIndex, i: int, where: str) -> str:
    """'row 24 (2018-01-10 06:50 UTC) of where', with rows counted from 1."""
    return f"row {i + 1} ({_stamp(index, i)}) of {where}"


def _parse_timestamps(raw: pd.Series | pd.Index, where: str) -> pd.DatetimeIndex:
    """Timestamps from ISO strings, datetimes or epoch milliseconds, as UTC nanoseconds."""
    values = pd.Series(raw).reset_index(drop=True)
    if values.isna().any():
        i = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise DataError(f"column 'timestamp' is empty at row {i + 1} of {where}; fill it or remove the row")
    try:
        if pd.api.types.is_numeric_dtype(values):
            parsed = pd.to_datetime(values.astype("int64"), unit="ms", utc=True)
        else:
            parsed = pd.to_datetime(values, utc=True, format="ISO8601")
    except (ValueError, TypeError, OverflowError):
        bad = _first_unparseable(values)
        raise DataError(
            f"column 'timestamp' cannot be parsed at row {bad + 1} of {where}: {values.iloc[bad]!r}; "
            "use ISO-8601 UTC times like 2023-01-02T00:00:00Z or epoch milliseconds"
        ) from None
    return pd.DatetimeIndex(parsed, name="timestamp").as_unit("ns")


def _first_unparseable(values: pd.Series) -> int:
    for i, v in enumerate(values):
        try:
            pd.Timestamp(v)
        except (ValueError, TypeError, OverflowError):
            return i
    return 0


def to_candles(
    frame: pd.DataFrame,
    timeframe: str | None = None,
    *,
    drop_invalid: bool = False,
    validate: bool = True,
    where: str = "the candles",
) -> Candles:
    """Normalise a frame with a timestamp column or index into validated `Candles`.

    Extra columns are dropped. With `drop_invalid=True`, rows that break an OHLCV rule
    (NaN or non-positive price, high < low, negative volume, duplicate timestamp) are removed
    and counted in `result.attrs["dropped_rows"]` instead of raising. `validate=False` only parses
    (for the quality report, which describes broken rows rather than rejecting them).
    """
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"expected a pandas DataFrame for {where}, got {type(frame).__name__}")
    df = frame.rename(columns=str.lower)
    missing = [c for c in OHLCV if c not in df.columns]
    if missing:
        raise DataError(
            f"{where} lacks column(s) {', '.join(repr(c) for c in missing)}; "
            f"it has {list(df.columns)}; rename them to timestamp, open, high, low, close, volume"
        )
    if "timestamp" in df.columns:
        index = _parse_timestamps(df["timestamp"], where)
    elif isinstance(df.index, pd.DatetimeIndex):
        index = df.index.tz_localize("UTC") if df.index.tz is None else df.index.tz_convert("UTC")
        index = pd.DatetimeIndex(index, name="timestamp").as_unit("ns")
    else:
        raise DataError(f"{where} has no 'timestamp' column and no DatetimeIndex; add the bar open time as 'timestamp'")
    out = pd.DataFrame(index=index)
    for col in OHLCV:
        values = pd.to_numeric(df[col].reset_index(drop=True), errors="coerce").to_numpy(dtype="float64")
        bad = np.isnan(values) & ~pd.isna(df[col]).to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"column {col!r} is not a number at {_at(index, i, where)}: {df[col].iloc[i]!r}; fix the source")
        out[col] = values
    dropped = 0
    if not validate:
        return out
    if drop_invalid:
        order = np.argsort(out.index.asi8, kind="stable")
        out = out.iloc[order]
        keep = ~out.index.duplicated(keep="last") & (_row_problems(out) == 0)
        dropped = int((~keep).sum())
        out = out[keep]
    validate_candles(out, timeframe, where=where)
    out.attrs["dropped_rows"] = dropped
    return out


_PROBLEMS = ("", "volume", "high", "low", "high<low", "price", "nan")


def _row_problems(df: pd.DataFrame) -> np.ndarray:
    """Per row, the index into _PROBLEMS of the most basic OHLCV rule it breaks (0 when none)."""
    o, h, lo, c, v = (df[k].to_numpy() for k in OHLCV)
    problems = np.zeros(len(df), dtype=np.int8)
    with np.errstate(invalid="ignore"):
        checks = [
            ~(v >= 0),
            h < np.fmax(o, c),
            lo > np.fmin(o, c),
            h < lo,
            ~(np.minimum(np.minimum(o, h), np.minimum(lo, c)) > 0),
            np.isnan(o) | np.isnan(h) | np.isnan(lo) | np.isnan(c),
        ]
    for code, mask in enumerate(checks, start=1):  # later checks win, so the most basic problem is reported
        problems[mask] = code
    return problems


def validate_candles(candles: pd.DataFrame, timeframe: str | None = None, *, where: str = "the candles") -> Candles:
    """Check every Candles rule and return the frame unchanged; raise DataError naming the first break."""
    if not isinstance(candles, pd.DataFrame):
        raise DataError(f"expected a Candles DataFrame for {where}, got {type(candles).__name__}")
    missing = [c for c in OHLCV if c not in candles.columns]
    if missing:
        raise DataError(f"{where} lacks column(s) {', '.join(map(repr, missing))}; Candles need {', '.join(OHLCV)}")
    index = candles.index
    if not isinstance(index, pd.DatetimeIndex) or index.tz is None or str(index.tz) != "UTC":
        raise DataError(f"{where} needs a UTC DatetimeIndex; use qlab.data.candles.to_candles(frame) to convert it")
    if len(candles) == 0:
        raise DataError(f"{where} is empty; check the symbol, timeframe and date range you asked for")
    for col in OHLCV:
        if candles[col].dtype != np.float64:
            raise DataError(f"column {col!r} of {where} is {candles[col].dtype}, not float64; use to_candles(frame)")
    stamps = index.asi8
    steps = np.diff(stamps)
    if (steps < 0).any():
        i = int(np.flatnonzero(steps < 0)[0]) + 1
        raise DataError(f"timestamps are not sorted at {_at(index, i, where)}; sort by timestamp first (df.sort_index())")
    if (steps == 0).any():
        i = int(np.flatnonzero(steps == 0)[0]) + 1
        raise DataError(
            f"duplicate timestamp at {_at(index, i, where)}; keep one row per bar "
            "(df[~df.index.duplicated(keep='last')]) or import with drop_invalid=True"
        )
    problems = _row_problems(candles)
    bad = np.flatnonzero(problems)
    if len(bad):
        i = int(bad[0])
        row = candles.iloc[i]
        detail = {
            "nan": ("a price is NaN", "fill the bar from the source or drop the row"),
            "price": ("a price is zero or negative", "fix the source or drop the row"),
            "high<low": (f"high < low: high={row.high:.10g}, low={row.low:.10g}", "fix the source"),
            "high": (f"high={row.high:.10g} is below max(open={row.open:.10g}, close={row.close:.10g})", "fix the source"),
            "low": (f"low={row.low:.10g} is above min(open={row.open:.10g}, close={row.close:.10g})", "fix the source"),
            "volume": (f"volume is {row.volume!r} (must be a number >= 0)", "fix the source"),
        }[_PROBLEMS[problems[i]]]
        label = _PROBLEMS[problems[i]]
        column = {"high<low": "high", "nan": "open/high/low/close", "price": "open/high/low/close"}.get(label, label)
        raise DataError(
            f"column {column!r}: {detail[0]} at {_at(index, i, where)} ({len(bad)} such row(s) in all); "
            f"{detail[1]}, or import with drop_invalid=True to skip such rows"
        )
    if timeframe is not None:
        _check_spacing(index, timeframe, where)
    return candles


def _check_spacing(index: pd.DatetimeIndex, timeframe: str, where: str) -> None:
    """Every step is a whole number of bars, and the usual step is one bar."""
    step = timeframe_delta(timeframe).value
    steps = np.diff(index.as_unit("ns").asi8)
    if len(steps) == 0:
        return
    if (steps == step).all():  # the common case: no gaps
        return
    off = np.flatnonzero(steps % step != 0)
    usual = pd.Timedelta(int(np.median(steps)))
    if len(off) or usual.value != step:
        guess = timeframe_name(usual)
        hint = f"; did you mean timeframe={guess!r}?" if guess and guess != timeframe else ""
        if len(off):
            i = int(off[0]) + 1
            raise DataError(
                f"timeframe {timeframe!r} does not match the spacing at {_at(index, i, where)}: "
                f"{pd.Timedelta(int(steps[i - 1]))} after the previous bar{hint or '; check the file and the timeframe'}"
            )
        raise DataError(
            f"timeframe {timeframe!r} does not match the data of {where}: bars are usually {usual} apart{hint}"
        )


def read_csv(path: str | Path, timeframe: str | None = None, *, drop_invalid: bool = False, validate: bool = True) -> Candles:
    """Read and validate a candles CSV (timestamp, open, high, low, close, volume)."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"no such file {str(path)!r}; check the path")
    try:
        raw = pd.read_csv(path, dtype={"timestamp": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path.name} is not a readable CSV ({exc}); expected a header row timestamp,open,high,low,close,volume") from None
    return to_candles(raw, timeframe, drop_invalid=drop_invalid, validate=validate, where=path.name)


def resample_candles(candles: Candles, timeframe: str, *, complete_only: bool = False, source_timeframe: str | None = None) -> Candles:
    """Aggregate to a higher timeframe: open=first, high=max, low=min, close=last, volume=sum.

    Buckets are left-labelled on the UTC epoch grid. With `complete_only=True` a bucket is kept only
    when it holds every lower-timeframe bar (needs `source_timeframe` or an inferable one).
    """
    validate_candles(candles)
    target = timeframe_delta(timeframe)
    grouped = candles.resample(target, label="left", closed="left", origin="epoch")
    out = grouped.agg({"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"})
    counts = grouped["close"].count()
    out = out[counts > 0]
    if complete_only:
        src = timeframe_delta(source_timeframe or infer_timeframe(candles.index))
        if target % src != pd.Timedelta(0) or target < src:
            raise DataError(f"cannot resample {timeframe_name(src)} bars to {timeframe!r}: it is not a whole multiple")
        out = out[counts[counts > 0] == target // src]
    out.index = pd.DatetimeIndex(out.index, name="timestamp").as_unit("ns")
    return out.astype("float64")

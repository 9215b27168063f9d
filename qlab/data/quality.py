"""Data quality of a candles frame: gaps, duplicates, broken bars, anomalies, accuracy, timeliness, one score.

`quality_report(candles, "5m")` describes a frame as it is, raw or validated: unsorted rows, repeated
timestamps, NaNs and high < low are reported, not raised. The time-series parts (gaps, anomalies,
accuracy) run on a sorted copy with one row per timestamp (the last one, as `to_candles` keeps).
`gap_table(index, "5m")` is the gap logic on its own, for the store and sync.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from qlab.data.candles import OHLCV, timeframe_delta
from qlab.errors import ConfigError, DataError

ANOMALY_KINDS = ("return_outlier", "volume_outlier", "spike_reversal", "zero_volume_run", "stale_price")
WEIGHTS = {"completeness": 30.0, "validity": 30.0, "anomalies": 20.0, "accuracy": 10.0, "timeliness": 10.0}
# A component is 100 * 0.5 ** (rate / HALF): the rate of problems at which it falls to 50.
HALF = {"completeness": 20.0, "validity": 1.0, "anomalies": 10.0, "accuracy": 10.0, "timeliness": 5.0}
MIN_ZERO_VOLUME_RUN, MIN_STALE_RUN = 3, 5
SPIKE_REVERSAL = 2 / 3  # the next bar takes back at least this share of the jump
MAX_VRECTS = 1000


def _half_score(rate: float, half: float) -> float:
    return float(100.0 * 0.5 ** (max(float(rate), 0.0) / half))


def _utc_ns(index: Any) -> pd.DatetimeIndex:
    index = pd.DatetimeIndex(index)
    if index.tz is None:
        raise DataError("the timestamps have no time zone; qlab uses UTC bar open times: use index.tz_localize('UTC')")
    return index.tz_convert("UTC").as_unit("ns")


def _empty(columns: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in columns.items()})


def gap_table(index: Any, timeframe: str) -> pd.DataFrame:
    """One row per run of missing bars between the first and last bar of `index`.

    Columns: start and end (open time of the first and last missing bar, UTC) and missing_bars.
    The index may be unsorted or hold duplicates. A bar that is off the timeframe grid counts the
    whole bars that fit before it as missing.
    """
    step = timeframe_delta(timeframe).value
    stamps = np.unique(_utc_ns(index).asi8)
    steps = np.diff(stamps)
    at = np.flatnonzero(steps > step)
    missing = (steps[at] - 1) // step
    start = stamps[at] + step
    end = stamps[at] + missing * step
    out = pd.DataFrame({
        "start": pd.to_datetime(start, utc=True).as_unit("ns"),
        "end": pd.to_datetime(end, utc=True).as_unit("ns"),
        "missing_bars": missing.astype("int64"),
    })
    return out


@dataclass(frozen=True, eq=False)
class QualityReport:
    """What `quality_report` found; tables are DataFrames, the rest plain numbers.

    score = weighted mean of the present components, weights completeness 30, validity 30,
    anomalies 20, accuracy 10 (only with a reference), timeliness 10 (only with `now`).
    Each component is 100 * 0.5 ** (rate / half), so it falls as problems grow and never rises:
    - completeness: missing bars per 1000 expected bars, half 20 (2 % missing gives 50);
    - validity: rows with an OHLC violation plus surplus duplicate rows, per 1000 rows, half 1;
    - anomalies: anomalous bars (outliers and spikes 1 each, runs their length) per 1000 bars, half 10;
    - accuracy: disagreeing bars per 1000 shared bars, half 10;
    - timeliness: bars of lag behind the last complete bar, half 5.

    anomalies (timestamp, kind, value, score): return_outlier (value: log return, score: robust z),
    volume_outlier (volume bursts only; value: volume, score: z of log1p volume), spike_reversal (a
    return outlier whose next bar takes back >= 2/3 of it; reported instead of the two return outliers),
    zero_volume_run (>= 3 bars of volume 0) and stale_price (>= 5 bars with open=high=low=close=previous
    close), one row per run at its first bar, value and score = run length. Runs count consecutive rows.
    accuracy: common_bars, only_here, only_in_reference, mean_close_bps, max_close_bps (|x - ref| / ref),
    tolerance_bps and `disagreements` (bars with close, high or low beyond the tolerance, or NaN).
    """

    timeframe: str
    rows: int
    bars: int
    first: pd.Timestamp
    last: pd.Timestamp
    gaps: pd.DataFrame
    duplicates: pd.DataFrame
    ohlc_violations: pd.DataFrame
    invalid_rows: int
    completeness: float
    timeliness: dict
    accuracy: dict | None
    anomalies: pd.DataFrame
    components: dict
    score: float
    _close: pd.Series = field(repr=False, default=None)

    def anomaly_counts(self) -> dict[str, int]:
        counts = self.anomalies["kind"].value_counts()
        return {kind: int(counts.get(kind, 0)) for kind in ANOMALY_KINDS}

    def summary(self) -> dict:
        """Plain JSON-able numbers, for reports and SOURCES.md."""
        acc = None
        if self.accuracy is not None:
            acc = {k: (None if v is None else float(v) if isinstance(v, float) else v)
                   for k, v in self.accuracy.items() if k != "disagreements"}
            acc["disagreements"] = len(self.accuracy["disagreements"])
        tl = self.timeliness
        return {
            "timeframe": self.timeframe,
            "rows": self.rows,
            "bars": self.bars,
            "first": self.first.isoformat(),
            "last": self.last.isoformat(),
            "missing_bars": int(self.gaps["missing_bars"].sum()),
            "gap_runs": len(self.gaps),
            "longest_gap": int(self.gaps["missing_bars"].max()) if len(self.gaps) else 0,
            "completeness": round(self.completeness, 4),
            "duplicate_timestamps": len(self.duplicates),
            "ohlc_violations": len(self.ohlc_violations),
            "invalid_rows": self.invalid_rows,
            "anomalies": self.anomaly_counts(),
            "accuracy": acc,
            "timeliness": {
                "last_bar": tl["last_bar"].isoformat(),
                "expected_last_bar": None if tl["expected_last_bar"] is None else tl["expected_last_bar"].isoformat(),
                "lag_bars": tl["lag_bars"],
            },
            "components": {k: round(v, 2) for k, v in self.components.items()},
            "score": round(self.score, 2),
        }

    def table(self) -> pd.DataFrame:
        """One row per metric: name, value, detail."""
        rows: list[tuple[str, Any, str]] = []
        add = rows.append
        fmt = "%Y-%m-%d %H:%M"
        add(("rows", self.rows, f"{self.bars} distinct bars of {self.timeframe}, {self.first:{fmt}} → {self.last:{fmt}} UTC"))
        g = self.gaps
        longest = "" if g.empty else g.loc[g["missing_bars"].idxmax()]
        add(("missing_bars", int(g["missing_bars"].sum()),
             f"{len(g)} run(s)" + ("" if g.empty else f"; longest {longest['missing_bars']} from {longest['start']:{fmt}}")))
        add(("completeness", round(self.completeness, 4), "% of expected bars present between the first and last bar"))
        d = self.duplicates
        add(("duplicate_timestamps", len(d), "" if d.empty else f"{int((~d['identical']).sum())} with differing rows"))
        v = self.ohlc_violations
        add(("ohlc_violations", len(v), ", ".join(f"{k}: {n}" for k, n in v["problem"].value_counts().items())))
        for kind, n in self.anomaly_counts().items():
            add((kind, n, ""))
        if self.accuracy is not None:
            a = self.accuracy
            mean, top = (None if x is None else round(x, 2) for x in (a["mean_close_bps"], a["max_close_bps"]))
            add(("accuracy", a["common_bars"], f"shared bars; close deviation mean {mean} bps, max {top} bps; "
                 f"{len(a['disagreements'])} bar(s) beyond {a['tolerance_bps']:g} bps"))
        t = self.timeliness
        expected = t["expected_last_bar"]
        add(("lag_bars", t["lag_bars"], f"last bar {t['last_bar']:{fmt}}"
             + ("; historical data (no now given)" if expected is None else f", expected {expected:{fmt}}")))
        for name, value in self.components.items():
            add((f"score.{name}", round(value, 2), f"weight {WEIGHTS[name]:g}"))
        add(("score", round(self.score, 2), "weighted mean of the components, 0..100"))
        return pd.DataFrame(rows, columns=["name", "value", "detail"])

    def _repr_html_(self) -> str:
        return self.table().to_html(index=False)

    def figure(self, candles: pd.DataFrame | None = None):
        """Close price with gaps shaded and anomalies marked, beside a bar chart of the components."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        close = self._close if candles is None else _clean(_checked(candles))["close"]
        fig = make_subplots(rows=1, cols=2, column_widths=[0.82, 0.18], horizontal_spacing=0.06)
        fig.add_trace(go.Scattergl(x=close.index, y=close.to_numpy(), mode="lines", name="close"), row=1, col=1)
        step = timeframe_delta(self.timeframe)
        for start, end in self.gaps[["start", "end"]].head(MAX_VRECTS).itertuples(index=False):
            fig.add_vrect(x0=start, x1=end + step, fillcolor="red", opacity=0.2, line_width=0, row=1, col=1)
        an = self.anomalies
        y = close.reindex(an["timestamp"]).to_numpy()
        fig.add_trace(go.Scatter(x=an["timestamp"], y=y, mode="markers", name="anomalies",
                                 text=an["kind"], marker={"symbol": "x", "size": 9, "color": "orange"}), row=1, col=1)
        comps = list(self.components)
        fig.add_trace(go.Bar(x=comps, y=[self.components[c] for c in comps], name="components"), row=1, col=2)
        fig.update_yaxes(range=[0, 100], row=1, col=2)
        capped = f" (first {MAX_VRECTS} of {len(self.gaps)} gaps shaded)" if len(self.gaps) > MAX_VRECTS else ""
        fig.update_layout(title=f"quality {self.timeframe}: score {self.score:.1f}{capped}", showlegend=True)
        return fig


def _checked(candles: Any) -> pd.DataFrame:
    if not isinstance(candles, pd.DataFrame):
        raise DataError(f"expected a candles DataFrame, got {type(candles).__name__}")
    df = candles.rename(columns=lambda c: str(c).lower())
    missing = [c for c in OHLCV if c not in df.columns]
    if missing:
        raise DataError(f"the candles lack column(s) {', '.join(map(repr, missing))}; they have {list(candles.columns)}; "
                        f"rename them to {', '.join(OHLCV)}")
    if not isinstance(df.index, pd.DatetimeIndex):
        raise DataError("the candles have no DatetimeIndex; index them by bar open time with qlab.data.candles.to_candles(frame)")
    if len(df) == 0:
        raise DataError("the candles are empty; check the symbol, timeframe and date range you asked for")
    out = pd.DataFrame({c: pd.to_numeric(df[c], errors="coerce").astype("float64").to_numpy() for c in OHLCV},
                       index=_utc_ns(df.index).rename("timestamp"))
    return out


def _clean(raw: pd.DataFrame) -> pd.DataFrame:
    """Sorted, one row per timestamp (the last)."""
    df = raw.iloc[np.argsort(raw.index.asi8, kind="stable")]
    return df[~df.index.duplicated(keep="last")]


def _duplicates(raw: pd.DataFrame) -> pd.DataFrame:
    dup = raw[raw.index.duplicated(keep=False)]
    if dup.empty:
        return _empty({"timestamp": "datetime64[ns, UTC]", "count": "int64", "identical": "bool"})
    g = dup.groupby(level=0)
    same = g.nunique(dropna=False).max(axis=1) == 1
    return pd.DataFrame({"timestamp": same.index, "count": g.size().to_numpy().astype("int64"), "identical": same.to_numpy()})


def _violations(raw: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    o, h, lo, c, v = (raw[k].to_numpy() for k in OHLCV)
    with np.errstate(invalid="ignore"):
        prices = np.stack([o, h, lo, c])
        checks = [
            (h < np.maximum(o, c), "high < max(open, close)"),
            (lo > np.minimum(o, c), "low > min(open, close)"),
            (h < lo, "high < low"),
            (np.isnan(prices).any(axis=0), "NaN price"),
            ((prices <= 0).any(axis=0), "non-positive price"),
            (v < 0, "negative volume"),
            (np.isnan(v), "NaN volume"),
        ]
    pos = np.concatenate([np.flatnonzero(m) for m, _ in checks])
    labels = np.concatenate([np.full(int(m.sum()), label, dtype=object) for m, label in checks])
    order = np.lexsort((pos, raw.index.asi8[pos]))
    out = pd.DataFrame({"timestamp": raw.index[pos[order]], "problem": labels[order]})
    return out.reset_index(drop=True), len(np.unique(pos))


def _robust_z(x: np.ndarray, window: int, min_periods: int) -> np.ndarray:
    """(x[i] - median) / (1.4826 MAD) over the `window` values before i; NaN where it cannot be told.

    A window with MAD 0 falls back to 1.2533 x the mean absolute deviation; a constant window gives NaN.
    """
    n = len(x)
    med = np.full(n, np.nan)
    mad = np.full(n, np.nan)
    alt = np.full(n, np.nan)
    for i in range(min_periods, min(window, n)):  # the short windows at the start
        w = x[:i]
        med[i] = np.median(w)
        dev = np.abs(w - med[i])
        mad[i], alt[i] = np.median(dev), dev.mean()
    if n > window:
        med[window:] = pd.Series(x).rolling(window).median().to_numpy()[window - 1:-1]
        win = sliding_window_view(x[:-1], window)
        k, chunk = (window - 1) // 2, 8192
        for s in range(0, len(win), chunk):
            dev = np.abs(win[s:s + chunk] - med[window + s:window + s + chunk, None])
            alt[window + s:window + s + len(dev)] = dev.mean(axis=1)
            if window % 2:
                mad[window + s:window + s + len(dev)] = np.partition(dev, k, axis=1)[:, k]
            else:
                part = np.partition(dev, (k, k + 1), axis=1)
                mad[window + s:window + s + len(dev)] = 0.5 * (part[:, k] + part[:, k + 1])
    scale = np.where(mad > 0, 1.4826 * mad, 1.2533 * alt)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(scale > 0, (x - med) / scale, np.nan)


def _runs(mask: np.ndarray, min_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Start positions and lengths of runs of True at least `min_len` long."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    keep = ends - starts >= min_len
    return starts[keep], (ends - starts)[keep]


def _anomalies(df: pd.DataFrame, step: int, z_threshold: float, window: int) -> pd.DataFrame:
    index, (o, h, lo, c, v) = df.index, (df[k].to_numpy() for k in OHLCV)
    min_periods = max(3, window // 4)
    parts = []

    def part(pos, kind, value, score):
        parts.append(pd.DataFrame({"timestamp": index[pos], "kind": kind, "value": np.asarray(value, dtype="float64"),
                                   "score": np.asarray(score, dtype="float64")}))

    # returns between valid closes; a return over k bars is scaled by 1/sqrt(k) so gaps do not look like jumps
    valid = np.flatnonzero(np.isfinite(c) & (c > 0))
    if len(valid) > min_periods + 1:
        logc = np.log(c[valid])
        ret = np.diff(logc)
        bars = np.diff(index.asi8[valid]) / step
        z = _robust_z(ret / np.sqrt(np.maximum(bars, 1.0)), window, min_periods)
        out = np.abs(z) > z_threshold
        nxt = np.append(ret[1:], np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            spike = out & (-nxt / ret >= SPIKE_REVERSAL)
        spike &= ~np.concatenate([[False], spike[:-1]])  # the reverting bar is no new spike
        out &= ~spike & ~np.concatenate([[False], spike[:-1]])
        pos = valid[1:]
        part(pos[spike], "spike_reversal", ret[spike], z[spike])
        part(pos[out], "return_outlier", ret[out], z[out])
    good_v = np.flatnonzero(np.isfinite(v) & (v >= 0))
    if len(good_v) > min_periods:
        zv = _robust_z(np.log1p(v[good_v]), window, min_periods)
        burst = zv > z_threshold  # only bursts: dry spells are zero_volume_run's business
        part(good_v[burst], "volume_outlier", v[good_v][burst], zv[burst])
    starts, lengths = _runs(v == 0, MIN_ZERO_VOLUME_RUN)
    part(starts, "zero_volume_run", lengths, lengths)
    prev = np.concatenate([[np.nan], c[:-1]])
    flat = (o == prev) & (h == prev) & (lo == prev) & (c == prev)
    starts, lengths = _runs(flat, MIN_STALE_RUN)
    part(starts, "stale_price", lengths, lengths)
    out = pd.concat(parts, ignore_index=True)
    out["kind"] = out["kind"].astype(object)
    return out.sort_values(["timestamp", "kind"], kind="stable").reset_index(drop=True)


def _accuracy(df: pd.DataFrame, reference: Any, tolerance_bps: float) -> dict:
    ref = _clean(_checked(reference))
    common = df.index.intersection(ref.index)
    a, r = df.loc[common], ref.loc[common]
    with np.errstate(invalid="ignore", divide="ignore"):
        bps = {k: (a[k] - r[k]).abs() / r[k].abs() * 1e4 for k in ("close", "high", "low")}
    table = pd.DataFrame({"timestamp": common, "close": a["close"].to_numpy(), "ref_close": r["close"].to_numpy(),
                          **{f"{k}_bps": s.to_numpy() for k, s in bps.items()}})
    devs = table[["close_bps", "high_bps", "low_bps"]]
    bad = (devs > tolerance_bps).any(axis=1) | devs.isna().any(axis=1)
    close = bps["close"].to_numpy()
    finite = close[np.isfinite(close)]
    return {
        "common_bars": len(common),
        "only_here": int(len(df) - len(common)),
        "only_in_reference": int(len(ref) - len(common)),
        "mean_close_bps": float(finite.mean()) if len(finite) else None,
        "max_close_bps": float(finite.max()) if len(finite) else None,
        "tolerance_bps": float(tolerance_bps),
        "disagreements": table[bad.to_numpy()].reset_index(drop=True),
    }


def cross_source_check(a: pd.DataFrame, b: pd.DataFrame, tolerance: float = 0.005) -> dict:
    """Compare two sources of the same instrument over the bars both have: relative close/high/low differences.

    `tolerance` is a fraction (0.005 = 0.5 %); a bar disagrees when |a - b| / b exceeds it for close, high or low.
    Returns the accuracy dict of QualityReport (common_bars, only_here (a), only_in_reference (b), mean/max close
    deviation in bps, and `disagreements`: one row per disagreeing bar with close, ref_close and the three bps).
    """
    if not tolerance >= 0:
        raise ConfigError(f"tolerance={tolerance!r} must be a fraction >= 0, e.g. 0.005 for 0.5 %")
    return _accuracy(_clean(_checked(a)), b, float(tolerance) * 1e4)


def _timeliness(last: pd.Timestamp, timeframe: str, now: Any) -> dict:
    if now is None:
        return {"last_bar": last, "expected_last_bar": None, "lag_bars": None}
    now = pd.Timestamp(now)
    now = now.tz_localize("UTC") if now.tz is None else now.tz_convert("UTC")
    delta = timeframe_delta(timeframe)
    origin = pd.Timestamp("1970-01-05" if timeframe == "1w" else "1970-01-01", tz="UTC")  # weekly bars open on Mondays
    expected = origin + ((now - origin) // delta) * delta - delta
    return {"last_bar": last, "expected_last_bar": expected, "lag_bars": int((expected - last) // delta)}


def quality_report(
    candles: pd.DataFrame,
    timeframe: str,
    *,
    reference: pd.DataFrame | None = None,
    now: Any = None,
    deviation_tolerance_bps: float = 50.0,
    z_threshold: float = 8.0,
    window: int = 96,
) -> QualityReport:
    """Describe the quality of a candles frame (raw or validated) against its timeframe.

    `reference`: another candles frame of the same instrument (another venue, a resampled lower
    timeframe); bars whose close, high or low differ by more than `deviation_tolerance_bps` are listed.
    `now`: when given, how many complete bars the data lags behind; None treats the data as historical.
    Anomalies use robust z-scores (rolling median and 1.4826 x MAD of the `window` previous values,
    past data only, from `window // 4` values on) of log returns and of log1p volume, beyond `z_threshold`.
    A return across a gap of k bars is divided by sqrt(k) first, so a gap alone is no price jump.
    See QualityReport for the tables and the score.
    """
    delta = timeframe_delta(timeframe)
    if not (isinstance(window, (int, np.integer)) and window >= 3):
        raise ConfigError(f"window={window!r} must be a whole number of bars >= 3, e.g. 96")
    if not z_threshold > 0 or not deviation_tolerance_bps >= 0:
        raise ConfigError(f"z_threshold={z_threshold!r} must be > 0 and deviation_tolerance_bps={deviation_tolerance_bps!r} >= 0")
    raw = _checked(candles)
    df = _clean(raw)
    step = delta.value
    gaps = gap_table(df.index, timeframe)
    missing = int(gaps["missing_bars"].sum())
    completeness = 100.0 * len(df) / (len(df) + missing)
    duplicates = _duplicates(raw)
    violations, invalid_rows = _violations(raw)
    anomalies = _anomalies(df, step, float(z_threshold), int(window))
    accuracy = None if reference is None else _accuracy(df, reference, float(deviation_tolerance_bps))
    timeliness = _timeliness(df.index[-1], timeframe, now)

    is_run = anomalies["kind"].isin(["zero_volume_run", "stale_price"]).to_numpy()
    affected = float(np.where(is_run, anomalies["value"].to_numpy(), 1.0).sum())
    components = {
        "completeness": _half_score(1000.0 * missing / (len(df) + missing), HALF["completeness"]),
        "validity": _half_score(1000.0 * (invalid_rows + len(raw) - len(df)) / len(raw), HALF["validity"]),
        "anomalies": _half_score(1000.0 * affected / len(df), HALF["anomalies"]),
    }
    if accuracy is not None and accuracy["common_bars"]:
        components["accuracy"] = _half_score(1000.0 * len(accuracy["disagreements"]) / accuracy["common_bars"], HALF["accuracy"])
    if timeliness["lag_bars"] is not None:
        components["timeliness"] = _half_score(timeliness["lag_bars"], HALF["timeliness"])
    score = sum(WEIGHTS[k] * v for k, v in components.items()) / sum(WEIGHTS[k] for k in components)
    return QualityReport(
        timeframe=timeframe, rows=len(raw), bars=len(df), first=df.index[0], last=df.index[-1],
        gaps=gaps, duplicates=duplicates, ohlc_violations=violations, invalid_rows=invalid_rows,
        completeness=float(completeness), timeliness=timeliness, accuracy=accuracy, anomalies=anomalies,
        components=components, score=float(score), _close=df["close"],
    )

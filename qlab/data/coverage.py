"""Coverage of a watch list: which bars of the required symbols x timeframes x date ranges the store holds.

    wl = load_watchlist("data/watchlist.example.yaml")
    report = coverage(store, wl)          # per series: % present, missing ranges, quality score
    report.table(); report.missing; report.complete

A watch list is a YAML file with `entries`, each naming an exchange (the series is stored under it), optional
`fallback` exchanges tried in order when it fails (see qlab.data.failover), symbols, timeframes, `since` and an
optional `until` (exclusive; default now). Bars are expected on the UTC epoch grid of the timeframe, as sync
stores them, for every open time in [since, until) whose bar has closed by `now`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from qlab.config import qlab_home
from qlab.data.candles import timeframe_delta
from qlab.data.quality import gap_table, quality_report
from qlab.data.store import Store
from qlab.errors import ConfigError, NotFoundError, did_you_mean

ENTRY_KEYS = ("name", "exchange", "fallback", "symbols", "timeframes", "since", "until", "account", "stale_bars")
TOP_KEYS = ("entries", "defaults")


def default_watchlist_path() -> Path:
    """Where `qlab data coverage` looks without --watchlist: $QLAB_HOME/watchlist.yaml."""
    return qlab_home() / "watchlist.yaml"


def _utc(value: Any, what: str) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError):
        stamp = pd.NaT
    if stamp is pd.NaT:
        raise ConfigError(f"{what}={value!r} is not a date or time; use e.g. '2024-01-01' or '2024-01-01T12:00Z'")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


@dataclass(frozen=True)
class WatchEntry:
    """One watch-list entry: symbols x timeframes over [since, until) stored under `exchange`, with fallbacks."""

    exchange: str
    symbols: tuple[str, ...]
    timeframes: tuple[str, ...]
    since: pd.Timestamp
    until: pd.Timestamp | None = None
    fallback: tuple[str, ...] = ()
    account: str | None = None  # a qlab.accounts name whose key the health check validates
    stale_bars: int = 3  # failover: a source whose newest bar lags this many intervals is stale

    @property
    def sources(self) -> tuple[str, ...]:
        """The exchanges to read from, in order: the primary, then the fallbacks."""
        return (self.exchange, *self.fallback)


@dataclass(frozen=True)
class Watchlist:
    """The parsed watch list; iterate `series()` for every (entry, symbol, timeframe)."""

    entries: tuple[WatchEntry, ...]
    path: Path | None = None

    def series(self) -> Iterator[tuple[WatchEntry, str, str]]:
        """Every (entry, symbol, timeframe) the list requires."""
        for entry in self.entries:
            for symbol in entry.symbols:
                for timeframe in entry.timeframes:
                    yield entry, symbol, timeframe

    def exchanges(self) -> list[str]:
        """Every exchange the list reads from (primaries and fallbacks), in first-mention order."""
        return list(dict.fromkeys(x for e in self.entries for x in e.sources))

    def accounts(self) -> dict[str, str]:
        """exchange -> account name, for entries that name an account."""
        return {e.exchange: e.account for e in self.entries if e.account}


def _names(value: Any, key: str, where: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise ConfigError(f"{where}: {key} must be a name or a non-empty list of names, got {value!r}")
    return tuple(v.strip() for v in items)


def parse_watchlist(config: Mapping[str, Any], where: str = "watch list") -> Watchlist:
    """A Watchlist from a mapping {entries: [...], defaults: {...}}; unknown keys and bad values are ConfigErrors."""
    if not isinstance(config, Mapping) or "entries" not in config:
        raise ConfigError(f"{where}: expected a mapping with 'entries:' (a list of exchange/symbols/timeframes/since)")
    for key in config:
        if key not in TOP_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r}; use {', '.join(TOP_KEYS)}." + did_you_mean(str(key), TOP_KEYS))
    defaults = config.get("defaults") or {}
    raw_entries = config["entries"]
    if not isinstance(raw_entries, list) or not raw_entries:
        raise ConfigError(f"{where}: 'entries' must be a non-empty list")
    entries = []
    for i, raw in enumerate(raw_entries, 1):
        at = f"{where} entry {i}"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{at}: expected a mapping with exchange, symbols, timeframes, since")
        merged = {**defaults, **raw}
        for key in merged:
            if key not in ENTRY_KEYS:
                raise ConfigError(f"{at}: unknown key {key!r}; use {', '.join(ENTRY_KEYS)}." + did_you_mean(str(key), ENTRY_KEYS))
        for key in ("exchange", "symbols", "timeframes", "since"):
            if merged.get(key) in (None, "", []):
                raise ConfigError(f"{at}: {key!r} is required")
        timeframes = _names(merged["timeframes"], "timeframes", at)
        for tf in timeframes:
            timeframe_delta(tf)
        since = _utc(merged["since"], f"{at} since")
        until = _utc(merged["until"], f"{at} until") if merged.get("until") is not None else None
        if until is not None and until <= since:
            raise ConfigError(f"{at}: until {until} is not after since {since}")
        exchange = _names(merged["exchange"], "exchange", at)
        if len(exchange) != 1:
            raise ConfigError(f"{at}: exchange names one exchange; list the others under fallback: [...]")
        fallback = _names(merged["fallback"], "fallback", at) if merged.get("fallback") else ()
        if exchange[0] in fallback:
            raise ConfigError(f"{at}: {exchange[0]!r} is both the exchange and a fallback")
        stale = merged.get("stale_bars", 3)
        if not isinstance(stale, int) or stale < 1:
            raise ConfigError(f"{at}: stale_bars={stale!r} must be a whole number of bars >= 1")
        entries.append(WatchEntry(exchange[0], _names(merged["symbols"], "symbols", at), timeframes, since, until,
                                  fallback, merged.get("account"), stale))
    return Watchlist(tuple(entries))


def load_watchlist(path: str | Path | None = None) -> Watchlist:
    """Read a YAML (or JSON) watch list; None reads $QLAB_HOME/watchlist.yaml (see data/watchlist.example.yaml)."""
    import yaml

    p = Path(path) if path is not None else default_watchlist_path()
    if not p.is_file():
        raise ConfigError(f"no watch list at {str(p)!r}; copy data/watchlist.example.yaml there or pass --watchlist FILE")
    try:
        config = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    wl = parse_watchlist(config, str(p))
    return Watchlist(wl.entries, p)


def expected_window(timeframe: str, since: Any, until: Any = None, now: Any = None) -> tuple[pd.Timestamp, pd.Timestamp]:
    """[first, stop) of the bar open times required: grid bars at or after since, before until, closed by now."""
    step = timeframe_delta(timeframe)
    now_ts = _utc(now, "now") if now is not None else pd.Timestamp.now("UTC")
    origin = pd.Timestamp(0, tz="UTC")
    first = origin + -((origin - _utc(since, "since")) // step) * step  # ceil to the grid
    stop = min(_utc(until, "until") if until is not None else now_ts, now_ts - step + pd.Timedelta(1, "ns"))
    return first, max(stop, first)


@dataclass(frozen=True, eq=False)
class SeriesCoverage:
    """Coverage of one stored series over its required window; `missing`: start, end (bar open times) and bars."""

    exchange: str
    symbol: str
    timeframe: str
    first: pd.Timestamp
    stop: pd.Timestamp
    expected: int
    present: int
    missing: pd.DataFrame
    score: float | None = None
    sources: dict = field(default_factory=dict)

    @property
    def percent(self) -> float:
        """Share of the expected bars that are stored, in %; 100 when nothing is expected yet."""
        return 100.0 * self.present / self.expected if self.expected else 100.0


def _missing_ranges(index: pd.DatetimeIndex, timeframe: str, first: pd.Timestamp, stop: pd.Timestamp) -> pd.DataFrame:
    """Runs of missing grid bars in [first, stop), given the sorted unique stored open times inside it."""
    step = timeframe_delta(timeframe)
    last_expected = first + ((stop - first - pd.Timedelta(1, "ns")) // step) * step
    rows: list[tuple[pd.Timestamp, pd.Timestamp]] = []
    if stop <= first:
        pass
    elif len(index) == 0:
        rows.append((first, last_expected))
    else:
        if index[0] > first:
            rows.append((first, index[0] - step))
        rows += list(gap_table(index, timeframe)[["start", "end"]].itertuples(index=False, name=None))
        if index[-1] < last_expected:
            rows.append((index[-1] + step, last_expected))
    start = pd.DatetimeIndex([r[0] for r in rows], tz="UTC").as_unit("ns")
    end = pd.DatetimeIndex([r[1] for r in rows], tz="UTC").as_unit("ns")
    return pd.DataFrame({"start": start, "end": end, "missing_bars": ((end - start) // step + 1).astype("int64")})


def series_coverage(store: Store, exchange: str, symbol: str, timeframe: str, since: Any, until: Any = None,
                    *, now: Any = None, score: bool = True) -> SeriesCoverage:
    """How much of one series' required window [since, until) the store holds, where the holes are, and its quality."""
    first, stop = expected_window(timeframe, since, until, now)
    step = timeframe_delta(timeframe)
    expected = int(-((first - stop) // step)) if stop > first else 0
    try:
        stored = store.candles(exchange, symbol, timeframe, first, stop, with_source=True)
    except NotFoundError:
        stored = None
    if stored is not None:
        origin = pd.Timestamp(0, tz="UTC")
        stored = stored[((stored.index - origin) % step) == pd.Timedelta(0)]  # off-grid rows are not the bars required
    if stored is None or stored.empty:
        return SeriesCoverage(exchange, symbol, timeframe, first, stop, expected, 0,
                              _missing_ranges(pd.DatetimeIndex([], tz="UTC"), timeframe, first, stop))
    quality = quality_report(stored.drop(columns="source"), timeframe).score if score else None
    counts = stored["source"].fillna(exchange).value_counts()
    return SeriesCoverage(exchange, symbol, timeframe, first, stop, expected, len(stored),
                          _missing_ranges(stored.index, timeframe, first, stop), quality,
                          {str(k): int(v) for k, v in counts.items()})


@dataclass(frozen=True, eq=False)
class CoverageReport:
    """Coverage of every series of a watch list; `complete` when every one holds 100 % of its bars."""

    series: tuple[SeriesCoverage, ...]

    @property
    def complete(self) -> bool:
        """True when no required bar is missing."""
        return all(s.present == s.expected for s in self.series)

    @property
    def percent(self) -> float:
        """Bars present over bars required, across the whole list, in %."""
        expected = sum(s.expected for s in self.series)
        return 100.0 * sum(s.present for s in self.series) / expected if expected else 100.0

    def table(self) -> pd.DataFrame:
        """One row per series: window, expected/present bars, coverage %, missing bars and runs, score, sources."""
        return pd.DataFrame([{
            "exchange": s.exchange, "symbol": s.symbol, "timeframe": s.timeframe, "from": s.first, "to": s.stop,
            "expected": s.expected, "present": s.present, "coverage_pct": round(s.percent, 4),
            "missing_bars": int(s.missing["missing_bars"].sum()), "missing_runs": len(s.missing),
            "score": None if s.score is None else round(s.score, 2),
            "sources": ", ".join(f"{k} {v}" for k, v in s.sources.items()),
        } for s in self.series])

    @property
    def missing(self) -> pd.DataFrame:
        """Every missing range: exchange, symbol, timeframe, start, end (open times of the first/last missing bar), bars."""
        parts = [s.missing.assign(exchange=s.exchange, symbol=s.symbol, timeframe=s.timeframe) for s in self.series]
        cols = ["exchange", "symbol", "timeframe", "start", "end", "missing_bars"]
        if not parts:
            return pd.DataFrame(columns=cols)
        return pd.concat(parts, ignore_index=True)[cols]

    def _repr_html_(self) -> str:
        return self.table().to_html(index=False)


def coverage(store: Store, watchlist: Watchlist, *, now: Any = None, score: bool = True) -> CoverageReport:
    """Coverage of every (exchange, symbol, timeframe) the watch list requires, with the quality score of what is stored."""
    return CoverageReport(tuple(
        series_coverage(store, e.exchange, symbol, tf, e.since, e.until, now=now, score=score)
        for e, symbol, tf in watchlist.series()
    ))

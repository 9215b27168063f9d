"""Market-data store: ingest and read speed of qlab.data.store.Store against raw DuckDB.

Targets (from the issue): ingest >= 1M rows/s, reading one year of 1m candles < 100 ms.
"""

from __future__ import annotations

import gc
import statistics
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from benchmarks import (
    STANDARD_HEADERS,
    Config,
    SectionResult,
    fmt_rate,
    fmt_seconds,
    repeat,
    section,
    table,
    timed,
    verdict,
)
from benchmarks.synthetic import synthetic_candles
from qlab.data.candles import validate_candles
from qlab.data.store import Store

FULL_ROWS = 5_000_000
QUICK_ROWS = 500_000
INGEST_TARGET = 1_000_000  # rows/s
READ_TARGET = 0.100  # seconds
REPEATS = 3  # ingest timings, each on a fresh store
WARM_READS = 5
KEY = ("bench", "BTC/USDT", "1m")
START = "2021-01-01"  # synthetic data starts here; 2021 is one non-leap year = 525,600 1m bars
YEAR = ("2021-01-01", "2022-01-01")
COLUMNS = "ts, open, high, low, close, volume"


def _remove_db(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".wal")):
        p.unlink(missing_ok=True)


def _time_ingests(df: pd.DataFrame, path: Path, raw_path: Path, repeats: int) -> tuple[list[float], list[float]]:
    """(qlab seconds, raw DuckDB seconds) of ingesting `df` into fresh, empty store files, interleaved.

    qlab: the public `Store.write_candles` (validation, staging frame, upsert in a transaction).
    raw: the same `INSERT ... SELECT ... ORDER BY ts` qlab runs, into the same schema, from a prepared
    naive-timestamp frame: no validation, no DELETE half of the upsert. The last qlab store stays at `path`.
    """
    naive = pd.DataFrame({"ts": df.index.tz_localize(None), **{c: df[c].to_numpy() for c in df.columns}})
    insert = f"INSERT INTO candles (exchange, symbol, timeframe, {COLUMNS}) SELECT ?, ?, ?, {COLUMNS} FROM frame ORDER BY ts"
    qlab_s: list[float] = []
    raw_s: list[float] = []
    for _ in range(repeats):
        _remove_db(raw_path)
        Store(raw_path).close()  # the same schema as qlab's
        con = duckdb.connect(str(raw_path))
        try:
            con.register("frame", naive)
            raw_s += repeat(lambda: con.execute(insert, list(KEY)), 1)  # noqa: B023 - called at once
        finally:
            con.close()
        _remove_db(raw_path)
        _remove_db(path)
        with Store(path) as store:
            qlab_s += repeat(lambda: store.write_candles(df, *KEY), 1)
    return qlab_s, raw_s


def _ingest(cfg: Config, n: int, path: Path, raw_path: Path) -> dict[str, Any]:
    """Ingest a new series into fresh stores, then upsert a fifth of it over the stored rows."""
    gen_s, df = timed(lambda: synthetic_candles(n, timeframe="1m", start=START, seed=cfg.seed))
    validate_candles(df, "1m")
    validate_s = repeat(lambda: validate_candles(df, "1m", where="bench"), REPEATS)
    ingest_s, raw_insert_s = _time_ingests(df, path, raw_path, REPEATS)
    upsert_n = n // 5  # 1,000,000 rows in the full run
    part = df.iloc[n // 2 : n // 2 + upsert_n]
    with Store(path) as store:
        upsert_s = repeat(lambda: store.write_candles(part, *KEY), REPEATS)
        stored_rows = int(store.symbols()["rows"].sum())
    if stored_rows != n:
        raise AssertionError(f"the store holds {stored_rows} rows after the upserts, expected {n}")
    med = statistics.median
    return {
        "rows": n,
        "generate_s": gen_s,
        "ingest": {"rows": n, "seconds": ingest_s, "median_s": med(ingest_s), "rows_per_s": n / med(ingest_s)},
        "upsert": {"rows": upsert_n, "into_rows": n, "seconds": upsert_s, "median_s": med(upsert_s),
                   "rows_per_s": upsert_n / med(upsert_s)},
        "validate": {"rows": n, "seconds": validate_s, "median_s": med(validate_s)},
        "raw_insert": {"rows": n, "seconds": raw_insert_s, "median_s": med(raw_insert_s),
                       "rows_per_s": n / med(raw_insert_s)},
    }


def _read(path: Path) -> dict[str, Any]:
    """One calendar year through Store.candles and through raw DuckDB `.df()`: each cold, then warm, interleaved.

    Cold is the first query on a freshly opened database. The warm calls alternate between the two readers
    (both connections share one DuckDB instance and buffer pool) so neither gets the other's warm-up.
    """
    query = (
        f"SELECT {COLUMNS} FROM candles WHERE exchange = ? AND symbol = ? AND timeframe = ? "
        "AND ts >= ? AND ts < ? ORDER BY ts"
    )
    params = [*KEY, pd.Timestamp(YEAR[0]), pd.Timestamp(YEAR[1])]
    with Store(path, read_only=True) as store:
        gc.collect()
        q_cold, frame = timed(lambda: store.candles(*KEY, *YEAR))
    rows = len(frame)
    del frame
    con = duckdb.connect(str(path), read_only=True)
    try:
        gc.collect()
        r_cold, frame = timed(lambda: con.execute(query, params).df())
        raw_rows = len(frame)
        del frame
        with Store(path, read_only=True) as store:
            q_warm: list[float] = []
            r_warm: list[float] = []
            for _ in range(WARM_READS):
                q_warm += repeat(lambda: store.candles(*KEY, *YEAR), 1)
                r_warm += repeat(lambda: con.execute(query, params).df(), 1)
    finally:
        con.close()
    if raw_rows != rows:
        raise AssertionError(f"qlab read {rows} rows but raw DuckDB read {raw_rows}")
    med = statistics.median
    return {
        "read": {"rows": rows, "cold_s": q_cold, "warm_s": q_warm, "warm_median_s": med(q_warm)},
        "raw_read": {"rows": rows, "cold_s": r_cold, "warm_s": r_warm, "warm_median_s": med(r_warm)},
    }


@section("store", "Market-data store")
def store_section(cfg: Config) -> SectionResult:
    tmp = Path(cfg.tmp_dir)
    path = tmp / "bench.duckdb"
    results = _ingest(cfg, QUICK_ROWS if cfg.quick else FULL_ROWS, path, tmp / "raw.duckdb")
    gc.collect()  # the synthetic frame is gone; reads run with memory freed
    results |= _read(path)
    _remove_db(path)
    return SectionResult(results, _markdown(results, cfg))


def _markdown(r: dict[str, Any], cfg: Config) -> str:
    n, up, rd, rr = r["rows"], r["upsert"], r["read"], r["raw_read"]
    ing, val, raw = r["ingest"], r["validate"], r["raw_insert"]
    runs = f"median of {REPEATS}"
    size = f"{n:,} 1m rows"
    ingest_ok = ing["rows_per_s"] >= INGEST_TARGET
    upsert_ok = up["rows_per_s"] >= INGEST_TARGET
    read_ok = rd["warm_median_s"] < READ_TARGET
    rows = [
        ["ingest: `Store.write_candles`, new series, fresh store", size, f"{fmt_seconds(ing['median_s'])} ({runs})",
         fmt_rate(n, ing["median_s"]), "≥ 1 M rows/s", verdict(ingest_ok)],
        ["re-ingest: `write_candles` upsert over existing rows", f"{up['rows']:,} rows into {n:,}",
         f"{fmt_seconds(up['median_s'])} ({runs})", fmt_rate(up["rows"], up["median_s"]), "≥ 1 M rows/s", verdict(upsert_ok)],
        ["↳ of which `validate_candles(df, '1m')` alone", size, f"{fmt_seconds(val['median_s'])} ({runs})",
         fmt_rate(n, val["median_s"]), "—", verdict(None)],
        ["baseline: raw DuckDB `INSERT … SELECT … ORDER BY ts` from pandas (no validation, no upsert)", size,
         f"{fmt_seconds(raw['median_s'])} ({runs})", fmt_rate(n, raw["median_s"]), "—", verdict(None)],
        ["read: `Store.candles`, one calendar year, first call (cold)", f"{rd['rows']:,} rows of {n:,}",
         fmt_seconds(rd["cold_s"]), fmt_rate(rd["rows"], rd["cold_s"]), "< 100 ms", verdict(rd["cold_s"] < READ_TARGET)],
        ["read: `Store.candles`, same year (warm)", f"{rd['rows']:,} rows of {n:,}",
         f"{fmt_seconds(rd['warm_median_s'])} (median of {WARM_READS})", fmt_rate(rd["rows"], rd["warm_median_s"]),
         "< 100 ms", verdict(read_ok)],
        ["baseline: raw DuckDB `SELECT … .df()`, same year, cold", f"{rr['rows']:,} rows",
         fmt_seconds(rr["cold_s"]), fmt_rate(rr["rows"], rr["cold_s"]), "—", verdict(None)],
        ["baseline: raw DuckDB `SELECT … .df()`, same year, warm", f"{rr['rows']:,} rows",
         f"{fmt_seconds(rr['warm_median_s'])} (median of {WARM_READS})", fmt_rate(rr["rows"], rr["warm_median_s"]),
         "—", verdict(None)],
    ]
    ingest_ratio = ing["median_s"] / raw["median_s"]
    read_ratio = rd["warm_median_s"] / rr["warm_median_s"]
    share = val["median_s"] / ing["median_s"]
    cold_ok = rd["cold_s"] < READ_TARGET
    misses = [what for what, ok in (("ingest", ingest_ok), ("upsert", upsert_ok), ("warm read", read_ok),
                                    ("first (cold) read", cold_ok)) if not ok]
    verdict_text = "meets every target" if not misses else f"misses the target for the {' and the '.join(misses)}"
    extra = rd["warm_median_s"] - rr["warm_median_s"]
    whose = ("so the read costs what DuckDB's own query and conversion cost" if abs(read_ratio - 1) < 0.15
             else f"so qlab adds {fmt_seconds(extra)} to it" if extra > 0
             else f"so qlab's `fetchnumpy` path is {fmt_seconds(-extra)} faster than `.df()`")
    sentence = (
        f"On this machine the store {verdict_text}: ingest runs at {ing['rows_per_s'] / 1e6:.2f} M rows/s, "
        f"{ingest_ratio:.2f}× the time of a bare DuckDB insert (`validate_candles` is about {share:.0%} of it), "
        f"upserts at {up['rows_per_s'] / 1e6:.2f} M rows/s, and a year of 1m bars reads in "
        f"{fmt_seconds(rd['warm_median_s'])} warm ({fmt_seconds(rd['cold_s'])} cold), "
        f"{read_ratio:.2f}× raw DuckDB's `.df()`, {whose}."
    )
    notes = [
        f"Data: seeded synthetic 1m candles (`benchmarks/synthetic.py`, seed {cfg.seed}) from {START}, "
        f"generated in {fmt_seconds(r['generate_s'])} (not timed above).",
        "Each ingest timing writes into a fresh, empty store file; the upsert replaces rows from the middle of the "
        "stored series and the row count is checked afterwards. \"Cold\" is the first query on a newly opened "
        "connection (DuckDB's buffer pool empty; the OS file cache may still hold the file); warm qlab and raw "
        "reads alternate on one DuckDB instance.",
        "The raw-insert baseline starts from an already built naive-timestamp frame; `write_candles` builds that "
        "staging frame (and validates) inside its timing, which is the overhead the ratio shows.",
        f"Spread between runs: ingest {fmt_seconds(min(ing['seconds']))}–{fmt_seconds(max(ing['seconds']))}, "
        f"raw insert {fmt_seconds(min(raw['seconds']))}–{fmt_seconds(max(raw['seconds']))}, "
        f"warm read {fmt_seconds(min(rd['warm_s']))}–{fmt_seconds(max(rd['warm_s']))}; "
        "on a small shared VM, treat differences under ~20 % as noise.",
    ]
    if cfg.quick:
        notes.append(f"Quick mode: {n:,} rows, so the \"one calendar year\" read returns all {rd['rows']:,} of them.")
    return "\n\n".join([table(STANDARD_HEADERS, rows), sentence, "\n".join(f"- {x}" for x in notes)])

"""The bundled real data set in data/sample/: a catalogue, loaders, and loading it into the store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from qlab.config import sample_dir
from qlab.data.candles import Candles, read_csv, to_candles
from qlab.errors import NotFoundError, did_you_mean


@dataclass(frozen=True)
class SampleSeries:
    """One bundled file: where it came from (exchange) and what it holds."""

    exchange: str
    symbol: str
    timeframe: str
    file: str  # Parquet file in data/sample/
    source_csv: str  # the file in ../shared/data it was converted from
    kind: str = "candles"  # or "funding"


CATALOGUE: tuple[SampleSeries, ...] = (
    SampleSeries("binance", "BTC/USDT:USDT", "5m", "binance_BTC-USDT-USDT_5m.parquet", "btcusdt_5m.csv"),
    SampleSeries("binance", "BTC/USDT:USDT", "1h", "binance_BTC-USDT-USDT_1h.parquet", "btcusdt_1h.csv"),
    SampleSeries("binance", "XRP/USDT:USDT", "5m", "binance_XRP-USDT-USDT_5m.parquet", "xrpusdt_perp_5m.csv"),
    SampleSeries("binance", "XRP/USDT:USDT", "1h", "binance_XRP-USDT-USDT_1h.parquet", "xrpusdt_perp_1h.csv"),
    SampleSeries("binance", "XRP/USDT:USDT", "8h", "binance_XRP-USDT-USDT_8h.parquet", "xrpusdt_perp_8h.csv"),
    SampleSeries("binance", "XRP/USDT:USDT", "8h", "binance_XRP-USDT-USDT_funding.parquet", "xrpusdt_funding_8h.csv", "funding"),
    SampleSeries("bittrex", "ETH/BTC", "5m", "bittrex_ETH-BTC_5m.parquet", "ethbtc_5m.csv"),
    SampleSeries("bittrex", "LTC/BTC", "5m", "bittrex_LTC-BTC_5m.parquet", "ltcbtc_5m.csv"),
    SampleSeries("bittrex", "ADA/BTC", "5m", "bittrex_ADA-BTC_5m.parquet", "adabtc_5m.csv"),
    SampleSeries("bittrex", "TRX/BTC", "5m", "bittrex_TRX-BTC_5m.parquet", "trxbtc_5m.csv"),
    SampleSeries("binance", "BTC/USDT", "1m", "binance_BTC-USDT_1m.parquet", "btcusdt_binance_1m.csv"),
    SampleSeries("binance", "BTC/USDT", "1h", "binance_BTC-USDT_1h.parquet", "btcusdt_binance_1h.csv"),
    SampleSeries("binance", "BTC/USDT", "1d", "binance_BTC-USDT_1d.parquet", "btcusdt_binance_1d.csv"),
    SampleSeries("binance", "ETH/USDT", "1h", "binance_ETH-USDT_1h.parquet", "ethusdt_binance_1h.csv"),
    SampleSeries("binance", "ETH/USDT", "1d", "binance_ETH-USDT_1d.parquet", "ethusdt_binance_1d.csv"),
    SampleSeries("binance", "SOL/USDT", "1h", "binance_SOL-USDT_1h.parquet", "solusdt_binance_1h.csv"),
    SampleSeries("binance", "LTC/USDT", "5m", "binance_LTC-USDT_5m.parquet", "ltcusdt_binance_5m.csv"),
)


def samples() -> pd.DataFrame:
    """The bundled series: exchange, symbol, timeframe, kind and file."""
    return pd.DataFrame([s.__dict__ for s in CATALOGUE])


def _find(symbol: str, timeframe: str, exchange: str | None, kind: str) -> SampleSeries:
    matches = [
        s for s in CATALOGUE
        if s.symbol == symbol and s.timeframe == timeframe and s.kind == kind and exchange in (None, s.exchange)
    ]
    if matches:
        return matches[0]
    known = [f"{s.symbol} {s.timeframe}" for s in CATALOGUE if s.kind == kind]
    raise NotFoundError(
        f"no bundled {kind} for {symbol!r} {timeframe!r}"
        + (f" on {exchange!r}" if exchange else "")
        + f"; bundled: {', '.join(known)}."
        + did_you_mean(f"{symbol} {timeframe}", known)
    )


def _path(series: SampleSeries) -> Path:
    path = sample_dir() / series.file
    if not path.is_file():
        raise NotFoundError(f"bundled file {str(path)!r} is missing; restore data/sample/ from git or set QLAB_SAMPLE_DIR")
    return path


def load_sample(symbol: str, timeframe: str, exchange: str | None = None) -> Candles:
    """Real bundled candles, e.g. `load_sample("BTC/USDT:USDT", "1h")`; see `samples()` for the list."""
    series = _find(symbol, timeframe, exchange, "candles")
    frame = pd.read_parquet(_path(series))
    return to_candles(frame, series.timeframe, where=series.file)


def load_sample_funding(symbol: str, exchange: str | None = None) -> pd.Series:
    """Real bundled funding rates of a perpetual (8h), indexed by funding time (UTC)."""
    series = _find(symbol, "8h", exchange, "funding")
    frame = pd.read_parquet(_path(series))
    return pd.Series(frame["funding_rate"].to_numpy(), index=pd.DatetimeIndex(frame["timestamp"], name="timestamp"), name="funding_rate")


def load_into_store(store: object) -> dict[str, int]:
    """Upsert every bundled series into a `qlab.data.store.Store`, all in one transaction."""
    written: dict[str, int] = {}
    with store.transaction():  # type: ignore[attr-defined]
        for s in CATALOGUE:
            key = f"{s.exchange} {s.symbol} {s.timeframe}" + (" funding" if s.kind == "funding" else "")
            if s.kind == "funding":
                written[key] = store.write_funding(load_sample_funding(s.symbol, s.exchange), s.exchange, s.symbol)  # type: ignore[attr-defined]
            else:
                written[key] = store.write_candles(load_sample(s.symbol, s.timeframe, s.exchange), s.exchange, s.symbol, s.timeframe)  # type: ignore[attr-defined]
    return written


def quality_table() -> pd.DataFrame:
    """The quality report of every bundled candle file: rows, gaps, anomalies and score."""
    from qlab.data.quality import quality_report

    rows = []
    for s in CATALOGUE:
        if s.kind != "candles":
            continue
        report = quality_report(load_sample(s.symbol, s.timeframe, s.exchange), s.timeframe)
        counts = report.anomaly_counts()
        rows.append({
            "series": f"{s.exchange} {s.symbol} {s.timeframe}",
            "rows": report.rows,
            "missing bars": int(report.gaps["missing_bars"].sum()),
            "gap runs": len(report.gaps),
            "completeness %": f"{report.completeness:.2f}",
            "anomalies": ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none",
            "score": f"{report.score:.1f}",
        })
    return pd.DataFrame(rows)


def quality_markdown() -> str:
    """`quality_table()` as the markdown table kept in data/sample/SOURCES.md."""
    table = quality_table()
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def write_quality_into_sources(path: str | Path | None = None) -> Path:
    """Replace the table between the quality markers of SOURCES.md with freshly computed numbers."""
    target = Path(path) if path else sample_dir() / "SOURCES.md"
    text = target.read_text()
    head, _, rest = text.partition(QUALITY_START)
    _, _, tail = rest.partition(QUALITY_END)
    target.write_text(f"{head}{QUALITY_START}\n{quality_markdown()}\n{QUALITY_END}{tail}")
    return target


QUALITY_START, QUALITY_END = "<!-- quality:start -->", "<!-- quality:end -->"


def build_sample(shared_data: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Convert the shared real CSVs into the bundled zstd Parquet files (values unchanged)."""
    src, out = Path(shared_data), Path(out_dir) if out_dir else sample_dir()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for s in CATALOGUE:
        if s.kind == "funding":
            frame = pd.read_csv(src / s.source_csv)
            frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
        else:
            frame = read_csv(src / s.source_csv, s.timeframe).reset_index()
        frame.to_parquet(out / s.file, compression="zstd", compression_level=19, index=False)
        written.append(out / s.file)
    return written


if __name__ == "__main__":  # python -m qlab.data.sample [--build SHARED_DATA_DIR] [--quality]
    import sys

    if "--build" in sys.argv:
        print("\n".join(str(p) for p in build_sample(sys.argv[sys.argv.index("--build") + 1])))
    if "--quality" in sys.argv:
        print(f"updated {write_quality_into_sources()}")

"""The `qlab` command line: data import/list/quality/export and notebook runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from qlab.errors import QlabError


def _store(args: argparse.Namespace, read_only: bool = False):
    from qlab.data.store import Store

    return Store(args.store, read_only=read_only)


def cmd_import(args: argparse.Namespace) -> int:
    """Import one or more CSV files into one series, all in a single transaction."""
    from qlab.data.candles import infer_timeframe, read_csv

    frames = []
    timeframe = args.timeframe
    for path in args.files:
        if args.funding:
            import pandas as pd

            frames.append(pd.read_csv(path))
            continue
        frame = read_csv(path, timeframe, drop_invalid=args.drop_invalid)
        timeframe = timeframe or infer_timeframe(frame.index)
        if frame.attrs.get("dropped_rows"):
            print(f"{path}: skipped {frame.attrs['dropped_rows']} invalid row(s) (--drop-invalid)")
        frames.append(frame)
    with _store(args) as store, store.transaction():
        total = 0
        for path, frame in zip(args.files, frames, strict=True):
            if args.funding:
                n = store.write_funding(frame, args.exchange, args.symbol)
            else:
                n = store.write_candles(frame, args.exchange, args.symbol, timeframe)
            print(f"{path}: {n} rows -> {args.exchange} {args.symbol} {'funding' if args.funding else timeframe}")
            total += n
    print(f"imported {total} rows into {store.path}")
    return 0


def cmd_load_sample(args: argparse.Namespace) -> int:
    """Load the bundled real data into the store."""
    from qlab.data.sample import load_into_store

    with _store(args) as store:
        written = load_into_store(store)
        print(f"loaded {sum(written.values())} rows of {len(written)} bundled series into {store.path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Print what the store holds."""
    with _store(args, read_only=True) as store:
        listing = store.symbols()
    if listing.empty:
        print("the store is empty; run `qlab data load-sample` or `qlab data import`")
        return 0
    print(listing.to_string(index=False))
    return 0


def cmd_quality(args: argparse.Namespace) -> int:
    """Print (and optionally save as HTML) the data-quality report of a stored series or a CSV file."""
    from qlab.data.candles import infer_timeframe, read_csv, timeframe_delta
    from qlab.data.quality import quality_report

    if args.file:
        candles = read_csv(args.file, validate=False)
        timeframe = args.timeframe or infer_timeframe(candles.index.sort_values().unique())
        title = Path(args.file).name
    else:
        if not (args.exchange and args.symbol and args.timeframe):
            raise QlabError("give --exchange, --symbol and --timeframe of a stored series, or --file FILE.csv")
        timeframe_delta(args.timeframe)  # a misspelt timeframe is the likelier mistake than a missing store
        with _store(args, read_only=True) as store:
            candles = store.candles(args.exchange, args.symbol, args.timeframe, args.start, args.end)
        timeframe, title = args.timeframe, f"{args.exchange} {args.symbol} {args.timeframe}"
    report = quality_report(candles, timeframe)
    print(title)
    print(report.table().to_string(index=False))
    if args.html:
        fig = report.figure(candles)
        Path(args.html).parent.mkdir(parents=True, exist_ok=True)
        Path(args.html).write_text(f"<h1>{title}</h1>" + report.table().to_html(index=False) + fig.to_html(include_plotlyjs=True))
        print(f"wrote {args.html}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export the store to hive-partitioned Parquet."""
    with _store(args, read_only=True) as store:
        files = store.export_parquet(args.directory)
    print(f"wrote {len(files)} Parquet file(s) under {args.directory}")
    return 0


def cmd_resample(args: argparse.Namespace) -> int:
    """Aggregate a stored series to a higher timeframe and store it."""
    with _store(args) as store:
        out = store.resample(args.exchange, args.symbol, args.timeframe, args.to, complete_only=not args.keep_partial, write=True)
    print(f"wrote {len(out)} {args.to} bars for {args.exchange} {args.symbol}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run a notebook headless through papermill and export an HTML report."""
    from qlab.ui.runner import run_notebook

    params = {name: _parse_value(value) for name, value in args.parameter}
    html = run_notebook(args.notebook, params, reports=args.reports)
    print(f"wrote {html}")
    return 0


def _parse_value(text: str) -> object:
    """'3' -> 3, '0.5' -> 0.5, 'true' -> True, anything else stays a string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `qlab` command."""
    parser = argparse.ArgumentParser(prog="qlab", description="qlab: a quantitative research lab for crypto trading")
    parser.add_argument("--store", help="DuckDB store file (default: $QLAB_HOME/qlab.duckdb, QLAB_HOME defaults to ./data)")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="market data: import, list, quality, export").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("import", help="import candle (or --funding) CSV files into the store in one transaction")
    p.add_argument("files", nargs="+", help="CSV with header timestamp,open,high,low,close,volume")
    p.add_argument("--exchange", required=True)
    p.add_argument("--symbol", required=True, help="ccxt unified symbol, e.g. BTC/USDT or BTC/USDT:USDT")
    p.add_argument("--timeframe", help="1m 5m 15m 1h 4h 1d ... (inferred from the spacing when left out)")
    p.add_argument("--funding", action="store_true", help="the files hold timestamp,funding_rate")
    p.add_argument("--drop-invalid", action="store_true", help="skip rows that break OHLCV rules instead of failing")
    p.set_defaults(func=cmd_import)

    data.add_parser("load-sample", help="load the bundled real data into the store").set_defaults(func=cmd_load_sample)
    data.add_parser("list", help="what the store holds").set_defaults(func=cmd_list)

    p = data.add_parser("quality", help="data-quality report of a stored series or a CSV file")
    p.add_argument("--exchange")
    p.add_argument("--symbol")
    p.add_argument("--timeframe")
    p.add_argument("--start")
    p.add_argument("--end")
    p.add_argument("--file", help="report on a CSV file instead of a stored series")
    p.add_argument("--html", help="also write the report with its chart to this HTML file")
    p.set_defaults(func=cmd_quality)

    p = data.add_parser("export", help="export to hive-partitioned Parquet")
    p.add_argument("directory")
    p.set_defaults(func=cmd_export)

    p = data.add_parser("resample", help="aggregate a stored series to a higher timeframe and store it")
    p.add_argument("--exchange", required=True)
    p.add_argument("--symbol", required=True)
    p.add_argument("--timeframe", required=True)
    p.add_argument("--to", required=True)
    p.add_argument("--keep-partial", action="store_true", help="keep buckets that miss some lower-timeframe bars")
    p.set_defaults(func=cmd_resample)

    p = sub.add_parser("run", help="run a notebook headless and export an HTML report")
    p.add_argument("notebook")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    p.add_argument("--reports", default=None, help="report folder (default ./reports)")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a command; qlab errors print one clear line and exit with status 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except QlabError as exc:
        print(f"qlab: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The `qlab` command line: data import/list/quality/export, notebook runs, optimisation and accounts."""

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


OPTIMIZE_KEYS = ("strategy", "candles", "space", "objective", "method", "n_trials", "seed", "constraints", "cash",
                 "storage", "study_name", "workers")
CANDLE_KEYS = ("source", "exchange", "symbol", "timeframe", "start", "end")


def load_optimize_config(path: str | Path) -> dict:
    """A YAML or JSON optimisation config (see examples/optimize_sma.yaml), checked for unknown keys."""
    import json

    import yaml

    from qlab.errors import ConfigError, did_you_mean

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no config file {str(p)!r}; check the path")
    try:
        config = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{p}: the config must be a mapping with keys such as strategy, candles, space, objective")
    for where, keys, allowed in (("", config, OPTIMIZE_KEYS), ("candles.", config.get("candles") or {}, CANDLE_KEYS)):
        for key in keys:
            if key not in allowed:
                raise ConfigError(f"{p}: unknown key {where}{key!r}; use {', '.join(allowed)}." + did_you_mean(str(key), allowed))
    for key in ("strategy", "candles", "space"):
        if key not in config:
            raise ConfigError(f"{p}: the config needs {key!r}")
    strategy = config["strategy"]
    if isinstance(strategy, str) and strategy.endswith((".yaml", ".yml", ".json")):  # a spec file beside the config
        from qlab.strategy.spec import Strategy

        spec = Path(strategy) if Path(strategy).is_absolute() or Path(strategy).exists() else p.parent / strategy
        config["strategy"] = Strategy.load(spec).to_dict()
    return config


def _config_candles(source: dict, store_path: str | None):
    """Candles from the bundled sample (source: sample, the default) or the store (source: store)."""
    from qlab.errors import ConfigError

    kind = source.get("source", "sample")
    if not (source.get("symbol") and source.get("timeframe")):
        raise ConfigError("candles: give symbol and timeframe (and exchange for source: store)")
    if kind == "store":
        from qlab.data.store import Store

        if not source.get("exchange"):
            raise ConfigError("candles: source 'store' needs the exchange of the stored series")
        with Store(store_path, read_only=True) as store:
            return store.candles(source["exchange"], source["symbol"], source["timeframe"], source.get("start"), source.get("end"))
    if kind != "sample":
        raise ConfigError(f"candles: source {kind!r}; use 'sample' (the bundled data) or 'store'")
    import pandas as pd

    from qlab.data.sample import load_sample

    candles = load_sample(source["symbol"], source["timeframe"], source.get("exchange"))
    try:
        bounds = {k: pd.Timestamp(source[k]) for k in ("start", "end") if source.get(k) is not None}
    except ValueError as exc:
        raise ConfigError(f"candles: start/end must be dates such as 2023-01-01: {exc}") from None
    bounds = {k: t.tz_localize("UTC") if t.tz is None else t for k, t in bounds.items()}
    if "start" in bounds:
        candles = candles[candles.index >= bounds["start"]]
    if "end" in bounds:
        candles = candles[candles.index < bounds["end"]]
    if candles.empty:
        raise ConfigError(f"candles: no bundled {source['symbol']} {source['timeframe']} bars between {source.get('start')} "
                          f"and {source.get('end')}")
    return candles


def cmd_optimize(args: argparse.Namespace) -> int:
    """Search a config's space; flags override the config's storage, study name and workers."""
    from qlab.errors import ConfigError
    from qlab.research.optimize import optimize

    config = load_optimize_config(args.config)
    candles = _config_candles(config["candles"], args.store)
    storage = args.storage or config.get("storage")
    workers = args.workers if args.workers is not None else int(config.get("workers", 1))
    if workers < 1:
        raise ConfigError(f"--workers {workers}: give 1 or more worker processes")
    result = optimize(config["strategy"], candles, config["space"], config.get("objective", "sharpe"),
                      method=config.get("method", "bayes"), n_trials=config.get("n_trials", 100), seed=config.get("seed", 0),
                      constraints=config.get("constraints"), cash=float(config.get("cash", 10_000.0)), storage=storage,
                      study_name=args.study_name or config.get("study_name"), workers=workers, progress=sys.stderr.isatty())
    finished = int((result.trials.state == "COMPLETE").sum())
    print(f"study {result.study.study_name!r}: {finished} complete trial(s) of {len(result.trials)}, {result.method} search "
          f"on {len(candles)} bars, {workers} worker(s), storage {storage or 'in memory'}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        result.trials.to_csv(args.out, index=False)
        print(f"wrote {len(result.trials)} trials to {args.out}")
    best = result.best  # a QlabError when no trial is feasible
    print("best parameters: " + ", ".join(f"{p}={best[p]}" for p in result.space.names))
    print("objectives: " + ", ".join(f"{o}={best[o]:.6g}" for o in result.objectives)
          + (f" (first of a Pareto front of {len(result.pareto)})" if len(result.objectives) > 1 else ""))
    return 0


def _read_credential(name: str, label: str, var: str, required: bool = True) -> str | None:
    """A credential from the environment, else typed at a hidden prompt; never from a command-line argument."""
    import getpass
    import os

    from qlab.errors import ConfigError

    value = os.environ.get(var)
    if value:
        return value
    if sys.stdin.isatty():
        value = getpass.getpass(f"{label} for account {name!r}{'' if required else ' (Enter for none)'}: ")
    if required and not value:
        raise ConfigError(f"no {label} for account {name!r}: set {var} or run the command in a terminal to be prompted")
    return value or None


def cmd_accounts_add(args: argparse.Namespace) -> int:
    """Store an account; key, secret and passphrase come from QLAB_<NAME>_* variables or a hidden prompt."""
    from qlab.accounts import add_account, check_exchange, check_mode, check_name, env_prefix, require_live_opt_in

    check_name(args.name)
    check_exchange(args.exchange)
    require_live_opt_in(args.name, check_mode(args.mode), args.live)  # before asking for any key
    prefix = env_prefix(args.name)
    key = _read_credential(args.name, "API key", prefix + "API_KEY")
    secret = _read_credential(args.name, "API secret", prefix + "SECRET")
    password = _read_credential(args.name, "API passphrase", prefix + "PASSWORD", required=args.exchange == "kucoin")
    account = add_account(args.name, args.exchange, args.mode, key, secret, password, allow_live=args.live,
                          replace=args.replace, path=args.credentials)
    print(f"added {account.mode} account {account.name!r} ({account.exchange}); check it with "
          f"`qlab accounts check {account.name}{' --live' if account.mode == 'live' else ''}`")
    return 0


def cmd_accounts_list(args: argparse.Namespace) -> int:
    """Print the accounts with 'set'/'missing' in place of their credentials."""
    from qlab.accounts import credentials_path, list_accounts

    rows = list_accounts(args.credentials)
    if not rows:
        print(f"no accounts in {args.credentials or credentials_path()} or the environment; "
              "add one with `qlab accounts add NAME --exchange bybit --mode demo`")
        return 0
    header = ("name", "exchange", "mode", "source", "api_key", "secret", "password")
    table = [header] + [(r.name, r.exchange or "?", r.mode or "?", r.source, r.api_key, r.secret, r.password) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_accounts_check(args: argparse.Namespace) -> int:
    """Validate an account's key by fetching its balance; exit status 1 when the exchange refuses it."""
    from qlab.accounts import check_account, load_account

    result = check_account(load_account(args.name, allow_live=args.live, path=args.credentials), allow_live=args.live)
    print(("ok: " if result.ok else f"{result.status}: ") + result.message)
    return 0 if result.ok else 1


def cmd_accounts_remove(args: argparse.Namespace) -> int:
    """Delete an account from the credentials file."""
    from qlab.accounts import credentials_path, remove_account

    remove_account(args.name, args.credentials)
    print(f"removed account {args.name!r} from {args.credentials or credentials_path()}")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    """Download closed candles from an exchange's public API into the store, incrementally and gap-filling."""
    from qlab.data.sync import sync

    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    with _store(args) as store:
        written = sync(args.exchange, symbols, args.timeframe, args.since, args.until, store=store,
                       concurrency=args.concurrency, progress=not args.quiet)
    for symbol, n in written.items():
        print(f"{args.exchange} {symbol} {args.timeframe}: {n} new rows")
    print(f"synced {sum(written.values())} rows into {store.path}")
    return 0


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

    p = data.add_parser("sync", help="download closed candles from an exchange (public API, no key) into the store")
    p.add_argument("--exchange", required=True, help="bybit, binance or kucoin")
    p.add_argument("--symbols", required=True, help="comma-separated ccxt symbols, e.g. BTC/USDT,ETH/USDT:USDT")
    p.add_argument("--timeframe", required=True, help="1m 5m 15m 1h 4h 1d ...")
    p.add_argument("--since", required=True, help="first bar, e.g. 2024-01-01")
    p.add_argument("--until", help="end (exclusive), default now; bars still forming are never stored")
    p.add_argument("--concurrency", type=int, default=4, help="symbols downloaded at once (default 4)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("run", help="run a notebook headless and export an HTML report")
    p.add_argument("notebook")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    p.add_argument("--reports", default=None, help="report folder (default ./reports)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("optimize", help="search a strategy's parameters from a YAML/JSON config, on 1..N worker processes")
    p.add_argument("--config", required=True, help="YAML or JSON file: strategy, candles, space, objective, method, ...")
    p.add_argument("--storage", help="optuna storage: sqlite:///study.db, study.log (Journal file) or "
                                     "postgresql+psycopg://user@host/db (many machines); default: in memory")
    p.add_argument("--study-name", help="join or create this study on the storage (the same name on every machine)")
    p.add_argument("--workers", type=int, help="worker processes on this machine sharing the study (default 1)")
    p.add_argument("--out", help="write the trials table to this CSV file")
    p.set_defaults(func=cmd_optimize)

    accounts = sub.add_parser("accounts", help="exchange accounts and credentials: add, list, check, remove")
    accounts.add_argument("--credentials", help="credentials file (default: $QLAB_CREDENTIALS, else "
                                                "$QLAB_HOME/credentials.toml)")
    acc = accounts.add_subparsers(dest="accounts_command", required=True)
    p = acc.add_parser("add", help="store an account; key and secret come from QLAB_<NAME>_API_KEY/_SECRET/_PASSWORD "
                                   "or a hidden prompt, never from the command line")
    p.add_argument("name")
    p.add_argument("--exchange", required=True, help="bybit, binance or kucoin")
    p.add_argument("--mode", required=True, help="demo, testnet or live")
    p.add_argument("--live", action="store_true", help="opt in to a live (real money) account")
    p.add_argument("--replace", action="store_true", help="overwrite an account of the same name")
    p.set_defaults(func=cmd_accounts_add)
    acc.add_parser("list", help="accounts, without their secrets").set_defaults(func=cmd_accounts_list)
    p = acc.add_parser("check", help="validate an account's key by fetching its balance")
    p.add_argument("name")
    p.add_argument("--live", action="store_true", help="opt in to checking a live (real money) account")
    p.set_defaults(func=cmd_accounts_check)
    p = acc.add_parser("remove", help="delete an account from the credentials file")
    p.add_argument("name")
    p.set_defaults(func=cmd_accounts_remove)
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

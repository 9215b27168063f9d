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

    if args.against and args.file:
        raise QlabError("--against compares two stored series; drop --file, or import the file into the store first")
    reference = None
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
            if args.against:  # the same instrument from another source: the report's accuracy part compares them
                reference = store.candles(args.against, args.symbol, args.timeframe, args.start, args.end)
        timeframe, title = args.timeframe, f"{args.exchange} {args.symbol} {args.timeframe}"
    report = quality_report(candles, timeframe, reference=reference, deviation_tolerance_bps=args.tolerance_bps)
    print(title + (f" against {args.against}" if args.against else ""))
    print(report.table().to_string(index=False))
    if reference is not None and len(report.accuracy["disagreements"]):
        print(f"bars where {args.exchange} and {args.against} differ by more than {args.tolerance_bps:g} bps:")
        print(report.accuracy["disagreements"].to_string(index=False, max_rows=40))
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
    """Run a notebook (or a --batch file of runs, in parallel) headless and export HTML reports plus reports/index.html."""
    from qlab.errors import ConfigError

    if bool(args.notebook) == bool(args.batch):
        raise ConfigError("give either a NOTEBOOK (with -p NAME VALUE ...) or --batch FILE, not both or neither")
    if args.batch:
        if args.parameter or args.name:
            raise ConfigError("-p and --name apply to a single NOTEBOOK; put parameters and names in the --batch file")
        from qlab.ui.batch import run_batch

        def done(outcome) -> None:
            item = outcome.item
            if outcome.ok:
                print(f"ok     {item.name}: wrote {outcome.html}", flush=True)
            else:
                print(f"FAILED {item.name}: {outcome.error}", flush=True)

        outcomes = run_batch(args.batch, workers=args.workers, reports=args.reports, on_done=done)
        failed = [o for o in outcomes if not o.ok]
        print(f"{len(outcomes) - len(failed)} of {len(outcomes)} run(s) succeeded; index: "
              f"{Path(args.reports or _reports_default()) / 'index.html'}")
        return 1 if failed else 0
    from qlab.ui.runner import run_notebook

    params = {name: _parse_value(value) for name, value in args.parameter}
    html = run_notebook(args.notebook, params, reports=args.reports, name=args.name)
    print(f"wrote {html} (index: {html.parent / 'index.html'})")
    return 0


def _reports_default() -> Path:
    from qlab.config import reports_dir

    return reports_dir()


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


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve the dashboard until Ctrl-C."""
    import os

    from qlab.ui import dashboard_server

    if args.store:
        os.environ["QLAB_STORE"] = str(args.store)
    params = {k: v for k, v in (("symbol", args.symbol), ("timeframe", args.timeframe), ("strategy", args.strategy)) if v}
    proc, url = dashboard_server.start(args.port, params)
    print(f"qlab dashboard: {url}  (Ctrl-C stops it)", flush=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(10)
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


def _sync_budget(args: argparse.Namespace):
    """The Budget the `data sync` flags ask for, or None."""
    from qlab.exchange.ratelimit import Budget

    limits = {k: getattr(args, k) for k in ("calls_per_day", "calls_per_month", "money_per_day", "money_per_month")}
    if all(v is None for v in limits.values()):
        return None
    return Budget(**limits, cost_per_call=args.cost_per_call, hard_limit=not args.warn_only)


def _fee_overrides(items: list[str]) -> dict:
    """{'vip1': {'*': (0.0002, 0.0005)}} from ['vip1=0.0002,0.0005']; 'vip1:BTC/USDT=...' names one symbol."""
    from qlab.errors import ConfigError

    out: dict = {}
    for item in items:
        name, _, fees = item.partition("=")
        tier, _, symbol = name.partition(":")
        try:
            maker, taker = (float(x) for x in fees.split(","))
        except ValueError:
            raise ConfigError(f"--fee-override {item!r}: use TIER=MAKER,TAKER (fractions), e.g. vip1=0.0002,0.0005, "
                              "or TIER:SYMBOL=MAKER,TAKER") from None
        out.setdefault(tier.strip(), {})[symbol.strip() or "*"] = (maker, taker)
    return out


def cmd_sync(args: argparse.Namespace) -> int:
    """Download closed candles, and with --funding / --fees funding rates and fee schedules, into the store; every
    request is rate limited, counted against the budget flags and recorded in the usage ledger."""
    from qlab.data.funding_sync import sync_fees, sync_funding
    from qlab.data.sync import run_sync, sync_candles
    from qlab.errors import ConfigError

    if args.watchlist:
        return _sync_watchlist(args)
    if not (args.exchange and args.symbols):
        raise ConfigError("give --exchange and --symbols (or --watchlist FILE to fill what a watch list is missing)")
    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    if not (args.timeframe or args.funding or args.fees):
        raise ConfigError("nothing to sync: give --timeframe for candles, and/or --funding, --fees")
    if (args.timeframe or args.funding) and not args.since:
        raise ConfigError("--since is needed for candles and funding, e.g. --since 2024-01-01")
    perps = [s for s in symbols if ":" in s]
    if args.funding and not perps:
        raise ConfigError(f"--funding needs perpetual symbols such as {symbols[0] if symbols else 'BTC/USDT'}:USDT; "
                          f"got {', '.join(symbols) or 'none'}")
    budget, overrides = _sync_budget(args), _fee_overrides(args.fee_override)

    async def work(client, store, meter):
        out: dict = {"meter": meter}
        if args.timeframe:
            out["candles"] = await sync_candles(client, store, args.exchange, symbols, args.timeframe, args.since, args.until,
                                                concurrency=args.concurrency, progress=not args.quiet)
        if args.funding:
            out["funding"] = await sync_funding(client, store, args.exchange, perps, args.since, args.until,
                                                concurrency=args.concurrency, progress=not args.quiet)
        if args.fees:
            out["fees"] = await sync_fees(client, store, args.exchange, symbols, overrides)
        return out

    with _store(args) as store:
        out = run_sync(args.exchange, work, store=store, key_id=args.key_id, rate=args.rate, budget=budget,
                       over_budget=args.over_budget)
    for symbol, n in out.get("candles", {}).items():
        print(f"{args.exchange} {symbol} {args.timeframe}: {n} new rows")
    for symbol, n in out.get("funding", {}).items():
        print(f"{args.exchange} {symbol} funding: {n} new rates")
    if "fees" in out:
        fees = out["fees"]
        print(f"fees: {int(fees['written'].sum())} written, {int((~fees['written']).sum())} unchanged "
              f"(tiers: {', '.join(sorted(fees['tier'].unique()))})")
    used = out["meter"].summary()
    print(f"synced into {store.path}; {used['calls']} API calls ({used['errors']} errors, {used['rate_limited']} "
          f"rate-limited) recorded under key {args.key_id!r}; see `qlab api usage`")
    return 0


def _sync_watchlist(args: argparse.Namespace) -> int:
    """`qlab data sync --watchlist FILE`: fill every missing bar of the watch list, failing over to the fallbacks."""
    import asyncio

    from qlab.data.coverage import coverage, load_watchlist
    from qlab.data.failover import sync_watchlist
    from qlab.data.usage import StoreUsageSink, resume_budget
    from qlab.exchange.ratelimit import UsageMeter

    watchlist = load_watchlist(args.watchlist)
    budget, meters = _sync_budget(args), []
    with _store(args) as store:
        if budget is not None:  # one budget for --key-id across the exchanges, continued from the ledger like `data sync`
            resume_budget(store, args.key_id, budget)
        sink = StoreUsageSink(store)

        def meter_for(client):
            meters.append(UsageMeter.for_client(client, args.key_id, rate=args.rate, budget=budget, sink=sink,
                                                over_budget=args.over_budget))
            return meters[-1]

        results = asyncio.run(sync_watchlist(watchlist, store, meter_factory=meter_for))
        report = coverage(store, watchlist, score=False)
    for (exchange, timeframe), result in results.items():
        by_source = "; ".join(f"{src}: {sum(per.values())}" for src, per in result.written.items() if sum(per.values()))
        print(f"{exchange} {timeframe}: {result.total} new rows" + (f" ({by_source})" if by_source else ""))
        for event in result.events:
            if event.kind in ("down", "stale", "recovered"):
                print(f"  {event.at:%H:%M:%S} {event.source} {event.kind}: {event.detail[:160]}")
    print(f"coverage now {report.percent:.4f} % of the watch list's required bars")
    used = {k: sum(m.summary()[k] for m in meters) for k in ("calls", "errors", "rate_limited")}
    print(f"{used['calls']} API calls ({used['errors']} errors, {used['rate_limited']} rate-limited) recorded under key "
          f"{args.key_id!r}; see `qlab api usage`")
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    """`qlab data record`: stream closed bars into the store until Ctrl-C or --bars, backfilling gaps by REST; with
    --backup, fail over to the backup exchanges' streams and back (qlab.data.live_failover)."""
    import asyncio
    import contextlib

    from qlab.data.live import RecordStats, record_bars
    from qlab.data.live_failover import FailoverRecordStats, record_with_failover
    from qlab.data.usage import StoreUsageSink
    from qlab.errors import ConfigError
    from qlab.exchange import ccxt_client, stream
    from qlab.exchange.ratelimit import UsageMeter
    from qlab.exchange.stream import Backoff

    ids = [args.exchange] + [b.strip() for b in (args.backup or "").split(",") if b.strip()]
    if args.bars is not None and args.bars < 1:
        raise ConfigError(f"--bars {args.bars}: give a positive number of bars, or leave it out to record until Ctrl-C")
    stats = FailoverRecordStats() if len(ids) > 1 else RecordStats()
    reconnect = Backoff(max_tries=args.reconnect_tries)

    def show(bar, source: str = "") -> None:
        if not args.quiet:
            print(f"{bar.ts:%Y-%m-%d %H:%M} {args.symbol} {args.timeframe} o={bar.open:g} h={bar.high:g} l={bar.low:g} "
                  f"c={bar.close:g} v={bar.volume:g}" + (f" [{source}]" if source else ""), flush=True)

    meters: list = []

    async def run(store) -> None:
        async with contextlib.AsyncExitStack() as stack:
            sink, sources = StoreUsageSink(store), []
            for exchange_id in ids:
                ws = stream.make_stream_client(exchange_id, args.mode)
                stack.push_async_callback(ws.close)
                rest = ccxt_client.make_client(exchange_id, {}, args.mode)
                stack.push_async_callback(rest.close)
                meters.append(UsageMeter.for_client(rest, args.key_id, sink=sink))  # backfill and markets go to the ledger
                for client in (ws, rest):  # the stream client loads its markets over REST too
                    await stack.enter_async_context(meters[-1].attached(client))
                sources.append((ws, rest, exchange_id))
            if len(sources) == 1:
                await record_bars(*sources[0][:2], store, args.exchange, args.symbol, args.timeframe, stop_after=args.bars,
                                  reconnect=reconnect, stats=stats, on_bar=show)
            else:
                await record_with_failover(sources, store, args.exchange, args.symbol, args.timeframe, stop_after=args.bars,
                                           stale_bars=args.stale_bars, probe_every=args.probe_every, reconnect=reconnect,
                                           stats=stats, on_bar=show)

    with _store(args) as store:
        try:
            asyncio.run(run(store))
        except KeyboardInterrupt:
            print("stopped (Ctrl-C); every bar written so far is kept")
    by_source = getattr(stats, "by_source", {})
    print(f"recorded {stats.written} bars of {args.exchange} {args.symbol} {args.timeframe} into {store.path} "
          f"({stats.streamed} streamed, {stats.backfilled} backfilled by REST, {stats.reconnects} reconnects"
          + (", by source: " + ", ".join(f"{k} {v}" for k, v in by_source.items()) if by_source else "") + ")")
    if stats.unfilled:
        print(f"{len(stats.unfilled)} range(s) no source could fill; run `qlab data sync` for them later")
    calls = sum(m.summary()["calls"] for m in meters)
    print(f"{calls} REST calls recorded under key {args.key_id!r} in the usage ledger; see `qlab api usage`")
    return 0


def cmd_exchange_check(args: argparse.Namespace) -> int:
    """Health-check the configured exchanges; print a table and exit 1 when a check failed (cron/CI friendly)."""
    from qlab.data.coverage import default_watchlist_path, load_watchlist
    from qlab.data.health import CRON_LINE, WEEK, HealthTarget, health_targets, run_every, run_health

    if args.cron:
        print("# run `qlab exchange check` every Monday at 06:00 (crontab -e); failures exit 1, cron mails the output")
        print(CRON_LINE)
        return 0
    path = args.watchlist or (default_watchlist_path() if default_watchlist_path().is_file() else None)
    watchlist = load_watchlist(path) if path else None
    exchanges = args.exchange or None
    if watchlist is None:
        targets = [HealthTarget(x, args.symbol or "BTC/USDT", args.timeframe) for x in exchanges or ()]
    else:
        targets = health_targets(watchlist, exchanges)
    if args.symbol:
        targets = [HealthTarget(t.exchange, args.symbol, args.timeframe, t.account, t.mode) for t in targets]
    on_failure = _health_alert_hook(args.alerts) if args.alerts else None

    def once():
        report = run_health(targets, on_failure=on_failure, allow_live=args.live)
        print(report.text(), flush=True)
        return report

    if args.schedule:
        print(f"checking every {WEEK / 86400:g} days in the foreground (Ctrl-C stops); or use cron: {CRON_LINE}", flush=True)
        try:
            run_every(once)
        except KeyboardInterrupt:
            return 0
    return 0 if once().ok else 1


def _health_alert_hook(config: str):
    """A failure callback that sends the health report through the alerts file's channels."""

    def send(report) -> None:
        from qlab.alerts.engine import AlertEngine
        from qlab.data.store import Store

        failed = ", ".join(f"{c.exchange} {c.name}" for c in report.failures)
        with Store() as store:
            AlertEngine.from_config(config, store=store).send_test(None, f"qlab exchange check FAILED: {failed}")

    return send


def cmd_api_usage(args: argparse.Namespace) -> int:
    """Print the usage ledger summed per key and endpoint (or day, status)."""
    from qlab.data.usage import usage_summary

    with _store(args, read_only=True) as store:
        table = usage_summary(store, args.key, since=args.since, until=args.until, by=args.by)
    if table.empty:
        print("no API calls recorded" + (f" since {args.since}" if args.since else ""))
        return 0
    print(table.to_string(index=False, float_format=lambda x: f"{x:.6g}"))
    print(f"total: {int(table['calls'].sum())} calls, weight {table['weight'].sum():g}, {int(table['errors'].sum())} "
          f"errors, {int(table['rate_limited'].sum())} rate-limited, cost {table['cost'].sum():.6g}")
    return 0


def _alert_engine(args: argparse.Namespace, store=None):
    from qlab.alerts.engine import AlertEngine

    return AlertEngine.from_config(args.config, store=store)


def cmd_alerts_list(args: argparse.Namespace) -> int:
    """Print the channels (without secrets) and rules of the alerts file."""
    engine = _alert_engine(args)
    print("channels:")
    for channel in engine.channels.values():
        print(f"  {channel.name:<16} {channel.kind:<10} {channel.target()}")
    print("rules:")
    for rule in engine.rules.values():
        sends = ", ".join(rule.channels) or "all channels"
        print(f"  {rule.name:<16} {rule.severity:<8} {rule.describe()} -> {sends}"
              + (f", cooldown {rule.cooldown:g} s" if rule.cooldown else ""))
    return 0


def cmd_alerts_test(args: argparse.Namespace) -> int:
    """Send a test alert through each channel (or --channel NAME); exit status 1 when one is not delivered."""
    from qlab.data.store import Store

    with Store(args.store) as store:
        deliveries = _alert_engine(args, store).send_test(args.channel, args.message)
    for d in deliveries:
        took = f"{d.latency_s * 1000:.0f} ms" if d.latency_s is not None else "-"
        print(f"{d.channel:<16} {d.status:<10} attempts={d.attempts} latency={took}" + (f"  {d.error}" if d.error else ""))
    return 0 if all(d.status == "delivered" for d in deliveries) else 1


def cmd_alerts_log(args: argparse.Namespace) -> int:
    """Print the latest entries of the delivery log kept in the store's 'alerts' journal."""
    from qlab.alerts.engine import delivery_log

    with _store(args, read_only=True) as store:
        frame = delivery_log(store, args.limit)
    if frame.empty:
        print("no alert deliveries recorded yet")
        return 0
    cols = [c for c in ("ts", "kind", "rule", "key", "channel", "status", "attempts", "latency_s", "error") if c in frame]
    print(frame[cols].to_string(index=False))
    return 0


def cmd_coverage(args: argparse.Namespace) -> int:
    """Print, per watch-list series, the % of required bars stored, the missing ranges and the quality score."""
    from qlab.data.coverage import coverage, load_watchlist

    watchlist = load_watchlist(args.watchlist)
    with _store(args, read_only=True) as store:
        report = coverage(store, watchlist)
    table = report.table()
    print(table.drop(columns=["to"]).to_string(index=False))
    missing = report.missing
    if len(missing):
        shown = missing.head(args.max_ranges)
        print(f"\nmissing ranges ({len(missing)}{'' if len(missing) <= args.max_ranges else f', first {args.max_ranges}'}):")
        print(shown.to_string(index=False))
    print(f"\ncoverage {report.percent:.4f} % of {int(table['expected'].sum())} required bars"
          + ("" if report.complete else "; fill the gaps with `qlab data sync --watchlist FILE`"))
    return 1 if args.require_full and not report.complete else 0


def cmd_prune(args: argparse.Namespace) -> int:
    """Apply the retention rules (derive higher timeframes, then delete old rows) in one transaction, or --dry-run."""
    from qlab.data.retention import load_retention, prune

    policy = load_retention(args.rules)
    with _store(args, read_only=args.dry_run) as store:
        result = prune(store, policy, dry_run=args.dry_run)
    plan = result.plan
    if plan.empty:
        print("nothing to prune: every stored series is within its retention rule")
        return 0
    print(plan.to_string(index=False))
    if args.dry_run:
        print(f"\ndry run: {int(plan['rows'].sum())} row(s) in {len(plan)} series would go; nothing was changed")
    else:
        made = ", ".join(f"{k}: {v}" for k, v in result.derived.items() if v)
        print(f"\npruned {result.deleted} row(s) from {len(plan)} series" + (f"; derived bars written first ({made})" if made else ""))
    return 0


def cmd_paper_run(args: argparse.Namespace) -> int:
    """Run a paper trader: foreground, or --background as a detached service with a pid file."""
    import asyncio

    from qlab.paper.service import configure_logging, serve, service_name, start_background

    symbols = args.replay or args.symbol or []
    name = service_name(args.name, args.strategy, symbols)
    if args.background:
        argv = ["--strategy", args.strategy, "--timeframe", args.timeframe, "--bars", str(args.bars), "--cash", str(args.cash)]
        for flag, values in (("--replay", args.replay), ("--symbol", args.symbol)):
            argv += [flag, *values] if values else []
        for flag, value in (("--account", args.account), ("--speed", args.speed), ("--exchange", args.exchange)):
            argv += [flag, str(value)] if value is not None else []
        argv += ["--live"] if args.live else []
        pid = start_background(argv, name)
        print(f"paper trader {name!r} running in the background (pid {pid}); `qlab paper status`, `qlab paper stop {name}`")
        return 0
    configure_logging(args.log)
    result = asyncio.run(serve(args.strategy, name=name, replay=args.replay or (), account=args.account, symbols=args.symbol or (),
                               timeframe=args.timeframe, speed=args.speed, bars=args.bars, cash=args.cash, allow_live=args.live,
                               exchange=args.exchange))
    print(f"paper trader {name!r}: {len(result.equity)} bars, {len(result.trades)} trades, final equity {result.final_equity:,.2f}")
    return 0


def cmd_paper_status(args: argparse.Namespace) -> int:
    """Paper traders known under QLAB_HOME/run: running or not, equity and positions from their status files."""
    from qlab.paper.service import status_rows

    rows = status_rows()
    if not rows:
        print("no paper traders (start one with `qlab paper run --strategy SPEC --replay SYMBOL --background`)")
        return 0
    for r in rows:
        pos = ", ".join(f"{s} {p['side']} {p['size']:g} @ {p['entry']:,.2f}" for s, p in (r.get("positions") or {}).items()) or "flat"
        equity = r.get("equity")
        print(f"{r['name']:<24} {'running' if r['running'] else 'stopped':<8} pid {r.get('pid')}  {r.get('state')}  "
              f"{r.get('mode')}  bars {r.get('bars', 0)}  equity {equity if equity is None else format(equity, ',.2f')}  "
              f"orders {len(r.get('orders') or {})}  {pos}  (updated {r.get('updated')})")
    return 0


def cmd_paper_stop(args: argparse.Namespace) -> int:
    """Stop a background paper trader: SIGTERM, then wait for it to finish its event and remove its pid file."""
    from qlab.paper.service import stop_service

    row = stop_service(args.name, timeout=args.timeout)
    print(f"stopped {args.name!r}: {row.get('state')}, {row.get('bars', 0)} bars, equity {row.get('equity')}")
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
    p.add_argument("--against", metavar="EXCHANGE", help="compare with the same symbol and timeframe stored under "
                                                         "another exchange (the accuracy part: bars that disagree)")
    p.add_argument("--tolerance-bps", type=float, default=50.0, help="with --against: a bar disagrees when close, high "
                                                                    "or low differ by more than this (default 50 bps)")
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

    p = data.add_parser("sync", help="download closed candles (and funding, fees) from an exchange (public API) into the store")
    p.add_argument("--exchange", help="bybit, binance or kucoin")
    p.add_argument("--symbols", help="comma-separated ccxt symbols, e.g. BTC/USDT,ETH/USDT:USDT")
    p.add_argument("--watchlist", help="instead of --exchange/--symbols: fill every bar a watch list is missing, with "
                                       "failover to each entry's fallback exchanges")
    p.add_argument("--timeframe", help="candles: 1m 5m 15m 1h 4h 1d ... (leave out to sync only --funding / --fees)")
    p.add_argument("--since", help="first bar / funding time, e.g. 2024-01-01")
    p.add_argument("--until", help="end (exclusive), default now; bars still forming are never stored")
    p.add_argument("--concurrency", type=int, default=4, help="symbols downloaded at once (default 4)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--funding", action="store_true", help="also the funding-rate history of the perpetual symbols")
    p.add_argument("--fees", action="store_true", help="also the maker/taker fees of the symbols' markets")
    p.add_argument("--fee-override", action="append", default=[], metavar="TIER[:SYMBOL]=MAKER,TAKER",
                   help="your VIP fees, stored as their tier, e.g. vip1=0.0002,0.0005 (repeatable)")
    p.add_argument("--key-id", default="public", help="name the requests are recorded under in the usage ledger")
    p.add_argument("--rate", type=float, help="requests per second (default: ccxt's rate model for the exchange)")
    for flag, kind, text in (("--calls-per-day", int, "API calls per UTC day"), ("--calls-per-month", int, "per UTC month"),
                             ("--money-per-day", float, "money per UTC day"), ("--money-per-month", float, "per UTC month")):
        p.add_argument(flag, type=kind, help=f"budget: {text} for --key-id, counting what the ledger holds")
    p.add_argument("--cost-per-call", type=float, default=0.0, help="money one API call costs (for --money-per-*)")
    p.add_argument("--warn-only", action="store_true", help="budget limits warn at 50/80/100 %% but never refuse")
    p.add_argument("--over-budget", action="store_true", help="go past a spent budget for this run")
    p.set_defaults(func=cmd_sync)

    p = data.add_parser("record", help="record a live candle stream (WebSocket) into the store until Ctrl-C or --bars, "
                                       "backfilling missed bars by REST; --backup fails over to other exchanges")
    p.add_argument("--exchange", required=True, help="the primary exchange; the series is stored under its name")
    p.add_argument("--symbol", required=True, help="ccxt unified symbol, e.g. BTC/USDT:USDT")
    p.add_argument("--timeframe", default="1m", help="bar size (default 1m)")
    p.add_argument("--backup", help="comma-separated exchanges to fail over to, in order, e.g. binance,kucoin")
    p.add_argument("--bars", type=int, help="stop after this many bars are written (default: run until Ctrl-C)")
    p.add_argument("--mode", default="live", help="live, testnet or demo (default live; public streams need no keys)")
    p.add_argument("--stale-bars", type=int, default=3, help="with --backup: fail over after this many bar intervals "
                                                            "without a closed bar (default 3)")
    p.add_argument("--probe-every", type=float, default=60.0, help="with --backup: seconds between probes of a failed "
                                                                   "higher exchange before switching back (default 60)")
    p.add_argument("--reconnect-tries", type=int, default=5, help="reconnects in a row before a stream counts as down "
                                                                  "(default 5)")
    p.add_argument("--key-id", default="public", help="name the REST requests are recorded under in the usage ledger")
    p.add_argument("--quiet", action="store_true", help="no line per bar")
    p.set_defaults(func=cmd_record)

    p = data.add_parser("coverage", help="per watch-list series: %% of required bars stored, missing ranges, quality score")
    p.add_argument("--watchlist", help="YAML watch list (default $QLAB_HOME/watchlist.yaml; see data/watchlist.example.yaml)")
    p.add_argument("--require-full", action="store_true", help="exit with status 1 unless every required bar is stored")
    p.add_argument("--max-ranges", type=int, default=50, help="missing ranges to print (default 50)")
    p.set_defaults(func=cmd_coverage)

    p = data.add_parser("prune", help="apply per-timeframe retention rules in one transaction (derive higher timeframes first)")
    p.add_argument("--rules", help="YAML retention rules (default $QLAB_HOME/retention.yaml; see data/retention.example.yaml)")
    p.add_argument("--dry-run", action="store_true", help="print what would go (rows and ranges per series); change nothing")
    p.set_defaults(func=cmd_prune)

    exchange = sub.add_parser("exchange", help="exchange health checks").add_subparsers(dest="exchange_command", required=True)
    p = exchange.add_parser("check", help="reachability, clock drift, markets, endpoint shapes, credentials, rate-limit "
                                          "headroom of each configured exchange; exit 1 on a failed check")
    p.add_argument("--exchange", action="append", help="check this exchange (repeatable; default: every exchange of the "
                                                       "watch list)")
    p.add_argument("--watchlist", help="watch list naming the exchanges, symbols and accounts (default "
                                       "$QLAB_HOME/watchlist.yaml when it exists)")
    p.add_argument("--symbol", help="symbol whose endpoints are exercised (default: the watch list's, else BTC/USDT)")
    p.add_argument("--timeframe", default="1h", help="OHLCV timeframe to fetch (default 1h)")
    p.add_argument("--live", action="store_true", help="allow checking the key of a live (real money) account")
    p.add_argument("--alerts", help="alerts file (qlab alerts): failures are sent through its channels")
    p.add_argument("--schedule", action="store_true", help="run now and then weekly in the foreground (Ctrl-C stops)")
    p.add_argument("--cron", action="store_true", help="print the documented weekly cron line and exit")
    p.set_defaults(func=cmd_exchange_check)

    p = sub.add_parser("run", help="run a notebook (or a batch of runs) headless and export HTML reports and an index")
    p.add_argument("notebook", nargs="?")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    p.add_argument("--reports", default=None, help="report folder (default ./reports)")
    p.add_argument("--name", help="report name (default: the notebook's name)")
    p.add_argument("--batch", help="YAML/JSON list of {notebook, parameters, name} runs, run in parallel processes")
    p.add_argument("--workers", type=int, help="processes for --batch (default: up to 4)")
    p.set_defaults(func=cmd_run)

    api = sub.add_parser("api", help="API usage ledger").add_subparsers(dest="api_command", required=True)
    p = api.add_parser("usage", help="the usage ledger summed per key and endpoint, day or status")
    p.add_argument("--key", help="one key id (default: every key)")
    p.add_argument("--since", help="from this time, e.g. 2025-01-01")
    p.add_argument("--until", help="up to this time (exclusive)")
    p.add_argument("--by", default="endpoint", choices=("endpoint", "day", "status", "key"), help="group by (default endpoint)")
    p.set_defaults(func=cmd_api_usage)

    p = sub.add_parser("optimize", help="search a strategy's parameters from a YAML/JSON config, on 1..N worker processes")
    p.add_argument("--config", required=True, help="YAML or JSON file: strategy, candles, space, objective, method, ...")
    p.add_argument("--storage", help="optuna storage: sqlite:///study.db, study.log (Journal file) or "
                                     "postgresql+psycopg://user@host/db (many machines); default: in memory")
    p.add_argument("--study-name", help="join or create this study on the storage (the same name on every machine)")
    p.add_argument("--workers", type=int, help="worker processes on this machine sharing the study (default 1)")
    p.add_argument("--out", help="write the trials table to this CSV file")
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser("dashboard", help="serve the live web dashboard with Voila on 127.0.0.1 and print its URL")
    p.add_argument("--port", type=int, default=8866, help="TCP port on 127.0.0.1 (0: a free one; default 8866)")
    p.add_argument("--symbol", help="symbol of the price panel and the replay (default BTC/USDT)")
    p.add_argument("--timeframe", help="timeframe (default 1h)")
    p.add_argument("--strategy", help="template name the replay trades (default sma_cross)")
    p.set_defaults(func=cmd_dashboard)

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

    paper = sub.add_parser("paper", help="paper trading: run (replay or exchange demo/testnet), status, stop")
    pp = paper.add_subparsers(dest="paper_command", required=True)
    p = pp.add_parser("run", help="run a paper trader (foreground, or --background with a pid file under QLAB_HOME/run)")
    p.add_argument("--strategy", required=True, help="template name or .json/.yaml spec")
    p.add_argument("--account", help="exchange account (qlab accounts add); demo/testnet, live needs --live")
    p.add_argument("--symbol", nargs="+", help="symbols to trade with --account, e.g. BTC/USDT:USDT")
    p.add_argument("--replay", nargs="+", metavar="SYMBOL", help="replay stored (else bundled) candles of these symbols offline")
    p.add_argument("--timeframe", default="1h")
    p.add_argument("--speed", type=float, help="replay speed in market seconds per second (3600: one 1h bar a second); "
                                               "default as fast as possible")
    p.add_argument("--bars", type=int, default=2000, help="replay the last N bars (default 2000)")
    p.add_argument("--exchange", help="replay: the stored exchange of the series (default: the first that has it)")
    p.add_argument("--cash", type=float, default=10_000.0, help="replay: starting cash (the exchange balance with --account)")
    p.add_argument("--name", help="service name (default strategy-symbols); the same name resumes from its journal")
    p.add_argument("--background", action="store_true", help="run detached; see `qlab paper status` / `qlab paper stop NAME`")
    p.add_argument("--live", action="store_true", help="opt in to a live (real money) account")
    p.add_argument("--log", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_paper_run)
    pp.add_parser("status", help="paper traders with their state, equity and positions").set_defaults(func=cmd_paper_status)
    p = pp.add_parser("stop", help="stop a background paper trader cleanly (SIGTERM; it finishes the event in hand)")
    p.add_argument("name")
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(func=cmd_paper_stop)

    alerts = sub.add_parser("alerts", help="alert rules and channels: list, test, log")
    alerts.add_argument("--config", help="alerts file (default: $QLAB_ALERTS, else $QLAB_HOME/alerts.yaml)")
    al = alerts.add_subparsers(dest="alerts_command", required=True)
    al.add_parser("list", help="channels (without secrets) and rules of the alerts file").set_defaults(func=cmd_alerts_list)
    p = al.add_parser("test", help="send a test alert through every channel (or one) and print status and latency")
    p.add_argument("--channel", help="only this channel")
    p.add_argument("--message", default="qlab test alert", help="the test alert's text")
    p.set_defaults(func=cmd_alerts_test)
    p = al.add_parser("log", help="the delivery log from the store's 'alerts' journal")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_alerts_log)
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

"""Paper traders as services: run one in the foreground or as a detached background process, list them, stop them.

    qlab paper run --strategy sma_cross --replay BTC/USDT --timeframe 1h --speed 36000 --background --name sma
    qlab paper status                  # name, pid, state, bars, equity, position, last update
    qlab paper stop sma                # SIGTERM: the trader finishes the event in hand, journals it and exits

Files under QLAB_HOME/run: `<name>.pid` (the pid; present while it runs), `<name>.json` (status: written at every
bar close from the trader's state, i.e. the fold of its journal), `<name>.log` (its log). The journal lives in its own
store QLAB_HOME/paper/<name>.duckdb (DuckDB allows one writer per file, so the service never locks the main store);
running the same name again resumes from that journal (crash recovery, no order placed twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from qlab.config import qlab_home
from qlab.errors import ConfigError, NotFoundError, did_you_mean
from qlab.paper.events import Event

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RECENT = 30  # events kept in the status file


def run_dir() -> Path:
    """QLAB_HOME/run: pid, status and log files of services."""
    return qlab_home() / "run"


def service_name(name: str | None, strategy: str, symbols: Sequence[str]) -> str:
    """The given name, or one made of strategy and symbols ("sma_cross-BTC-USDT"); checked for a file-safe spelling."""
    if name is None:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{Path(str(strategy)).stem}-{'-'.join(symbols)}").strip("-")[:64]
    if not _NAME.match(name):
        raise ConfigError(f"service name {name!r} must be letters, digits, '_', '.', '-' (up to 64), e.g. 'sma-btc'")
    return name


@dataclass
class ServiceFiles:
    """The pid, status and log files of one service name."""

    name: str
    root: Path = field(default_factory=run_dir)

    @property
    def pid(self) -> Path:
        return self.root / f"{self.name}.pid"

    @property
    def status(self) -> Path:
        return self.root / f"{self.name}.json"

    @property
    def log(self) -> Path:
        return self.root / f"{self.name}.log"


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 probes without touching it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(Exception):  # a zombie child of this process counts as gone
        import psutil

        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    return True


def read_pid(files: ServiceFiles) -> int | None:
    """The pid in the pid file, or None when there is none (or it is unreadable)."""
    try:
        return int(files.pid.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class StoppableFeed:
    """Wraps a feed so a stop request (SIGTERM) ends it between two events: the trader finishes the event in hand."""

    def __init__(self, feed: Any, stop: asyncio.Event) -> None:
        self.feed, self.stop = feed, stop
        self.symbols, self.timeframe = feed.symbols, feed.timeframe

    async def open(self, after: pd.Timestamp | None = None) -> AsyncIterator[Any]:
        """The wrapped feed's events until stopped."""
        inner = self.feed.open(after).__aiter__()
        try:
            while not self.stop.is_set():
                nxt = asyncio.ensure_future(inner.__anext__())
                stopper = asyncio.ensure_future(self.stop.wait())
                done, _ = await asyncio.wait({nxt, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if nxt not in done:
                    nxt.cancel()
                    with contextlib.suppress(BaseException):
                        await nxt
                    return
                try:
                    item = nxt.result()
                except StopAsyncIteration:
                    return
                yield item
        finally:
            with contextlib.suppress(BaseException):
                await inner.aclose()


class StatusJournal:
    """A journal wrapper that writes the service's status file at each bar close (throttled) from the trader's state."""

    def __init__(self, journal: Any, files: ServiceFiles, info: dict[str, Any], every_s: float = 0.5) -> None:
        self.journal, self.files, self.info, self.every_s = journal, files, info, every_s
        self.run_id = journal.run_id
        self.trader: Any = None
        self.recent: list[dict[str, Any]] = []
        self.bars = 0
        self._last = 0.0

    def append(self, event: Event) -> int:
        """Journal the event, remember it for the status, and refresh the status file at a bar close."""
        seq = self.journal.append(event)
        if event.kind != "bar":
            self.recent = ([*self.recent, {"seq": seq, "kind": event.kind, "ts": event.ts, **_brief(event.payload)}])[-RECENT:]
        if event.kind == "mark":
            self.bars += 1
            if time.monotonic() - self._last >= self.every_s:
                self.write("running")
        return seq

    def events(self) -> list[Event]:
        """The wrapped journal's events."""
        return self.journal.events()

    def write(self, state: str, **extra: Any) -> None:
        """Write the status file atomically (temp file + rename)."""
        self._last = time.monotonic()
        row = {**self.info, "state": state, "pid": os.getpid(), "bars": self.bars, "updated": pd.Timestamp.now("UTC").isoformat(),
               "recent": self.recent, **extra}
        if self.trader is not None:
            st = self.trader.broker.state
            row.update(equity=st.equity, cash=st.cash, last_bar=st.ts, killed=st.killed, fills=len(st.fills), trades=len(st.trades),
                       positions={s: {"side": "long" if p.direction > 0 else "short", "size": p.open_size, "entry": p.entry_price}
                                  for s, p in st.positions.items()},
                       orders={c: {"symbol": o.symbol, "side": o.direction, "type": o.type, "intent": o.intent, "price": _num(o.price)}
                               for c, o in st.orders.items()})
        tmp = self.files.status.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(row, default=str, allow_nan=False, indent=1))
        tmp.replace(self.files.status)


def _num(x: float) -> float | None:
    return None if x != x else float(x)  # NaN -> null (JSON has no NaN)


def _brief(payload: dict[str, Any]) -> dict[str, Any]:
    keys = ("symbol", "cid", "side", "type", "reason", "price", "qty", "rule", "equity", "error")
    return {k: (_num(v) if isinstance(v, float) else v) for k, v in payload.items() if k in keys}


def replay_candles(symbol: str, timeframe: str, bars: int | None, exchange: str | None = None) -> pd.DataFrame:
    """The last `bars` candles of a series: from the store (QLAB_HOME/qlab.duckdb) when it holds them, else the bundled sample."""
    from qlab.config import store_path
    from qlab.data.sample import load_sample

    candles = None
    path = store_path()
    if path.exists():
        from qlab.data.store import Store

        with contextlib.suppress(Exception), Store(path, read_only=True) as store:  # a locked or empty store: use the sample
            held = store.symbols()
            held = held[(held.symbol == symbol) & (held.timeframe == timeframe) & ((held.exchange == exchange) if exchange else True)]
            if len(held):
                candles = store.candles(held.exchange.iloc[0], symbol, timeframe)
    if candles is None or not len(candles):
        candles = load_sample(symbol, timeframe, exchange)
    return candles.iloc[-bars:] if bars else candles


async def serve(strategy: str, *, name: str | None = None, replay: Sequence[str] = (), account: str | None = None,
                symbols: Sequence[str] = (), timeframe: str = "1h", speed: float | None = None, bars: int | None = 2000,
                cash: float = 10_000.0, allow_live: bool = False, risk: Any = None, exchange: str | None = None) -> Any:
    """Run one paper trader in this process as a service: pid file, status file, journal in its own store, SIGTERM stop.

    `replay` symbols replay stored/bundled candles (offline); `account` trades on that exchange account (demo/testnet;
    live needs allow_live) with a LiveFeed of `symbols`. Returns the PaperResult when the feed ends or a stop arrives."""
    from qlab.data.store import Store
    from qlab.paper.journal import StoreJournal
    from qlab.paper.trader import PaperTrader
    from qlab.strategy.templates import resolve_strategy

    if bool(replay) == bool(account):
        raise ConfigError("give either --replay SYMBOL ... (offline replay) or --account NAME (exchange demo/testnet), not both")
    syms = list(replay) or list(symbols)
    if not syms:
        raise ConfigError("--account needs --symbol SYMBOL ... (e.g. BTC/USDT:USDT) to trade")
    name = service_name(name, strategy, syms)
    files = ServiceFiles(name)
    files.root.mkdir(parents=True, exist_ok=True)
    pid = read_pid(files)
    if pid is not None and pid != os.getpid() and process_alive(pid):
        raise ConfigError(f"a paper trader named {name!r} is already running (pid {pid}); stop it with `qlab paper stop {name}` "
                          "or choose another --name")
    files.pid.write_text(f"{os.getpid()}\n")
    info = {"name": name, "strategy": strategy, "symbols": syms, "timeframe": timeframe,
            "mode": "replay" if replay else f"account {account}", "started": pd.Timestamp.now("UTC").isoformat()}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    closers: list[Any] = []
    status: StatusJournal | None = None
    journal_dir = qlab_home() / "paper"
    journal_dir.mkdir(parents=True, exist_ok=True)
    try:
        with Store(journal_dir / f"{name}.duckdb") as store:
            status = StatusJournal(StoreJournal(store, name), files, info)
            status.write("starting")
            if replay:
                from qlab.paper.feed import ReplayFeed

                frames = {s: replay_candles(s, timeframe, bars, exchange) for s in replay}
                feed: Any = ReplayFeed(frames, timeframe=timeframe, speed=speed)
                broker = None
            else:
                feed, broker = await _exchange_parts(account, syms, timeframe, strategy, allow_live, closers)
            trader = PaperTrader(resolve_strategy(strategy), StoppableFeed(feed, stop), broker, journal=status, risk=risk, cash=cash)
            status.trader = trader
            log.info("paper trader %s started (pid %d): %s", name, os.getpid(), info["mode"])
            result = await trader.run()
            status.write("stopped" if stop.is_set() else "finished", final_equity=result.final_equity)
            log.info("paper trader %s %s after %d bars", name, "stopped" if stop.is_set() else "finished", status.bars)
            return result
    except BaseException as exc:
        if status is not None:
            status.write("failed", error=f"{type(exc).__name__}: {exc}"[:500])
        raise
    finally:
        for closer in closers:
            with contextlib.suppress(Exception):
                await closer()
        if read_pid(files) == os.getpid():
            files.pid.unlink(missing_ok=True)


async def _exchange_parts(account_name: str, symbols: list[str], timeframe: str, strategy: str, allow_live: bool,
                          closers: list[Any]) -> tuple[Any, Any]:
    """The live feed and exchange broker of an account (demo/testnet; live only with the opt-in)."""
    from qlab.accounts import load_account
    from qlab.exchange.ccxt_exchange import open_exchange
    from qlab.exchange.stream import make_stream_client
    from qlab.paper.exchange_broker import ExchangeBroker
    from qlab.paper.live_feed import live_feed
    from qlab.strategy.templates import resolve_strategy

    account = load_account(account_name, allow_live=allow_live)
    exchange = open_exchange(account.exchange, account.mode, account.ccxt_credentials())
    closers.append(exchange.close)
    stream = make_stream_client(account.exchange, account.mode)
    closers.append(stream.close)
    broker = ExchangeBroker(exchange, strategy=resolve_strategy(strategy), timeframe=timeframe)
    return live_feed(stream, symbols, timeframe, rest=exchange), broker


def start_background(argv: Sequence[str], name: str, timeout: float = 60.0) -> int:
    """Start `qlab paper run ARGV` (without --background) as a detached process logging to QLAB_HOME/run/<name>.log;
    returns its pid once its pid file exists. A child that dies first is reported with the end of its log."""
    files = ServiceFiles(name)
    files.root.mkdir(parents=True, exist_ok=True)
    pid = read_pid(files)
    if pid is not None and process_alive(pid):
        raise ConfigError(f"a paper trader named {name!r} is already running (pid {pid}); `qlab paper stop {name}` first")
    with open(files.log, "ab") as out:
        child = subprocess.Popen([sys.executable, "-m", "qlab.cli", "paper", "run", *argv, "--name", name, "--log", str(files.log)],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if read_pid(files) == child.pid:
            return child.pid
        if child.poll() is not None:
            tail = files.log.read_text(errors="replace")[-1500:] if files.log.exists() else ""
            raise ConfigError(f"paper trader {name!r} exited at start (status {child.returncode}); its log says:\n{tail}")
        time.sleep(0.1)
    raise ConfigError(f"paper trader {name!r} did not start within {timeout:.0f} s; see {files.log}")


def status_rows(root: Path | None = None) -> list[dict[str, Any]]:
    """Every known service: name, running or not, pid, state, bars, equity, positions, last update (from the status files)."""
    root = root or run_dir()
    rows = []
    for path in sorted(root.glob("*.json")) if root.is_dir() else []:
        try:
            row = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        pid = read_pid(ServiceFiles(path.stem, root))
        row["running"] = pid is not None and process_alive(pid)
        if not row["running"] and row.get("state") in ("running", "starting"):
            row["state"] = "dead (no process; restart it to resume from its journal)"
        rows.append(row)
    return rows


def stop_service(name: str, timeout: float = 30.0) -> dict[str, Any]:
    """SIGTERM the service and wait until it has exited and removed its pid file; returns its final status row."""
    files = ServiceFiles(name)
    pid = read_pid(files)
    if pid is None or not process_alive(pid):
        known = [p.stem for p in files.root.glob("*.pid")] if files.root.is_dir() else []
        if pid is not None:
            files.pid.unlink(missing_ok=True)  # a stale pid file of a dead process
        raise NotFoundError(f"no running paper trader named {name!r}." + did_you_mean(name, known) +
                            " `qlab paper status` lists them")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (files.pid.exists() or process_alive(pid)):
        time.sleep(0.1)
    if process_alive(pid):
        raise ConfigError(f"paper trader {name!r} (pid {pid}) did not exit within {timeout:.0f} s of SIGTERM; see {files.log}")
    files.pid.unlink(missing_ok=True)
    rows = [r for r in status_rows() if r.get("name") == name]
    return rows[0] if rows else {"name": name, "state": "stopped"}


def configure_logging(path: str | Path | None) -> None:
    """Log qlab's INFO records to `path` (the service log), secrets scrubbed by qlab.accounts' filter."""
    import qlab.accounts  # noqa: F401  (installs the secret filter on every log record)

    handlers: list[logging.Handler] = [logging.FileHandler(path)] if path else [logging.StreamHandler(sys.stderr)]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True)
    logging.getLogger("qlab.events").setLevel(logging.WARNING)  # per-bar chatter of the event bus

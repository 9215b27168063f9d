"""The alert engine: events in, rules evaluated, duplicates and cooldowns suppressed, alerts delivered to channels
with retries and exponential backoff, every outcome in a delivery log (in memory, and the store's 'alerts' journal).

Use it in three ways: `engine.start()` runs it in a background thread listening to `emit(...)` events (what a
dashboard or a paper-trading session does); `await engine.ahandle(event)` inside your own event loop; or
`engine.handle(event)` from a plain script.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qlab.accounts import scrub
from qlab.alerts.channels import Channel, DashboardChannel, DeliveryError
from qlab.alerts.events import BUS, Alert, AlertEvent, EventBus, install_event_bridge
from qlab.alerts.rules import Rule, parse_seconds
from qlab.errors import ConfigError, did_you_mean

log = logging.getLogger("qlab.alerts")
JOURNAL_STREAM = "alerts"


@dataclass(frozen=True)
class Delivery:
    """One line of the delivery log: an alert on one channel (or suppressed), status, attempts, latency, error."""

    alert_id: str
    rule: str
    key: str
    channel: str
    status: str  # 'delivered', 'failed' or 'suppressed'
    attempts: int
    latency_s: float | None  # from the event's creation to the channel's acknowledgement
    error: str | None
    ts: str
    receipt: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (the journal payload)."""
        return asdict(self)


class AlertEngine:
    """Rules and channels; evaluates events and delivers the alerts they fire (see the module docstring)."""

    def __init__(self, rules: Iterable[Rule] = (), channels: Iterable[Channel] = (), *, store: Any = None,
                 dedup_window: float | str = 300.0, retries: int = 3, backoff: float = 0.5, max_backoff: float = 30.0,
                 timeout: float = 15.0, tick: float = 1.0, clock: Callable[[], float] = time.time,
                 bus: EventBus | None = None, history: int = 1000) -> None:
        self.rules: dict[str, Rule] = {}
        self.channels: dict[str, Channel] = {}
        self.store = store
        self.dedup_window = parse_seconds(dedup_window, "dedup_window")
        if not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"retries={retries!r}: give the number of retries after a failed delivery (0 or more)")
        if backoff < 0 or max_backoff < backoff:
            raise ConfigError(f"backoff={backoff!r}, max_backoff={max_backoff!r}: need 0 <= backoff <= max_backoff")
        self.retries, self.backoff, self.max_backoff = retries, float(backoff), float(max_backoff)
        self.timeout, self.tick, self.clock = float(timeout), float(tick), clock
        self.bus = bus or BUS
        self._lock = threading.RLock()
        self._store_lock = threading.Lock()
        self._last_key: dict[tuple[str, str], float] = {}
        self._last_rule: dict[str, float] = {}
        self._alerts: deque[Alert] = deque(maxlen=history)
        self._log: deque[Delivery] = deque(maxlen=history)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._sessions: dict[int, Any] = {}
        self._pending: set[concurrent.futures.Future] = set()
        self._ticker_task: asyncio.Task | None = None
        for channel in channels:
            self.add_channel(channel)
        for rule in rules:
            self.add_rule(rule)

    # -- configuration ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, path: str | Path | None = None, **kwargs: Any) -> AlertEngine:
        """An engine with the channels, rules and settings of an alerts file (YAML, TOML or JSON; see qlab.alerts.config)."""
        from qlab.alerts.config import load_config

        config = load_config(path)
        return cls(config.rules, config.channels, **{**config.settings, **kwargs})

    def add_rule(self, rule: Rule) -> Rule:
        """Add a rule (names are unique; its channels must exist when channels are configured)."""
        if not isinstance(rule, Rule):
            raise ConfigError(f"add_rule takes a Rule (e.g. qlab.alerts.PriceCross(...)), not {type(rule).__name__}")
        with self._lock:
            if rule.name in self.rules:
                raise ConfigError(f"a rule named {rule.name!r} exists already; rule names must be unique")
            for name in rule.channels:
                if name not in self.channels:
                    raise ConfigError(f"rule {rule.name!r} sends to unknown channel {name!r}; channels: "
                                      f"{', '.join(self.channels) or 'none yet (add channels first)'}." + did_you_mean(name, self.channels))
            self.rules[rule.name] = rule
        return rule

    def remove_rule(self, name: str) -> None:
        """Delete a rule by name."""
        with self._lock:
            if name not in self.rules:
                raise ConfigError(f"no rule {name!r}; rules: {', '.join(self.rules) or 'none'}." + did_you_mean(name, self.rules))
            del self.rules[name]

    def add_channel(self, channel: Channel) -> Channel:
        """Add a channel (names are unique)."""
        if not isinstance(channel, Channel):
            raise ConfigError(f"add_channel takes a Channel (e.g. qlab.alerts.WebhookChannel(...)), not {type(channel).__name__}")
        with self._lock:
            if channel.name in self.channels:
                raise ConfigError(f"a channel named {channel.name!r} exists already; channel names must be unique")
            self.channels[channel.name] = channel
        return channel

    @property
    def dashboard(self) -> DashboardChannel:
        """The dashboard channel (one is added when the engine has none)."""
        for channel in self.channels.values():
            if isinstance(channel, DashboardChannel):
                return channel
        return self.add_channel(DashboardChannel())  # type: ignore[return-value]

    # -- evaluation ------------------------------------------------------------------------------
    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def evaluate(self, event: AlertEvent) -> list[Alert]:
        """The alerts `event` fires, after deduplication (same rule and key within the window) and each rule's cooldown."""
        if not isinstance(event, AlertEvent):
            raise ConfigError(f"evaluate takes an AlertEvent (see qlab.alerts.emit), not {type(event).__name__}")
        with self._lock:
            now = self._now()
            triggers = [t for rule in self.rules.values() if event.kind in rule.kinds for t in rule.evaluate(event, now)]
            return self._admit(triggers, event.ts, event.created)

    def check_time(self) -> list[Alert]:
        """Alerts due to time passing (stale feeds); a started engine calls this every `tick` seconds."""
        with self._lock:
            now = self._now()
            triggers = [t for rule in self.rules.values() for t in rule.check_time(now)]
            return self._admit(triggers, now, time.perf_counter())

    def _admit(self, triggers: list, ts: datetime, created: float) -> list[Alert]:
        now, fired = self.clock(), []
        for trig in triggers:
            rule = self.rules[trig.rule]
            window = self.dedup_window if rule.dedup_window is None else rule.dedup_window
            alert_id = uuid.uuid4().hex[:12]
            reason = None
            if now - self._last_key.get((trig.rule, trig.key), -math.inf) < window:
                reason = f"duplicate of the same rule and key within {window:g} s"
            elif now - self._last_rule.get(trig.rule, -math.inf) < rule.cooldown:
                reason = f"rule in cooldown ({rule.cooldown:g} s)"
            if reason:
                self._record(Delivery(alert_id, trig.rule, trig.key, "", "suppressed", 0, None, reason, _iso_now()))
                continue
            self._last_key[(trig.rule, trig.key)] = self._last_rule[trig.rule] = now
            alert = Alert(alert_id, trig.rule, trig.key, trig.severity, trig.title, trig.message, dict(trig.data), ts,
                          datetime.now(UTC), trig.channels, created)
            self._alerts.append(alert)
            self._journal("alert", alert.to_dict())
            fired.append(alert)
        return fired

    # -- delivery --------------------------------------------------------------------------------
    def _session(self) -> Any:
        """One aiohttp session per event loop (the engine's own, or the caller's)."""
        import aiohttp

        loop = asyncio.get_running_loop()
        session = self._sessions.get(id(loop))
        if session is None or session.closed:
            session = self._sessions[id(loop)] = aiohttp.ClientSession()
        return session

    async def deliver(self, alert: Alert) -> list[Delivery]:
        """Send `alert` to its channels (all channels when the rule names none) at once; one Delivery per channel."""
        names = alert.channels or tuple(self.channels)
        jobs = []
        for name in names:
            channel = self.channels.get(name)
            if channel is None:
                error = f"no channel {name!r}; channels: {', '.join(self.channels) or 'none'}." + did_you_mean(name, self.channels)
                jobs.append(self._done(Delivery(alert.id, alert.rule, alert.key, name, "failed", 0, None, error, _iso_now())))
            else:
                jobs.append(self._deliver_one(alert, channel))
        return list(await asyncio.gather(*jobs))

    async def _done(self, delivery: Delivery) -> Delivery:
        self._record(delivery)
        return delivery

    async def _deliver_one(self, alert: Alert, channel: Channel) -> Delivery:
        """Send with retries: exponential backoff (backoff * 2^n, capped, +-20 % jitter), Retry-After honoured."""
        session = self._session()
        attempts, error, receipt = 0, None, None
        while True:
            attempts += 1
            retry_after = None
            try:
                receipt = await asyncio.wait_for(channel.send(alert, session), self.timeout)
                error = None
                break
            except DeliveryError as exc:
                error, retryable, retry_after = str(exc), exc.retryable, exc.retry_after
            except TimeoutError:
                error, retryable = f"{channel.kind} channel {channel.name!r}: no answer within {self.timeout:g} s", True
            except Exception as exc:  # an unexpected failure inside a channel: logged scrubbed, retried like a network error
                error, retryable = scrub(f"{channel.kind} channel {channel.name!r}: {type(exc).__name__}: {exc}", channel.secrets()), True
            error = scrub(error, channel.secrets())
            if not retryable or attempts > self.retries:
                break
            delay = min(self.max_backoff, self.backoff * 2 ** (attempts - 1)) * random.uniform(0.8, 1.2)
            delay = min(self.max_backoff, max(delay, retry_after or 0.0))
            log.info("alert %s on %s: attempt %d failed (%s); retrying in %.2f s", alert.id, channel.name, attempts, error, delay)
            await asyncio.sleep(delay)
        status = "failed" if error else "delivered"
        delivery = Delivery(alert.id, alert.rule, alert.key, channel.name, status, attempts,
                            round(time.perf_counter() - alert.created, 6), error, _iso_now(), receipt)
        if error:
            log.warning("alert %s (%s) not delivered to %s after %d attempt(s): %s", alert.id, alert.rule, channel.name,
                        attempts, error)
        self._record(delivery)
        return delivery

    async def ahandle(self, event: AlertEvent) -> list[Delivery]:
        """Evaluate `event` and deliver what it fires; the deliveries (suppressed ones are only in the log)."""
        out: list[Delivery] = []
        for alert in self.evaluate(event):
            out += await self.deliver(alert)
        return out

    def handle(self, event: AlertEvent) -> list[Delivery]:
        """`ahandle` for scripts: runs in the engine's thread when it is started, else in a fresh event loop."""
        if self._loop is not None:
            return self.submit(event).result()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._run_and_close(self.ahandle(event)))
        raise ConfigError("handle() was called inside a running event loop (a notebook); use `await engine.ahandle(event)` "
                          "or `engine.start()` and emit events")

    async def _run_and_close(self, coro: Any) -> Any:
        try:
            return await coro
        finally:
            await self._close_sessions()

    async def asend_test(self, channel: str | None = None, message: str = "qlab test alert") -> list[Delivery]:
        """Send a test alert to one channel (or every channel), bypassing rules, dedup and cooldown."""
        if channel is not None and channel not in self.channels:
            raise ConfigError(f"no channel {channel!r}; channels: {', '.join(self.channels) or 'none'}."
                              + did_you_mean(channel, self.channels))
        now = datetime.now(UTC)
        alert = Alert(uuid.uuid4().hex[:12], "test", "test", "info", "test alert", message, {"sent_at": now.isoformat()},
                      now, now, (channel,) if channel else tuple(self.channels))
        self._alerts.append(alert)
        return await self.deliver(alert)

    def send_test(self, channel: str | None = None, message: str = "qlab test alert") -> list[Delivery]:
        """`asend_test` for scripts and `qlab alerts test`."""
        if self._loop is not None:
            return asyncio.run_coroutine_threadsafe(self.asend_test(channel, message), self._loop).result()
        return asyncio.run(self._run_and_close(self.asend_test(channel, message)))

    # -- background mode ---------------------------------------------------------------------------
    def start(self) -> AlertEngine:
        """Run in a background thread: listen to `emit(...)` events (and `qlab.events` log records), tick the clock."""
        if self._thread is not None:
            return self
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            loop.call_soon(ready.set)
            self._ticker_task = loop.create_task(self._ticker())
            loop.run_forever()
            leftover = [t for t in asyncio.all_tasks(loop) if not t.done()]  # the ticker, and deliveries past stop's timeout
            for task in leftover:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
            loop.run_until_complete(self._close_sessions())
            loop.close()

        self._thread = threading.Thread(target=main, name="qlab-alerts", daemon=True)
        self._thread.start()
        ready.wait()
        install_event_bridge()
        self._unsubscribe = self.bus.subscribe(self.submit)
        return self

    def submit(self, event: AlertEvent) -> concurrent.futures.Future:
        """Queue `event` on the started engine; returns a future of its deliveries. Safe from any thread."""
        if self._loop is None:
            raise ConfigError("the alert engine is not running; call engine.start() first, or use engine.handle(event)")
        future = asyncio.run_coroutine_threadsafe(self.ahandle(event), self._loop)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return future

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                for alert in self.check_time():
                    asyncio.get_running_loop().create_task(self.deliver(alert))
            except Exception:  # the clock must keep ticking whatever one rule does
                log.exception("alert engine tick failed")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop listening, finish the deliveries under way (up to `timeout` s), close connections, end the thread."""
        if self._unsubscribe:
            self._unsubscribe()
            self._unsubscribe = None
        if self._thread is None or self._loop is None:
            return
        concurrent.futures.wait(list(self._pending), timeout=timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._thread, self._loop = None, None

    def __enter__(self) -> AlertEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def aclose(self) -> None:
        """Close the HTTP session of the running loop (after `await engine.ahandle(...)` in your own loop)."""
        await self._close_sessions()

    async def _close_sessions(self) -> None:
        loop_id = id(asyncio.get_running_loop())
        session = self._sessions.pop(loop_id, None)
        if session is not None:
            await session.close()

    # -- history -----------------------------------------------------------------------------------
    def recent_alerts(self, limit: int = 50) -> list[Alert]:
        """The newest alerts fired by this engine, newest first."""
        return list(self._alerts)[::-1][:limit]

    def deliveries(self, limit: int | None = None) -> list[Delivery]:
        """The delivery log of this engine (deliveries, failures and suppressions), oldest first."""
        rows = list(self._log)
        return rows if limit is None else rows[-limit:]

    def _record(self, delivery: Delivery) -> None:
        self._log.append(delivery)
        self._journal(delivery.status if delivery.status == "suppressed" else "delivery", delivery.to_dict())

    def _journal(self, kind: str, payload: dict[str, Any]) -> None:
        """Append to the store's 'alerts' journal; a store error is logged, never lost silently, never raised into a sender."""
        if self.store is None:
            return
        text = scrub(json.dumps(payload, default=str), [s for c in self.channels.values() for s in c.secrets()])
        try:
            with self._store_lock:
                self.store.append_journal(JOURNAL_STREAM, kind, text)
        except Exception as exc:  # the alert still goes out; the log line says the journal missed it
            log.error("could not write the alert journal (%s): %s", kind, scrub(str(exc)))

    def __repr__(self) -> str:
        state = "running" if self._loop else "stopped"
        return f"AlertEngine({len(self.rules)} rule(s), channels={list(self.channels)}, {state})"


def _iso_now() -> str:
    return datetime.now(UTC).isoformat()


def delivery_log(store: Any, limit: int | None = None) -> Any:
    """The delivery log from a store's 'alerts' journal as a table (ts, kind, then the payload's fields)."""
    import pandas as pd

    frame = store.journal(JOURNAL_STREAM)
    if limit is not None:
        frame = frame.tail(limit)
    rows = [{"seq": r.seq, "ts": r.ts, "kind": r.kind, **json.loads(r.payload)} for r in frame.itertuples()]
    return pd.DataFrame(rows)

"""Alert events: what other components report (`emit(kind, **data)`), carried on a small thread-safe bus.

Components in earlier layers (paper trader, data sync, rate limiter) may not import qlab.alerts, so they report
through the standard `logging` module instead: `logging.getLogger("qlab.events").info("trader", extra={"qlab_event":
{"trader": "p1", "status": "stopped"}})`; `install_event_bridge()` (called by a started AlertEngine) turns such records
into events on the bus. Everything else calls `qlab.alerts.emit(...)` directly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from qlab.errors import ConfigError, did_you_mean
from qlab.events import EVENT_EXTRA, EVENTS_LOGGER  # components report through qlab.events.report_event

# kind -> the data fields the rules read (others are kept and shown in the alert)
EVENT_KINDS: dict[str, str] = {
    "price": "symbol, price",
    "signal": "strategy, symbol, side ('long'/'short'/'exit' ...), price",
    "equity": "trader, equity (drawdown is computed from the running peak, or pass drawdown)",
    "pnl": "trader, daily_pnl",
    "position": "trader, symbol, qty, notional",
    "trader": "trader, status ('running'/'stopped'/'error'), error",
    "feed": "feed (e.g. 'bybit BTC/USDT'), a heartbeat: any event of a feed refreshes it",
    "quality": "symbol, timeframe, score (0..100)",
    "budget": "name (e.g. 'bybit'), used, limit",
    "health": "exchange, ok (bool), failed (names of the failed checks), detail",
    "test": "message",
}


@dataclass(frozen=True)
class AlertEvent:
    """Something that happened: a kind (see EVENT_KINDS), its data, its time (UTC) and a monotonic creation stamp."""

    kind: str
    data: Mapping[str, Any] = field(default_factory=dict)
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))
    source: str = ""
    created: float = field(default_factory=time.perf_counter, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ConfigError(f"unknown alert event kind {self.kind!r}; use one of {', '.join(EVENT_KINDS)}."
                              + did_you_mean(str(self.kind), EVENT_KINDS))
        if self.ts.tzinfo is None:
            raise ConfigError(f"alert event time {self.ts!r} has no time zone; pass a UTC time such as datetime.now(UTC)")


Handler = Callable[[AlertEvent], Any]


class EventBus:
    """Publish/subscribe for AlertEvents; handlers run in the publisher's thread and must return quickly."""

    def __init__(self) -> None:
        self._handlers: list[Handler] = []
        self._lock = threading.Lock()

    def subscribe(self, handler: Handler) -> Callable[[], None]:
        """Call `handler(event)` for every published event; returns a function that unsubscribes it."""
        with self._lock:
            self._handlers.append(handler)

        def unsubscribe() -> None:
            with self._lock:
                if handler in self._handlers:
                    self._handlers.remove(handler)

        return unsubscribe

    def publish(self, event: AlertEvent) -> None:
        """Hand `event` to every handler; a failing handler is logged and never stops the others or the caller."""
        with self._lock:
            handlers = list(self._handlers)
        for handler in handlers:
            try:
                handler(event)
            except Exception:  # an alert handler must never break the component that emitted the event
                logging.getLogger("qlab.alerts").exception("alert handler %r failed on a %s event", handler, event.kind)


BUS = EventBus()


def emit(kind: str, *, ts: datetime | None = None, source: str = "", bus: EventBus | None = None, **data: Any) -> AlertEvent:
    """Report an event to the alert engines listening on the bus, e.g. `emit("price", symbol="BTC/USDT", price=65000.0)`."""
    event = AlertEvent(kind, dict(data), ts or datetime.now(UTC), source)
    (bus or BUS).publish(event)
    return event


class EventLogHandler(logging.Handler):
    """Turns records of the `qlab.events` logger that carry `extra={"qlab_event": {...}}` into events on a bus."""

    def __init__(self, bus: EventBus | None = None) -> None:
        super().__init__(logging.DEBUG)
        self.bus = bus or BUS

    def emit(self, record: logging.LogRecord) -> None:
        data = getattr(record, EVENT_EXTRA, None)
        if not isinstance(data, Mapping):
            return
        kind = str(record.msg)
        try:
            event = AlertEvent(kind, dict(data), datetime.fromtimestamp(record.created, UTC), source=str(data.get("source", "")))
        except ConfigError:  # a misspelt kind from a component: say so once in the log, never raise into it
            logging.getLogger("qlab.alerts").warning("ignored a qlab.events record of unknown kind %r", kind)
            return
        self.bus.publish(event)


_BRIDGE: EventLogHandler | None = None


def install_event_bridge() -> None:
    """Route `qlab.events` log records to the default bus (once per process)."""
    global _BRIDGE
    if _BRIDGE is None:
        _BRIDGE = EventLogHandler()
        logger = logging.getLogger(EVENTS_LOGGER)
        logger.addHandler(_BRIDGE)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)


@dataclass(frozen=True)
class Alert:
    """A fired rule, as channels send it: id, rule, key, severity, title, message, values, event time and fire time."""

    id: str
    rule: str
    key: str
    severity: str
    title: str
    message: str
    data: Mapping[str, Any]
    ts: datetime
    fired_at: datetime
    channels: tuple[str, ...] = ()
    created: float = field(default_factory=time.perf_counter, compare=False, repr=False)

    def text(self) -> str:
        """The plain-text body used by email and SMS: the message, the values and the times."""
        lines = [self.message, ""]
        lines += [f"{k}: {v}" for k, v in self.data.items() if v is not None]
        lines += ["", f"rule: {self.rule} ({self.severity}), key: {self.key}",
                  f"event time: {self.ts:%Y-%m-%d %H:%M:%S} UTC, fired: {self.fired_at:%Y-%m-%d %H:%M:%S} UTC", f"alert id: {self.id}"]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (the generic webhook body, the dashboard's row)."""
        return {"id": self.id, "rule": self.rule, "key": self.key, "severity": self.severity, "title": self.title,
                "message": self.message, "data": {k: _jsonable(v) for k, v in self.data.items()},
                "ts": self.ts.isoformat(), "fired_at": self.fired_at.isoformat(), "source": "qlab"}


def _jsonable(value: Any) -> Any:
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if hasattr(value, "item"):
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)

"""Alert rules: price (crosses, percentage moves), strategy (signals, drawdown, daily PnL, position size) and system
(trader stopped or erroring, stale feed, data-quality drop, API budget thresholds).

A rule reads events and returns Triggers. Level rules (drawdown, PnL, position, quality, trader status) fire when a
value enters the bad state and re-arm when it leaves it, so a breach that lasts an hour is one alert, not 3,600.
Rules keep per-key state; the engine evaluates them one event at a time under a lock.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any, ClassVar

from qlab.alerts.events import AlertEvent
from qlab.errors import ConfigError, did_you_mean

SEVERITIES = ("info", "warning", "critical")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_seconds(value: Any, what: str) -> float:
    """Seconds from a number or a duration such as '90s', '15m', '1h', '1d'."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ConfigError(f"{what}={value!r}: give seconds (a number >= 0) or a duration such as '90s', '15m', '1h', '1d'")
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def _number(event: AlertEvent, name: str) -> float | None:
    value = event.data.get(name)
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Trigger:
    """A rule's verdict on an event: which rule and key fired, a title, a message and the values behind it."""

    rule: str
    key: str
    title: str
    message: str
    severity: str
    channels: tuple[str, ...]
    data: dict[str, Any]


@dataclass
class Rule:
    """Common fields: a unique name, severity, the channels to use (empty: all), cooldown and dedup window (seconds)."""

    name: str
    severity: str = "warning"
    channels: tuple[str, ...] = ()
    cooldown: float = 0.0
    dedup_window: float | None = None  # None: the engine's default
    kinds: ClassVar[tuple[str, ...]] = ()
    type_name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"{type(self).__name__}: every rule needs a non-empty name, got {self.name!r}")
        if self.severity not in SEVERITIES:
            raise ConfigError(f"rule {self.name!r}: severity {self.severity!r}; use {', '.join(SEVERITIES)}."
                              + did_you_mean(str(self.severity), SEVERITIES))
        if isinstance(self.channels, str):
            self.channels = (self.channels,)
        self.channels = tuple(self.channels)
        self.cooldown = parse_seconds(self.cooldown, f"rule {self.name!r}: cooldown")
        if self.dedup_window is not None:
            self.dedup_window = parse_seconds(self.dedup_window, f"rule {self.name!r}: dedup_window")

    def evaluate(self, event: AlertEvent, now: datetime) -> list[Trigger]:
        """Triggers for `event` (only events of the rule's kinds reach it)."""
        return []

    def check_time(self, now: datetime) -> list[Trigger]:
        """Triggers due to the passing of time alone (a feed that went quiet); called by the engine's clock."""
        return []

    def trigger(self, key: str, title: str, message: str, **data: Any) -> Trigger:
        """A Trigger of this rule."""
        return Trigger(self.name, key, title, message, self.severity, self.channels, data)

    def describe(self) -> str:
        """One line for `qlab alerts list`: the type and the rule-specific settings."""
        base = {f.name for f in fields(Rule)}
        own = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name not in base and f.init)
        return f"{self.type_name}({own})"

    def to_dict(self) -> dict[str, Any]:
        """The rule as an alerts-file mapping ({type, name, ...}); `rule_from_dict` reads it back (the dashboard saves rules so)."""
        out: dict[str, Any] = {"type": self.type_name}
        for f in fields(self):
            if f.init:
                value = getattr(self, f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def _check_positive(self, name: str) -> None:
        value = getattr(self, name)
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"rule {self.name!r}: {name}={value!r} must be a number above 0")


def _matches(value: Any, wanted: Any) -> bool:
    return wanted is None or value == wanted


# ---------------------------------------------------------------- price

@dataclass
class PriceCross(Rule):
    """Fires when `symbol`'s price crosses `level`: 'above' from below it to at/above it, 'below' from at/above to below."""

    symbol: str = ""
    level: float = 0.0
    direction: str = "above"
    kinds: ClassVar[tuple[str, ...]] = ("price",)
    type_name: ClassVar[str] = "price_cross"
    _last: dict[str, float] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.symbol:
            raise ConfigError(f"rule {self.name!r}: price_cross needs a symbol, e.g. BTC/USDT")
        self._check_positive("level")
        if self.direction not in ("above", "below"):
            raise ConfigError(f"rule {self.name!r}: direction {self.direction!r}; use 'above' or 'below'")

    def evaluate(self, event: AlertEvent, now: datetime) -> list[Trigger]:
        price = _number(event, "price")
        if price is None or event.data.get("symbol") != self.symbol:
            return []
        last, self._last[self.symbol] = self._last.get(self.symbol), price
        if last is None:
            return []
        # prices at or above the level are 'above', the rest 'below'; a cross is a change of side
        crossed = last < self.level <= price if self.direction == "above" else last >= self.level > price
        if not crossed:
            return []
        return [self.trigger(self.symbol, f"{self.symbol} crossed {self.direction} {self.level:g}",
                             f"{self.symbol} went from {last:g} to {price:g}, crossing {self.direction} {self.level:g}.",
                             symbol=self.symbol, price=price, previous=last, level=self.level)]


@dataclass
class PriceMove(Rule):
    """Fires when a symbol's price moved by `pct` % or more within `window` ('15m', '1h' or seconds); then re-bases."""

    pct: float = 5.0
    window: Any = "1h"
    symbol: str | None = None  # None: every symbol
    direction: str = "both"  # 'up', 'down' or 'both'
    kinds: ClassVar[tuple[str, ...]] = ("price",)
    type_name: ClassVar[str] = "price_move"
    _prices: dict[str, deque] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_positive("pct")
        self.window = parse_seconds(self.window, f"rule {self.name!r}: window")
        if self.direction not in ("up", "down", "both"):
            raise ConfigError(f"rule {self.name!r}: direction {self.direction!r}; use 'up', 'down' or 'both'")

    def evaluate(self, event: AlertEvent, now: datetime) -> list[Trigger]:
        price, symbol = _number(event, "price"), event.data.get("symbol")
        if price is None or price <= 0 or not symbol or not _matches(symbol, self.symbol):
            return []
        history = self._prices.setdefault(symbol, deque())
        cutoff = event.ts - timedelta(seconds=self.window)
        while history and history[0][0] < cutoff:
            history.popleft()
        history.append((event.ts, price))
        start_ts, start = history[0]
        change = price / start - 1.0
        wanted = {"up": change > 0, "down": change < 0, "both": True}[self.direction]
        if not wanted or abs(change) * 100.0 < self.pct:
            return []
        history.clear()
        history.append((event.ts, price))  # the next alert needs another full move from here
        minutes = (event.ts - start_ts).total_seconds() / 60
        return [self.trigger(symbol, f"{symbol} {'up' if change > 0 else 'down'} {abs(change):.2%} in {minutes:.0f} min",
                             f"{symbol} moved {change:+.2%} from {start:g} to {price:g} in {minutes:.1f} minutes "
                             f"(rule: {self.pct:g} % within {self.window:g} s).",
                             symbol=symbol, price=price, start_price=start, change=change)]


# ---------------------------------------------------------------- strategy

@dataclass
class SignalFired(Rule):
    """Fires on every strategy signal that matches the filters (None matches anything); one alert per signal bar."""

    strategy: str | None = None
    symbol: str | None = None
    side: str | None = None
    kinds: ClassVar[tuple[str, ...]] = ("signal",)
    type_name: ClassVar[str] = "signal"

    def evaluate(self, event: AlertEvent, now: datetime) -> list[Trigger]:
        d = event.data
        if not (_matches(d.get("strategy"), self.strategy) and _matches(d.get("symbol"), self.symbol)
                and _matches(d.get("side"), self.side)):
            return []
        bar = d.get("bar") or event.ts.isoformat()
        at = f" at {d['price']:g}" if isinstance(d.get("price"), int | float) else ""
        return [self.trigger(f"{d.get('strategy')} {d.get('symbol')} {d.get('side')} {bar}",
                             f"signal {d.get('side')} {d.get('symbol')} ({d.get('strategy')})",
                             f"{d.get('strategy')} signalled {d.get('side')} on {d.get('symbol')}{at} (bar {bar}).",
                             **{k: d[k] for k in ("strategy", "symbol", "side", "price") if k in d})]


@dataclass
class DrawdownBeyond(Rule):
    """Fires when a trader's equity falls `pct` % or more below its running peak; re-arms once it is back within."""

    pct: float = 10.0
    trader: str | None = None
    kinds: ClassVar[tuple[str, ...]] = ("equity",)
    type_name: ClassVar[str] = "drawdown"
    _peak: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _breached: set[str] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_positive("pct")

    def evaluate(self, event: AlertEvent, now: datetime) -> list[Trigger]:
        trader = str(event.data.get("trader", ""))
        if not _matches(trader, self.trader):
            return []
        drawdown = _number(event, "drawdown")
        equity = _number(event, "equity")
        if drawdown is None:
            if equity is None:
                return []
            peak = self._peak[trader] = max(self._peak.get(trader, equity), equity)
            drawdown = equity / peak - 1.0 if peak > 0 else 0.0
        depth = abs(drawdown) * 100.0
        if depth < self.pct:
            self._breached.discard(trader)
            return []
        if trader in self._breached:
            return []
        self._breached.add(trader)
        return [self.trigger(trader, f"{trader or 'trader'} drawdown {depth:.1f} %",
                             f"{trader or 'trader'} is {depth:.2f} % below its equity peak (limit {self.pct:g} %)"
                             + (f"; equity {equity:,.2f}." if equity is not None else "."),
                             trader=trader, drawdown=-depth / 100.0, equity=equity)]


@dataclass
class DailyPnlBelow(Rule):
    """Fires once per trader and UTC day when the day's PnL falls below `threshold` (a negative amount, e.g. -500)."""

    threshold: float = 0.0
    trader: str | None = None
    kinds: ClassVar[tuple[str, ...]] = ("pnl", "equity")
    type_name: ClassVar[str] = "daily_pnl"
    _day_open: dict[tuple[str, str], float] = field(default_factory=dict, init=False, repr=False)
    _fired: set[tuple[str, str]] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.threshold, int | float) or isinstance(self.threshold, bool):
            raise ConfigError(f"rule {self.name!r}: threshold={self.threshold!r} must be a number (e.g. -500)")

    def evaluate(self, event: AlertEvent, now: datetime) -> list[Trigger]:
        trader = str(event.data.get("trader", ""))
        if not _matches(trader, self.trader):
            return []
        day = event.ts.date().isoformat()
        pnl = _number(event, "daily_pnl")
        if pnl is None and event.kind == "equity" and (equity := _number(event, "equity")) is not None:
            pnl = equity - self._day_open.setdefault((trader, day), equity)
        if pnl is None or pnl >= self.threshold or (trader, day) in self._fired:
            return []
        self._fired.add((trader, day))
        return [self.trigger(f"{trader} {day}", f"{trader or 'trader'} daily PnL {pnl:,.2f}",
                             f"{trader or 'trader'} has lost {-pnl:,.2f} today ({day} UTC), below the limit {self.threshold:,.2f}.",
                             trader=trader, daily_pnl=pnl, day=day)]


@dataclass
class PositionAbove(Rule):
    """Fires when a position's size (|notional| or |qty|, see `measure`) exceeds `limit`; re-arms when back within."""

    limit: float = 0.0
    measure: str = "notional"
    symbol: str | None = None
    trader: str | None = None
    kinds: ClassVar[tuple[str, ...]] = ("position",)
    type_name: ClassVar[str] = "position_size"
    _breached: set[str] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_positive("limit")
        if self.measure not in ("notional", "qty"):
            raise ConfigError(f"rule {self.name!r}: measure {self.measure!r}; use 'notional' or 'qty'")

    def evaluate(self, event: AlertEvent, now: datetime) -> list[Trigger]:
        trader, symbol = str(event.data.get("trader", "")), event.data.get("symbol")
        size = _number(event, self.measure)
        if size is None or not (_matches(trader, self.trader) and _matches(symbol, self.symbol)):
            return []
        key = f"{trader} {symbol}"
        if abs(size) <= self.limit:
            self._breached.discard(key)
            return []
        if key in self._breached:
            return []
        self._breached.add(key)
        return [self.trigger(key, f"{symbol} position {abs(size):,.4g} > {self.limit:,.4g}",
                             f"{trader or 'trader'} holds {size:,.6g} ({self.measure}) of {symbol}, above the limit {self.limit:,.6g}.",
                             trader=trader, symbol=symbol, size=size)]


# ---------------------------------------------------------------- system

@dataclass
class TraderDown(Rule):
    """Fires when a paper trader reports a status in `statuses` (default stopped or error), once per change."""

    trader: str | None = None
    statuses: tuple[str, ...] = ("stopped", "error")
    kinds: ClassVar[tuple[str, ...]] = ("trader",)
    type_name: ClassVar[str] = "trader_down"
    _status: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.statuses = (self.statuses,) if isinstance(self.statuses, str) else tuple(self.statuses)

    def evaluate(self, event: AlertEvent, now: datetime) -> list[Trigger]:
        from qlab.accounts import scrub

        trader, status = str(event.data.get("trader", "")), str(event.data.get("status", ""))
        if not _matches(trader, self.trader):
            return []
        previous, self._status[trader] = self._status.get(trader), status
        if status not in self.statuses or status == previous:
            return []
        error = scrub(str(event.data.get("error") or ""))
        return [self.trigger(f"{trader} {status}", f"paper trader {trader} {status}",
                             f"paper trader {trader} is {status}" + (f": {error}" if error else "."),
                             trader=trader, status=status, error=error or None)]


@dataclass
class FeedStale(Rule):
    """Fires when a feed sent nothing for `seconds` (feed and price events refresh it); re-arms on its next event."""

    seconds: Any = 60.0
    feed: str | None = None
    kinds: ClassVar[tuple[str, ...]] = ("feed", "price")
    type_name: ClassVar[str] = "feed_stale"
    _seen: dict[str, datetime] = field(default_factory=dict, init=False, repr=False)
    _stale: set[str] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.seconds = parse_seconds(self.seconds, f"rule {self.name!r}: seconds")
        self._check_positive("seconds")

    def evaluate(self, event: AlertEvent, now: datetime) -> list[Trigger]:
        feed = event.data.get("feed") or event.data.get("symbol")
        if feed and _matches(feed, self.feed):
            self._seen[str(feed)] = now  # arrival time: a replay's old timestamps must not look stale
            self._stale.discard(str(feed))
        return []

    def check_time(self, now: datetime) -> list[Trigger]:
        out = []
        for feed, seen in self._seen.items():
            quiet = (now - seen).total_seconds()
            if quiet >= self.seconds and feed not in self._stale:
                self._stale.add(feed)
                out.append(self.trigger(feed, f"feed {feed} stale for {quiet:.0f} s",
                                        f"no data from {feed} for {quiet:.1f} s (limit {self.seconds:g} s); last at {seen:%H:%M:%S} UTC.",
                                        feed=feed, quiet_s=quiet))
        return out


@dataclass
class QualityBelow(Rule):
    """Fires when a series' data-quality score (0..100) drops below `score`; re-arms when it recovers."""

    score: float = 90.0
    symbol: str | None = None
    kinds: ClassVar[tuple[str, ...]] = ("quality",)
    type_name: ClassVar[str] = "quality_below"
    _low: set[str] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_positive("score")

    def evaluate(self, event: AlertEvent, now: datetime) -> list[Trigger]:
        value, symbol = _number(event, "score"), event.data.get("symbol")
        if value is None or not _matches(symbol, self.symbol):
            return []
        key = f"{symbol} {event.data.get('timeframe', '')}".strip()
        if value >= self.score:
            self._low.discard(key)
            return []
        if key in self._low:
            return []
        self._low.add(key)
        return [self.trigger(key, f"data quality {key}: {value:.1f}",
                             f"the data-quality score of {key} dropped to {value:.1f}, below {self.score:g}.",
                             symbol=symbol, timeframe=event.data.get("timeframe"), score=value)]


@dataclass
class BudgetThreshold(Rule):
    """Fires as an API budget's use crosses each threshold (percent, default 50, 80, 100); re-arms when use falls."""

    thresholds: tuple[float, ...] = (50.0, 80.0, 100.0)
    budget: str | None = None
    kinds: ClassVar[tuple[str, ...]] = ("budget",)
    type_name: ClassVar[str] = "api_budget"
    _crossed: dict[str, set[float]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            self.thresholds = tuple(sorted(float(t) for t in self.thresholds))
        except (TypeError, ValueError):
            raise ConfigError(f"rule {self.name!r}: thresholds={self.thresholds!r}; give percentages such as [50, 80, 100]") from None
        if not self.thresholds or self.thresholds[0] <= 0:
            raise ConfigError(f"rule {self.name!r}: thresholds={self.thresholds!r}; give percentages above 0")

    def evaluate(self, event: AlertEvent, now: datetime) -> list[Trigger]:
        name = str(event.data.get("name", ""))
        used, limit = _number(event, "used"), _number(event, "limit")
        if used is None or not limit or not _matches(name, self.budget):
            return []
        pct = used / limit * 100.0
        crossed = self._crossed.setdefault(name, set())
        crossed.intersection_update(t for t in self.thresholds if t <= pct)  # use fell (a new period): re-arm those above
        new = [t for t in self.thresholds if t <= pct and t not in crossed]
        if not new:
            return []
        crossed.update(new)
        top = max(new)  # a jump past several thresholds is one alert, for the highest
        return [self.trigger(f"{name} {top:g}", f"API budget {name}: {pct:.0f} % used",
                             f"{name} has used {used:,.0f} of {limit:,.0f} ({pct:.1f} %), past the {top:g} % threshold.",
                             budget=name, used=used, limit=limit, pct=pct, threshold=top)]


@dataclass
class HealthFailed(Rule):
    """Fires when an exchange health check (`qlab exchange check`) fails, once per failure; re-arms when it passes."""

    exchange: str | None = None
    kinds: ClassVar[tuple[str, ...]] = ("health",)
    type_name: ClassVar[str] = "health_failed"
    _failing: set[str] = field(default_factory=set, init=False, repr=False)

    def evaluate(self, event: AlertEvent, now: datetime) -> list[Trigger]:
        exchange = str(event.data.get("exchange", ""))
        if not _matches(exchange, self.exchange):
            return []
        if event.data.get("ok"):
            self._failing.discard(exchange)
            return []
        if exchange in self._failing:
            return []
        self._failing.add(exchange)
        failed = ", ".join(event.data.get("failed") or []) or "unknown check"
        detail = str(event.data.get("detail") or "")
        return [self.trigger(exchange, f"{exchange} health check failed: {failed}",
                             f"the health check of {exchange} failed ({failed})" + (f": {detail}" if detail else "."),
                             exchange=exchange, failed=failed)]


RULE_TYPES: dict[str, type[Rule]] = {cls.type_name: cls for cls in (
    PriceCross, PriceMove, SignalFired, DrawdownBeyond, DailyPnlBelow, PositionAbove,
    TraderDown, FeedStale, QualityBelow, BudgetThreshold, HealthFailed)}


def rule_from_dict(spec: dict[str, Any], where: str = "rules") -> Rule:
    """A rule from a config mapping {type: price_cross, name: ..., symbol: ..., ...}, with unknown keys named."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: each rule must be a mapping with type and name, got {spec!r}")
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in RULE_TYPES:
        raise ConfigError(f"{where}: rule type {kind!r}; use one of {', '.join(RULE_TYPES)}." + did_you_mean(str(kind), RULE_TYPES))
    cls = RULE_TYPES[kind]
    allowed = [f.name for f in fields(cls) if f.init]
    for key in spec:
        if key not in allowed:
            raise ConfigError(f"{where}: {kind} rule {spec.get('name')!r} has unknown key {key!r}; use {', '.join(allowed)}."
                              + did_you_mean(str(key), allowed))
    missing = [f.name for f in fields(cls) if f.init and f.default is MISSING and f.default_factory is MISSING
               and f.name not in spec]
    if missing:
        raise ConfigError(f"{where}: {kind} rule needs {', '.join(missing)}")
    for key in ("channels", "statuses", "thresholds"):
        if isinstance(spec.get(key), list):
            spec[key] = tuple(spec[key])
    return cls(**spec)

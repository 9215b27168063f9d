"""Pre-trade risk management of the paper trader: position, notional and leverage limits, a volatility
target, an order-rate limit, a stale-data guard, and a kill switch on daily loss or drawdown.

`RiskManager.check_entry` sizes the room an entry has (a notional and a quantity cap the broker honours at
fill time) or rejects it with a rule and a reason; every rejection becomes a "risk" event in the journal.
Exits are never refused. The kill switch (`on_mark`): the trader cancels every order and flattens every
position; after max_drawdown it refuses new entries for the rest of the run, after max_daily_loss for the rest
of that UTC day (trading resumes the next day, as a daily loss limit is meant to work). The manager's memory (order times, equity peak, day
start) is a fold over the journal's events, so it survives restarts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from qlab.errors import ConfigError
from qlab.paper.events import Event
from qlab.paper.sizing import vol_target_notional
from qlab.paper.state import AccountState

RULES = ("kill_switch", "stale_data", "max_orders_per_minute", "max_position", "max_notional", "max_total_notional",
         "max_leverage", "vol_target")


@dataclass(frozen=True)
class RiskLimits:
    """Limits (None: off). Notional in quote currency, fractions as 0.05 for 5 %, ages in seconds."""

    max_position: float | None = None  # units of base currency per symbol
    max_notional: float | None = None  # per symbol
    max_total_notional: float | None = None  # all symbols together
    max_leverage: float | None = None  # total notional / equity
    max_daily_loss: float | None = None  # fraction of the equity at the start of the UTC day -> kill switch
    max_drawdown: float | None = None  # fraction below the equity peak -> kill switch
    max_orders_per_minute: int | None = None
    vol_target: float | None = None  # annualised volatility target: an entry's notional <= equity * target / vol
    vol_window: int = 20
    max_data_age: float | None = None  # seconds between a bar's close and now; older -> no new orders

    def __post_init__(self) -> None:
        for name in ("max_position", "max_notional", "max_total_notional", "max_leverage", "vol_target", "max_data_age"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"RiskLimits: {name}={value!r} must be > 0 (or None for no limit)")
        for name in ("max_daily_loss", "max_drawdown"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise ConfigError(f"RiskLimits: {name}={value!r} must be a fraction in (0, 1), e.g. 0.05 for 5 %")
        if self.max_orders_per_minute is not None and not (isinstance(self.max_orders_per_minute, int) and self.max_orders_per_minute >= 1):
            raise ConfigError(f"RiskLimits: max_orders_per_minute={self.max_orders_per_minute!r} must be a whole number >= 1")


@dataclass(frozen=True)
class Verdict:
    """The risk manager's answer to an entry: allowed with caps, or refused by `rule` for `reason`."""

    ok: bool
    notional_cap: float = math.inf
    qty_cap: float = math.inf
    rule: str = ""
    reason: str = ""


class RiskManager:
    """Applies RiskLimits to the trader's orders; its memory is a fold over journal events."""

    def __init__(self, limits: RiskLimits | None = None) -> None:
        self.limits = limits or RiskLimits()
        self.order_times: list[pd.Timestamp] = []
        self.peak = -math.inf
        self.day: str | None = None
        self.day_start = math.nan
        self.killed = False  # max_drawdown fired: no new entries for the rest of the run
        self.halted_day: str | None = None  # max_daily_loss fired on this UTC day: no new entries until the next one
        self.last_rule = ""  # the limit behind on_mark's last kill reason

    def apply(self, ev: Event) -> None:
        """Remember order times, the equity peak and the day's starting equity."""
        if ev.kind == "order" and ev.payload.get("at"):
            self.order_times.append(pd.Timestamp(ev.payload["at"]))
            self.order_times = self.order_times[-1000:]
        elif ev.kind == "mark":
            equity = ev.payload["equity"]
            self.peak = max(self.peak, equity)
            day = (ev.ts or "")[:10]
            if day != self.day:
                self.day, self.day_start = day, self._last_equity if hasattr(self, "_last_equity") else equity
            self._last_equity = equity
        elif ev.kind == "kill":
            if ev.payload.get("rule") == "max_daily_loss":
                self.halted_day = (ev.ts or "")[:10]
            else:
                self.killed = True

    def check_order_rate(self, now: pd.Timestamp) -> Verdict:
        """Refuse when `max_orders_per_minute` orders were already sent in the minute before `now`."""
        limit = self.limits.max_orders_per_minute
        if limit is not None:
            recent = sum(1 for t in self.order_times if now - pd.Timedelta(seconds=60) < t <= now)
            if recent >= limit:
                return Verdict(False, rule="max_orders_per_minute", reason=f"{recent} orders in the last minute, limit {limit}")
        return Verdict(True)

    def check_entry(self, symbol: str, price: float, state: AccountState, *, now: pd.Timestamp, data_time: pd.Timestamp,
                    vol: float = math.nan, bars_per_year: float = math.nan, committed: float = 0.0) -> Verdict:
        """The room a new entry of `symbol` has at about `price` (the last close), or why it has none; `committed` is the
        estimated notional of other symbols' entry orders not filled yet."""
        lim = self.limits
        if self.killed or state.killed:
            return Verdict(False, rule="kill_switch", reason="the kill switch fired earlier in this run; no new entries")
        if self.halted_day is not None and data_time.strftime("%Y-%m-%d") <= self.halted_day:
            return Verdict(False, rule="kill_switch", reason=f"max_daily_loss halted trading for {self.halted_day} (UTC); "
                                                              "entries resume at the next UTC day")
        age = (now - data_time).total_seconds()
        if lim.max_data_age is not None and age > lim.max_data_age:
            return Verdict(False, rule="stale_data", reason=f"latest bar closed {age:.0f} s ago, limit {lim.max_data_age:.0f} s")
        rate = self.check_order_rate(now)
        if not rate.ok:
            return rate
        equity = state.equity
        others = committed + sum(p.open_size * p.entry_price for s, p in state.positions.items() if s != symbol)
        caps: list[tuple[float, str]] = []
        if lim.max_notional is not None:
            caps.append((lim.max_notional, "max_notional"))
        if lim.max_total_notional is not None:
            caps.append((lim.max_total_notional - others, "max_total_notional"))
        if lim.max_leverage is not None:
            caps.append((lim.max_leverage * equity - others, "max_leverage"))
        if lim.vol_target is not None:
            if math.isnan(vol):
                return Verdict(False, rule="vol_target", reason=f"no volatility estimate yet ({lim.vol_window} bars of returns needed)")
            caps.append((vol_target_notional(equity, lim.vol_target, vol, bars_per_year), "vol_target"))
        cap, rule = min(caps, default=(math.inf, ""))
        if cap <= 0.0:
            return Verdict(False, rule=rule, reason=f"no room left under {rule}: cap {cap:.2f} at equity {equity:.2f}")
        qty_cap = math.inf
        if lim.max_position is not None:
            qty_cap = lim.max_position
        return Verdict(True, notional_cap=cap, qty_cap=qty_cap)

    def on_mark(self, equity: float) -> str:
        """After a close: the kill-switch reason when daily loss or drawdown is breached, else ''."""
        lim = self.limits
        if self.killed:
            return ""
        self.last_rule = "max_drawdown"
        if lim.max_drawdown is not None and self.peak > 0 and (self.peak - equity) / self.peak >= lim.max_drawdown:
            return (f"drawdown {(self.peak - equity) / self.peak:.2%} from the peak {self.peak:.2f} reached "
                    f"max_drawdown {lim.max_drawdown:.2%}")
        self.last_rule = "max_daily_loss"
        halted_today = self.halted_day is not None and self.halted_day >= (self.day or "")
        if (lim.max_daily_loss is not None and not halted_today and self.day_start > 0
                and (self.day_start - equity) / self.day_start >= lim.max_daily_loss):
            return (f"daily loss {(self.day_start - equity) / self.day_start:.2%} since the day's start {self.day_start:.2f} "
                    f"reached max_daily_loss {lim.max_daily_loss:.2%}")
        return ""

"""The API usage ledger in the store: the sink a UsageMeter writes to, budgets resumed from it, and its summary.

    meter = UsageMeter.for_client(client, "my-bybit", sink=StoreUsageSink(store), budget=resume_budget(store, "my-bybit", budget))
    usage_summary(store, "my-bybit", since="2025-01-01", by="day")     # what `qlab api usage` prints

A restart must not reset a budget: `load_spent` reads what the ledger already holds for the current UTC
day or month, and `resume_budget` seeds a Budget with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pandas as pd

from qlab.data.store import Store
from qlab.errors import ConfigError, NotFoundError, did_you_mean
from qlab.exchange.ratelimit import PERIODS, Budget, period_start

SUMMARY_BY = ("endpoint", "day", "status", "key")
SUMMARY_COLUMNS = ("calls", "weight", "errors", "rate_limited", "cost")


class StoreUsageSink:
    """A UsageMeter sink appending usage rows to `store`'s api_usage ledger, each batch in one transaction."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.written = 0

    def __repr__(self) -> str:
        return f"StoreUsageSink({self.store!r}, written={self.written})"

    def __call__(self, rows: list[dict[str, Any]]) -> int:
        if not rows:
            return 0
        with self.store.transaction():
            n = self.store.append_usage(rows)
        self.written += n
        return n


@dataclass(frozen=True)
class Spent:
    """Calls made and money spent by one key in one period, as the ledger records them."""

    calls: int
    money: float


def load_spent(store: Store, key_id: str, period: str, now: float | None = None) -> Spent:
    """What key `key_id` has used in the current UTC `period` ('day' or 'month') holding `now` (epoch s, default now)."""
    if period not in PERIODS:
        raise ConfigError(f"period={period!r}: use 'day' or 'month'." + did_you_mean(period, PERIODS))
    start = period_start(period, now)
    rows = store.usage(key_id, since=pd.Timestamp(start))
    if now is not None:
        rows = rows[rows["ts"] <= pd.Timestamp(now, unit="s", tz="UTC")]
    return Spent(len(rows), float(rows["cost"].sum()) if len(rows) else 0.0)


def resume_budget(store: Store, key_id: str, budget: Budget, now: float | None = None) -> Budget:
    """`budget` seeded with the calls and money the ledger holds for `key_id` this UTC day and month (returned)."""
    now = time.time() if now is None else now
    for period in PERIODS:
        if any(p == period for _, p, _ in budget.limits.values()):
            spent = load_spent(store, key_id, period, now)
            budget.seed(period, spent.calls, spent.money, now)
    return budget


def usage_summary(store: Store, key_id: str | None = None, since: Any = None, until: Any = None,
                  by: str = "endpoint") -> pd.DataFrame:
    """The ledger summed per key, exchange and `by` ('endpoint', 'day', 'status' or 'key'):
    calls, weight, errors (status not ok), rate_limited (429s: status RateLimitError) and cost.

    An unknown `key_id` is a NotFoundError naming the keys the ledger knows; no calls in the window is an empty frame."""
    if by not in SUMMARY_BY:
        raise ConfigError(f"by={by!r}: use one of {', '.join(SUMMARY_BY)}." + did_you_mean(by, SUMMARY_BY))
    rows = store.usage(key_id, since=since, until=until)
    if key_id is not None and rows.empty and store.usage(key_id).empty:
        known = sorted(store.usage()["key_id"].unique())
        raise NotFoundError(f"the usage ledger has no calls by key {key_id!r}; it knows {', '.join(known) or 'no key yet'}."
                            + did_you_mean(key_id, known))
    keys = ["key_id", "exchange"] + {"endpoint": ["endpoint"], "status": ["status"], "key": [], "day": ["day"]}[by]
    if rows.empty:
        return pd.DataFrame(columns=[*keys, *SUMMARY_COLUMNS])
    rows = rows.assign(day=rows["ts"].dt.strftime("%Y-%m-%d"), errors=rows["status"] != "ok",
                       rate_limited=rows["status"] == "RateLimitError", calls=1)
    out = rows.groupby(keys, sort=True)[list(SUMMARY_COLUMNS)].sum().reset_index()
    return out.astype({"calls": "int64", "errors": "int64", "rate_limited": "int64"})

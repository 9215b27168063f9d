"""The usage ledger: the store sink, budgets resumed from it after a restart, and its summary (`qlab api usage`)."""

from __future__ import annotations

import random
import warnings
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from qlab.data.usage import StoreUsageSink, load_spent, resume_budget, usage_summary
from qlab.errors import BudgetExceededError, ConfigError, NotFoundError
from qlab.exchange.ratelimit import Budget, BudgetWarning

NOW = datetime(2025, 3, 14, 15, 30, tzinfo=UTC)
ENDPOINTS = ("/v5/market/kline", "/v5/market/instruments-info", "/v5/order/create")
STATUSES = ("ok", "ok", "ok", "RateLimitError", "NetworkError")


def _rows(n: int = 300, seed: int = 0) -> list[dict]:
    """Random ledger rows over the last 40 days for two keys."""
    rng = random.Random(seed)
    return [{"key_id": rng.choice(["alice", "bob"]), "exchange": "bybit", "endpoint": rng.choice(ENDPOINTS),
             "weight": float(rng.choice([1, 5])), "ts": NOW - timedelta(seconds=rng.uniform(0, 40 * 86400)),
             "status": rng.choice(STATUSES), "cost": rng.choice([0.0, 0.002])} for _ in range(n)]


def test_the_sink_appends_each_batch_in_one_transaction(store):
    sink = StoreUsageSink(store)
    rows = _rows(10)
    assert sink(rows[:4]) == 4 and sink(rows[4:]) == 6 and sink([]) == 0
    ledger = store.usage()
    assert len(ledger) == 10 and sink.written == 10
    assert sorted(ledger["endpoint"]) == sorted(r["endpoint"] for r in rows)
    bad = [dict(rows[0]), {"key_id": "x"}]  # the second row lacks every other column: the whole batch is refused
    with pytest.raises(Exception):  # noqa: B017 - duckdb's constraint error; what matters is that nothing landed
        sink(bad)
    assert len(store.usage()) == 10 and sink.written == 10


def test_load_spent_counts_this_utc_day_and_month_only(store):
    rows = _rows()
    store.append_usage(rows)
    now = NOW.timestamp()
    day_start, month_start = NOW.replace(hour=0, minute=0, second=0), NOW.replace(day=1, hour=0, minute=0, second=0)
    for period, start in (("day", day_start), ("month", month_start)):
        mine = [r for r in rows if r["key_id"] == "alice" and start <= r["ts"] <= NOW]
        spent = load_spent(store, "alice", period, now)
        assert spent.calls == len(mine) and spent.money == pytest.approx(sum(r["cost"] for r in mine))
    with pytest.raises(ConfigError, match="did you mean 'day'"):
        load_spent(store, "alice", "dya")


def test_a_restarted_budget_continues_from_the_ledger(store):
    row = {"key_id": "alice", "exchange": "bybit", "endpoint": "/v5/market/kline", "weight": 1.0, "status": "ok"}
    today = [dict(row, ts=NOW - timedelta(hours=h)) for h in range(8)]  # 8 calls today (since 07:30 UTC)
    yesterday = [dict(row, ts=NOW - timedelta(hours=16 + h)) for h in range(5)]  # before today's 00:00 UTC
    store.append_usage(today + yesterday + [dict(row, key_id="bob", ts=NOW)])
    events = []
    budget = resume_budget(store, "alice", Budget(calls_per_day=10, callbacks=[events.append]), NOW.timestamp())
    assert budget.used("calls_per_day", NOW.timestamp()) == 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BudgetWarning)
        for _ in range(2):
            budget.charge("alice", "bybit", "/v5/market/kline", NOW.timestamp())
        with pytest.raises(BudgetExceededError, match="calls_per_day=10"):
            budget.charge("alice", "bybit", "/v5/market/kline", NOW.timestamp())
    assert [e.threshold for e in events] == [100]  # 50 and 80 % were passed before the restart


@pytest.mark.parametrize("by", ["endpoint", "day", "status", "key"])
def test_summary_matches_a_plain_python_count(store, by):
    rows = _rows()
    store.append_usage(rows)
    since = NOW - timedelta(days=10)
    table = usage_summary(store, since=since, by=by)
    expected: dict[tuple, Counter] = defaultdict(Counter)
    for r in rows:
        if r["ts"] < since:
            continue
        group = {"endpoint": (r["endpoint"],), "status": (r["status"],), "key": (),
                 "day": (r["ts"].strftime("%Y-%m-%d"),)}[by]
        c = expected[(r["key_id"], r["exchange"], *group)]
        c["calls"] += 1
        c["weight"] += r["weight"]
        c["errors"] += r["status"] != "ok"
        c["rate_limited"] += r["status"] == "RateLimitError"
        c["cost"] += r["cost"]
    assert len(table) == len(expected)
    for row in table.itertuples(index=False):
        key = tuple(row[: len(table.columns) - 5])
        for column in ("calls", "weight", "errors", "rate_limited"):
            assert getattr(row, column) == expected[key][column]
        assert row.cost == pytest.approx(expected[key]["cost"])


def test_summary_errors_and_empty_windows(store):
    store.append_usage(_rows(20))
    with pytest.raises(NotFoundError, match="did you mean 'alice'"):
        usage_summary(store, "alcie")
    with pytest.raises(ConfigError, match="did you mean 'endpoint'"):
        usage_summary(store, by="endpoints")
    empty = usage_summary(store, "alice", since=NOW + timedelta(days=1))
    assert empty.empty and list(empty.columns)[-5:] == ["calls", "weight", "errors", "rate_limited", "cost"]
    assert isinstance(usage_summary(store), pd.DataFrame)

"""Alert rules on hand-made cases and on real bundled prices, against plain reference loops."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from qlab.alerts import (
    AlertEvent,
    BudgetThreshold,
    DailyPnlBelow,
    DrawdownBeyond,
    FeedStale,
    PositionAbove,
    PriceCross,
    PriceMove,
    QualityBelow,
    SignalFired,
    TraderDown,
    rule_from_dict,
)
from qlab.errors import ConfigError

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def ev(kind, seconds=0.0, **data):
    return AlertEvent(kind, data, T0 + timedelta(seconds=seconds))


def run(rule, events):
    """(index of the event, trigger) for every trigger."""
    return [(i, t) for i, e in enumerate(events) for t in rule.evaluate(e, e.ts)]


def test_price_cross_fires_only_on_a_crossing_in_its_direction():
    prices = [99, 101, 102, 98, 100, 100, 99.9, 100.1]
    up = run(PriceCross("up", symbol="X", level=100), [ev("price", symbol="X", price=p) for p in prices])
    down = run(PriceCross("dn", symbol="X", level=100, direction="below"), [ev("price", symbol="X", price=p) for p in prices])
    assert [i for i, _ in up] == [1, 4, 7]  # 99->101, 98->100 (reaching the level counts), 99.9->100.1
    assert [i for i, _ in down] == [3, 6]  # 102->98, 100->99.9
    other = run(PriceCross("up", symbol="X", level=100), [ev("price", symbol="Y", price=p) for p in prices])
    assert other == []


def test_price_move_matches_a_reference_loop_on_real_btc_prices():
    import qlab

    closes = qlab.load_sample("BTC/USDT", "1h")["close"].iloc[:3000]
    events = [AlertEvent("price", {"symbol": "BTC/USDT", "price": float(p)}, t.to_pydatetime()) for t, p in closes.items()]
    fired = [i for i, _ in run(PriceMove("mv", pct=3.0, window="4h"), events)]
    times, prices = [t.to_pydatetime() for t in closes.index], closes.tolist()
    expected, base = [], 0  # reference: compare with the oldest price of the last 4 h since the last alert
    for i in range(len(prices)):
        # bars are at least 1 h apart, so the oldest bar within 4 h is at most 4 rows back
        start = max(base, next(j for j in range(max(0, i - 5), i + 1) if times[i] - times[j] <= timedelta(hours=4)))
        if abs(prices[i] / prices[start] - 1) >= 0.03:
            expected.append(i)
            base = i
    assert len(expected) > 10 and fired == expected


def test_drawdown_fires_when_equity_first_falls_below_the_limit_and_rearms():
    import qlab

    equity = qlab.load_sample("BTC/USDT", "1d")["close"]
    events = [AlertEvent("equity", {"trader": "t", "equity": float(v)}, ts.to_pydatetime()) for ts, v in equity.items()]
    fired = [i for i, _ in run(DrawdownBeyond("dd", pct=30), events)]
    below = (equity / equity.cummax() - 1 <= -0.30).to_numpy()
    entries = [i for i in range(len(below)) if below[i] and (i == 0 or not below[i - 1])]
    assert fired == entries and len(fired) >= 2


def test_daily_pnl_from_equity_fires_once_per_day():
    day2 = 86400
    events = [ev("equity", 0, trader="a", equity=1000), ev("equity", 60, trader="a", equity=700),
              ev("equity", 120, trader="a", equity=600), ev("equity", day2, trader="a", equity=600),
              ev("equity", day2 + 60, trader="a", equity=350), ev("pnl", day2 + 90, trader="b", daily_pnl=-10)]
    fired = run(DailyPnlBelow("pnl", threshold=-200), events)
    assert [(i, t.data["daily_pnl"]) for i, t in fired] == [(1, -300.0), (4, -250.0)]


def test_position_size_quality_and_trader_status_are_edge_triggered():
    pos = run(PositionAbove("pos", limit=5000), [ev("position", symbol="BTC", notional=n) for n in (100, 6000, 7000, 4000, -5500)])
    assert [i for i, _ in pos] == [1, 4]  # short positions count by size
    qual = run(QualityBelow("q", score=95), [ev("quality", symbol="X", timeframe="1h", score=s) for s in (99, 90, 80, 97, 94)])
    assert [i for i, _ in qual] == [1, 4]
    status = run(TraderDown("down"), [ev("trader", trader="p", status=s) for s in ("running", "error", "error", "stopped", "running")])
    assert [(i, t.data["status"]) for i, t in status] == [(1, "error"), (3, "stopped")]


def test_api_budget_thresholds_fire_once_each_and_rearm_on_a_new_period():
    used = [10, 55, 60, 85, 100, 120, 5, 51, 95]
    fired = run(BudgetThreshold("budget"), [ev("budget", name="bybit", used=u, limit=100) for u in used])
    assert [(i, t.data["threshold"]) for i, t in fired] == [(1, 50), (3, 80), (4, 100), (7, 50), (8, 80)]
    jump = run(BudgetThreshold("budget"), [ev("budget", name="x", used=90, limit=100)])
    assert [t.data["threshold"] for _, t in jump] == [80]  # one alert for the highest threshold crossed


def test_feed_stale_uses_arrival_time_and_rearms():
    rule = FeedStale("stale", seconds=30)
    rule.evaluate(ev("feed", feed="f"), T0)
    assert rule.check_time(T0 + timedelta(seconds=29)) == []
    assert [t.key for t in rule.check_time(T0 + timedelta(seconds=31))] == ["f"]
    assert rule.check_time(T0 + timedelta(seconds=60)) == []  # one alert per silence
    rule.evaluate(ev("price", symbol="f", price=1.0), T0 + timedelta(seconds=61))
    assert [t.key for t in rule.check_time(T0 + timedelta(seconds=92))] == ["f"]


def test_signal_filters():
    rule = SignalFired("sig", strategy="macd", side="long")
    events = [ev("signal", strategy="macd", symbol="X", side="long"), ev("signal", strategy="macd", symbol="X", side="short"),
              ev("signal", strategy="rsi", symbol="X", side="long")]
    assert [i for i, _ in run(rule, events)] == [0]


def test_rules_from_config_mappings_check_their_keys():
    rule = rule_from_dict({"type": "price_move", "name": "m", "pct": 2, "window": "15m", "channels": ["a"]})
    assert isinstance(rule, PriceMove) and rule.window == 900 and rule.channels == ("a",)
    again = rule_from_dict(rule.to_dict())
    assert type(again) is PriceMove and again.to_dict() == rule.to_dict() and again.window == 900
    budget = BudgetThreshold("b", thresholds=(80, 50), channels=("x",), cooldown="10m")
    assert rule_from_dict(budget.to_dict()).thresholds == (50.0, 80.0) and budget.to_dict()["cooldown"] == 600
    with pytest.raises(ConfigError, match=r"unknown key 'levl'.*did you mean 'level'"):
        rule_from_dict({"type": "price_cross", "name": "c", "symbol": "X", "levl": 1})
    with pytest.raises(ConfigError, match=r"rule type 'price_cros'.*did you mean 'price_cross'"):
        rule_from_dict({"type": "price_cros", "name": "c"})
    with pytest.raises(ConfigError, match="window='1 week'"):
        PriceMove("m", window="1 week")
    with pytest.raises(ConfigError, match="level=-5 must be a number above 0"):
        PriceCross("c", symbol="X", level=-5)

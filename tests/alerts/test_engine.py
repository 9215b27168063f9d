"""The alert engine: retries with exponential backoff on real HTTP failures, permanent failures, deduplication,
cooldown, the delivery log in the store's journal, the logging bridge, and secrets kept out of every log."""

from __future__ import annotations

import json
import logging
import time

import pytest

from qlab.alerts import (
    AlertEngine,
    AlertEvent,
    DashboardChannel,
    EventBus,
    FeedStale,
    PriceCross,
    SignalFired,
    SmsChannel,
    WebhookChannel,
    delivery_log,
    emit,
)
from qlab.errors import ConfigError


class FakeClock:
    """A clock the test moves by hand (seconds since the epoch)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def _signal(strategy="macd", symbol="BTC/USDT", side="long", bar="2024-01-01T00:00"):
    return AlertEvent("signal", {"strategy": strategy, "symbol": symbol, "side": side, "bar": bar})


def test_500_then_200_is_retried_with_growing_backoff(http_server):
    http_server.fail("/hook", [500, 503])
    engine = AlertEngine([SignalFired("sig")], [WebhookChannel("hook", http_server.url("/hook"))], backoff=0.1, retries=3)
    (delivery,) = engine.handle(_signal())
    hits = http_server.wait(3)
    assert delivery.status == "delivered" and delivery.attempts == 3 and delivery.error is None
    first_gap, second_gap = hits[1].at - hits[0].at, hits[2].at - hits[1].at
    # backoff 0.1 s then 0.2 s, each with +-20 % jitter: the second wait is longer than the first
    assert 0.08 <= first_gap < 0.2 and 0.16 <= second_gap < 0.4 and second_gap > first_gap
    assert [h.json()["id"] for h in hits] == [hits[0].json()["id"]] * 3  # the same alert each time


def test_4xx_is_not_retried_and_5xx_gives_up_after_the_retries(http_server):
    http_server.fail("/bad", [400])
    http_server.fail("/down", [503] * 10)
    engine = AlertEngine([SignalFired("sig")], [WebhookChannel("bad", http_server.url("/bad")),
                                                WebhookChannel("down", http_server.url("/down"))], backoff=0.01, retries=2)
    deliveries = {d.channel: d for d in engine.handle(_signal())}
    assert deliveries["bad"].status == "failed" and deliveries["bad"].attempts == 1 and "HTTP 400" in deliveries["bad"].error
    assert deliveries["down"].status == "failed" and deliveries["down"].attempts == 3 and "HTTP 503" in deliveries["down"].error
    assert sum(h.path == "/down" for h in http_server.hits) == 3


def test_429_retry_after_is_honoured(http_server):
    http_server.fail("/hook", [(429, {"Retry-After": "0.3"})])
    engine = AlertEngine([SignalFired("sig")], [WebhookChannel("hook", http_server.url("/hook"))], backoff=0.01, retries=2)
    (delivery,) = engine.handle(_signal())
    hits = http_server.wait(2)
    assert delivery.status == "delivered" and delivery.attempts == 2
    assert hits[1].at - hits[0].at >= 0.29  # waited as the server asked, not the 10 ms backoff


def test_dedup_suppresses_the_same_rule_and_key_within_the_window():
    clock, dashboard = FakeClock(), DashboardChannel()
    engine = AlertEngine([SignalFired("sig")], [dashboard], dedup_window=60, clock=clock)
    assert len(engine.evaluate(_signal())) == 1
    clock.now += 30
    assert engine.evaluate(_signal()) == []  # same rule, same key (same bar) after 30 s
    assert len(engine.evaluate(_signal(symbol="ETH/USDT"))) == 1  # another key is not a duplicate
    clock.now += 31
    assert len(engine.evaluate(_signal())) == 1  # 61 s after the first: the window has passed
    suppressed = [d for d in engine.deliveries() if d.status == "suppressed"]
    assert len(suppressed) == 1 and "duplicate" in suppressed[0].error and suppressed[0].key.startswith("macd BTC/USDT")


def test_cooldown_holds_back_every_key_of_a_rule():
    clock = FakeClock()
    engine = AlertEngine([SignalFired("sig", cooldown=600), SignalFired("other")], [DashboardChannel()],
                         dedup_window=0, clock=clock)
    assert [a.rule for a in engine.evaluate(_signal())] == ["sig", "other"]
    clock.now += 599
    assert [a.rule for a in engine.evaluate(_signal(symbol="SOL/USDT"))] == ["other"]  # 'sig' cools down, any key
    clock.now += 1
    assert [a.rule for a in engine.evaluate(_signal(symbol="XRP/USDT"))] == ["sig", "other"]
    assert [d.error for d in engine.deliveries() if d.status == "suppressed"] == ["rule in cooldown (600 s)"]


def test_secrets_never_reach_logs_reprs_errors_or_the_journal(http_server, store, caplog):
    token, sms_token = "777:BOT-secret-token-abcdef", "sms-gateway-secret-555"
    slack_url = http_server.url("/slack/T0/B0/hooksecret99")
    http_server.fail("*", [500] * 20)  # the server echoes the path (with the Telegram token) in its error body
    channels = [WebhookChannel("tg", http_server.url(), format="telegram", token=token, chat_id=1),
                WebhookChannel("slack", slack_url, format="slack"),
                SmsChannel("sms", "AC42", sms_token, sender="+1555", to="+1666", base_url=http_server.url("/2010-04-01"))]
    engine = AlertEngine([SignalFired("sig")], channels, store=store, backoff=0.01, retries=1)
    with caplog.at_level(logging.DEBUG):
        deliveries = engine.handle(_signal())
        logging.getLogger("qlab.test").warning("a careless line with %s and %s", token, slack_url)
    assert {d.status for d in deliveries} == {"failed"} and all(d.attempts == 2 for d in deliveries)
    assert any(token in h.path for h in http_server.hits)  # the token was really used on the wire
    journal = store.journal("alerts")
    texts = [caplog.text, repr(engine), *map(repr, channels), *(str(d) for d in deliveries), *journal.payload]
    for secret in (token, "hooksecret99", sms_token):
        assert all(secret not in text for text in texts), secret
    assert "***" in deliveries[0].error  # the error still says where it failed, with the token masked


def test_delivery_log_in_the_store_has_status_attempts_and_latency(http_server, store):
    http_server.fail("/hook", [502])
    engine = AlertEngine([PriceCross("x", symbol="BTC/USDT", level=100.0)],
                         [WebhookChannel("hook", http_server.url("/hook")), DashboardChannel()], store=store, backoff=0.01)
    engine.handle(AlertEvent("price", {"symbol": "BTC/USDT", "price": 99.0}))
    engine.handle(AlertEvent("price", {"symbol": "BTC/USDT", "price": 101.0}))
    log = delivery_log(store)
    alerts, deliveries = log[log.kind == "alert"], log[log.kind == "delivery"].set_index("channel")
    assert len(alerts) == 1 and alerts.iloc[0]["rule"] == "x"
    assert deliveries.loc["hook", "status"] == "delivered" and deliveries.loc["hook", "attempts"] == 2
    assert deliveries.loc["dashboard", "attempts"] == 1
    assert (deliveries.latency_s > 0).all() and (deliveries.latency_s < 10).all()
    assert set(deliveries.alert_id) == {alerts.iloc[0]["id"]}


def test_components_report_through_the_logging_bridge_and_emit():
    bus_events = []
    dashboard = DashboardChannel()
    from qlab.alerts import BUS, TraderDown

    engine = AlertEngine([TraderDown("down")], [dashboard])
    stop = BUS.subscribe(bus_events.append)
    with engine:  # started engines listen to the default bus, which the qlab.events logger feeds
        logging.getLogger("qlab.events").info("trader", extra={"qlab_event": {"trader": "p7", "status": "error",
                                                                               "error": "exchange said no"}})
        deadline = time.monotonic() + 5
        while not dashboard.recent() and time.monotonic() < deadline:
            time.sleep(0.005)
    stop()
    (alert,) = dashboard.recent()
    assert alert.title == "paper trader p7 error" and "exchange said no" in alert.message
    assert bus_events[0].kind == "trader" and bus_events[0].data["trader"] == "p7"


def test_feed_stale_fires_from_the_engine_clock_without_new_events():
    bus, dashboard = EventBus(), DashboardChannel()
    engine = AlertEngine([FeedStale("quiet", seconds=0.3)], [dashboard], bus=bus, tick=0.05)
    with engine:
        emit("feed", feed="bybit BTC/USDT", bus=bus)
        t0 = time.perf_counter()
        deadline = time.monotonic() + 5
        while not dashboard.recent() and time.monotonic() < deadline:
            time.sleep(0.01)
        waited = time.perf_counter() - t0
    (alert,) = dashboard.recent()
    assert alert.key == "bybit BTC/USDT" and 0.3 <= waited < 1.5


def test_bad_wiring_is_refused_with_the_names():
    engine = AlertEngine([], [DashboardChannel()])
    with pytest.raises(ConfigError, match=r"unknown channel 'dashbord'.*did you mean 'dashboard'"):
        engine.add_rule(SignalFired("s", channels=("dashbord",)))
    with pytest.raises(ConfigError, match="not running"):
        engine.submit(_signal())
    with pytest.raises(ConfigError, match=r"unknown alert event kind 'prise'.*did you mean 'price'"):
        emit("prise", symbol="BTC/USDT")


def test_the_journal_payload_is_json(store):
    engine = AlertEngine([SignalFired("sig")], [DashboardChannel()], store=store)
    engine.handle(_signal())
    payloads = [json.loads(p) for p in store.journal("alerts").payload]
    assert [p.get("status") for p in payloads] == [None, "delivered"]

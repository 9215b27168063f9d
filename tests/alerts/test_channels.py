"""Alerts over real protocols on 127.0.0.1: SMTP (plain, STARTTLS + login), webhooks in four formats, a Twilio-style
SMS gateway and the dashboard queue, each measured from emit() to the server receiving it."""

from __future__ import annotations

import time

import pytest
from alert_servers import SMTP_PASSWORD, SMTP_USER, record_latency

from qlab.alerts import AlertEngine, DashboardChannel, EmailChannel, EventBus, PriceCross, SmsChannel, TraderDown, WebhookChannel, emit

GOAL_S = 10.0  # the seed's goal for trigger-to-delivery


def _cross_engine(channel, **kwargs) -> tuple[AlertEngine, EventBus]:
    bus = EventBus()
    engine = AlertEngine([PriceCross("btc-100", symbol="BTC/USDT", level=100.0)], [channel], bus=bus, backoff=0.05, **kwargs)
    return engine, bus


def _fire(bus: EventBus) -> float:
    """Two prices that cross 100 upwards; returns the perf_counter time of the triggering emit()."""
    emit("price", symbol="BTC/USDT", price=99.5, bus=bus)
    t0 = time.perf_counter()
    emit("price", symbol="BTC/USDT", price=100.5, bus=bus)
    return t0


def _wait_deliveries(engine: AlertEngine, n: int = 1, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while len([d for d in engine.deliveries() if d.status != "suppressed"]) < n and time.monotonic() < deadline:
        time.sleep(0.005)
    return [d for d in engine.deliveries() if d.status != "suppressed"]


def test_email_plain_smtp_arrives_with_subject_and_body(smtp_server):
    host, port, box = smtp_server
    channel = EmailChannel("mail", host, port, security="plain", sender="qlab@example.test", to=["trader@example.test"])
    engine, bus = _cross_engine(channel)
    with engine:
        t0 = _fire(bus)
        box.wait(1)
        deliveries = _wait_deliveries(engine)
    arrived, envelope, msg, _ = box.messages[0]
    assert msg["Subject"] == "[qlab warning] BTC/USDT crossed above 100"
    assert envelope.rcpt_tos == ["trader@example.test"] and envelope.mail_from == "qlab@example.test"
    body = msg.get_body(("plain",)).get_content()
    assert "went from 99.5 to 100.5" in body and "rule: btc-100" in body
    assert deliveries[0].status == "delivered" and deliveries[0].attempts == 1
    assert arrived - t0 < GOAL_S
    record_latency("email (plain SMTP)", arrived - t0)


def test_email_starttls_and_login_with_a_verified_certificate(smtp_tls_server):
    host, port, box, cafile = smtp_tls_server
    channel = EmailChannel("mail", host, port, security="starttls", username=SMTP_USER, password=SMTP_PASSWORD,
                           cafile=cafile, sender="qlab@example.test", to="trader@example.test")
    engine, bus = _cross_engine(channel)
    with engine:
        t0 = _fire(bus)
        box.wait(1)
    arrived, _, msg, _ = box.messages[0]
    assert box.logins and box.logins[-1][1:] == (SMTP_USER, True)  # it logged in, after STARTTLS (the server requires it)
    assert "crossed above 100" in msg["Subject"]
    record_latency("email (STARTTLS+login)", arrived - t0)
    assert arrived - t0 < GOAL_S


def test_email_wrong_password_fails_at_once_and_never_shows_the_password(smtp_tls_server, caplog):
    host, port, box, cafile = smtp_tls_server
    wrong = "not-the-Right-pw-123"
    channel = EmailChannel("mail", host, port, security="starttls", username=SMTP_USER, password=wrong, cafile=cafile,
                           sender="qlab@example.test", to="trader@example.test")
    engine, bus = _cross_engine(channel, retries=3)
    with caplog.at_level("DEBUG"), engine:
        _fire(bus)
        (delivery,) = _wait_deliveries(engine)
    assert delivery.status == "failed" and delivery.attempts == 1  # a refused login is not retried
    assert "login" in delivery.error and "refused" in delivery.error
    assert box.messages == []
    for text in (caplog.text, repr(channel), str(delivery), delivery.error):
        assert wrong not in text


def test_email_untrusted_certificate_is_a_clear_permanent_failure(smtp_tls_server):
    host, port, _, _ = smtp_tls_server
    channel = EmailChannel("mail", host, port, security="starttls", username=SMTP_USER, password=SMTP_PASSWORD,
                           sender="qlab@example.test", to="trader@example.test")  # no cafile: the system store
    engine = AlertEngine([], [channel], backoff=0.01)
    (delivery,) = engine.send_test("mail")
    assert delivery.status == "failed" and delivery.attempts == 1 and "cafile" in delivery.error


@pytest.mark.parametrize("fmt", ["json", "slack", "discord", "telegram"])
def test_webhook_formats_have_their_json_shape(http_server, fmt):
    token = "123456:AAH-telegram-bot-token-xyz"
    if fmt == "telegram":
        channel = WebhookChannel("hook", http_server.url(), format="telegram", token=token, chat_id=-1001)
    elif fmt == "json":
        channel = WebhookChannel("hook", http_server.url("/hooks/generic"), token="bearer-token-42")
    else:
        channel = WebhookChannel("hook", http_server.url(f"/{fmt}/T000/B000/secretpart"), format=fmt)
    engine, bus = _cross_engine(channel)
    with engine:
        t0 = _fire(bus)
        (hit,) = http_server.wait(1)
        (delivery,) = _wait_deliveries(engine)
    body = hit.json()
    assert delivery.status == "delivered" and hit.headers["Content-Type"].startswith("application/json")
    if fmt == "json":
        assert hit.path == "/hooks/generic" and hit.headers["Authorization"] == "Bearer bearer-token-42"
        assert {k: body[k] for k in ("rule", "key", "severity", "source")} == {
            "rule": "btc-100", "key": "BTC/USDT", "severity": "warning", "source": "qlab"}
        assert body["data"] == {"symbol": "BTC/USDT", "price": 100.5, "previous": 99.5, "level": 100.0}
        assert body["title"] == "BTC/USDT crossed above 100" and body["ts"].endswith("+00:00")
    elif fmt == "slack":
        assert body["text"].startswith("[warning] BTC/USDT crossed above 100")
        assert [b["type"] for b in body["blocks"]] == ["header", "section", "context"]
        assert body["blocks"][0]["text"] == {"type": "plain_text", "text": "BTC/USDT crossed above 100"}
        assert body["blocks"][1]["text"]["type"] == "mrkdwn" and "99.5 to 100.5" in body["blocks"][1]["text"]["text"]
    elif fmt == "discord":
        (embed,) = body["embeds"]
        assert body["content"] == "**[warning] BTC/USDT crossed above 100**"
        assert embed["title"] == "BTC/USDT crossed above 100" and embed["color"] == 0xF1C40F
        assert {f["name"]: f["value"] for f in embed["fields"]}["price"] == "100.5"
        assert embed["footer"]["text"] == "qlab · btc-100"
    else:
        assert hit.path == f"/bot{token}/sendMessage"
        assert body["chat_id"] == -1001 and body["text"].startswith("[warning] BTC/USDT crossed above 100\n")
    record_latency(f"webhook ({fmt})", hit.at - t0)
    assert hit.at - t0 < GOAL_S


def test_sms_gateway_gets_twilio_form_fields_and_basic_auth(http_server):
    sid, auth_token = "AC0123456789abcdef", "twilio-auth-token-987"
    channel = SmsChannel("phone", sid, auth_token, sender="+15550001111", to=["+15550002222", "+15550003333"],
                         base_url=http_server.url("/2010-04-01"))
    bus = EventBus()
    engine = AlertEngine([TraderDown("down", severity="critical")], [channel], bus=bus)
    with engine:
        t0 = time.perf_counter()
        emit("trader", trader="p1", status="error", error="websocket closed", bus=bus)
        hits = http_server.wait(2)
    assert [h.path for h in hits] == [f"/2010-04-01/Accounts/{sid}/Messages.json"] * 2
    assert all(h.headers["Content-Type"] == "application/x-www-form-urlencoded" for h in hits)
    assert all(h.basic_auth() == (sid, auth_token) for h in hits)
    forms = [h.form() for h in hits]
    assert [f["To"] for f in forms] == ["+15550002222", "+15550003333"] and {f["From"] for f in forms} == {"+15550001111"}
    assert forms[0]["Body"] == "[qlab critical] paper trader p1 error: paper trader p1 is error: websocket closed"
    record_latency("sms (gateway)", hits[-1].at - t0)
    assert hits[-1].at - t0 < GOAL_S


def test_dashboard_channel_queues_alerts_and_calls_listeners():
    dashboard = DashboardChannel(maxlen=3)
    seen = []
    stop = dashboard.listen(lambda alert: seen.append((time.perf_counter(), alert)))
    engine, bus = _cross_engine(dashboard, dedup_window=0)
    with engine:
        t0 = _fire(bus)
        for price in (99.0, 101.0, 99.0, 101.0, 99.0, 101.0):
            emit("price", symbol="BTC/USDT", price=price, bus=bus)
        deadline = time.monotonic() + 5
        while len(seen) < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
    stop()
    assert len(seen) == 4  # four upward crossings of 100
    assert len(dashboard.recent()) == 3 and dashboard.recent(1)[0].id == seen[-1][1].id  # newest first, bounded
    record_latency("dashboard (in memory)", seen[0][0] - t0)

"""Alert delivery: trigger-to-delivery time of `qlab.alerts` per channel, against real servers on 127.0.0.1.

The benchmark starts its own servers (benchmarks/local_servers.py): aiosmtpd for email (plain, and STARTTLS + login
with a self-signed certificate), aiohttp for the webhook formats and the Twilio-style SMS gateway. A started
AlertEngine listens on a private event bus; each repetition is one `emit("signal", ...)` timed until the server holds
the message (the dashboard channel: until its listener is called). Target (from the issue): under 10 s.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks import Config, SectionResult, fmt_seconds, section, table, verdict
from benchmarks.local_servers import SMTP_PASSWORD, SMTP_USER, Arrivals, HttpSink, SmtpSink

TARGET = 10.0  # seconds from the event to the message on the server
WAIT_S = 30.0  # give up on one delivery after this long (it counts as a miss, with the engine's error)


def _channels(servers: dict[str, Any], arrivals: dict[str, Arrivals]) -> dict[str, tuple[str, Callable[[], Any]]]:
    """label -> (server it needs, factory of the channel); the channel is named after the label."""
    from qlab.alerts import DashboardChannel, EmailChannel, SmsChannel, WebhookChannel

    def http(path: str) -> str:
        return servers["http"].url(path)

    def dashboard() -> Any:
        channel = DashboardChannel("dashboard (in memory)")
        channel.listen(lambda alert: arrivals["dashboard"].items.append((time.perf_counter(), alert.id)))
        return channel

    return {
        "email, plain SMTP": ("smtp", lambda: EmailChannel("email, plain SMTP", servers["smtp"].host, servers["smtp"].port,
                                                           sender="qlab@example.test", to="trader@example.test", security="plain")),
        "email, STARTTLS + login": ("smtps", lambda: EmailChannel(
            "email, STARTTLS + login", servers["smtps"].host, servers["smtps"].port, sender="qlab@example.test",
            to="trader@example.test", username=SMTP_USER, password=SMTP_PASSWORD, security="starttls",
            cafile=servers["smtps"].cafile)),
        "webhook, generic JSON": ("http", lambda: WebhookChannel("webhook, generic JSON", http("/hooks/qlab"), token="bench-token")),
        "webhook, Slack": ("http", lambda: WebhookChannel("webhook, Slack", http("/slack/services/T0/B0/bench"), format="slack")),
        "webhook, Discord": ("http", lambda: WebhookChannel("webhook, Discord", http("/discord/api/webhooks/1/bench"),
                                                           format="discord")),
        "webhook, Telegram": ("http", lambda: WebhookChannel("webhook, Telegram", http("/telegram"), format="telegram",
                                                            token="123456:bench", chat_id=42)),
        "SMS gateway (Twilio-style)": ("http", lambda: SmsChannel("SMS gateway (Twilio-style)", "ACbench", "bench-auth-token",
                                                                  sender="+15550000001", to="+15550000002",
                                                                  base_url=http("/2010-04-01"))),
        "dashboard (in memory)": ("dashboard", dashboard),
    }


def _start_servers(cfg: Config, stack: contextlib.ExitStack) -> tuple[dict[str, Any], dict[str, str]]:
    """Start each server; a server that cannot start is left out with the reason (its channels are reported, not run)."""
    servers: dict[str, Any] = {"dashboard": None}
    failed: dict[str, str] = {}
    makers: dict[str, Callable[[], Any]] = {"smtp": lambda: SmtpSink(), "smtps": lambda: SmtpSink(cfg.tmp_dir, tls=True),
                                            "http": lambda: HttpSink()}
    for key, make in makers.items():
        try:
            servers[key] = stack.enter_context(make())
        except ImportError as exc:
            failed[key] = f"not run: {exc.name or exc} is not installed"
        except Exception as exc:  # a benchmark must report, not fail, when a local server cannot start
            failed[key] = f"not run: server did not start ({type(exc).__name__}: {exc})"
    return servers, failed


def _measure(engine: Any, bus: Any, label: str, box: Arrivals, n: int) -> tuple[list[float], str | None]:
    """`n` emits of a signal only this channel's rule matches; seconds from emit() to arrival, or the first error."""
    from qlab.alerts import emit

    seconds: list[float] = []
    for i in range(n):
        have = len(box.items)
        start = time.perf_counter()
        emit("signal", bus=bus, strategy=label, symbol="BTC/USDT", side="long", price=65_000.0 + i, bar=f"bench-{i}")
        if not box.wait_for(have + 1, WAIT_S):
            errors = [d.error for d in engine.deliveries() if d.channel == label and d.error]
            return seconds, f"no delivery within {WAIT_S:.0f} s" + (f": {errors[-1]}" if errors else "")
        seconds.append(box.items[have][0] - start)
    return seconds, None


@section("alerts", "Alert delivery")
def run(cfg: Config) -> SectionResult:
    from qlab.alerts import AlertEngine, EventBus, SignalFired

    n = 5 if cfg.quick else 20
    results: dict[str, Any] = {"repetitions": n, "target_s": TARGET, "channels": {}}
    rows: dict[str, list[Any]] = {}  # label -> table row, in the channels' order
    with contextlib.ExitStack() as stack:
        servers, failed = _start_servers(cfg, stack)
        arrivals = {"dashboard": Arrivals()}
        specs = _channels(servers, arrivals)
        bus = EventBus()
        engine = AlertEngine(bus=bus, dedup_window=0, retries=0, timeout=WAIT_S)
        runnable = []
        for label, (server, make) in specs.items():
            if server in failed:
                results["channels"][label] = {"error": failed[server]}
                rows[label] = [label, "—", "—", "—", "—", f"< {TARGET:.0f} s", failed[server]]
                continue
            rows[label] = []  # filled in once measured
            engine.add_channel(make())
            engine.add_rule(SignalFired(f"bench {label}", strategy=label, channels=(label,)))
            runnable.append((label, arrivals["dashboard"] if server == "dashboard" else servers[server].arrivals))
        engine.start()
        stack.callback(engine.stop, 10.0)
        for label, box in runnable:
            seconds, error = _measure(engine, bus, label, box, n)
            entry: dict[str, Any] = {"n": len(seconds), "seconds": seconds}
            if seconds:
                entry |= {"first_s": seconds[0], "median_s": statistics.median(seconds), "max_s": max(seconds)}
            if error:
                entry["error"] = error
            results["channels"][label] = entry
            if not seconds:
                rows[label] = [label, 0, "—", "—", "—", f"< {TARGET:.0f} s", f"**miss**: {error}"]
                continue
            outcome = verdict(error is None and max(seconds) < TARGET) + (f" ({error})" if error else "")
            rows[label] = [label, len(seconds), fmt_seconds(seconds[0]), fmt_seconds(statistics.median(seconds)),
                           fmt_seconds(max(seconds)), f"< {TARGET:.0f} s", outcome]
    headers = ("channel", "alerts", "first (new connection)", "median", "max", "target", "result")
    note = (f"Each row: {n} `emit('signal', ...)` calls in a row, each matched by one `SignalFired` rule routed to that "
            "channel of one started `AlertEngine` (background thread, deduplication off, no retries), timed with "
            "`time.perf_counter` from `emit()` until the local server on 127.0.0.1 holds the message (the SMTP server's "
            "DATA handler, the HTTP server's request handler; for the dashboard channel, its listener). The servers are "
            "started by the benchmark (`benchmarks/local_servers.py`): aiosmtpd (plain; STARTTLS required + AUTH with a "
            "self-signed certificate made with `cryptography`) and aiohttp (answering like Slack, Discord, Telegram and "
            "Twilio would). Email opens a new SMTP connection per alert (with a TLS handshake and login for STARTTLS); "
            "HTTP channels reuse the engine's aiohttp session, so only the first alert pays for the connection. Real "
            "providers add their own network and queueing time, which this does not measure.")
    return SectionResult(results, table(headers, list(rows.values())) + "\n\n" + note)

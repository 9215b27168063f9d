"""Real servers on 127.0.0.1 for the alert tests (fixtures re-exported by conftest.py): an aiosmtpd SMTP server (plain, or
self-signed certificate from benchmarks.local_servers) and an aiohttp server that records webhook and SMS-gateway requests."""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass, field

import pytest

from benchmarks.local_servers import HttpSink, free_port, make_self_signed_cert  # the benchmark's loopback servers

LATENCIES: dict[str, list[float]] = {}


def record_latency(channel: str, seconds: float) -> None:
    """Trigger-to-delivery times, printed at the end of the session (pytest -s, or -rA shows them)."""
    LATENCIES.setdefault(channel, []).append(seconds)


@pytest.fixture(scope="session", autouse=True)
def _print_latencies():
    yield
    if LATENCIES:
        print("\ntrigger-to-delivery (emit() to the server receiving it):")
        for channel, values in sorted(LATENCIES.items()):
            print(f"  {channel:<22} n={len(values)}  median {sorted(values)[len(values) // 2] * 1000:7.1f} ms  "
                  f"max {max(values) * 1000:7.1f} ms")


@dataclass
class Mailbox:
    """What the SMTP server received: (arrival perf_counter, envelope, parsed message, login used)."""

    messages: list = field(default_factory=list)
    logins: list = field(default_factory=list)
    event: threading.Event = field(default_factory=threading.Event)

    def wait(self, n: int = 1, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(self.messages) >= n, f"the SMTP server received {len(self.messages)} message(s), expected {n}"


class _MailHandler:
    def __init__(self, box: Mailbox) -> None:
        self.box = box

    async def handle_DATA(self, server, session, envelope):
        from email import message_from_bytes, policy

        msg = message_from_bytes(envelope.content, policy=policy.default)
        self.box.messages.append((time.perf_counter(), envelope, msg, getattr(session, "auth_data", None)))
        return "250 OK"


@pytest.fixture
def smtp_server():
    """A plain SMTP server on 127.0.0.1: yields (host, port, mailbox)."""
    from aiosmtpd.controller import Controller

    box = Mailbox()
    controller = Controller(_MailHandler(box), hostname="127.0.0.1", port=free_port())
    controller.start()
    yield "127.0.0.1", controller.port, box
    controller.stop()


SMTP_USER, SMTP_PASSWORD = "alerts@example.test", "smtp-Pa55-w0rd-XYZ"


@pytest.fixture
def smtp_tls_server(tmp_path):
    """SMTP with STARTTLS required and AUTH LOGIN/PLAIN (only after TLS): yields (host, port, mailbox, cafile)."""
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    cert, key = make_self_signed_cert(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    box = Mailbox()

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == SMTP_USER \
            and auth_data.password.decode() == SMTP_PASSWORD
        box.logins.append((mechanism, auth_data.login.decode() if isinstance(auth_data, LoginPassword) else None, ok))
        return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535 itself

    controller = Controller(_MailHandler(box), hostname="127.0.0.1", port=free_port(), tls_context=context,
                            require_starttls=True, authenticator=authenticator, auth_required=True, auth_require_tls=True)
    controller.start()
    yield "127.0.0.1", controller.port, box, str(cert)
    controller.stop()


@dataclass
class Hit:
    """One request the HTTP server received."""

    at: float
    method: str
    path: str
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        from urllib.parse import parse_qsl

        return dict(parse_qsl(self.body.decode()))

    def basic_auth(self) -> tuple[str, str]:
        kind, _, value = self.headers.get("Authorization", "").partition(" ")
        assert kind == "Basic", f"expected basic auth, got {kind!r}"
        user, _, password = base64.b64decode(value).decode().partition(":")
        return user, password


class HttpRecorder(HttpSink):
    """The benchmark's HTTP sink, recording method and headers too; `fail(path, statuses)` answers the next requests
    with those statuses."""

    def __init__(self) -> None:
        super().__init__()
        self.hits: list[Hit] = []
        self.script: dict[str, list[int]] = {}
        self.body_on_error = "server error"

    def fail(self, path: str, statuses: list) -> None:
        """Answer the next requests to `path` ('*': any) with these statuses (or (status, headers) pairs)."""
        self.script[path] = list(statuses)

    def wait(self, n: int = 1, timeout: float = 10.0) -> list[Hit]:
        deadline = time.monotonic() + timeout
        while len(self.hits) < n and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(self.hits) >= n, f"the HTTP server received {len(self.hits)} request(s), expected {n}"
        return self.hits

    async def _handle(self, request):
        from aiohttp import web

        body = await request.read()
        self.hits.append(Hit(time.perf_counter(), request.method, request.path, dict(request.headers), body))
        queue = self.script.get(request.path) or self.script.get("*")
        if queue:
            status = queue.pop(0)
            status, headers = status if isinstance(status, tuple) else (status, {})
            return web.Response(status=status, text=f"{self.body_on_error} at {request.path}", headers=headers)
        return self.reply(request.path, len(self.hits))

    def start(self) -> HttpRecorder:
        return self.__enter__()

    def stop(self) -> None:
        self.__exit__()


@pytest.fixture
def http_server():
    """A local HTTP server recording webhook and gateway requests."""
    server = HttpRecorder().start()
    yield server
    server.stop()

"""Real servers on 127.0.0.1 for the alert tests (fixtures re-exported by conftest.py): an aiosmtpd SMTP server (plain, or
self-signed certificate made here) and an aiohttp server that records webhook and SMS-gateway requests."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost and its key: with `cryptography` when installed, else the openssl CLI."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if not shutil.which("openssl"):
            pytest.skip("neither the cryptography package nor the openssl command is available")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                        "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                               x509.DNSName("localhost")]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(private, hashes.SHA256()))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return cert, key


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
    controller = Controller(_MailHandler(box), hostname="127.0.0.1", port=_free_port())
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

    controller = Controller(_MailHandler(box), hostname="127.0.0.1", port=_free_port(), tls_context=context,
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


class HttpRecorder:
    """An aiohttp server in a thread: records every POST; `fail(path, statuses)` answers the next requests with those."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.script: dict[str, list[int]] = {}
        self.body_on_error = "server error"
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def fail(self, path: str, statuses: list) -> None:
        """Answer the next requests to `path` ('*': any) with these statuses (or (status, headers) pairs)."""
        self.script[path] = list(statuses)

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

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
        if request.path.endswith("/Messages.json"):
            return web.json_response({"sid": f"SM{len(self.hits):032d}", "status": "queued"}, status=201)
        if "discord" in request.path:
            return web.Response(status=204)
        return web.json_response({"ok": True})

    def _main(self) -> None:
        from aiohttp import web

        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self) -> HttpRecorder:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def http_server():
    """A local HTTP server recording webhook and gateway requests."""
    server = HttpRecorder().start()
    yield server
    server.stop()

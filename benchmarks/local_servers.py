"""Real servers on 127.0.0.1 for benchmarks: an aiosmtpd SMTP sink (plain, or STARTTLS + login with a self-signed
certificate) and an aiohttp sink for webhooks and SMS gateways. Each stamps every arrival with time.perf_counter, so a
benchmark in the same process measures send-to-arrival without clock skew."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SMTP_USER, SMTP_PASSWORD = "bench@example.test", "bench-smtp-password"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """(cert.pem, key.pem) for 127.0.0.1/localhost, valid one day, made with `cryptography` (ImportError without it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert, key = folder / "bench-cert.pem", folder / "bench-key.pem"
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
class Arrivals:
    """What a sink received: (perf_counter at arrival, payload) pairs, appended from the server's thread."""

    items: list[tuple[float, Any]] = field(default_factory=list)

    def wait_for(self, n: int, timeout: float = 30.0) -> bool:
        """Poll until `n` arrivals are held (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        while len(self.items) < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.0005)
        return True


def _drop_login_data_warning(record: logging.LogRecord) -> bool:
    return "login_data is deprecated" not in str(record.msg)


class SmtpSink:
    """An aiosmtpd server in its own thread; `tls=True` requires STARTTLS and AUTH (SMTP_USER / SMTP_PASSWORD)."""

    def __init__(self, tmp_dir: Path | None = None, tls: bool = False) -> None:
        import ssl

        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        # aiosmtpd logs a warning about its own deprecated attribute on every login: noise in the bench log, not ours to fix
        logging.getLogger("mail.log").addFilter(_drop_login_data_warning)
        self.arrivals = Arrivals()
        self.host, self.cafile = "127.0.0.1", None
        kwargs: dict[str, Any] = {}
        if tls:
            if tmp_dir is None:
                raise ValueError("SmtpSink(tls=True) needs tmp_dir for its certificate")
            cert, key = make_self_signed_cert(tmp_dir)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
            self.cafile = str(cert)

            def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
                ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == SMTP_USER \
                    and auth_data.password.decode() == SMTP_PASSWORD
                return AuthResult(success=ok, handled=False)

            kwargs = {"tls_context": context, "require_starttls": True, "authenticator": authenticator,
                      "auth_required": True, "auth_require_tls": True}
        self.controller = Controller(self, hostname=self.host, port=free_port(), **kwargs)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's handler hook
        self.arrivals.items.append((time.perf_counter(), envelope.content))
        return "250 OK"

    @property
    def port(self) -> int:
        return int(self.controller.port)

    def __enter__(self) -> SmtpSink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


class HttpSink:
    """An aiohttp server in its own thread answering every POST like the real service would (Twilio: 201 JSON,
    Discord: 204, others: 200 JSON) and recording (arrival, path, body)."""

    def __init__(self) -> None:
        self.arrivals = Arrivals()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="bench-http-sink", daemon=True)

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: Any) -> Any:
        body = await request.read()
        self.arrivals.items.append((time.perf_counter(), (request.path, body)))
        return self.reply(request.path, len(self.arrivals.items))

    @staticmethod
    def reply(path: str, n: int) -> Any:
        """The answer the real service gives to the n-th request: Twilio 201 JSON with a sid, Discord 204, else 200 JSON."""
        from aiohttp import web

        if path.endswith("/Messages.json"):
            return web.json_response({"sid": f"SM{n:032d}", "status": "queued"}, status=201)
        if "discord" in path:
            return web.Response(status=204)
        return web.json_response({"ok": True})

    def _main(self) -> None:
        from aiohttp import web

        asyncio.set_event_loop(self._loop)
        try:
            app = web.Application()
            app.router.add_route("POST", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # reported by __enter__ in the caller's thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def __enter__(self) -> HttpSink:
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("the local HTTP server did not start within 15 s")
        if self._error is not None:
            raise RuntimeError(f"the local HTTP server did not start: {self._error}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

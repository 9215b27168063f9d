"""Alert channels: email over SMTP, webhooks (generic JSON, Slack, Discord, Telegram), SMS through a Twilio-style
HTTP gateway, the in-memory dashboard queue and the log.

A channel's `send(alert, session)` returns a short receipt or raises DeliveryError, saying whether a retry can help
(network errors, timeouts, HTTP 429/5xx, SMTP 4xx) or not (refused login, HTTP 4xx, a bad certificate). Passwords,
tokens and secret webhook URLs are `Secret`s: they never appear in reprs, errors or the delivery log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import smtplib
import ssl
import threading
from collections import deque
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, ClassVar
from urllib.parse import urlsplit

from qlab.accounts import Secret, scrub
from qlab.alerts.events import Alert
from qlab.errors import ConfigError, QlabError, did_you_mean

log = logging.getLogger("qlab.alerts")

WEBHOOK_FORMATS = ("json", "slack", "discord", "telegram")
SECURITY = ("starttls", "ssl", "plain")
_COLORS = {"info": 0x3498DB, "warning": 0xF1C40F, "critical": 0xE74C3C}


class DeliveryError(QlabError, RuntimeError):
    """A channel could not deliver an alert; `retryable` says whether trying again may succeed."""

    def __init__(self, message: str, retryable: bool = True, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


def _secret(value: str | Secret | None) -> Secret | None:
    return None if value is None or value == "" else Secret(value)


class Channel:
    """Base of every channel: a name, a kind and `send`; `secrets()` lists what must be scrubbed from its errors."""

    kind: ClassVar[str] = ""

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"a channel needs a non-empty name, got {name!r}")
        self.name = name

    async def send(self, alert: Alert, session: Any) -> str:
        """Deliver `alert`; return a receipt (e.g. 'HTTP 200'), raise DeliveryError on failure."""
        raise NotImplementedError

    def secrets(self) -> tuple[Secret | None, ...]:
        """The credentials this channel holds, for scrubbing."""
        return ()

    def target(self) -> str:
        """Where it sends, safe to print."""
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, target={self.target()!r})"

    def _fail(self, message: str, retryable: bool, retry_after: float | None = None) -> DeliveryError:
        return DeliveryError(scrub(f"{self.kind} channel {self.name!r}: {message}", self.secrets()), retryable, retry_after)


# ---------------------------------------------------------------- email

class EmailChannel(Channel):
    """Email over SMTP: security 'starttls' (default, port 587), 'ssl' (port 465) or 'plain'; login when a username is set."""

    kind = "email"

    def __init__(self, name: str, host: str, port: int | None = None, *, sender: str, to: Sequence[str] | str,
                 username: str | None = None, password: str | Secret | None = None, security: str = "starttls",
                 cafile: str | None = None, verify: bool = True, timeout: float = 10.0) -> None:
        super().__init__(name)
        if security not in SECURITY:
            raise ConfigError(f"email channel {name!r}: security {security!r}; use {', '.join(SECURITY)}."
                              + did_you_mean(str(security), SECURITY))
        self.to = [to] if isinstance(to, str) else list(to)
        if not host or not sender or not self.to:
            raise ConfigError(f"email channel {name!r}: give host, sender and at least one recipient (to)")
        if username and not password:
            raise ConfigError(f"email channel {name!r}: username {username!r} needs a password (e.g. password: ${{QLAB_SMTP_PASSWORD}})")
        self.host, self.port = host, int(port or {"starttls": 587, "ssl": 465, "plain": 25}[security])
        self.sender, self.username, self.password = sender, username, _secret(password)
        self.security, self.cafile, self.verify, self.timeout = security, cafile, verify, float(timeout)

    def secrets(self) -> tuple[Secret | None, ...]:
        return (self.password,)

    def target(self) -> str:
        return f"smtp://{self.host}:{self.port} ({self.security}) -> {', '.join(self.to)}"

    def message(self, alert: Alert):
        """The email: subject '[qlab SEVERITY] title', the plain-text body."""
        msg = EmailMessage()
        msg["Subject"] = f"[qlab {alert.severity}] {alert.title}"
        msg["From"], msg["To"] = self.sender, ", ".join(self.to)
        msg["Date"], msg["Message-ID"] = formatdate(localtime=False), make_msgid(domain="qlab.local")
        msg["X-Qlab-Alert-Id"] = alert.id
        msg.set_content(alert.text())
        return msg

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.cafile)
        if not self.verify:  # only for a test server on 127.0.0.1; documented as unsafe elsewhere
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        return context

    def _send_sync(self, alert: Alert) -> str:
        msg = self.message(alert)
        if self.security == "ssl":
            smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=self._context())
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        with smtp:
            if self.security == "starttls":
                smtp.starttls(context=self._context())
            if self.username:
                smtp.login(self.username, self.password.reveal())
            refused = smtp.send_message(msg)
        if refused:
            raise self._fail(f"the server refused recipient(s) {', '.join(refused)}", retryable=False)
        return f"accepted by {self.host}:{self.port}"

    async def send(self, alert: Alert, session: Any) -> str:
        try:
            return await asyncio.to_thread(self._send_sync, alert)
        except DeliveryError:
            raise
        except smtplib.SMTPAuthenticationError as exc:
            raise self._fail(f"login as {self.username!r} refused ({exc.smtp_code}); check the username and password",
                             retryable=False) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise self._fail(f"{exc}; the server may not offer STARTTLS or AUTH: check 'security'", retryable=False) from None
        except smtplib.SMTPResponseException as exc:
            raise self._fail(f"SMTP {exc.smtp_code} {exc.smtp_error!r}", retryable=400 <= exc.smtp_code < 500) from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise self._fail(f"recipients refused: {', '.join(exc.recipients)}", retryable=False) from None
        except ssl.SSLCertVerificationError as exc:
            raise self._fail(f"TLS certificate of {self.host} not trusted ({exc.verify_message}); set cafile", retryable=False) from None
        except (OSError, smtplib.SMTPException) as exc:  # refused connection, timeout, dropped session: worth a retry
            raise self._fail(f"{type(exc).__name__}: {exc}", retryable=True) from None


# ---------------------------------------------------------------- webhooks

def _safe_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme else "(url)"


class HttpChannel(Channel):
    """Shared HTTP handling: POST, 2xx is success, 429/5xx/network errors are retryable, other 4xx are not."""

    timeout: float = 10.0

    async def _post(self, session: Any, url: str, receipt_of: Callable[[int, str], str] | None = None, **kwargs: Any) -> str:
        import aiohttp

        try:
            async with session.post(url, timeout=aiohttp.ClientTimeout(total=self.timeout), **kwargs) as response:
                body = await response.text()
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self._fail(f"{type(exc).__name__}: {exc} ({self.target()})", retryable=True) from None
        if 200 <= status < 300:
            return receipt_of(status, body) if receipt_of else f"HTTP {status}"
        wait = None
        with contextlib.suppress(TypeError, ValueError):
            wait = float(retry_after)
        raise self._fail(f"HTTP {status} from {self.target()}: {body[:200]}", retryable=status == 429 or status >= 500,
                         retry_after=wait)


class WebhookChannel(HttpChannel):
    """A webhook: format 'json' (generic body, optional Bearer token), 'slack', 'discord' or 'telegram' (bot token, chat_id).

    Slack and Discord webhook URLs carry their token, so the URL itself is kept as a Secret.
    """

    kind = "webhook"

    def __init__(self, name: str, url: str | Secret | None = None, *, format: str = "json", token: str | Secret | None = None,
                 chat_id: str | int | None = None, headers: dict[str, str] | None = None, timeout: float = 10.0) -> None:
        super().__init__(name)
        if format not in WEBHOOK_FORMATS:
            raise ConfigError(f"webhook channel {name!r}: format {format!r}; use {', '.join(WEBHOOK_FORMATS)}."
                              + did_you_mean(str(format), WEBHOOK_FORMATS))
        if format == "telegram":
            url = url or "https://api.telegram.org"
            if not token or chat_id is None:
                raise ConfigError(f"webhook channel {name!r}: telegram needs token (the bot token) and chat_id")
        if not url:
            raise ConfigError(f"webhook channel {name!r}: give the url to POST to")
        # a Slack/Discord/generic URL may carry a token; Telegram's base URL does not (its token is separate)
        self.url: str | Secret = url if format == "telegram" else Secret(url)
        parts = urlsplit(self._url())  # a server may echo just the path or query (the part holding the token): mask those too
        self._url_parts = tuple(Secret(x) for x in (parts.path, parts.query) if format != "telegram" and len(x) > 1)
        self.format, self.token = format, _secret(token)
        self.chat_id, self.headers, self.timeout = chat_id, dict(headers or {}), float(timeout)

    def secrets(self) -> tuple[Secret | None, ...]:
        return (self.url if isinstance(self.url, Secret) else None, self.token, *self._url_parts)

    def _url(self) -> str:
        return self.url.reveal() if isinstance(self.url, Secret) else self.url

    def target(self) -> str:
        return f"{self.format} webhook at {_safe_url(self._url())}"

    def body(self, alert: Alert) -> dict[str, Any]:
        """The JSON body in the channel's format."""
        if self.format == "slack":
            return {"text": f"[{alert.severity}] {alert.title}: {alert.message}", "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": alert.title[:150]}},
                {"type": "section", "text": {"type": "mrkdwn", "text": alert.message[:3000]}},
                {"type": "context", "elements": [{"type": "mrkdwn", "text":
                                                  f"*{alert.severity}* · rule `{alert.rule}` · {alert.ts:%Y-%m-%d %H:%M:%S} UTC"}]}]}
        if self.format == "discord":
            fields = [{"name": str(k)[:256], "value": str(v)[:1024], "inline": True} for k, v in alert.data.items() if v is not None]
            return {"content": f"**[{alert.severity}] {alert.title}**"[:2000], "embeds": [{
                "title": alert.title[:256], "description": alert.message[:4096], "color": _COLORS[alert.severity],
                "timestamp": alert.ts.isoformat(), "fields": fields[:25], "footer": {"text": f"qlab · {alert.rule}"}}]}
        if self.format == "telegram":
            return {"chat_id": self.chat_id, "text": f"[{alert.severity}] {alert.title}\n{alert.message}"[:4096],
                    "disable_web_page_preview": True}
        return alert.to_dict()

    async def send(self, alert: Alert, session: Any) -> str:
        headers = dict(self.headers)
        url = self._url()
        if self.format == "telegram":
            url = f"{url.rstrip('/')}/bot{self.token.reveal()}/sendMessage"
        elif self.token:
            headers["Authorization"] = f"Bearer {self.token.reveal()}"
        return await self._post(session, url, json=self.body(alert), headers=headers)


class SmsChannel(HttpChannel):
    """SMS through a Twilio-style gateway: POST To/From/Body as a form to {base_url}/Accounts/{sid}/Messages.json, basic auth."""

    kind = "sms"
    MAX_CHARS = 1600

    def __init__(self, name: str, account_sid: str, auth_token: str | Secret, *, sender: str, to: Sequence[str] | str,
                 base_url: str = "https://api.twilio.com/2010-04-01", timeout: float = 10.0) -> None:
        super().__init__(name)
        self.to = [to] if isinstance(to, str) else list(to)
        if not account_sid or not auth_token or not sender or not self.to:
            raise ConfigError(f"sms channel {name!r}: give account_sid, auth_token, sender (the 'from' number) and to")
        self.account_sid, self.auth_token, self.sender = account_sid, Secret(auth_token), sender
        self.base_url, self.timeout = base_url.rstrip("/"), float(timeout)
        self._sent: dict[str, set[str]] = {}  # alert id -> numbers already sent, so a retry texts only the rest
        self._lock = threading.Lock()

    def secrets(self) -> tuple[Secret | None, ...]:
        return (self.auth_token,)

    def target(self) -> str:
        return f"{_safe_url(self.base_url)} account {self.account_sid} -> {', '.join(self.to)}"

    def text(self, alert: Alert) -> str:
        """The SMS text: severity, title and message, cut to 1,600 characters (Twilio's limit)."""
        return f"[qlab {alert.severity}] {alert.title}: {alert.message}"[: self.MAX_CHARS]

    async def send(self, alert: Alert, session: Any) -> str:
        import aiohttp

        url = f"{self.base_url}/Accounts/{self.account_sid}/Messages.json"
        auth = {"Authorization": aiohttp.encode_basic_auth(self.account_sid, self.auth_token.reveal())}
        with self._lock:
            done = self._sent.setdefault(alert.id, set())
        receipts = []
        for number in self.to:
            if number in done:
                continue
            receipts.append(await self._post(session, url, data={"To": number, "From": self.sender, "Body": self.text(alert)},
                                             headers=auth, receipt_of=lambda s, b: f"HTTP {s}"))
            done.add(number)
        with self._lock:
            self._sent.pop(alert.id, None)
        return f"{len(receipts)} message(s) accepted"


# ---------------------------------------------------------------- in-process

class DashboardChannel(Channel):
    """The dashboard's alert list: the latest alerts in memory, plus listeners called on each new one."""

    kind = "dashboard"

    def __init__(self, name: str = "dashboard", maxlen: int = 500) -> None:
        super().__init__(name)
        self._alerts: deque[Alert] = deque(maxlen=int(maxlen))
        self._listeners: list[Callable[[Alert], Any]] = []
        self._lock = threading.Lock()

    def target(self) -> str:
        return "in-memory dashboard queue"

    def listen(self, callback: Callable[[Alert], Any]) -> Callable[[], None]:
        """Call `callback(alert)` (in the engine's thread) for every new alert; returns the function that stops it."""
        with self._lock:
            self._listeners.append(callback)

        def stop() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return stop

    def recent(self, limit: int = 50) -> list[Alert]:
        """The newest `limit` alerts, newest first."""
        with self._lock:
            return list(self._alerts)[::-1][:limit]

    async def send(self, alert: Alert, session: Any) -> str:
        with self._lock:
            self._alerts.append(alert)
            listeners = list(self._listeners)
        for callback in listeners:
            try:
                callback(alert)
            except Exception:  # a broken widget callback must not fail the delivery to the others
                log.exception("dashboard listener %r failed", callback)
        return f"queued ({len(self._alerts)} shown)"


class LogChannel(Channel):
    """Alerts as log records on the `qlab.alerts` logger (warning, or error for critical ones)."""

    kind = "log"

    def target(self) -> str:
        return "logger qlab.alerts"

    async def send(self, alert: Alert, session: Any) -> str:
        log.log(logging.ERROR if alert.severity == "critical" else logging.WARNING, "ALERT [%s] %s: %s",
                alert.severity, alert.title, alert.message)
        return "logged"


CHANNEL_TYPES: dict[str, type[Channel]] = {"email": EmailChannel, "webhook": WebhookChannel, "sms": SmsChannel,
                                           "dashboard": DashboardChannel, "log": LogChannel}
SECRET_FIELDS = {"password", "token", "auth_token", "url"}

"""Named exchange accounts (demo, testnet, live) and their credentials, kept out of logs, reprs and errors.

Credentials come from a TOML file (default $QLAB_HOME/credentials.toml, or $QLAB_CREDENTIALS) that qlab creates
with mode 0600 and refuses to read when group or others can read it, and from environment variables
QLAB_<NAME>_EXCHANGE, _MODE, _API_KEY, _SECRET, _PASSWORD, which define an account or override the file's fields.
A live account is used only with an explicit opt-in (allow_live=True, `--live` on the command line).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from qlab.config import qlab_home
from qlab.errors import ConfigError, NotFoundError, did_you_mean

EXCHANGES = ("bybit", "binance", "kucoin")
MODES = ("demo", "testnet", "live")
FIELDS = ("exchange", "mode", "api_key", "secret", "password")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_MASK = "***"
_MIN_SCRUB = 4  # shorter values would mangle ordinary text when scrubbed
_REGISTRY: set[str] = set()

log = logging.getLogger("qlab.accounts")


# ---------------------------------------------------------------- secrets

class Secret:
    """A credential string that prints as *** everywhere (str, repr, format, pickling refused); `.reveal()` gives it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise ConfigError(f"a secret must be a string, not {type(value).__name__}")
        self._value = value
        if len(value) >= _MIN_SCRUB:
            _REGISTRY.add(value)

    def reveal(self) -> str:
        """The real value; hand it straight to the exchange client, never to a print or a log."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{_MASK}')"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, spec: str) -> str:
        return _MASK

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict) -> Secret:
        return self

    def __reduce_ex__(self, protocol: object):
        raise TypeError("a Secret cannot be pickled; pass the account name and load it where it is needed")


def scrub(text: str, extra: Iterable[str | Secret | None] = ()) -> str:
    """`text` with every registered secret value (and any in `extra`) replaced by ***."""
    values = set(_REGISTRY)
    for value in extra:
        value = value.reveal() if isinstance(value, Secret) else value
        if value and len(value) >= _MIN_SCRUB:
            values.add(value)
    for value in sorted(values, key=len, reverse=True):  # longest first, so a key inside a secret is not half-masked
        text = text.replace(value, _MASK)
    return text


class SecretFilter(logging.Filter):
    """A logging filter that replaces every registered secret value in a record's message, arguments and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _REGISTRY:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error handling
            return True
        cleaned = scrub(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, ()
        if record.exc_info and record.exc_info[1] is not None:
            import traceback

            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            if scrub(text) != text:  # keep exc_info for other tools unless it carries a secret
                record.exc_text, record.exc_info = scrub(text), None
        return True


_FILTER = SecretFilter()


def install_secret_filter() -> None:
    """Scrub secrets from every log record: the filter sits on the `qlab` logger and in the record factory.

    A filter on a logger does not see records from its child loggers (qlab.exchange, ...) nor from libraries, so
    the record factory is wrapped too (once); it costs nothing while no secret has been loaded.
    """
    qlab_logger = logging.getLogger("qlab")
    if _FILTER not in qlab_logger.filters:
        qlab_logger.addFilter(_FILTER)
    factory = logging.getLogRecordFactory()
    if getattr(factory, "_qlab_scrubs", False):
        return

    def scrubbing_factory(*args, **kwargs):
        record = factory(*args, **kwargs)
        _FILTER.filter(record)
        return record

    scrubbing_factory._qlab_scrubs = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(scrubbing_factory)


install_secret_filter()


# ---------------------------------------------------------------- accounts

@dataclass(frozen=True, repr=False)
class Account:
    """A named exchange account; its credentials are `Secret`s and never print."""

    name: str
    exchange: str
    mode: str
    api_key: Secret
    secret: Secret
    password: Secret | None = None
    source: str = field(default="file", compare=False)  # 'file', 'env' or 'file+env'

    def __repr__(self) -> str:
        password = "None" if self.password is None else _MASK
        return (f"Account(name={self.name!r}, exchange={self.exchange!r}, mode={self.mode!r}, api_key={_MASK}, "
                f"secret={_MASK}, password={password})")

    __str__ = __repr__

    def ccxt_credentials(self) -> dict[str, str | None]:
        """The revealed credentials in ccxt's names; give them only to `qlab.exchange.ccxt_client.make_client`."""
        return {"apiKey": self.api_key.reveal(), "secret": self.secret.reveal(),
                "password": self.password.reveal() if self.password else None}


@dataclass(frozen=True)
class AccountInfo:
    """What `list_accounts` shows: no secret, only whether each credential is set."""

    name: str
    exchange: str | None
    mode: str | None
    source: str
    api_key: str
    secret: str
    password: str


def check_name(name: str) -> str:
    """The account name, checked: a letter, then letters, digits, '_' or '-' (it becomes part of env var names)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"account name {name!r}: use a letter followed by letters, digits, '_' or '-' (up to 64), "
                          "e.g. 'bybit-demo'")
    return name


def check_exchange(exchange: str, where: str = "") -> str:
    """The exchange id, checked against the supported ones (with a did-you-mean)."""
    if exchange not in EXCHANGES:
        raise ConfigError(f"{where}unknown exchange {exchange!r}; use one of {', '.join(EXCHANGES)}."
                          + did_you_mean(str(exchange), EXCHANGES))
    return exchange


def check_mode(mode: str, where: str = "") -> str:
    """The mode, checked against demo, testnet and live (with a did-you-mean)."""
    if mode not in MODES:
        raise ConfigError(f"{where}unknown mode {mode!r}; use one of {', '.join(MODES)}." + did_you_mean(str(mode), MODES))
    return mode


def require_live_opt_in(name: str, mode: str, allow_live: bool) -> None:
    """A ConfigError explaining the opt-in when `mode` is live and `allow_live` is not set."""
    if mode == "live" and not allow_live:
        raise ConfigError(f"account {name!r} is a live account (real money); opt in explicitly with allow_live=True, "
                          "or --live on the command line")


def credentials_path() -> Path:
    """The credentials file: $QLAB_CREDENTIALS, else QLAB_HOME/credentials.toml."""
    explicit = os.environ.get("QLAB_CREDENTIALS")
    return Path(explicit).expanduser() if explicit else qlab_home() / "credentials.toml"


def env_prefix(name: str) -> str:
    """'QLAB_BYBIT_DEMO_' for account 'bybit-demo': the prefix of its environment variables."""
    return "QLAB_" + name.upper().replace("-", "_") + "_"


def _read_file(path: Path) -> dict[str, dict[str, str]]:
    """The accounts table of the credentials file ({} when there is no file); refuses a group/world-readable file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return {}
    if os.name != "nt" and st.st_mode & 0o077:
        raise ConfigError(f"{path} can be read by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                          f"qlab will not use credentials others can read: run `chmod 600 {path}` "
                          "(and rotate the keys if others may have read them)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:  # its message gives line and column, never the text itself
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix it or remove it and `qlab accounts add` again") from None
    accounts = data.get("accounts", {})
    if not isinstance(accounts, dict) or not all(isinstance(v, dict) for v in accounts.values()):
        raise ConfigError(f"{path}: expected [accounts.NAME] tables with exchange, mode, api_key, secret")
    for name, entry in accounts.items():
        for key, value in entry.items():
            if key not in FIELDS:
                raise ConfigError(f"{path}: account {name!r} has unknown key {key!r}; use {', '.join(FIELDS)}."
                                  + did_you_mean(key, FIELDS))
            if not isinstance(value, str):
                raise ConfigError(f"{path}: account {name!r}: {key} must be a string")
    return accounts


def _toml_string(value: str) -> str:
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _write_file(path: Path, accounts: dict[str, dict[str, str]]) -> None:
    """Write the accounts atomically to a new 0600 file beside `path`, then rename it over `path`."""
    # The file is tiny and flat, so it is written by hand: the standard library reads TOML (tomllib) but cannot write it.
    lines = ["# qlab credentials: keep this file private (mode 0600); edit with `qlab accounts add/remove`", ""]
    for name in sorted(accounts):
        lines.append(f"[accounts.{_toml_string(name)}]")
        lines += [f"{key} = {_toml_string(accounts[name][key])}" for key in FIELDS if accounts[name].get(key)]
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            if os.name != "nt":
                os.fchmod(f.fileno(), 0o600)
            f.write("\n".join(lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _env_fields(name: str) -> dict[str, str]:
    prefix = env_prefix(name)
    return {key: os.environ[prefix + key.upper()] for key in FIELDS if os.environ.get(prefix + key.upper())}


def _env_names() -> set[str]:
    """Accounts defined in the environment by QLAB_<NAME>_EXCHANGE (names come back lower-case)."""
    names = set()
    for var in os.environ:
        m = re.fullmatch(r"QLAB_([A-Z][A-Z0-9_]*)_EXCHANGE", var)
        if m:
            names.add(m.group(1).lower())
    return names


def _merged(path: Path) -> dict[str, tuple[dict[str, str], str]]:
    """Every account name -> (its fields from the file overridden by the environment, its source)."""
    file_accounts = _read_file(path)
    out: dict[str, tuple[dict[str, str], str]] = {}
    env_keys = {env_prefix(n): n for n in file_accounts}
    for name in _env_names():
        if env_prefix(name) not in env_keys:
            out[name] = (_env_fields(name), "env")
    for name, entry in file_accounts.items():
        env = _env_fields(name)
        out[name] = ({**entry, **env}, "file+env" if env else "file")
    return out


def _build(name: str, fields: dict[str, str], source: str, where: str) -> Account:
    for key in ("exchange", "mode", "api_key", "secret"):
        if not fields.get(key):
            raise ConfigError(f"account {name!r} has no {key}; set it in {where} or {env_prefix(name)}{key.upper()}")
    at = f"account {name!r}: "
    return Account(name=name, exchange=check_exchange(fields["exchange"], at), mode=check_mode(fields["mode"], at),
                   api_key=Secret(fields["api_key"]), secret=Secret(fields["secret"]),
                   password=Secret(fields["password"]) if fields.get("password") else None, source=source)


def load_account(name: str, allow_live: bool = False, path: str | Path | None = None) -> Account:
    """The account `name` from the credentials file and the environment; a live one needs allow_live=True."""
    path = Path(path) if path else credentials_path()
    accounts = _merged(path)
    if name not in accounts:
        raise NotFoundError(f"no account {name!r} in {path} or the environment; add it with "
                            f"`qlab accounts add {name} --exchange bybit --mode demo`." + did_you_mean(name, accounts))
    fields, source = accounts[name]
    account = _build(name, fields, source, str(path))
    require_live_opt_in(name, account.mode, allow_live)
    return account


def list_accounts(path: str | Path | None = None) -> list[AccountInfo]:
    """Every account in the file and the environment, with 'set'/'missing' in place of credentials."""
    path = Path(path) if path else credentials_path()
    rows = []
    for name, (fields, source) in sorted(_merged(path).items()):
        state = {key: "set" if fields.get(key) else "missing" for key in ("api_key", "secret", "password")}
        rows.append(AccountInfo(name, fields.get("exchange"), fields.get("mode"), source, **state))
    return rows


def add_account(name: str, exchange: str, mode: str, api_key: str | Secret, secret: str | Secret,
                password: str | Secret | None = None, *, allow_live: bool = False, replace: bool = False,
                path: str | Path | None = None) -> Account:
    """Store an account in the credentials file (created 0600); a live one needs allow_live=True."""
    check_name(name)
    check_exchange(exchange)
    check_mode(mode)
    require_live_opt_in(name, mode, allow_live)
    from qlab.exchange.ccxt_client import supported_modes

    modes = supported_modes(exchange)
    if mode not in modes:
        raise ConfigError(f"{exchange} has no {mode} environment in the installed ccxt; use one of {', '.join(modes)}")
    api_key, secret = Secret(api_key), Secret(secret)
    password = Secret(password) if password else None
    if not api_key or not secret:
        raise ConfigError(f"account {name!r}: both the API key and the secret are needed")
    path = Path(path) if path else credentials_path()
    accounts = _read_file(path)
    if name in accounts and not replace:
        raise ConfigError(f"account {name!r} already exists in {path}; remove it first or pass replace=True (--replace)")
    entry = {"exchange": exchange, "mode": mode, "api_key": api_key.reveal(), "secret": secret.reveal()}
    if password:
        entry["password"] = password.reveal()
    accounts[name] = entry
    _write_file(path, accounts)
    log.info("added %s account %r (%s) to %s", mode, name, exchange, path)
    return Account(name, exchange, mode, api_key, secret, password, source="file")


def remove_account(name: str, path: str | Path | None = None) -> None:
    """Delete an account from the credentials file (environment variables are left to the shell)."""
    path = Path(path) if path else credentials_path()
    accounts = _read_file(path)
    if name not in accounts:
        raise NotFoundError(f"no account {name!r} in {path}." + did_you_mean(name, accounts))
    del accounts[name]
    _write_file(path, accounts)
    log.info("removed account %r from %s", name, path)


# ---------------------------------------------------------------- key check

@dataclass(frozen=True)
class CheckResult:
    """The outcome of `check_account`: status is 'ok', 'auth', 'permission', 'network' or 'error'."""

    name: str
    exchange: str
    mode: str
    status: str
    message: str
    currencies: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _default_factory(account: Account):
    from qlab.exchange.ccxt_client import make_client

    return make_client(account.exchange, account.ccxt_credentials(), account.mode)


async def acheck_account(account: Account | str, client_factory: Callable | None = None, *,
                         allow_live: bool = False) -> CheckResult:
    """Validate an account's key by fetching its balance; failures become a clear, secret-free CheckResult."""
    from qlab.exchange.ccxt_client import error_kind

    if isinstance(account, str):
        account = load_account(account, allow_live=allow_live)
    else:
        require_live_opt_in(account.name, account.mode, allow_live)
    who = f"{account.name!r} ({account.exchange} {account.mode})"
    client = None
    try:
        client = (client_factory or _default_factory)(account)
        balance = await client.fetch_balance()
    except ConfigError:
        raise
    except Exception as exc:  # every failure is reported, scrubbed, never re-raised carrying a secret
        kind = error_kind(exc)
        detail = scrub(f"{type(exc).__name__}: {exc}", (account.api_key, account.secret, account.password))[:300]
        message = {
            "auth": f"authentication failed for account {who}: the key or secret is wrong or expired, or the key "
                    f"belongs to another environment (demo/testnet/live)",
            "permission": f"missing permissions for account {who}: the key works but may not read balances; "
                          "enable read (and trade) permissions for it on the exchange",
            "network": f"{account.exchange} is unreachable for account {who}; check the network and retry",
        }.get(kind, f"checking account {who} failed")
        status = kind if kind in ("auth", "permission", "network") else "error"
        log.warning("%s [%s]", message, detail)
        return CheckResult(account.name, account.exchange, account.mode, status, f"{message} [{detail}]")
    finally:
        if client is not None and hasattr(client, "close"):
            with contextlib.suppress(Exception):  # closing must not hide the result
                await client.close()
    total = (balance or {}).get("total") or {}
    held = tuple(sorted(c for c, v in total.items() if v))
    return CheckResult(account.name, account.exchange, account.mode, "ok",
                       f"account {who}: key accepted; balances in {', '.join(held) or 'no currency'}", held)


def check_account(account: Account | str, client_factory: Callable | None = None, *,
                  allow_live: bool = False) -> CheckResult:
    """`acheck_account` for scripts and the CLI (in a notebook's running loop, `await acheck_account(...)`)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(acheck_account(account, client_factory, allow_live=allow_live))
    raise ConfigError("check_account was called inside a running event loop (a notebook); use "
                      "`await qlab.accounts.acheck_account(...)` there")

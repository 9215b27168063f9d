"""ccxt async clients for an account's exchange and mode (demo, testnet, live), and ccxt error kinds.

This module knows nothing about qlab accounts: it takes plain credential strings, so the accounts layer
(which sits below it) can hand them over at the last moment without ccxt ever seeing a `Secret`.
"""

from __future__ import annotations

from collections.abc import Mapping

from qlab.errors import ConfigError, did_you_mean

MODES = ("demo", "testnet", "live")
CCXT_IDS = {"bybit": "bybit", "binance": "binance", "kucoin": "kucoin"}


def _exchange_class(exchange_id: str):
    import ccxt.async_support as ccxt_async

    if exchange_id not in CCXT_IDS:
        raise ConfigError(f"unknown exchange {exchange_id!r}; use one of {', '.join(CCXT_IDS)}."
                          + did_you_mean(exchange_id, CCXT_IDS))
    return getattr(ccxt_async, CCXT_IDS[exchange_id])


def _modes_of(client) -> tuple[str, ...]:
    modes = []
    urls = client.urls or {}
    if hasattr(client, "enable_demo_trading") and (urls.get("demotrading") or urls.get("demo")):
        modes.append("demo")
    if urls.get("test"):
        modes.append("testnet")
    modes.append("live")
    return tuple(modes)


def supported_modes(exchange_id: str) -> tuple[str, ...]:
    """The modes the installed ccxt supports for an exchange, e.g. ('demo', 'testnet', 'live') for bybit."""
    return _modes_of(_exchange_class(exchange_id)())


def make_client(exchange_id: str, credentials: Mapping[str, str | None], mode: str):
    """A ccxt async exchange for `exchange_id` in `mode`, signed with credentials {apiKey, secret, password}.

    demo -> ccxt's enable_demo_trading(True) (Bybit demo trading, Binance demo); testnet -> set_sandbox_mode(True)
    (Bybit testnet, Binance testnet); live -> the real exchange. A mode the installed ccxt lacks is a ConfigError.
    The caller must `await client.close()`.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}." + did_you_mean(mode, MODES))
    cls = _exchange_class(exchange_id)
    config = {"enableRateLimit": True}
    for key in ("apiKey", "secret", "password"):
        if credentials.get(key):
            config[key] = credentials[key]
    client = cls(config)
    modes = _modes_of(client)
    if mode not in modes:
        raise ConfigError(f"{exchange_id} has no {mode} environment in the installed ccxt; "
                          f"use one of {', '.join(modes)} for {exchange_id}")
    if mode == "demo":
        client.enable_demo_trading(True)
    elif mode == "testnet":
        client.set_sandbox_mode(True)
    return client


def error_kind(exc: BaseException) -> str:
    """'permission', 'auth', 'network' or 'other' for an exception ccxt raised (PermissionDenied is checked first)."""
    import ccxt

    if isinstance(exc, ccxt.PermissionDenied | ccxt.AccountNotEnabled):
        return "permission"
    if isinstance(exc, ccxt.AuthenticationError):
        return "auth"
    if isinstance(exc, ccxt.NetworkError | TimeoutError | ConnectionError):
        return "network"
    return "other"

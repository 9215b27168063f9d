"""Retrying ccxt calls: exponential backoff with full jitter for errors that retrying can fix, qlab errors for the rest.

    rows = await call_with_retry(fetch_ohlcv_checked, client, "BTC/USDT:USDT", "1h", since, 1000)

Retried: ccxt RequestTimeout, ExchangeNotAvailable (5xx, maintenance, dropped connections), DDoSProtection,
RateLimitExceeded (waiting at least the Retry-After the exchange sent), any other ccxt NetworkError, and
`InvalidResponse` (a body that is not the JSON the call expected, which ccxt would turn into an empty list).
Never retried: AuthenticationError (-> AuthError), PermissionDenied (-> PermissionDeniedError, an AuthError),
BadSymbol (-> BadSymbolError), InsufficientFunds (-> InsufficientFundsError), OrderNotFound (-> OrderNotFoundError),
InvalidOrder (-> OrderRejectedError), NotSupported (-> NotSupportedError) and every other ccxt error, BadRequest
included (-> ExchangeError). Messages are scrubbed of the
client's apiKey, secret and password and of signed query parameters.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import ccxt

from qlab import errors

_RNG = random.Random()
_SIGNED_PARAMS = re.compile(r"(?i)\b(api_?key|sign(?:ature)?|secret|passphrase|password|token)=[^&\s\"']*")


class InvalidResponse(ccxt.NetworkError):
    """The exchange answered 200 with a body that is not the JSON the call needed; retried like a network error."""


RETRIABLE = (ccxt.RequestTimeout, ccxt.ExchangeNotAvailable, ccxt.DDoSProtection, ccxt.RateLimitExceeded,
             ccxt.NetworkError)


def _client_of(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    from ccxt.base.exchange import Exchange  # the sync base; async clients subclass their own

    def is_client(obj: Any) -> bool:
        return isinstance(obj, Exchange) or (hasattr(obj, "fetch_ohlcv") and hasattr(obj, "last_response_headers"))

    owner = getattr(fn, "__self__", None)
    if is_client(owner):
        return owner
    return next((a for a in args if is_client(a)), None)


def scrub(message: str, client: Any = None) -> str:
    """`message` with the client's credentials and any signed query parameters replaced by '***'."""
    for attr in ("apiKey", "secret", "password", "uid", "privateKey", "token"):
        value = getattr(client, attr, None) if client is not None else None
        if isinstance(value, str) and len(value) >= 4:
            message = message.replace(value, "***")
    return _SIGNED_PARAMS.sub(lambda m: m.group(1) + "=***", message)


def retry_after_seconds(exc: BaseException, client: Any = None) -> float | None:
    """The wait the exchange asked for: `exc.retry_after`, a Retry-After header, or 'retry after N' in the message."""
    value = getattr(exc, "retry_after", None)
    if value is None and client is not None:
        headers: Mapping[str, Any] = getattr(client, "last_response_headers", None) or {}
        value = next((v for k, v in headers.items() if str(k).lower() == "retry-after"), None)
    if value is None:
        match = re.search(r"(?i)retry[- _]?after\D{0,5}(\d+(?:\.\d+)?)", str(exc))
        value = match.group(1) if match else None
    try:
        seconds = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None  # an HTTP date: fall back to the backoff
    return seconds if seconds is not None and 0 <= seconds <= 3600 else None


def translate(exc: BaseException, client: Any = None, what: str = "request") -> errors.ExchangeError:
    """The qlab error for a ccxt exception, with a scrubbed message."""
    name = getattr(client, "id", None) or "exchange"
    detail = scrub(f"{type(exc).__name__}: {exc}", client)[:500]
    if isinstance(exc, ccxt.PermissionDenied | ccxt.AccountNotEnabled):
        return errors.PermissionDeniedError(f"{name} refused {what}: the API key lacks a permission it needs ({detail}); "
                                            "enable it (trade, wallet, IP whitelist) on the exchange's API page")
    if isinstance(exc, ccxt.InsufficientFunds):
        return errors.InsufficientFundsError(f"{name} refused {what} for insufficient funds ({detail}); lower the amount "
                                             "or fund the account (see fetch_balance())")
    if isinstance(exc, ccxt.OrderNotFound):
        return errors.OrderNotFoundError(f"{name} found no such order for {what} ({detail}); check the order id and "
                                         "symbol with fetch_open_orders()")
    if isinstance(exc, ccxt.InvalidOrder) or (isinstance(exc, ccxt.BadRequest) and what == "create_order"):
        return errors.OrderRejectedError(f"{name} rejected the order of {what} ({detail}); check amount and price against "
                                         "the market's min_amount, amount_step and price_step")
    if isinstance(exc, ccxt.NotSupported):
        return errors.NotSupportedError(f"{name} does not support {what} ({detail})")
    if isinstance(exc, ccxt.AuthenticationError):
        return errors.AuthError(f"{name} rejected the credentials for {what} ({detail}); check the API key, its "
                                "permissions and IP whitelist with `qlab accounts check NAME`")
    if isinstance(exc, ccxt.BadSymbol):
        return errors.BadSymbolError(f"{name} does not list the symbol of {what} ({detail}); check the spelling "
                                     "(ccxt unified, e.g. BTC/USDT:USDT for a linear perpetual)")
    if isinstance(exc, ccxt.RateLimitExceeded | ccxt.DDoSProtection):
        return errors.RateLimitError(f"{name} kept rate-limiting {what} after every retry ({detail}); wait and rerun, "
                                     "or lower the concurrency")
    if isinstance(exc, InvalidResponse | ccxt.ExchangeNotAvailable):
        return errors.ExchangeDownError(f"{name} is unavailable for {what} after every retry ({detail}); rerun later")
    if isinstance(exc, ccxt.NetworkError | TimeoutError | ConnectionError):
        return errors.NetworkError(f"{name} could not be reached for {what} after every retry ({detail}); "
                                   "check the connection and rerun")
    return errors.ExchangeError(f"{name} refused {what} ({detail})")


async def call_with_retry(
    fn: Callable[..., Awaitable[Any]],
    *args: Any,
    max_tries: int = 5,
    base: float = 0.5,
    cap: float = 30,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    rng: random.Random | None = None,
    retry_client: Any = None,
    retry_what: str | None = None,
    **kw: Any,
) -> Any:
    """`await fn(*args, **kw)`, retrying network-type ccxt errors up to `max_tries` calls in all.

    The wait before try n+1 is uniform in [0, min(cap, base * 2**n)] (full jitter), and at least the
    Retry-After the exchange sent. Errors that retrying cannot fix are raised at once, as qlab errors.
    `retry_client` / `retry_what` name the ccxt client and the call when `fn` is a wrapper (for scrubbing and messages).
    """
    rng = rng or _RNG
    client = retry_client if retry_client is not None else _client_of(fn, args)
    what = retry_what or getattr(fn, "__name__", "request")
    for attempt in range(max(1, max_tries)):
        try:
            return await fn(*args, **kw)
        except RETRIABLE as exc:
            if attempt + 1 >= max_tries:
                raise translate(exc, client, what) from None
            delay = rng.uniform(0, min(cap, base * 2**attempt))
            asked = retry_after_seconds(exc, client) if isinstance(exc, ccxt.DDoSProtection | ccxt.RateLimitExceeded) else None
            await sleep(max(delay, min(asked, cap)) if asked is not None else delay)
        except ccxt.BaseError as exc:
            raise translate(exc, client, what) from None
    raise AssertionError("unreachable")  # pragma: no cover


async def fetch_ohlcv_checked(client: Any, symbol: str, timeframe: str, since: int | None, limit: int | None,
                              params: dict[str, Any] | None = None) -> list[list[float]]:
    """`client.fetch_ohlcv`, raising InvalidResponse when an empty list came from a body that was not valid JSON.

    ccxt turns a truncated or garbled 200 body into [], which would read as "no more candles"."""
    rows = await client.fetch_ohlcv(symbol, timeframe, since, limit, dict(params or {}))
    if not rows:
        body = getattr(client, "last_http_response", None)
        if isinstance(body, str) and body.strip():
            try:
                json.loads(body)
            except ValueError:
                raise InvalidResponse(f"{client.id} fetch_ohlcv {symbol} {timeframe}: the response is not valid JSON "
                                      f"({len(body)} characters)") from None
    return rows


def ohlcv_page_limit(client: Any, symbol: str, default: int = 200) -> int:
    """The most candles one fetch_ohlcv call returns for `symbol`, from ccxt's `features` (markets must be loaded)."""
    try:
        market = client.market(symbol)
        kind = market["type"] if market["type"] in ("spot", "swap", "future", "option") else "spot"
        node = client.features[kind]
        if kind != "spot":
            node = node["linear" if market.get("linear") else "inverse"]
        limit = node["fetchOHLCV"]["limit"]
        return int(limit) if limit else default
    except (KeyError, TypeError, ValueError, ccxt.BaseError):
        return default

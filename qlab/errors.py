"""The exceptions qlab raises on purpose; each message names the bad value and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class QlabError(Exception):
    """Base of every error qlab raises on purpose."""


class ConfigError(QlabError, ValueError):
    """A setting, path or argument that qlab cannot use."""


class DataError(QlabError, ValueError):
    """Market data that cannot be used as it is."""


class NotFoundError(QlabError, KeyError):
    """A name (symbol, timeframe, sample, table) that does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message; keep it readable
        return str(self.args[0]) if self.args else ""


class StoreError(QlabError, RuntimeError):
    """The market-data store cannot be opened or written as asked."""


class SchemaVersionError(StoreError):
    """The store was written by a newer qlab than this one."""


class StrategyError(QlabError, ValueError):
    """A strategy, indicator or signal that qlab cannot run as written."""


class LookaheadError(StrategyError):
    """A strategy whose values at a bar depend on later bars (it peeks into the future)."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' did you mean ...?' hint for an unknown name, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=3, cutoff=0.5)
    if not close:
        return ""
    return " did you mean " + " or ".join(repr(c) for c in close) + "?"


class ExchangeError(QlabError, RuntimeError):
    """An exchange refused or failed a request (the message names the exchange, never a credential)."""


class AuthError(ExchangeError):
    """The exchange rejected the API key or its permissions; retrying cannot fix it."""


class RateLimitError(ExchangeError):
    """The exchange kept rate-limiting requests after every retry."""


class BudgetExceededError(RateLimitError):
    """An API key's call or money budget for the day or month is spent; the call was refused before it was made."""


class NetworkError(ExchangeError):
    """The exchange could not be reached (timeouts, dropped connections) after every retry."""


class ExchangeDownError(NetworkError):
    """The exchange answered 5xx / maintenance, or kept sending unusable responses, after every retry."""


class BadSymbolError(ExchangeError):
    """The exchange does not list the symbol asked for."""


class PermissionDeniedError(AuthError):
    """The API key is valid but lacks the permission the call needs (trade, wallet, IP whitelist)."""


class InsufficientFundsError(ExchangeError):
    """The account's free balance or margin is too small for the order."""


class OrderRejectedError(ExchangeError):
    """The exchange refused an order as invalid: amount below the minimum, bad price, reduce-only violated."""


class OrderNotFoundError(ExchangeError):
    """The exchange knows no order with that id for that symbol (filled long ago, or never placed)."""


class NotSupportedError(ExchangeError):
    """The exchange (or this market kind on it) does not offer the call asked for."""

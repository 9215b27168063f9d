"""The one exchange interface qlab codes against (`Exchange`), and what a given exchange can do (`Capabilities`).

Strategies, sync and the paper trader talk to an `Exchange`; `qlab.exchange.ccxt_exchange.CcxtExchange` implements it
once over ccxt for every exchange, so adding an exchange is a ccxt id and a mode in configuration, not code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from qlab.errors import NotSupportedError

if TYPE_CHECKING:
    import pandas as pd

    from qlab.exchange.types import Balance, FundingRate, Market, Order, OrderBook, Ticker, Trade

# interface method -> the ccxt `has` key that says whether the exchange offers it
CCXT_METHODS: dict[str, str] = {
    "load_markets": "fetchMarkets",
    "fetch_ohlcv": "fetchOHLCV",
    "fetch_ticker": "fetchTicker",
    "fetch_order_book": "fetchOrderBook",
    "fetch_trades": "fetchTrades",
    "fetch_funding_rate_history": "fetchFundingRateHistory",
    "fetch_balance": "fetchBalance",
    "create_order": "createOrder",
    "cancel_order": "cancelOrder",
    "fetch_order": "fetchOrder",
    "fetch_open_orders": "fetchOpenOrders",
    "fetch_my_trades": "fetchMyTrades",
}
MARKET_KINDS = ("spot", "linear_swap", "inverse_swap", "future")


@dataclass(frozen=True)
class Capabilities:
    """What one exchange offers: interface methods, market kinds ('spot', 'linear_swap', ...) and modes."""

    exchange_id: str
    methods: frozenset[str]
    market_kinds: frozenset[str]
    modes: tuple[str, ...] = ("live",)

    def supports(self, method: str) -> bool:
        """True when the exchange offers interface method `method` (e.g. 'fetch_funding_rate_history')."""
        return method in self.methods

    def require(self, method: str) -> None:
        """Raise NotSupportedError naming the capability when the exchange lacks `method`."""
        if method not in CCXT_METHODS:
            raise NotSupportedError(f"{method!r} is not an Exchange method; use one of {', '.join(CCXT_METHODS)}")
        if method not in self.methods:
            raise NotSupportedError(
                f"{self.exchange_id} does not support {method} (ccxt has[{CCXT_METHODS[method]!r}] is false); "
                f"check exchange.capabilities.supports({method!r}) first or use an exchange that has it"
            )

    @classmethod
    def from_ccxt(cls, client: Any, markets: Mapping[str, Mapping[str, Any]] | None = None,
                  modes: tuple[str, ...] = ("live",)) -> Capabilities:
        """Capabilities from a ccxt client's `has` dict, narrowed to the kinds its loaded `markets` actually list."""
        has = getattr(client, "has", None) or {}
        methods = frozenset(m for m, key in CCXT_METHODS.items() if has.get(key) in (True, "emulated"))
        if markets:
            kinds = {market_kind(m) for m in markets.values()} & set(MARKET_KINDS)
        else:
            kinds = {k for k, flag in (("spot", "spot"), ("linear_swap", "swap"), ("future", "future")) if has.get(flag)}
        return cls(str(getattr(client, "id", "exchange")), methods, frozenset(kinds), tuple(modes))


def market_kind(market: Mapping[str, Any]) -> str:
    """'spot', 'linear_swap', 'inverse_swap', 'future' or 'option' for a ccxt market dict."""
    kind = market.get("type")
    if kind == "swap":
        return "linear_swap" if market.get("linear") else "inverse_swap"
    return str(kind)


def endpoint_weight(client: Any, method_name: str) -> float:
    """The rate-limit weight of one call of ccxt method `method_name` (e.g. 'fetch_ohlcv'): 1 unless configured.

    ccxt keeps costs per raw endpoint, not per unified method, so weights are configuration:
    `client.options['qlabWeights'] = {'fetch_balance': 5}` overrides the default of 1.
    """
    options = getattr(client, "options", None) or {}
    weights = options.get("qlabWeights") or {}
    try:
        weight = float(weights.get(method_name, 1.0))
    except (TypeError, ValueError):
        return 1.0
    return weight if weight > 0 else 1.0


@runtime_checkable
class Exchange(Protocol):
    """What qlab needs from an exchange; every time is UTC, every amount in base currency (see qlab.exchange.types)."""

    id: str

    @property
    def capabilities(self) -> Capabilities:
        """The methods, market kinds and modes this exchange offers."""
        ...

    async def load_markets(self, reload: bool = False) -> dict[str, Market]:
        """All markets by unified symbol (fetched once, then cached unless `reload`)."""
        ...

    def market(self, symbol: str) -> Market:
        """One loaded market; an unknown symbol is a BadSymbolError with 'did you mean'."""
        ...

    async def fetch_ohlcv(self, symbol: str, timeframe: str, since: pd.Timestamp | int | None = None,
                          limit: int | None = None) -> pd.DataFrame:
        """Candles: UTC DatetimeIndex named timestamp, float columns open high low close volume."""
        ...

    async def fetch_ticker(self, symbol: str) -> Ticker:
        """Best bid/ask and last price."""
        ...

    async def fetch_order_book(self, symbol: str, limit: int | None = None) -> OrderBook:
        """An L2 snapshot."""
        ...

    async def fetch_trades(self, symbol: str, since: pd.Timestamp | int | None = None,
                           limit: int | None = None) -> list[Trade]:
        """Recent public trades, oldest first."""
        ...

    async def fetch_funding_rate_history(self, symbol: str, since: pd.Timestamp | int | None = None,
                                         limit: int | None = None) -> list[FundingRate]:
        """Funding-rate prints of a perpetual, oldest first."""
        ...

    async def fetch_balance(self) -> Balance:
        """The account's balances per currency."""
        ...

    async def create_order(self, symbol: str, side: str, type: str, amount: float, price: float | None = None, *,
                           stop_price: float | None = None, client_id: str | None = None,
                           reduce_only: bool = False) -> Order:
        """Place an order ('market', 'limit', 'stop_market', 'stop_limit') and return it as the exchange reports it."""
        ...

    async def cancel_order(self, order_id: str, symbol: str) -> Order:
        """Cancel an open order."""
        ...

    async def fetch_order(self, order_id: str, symbol: str) -> Order:
        """One order by id."""
        ...

    async def fetch_open_orders(self, symbol: str | None = None) -> list[Order]:
        """Orders still open (for one symbol, or all)."""
        ...

    async def fetch_my_trades(self, symbol: str | None = None, since: pd.Timestamp | int | None = None,
                              limit: int | None = None) -> list[Trade]:
        """The account's own fills, oldest first."""
        ...

    async def close(self) -> None:
        """Release the HTTP session."""
        ...

    async def __aenter__(self) -> Exchange: ...

    async def __aexit__(self, *exc: object) -> None: ...

"""`CcxtExchange`: the `Exchange` interface implemented once over any ccxt async client (bybit, binance, kucoin, ...).

    async with open_exchange("bybit", "demo", {"apiKey": ..., "secret": ...}) as ex:
        await ex.load_markets()
        bars = await ex.fetch_ohlcv("BTC/USDT:USDT", "1h", since="2024-01-01", limit=200)
        order = await ex.create_order("BTC/USDT:USDT", "buy", "limit", 0.001, 60000)

Every REST call goes through `call_with_retry` (network faults retried, everything else translated into qlab.errors
with secrets scrubbed) and, when a `meter` is given, through `meter.acquire(endpoint, weight)` / `meter.record(...)`.
ccxt dicts are converted to the plain types of `qlab.exchange.types`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import ccxt
import pandas as pd

from qlab.errors import BadSymbolError, ConfigError, NotSupportedError, OrderNotFoundError, did_you_mean
from qlab.exchange.ccxt_client import _modes_of, make_client
from qlab.exchange.interface import Capabilities, endpoint_weight
from qlab.exchange.retry import call_with_retry, fetch_ohlcv_checked, translate
from qlab.exchange.types import (
    ORDER_SIDES,
    ORDER_TYPES,
    Balance,
    FundingRate,
    Market,
    Order,
    OrderBook,
    Ticker,
    Trade,
)

OHLCV_COLUMNS = ["open", "high", "low", "close", "volume"]
# exchanges whose trigger orders need the direction of the trigger spelled out: ccxt param, value per side (a buy
# stop fires when the price rises to it, a sell stop when it falls) and the market kinds that take it; configuration
STOP_DIRECTION_PARAM: dict[str, tuple[str, dict[str, str], tuple[str, ...]]] = {
    "bybit": ("triggerDirection", {"buy": "above", "sell": "below"}, ("swap", "future")),
}
# exchanges whose "all symbols" order and fill queries cover one market type per call: the ccxt `type` values to ask
ACCOUNT_QUERY_TYPES: dict[str, tuple[str, ...]] = {"bybit": ("spot", "swap")}
# how each exchange looks an order up by its client order id, per ccxt's implementation: "fetch_order" passes the param
# to fetchOrder (Binance: GET /api/v3/order?origClientOrderId=), "lists" filters the open then the closed orders
# (Bybit v5: /v5/order/{realtime,history}?orderLinkId=, as its fetchOrder always sends an orderId); configuration
CLIENT_ID_LOOKUP: dict[str, tuple[str, str]] = {
    "binance": ("fetch_order", "origClientOrderId"),
    "bybit": ("lists", "orderLinkId"),
}
DEFAULT_CLIENT_ID_LOOKUP = ("fetch_order", "clientOrderId")  # ccxt's unified param name


def to_ms(when: pd.Timestamp | int | float | str | None) -> int | None:
    """Milliseconds since the epoch for an int (already ms), a Timestamp/datetime or an ISO string (naive = UTC)."""
    if when is None:
        return None
    if isinstance(when, int | float) and not isinstance(when, bool):
        return int(when)
    try:
        ts = pd.Timestamp(when)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read {when!r} as a time; pass e.g. '2024-01-01', a pandas Timestamp or epoch ms") from exc
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.value // 1_000_000)


def _ts(ms: Any) -> pd.Timestamp | None:
    return pd.Timestamp(int(ms), unit="ms", tz="UTC") if ms is not None else None


def _f(value: Any) -> float | None:
    try:
        return float(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def to_market(m: Mapping[str, Any]) -> Market:
    """A qlab Market from a ccxt market dict (precision in tick-size mode: steps, not decimal places)."""
    limits, precision = m.get("limits") or {}, m.get("precision") or {}
    return Market(
        symbol=m["symbol"], base=m.get("base") or "", quote=m.get("quote") or "", kind=str(m.get("type")),
        linear=m.get("linear"), price_step=_f(precision.get("price")), amount_step=_f(precision.get("amount")),
        min_amount=_f((limits.get("amount") or {}).get("min")), min_notional=_f((limits.get("cost") or {}).get("min")),
        maker=_f(m.get("maker")), taker=_f(m.get("taker")), active=m.get("active") is not False, raw=m,
    )


def to_frame(rows: list[list[Any]]) -> pd.DataFrame:
    """ccxt OHLCV rows -> DataFrame with a UTC DatetimeIndex named timestamp and float open..volume columns."""
    frame = pd.DataFrame([r[1:6] for r in rows], columns=OHLCV_COLUMNS, dtype=float)
    stamps = pd.to_datetime([int(r[0]) for r in rows], unit="ms", utc=True).as_unit("ns")  # ns like the store
    frame.index = pd.DatetimeIndex(stamps, name="timestamp")
    return frame


def to_trade(t: Mapping[str, Any]) -> Trade:
    """A qlab Trade from a ccxt trade dict (public print or own fill)."""
    fee = t.get("fee") or {}
    maker = t.get("takerOrMaker")
    return Trade(
        symbol=t["symbol"], ts=_ts(t.get("timestamp")), side=str(t.get("side")), price=float(t["price"]),
        amount=float(t["amount"]), id=None if t.get("id") is None else str(t["id"]),
        order_id=None if t.get("order") is None else str(t["order"]), fee=_f(fee.get("cost")),
        fee_currency=fee.get("currency"), maker=None if maker is None else maker == "maker", raw=t,
    )


def to_order(o: Mapping[str, Any], symbol: str | None = None) -> Order:
    """A qlab Order from a ccxt order dict; a trigger price turns market/limit into stop_market/stop_limit."""
    trigger = _f(o.get("triggerPrice")) or _f(o.get("stopPrice")) or None
    kind = str(o.get("type") or "market").lower()
    if trigger and kind in ("market", "limit"):
        kind = "stop_" + kind
    fee = o.get("fee") or {}
    return Order(
        id=str(o["id"]), client_id=o.get("clientOrderId") or None, symbol=o.get("symbol") or symbol or "",
        side=str(o.get("side")), type=kind, amount=float(o.get("amount") or 0.0), price=_f(o.get("price")),
        stop_price=trigger, status=str(o.get("status") or "open"), filled=float(o.get("filled") or 0.0),
        average=_f(o.get("average")), ts=_ts(o.get("timestamp")), fee=_f(fee.get("cost")),
        reduce_only=bool(o.get("reduceOnly")), raw=o,
    )


class CcxtExchange:
    """The qlab `Exchange` over a ccxt async client; retries, error translation, metering and qlab types."""

    def __init__(self, client: Any, *, meter: Any = None, key_id: str = "public",
                 retry: Mapping[str, Any] | None = None) -> None:
        self.client = client
        self.id: str = str(client.id)
        self.meter = meter
        # a UsageMeter meters at the HTTP level (every request, load_markets pages included); anything else per method
        self._http_metered = meter is not None and hasattr(meter, "attach")
        if self._http_metered:
            meter.attach(client)
        self.key_id = key_id
        self._retry = dict(retry or {})
        self._markets: dict[str, Market] | None = None
        self._capabilities: Capabilities | None = None
        # Bybit unified accounts want fetchOrder's "only the last 500 orders" caveat acknowledged; qlab accepts it
        fetch_order_options = client.options.get("fetchOrder")
        if not isinstance(fetch_order_options, dict):
            client.options["fetchOrder"] = fetch_order_options = {}
        fetch_order_options.setdefault("acknowledged", True)
        # Binance refuses open-order queries without a symbol unless told the (heavier) call is meant
        client.options.setdefault("warnOnFetchOpenOrdersWithoutSymbol", False)

    def __repr__(self) -> str:
        loaded = len(self._markets) if self._markets is not None else "not loaded"
        return f"CcxtExchange({self.id!r}, key_id={self.key_id!r}, markets={loaded})"

    # ------------------------------------------------------------------ plumbing
    @property
    def capabilities(self) -> Capabilities:
        """Methods from ccxt's `has`, market kinds from the loaded markets (or `has` before loading), modes."""
        if self._capabilities is None:
            try:
                modes = _modes_of(type(self.client)())
            except Exception:  # a client class that cannot be built bare: assume live only
                modes = ("live",)
            caps = Capabilities.from_ccxt(self.client, self.client.markets if self._markets is not None else None, modes)
            if self._markets is None:
                return caps
            self._capabilities = caps
        return self._capabilities

    async def _call(self, name: str, *args: Any, fn: Callable[..., Awaitable[Any]] | None = None) -> Any:
        """One REST call of ccxt method `name`, metered per attempt and retried by call_with_retry."""
        target = fn or getattr(self.client, name)
        weight = endpoint_weight(self.client, name)
        meter = None if self._http_metered else self.meter
        client = self.client

        async def attempt(*a: Any) -> Any:
            if meter is not None:
                await meter.acquire(name, weight)
            status = "ok"
            try:
                return await target(*a)
            except ccxt.BaseError as exc:
                status = type(translate(exc, client, name)).__name__
                raise
            except BaseException as exc:
                status = type(exc).__name__
                raise
            finally:
                if meter is not None:
                    meter.record(name, weight, status, dict(getattr(client, "last_response_headers", None) or {}))

        return await call_with_retry(attempt, *args, retry_client=client, retry_what=name, **self._retry)

    def _account_query_params(self, symbol: str | None) -> list[dict[str, Any]]:
        """One params dict per call needed to cover every market type when no symbol is given."""
        if symbol is not None or self.id not in ACCOUNT_QUERY_TYPES:
            return [{}]
        kinds = self.capabilities.market_kinds
        wanted = [t for t in ACCOUNT_QUERY_TYPES[self.id] if t in kinds or (t == "swap" and "linear_swap" in kinds)]
        return [{"type": t} for t in wanted] or [{}]

    async def _market(self, symbol: str) -> Market:
        if self._markets is None:
            await self.load_markets()
        return self.market(symbol)

    # ------------------------------------------------------------------ market data
    async def load_markets(self, reload: bool = False) -> dict[str, Market]:
        """All markets by unified symbol, fetched once (again with `reload`)."""
        if self._markets is None or reload:
            raw = await self._call("load_markets", reload)
            self._markets = {s: to_market(m) for s, m in raw.items()}
            self._capabilities = None
        return dict(self._markets)

    def market(self, symbol: str) -> Market:
        """The loaded market of `symbol`; BadSymbolError with 'did you mean' when the exchange does not list it."""
        if self._markets is None:
            raise ConfigError(f"{self.id} markets are not loaded; call `await exchange.load_markets()` before market()")
        try:
            return self._markets[symbol]
        except KeyError:
            raise BadSymbolError(
                f"{self.id} does not list {symbol!r} (ccxt unified symbols: BTC/USDT spot, BTC/USDT:USDT linear "
                f"perpetual).{did_you_mean(symbol, self._markets)}"
            ) from None

    async def fetch_ohlcv(self, symbol: str, timeframe: str, since: pd.Timestamp | int | str | None = None,
                          limit: int | None = None) -> pd.DataFrame:
        """One page of candles (the exchange's page limit applies), oldest first, as a DataFrame."""
        self.capabilities.require("fetch_ohlcv")
        await self._market(symbol)
        timeframes = getattr(self.client, "timeframes", None) or {}
        if timeframes and timeframe not in timeframes:
            raise ConfigError(f"{self.id} has no timeframe {timeframe!r}; use one of {', '.join(timeframes)}."
                              + did_you_mean(timeframe, timeframes))
        rows = await self._call("fetch_ohlcv", self.client, symbol, timeframe, to_ms(since), limit,
                                fn=fetch_ohlcv_checked)
        return to_frame(rows)

    async def fetch_ticker(self, symbol: str) -> Ticker:
        """Best bid/ask and last price of `symbol`."""
        self.capabilities.require("fetch_ticker")
        await self._market(symbol)
        t = await self._call("fetch_ticker", symbol)
        ts = _ts(t.get("timestamp")) or pd.Timestamp.now(tz="UTC")
        return Ticker(symbol=t.get("symbol") or symbol, ts=ts, bid=_f(t.get("bid")), ask=_f(t.get("ask")),
                      last=_f(t.get("last")), volume_24h=_f(t.get("baseVolume")), raw=t)

    async def fetch_order_book(self, symbol: str, limit: int | None = None) -> OrderBook:
        """An L2 snapshot of `symbol`, best levels first."""
        self.capabilities.require("fetch_order_book")
        await self._market(symbol)
        b = await self._call("fetch_order_book", symbol, limit)
        ts = _ts(b.get("timestamp")) or pd.Timestamp.now(tz="UTC")
        return OrderBook(symbol=b.get("symbol") or symbol, ts=ts,
                         bids=tuple((float(p), float(a)) for p, a, *_ in b.get("bids") or []),
                         asks=tuple((float(p), float(a)) for p, a, *_ in b.get("asks") or []), raw=b)

    async def fetch_trades(self, symbol: str, since: pd.Timestamp | int | str | None = None,
                           limit: int | None = None) -> list[Trade]:
        """Recent public trades of `symbol`, oldest first."""
        self.capabilities.require("fetch_trades")
        await self._market(symbol)
        rows = await self._call("fetch_trades", symbol, to_ms(since), limit)
        return [to_trade(t) for t in rows]

    async def fetch_funding_rate_history(self, symbol: str, since: pd.Timestamp | int | str | None = None,
                                         limit: int | None = None) -> list[FundingRate]:
        """Funding-rate prints of a perpetual, oldest first; a spot symbol is a NotSupportedError."""
        self.capabilities.require("fetch_funding_rate_history")
        market = await self._market(symbol)
        if market.kind not in ("swap", "future"):
            raise NotSupportedError(f"{symbol} is a {market.kind} market on {self.id}; funding rates exist only for "
                                    f"perpetual swaps (e.g. {market.base}/{market.quote}:{market.quote})")
        rows = await self._call("fetch_funding_rate_history", symbol, to_ms(since), limit)
        return [FundingRate(symbol=r.get("symbol") or symbol, ts=_ts(r["timestamp"]), rate=float(r["fundingRate"]))
                for r in rows]

    # ------------------------------------------------------------------ account
    async def fetch_balance(self) -> Balance:
        """Free, used and total balance per currency (currencies the exchange reports)."""
        self.capabilities.require("fetch_balance")
        b = await self._call("fetch_balance")

        def column(name: str) -> dict[str, float]:
            return {c: float(v) for c, v in (b.get(name) or {}).items() if v is not None}

        return Balance(ts=_ts(b.get("timestamp")) or pd.Timestamp.now(tz="UTC"), free=column("free"),
                       used=column("used"), total=column("total"), raw=b)

    async def create_order(self, symbol: str, side: str, type: str, amount: float, price: float | None = None, *,
                           stop_price: float | None = None, client_id: str | None = None,
                           reduce_only: bool = False) -> Order:
        """Place an order; returns it as the exchange then reports it (fetched again when the answer is only an id)."""
        self.capabilities.require("create_order")
        market = await self._market(symbol)
        if side not in ORDER_SIDES:
            raise ConfigError(f"order side {side!r} is not one of {', '.join(ORDER_SIDES)}." + did_you_mean(side, ORDER_SIDES))
        if type not in ORDER_TYPES:
            raise ConfigError(f"order type {type!r} is not one of {', '.join(ORDER_TYPES)}." + did_you_mean(type, ORDER_TYPES))
        if not amount or amount <= 0:
            raise ConfigError(f"order amount must be > 0 (in {market.base}), got {amount!r}")
        limit_like = type in ("limit", "stop_limit")
        if limit_like and (price is None or price <= 0):
            raise ConfigError(f"a {type} order needs a price > 0, got {price!r}")
        if type.startswith("stop_") and (stop_price is None or stop_price <= 0):
            raise ConfigError(f"a {type} order needs stop_price > 0, got {stop_price!r}")
        if reduce_only and market.kind == "spot":
            raise ConfigError(f"reduce_only applies to derivatives; {symbol} is a spot market")
        params: dict[str, Any] = {}
        if type.startswith("stop_"):
            params["triggerPrice"] = stop_price
            key, by_side, kinds = STOP_DIRECTION_PARAM.get(self.id, ("", {}, ()))
            if market.kind in kinds:
                params[key] = by_side[side]
        if client_id:
            params["clientOrderId"] = client_id
        if reduce_only:
            params["reduceOnly"] = True
        raw = await self._call("create_order", symbol, "limit" if limit_like else "market", side, amount,
                               price if limit_like else None, params)
        if raw.get("status") is not None and raw.get("amount") is not None:
            return to_order(raw, symbol)
        try:  # the exchange answered only ids (Bybit v5): ask for the order itself
            return await self.fetch_order(str(raw["id"]), symbol)
        except OrderNotFoundError:
            return to_order({**raw, "symbol": symbol, "side": side, "type": type.removeprefix("stop_"), "amount": amount,
                             "price": price, "triggerPrice": stop_price, "status": "open", "reduceOnly": reduce_only},
                            symbol)

    async def cancel_order(self, order_id: str, symbol: str) -> Order:
        """Cancel an open order; returns the order as the exchange reports it after the cancel."""
        self.capabilities.require("cancel_order")
        await self._market(symbol)
        raw = await self._call("cancel_order", order_id, symbol)
        if raw.get("status") is not None and raw.get("amount") is not None:
            return to_order(raw, symbol)
        return await self.fetch_order(str(raw.get("id") or order_id), symbol)

    async def fetch_order(self, order_id: str, symbol: str) -> Order:
        """One order by id (open or recently closed)."""
        self.capabilities.require("fetch_order")
        await self._market(symbol)
        return to_order(await self._call("fetch_order", order_id, symbol), symbol)

    async def fetch_order_by_client_id(self, client_id: str, symbol: str) -> Order | None:
        """The order placed with client order id `client_id` (open or recently finished), or None when the exchange
        knows no such order: what a restarted trader asks before re-sending an order it may have sent already."""
        self.capabilities.require("fetch_order")
        await self._market(symbol)
        if not client_id:
            raise ConfigError("fetch_order_by_client_id needs a non-empty client id (the one given to create_order)")
        how, param = CLIENT_ID_LOOKUP.get(self.id, DEFAULT_CLIENT_ID_LOOKUP)
        if how == "lists":
            for method in ("fetch_open_orders", "fetch_closed_orders"):
                rows = await self._call(method, symbol, None, None, {param: client_id})
                found = [o for o in rows if o.get("clientOrderId") == client_id]
                if found:
                    return to_order(found[-1], symbol)
            return None
        try:
            raw = await self._call("fetch_order", "", symbol, {param: client_id})
        except OrderNotFoundError:
            return None
        return to_order(raw, symbol)

    async def fetch_open_orders(self, symbol: str | None = None) -> list[Order]:
        """Open orders of `symbol`, or of every market when None."""
        self.capabilities.require("fetch_open_orders")
        if symbol is not None:
            await self._market(symbol)
        rows: list[Any] = []
        for params in self._account_query_params(symbol):
            rows += await self._call("fetch_open_orders", symbol, None, None, params)
        return [to_order(o) for o in rows]

    async def fetch_my_trades(self, symbol: str | None = None, since: pd.Timestamp | int | str | None = None,
                              limit: int | None = None) -> list[Trade]:
        """The account's fills (of `symbol`, or all), oldest first."""
        self.capabilities.require("fetch_my_trades")
        if symbol is not None:
            await self._market(symbol)
        rows = []
        for params in self._account_query_params(symbol):
            rows += await self._call("fetch_my_trades", symbol, to_ms(since), limit, params)
        return sorted((to_trade(t) for t in rows), key=lambda t: (t.ts, t.id or ""))

    # ------------------------------------------------------------------ lifecycle
    async def close(self) -> None:
        """Close the ccxt client's HTTP session (and flush the meter's usage rows)."""
        if self._http_metered:
            self.meter.detach(self.client)
            self.meter.flush()
        await self.client.close()

    async def __aenter__(self) -> CcxtExchange:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def key_id_of(credentials: Mapping[str, str | None] | None) -> str:
    """A stable, non-secret id for an API key ('key-' + 8 hex of its SHA-256), or 'public' without one."""
    api_key = (credentials or {}).get("apiKey")
    return "key-" + hashlib.sha256(api_key.encode()).hexdigest()[:8] if api_key else "public"


def open_exchange(exchange_id: str, mode: str = "live", credentials: Mapping[str, str | None] | None = None, *,
                  meter: Any = None, key_id: str | None = None, retry: Mapping[str, Any] | None = None) -> CcxtExchange:
    """A CcxtExchange for a ccxt id ('bybit', 'binance', 'kucoin') in mode demo / testnet / live.

    An unknown exchange or mode is a ConfigError with 'did you mean'; close it with `await ex.close()` or `async with`.
    """
    client = make_client(exchange_id, credentials or {}, mode)
    return CcxtExchange(client, meter=meter, key_id=key_id or key_id_of(credentials), retry=retry)

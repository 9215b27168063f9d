"""Bybit v5 private REST for the loopback fake exchange: HMAC-checked accounts and a small matching engine.

Mixed into `qlab.exchange.fake.FakeExchange`. Requests are authenticated as Bybit does (X-BAPI-SIGN = HMAC-SHA256 of
timestamp + key + recv window + query or body); errors use Bybit's real retCodes so ccxt raises its real exceptions:
10003 bad key, 10004 bad signature, 10005 no permission, 170131 / 110007 insufficient balance (spot / derivatives),
170136 / 10001 quantity below the minimum, 110017 reduce-only violated, 170213 / 110001 order not found.

Fills: market orders at once at the current price +- `half_spread` (a fraction); limit orders rest and fill at their
price when `set_price` crosses them (marketable ones fill at once as taker); stop orders trigger when the price reaches
`triggerPrice` and then act as market / limit orders. Fees come from the fixture markets' maker / taker rates
(spot: buys pay in base, sells in quote; linear: in USDT). Linear perpetuals use 10x margin and one net position.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from qlab.errors import ConfigError, NotFoundError, did_you_mean

LEVERAGE = 10.0


@dataclass
class FakeAccount:
    """One API key of the fake: its secret, wallet balances, net linear positions {symbol: (qty, entry)}."""

    key: str
    secret: str = field(repr=False)
    balances: dict[str, float] = field(default_factory=dict)
    positions: dict[str, tuple[float, float]] = field(default_factory=dict)
    read_only: bool = False


@dataclass
class FakeOrder:
    """An order held by the fake, in Bybit's terms (side Buy/Sell, orderType Market/Limit, orderStatus ...)."""

    id: str
    link_id: str
    key: str
    symbol: str
    category: str
    side: str
    order_type: str
    qty: float
    price: float | None
    trigger_price: float | None = None
    trigger_direction: int = 0  # 1: fires when the price rises to the trigger, 2: when it falls to it
    reduce_only: bool = False
    status: str = "New"
    filled: float = 0.0
    value: float = 0.0
    fee: float = 0.0
    fee_coin: str = ""
    created: int = 0
    updated: int = 0
    venue: str = "bybit"  # "binance": placed through the Binance spot routes (fake_binance_private.py)


@dataclass(frozen=True)
class FakeFill:
    """One execution of the fake's matching engine."""

    id: str
    order_id: str
    key: str
    symbol: str
    category: str
    side: str
    price: float
    qty: float
    fee: float
    fee_rate: float
    maker: bool
    time: int
    venue: str = "bybit"


OPEN_STATUSES = ("New", "Untriggered", "PartiallyFilled")  # Bybit's working orders


def _ms() -> int:
    return int(time.time() * 1000)


def _s(x: float | None) -> str:
    return "" if x is None else format(float(x), ".12g")


class BybitPrivateMixin:
    """Accounts, prices, orders and fills of the fake exchange, and the Bybit v5 private routes over them."""

    markets: dict[str, dict[str, Any]]
    binance_markets: dict[str, dict[str, Any]]
    _by_id: dict[tuple[str, str], str]
    _candles: dict[tuple[str, str], Any]

    def _init_private(self, api_key: str | None, api_secret: str | None, half_spread: float) -> None:
        self.accounts: dict[str, FakeAccount] = {}
        self.prices: dict[str, float] = {}
        self.half_spread = half_spread
        self.liquidity: dict[str, float] = {}  # symbol -> quantity the book offers per price event (absent: unlimited)
        self._left: dict[str, float] = {}  # what is left of it in the current event
        self.orders: list[FakeOrder] = []
        self.fills: list[FakeFill] = []
        self._ids = itertools.count(1)
        if api_key is not None:
            if not api_secret:
                raise ConfigError("FakeExchange(api_key=...) needs api_secret= too")
            self.add_account(api_key, api_secret)

    def _add_private_routes(self, app: web.Application) -> None:
        app.router.add_get("/v5/user/query-api", self._query_api)
        app.router.add_get("/v5/account/info", self._account_info)
        app.router.add_get("/v5/account/wallet-balance", self._wallet_balance)
        app.router.add_get("/v5/account/fee-rate", self._fee_rate)
        app.router.add_get("/v5/asset/coin/query-info", self._coin_info)
        app.router.add_post("/v5/order/create", self._order_create)
        app.router.add_post("/v5/order/cancel", self._order_cancel)
        app.router.add_get("/v5/order/realtime", self._order_realtime)
        app.router.add_get("/v5/order/history", self._order_history)
        app.router.add_get("/v5/execution/list", self._execution_list)
        app.router.add_get("/v5/position/list", self._position_list)

    # ------------------------------------------------------------------ set-up API for tests
    def add_account(self, key: str, secret: str, balances: dict[str, float] | None = None, *,
                    read_only: bool = False) -> FakeAccount:
        """Register an API key; `balances` default to {'USDT': 10000}. A read-only key may not trade (10005)."""
        account = FakeAccount(key, secret, dict({"USDT": 10000.0} if balances is None else balances), read_only=read_only)
        self.accounts[key] = account
        return account

    def price(self, symbol: str) -> float:
        """The current price of `symbol`: the last `set_price`, else the close of its last served candle."""
        if symbol in self.prices:
            return self.prices[symbol]
        served = [v for (s, _), v in self._candles.items() if s == symbol]
        if served:
            ts, values = max(served, key=lambda tv: tv[0][-1] if len(tv[0]) else -1)
            if len(ts):
                return float(values[-1, 3])
        raise NotFoundError(f"the fake has no price for {symbol!r}; call fake.set_price({symbol!r}, PRICE) or add_candles()")

    def set_price(self, symbol: str, price: float) -> list[FakeFill]:
        """Move `symbol` to `price`: fires the stops it crosses and fills the limit orders it reaches; returns the fills."""
        self._known(symbol)
        self.prices[symbol] = float(price)
        before = len(self.fills)
        self._left.pop(symbol, None)  # a new price event: the book's liquidity is there again
        for order in [o for o in self.orders if o.symbol == symbol and o.status in OPEN_STATUSES]:
            self._match(order)
        return self.fills[before:]

    def set_liquidity(self, symbol: str, qty: float | None) -> None:
        """Offer at most `qty` of `symbol` per price event (each `set_price`, each new order), shared by the orders it
        fills oldest first: larger orders fill partially. A resting limit keeps its rest (PartiallyFilled); a market
        order's rest is cancelled, like an IOC (Bybit PartiallyFilledCanceled, Binance EXPIRED). None: unlimited."""
        self._known(symbol)
        if qty is not None and not qty > 0:
            raise ConfigError(f"liquidity {qty!r} for {symbol} must be a quantity > 0, or None for unlimited")
        if qty is None:
            self.liquidity.pop(symbol, None)
        else:
            self.liquidity[symbol] = float(qty)
        self._left.pop(symbol, None)

    def _known(self, symbol: str) -> None:
        if symbol not in self.markets and symbol not in self.binance_markets:
            known = set(self.markets) | set(self.binance_markets)
            raise NotFoundError(f"symbol {symbol!r} is not in the fake's markets.{did_you_mean(symbol, known)}")

    # ------------------------------------------------------------------ engine
    def _market_meta(self, symbol: str, venue: str = "bybit") -> dict[str, Any]:
        """The fixture market (base, quote, settle, fee rates) of `symbol` on the venue an order was placed through."""
        return self.binance_markets[symbol] if venue == "binance" else self.markets[symbol]

    def _fee_rate_of(self, symbol: str, maker: bool, venue: str = "bybit") -> float:
        m = self._market_meta(symbol, venue)
        return float(m.get("maker" if maker else "taker") or (0.001 if m.get("spot") else 0.00055))

    def _spot_locked(self, account: FakeAccount) -> dict[str, float]:
        locked: dict[str, float] = {}
        for o in self.orders:
            if o.key == account.key and o.category == "spot" and o.status in OPEN_STATUSES:
                m = self._market_meta(o.symbol, o.venue)
                left = o.qty - o.filled
                if o.side == "Buy":
                    px = o.price if o.order_type == "Limit" else (o.trigger_price or 0) * (1 + self.half_spread)
                    locked[m["quote"]] = locked.get(m["quote"], 0.0) + left * (px or 0.0)
                else:
                    locked[m["base"]] = locked.get(m["base"], 0.0) + left
        return locked

    def _order_im(self, account: FakeAccount) -> float:
        return sum((o.qty - o.filled) * (o.price or o.trigger_price or 0.0) / LEVERAGE for o in self.orders
                   if o.key == account.key and o.category == "linear" and o.status in OPEN_STATUSES
                   and not o.reduce_only)

    def _position_im(self, account: FakeAccount) -> float:
        return sum(abs(q) * entry / LEVERAGE for q, entry in account.positions.values())

    def _unrealised(self, account: FakeAccount) -> float:
        return sum(q * (self.price(s) - entry) for s, (q, entry) in account.positions.items() if q)

    def _check_funds(self, account: FakeAccount, order: FakeOrder, px: float) -> tuple[int, str] | None:
        """Bybit's retCode and message when the account cannot afford `order` at `px`, else None."""
        m = self._market_meta(order.symbol, order.venue)
        if order.category == "spot":
            locked = self._spot_locked(account)
            if order.side == "Buy":
                need, coin = order.qty * px, m["quote"]
            else:
                need, coin = order.qty, m["base"]
            if account.balances.get(coin, 0.0) - locked.get(coin, 0.0) < need - 1e-12:
                return 170131, "Insufficient balance."
            return None
        if order.reduce_only:
            qty, _ = account.positions.get(order.symbol, (0.0, 0.0))
            if qty == 0 or (qty > 0) == (order.side == "Buy"):
                return 110017, "Reduce-only rule not satisfied"
            return None
        available = account.balances.get(m["settle"], 0.0) - self._order_im(account) - self._position_im(account)
        available += min(self._unrealised(account), 0.0)
        need = order.qty * px / LEVERAGE + order.qty * px * self._fee_rate_of(order.symbol, False)
        return (110007, "ab not enough for new order") if available < need - 1e-9 else None

    def _fill(self, order: FakeOrder, px: float, maker: bool) -> None:
        account = self.accounts[order.key]
        m = self._market_meta(order.symbol, order.venue)
        wanted = order.qty - order.filled
        qty, cap = wanted, self.liquidity.get(order.symbol)
        if cap is not None:
            left = self._left.setdefault(order.symbol, cap)
            qty = min(wanted, left)
            self._left[order.symbol] = left - qty
        partial = qty < wanted - 1e-12
        if qty <= 1e-12:  # nothing left in this event: a market order is cancelled, a limit waits for the next one
            if order.order_type == "Market":
                order.status, order.updated = ("PartiallyFilledCanceled" if order.filled else "Cancelled"), _ms()
            return
        rate = self._fee_rate_of(order.symbol, maker, order.venue)
        sign = 1.0 if order.side == "Buy" else -1.0
        bal = account.balances
        if order.category == "spot":
            base, quote = m["base"], m["quote"]
            if order.side == "Buy":  # Bybit and Binance spot: buys pay the fee in the coin received
                fee, order.fee_coin = qty * rate, base
                bal[quote] = bal.get(quote, 0.0) - qty * px
                bal[base] = bal.get(base, 0.0) + qty - fee
            else:
                fee, order.fee_coin = qty * px * rate, quote
                bal[base] = bal.get(base, 0.0) - qty
                bal[quote] = bal.get(quote, 0.0) + qty * px - fee
        else:
            settle = m["settle"]
            fee, order.fee_coin = qty * px * rate, settle
            held, entry = account.positions.get(order.symbol, (0.0, 0.0))
            delta = sign * qty
            if held == 0 or (held > 0) == (delta > 0):  # opening or adding: average the entry
                new = held + delta
                entry = (abs(held) * entry + qty * px) / abs(new)
            else:  # reducing (maybe flipping): realise the closed part
                closed = min(abs(held), qty)
                bal[settle] = bal.get(settle, 0.0) + closed * (px - entry) * (1.0 if held > 0 else -1.0)
                new = held + delta
                if abs(new) > 1e-12 and (new > 0) != (held > 0):
                    entry = px
            account.positions[order.symbol] = (0.0, 0.0) if abs(new) < 1e-12 else (new, entry)
            bal[settle] = bal.get(settle, 0.0) - fee
        now = _ms()
        order.filled, order.value, order.fee = order.filled + qty, order.value + qty * px, order.fee + fee
        if not partial:
            order.status = "Filled"
        else:  # the rest of a market order is cancelled (IOC); a limit order's rest keeps working
            order.status = "PartiallyFilledCanceled" if order.order_type == "Market" else "PartiallyFilled"
        order.updated = now
        self.fills.append(FakeFill(str(uuid.uuid4()), order.id, order.key, order.symbol, order.category, order.side,
                                   px, qty, fee, rate, maker, now, order.venue))

    def _accept(self, order: FakeOrder) -> None:
        """A new order meets the book: a fresh price event (full liquidity) in which it is matched first."""
        self.orders.append(order)
        self._left.pop(order.symbol, None)
        self._match(order, incoming=True)

    def _match(self, order: FakeOrder, incoming: bool = False) -> None:
        """Trigger and fill `order` as far as the current price allows.

        An `incoming` (just placed or just triggered) marketable limit takes liquidity at the better of its price and
        the touch; a resting limit reached by a later price fills at its own price as maker."""
        price = self.price(order.symbol)
        if order.status == "Untriggered":
            rose, fell = price >= (order.trigger_price or 0), price <= (order.trigger_price or 0)
            if not ((order.trigger_direction == 1 and rose) or (order.trigger_direction == 2 and fell)):
                return
            order.status, order.updated, incoming = "New", _ms(), True
        ask, bid = price * (1 + self.half_spread), price * (1 - self.half_spread)
        if order.order_type == "Market":
            self._fill(order, ask if order.side == "Buy" else bid, maker=False)
        elif order.side == "Buy" and order.price is not None and ask <= order.price:
            self._fill(order, min(order.price, ask) if incoming else order.price, maker=not incoming)
        elif order.side == "Sell" and order.price is not None and bid >= order.price:
            self._fill(order, max(order.price, bid) if incoming else order.price, maker=not incoming)

    # ------------------------------------------------------------------ auth and envelopes
    @staticmethod
    def _ok(result: Any) -> web.Response:
        return web.json_response({"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": _ms()})

    @staticmethod
    def _err(code: int, msg: str) -> web.Response:
        return web.json_response({"retCode": code, "retMsg": msg, "result": {}, "retExtInfo": {}, "time": _ms()})

    async def _auth(self, request: web.Request) -> FakeAccount | web.Response:
        """The account whose key signed `request`, or Bybit's auth-error response."""
        h = request.headers
        key, ts, window, sign = (h.get("X-BAPI-API-KEY"), h.get("X-BAPI-TIMESTAMP"), h.get("X-BAPI-RECV-WINDOW", ""),
                                 h.get("X-BAPI-SIGN", ""))
        account = self.accounts.get(key or "")
        if account is None or not ts:
            return self._err(10003, "API key is invalid.")
        payload = await request.text() if request.method == "POST" else request.rel_url.raw_query_string
        candidates = {payload, urllib.parse.unquote(payload)}
        expected = [hmac.new(account.secret.encode(), (ts + account.key + window + p).encode(), hashlib.sha256).hexdigest()
                    for p in candidates]
        if not any(hmac.compare_digest(e, sign) for e in expected):
            return self._err(10004, "Error sign, please check your signature generation algorithm.")
        return account

    def _market_of(self, category: str, exchange_id: str) -> str | None:
        return self._by_id.get((category, exchange_id))

    # ------------------------------------------------------------------ account routes
    async def _query_api(self, request: web.Request) -> web.Response:
        account = await self._auth(request)
        if isinstance(account, web.Response):
            return account
        perms = {"Spot": [] if account.read_only else ["SpotTrade"], "ContractTrade": [] if account.read_only else
                 ["Order", "Position"], "Wallet": ["AccountTransfer"], "Derivatives": [], "Options": []}
        return self._ok({"id": "1", "note": "qlab fake", "apiKey": account.key, "readOnly": int(account.read_only),
                         "secret": "", "permissions": perms, "ips": ["*"], "type": 1, "unified": 0, "uta": 1,
                         "userID": 1, "isMaster": True})

    async def _account_info(self, request: web.Request) -> web.Response:
        account = await self._auth(request)
        if isinstance(account, web.Response):
            return account
        return self._ok({"marginMode": "REGULAR_MARGIN", "updatedTime": str(_ms()), "unifiedMarginStatus": 5,
                         "dcpStatus": "OFF", "timeWindow": 10, "smpGroup": 0, "isMasterTrader": False,
                         "spotHedgingStatus": "OFF"})

    async def _coin_info(self, request: web.Request) -> web.Response:
        account = await self._auth(request)
        if isinstance(account, web.Response):
            return account
        coins = sorted({c for m in self.markets.values() for c in (m.get("base"), m.get("quote")) if c})
        return self._ok({"rows": [{"name": c, "coin": c, "remainAmount": "", "chains": []} for c in coins]})

    async def _fee_rate(self, request: web.Request) -> web.Response:
        account = await self._auth(request)
        if isinstance(account, web.Response):
            return account
        category = request.query.get("category", "spot")
        rows = [{"symbol": m["id"], "baseCoin": m["base"], "takerFeeRate": _s(m.get("taker")), "makerFeeRate": _s(m.get("maker"))}
                for m in self.markets.values() if self._category(m) == category]  # type: ignore[attr-defined]
        return self._ok({"list": rows})

    async def _wallet_balance(self, request: web.Request) -> web.Response:
        account = await self._auth(request)
        if isinstance(account, web.Response):
            return account
        if request.query.get("accountType") not in ("UNIFIED", None):
            return self._err(10001, "accountType only support UNIFIED.")
        locked, order_im, pos_im, upl = self._spot_locked(account), self._order_im(account), self._position_im(account), 0.0
        upl = self._unrealised(account) if account.positions else 0.0
        coins = []
        for coin, wallet in sorted(account.balances.items()):
            is_usdt = coin == "USDT"
            coins.append({
                "coin": coin, "walletBalance": _s(wallet), "equity": _s(wallet + (upl if is_usdt else 0.0)),
                "locked": _s(locked.get(coin, 0.0)), "totalOrderIM": _s(order_im if is_usdt else 0.0),
                "totalPositionIM": _s(pos_im if is_usdt else 0.0), "totalPositionMM": "0",
                "unrealisedPnl": _s(upl if is_usdt else 0.0), "availableToWithdraw": "", "availableToBorrow": "",
                "borrowAmount": "0", "accruedInterest": "0", "bonus": "0", "usdValue": "", "cumRealisedPnl": "0",
                "collateralSwitch": True, "marginCollateral": True, "spotHedgingQty": "0",
            })
        return self._ok({"list": [{"accountType": "UNIFIED", "totalEquity": "", "totalWalletBalance": "",
                                   "totalAvailableBalance": "", "accountIMRate": "0", "accountMMRate": "0", "coin": coins}]})

    # ------------------------------------------------------------------ orders
    def _order_json(self, o: FakeOrder) -> dict[str, Any]:
        avg = o.value / o.filled if o.filled else None
        return {
            "symbol": self.markets[o.symbol]["id"], "orderType": o.order_type, "orderLinkId": o.link_id, "orderId": o.id,
            "cancelType": "UNKNOWN", "avgPrice": _s(avg), "stopOrderType": "Stop" if o.trigger_price else "",
            "orderStatus": o.status, "createType": "CreateByUser", "takeProfit": "", "cumExecValue": _s(o.value),
            "triggerDirection": o.trigger_direction, "rejectReason": "EC_NoError",
            "price": _s(o.price) if o.price is not None else "0", "createdTime": str(o.created), "positionIdx": 0,
            "timeInForce": "GTC" if o.order_type == "Limit" else "IOC", "leavesValue": _s((o.qty - o.filled) * (o.price or 0)),
            "updatedTime": str(o.updated), "side": o.side, "triggerPrice": _s(o.trigger_price), "cumExecFee": _s(o.fee),
            "leavesQty": _s(o.qty - o.filled if o.status in OPEN_STATUSES else 0.0),
            "closeOnTrigger": False, "cumExecQty": _s(o.filled), "reduceOnly": o.reduce_only, "qty": _s(o.qty),
            "stopLoss": "", "marketUnit": "", "triggerBy": "LastPrice" if o.trigger_price else "", "isLeverage": "",
            "cumFeeDetail": {o.fee_coin: _s(o.fee)} if o.fee_coin else {}, "smpType": "None",
            "orderFilter": "StopOrder" if o.trigger_price else "Order",
            "category": o.category, **({"tpslMode": ""} if o.category != "spot" else {}),
        }

    async def _order_create(self, request: web.Request) -> web.Response:
        account = await self._auth(request)
        if isinstance(account, web.Response):
            return account
        if account.read_only:
            return self._err(10005, "Permission denied, please check your API key permissions.")
        try:
            body = json.loads(await request.text())
            category, side, kind = body["category"], body["side"], body["orderType"]
            qty = float(body["qty"])
            price = float(body["price"]) if body.get("price") not in (None, "") else None
            trigger = float(body["triggerPrice"]) if body.get("triggerPrice") not in (None, "") else None
        except (ValueError, KeyError, TypeError):
            return self._err(10001, "params error: category, symbol, side, orderType and qty are required")
        symbol = self._market_of(category, str(body.get("symbol")))
        if symbol is None or side not in ("Buy", "Sell") or kind not in ("Market", "Limit") or category not in ("spot", "linear"):
            return self._err(10001, "params error: symbol invalid")
        if kind == "Limit" and not price:
            return self._err(10001, "params error: price is required for Limit orders")
        lot = self.markets[symbol]["info"].get("lotSizeFilter", {})
        if kind == "Market" and category == "spot" and side == "Buy" and body.get("marketUnit") != "baseCoin":
            qty = qty / self.price(symbol)  # a spot market buy sized in quote coin
        if qty < float(lot.get("minOrderQty", 0)) - 1e-12:
            if category == "spot":
                return self._err(170136, "Order quantity lower than the minimum.")
            return self._err(10001, "The number of contracts exceeds minimum limit allowed")
        now = _ms()
        direction = int(body.get("triggerDirection") or 0)
        if trigger is not None and direction not in (1, 2):
            direction = 1 if trigger >= self.price(symbol) else 2
        order = FakeOrder(
            id=str(uuid.uuid4()) if category == "linear" else str(1_900_000_000_000_000_000 + next(self._ids)),
            link_id=str(body.get("orderLinkId") or f"fake-{next(self._ids)}"), key=account.key, symbol=symbol,
            category=category, side=side, order_type=kind, qty=qty, price=price, trigger_price=trigger,
            trigger_direction=direction if trigger is not None else 0, reduce_only=bool(body.get("reduceOnly")),
            status="Untriggered" if trigger is not None else "New", created=now, updated=now,
        )
        px = price if kind == "Limit" else self.price(symbol) * (1 + self.half_spread * (1 if side == "Buy" else -1))
        refusal = self._check_funds(account, order, trigger if kind == "Market" and trigger else px)
        if refusal is not None:
            return self._err(*refusal)
        self._accept(order)
        return self._ok({"orderId": order.id, "orderLinkId": order.link_id})

    def _find(self, account: FakeAccount, body: dict[str, Any]) -> FakeOrder | None:
        oid, link = body.get("orderId"), body.get("orderLinkId")
        return next((o for o in self.orders if o.key == account.key and o.venue == "bybit"
                     and ((oid and o.id == oid) or (link and o.link_id == link))), None)

    async def _order_cancel(self, request: web.Request) -> web.Response:
        account = await self._auth(request)
        if isinstance(account, web.Response):
            return account
        body = json.loads(await request.text() or "{}")
        order = self._find(account, body)
        if order is None or order.status not in OPEN_STATUSES:
            return self._err(170213, "Order does not exist.") if body.get("category") == "spot" else \
                self._err(110001, "Order does not exist.")
        order.status, order.updated = ("Deactivated" if order.status == "Untriggered" else "Cancelled"), _ms()
        return self._ok({"orderId": order.id, "orderLinkId": order.link_id})

    def _listed(self, account: FakeAccount, q: Any, open_only: bool) -> list[FakeOrder]:
        category, symbol_id = q.get("category", "linear"), q.get("symbol")
        rows = [o for o in self.orders if o.key == account.key and o.category == category and o.venue == "bybit"
                and (symbol_id is None or self.markets[o.symbol]["id"] == symbol_id)]
        if q.get("orderId") or q.get("orderLinkId"):
            found = self._find(account, dict(q))
            return [found] if found in rows else []
        rows = [o for o in rows if (o.status in OPEN_STATUSES) == open_only]
        return sorted(rows, key=lambda o: o.created, reverse=True)[: int(q.get("limit", 50))]

    async def _order_realtime(self, request: web.Request) -> web.Response:
        account = await self._auth(request)
        if isinstance(account, web.Response):
            return account
        q = request.query
        return self._ok({"category": q.get("category", "linear"), "nextPageCursor": "",
                         "list": [self._order_json(o) for o in self._listed(account, q, open_only=True)]})

    async def _order_history(self, request: web.Request) -> web.Response:
        account = await self._auth(request)
        if isinstance(account, web.Response):
            return account
        q = request.query
        return self._ok({"category": q.get("category", "linear"), "nextPageCursor": "",
                         "list": [self._order_json(o) for o in self._listed(account, q, open_only=False)]})

    async def _execution_list(self, request: web.Request) -> web.Response:
        account = await self._auth(request)
        if isinstance(account, web.Response):
            return account
        q = request.query
        category, symbol_id = q.get("category", "linear"), q.get("symbol")
        start = int(q.get("startTime", 0))
        orders = {o.id: o for o in self.orders}
        rows = [f for f in self.fills if f.key == account.key and f.category == category and f.venue == "bybit" and f.time >= start
                and (symbol_id is None or self.markets[f.symbol]["id"] == symbol_id)]
        rows = sorted(rows, key=lambda f: f.time, reverse=True)[: int(q.get("limit", 50))]
        out = [{
            "symbol": self.markets[f.symbol]["id"], "orderType": orders[f.order_id].order_type,
            "orderLinkId": orders[f.order_id].link_id, "orderId": f.order_id, "stopOrderType": "", "execTime": str(f.time),
            "feeRate": _s(f.fee_rate), "execPrice": _s(f.price), "orderQty": _s(orders[f.order_id].qty),
            "orderPrice": _s(orders[f.order_id].price or 0), "execValue": _s(f.price * f.qty), "closedSize": "",
            "execType": "Trade", "side": f.side, "leavesQty": "0", "isMaker": f.maker, "execFee": _s(f.fee),
            "execId": f.id, "execQty": _s(f.qty), "markPrice": "", "indexPrice": "", "seq": 1, "blockTradeId": "",
            "category": f.category,
        } for f in rows]
        return self._ok({"category": category, "nextPageCursor": "", "list": out})

    async def _position_list(self, request: web.Request) -> web.Response:
        account = await self._auth(request)
        if isinstance(account, web.Response):
            return account
        q = request.query
        rows = []
        for symbol, (qty, entry) in account.positions.items():
            if q.get("symbol") and self.markets[symbol]["id"] != q["symbol"]:
                continue
            rows.append({"symbol": self.markets[symbol]["id"], "side": "Buy" if qty > 0 else ("Sell" if qty < 0 else ""),
                         "size": _s(abs(qty)), "avgPrice": _s(entry), "positionValue": _s(abs(qty) * entry),
                         "leverage": _s(LEVERAGE), "markPrice": _s(self.price(symbol)), "positionIdx": 0,
                         "unrealisedPnl": _s(qty * (self.price(symbol) - entry)), "tradeMode": 0,
                         "createdTime": str(_ms()), "updatedTime": str(_ms())})
        return self._ok({"category": q.get("category", "linear"), "list": rows, "nextPageCursor": ""})

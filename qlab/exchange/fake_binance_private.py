"""Binance spot private REST for the loopback fake exchange, over the matching engine of `fake_private`.

Mixed into `qlab.exchange.fake.FakeExchange`. Requests are authenticated as Binance does: the X-MBX-APIKEY header
names the key, `signature` is the hex HMAC-SHA256 (with the secret) of the query string followed by the body, without
the signature itself; `timestamp` must lie within `recvWindow` (default 5000 ms, at most 60000) of the server clock.
Errors carry Binance's real codes and messages, so ccxt raises its real exceptions: -2014 / -2015 missing / unknown
key, -1022 bad signature, -1021 stale timestamp, -1102 missing parameter, -1121 bad symbol, -1013 filter failures
(LOT_SIZE, PRICE_FILTER, NOTIONAL / MIN_NOTIONAL), -2010 insufficient balance (and duplicate client id, stop that
would trigger immediately), -2011 / -2013 unknown order.

Orders are `FakeOrder`s with venue "binance" (Bybit terms inside: Buy/Sell, Market/Limit, New/Untriggered/Filled);
MARKET, LIMIT, LIMIT_MAKER, STOP_LOSS(_LIMIT) and TAKE_PROFIT(_LIMIT) map onto the shared engine, so `set_price`,
balances and fees (the fixture market's maker / taker rate; buys pay in base, sells in quote) are common to both venues.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
import urllib.parse
from typing import Any

from aiohttp import web

from qlab.exchange.fake_private import FakeAccount, FakeOrder

DEFAULT_RECV_WINDOW = 5000
MAX_RECV_WINDOW = 60000
FIRST_ORDER_ID = 28_000_000_000
SIGNATURE_PARAM = re.compile(r"(^|&)signature=[^&]*")
# Binance spot type -> (engine order type, trigger: None, "stop" (loss side) or "take" (profit side))
BINANCE_TYPES = {
    "MARKET": ("Market", None), "LIMIT": ("Limit", None), "LIMIT_MAKER": ("Limit", None),
    "STOP_LOSS": ("Market", "stop"), "STOP_LOSS_LIMIT": ("Limit", "stop"),
    "TAKE_PROFIT": ("Market", "take"), "TAKE_PROFIT_LIMIT": ("Limit", "take"),
}
STATUS = {"New": "NEW", "Untriggered": "NEW", "PartiallyFilled": "PARTIALLY_FILLED", "Filled": "FILLED",
          "PartiallyFilledCanceled": "EXPIRED",  # a market order's unfilled rest (IOC) expires on Binance
          "Cancelled": "CANCELED", "Deactivated": "CANCELED"}
OPEN = ("New", "Untriggered", "PartiallyFilled")


def _ms() -> int:
    return int(time.time() * 1000)


def _q(x: float | None) -> str:
    """A number as Binance writes it: a string with 8 decimals."""
    return f"{float(x or 0.0):.8f}"


def _error(code: int, msg: str, status: int = 400) -> web.Response:
    return web.json_response({"code": code, "msg": msg}, status=status)


def _filters(market: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["filterType"]: f for f in (market.get("info") or {}).get("filters", [])}


def _off_step(value: float, start: float, step: float) -> bool:
    """True when `value` is not `start` plus a whole number of `step`s (Binance's LOT_SIZE / PRICE_FILTER rule)."""
    if step <= 0:
        return False
    n = (value - start) / step
    return abs(n - round(n)) > 1e-6


class BinancePrivateMixin:
    """The Binance spot private routes of the fake exchange: account, orders, fills, currencies."""

    accounts: dict[str, FakeAccount]
    orders: list[FakeOrder]
    fills: list[Any]
    binance_markets: dict[str, dict[str, Any]]
    _binance_by_id: dict[tuple[str, str], str]
    _ids: Any
    half_spread: float
    price: Any
    _accept: Any
    _check_funds: Any
    _spot_locked: Any
    _fee_rate_of: Any

    def _init_binance_private(self) -> None:
        self.binance_types: dict[str, str] = {}  # order id -> the Binance type it was placed as
        self._binance_order_ids = iter(range(FIRST_ORDER_ID, 10**15))
        self._binance_trade_ids = iter(range(1, 10**15))
        self._binance_trade_id_of: dict[str, int] = {}  # fill id -> Binance trade id

    def _add_binance_private_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v3/account", self._bn_account)
        app.router.add_post("/api/v3/order", self._bn_create)
        app.router.add_delete("/api/v3/order", self._bn_cancel)
        app.router.add_get("/api/v3/order", self._bn_get_order)
        app.router.add_get("/api/v3/openOrders", self._bn_open_orders)
        app.router.add_get("/api/v3/allOrders", self._bn_all_orders)
        app.router.add_get("/api/v3/myTrades", self._bn_my_trades)
        app.router.add_get("/sapi/v1/capital/config/getall", self._bn_currencies)
        app.router.add_get("/sapi/v1/margin/allPairs", self._bn_empty_list)
        app.router.add_get("/sapi/v1/margin/isolated/allPairs", self._bn_empty_list)

    # ------------------------------------------------------------------ auth
    async def _bn_auth(self, request: web.Request) -> tuple[FakeAccount, dict[str, str]] | web.Response:
        """The signing account and the request's parameters (query and form body), or Binance's error answer."""
        key = request.headers.get("X-MBX-APIKEY")
        if not key:
            return _error(-2014, "API-key format invalid.", 401)
        account = self.accounts.get(key)
        if account is None:
            return _error(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        query = request.rel_url.raw_query_string
        body = await request.text() if request.method in ("POST", "PUT") else ""
        params = {**dict(urllib.parse.parse_qsl(query)), **dict(urllib.parse.parse_qsl(body))}
        sign = params.pop("signature", "")
        total = SIGNATURE_PARAM.sub("", query).lstrip("&") + SIGNATURE_PARAM.sub("", body).lstrip("&")
        expected = hmac.new(account.secret.encode(), total.encode(), hashlib.sha256).hexdigest()
        if not sign or not hmac.compare_digest(expected, sign.lower()):
            return _error(-1022, "Signature for this request is not valid.")
        try:
            stamp = int(params["timestamp"])
            window = int(params.get("recvWindow", DEFAULT_RECV_WINDOW))
        except (KeyError, ValueError):
            return _error(-1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.")
        if window > MAX_RECV_WINDOW:
            return _error(-1131, "recvWindow must be less than 60000")
        now = _ms()
        if stamp > now + 1000 or now - stamp > window:
            return _error(-1021, "Timestamp for this request is outside of the recvWindow.")
        return account, params

    def _bn_symbol(self, params: dict[str, str]) -> str | None:
        return self._binance_by_id.get(("spot", params.get("symbol", "")))

    # ------------------------------------------------------------------ account
    async def _bn_account(self, request: web.Request) -> web.Response:
        auth = await self._bn_auth(request)
        if isinstance(auth, web.Response):
            return auth
        account, _ = auth
        locked = self._spot_locked(account)
        balances = [{"asset": c, "free": _q(v - locked.get(c, 0.0)), "locked": _q(locked.get(c, 0.0))}
                    for c, v in sorted(account.balances.items())]
        rates = {"maker": "0.00100000", "taker": "0.00100000", "buyer": "0.00000000", "seller": "0.00000000"}
        return web.json_response({
            "makerCommission": 10, "takerCommission": 10, "buyerCommission": 0, "sellerCommission": 0,
            "commissionRates": rates, "canTrade": not account.read_only, "canWithdraw": True, "canDeposit": True,
            "brokered": False, "requireSelfTradePrevention": False, "preventSor": False, "updateTime": _ms(),
            "accountType": "SPOT", "balances": balances, "permissions": ["SPOT"], "uid": 1,
        })

    async def _bn_currencies(self, request: web.Request) -> web.Response:
        auth = await self._bn_auth(request)
        if isinstance(auth, web.Response):
            return auth
        coins = sorted({c for m in self.binance_markets.values() if m.get("spot") for c in (m["base"], m["quote"])})
        network = {"network": "", "coin": "", "withdrawIntegerMultiple": "0.00000001", "isDefault": True, "depositEnable": True,
                   "withdrawEnable": True, "depositDesc": "", "withdrawDesc": "", "name": "", "resetAddressStatus": False,
                   "addressRegex": "", "memoRegex": "", "withdrawFee": "0", "withdrawMin": "0", "withdrawMax": "9999999999",
                   "minConfirm": 1, "unLockConfirm": 0, "sameAddress": False, "estimatedArrivalTime": 5, "busy": False}
        return web.json_response([{
            "coin": c, "depositAllEnable": True, "withdrawAllEnable": True, "name": c, "free": "0", "locked": "0",
            "freeze": "0", "withdrawing": "0", "ipoing": "0", "ipoable": "0", "storage": "0", "isLegalMoney": False,
            "trading": True, "networkList": [{**network, "network": c, "coin": c, "name": c}],
        } for c in coins])

    async def _bn_empty_list(self, request: web.Request) -> web.Response:
        auth = await self._bn_auth(request)
        return auth if isinstance(auth, web.Response) else web.json_response([])

    # ------------------------------------------------------------------ orders
    def _bn_order_json(self, o: FakeOrder, *, full: bool = False) -> dict[str, Any]:
        m = self.binance_markets[o.symbol]
        kind = self.binance_types.get(o.id, o.order_type.upper())
        out: dict[str, Any] = {
            "symbol": m["id"], "orderId": int(o.id), "orderListId": -1, "clientOrderId": o.link_id,
            "price": _q(o.price), "origQty": _q(o.qty), "executedQty": _q(o.filled), "cummulativeQuoteQty": _q(o.value),
            "status": STATUS[o.status], "timeInForce": "GTC", "type": kind,
            "side": o.side.upper(), "stopPrice": _q(o.trigger_price), "icebergQty": _q(0.0), "time": o.created,
            "updateTime": o.updated, "isWorking": o.status != "Untriggered", "workingTime": o.created if o.status != "Untriggered"
            else -1, "origQuoteOrderQty": _q(0.0), "selfTradePreventionMode": "EXPIRE_MAKER",
        }
        if full:  # the POST answer (newOrderRespType FULL): transactTime and the fills with their commissions
            out["transactTime"] = out.pop("time")
            for key in ("updateTime", "isWorking", "icebergQty"):
                out.pop(key)
            out["fills"] = [{"price": _q(f.price), "qty": _q(f.qty), "commission": _q(f.fee),
                             "commissionAsset": m["base"] if f.side == "Buy" else m["quote"],
                             "tradeId": self._bn_trade_id(f.id)} for f in self.fills if f.order_id == o.id]
        return out

    def _bn_trade_id(self, fill_id: str) -> int:
        if fill_id not in self._binance_trade_id_of:
            self._binance_trade_id_of[fill_id] = next(self._binance_trade_ids)
        return self._binance_trade_id_of[fill_id]

    def _bn_filter_failure(self, symbol: str, kind: str, qty: float, price: float | None) -> str | None:
        """The name of the first Binance filter the order breaks (LOT_SIZE, PRICE_FILTER, NOTIONAL...), else None."""
        filters = _filters(self.binance_markets[symbol])
        lot = filters.get("LOT_SIZE", {})
        lo, hi, step = float(lot.get("minQty", 0)), float(lot.get("maxQty", 1e18)), float(lot.get("stepSize", 0))
        if qty < lo - 1e-12 or qty > hi or _off_step(qty, lo, step):
            return "LOT_SIZE"
        if kind == "Market":
            mlot = filters.get("MARKET_LOT_SIZE", {})
            if float(mlot.get("maxQty", 0) or 0) > 0 and qty > float(mlot["maxQty"]):
                return "MARKET_LOT_SIZE"
        pf = filters.get("PRICE_FILTER", {})
        p_lo, p_hi, tick = float(pf.get("minPrice", 0)), float(pf.get("maxPrice", 0)) or 1e18, float(pf.get("tickSize", 0))
        if price is not None and (price < p_lo or price > p_hi or _off_step(price, p_lo, tick)):
            return "PRICE_FILTER"
        for name in ("NOTIONAL", "MIN_NOTIONAL"):
            f = filters.get(name)
            if f is None:
                continue
            market_order = kind == "Market"
            applies = f.get("applyMinToMarket", f.get("applyToMarket", True)) if market_order else True
            notional = qty * (self.price(symbol) if market_order or price is None else price)
            if applies and notional < float(f.get("minNotional", 0)) - 1e-9:
                return name
        return None

    async def _bn_create(self, request: web.Request) -> web.Response:
        auth = await self._bn_auth(request)
        if isinstance(auth, web.Response):
            return auth
        account, p = auth
        if account.read_only:
            return _error(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        symbol = self._bn_symbol(p)
        if symbol is None:
            return _error(-1121, "Invalid symbol.")
        side, kind_name = p.get("side", "").upper(), p.get("type", "").upper()
        if side not in ("BUY", "SELL"):
            return _error(-1102, "Mandatory parameter 'side' was not sent, was empty/null, or malformed.")
        if kind_name not in BINANCE_TYPES:
            return _error(-1116, "Invalid orderType.")
        if kind_name not in self.binance_markets[symbol]["info"].get("orderTypes", BINANCE_TYPES):
            return _error(-1013, "Order type not supported for this symbol.")  # e.g. STOP_LOSS on BTCUSDT
        kind, trigger_side = BINANCE_TYPES[kind_name]
        try:
            price = float(p["price"]) if kind == "Limit" else None
            stop = float(p["stopPrice"]) if trigger_side else None
            if kind == "Market" and side == "BUY" and "quantity" not in p:  # sized in quote: spend quoteOrderQty
                lot_step = float(_filters(self.binance_markets[symbol]).get("LOT_SIZE", {}).get("stepSize", 0)) or 1e-8
                raw = float(p["quoteOrderQty"]) / (self.price(symbol) * (1 + self.half_spread))
                qty = round(int(raw / lot_step + 1e-9) * lot_step, 12)
            else:
                qty = float(p["quantity"])
        except (KeyError, ValueError):
            need = "price" if kind == "Limit" else ("stopPrice" if trigger_side else "quantity")
            return _error(-1102, f"Mandatory parameter '{need}' was not sent, was empty/null, or malformed.")
        if kind == "Limit" and p.get("timeInForce", "GTC" if kind_name == "LIMIT_MAKER" else None) is None:
            return _error(-1102, "Mandatory parameter 'timeInForce' was not sent, was empty/null, or malformed.")
        failed = self._bn_filter_failure(symbol, kind, qty, price)
        if failed is not None:
            return _error(-1013, f"Filter failure: {failed}")
        link = p.get("newClientOrderId") or f"fake-{next(self._ids)}"
        if any(o.venue == "binance" and o.key == account.key and o.link_id == link and o.status in OPEN for o in self.orders):
            return _error(-2010, "Duplicate order sent.")
        now_price = self.price(symbol)
        direction = 0
        if stop is not None:  # a stop-loss sell (take-profit buy) fires on the way down; the other two on the way up
            direction = 2 if (trigger_side == "stop") == (side == "SELL") else 1
            if (direction == 2 and now_price <= stop) or (direction == 1 and now_price >= stop):
                return _error(-2010, "Stop price would trigger immediately.")
        ask, bid = now_price * (1 + self.half_spread), now_price * (1 - self.half_spread)
        if kind_name == "LIMIT_MAKER" and price is not None and ((side == "BUY" and price >= ask) or (side == "SELL" and price <= bid)):
            return _error(-2010, "Order would immediately match and take.")
        now = _ms()
        order = FakeOrder(
            id=str(next(self._binance_order_ids)), link_id=link, key=account.key, symbol=symbol, category="spot",
            side="Buy" if side == "BUY" else "Sell", order_type=kind, qty=qty, price=price, trigger_price=stop,
            trigger_direction=direction, status="Untriggered" if stop is not None else "New", created=now, updated=now,
            venue="binance",
        )
        px = price if kind == "Limit" else (stop if stop is not None else (ask if side == "BUY" else bid))
        if self._check_funds(account, order, px) is not None:
            return _error(-2010, "Account has insufficient balance for requested action.")
        self.binance_types[order.id] = kind_name
        self._accept(order)
        answer = self._bn_order_json(order, full=True)
        if p.get("newOrderRespType", "FULL") == "ACK":
            answer = {k: answer[k] for k in ("symbol", "orderId", "orderListId", "clientOrderId", "transactTime")}
        return web.json_response(answer)

    def _bn_find(self, account: FakeAccount, symbol: str, p: dict[str, str]) -> FakeOrder | None:
        oid, link = p.get("orderId"), p.get("origClientOrderId")
        mine = [o for o in self.orders if o.venue == "binance" and o.key == account.key and o.symbol == symbol]
        if oid:
            return next((o for o in mine if o.id == oid), None)
        # a client id may be reused once its order is finished: the newest order holding it answers, as on Binance
        return next((o for o in reversed(mine) if link and o.link_id == link), None)

    async def _bn_order_request(self, request: web.Request) -> tuple[FakeAccount, str, dict[str, str]] | web.Response:
        auth = await self._bn_auth(request)
        if isinstance(auth, web.Response):
            return auth
        account, p = auth
        symbol = self._bn_symbol(p)
        if symbol is None:
            return _error(-1121, "Invalid symbol.")
        if not p.get("orderId") and not p.get("origClientOrderId"):
            return _error(-1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        return account, symbol, p

    async def _bn_get_order(self, request: web.Request) -> web.Response:
        got = await self._bn_order_request(request)
        if isinstance(got, web.Response):
            return got
        order = self._bn_find(*got)
        if order is None:
            return _error(-2013, "Order does not exist.")
        return web.json_response(self._bn_order_json(order))

    async def _bn_cancel(self, request: web.Request) -> web.Response:
        got = await self._bn_order_request(request)
        if isinstance(got, web.Response):
            return got
        account, symbol, p = got
        order = self._bn_find(account, symbol, p)
        if order is None or order.status not in OPEN:
            return _error(-2011, "Unknown order sent.")
        order.status, order.updated = "Cancelled", _ms()
        answer = self._bn_order_json(order)
        for key in ("time", "updateTime", "isWorking", "workingTime", "icebergQty", "origQuoteOrderQty"):
            answer.pop(key)
        answer["origClientOrderId"] = order.link_id
        answer["clientOrderId"] = p.get("newClientOrderId") or f"cancel-{order.id}"
        answer["transactTime"] = order.updated
        return web.json_response(answer)

    def _bn_listed(self, account: FakeAccount, symbol: str | None, open_only: bool) -> list[FakeOrder]:
        return [o for o in self.orders if o.venue == "binance" and o.key == account.key
                and (symbol is None or o.symbol == symbol) and (not open_only or o.status in OPEN)]

    async def _bn_open_orders(self, request: web.Request) -> web.Response:
        auth = await self._bn_auth(request)
        if isinstance(auth, web.Response):
            return auth
        account, p = auth
        symbol = self._bn_symbol(p) if "symbol" in p else None
        if "symbol" in p and symbol is None:
            return _error(-1121, "Invalid symbol.")
        return web.json_response([self._bn_order_json(o) for o in self._bn_listed(account, symbol, open_only=True)])

    async def _bn_all_orders(self, request: web.Request) -> web.Response:
        auth = await self._bn_auth(request)
        if isinstance(auth, web.Response):
            return auth
        account, p = auth
        symbol = self._bn_symbol(p)
        if symbol is None:
            return _error(-1121, "Invalid symbol.")
        rows = [o for o in self._bn_listed(account, symbol, open_only=False) if o.created >= int(p.get("startTime", 0))]
        return web.json_response([self._bn_order_json(o) for o in rows[: min(int(p.get("limit", 500)), 1000)]])

    async def _bn_my_trades(self, request: web.Request) -> web.Response:
        """GET /api/v3/myTrades: the account's fills of one symbol, oldest first (startTime / orderId / limit as Binance)."""
        auth = await self._bn_auth(request)
        if isinstance(auth, web.Response):
            return auth
        account, p = auth
        symbol = self._bn_symbol(p)
        if symbol is None:
            return _error(-1121, "Invalid symbol.")
        m = self.binance_markets[symbol]
        rows = [f for f in self.fills if f.venue == "binance" and f.key == account.key and f.symbol == symbol
                and f.time >= int(p.get("startTime", 0)) and f.time <= int(p.get("endTime", 10**15))
                and (not p.get("orderId") or f.order_id == p["orderId"])]
        rows = rows[: min(int(p.get("limit", 500)), 1000)]
        return web.json_response([{
            "symbol": m["id"], "id": self._bn_trade_id(f.id), "orderId": int(f.order_id), "orderListId": -1,
            "price": _q(f.price), "qty": _q(f.qty), "quoteQty": _q(f.price * f.qty), "commission": _q(f.fee),
            "commissionAsset": m["base"] if f.side == "Buy" else m["quote"], "time": f.time, "isBuyer": f.side == "Buy",
            "isMaker": f.maker, "isBestMatch": True,
        } for f in rows])

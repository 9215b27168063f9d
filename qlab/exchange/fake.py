"""A loopback fake exchange: an aiohttp server on 127.0.0.1 speaking enough Bybit v5 and Binance REST for ccxt.

It serves markets and recorded responses from the ccxt test fixtures (``tests/fixtures/ccxt``,
copied from ccxt's ``ts/src/test/static``) and candles handed to it as DataFrames, counts every
request, and injects faults on demand (429, 5xx, slow responses, malformed JSON, auth failures).

    async with FakeExchange() as fake:
        fake.add_candles("BTC/USDT:USDT", "1h", candles)
        ex = ccxt.async_support.bybit()     # or .binance(): the same server speaks both
        fake.point(ex)                      # every urls['api'] host -> fake.url, path kept
        rows = await ex.fetch_ohlcv("BTC/USDT:USDT", "1h", since, 200)

Bybit v5: /v5/market/{time,instruments-info,kline,tickers,orderbook,recent-trade}, and /v5/market/funding/history
plus Binance /fapi/v1/fundingRate serving the rates handed to ``add_funding`` (each with its real pagination).
Binance: /api/v3/{time,exchangeInfo,klines}, /fapi/v1/{time,exchangeInfo,klines}, /dapi/v1/exchangeInfo.

Endpoints served (GET unless POST), by exchange -> where the answers come from:

| exchange        | endpoints                                                        | served from                  |
| --------------- | ---------------------------------------------------------------- | ---------------------------- |
| Bybit public    | /v5/market/{time,instruments-info,kline,tickers,orderbook,       | fixtures, add_candles,       |
|                 |   recent-trade,funding/history}                                  | add_funding                  |
| Bybit private   | /v5/user/query-api, /v5/account/{info,wallet-balance,fee-rate},  | add_account, set_price, the  |
| (HMAC-signed)   | /v5/asset/coin/query-info, POST /v5/order/{create,cancel},       | matching engine              |
|                 | /v5/order/{realtime,history}, /v5/execution/list,                | (fake_private.py)            |
|                 | /v5/position/list                                                |                              |
| Binance         | /api/v3/{time,exchangeInfo,klines}, /dapi/v1/exchangeInfo,       | fixtures, add_candles,       |
|                 | /fapi/v1/{time,exchangeInfo,klines,fundingRate}                  | add_funding                  |
| Binance spot    | /api/v3/account, POST/GET/DELETE /api/v3/order,                  | add_account, set_price, the  |
| private (HMAC   | /api/v3/{openOrders,allOrders,myTrades},                         | shared matching engine       |
| query-signed)   | /sapi/v1/capital/config/getall, /sapi/v1/margin/{,isolated/}allPairs | (fake_binance_private.py) |
| KuCoin public   | /api/v1/timestamp, /api/v3/currencies, /api/v2/symbols,          | fixtures, add_candles        |
|                 | /api/v1/contracts/active, /api/v1/market/{allTickers,candles,    | (fake_kucoin.py)             |
|                 |   stats,histories,orderbook/level2_20,orderbook/level2_100}      |                              |

Bybit v5 public WebSocket: /v5/public/{linear,spot} with topics kline.<interval>.<id>, publicTrade.<id> and
orderbook.<depth>.<id>, replaying the served candles one bar per ``ws_interval`` seconds (a trade at each
close, a one-level book around it); ``inject(path, "ws_drop", drop_after=N)`` closes a connection after N pushes.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from aiohttp import web

from qlab.errors import ConfigError, NotFoundError, did_you_mean
from qlab.exchange.fake_binance_private import BinancePrivateMixin
from qlab.exchange.fake_kucoin import KucoinPublicMixin
from qlab.exchange.fake_private import BybitPrivateMixin

DEFAULT_FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "ccxt"

# Bybit v5 kline interval -> pandas offset of one bar
BYBIT_INTERVALS = {
    "1": "1min", "3": "3min", "5": "5min", "15": "15min", "30": "30min", "60": "1h", "120": "2h",
    "240": "4h", "360": "6h", "720": "12h", "D": "1D", "W": "7D",
}
TIMEFRAME_TO_BYBIT = {
    "1m": "1", "3m": "3", "5m": "5", "15m": "15", "30m": "30", "1h": "60", "2h": "120", "4h": "240",
    "6h": "360", "12h": "720", "1d": "D", "1w": "W",
}
FAULT_KINDS = ("429", "500", "503", "slow", "bad_json", "auth", "disconnect", "ws_drop")
KLINE_MAX_LIMIT = 1000
BINANCE_PREFIXES = ("/api/v3/", "/fapi/", "/dapi/", "/sapi/", "/eapi/")
KUCOIN_PREFIXES = ("/api/v1/", "/api/v2/", "/api/v3/currencies")  # checked before Binance's /api/v3/
BINANCE_KLINE_LIMITS = {"/api/v3/klines": (500, 1000), "/fapi/v1/klines": (500, 1500)}  # (default, max)


def _api_family(path: str) -> str:
    """Which exchange's API a request path belongs to: "kucoin", "binance" or "bybit"."""
    if path.startswith(KUCOIN_PREFIXES):
        return "kucoin"
    return "binance" if path.startswith(BINANCE_PREFIXES) else "bybit"


@dataclass
class Fault:
    """One injected fault: requests whose path starts with ``prefix`` get ``kind``, ``times`` times."""

    prefix: str
    kind: str
    times: int = 1
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestRecord:
    """One request that reached the fake: when (time.time()), method, path, query, body and the fault applied."""

    time: float
    method: str
    path: str
    query: dict[str, str]
    body: str
    fault: str | None = None


def _num(x: float) -> str:
    """A float as Bybit writes it (a string); repr round-trips exactly."""
    return repr(float(x))


def _envelope(result: Any, ret_code: int = 0, msg: str = "OK") -> dict[str, Any]:
    return {"retCode": ret_code, "retMsg": msg, "result": result, "retExtInfo": {}, "time": int(time.time() * 1000)}


class FakeExchange(BybitPrivateMixin, BinancePrivateMixin, KucoinPublicMixin):
    """Loopback Bybit v5 / Binance / KuCoin REST server for ccxt tests; start with ``async with`` or ``await start()``.

    ``api_key`` / ``api_secret`` register one account (10000 USDT); ``add_account`` adds more. ``half_spread`` is the
    fraction market orders pay over (buys) or under (sells) the current price. ``rate_window=(limit, seconds)`` adds
    each exchange's rate-limit headers (Bybit X-Bapi-Limit*, Binance X-MBX-USED-WEIGHT-1M, KuCoin gw-ratelimit-*),
    counting the requests of that API in fixed windows; None (the default) sends none, like Bybit's public API."""

    def __init__(self, fixtures: str | Path | None = None, *, host: str = "127.0.0.1", ws_interval: float = 0.01,
                 api_key: str | None = None, api_secret: str | None = None, half_spread: float = 0.0,
                 rate_window: tuple[int, float] | None = None) -> None:
        self.ws_interval = ws_interval
        if rate_window is not None and not (int(rate_window[0]) > 0 and float(rate_window[1]) > 0):
            raise ConfigError(f"rate_window={rate_window!r} must be (requests > 0, seconds > 0), e.g. (600, 5.0)")
        self.rate_window = rate_window
        self._window_use: dict[str, tuple[float, int]] = {}  # API family -> (window start, requests in it)
        # (ws path, topic) -> pushes sent so far: a reconnected stream resumes at the next bar, like a live one
        self.ws_cursor: Counter[tuple[str, str]] = Counter()
        self.fixtures = Path(fixtures) if fixtures is not None else DEFAULT_FIXTURES
        if not (self.fixtures / "markets" / "bybit.json").is_file():
            raise ConfigError(
                f"no ccxt fixtures at {self.fixtures} (markets/bybit.json missing); "
                "pass fixtures= the folder holding markets/ and response/ (tests/fixtures/ccxt in the repo)"
            )
        self.host = host
        self.markets: dict[str, dict[str, Any]] = json.loads((self.fixtures / "markets" / "bybit.json").read_text())
        self._responses = json.loads((self.fixtures / "response" / "bybit.json").read_text())["methods"]
        binance = self.fixtures / "markets" / "binance.json"
        self.binance_markets: dict[str, dict[str, Any]] = json.loads(binance.read_text()) if binance.is_file() else {}
        self._by_id: dict[tuple[str, str], str] = {}  # (bybit category, exchange id) -> unified symbol
        for symbol, m in self.markets.items():
            self._by_id.setdefault((self._category(m), m["id"]), symbol)
        self._binance_by_id: dict[tuple[str, str], str] = {}  # (spot | linear | inverse, id) -> unified symbol
        for symbol, m in self.binance_markets.items():
            if "info" in m:
                self._binance_by_id.setdefault((self._category(m), m["id"]), symbol)
        self._candles: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}  # (unified symbol, timeframe)
        self._funding: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # unified symbol -> (ms funding times, rates)
        self.faults: list[Fault] = []
        self.requests: list[RequestRecord] = []
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self._init_private(api_key, api_secret, half_spread)
        self._init_binance_private()
        self._init_kucoin()

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` once started."""
        if self.port is None:
            raise ConfigError("the fake exchange is not started; use 'async with FakeExchange() as fake' or await start()")
        return f"http://{self.host}:{self.port}"

    async def start(self) -> FakeExchange:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/v5/market/time", self._time)
        app.router.add_get("/v5/market/instruments-info", self._instruments)
        app.router.add_get("/v5/market/kline", self._kline)
        app.router.add_get("/v5/market/tickers", self._tickers)
        app.router.add_get("/v5/market/orderbook", self._orderbook)
        app.router.add_get("/v5/market/recent-trade", self._recent_trades)
        for prefix, kind in (("/api/v3", "spot"), ("/fapi/v1", "linear"), ("/dapi/v1", "inverse")):
            app.router.add_get(prefix + "/time", self._binance_time)
            app.router.add_get(prefix + "/exchangeInfo", self._binance_exchange_info(kind))
        app.router.add_get("/v5/public/linear", self._ws)
        app.router.add_get("/v5/public/spot", self._ws)
        app.router.add_get("/api/v3/klines", self._binance_klines)
        app.router.add_get("/fapi/v1/klines", self._binance_klines)
        app.router.add_get("/v5/market/funding/history", self._funding_history)
        app.router.add_get("/fapi/v1/fundingRate", self._binance_funding)
        self._add_private_routes(app)
        self._add_binance_private_routes(app)
        self._add_kucoin_routes(app)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.port = None

    async def __aenter__(self) -> FakeExchange:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def point(self, exchange: Any) -> Any:
        """Rewrite every http(s) URL in a ccxt exchange's ``urls['api']`` to this server, keeping the path."""

        def rewrite(node: Any) -> Any:
            if isinstance(node, dict):
                return {k: rewrite(v) for k, v in node.items()}
            if isinstance(node, list):
                return [rewrite(v) for v in node]
            if isinstance(node, str) and node.startswith(("http://", "https://")):
                return self.url + urllib.parse.urlsplit(node).path
            if isinstance(node, str) and node.startswith(("ws://", "wss://")):
                return "ws" + self.url[len("http"):] + urllib.parse.urlsplit(node).path
            return node

        exchange.urls["api"] = rewrite(exchange.urls["api"])
        return exchange

    # ------------------------------------------------------------------ data
    @staticmethod
    def _category(market: dict[str, Any]) -> str:
        if market.get("spot"):
            return "spot"
        if market.get("option"):
            return "option"
        return "linear" if market.get("linear") else "inverse"

    def add_candles(self, symbol: str, timeframe: str, candles: pd.DataFrame) -> None:
        """Serve ``candles`` (UTC DatetimeIndex; open high low close volume) as ``symbol``'s ``timeframe`` klines."""
        if symbol not in self.markets and symbol not in self.binance_markets:
            known = set(self.markets) | set(self.binance_markets)
            raise NotFoundError(f"symbol {symbol!r} is not in the fake's markets.{did_you_mean(symbol, known)}")
        if timeframe not in TIMEFRAME_TO_BYBIT:
            raise NotFoundError(f"timeframe {timeframe!r} is not a Bybit interval.{did_you_mean(timeframe, TIMEFRAME_TO_BYBIT)}")
        missing = [c for c in ("open", "high", "low", "close", "volume") if c not in candles.columns]
        if missing or not isinstance(candles.index, pd.DatetimeIndex) or candles.index.tz is None:
            raise ConfigError(
                f"candles for {symbol} need a UTC DatetimeIndex and open high low close volume columns (missing {missing})"
            )
        ts = (candles.index.tz_convert("UTC").as_unit("ms").asi8).astype(np.int64)
        order = np.argsort(ts, kind="stable")
        values = candles[["open", "high", "low", "close", "volume"]].to_numpy(dtype=float)[order]
        self._candles[(symbol, timeframe)] = (ts[order], values)

    def add_funding(self, symbol: str, rates: pd.Series) -> None:
        """Serve ``rates`` (a float Series on a UTC DatetimeIndex of funding times) as ``symbol``'s funding history."""
        market = self.markets.get(symbol) or self.binance_markets.get(symbol)
        if market is None:
            known = set(self.markets) | set(self.binance_markets)
            raise NotFoundError(f"symbol {symbol!r} is not in the fake's markets.{did_you_mean(symbol, known)}")
        if not market.get("swap"):
            raise ConfigError(f"{symbol} is not a perpetual; funding exists for swaps such as 'XRP/USDT:USDT'")
        if not isinstance(rates.index, pd.DatetimeIndex) or rates.index.tz is None or rates.index.has_duplicates:
            raise ConfigError(f"funding rates for {symbol} need a unique UTC DatetimeIndex of funding times")
        ts = rates.index.tz_convert("UTC").as_unit("ms").asi8.astype(np.int64)
        order = np.argsort(ts, kind="stable")
        self._funding[symbol] = (ts[order], rates.to_numpy(dtype=float)[order])

    def _window(self, symbol: str | None, timeframe: str | None, start: int | None, end: int | None, limit: int):
        """The served bars in [start, end]: forward ``limit`` bars from start, else the newest ``limit`` up to end.

        ccxt's deterministic pagination relies on the window running forward from a given start."""
        empty = (np.empty(0, np.int64), np.empty((0, 5)))
        ts, values = self._candles.get((symbol, timeframe), empty) if symbol and timeframe else empty
        lo = 0 if start is None else int(np.searchsorted(ts, start, side="left"))
        hi = len(ts) if end is None else int(np.searchsorted(ts, end, side="right"))
        lo, hi = (lo, min(hi, lo + limit)) if start is not None else (max(lo, hi - limit), hi)
        return ts[lo:hi], values[lo:hi]

    # ------------------------------------------------------------------ faults and counting
    def inject(self, path_prefix: str, kind: str, times: int = 1, **options: Any) -> Fault:
        """Fail the next ``times`` requests whose path starts with ``path_prefix``.

        kinds: "ws_drop" (a WebSocket connection to the path is closed after ``drop_after`` pushes, default 3),
        "429" (Retry-After: ``retry_after`` seconds, default 1), "500", "503", "slow" (wait ``delay``
        seconds, default 2, then answer normally), "bad_json" (a truncated JSON body with status 200),
        "auth" (in the API's own format: Bybit retCode ``code``, default 10003 "API key is invalid."; Binance -2015;
        KuCoin "400003"), "disconnect" (close the
        connection without answering).
        """
        if kind not in FAULT_KINDS:
            raise ConfigError(f"unknown fault kind {kind!r}; one of {', '.join(FAULT_KINDS)}.{did_you_mean(kind, FAULT_KINDS)}")
        fault = Fault(path_prefix, kind, times, options)
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()

    def count(self, path_prefix: str = "/") -> int:
        """How many requests had a path starting with ``path_prefix``."""
        return sum(r.path.startswith(path_prefix) for r in self.requests)

    def per_second(self, path_prefix: str = "/") -> Counter[int]:
        """Requests per whole second (``int(time.time())``) for paths starting with ``path_prefix``."""
        return Counter(int(r.time) for r in self.requests if r.path.startswith(path_prefix))

    def _take_fault(self, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.times > 0 and path.startswith(fault.prefix):
                fault.times -= 1
                return fault
        return None

    def _limit_headers(self, path: str) -> dict[str, str]:
        """The rate-limit headers of the API ``path`` belongs to, after counting this request in its window."""
        if self.rate_window is None:
            return {}
        limit, seconds = int(self.rate_window[0]), float(self.rate_window[1])
        family = _api_family(path)
        now = time.time()
        start = now - now % seconds
        began, used = self._window_use.get(family, (start, 0))
        used = used + 1 if began == start else 1
        self._window_use[family] = (start, used)
        left, reset_ms = max(limit - used, 0), int((start + seconds) * 1000)
        if family == "bybit":
            return {"X-Bapi-Limit": str(limit), "X-Bapi-Limit-Status": str(left), "X-Bapi-Limit-Reset-Timestamp": str(reset_ms)}
        if family == "binance":
            return {"X-MBX-USED-WEIGHT-1M": str(used)}  # Binance states the weight used; its limit is the documented 6000
        return {"gw-ratelimit-limit": str(limit), "gw-ratelimit-remaining": str(left),
                "gw-ratelimit-reset": str(max(reset_ms - int(now * 1000), 0))}

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.text() if request.can_read_body else ""
        if request.path.startswith("/v5/public/"):  # WebSocket: faults are applied per push
            return await handler(request)
        fault = self._take_fault(request.path)
        self.requests.append(
            RequestRecord(time.time(), request.method, request.path, dict(request.query), body, fault.kind if fault else None)
        )
        limits = self._limit_headers(request.path)
        if fault is None:
            response = await handler(request)
            response.headers.update(limits)
            return response
        kind, opts = fault.kind, fault.options
        if kind == "429":
            return web.Response(
                status=429, text="Too Many Requests", headers={"Retry-After": str(opts.get("retry_after", 1))}
            )
        if kind in ("500", "503"):
            reason = "Internal Server Error" if kind == "500" else "Service Unavailable"
            return web.Response(status=int(kind), text=reason)
        if kind == "slow":
            await asyncio.sleep(float(opts.get("delay", 2.0)))
            return await handler(request)
        if kind == "bad_json":
            return web.Response(status=200, text='{"retCode":0,"retMsg":"OK","result":{"list":[["17', content_type="application/json")
        if kind == "auth" and _api_family(request.path) == "kucoin":  # KuCoin: HTTP 401 with its own string code
            return web.json_response({"code": str(opts.get("code", "400003")), "msg": opts.get("message", "KC-API-KEY not exists")},
                                     status=401)
        if kind == "auth" and _api_family(request.path) == "binance":
            code = int(opts.get("code", -2015))
            msg = opts.get("message", "Invalid API-key, IP, or permissions for action.")
            return web.json_response({"code": code, "msg": msg}, status=401)
        if kind == "auth":
            code = int(opts.get("code", 10003))
            default = "API key is invalid." if code == 10003 else "Error sign, please check your signature generation algorithm."
            msg = opts.get("message", default)
            return web.json_response({"retCode": code, "retMsg": msg, "result": {}, "retExtInfo": {}, "time": int(time.time() * 1000)})
        # disconnect: drop the connection without an answer
        if request.transport is not None:
            request.transport.close()
        raise asyncio.CancelledError

    # ------------------------------------------------------------------ handlers
    def _bad_params(self, msg: str) -> web.Response:
        return web.json_response(_envelope({}, 10001, msg))

    async def _time(self, request: web.Request) -> web.Response:
        now = time.time_ns()
        return web.json_response(_envelope({"timeSecond": str(now // 10**9), "timeNano": str(now)}))

    async def _instruments(self, request: web.Request) -> web.Response:
        q = request.query
        category = q.get("category", "")
        if category not in ("spot", "linear", "inverse", "option"):
            return self._bad_params("params error: category wrong")
        items: list[dict[str, Any]] = []
        if q.get("status", "Trading") != "PreLaunch":
            for m in self.markets.values():
                info = m.get("info") or {}
                if self._category(m) != category or not info:
                    continue
                if "symbol" in q and info.get("symbol") != q["symbol"]:
                    continue
                if "baseCoin" in q and info.get("baseCoin") != q["baseCoin"]:
                    continue
                items.append(copy.deepcopy(info))
        return web.json_response(_envelope({"category": category, "list": items, "nextPageCursor": ""}))

    async def _kline(self, request: web.Request) -> web.Response:
        q = request.query
        category, symbol, interval = q.get("category", "linear"), q.get("symbol", ""), q.get("interval", "")
        if interval not in BYBIT_INTERVALS:
            return self._bad_params("params error: Invalid period!")
        if (category, symbol) not in self._by_id:
            return self._bad_params("params error: Symbol Is Invalid")
        try:
            limit = int(q.get("limit", 200))
            start = int(q["start"]) if "start" in q else None
            end = int(q["end"]) if "end" in q else None
        except ValueError:
            return self._bad_params("params error: start, end and limit must be integers")
        if not 1 <= limit <= KLINE_MAX_LIMIT:
            limit = KLINE_MAX_LIMIT if limit > KLINE_MAX_LIMIT else 200
        timeframe = next((tf for tf, iv in TIMEFRAME_TO_BYBIT.items() if iv == interval), None)
        ts, values = self._window(self._by_id[(category, symbol)], timeframe, start, end, limit)
        rows = [  # newest first, as Bybit sends them
            [str(int(t)), _num(o), _num(h), _num(low), _num(c), _num(v), _num(v * c)]
            for t, (o, h, low, c, v) in zip(ts[::-1], values[::-1], strict=True)
        ]
        return web.json_response(_envelope({"symbol": symbol, "category": category, "list": rows}))

    def _recorded(self, method: str, category: str, symbol: str | None) -> dict[str, Any] | None:
        """The recorded httpResponse of ``method`` for this category (and symbol), deep-copied."""
        for case in self._responses.get(method, []):
            resp = case.get("httpResponse")
            if not isinstance(resp, dict):
                continue
            result = resp.get("result") or {}
            case_symbol = result.get("s") or result.get("symbol")
            lst = result.get("list")
            if case_symbol is None and isinstance(lst, list) and lst:
                case_symbol = lst[0].get("symbol")
            market = self.markets.get(case["input"][0]) if case.get("input") else None
            case_category = result.get("category") or (self._category(market) if market else None)
            if case_category == category and (symbol is None or case_symbol == symbol):
                return copy.deepcopy(resp)
        return None

    async def _tickers(self, request: web.Request) -> web.Response:
        q = request.query
        category, symbol = q.get("category", ""), q.get("symbol")
        rows: list[dict[str, Any]] = []
        for method in ("fetchTicker", "fetchFundingRate"):
            resp = self._recorded(method, category, None)
            if resp is not None:
                rows += [r for r in resp["result"]["list"] if symbol is None or r.get("symbol") == symbol]
                break
        if symbol is not None and not rows:
            return self._bad_params("params error: symbol invalid")
        return web.json_response(_envelope({"category": category, "list": rows}))

    async def _orderbook(self, request: web.Request) -> web.Response:
        q = request.query
        category, symbol = q.get("category", ""), q.get("symbol", "")
        resp = self._recorded("fetchOrderBook", category, symbol)
        if resp is None:
            return self._bad_params("params error: symbol invalid")
        limit = int(q.get("limit", 25))
        result = resp["result"]
        result["b"], result["a"] = result["b"][:limit], result["a"][:limit]
        return web.json_response(_envelope(result))

    async def _recent_trades(self, request: web.Request) -> web.Response:
        q = request.query
        category, symbol = q.get("category", ""), q.get("symbol", "")
        resp = self._recorded("fetchTrades", category, symbol)
        if resp is None:
            return self._bad_params("params error: symbol invalid")
        result = resp["result"]
        result["list"] = result["list"][: int(q.get("limit", 60))]
        return web.json_response(_envelope(result))

    async def _funding_history(self, request: web.Request) -> web.Response:
        """Bybit v5 /v5/market/funding/history: the newest ``limit`` (max 200) rates in [startTime, endTime], newest first.

        As Bybit documents it: startTime alone is an error, endTime alone (or neither) gives the ``limit`` rates up to
        endTime (or now)."""
        q = request.query
        category, symbol = q.get("category", ""), q.get("symbol", "")
        if category not in ("linear", "inverse"):
            return self._bad_params("params error: category only support linear or inverse")
        unified = self._by_id.get((category, symbol))
        if unified is None:
            return self._bad_params("params error: Symbol Is Invalid")
        if "startTime" in q and "endTime" not in q:
            return self._bad_params("params error: endTime is required when startTime is passed")
        try:
            limit = int(q.get("limit", 200))
            start = int(q.get("startTime", 0))
            end = int(q["endTime"]) if "endTime" in q else int(time.time() * 1000)
        except ValueError:
            return self._bad_params("params error: startTime, endTime and limit must be integers")
        if not 1 <= limit <= 200:
            return self._bad_params("params error: limit must be in [1, 200]")
        ts, rates = self._funding.get(unified, (np.empty(0, np.int64), np.empty(0)))
        lo, hi = int(np.searchsorted(ts, start, side="left")), int(np.searchsorted(ts, end, side="right"))
        lo = max(lo, hi - limit)
        rows = [{"symbol": symbol, "fundingRate": np.format_float_positional(r, trim="-"), "fundingRateTimestamp": str(int(t))}
                for t, r in zip(ts[lo:hi][::-1], rates[lo:hi][::-1], strict=True)]
        return web.json_response(_envelope({"category": category, "list": rows}))

    async def _binance_funding(self, request: web.Request) -> web.Response:
        """Binance /fapi/v1/fundingRate: the oldest ``limit`` (default 100, max 1000) rates from startTime, oldest first."""
        q = request.query
        symbol = self._binance_by_id.get(("linear", q.get("symbol", "")))
        if symbol is None:
            return self._binance_error(-1121, "Invalid symbol.")
        try:
            limit = min(max(int(q.get("limit", 100)), 1), 1000)
            start = int(q["startTime"]) if "startTime" in q else None
            end = int(q["endTime"]) if "endTime" in q else None
        except ValueError:
            return self._binance_error(-1100, "Illegal characters found in a parameter.")
        ts, rates = self._funding.get(symbol, (np.empty(0, np.int64), np.empty(0)))
        lo = 0 if start is None else int(np.searchsorted(ts, start, side="left"))
        hi = len(ts) if end is None else int(np.searchsorted(ts, end, side="right"))
        lo, hi = (lo, min(hi, lo + limit)) if start is not None else (max(lo, hi - limit), hi)
        market_id = self.binance_markets[symbol]["id"]
        rows = [{"symbol": market_id, "fundingTime": int(t), "fundingRate": np.format_float_positional(r, trim="-"),
                 "markPrice": ""} for t, r in zip(ts[lo:hi], rates[lo:hi], strict=True)]
        return web.json_response(rows)

    # ------------------------------------------------------------------ Binance
    def _binance_error(self, code: int, msg: str, status: int = 400) -> web.Response:
        return web.json_response({"code": code, "msg": msg}, status=status)

    async def _binance_time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": int(time.time() * 1000)})

    def _binance_exchange_info(self, kind: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            symbols = [
                copy.deepcopy(m["info"]) for m in self.binance_markets.values() if "info" in m and self._category(m) == kind
            ]
            return web.json_response(
                {"timezone": "UTC", "serverTime": int(time.time() * 1000), "rateLimits": [], "exchangeFilters": [], "symbols": symbols}
            )

        return handler

    async def _binance_klines(self, request: web.Request) -> web.Response:
        q = request.query
        kind = "spot" if request.path.startswith("/api/") else "linear"
        default_limit, max_limit = BINANCE_KLINE_LIMITS[request.path]
        symbol = self._binance_by_id.get((kind, q.get("symbol", "")))
        if symbol is None:
            return self._binance_error(-1121, "Invalid symbol.")
        timeframe = q.get("interval", "")
        if timeframe not in TIMEFRAME_TO_BYBIT:
            return self._binance_error(-1120, "Invalid interval.")
        try:
            limit = int(q.get("limit", default_limit))
            start = int(q["startTime"]) if "startTime" in q else None
            end = int(q["endTime"]) if "endTime" in q else None
        except ValueError:
            return self._binance_error(-1100, "Illegal characters found in a parameter.")
        limit = min(max(limit, 1), max_limit)
        ts, values = self._window(symbol, timeframe, start, end, limit)
        step = int(pd.Timedelta(BYBIT_INTERVALS[TIMEFRAME_TO_BYBIT[timeframe]]).total_seconds() * 1000)
        rows = [  # oldest first, as Binance sends them
            [int(t), _num(o), _num(h), _num(low), _num(c), _num(v), int(t) + step - 1, _num(v * c), 0, "0", "0", "0"]
            for t, (o, h, low, c, v) in zip(ts, values, strict=True)
        ]
        return web.json_response(rows)

    # ------------------------------------------------------------------ Bybit public WebSocket
    def _ws_messages(self, category: str, topic: str) -> list[dict[str, Any]]:
        """The pushes replaying the served candles for one topic (empty for an unknown topic)."""
        parts = topic.split(".")
        symbol = self._by_id.get((category, parts[-1]))
        if symbol is None or parts[0] not in ("kline", "publicTrade", "orderbook"):
            return []
        if parts[0] == "kline":
            timeframe = next((tf for tf, iv in TIMEFRAME_TO_BYBIT.items() if iv == parts[1]), None)
            ts, values = self._candles.get((symbol, timeframe), (np.empty(0, np.int64), np.empty((0, 5))))
            step = int(pd.Timedelta(BYBIT_INTERVALS.get(parts[1], "1min")).total_seconds() * 1000)
        else:  # trades and books follow the finest served timeframe of the symbol
            served = sorted(
                ((pd.Timedelta(BYBIT_INTERVALS[TIMEFRAME_TO_BYBIT[tf]]), tf) for s, tf in self._candles if s == symbol)
            )
            ts, values = self._candles[(symbol, served[0][1])] if served else (np.empty(0, np.int64), np.empty((0, 5)))
            step = int(served[0][0].total_seconds() * 1000) if served else 0
        out = []
        for i, (t, (o, h, low, c, v)) in enumerate(zip(ts, values, strict=True)):
            t = int(t)
            if parts[0] == "kline":
                data: Any = [{
                    "start": t, "end": t + step - 1, "interval": parts[1], "open": _num(o), "close": _num(c), "high": _num(h),
                    "low": _num(low), "volume": _num(v), "turnover": _num(v * c), "confirm": True, "timestamp": t + step - 1,
                }]
                kind = "snapshot"
            elif parts[0] == "publicTrade":
                side = "Buy" if c >= o else "Sell"
                data = [{"T": t + step - 1, "s": parts[-1], "S": side, "v": _num(v), "p": _num(c), "L": "ZeroPlusTick",
                         "i": f"fake-{t}", "BT": False}]
                kind = "snapshot"
            else:
                tick = max(abs(c) * 1e-5, 1e-8)
                data = {"s": parts[-1], "b": [[_num(c - tick), _num(v)]], "a": [[_num(c + tick), _num(v)]], "u": i + 1, "seq": i + 1}
                kind = "snapshot"
            out.append({"topic": topic, "type": kind, "ts": t + step - 1, "data": data})
        return out

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        category = request.path.rsplit("/", 1)[-1]
        fault = self._take_fault(request.path)
        self.requests.append(RequestRecord(time.time(), "WS", request.path, dict(request.query), "", fault.kind if fault else None))
        drop_after = int(fault.options.get("drop_after", 3)) if fault and fault.kind == "ws_drop" else None
        pushed = 0
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def replay(topic: str) -> None:
            for message in self._ws_messages(category, topic)[self.ws_cursor[(request.path, topic)]:]:
                await queue.put(message)
                await asyncio.sleep(self.ws_interval)

        async def sender() -> None:
            nonlocal pushed
            while not ws.closed:
                message = await queue.get()
                if drop_after is not None and pushed >= drop_after:
                    await ws.close(code=1011, message=b"fake: connection dropped")
                    return
                await ws.send_json(message)
                if "topic" in message:
                    pushed += 1
                    self.ws_cursor[(request.path, message["topic"])] += 1

        tasks = [asyncio.ensure_future(sender())]
        try:
            async for msg in ws:
                if msg.type != web.WSMsgType.TEXT:
                    continue
                req = json.loads(msg.data)
                self.requests.append(RequestRecord(time.time(), "WS", request.path, {}, msg.data))
                op, req_id = req.get("op"), req.get("req_id")
                if op == "ping":
                    await queue.put({"success": True, "ret_msg": "pong", "conn_id": "fake", "req_id": req_id, "op": "ping"})
                elif op == "subscribe":
                    await queue.put({"success": True, "ret_msg": "", "conn_id": "fake", "req_id": req_id, "op": "subscribe"})
                    tasks += [asyncio.ensure_future(replay(topic)) for topic in req.get("args", [])]
                elif op == "unsubscribe":
                    await queue.put({"success": True, "ret_msg": "", "conn_id": "fake", "req_id": req_id, "op": "unsubscribe"})
        finally:
            for task in tasks:
                task.cancel()
        return ws

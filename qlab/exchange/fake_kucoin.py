"""KuCoin public REST for the loopback fake exchange: markets, candles replayed with KuCoin's paging, recorded data.

Mixed into `qlab.exchange.fake.FakeExchange`. Markets come from ``markets/kucoin.json`` (their raw ``info``, as
/api/v2/symbols sends them), candles from `add_candles` (startAt / endAt in seconds, start inclusive, end exclusive,
at most 1500 rows, newest first, like KuCoin), ticker, book and trades from the recorded ``response/kucoin.json``
cases (for the recorded symbol; any other listed symbol answers KuCoin's "Unsupported trading pair.").
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any

from aiohttp import web

KUCOIN_CANDLE_MAX = 1500
# KuCoin candle type -> the timeframe add_candles keys its data by
KUCOIN_TYPES = {
    "1min": "1m", "3min": "3m", "5min": "5m", "15min": "15m", "30min": "30m", "1hour": "1h", "2hour": "2h",
    "4hour": "4h", "6hour": "6h", "12hour": "12h", "1day": "1d", "1week": "1w",
}


def _ok(data: Any) -> web.Response:
    return web.json_response({"code": "200000", "data": data})


def _num(x: float) -> str:
    return repr(float(x))


class KucoinPublicMixin:
    """The KuCoin spot public routes of the fake exchange."""

    fixtures: Any
    _candles: dict[tuple[str, str], Any]
    _window: Any

    def _init_kucoin(self) -> None:
        markets = self.fixtures / "markets" / "kucoin.json"
        responses = self.fixtures / "response" / "kucoin.json"
        self.kucoin_markets: dict[str, dict[str, Any]] = json.loads(markets.read_text()) if markets.is_file() else {}
        self._kucoin_responses: dict[str, Any] = json.loads(responses.read_text())["methods"] if responses.is_file() else {}
        self._kucoin_by_id = {m["id"]: s for s, m in self.kucoin_markets.items()}

    def _add_kucoin_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/timestamp", self._ku_time)
        app.router.add_get("/api/v3/currencies", self._ku_currencies)
        app.router.add_get("/api/v2/symbols", self._ku_symbols)
        app.router.add_get("/api/v1/market/allTickers", self._ku_all_tickers)
        app.router.add_get("/api/v1/contracts/active", self._ku_contracts)
        app.router.add_get("/api/v1/market/candles", self._ku_candles)
        app.router.add_get("/api/v1/market/stats", self._ku_recorded("fetchTicker"))
        app.router.add_get("/api/v1/market/orderbook/level2_20", self._ku_recorded("fetchOrderBook", 20))
        app.router.add_get("/api/v1/market/orderbook/level2_100", self._ku_recorded("fetchOrderBook", 100))
        app.router.add_get("/api/v1/market/histories", self._ku_recorded("fetchTrades"))

    @staticmethod
    def _ku_error(msg: str, code: str = "400100") -> web.Response:
        return web.json_response({"code": code, "msg": msg})

    async def _ku_time(self, request: web.Request) -> web.Response:
        return _ok(int(time.time() * 1000))

    async def _ku_currencies(self, request: web.Request) -> web.Response:
        codes = sorted({c for m in self.kucoin_markets.values() for c in (m["base"], m["quote"])})
        return _ok([{"currency": c, "name": c, "fullName": c, "precision": 8, "confirms": None, "contractAddress": None,
                     "isMarginEnabled": True, "isDebitEnabled": True, "chains": []} for c in codes])

    async def _ku_symbols(self, request: web.Request) -> web.Response:
        return _ok([copy.deepcopy(m["info"]) for m in self.kucoin_markets.values() if "info" in m])

    async def _ku_all_tickers(self, request: web.Request) -> web.Response:
        return _ok({"time": int(time.time() * 1000), "ticker": []})

    async def _ku_contracts(self, request: web.Request) -> web.Response:
        return _ok([])  # the recorded KuCoin markets are spot only

    async def _ku_candles(self, request: web.Request) -> web.Response:
        q = request.query
        symbol = self._kucoin_by_id.get(q.get("symbol", ""))
        if symbol is None:
            return self._ku_error("Unsupported trading pair.")
        timeframe = KUCOIN_TYPES.get(q.get("type", ""))
        if timeframe is None:
            return self._ku_error("Unsupported candle type.", "400100")
        try:
            start = int(q["startAt"]) * 1000 if "startAt" in q else None
            end = int(q["endAt"]) * 1000 - 1 if "endAt" in q and int(q["endAt"]) > 0 else None
        except ValueError:
            return self._ku_error("startAt and endAt must be integers", "400100")
        if start is None:
            ts, values = self._window(symbol, timeframe, None, end, KUCOIN_CANDLE_MAX)
        else:  # KuCoin keeps the newest 1500 of the range
            ts, values = self._window(symbol, timeframe, start, end, 10**9)
            ts, values = ts[-KUCOIN_CANDLE_MAX:], values[-KUCOIN_CANDLE_MAX:]
        rows = [  # newest first: time, open, close, high, low, volume, turnover
            [str(int(t) // 1000), _num(o), _num(c), _num(h), _num(low), _num(v), _num(v * c)]
            for t, (o, h, low, c, v) in zip(ts[::-1], values[::-1], strict=True)
        ]
        return _ok(rows)

    def _ku_recorded(self, method: str, depth: int | None = None) -> Any:
        async def handler(request: web.Request) -> web.Response:
            symbol_id = request.query.get("symbol", "")
            symbol = self._kucoin_by_id.get(symbol_id)
            for case in self._kucoin_responses.get(method, []):
                if symbol is not None and case.get("input") and case["input"][0] == symbol:
                    body = copy.deepcopy(case["httpResponse"])
                    data = body["data"]
                    if depth is not None:
                        data["bids"], data["asks"] = data["bids"][:depth], data["asks"][:depth]
                    return web.json_response(body)
            return self._ku_error("Unsupported trading pair.")

        return handler

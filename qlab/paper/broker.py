"""The Broker interface the paper trader talks to, and the order request it sends.

A broker turns `OrderRequest`s into events (order, accepted, trigger, fill, cancel, funding) that it hands
to `emit`, the trader's write-ahead sink: `emit` journals the event, then folds it into the broker's
state. Brokers never change their state any other way, so `restore(events)` (the same fold, without
journaling) rebuilds them after a restart.

Implementations:
  * `qlab.paper.sim_broker.SimBroker`: simulated fills on the bars (and order books) the feed delivers,
    fill model "backtest" (exactly the backtester's) or "realistic" (book, latency, queue, partial fills).
  * an exchange broker (planned): the same methods placing orders through qlab.exchange's CcxtExchange.
    `submit` sends the order with `request.cid` as the client order id (so a resubmission after a restart
    is recognised by the exchange, not duplicated); `on_bar` polls/streams the exchange's fills and emits
    them as "fill" events; `restore` folds the journal, then reconciles open orders and fills with the
    exchange by client id. Protective exits (stop-loss, take-profit, trailing) become reduce-only
    stop/limit orders whose client ids are `request.cid + "-sl"` etc. (Bybit client ids allow letters, digits, - and _)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Protocol

import pandas as pd

from qlab.exchange.types import Bar, OrderBook
from qlab.paper.events import Event
from qlab.paper.state import AccountState

FILL_MODELS = ("backtest", "realistic")
ORDER_INTENTS = ("entry", "exit")


@dataclass(frozen=True)
class OrderRequest:
    """What the trader asks a broker to do: one entry or exit order with a deterministic client id.

    Entries are sized by the broker at fill time from the strategy's SizeSpec (qty NaN), as the fill model
    says; `notional_cap` is the risk manager's limit on q * price. `price` is a limit price (limit) or a
    stop price (stop, stop_limit); `limit` the limit of a stop-limit. Exits close the whole position.
    """

    cid: str
    symbol: str
    side: int  # +1 buy, -1 sell
    type: str  # market, limit, stop, stop_limit
    intent: str  # entry, exit
    bar: int  # the signal bar
    price: float = math.nan
    limit: float = math.nan
    qty: float = math.nan
    notional_cap: float = math.inf
    qty_cap: float = math.inf  # the risk manager's limit on q (max position)
    reason: str = "signal"  # signal, kill_switch
    at: str | None = None  # when it was decided (the trader's clock, ISO UTC): the order-rate limit counts these
    atr: float = math.nan  # ATR of the signal bar (ATR stops, risk sizing)

    def payload(self) -> dict:
        """The request as an "order" event payload (NaN/inf become null)."""
        out = asdict(self)
        for key in ("price", "limit", "qty", "notional_cap", "qty_cap", "atr"):
            if not math.isfinite(out[key]):
                out[key] = None
        return out


def client_order_id(run_id: str, symbol: str, bar: int, leg: str) -> str:
    """Deterministic client order id from run id, symbol, signal bar and leg ("entry", "exit", ...): the same
    decision after a restart gets the same id, so brokers recognise a resubmission. 32 characters, [0-9a-z]."""
    digest = hashlib.sha256(f"{run_id}|{symbol}|{bar}|{leg}".encode()).hexdigest()
    return "qp" + digest[:30]


class Broker(Protocol):
    """What the paper trader needs from a broker (simulated or exchange)."""

    state: AccountState
    emit: Callable[[Event], None]

    def restore(self, events: Iterable[Event]) -> None:
        """Fold journaled events into the state (after a restart), without emitting anything."""
        ...

    async def on_bar(self, bar: Bar, index: int) -> None:
        """A finished bar of the feed: run the bar's executions (open, intra-bar path) and emit their events."""
        ...

    async def on_book(self, book: OrderBook) -> None:
        """An L2 snapshot from the feed (brokers that do not use books ignore it)."""
        ...

    async def submit(self, request: OrderRequest) -> None:
        """Emit the "order" event and send the order; idempotent on `request.cid`."""
        ...

    async def cancel(self, cid: str, reason: str, bar: int) -> None:
        """Cancel a working order (emits "cancel"); a no-op for an unknown or finished order."""
        ...

    async def close_bar(self, index: int, ts: pd.Timestamp) -> None:
        """The bar's close after the trader's decisions: trailing peaks, order expiry, and the "mark" event."""
        ...

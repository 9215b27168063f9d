"""The paper trader's events: one small record type for everything that happens (bars, signals, orders,
fills, cancels, funding, marks, risk rejections, the kill switch), serialised as JSON for the journal.

An event is a `kind` plus a plain-JSON `payload`; brokers and the trader fold events into their state
with `apply`, so the same code builds the state live and rebuilds it from the journal after a restart.

Kinds (payload keys):
  bar       symbol, bar, ts, open, high, low, close, volume            a bar handed to the broker (market data)
  signal    symbol, bar, exit, cancel, entry, flags                    the strategy's decision at a bar's close
  order     cid, symbol, side, type, intent, price, stop, bar, ...     an order submitted (write-ahead of sending it)
  accepted  cid, symbol, bar, queue_ahead                              a resting order became live on the book
  trigger   cid, symbol, bar                                           a stop-limit's stop was reached
  fill      cid, symbol, bar, side, kind, reason, price, qty, fee, ... an execution (part or all of an order)
  cancel    cid, symbol, bar, reason                                   an order removed (signal, expiry, skipped, kill)
  funding   symbol, bar, amount                                        funding paid (negative: received)
  mark      bar, ts, equity, cash, peaks, live                         a bar's close: equity, trailing peaks, order ages
  risk      symbol, bar, rule, reason, ...                             a risk-limit rejection (an order that was not sent)
  kill      bar, reason                                                the kill switch fired: orders cancelled, flattened
  supersede seqs, reason, broker                                       journal entries (by seq) that never took effect: the
                                                                       tail of an unfinished bar that a restart with a
                                                                       non-deterministic broker regenerated differently
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

EVENT_KINDS = ("bar", "signal", "order", "accepted", "trigger", "fill", "cancel", "funding", "mark", "risk", "kill", "supersede")


@dataclass(frozen=True)
class Event:
    """One thing that happened: its kind, its plain-JSON payload and the market time it happened at."""

    kind: str
    payload: dict[str, Any] = field(default_factory=dict)
    ts: str | None = None  # ISO UTC market time (the bar's time), not the wall clock: replays are reproducible

    def to_json(self) -> str:
        """The payload as compact JSON (floats round-trip exactly through repr)."""
        return json.dumps(self.payload, separators=(",", ":"), allow_nan=True, default=_plain)

    @classmethod
    def from_json(cls, kind: str, text: str, ts: str | None = None) -> Event:
        """An event read back from the journal."""
        return cls(kind, json.loads(text), ts)

    def __getitem__(self, key: str) -> Any:
        return self.payload[key]


def _plain(value: Any) -> Any:
    """numpy scalars (np.float64, np.bool_) as their Python values."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"event payload value {value!r} of type {type(value).__name__} is not JSON; use plain numbers and strings")

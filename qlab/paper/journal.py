"""Write-ahead event journals: the paper trader appends every event here BEFORE it takes effect, so a
restart with the same run id folds the journal back into exactly the state it had.

`StoreJournal` keeps the events in the DuckDB store (`Store.append_journal` commits each one durably);
`MemoryJournal` keeps them in a list, for runs that need no recovery (quick replays, benchmarks).
Both stream names are `paper/<run_id>`.
"""

from __future__ import annotations

from typing import Protocol

from qlab.data.store import Store
from qlab.errors import ConfigError
from qlab.paper.events import Event


class Journal(Protocol):
    """Where events go before they act; `events()` reads them back in order."""

    run_id: str

    def append(self, event: Event) -> int:
        """Durably record one event; returns its sequence number (1, 2, ...)."""
        ...

    def events(self) -> list[Event]:
        """Every event of the run, in the order appended."""
        ...


def stream_name(run_id: str) -> str:
    """The journal stream of a paper run."""
    if not run_id or not isinstance(run_id, str) or any(c.isspace() for c in run_id):
        raise ConfigError(f"run_id={run_id!r} must be a non-empty name without spaces, e.g. 'sma-btc-1'")
    return f"paper/{run_id}"


class MemoryJournal:
    """An in-memory journal (no durability): for replays that never need to restart."""

    def __init__(self, run_id: str = "memory") -> None:
        self.run_id = run_id
        stream_name(run_id)
        self._events: list[Event] = []

    def append(self, event: Event) -> int:
        """Keep the event; returns its sequence number."""
        self._events.append(event)
        return len(self._events)

    def events(self) -> list[Event]:
        """The events so far."""
        return list(self._events)


class StoreJournal:
    """A journal in the store's append-only `journal` table, one committed row per event."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.store, self.run_id = store, run_id
        self.stream = stream_name(run_id)

    def append(self, event: Event) -> int:
        """Commit the event (durable when this returns); returns its sequence number."""
        return self.store.append_journal(self.stream, event.kind, event.to_json(), ts=event.ts)

    def events(self) -> list[Event]:
        """The events of the run read back from the store, in order."""
        frame = self.store.journal(self.stream)
        return [Event.from_json(kind, payload, ts.isoformat()) for kind, payload, ts in
                zip(frame["kind"], frame["payload"], frame["ts"], strict=True)]

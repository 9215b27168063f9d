"""Write-ahead event journals: the paper trader appends every event here BEFORE it takes effect, so a
restart with the same run id folds the journal back into exactly the state it had.

`StoreJournal` keeps the events in the DuckDB store (`Store.append_journal` commits each one durably);
`MemoryJournal` keeps them in a list, for runs that need no recovery (quick replays, benchmarks).
Both stream names are `paper/<run_id>`.

Append-only: nothing is ever deleted or rewritten. Each entry has a sequence number (1, 2, ...; `entries()`);
a "supersede" event names the sequence numbers of earlier entries that never took effect (the journaled tail of
an unfinished bar that a restart with a non-deterministic broker regenerated differently, see
`qlab.paper.trader`). The run's state is the fold of every entry except the superseded ones (`live_entries`).
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

    def entries(self) -> list[tuple[int, Event]]:
        """Every event of the run with its sequence number, in the order appended."""
        ...


def journal_entries(journal: Journal) -> list[tuple[int, Event]]:
    """(seq, event) pairs of a journal; journals without `entries()` number their events 1, 2, ... as `append` does."""
    entries = getattr(journal, "entries", None)
    return entries() if entries is not None else list(enumerate(journal.events(), start=1))


def superseded_seqs(entries: list[tuple[int, Event]]) -> set[int]:
    """Sequence numbers named void by the run's "supersede" events."""
    return {int(s) for _, ev in entries if ev.kind == "supersede" for s in ev.payload["seqs"]}


def live_entries(entries: list[tuple[int, Event]]) -> list[tuple[int, Event]]:
    """The entries that took effect: all but the superseded ones (the "supersede" events themselves stay, for the record)."""
    void = superseded_seqs(entries)
    return [(seq, ev) for seq, ev in entries if seq not in void]


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

    def entries(self) -> list[tuple[int, Event]]:
        """The events so far with their sequence numbers."""
        return list(enumerate(self._events, start=1))


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
        return [ev for _, ev in self.entries()]

    def entries(self) -> list[tuple[int, Event]]:
        """The events of the run with the store's sequence numbers, in order."""
        frame = self.store.journal(self.stream)
        return [(int(seq), Event.from_json(kind, payload, ts.isoformat())) for seq, kind, payload, ts in
                zip(frame["seq"], frame["kind"], frame["payload"], frame["ts"], strict=True)]

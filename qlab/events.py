"""Report what happened (a trader stopped, a budget crossed 80 %, a health check failed) for alerts to pick up.

Components below the alerts layer call `report_event(kind, **data)`; it is one `logging` call on the `qlab.events`
logger, which costs nothing until a running `qlab.alerts.AlertEngine` installs its bridge and turns the records into
alert events (kinds: see qlab.alerts.events.EVENT_KINDS).
"""

from __future__ import annotations

import logging
from typing import Any

EVENTS_LOGGER = "qlab.events"
EVENT_EXTRA = "qlab_event"
_LOG = logging.getLogger(EVENTS_LOGGER)
_LOG.propagate = False  # events are data for the alert bridge, not log lines: an INFO root logger must not print them


def report_event(kind: str, **data: Any) -> None:
    """Publish one event of `kind` with its data fields (a no-op unless an alert engine listens)."""
    if _LOG.isEnabledFor(logging.INFO):
        _LOG.info(kind, extra={EVENT_EXTRA: data})

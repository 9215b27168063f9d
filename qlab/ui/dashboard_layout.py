"""The dashboard's layout: which panels, in what order and at what size; saved as JSON and restored next time."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qlab.config import qlab_home
from qlab.errors import ConfigError, did_you_mean

PANEL_NAMES = ("price", "equity", "positions", "alerts", "quality", "usage", "system", "controls")
WIDTHS = {"third": "31%", "half": "48%", "full": "98%"}  # flex basis on wide screens; every panel goes full width on a phone
DEFAULT_SLOTS = (
    ("controls", "full", 0), ("price", "half", 380), ("equity", "half", 380), ("positions", "half", 0),
    ("alerts", "half", 0), ("quality", "third", 0), ("usage", "third", 0), ("system", "third", 0),
)


@dataclass(frozen=True)
class PanelSlot:
    """One panel on the page: its name, its width ('third', 'half' or 'full') and a chart height in pixels (0 = auto)."""

    panel: str
    width: str = "half"
    height: int = 0

    def __post_init__(self) -> None:
        if self.panel not in PANEL_NAMES:
            raise ConfigError(f"unknown dashboard panel {self.panel!r}; use one of {', '.join(PANEL_NAMES)}."
                              + did_you_mean(self.panel, PANEL_NAMES))
        if self.width not in WIDTHS:
            raise ConfigError(f"panel {self.panel!r} has width {self.width!r}; use one of {', '.join(WIDTHS)}."
                              + did_you_mean(self.width, WIDTHS))
        if not isinstance(self.height, int) or not 0 <= self.height <= 2000:
            raise ConfigError(f"panel {self.panel!r} has height {self.height!r}; give pixels from 0 (auto) to 2000")


@dataclass(frozen=True)
class Layout:
    """An ordered list of panel slots; each panel at most once."""

    slots: tuple[PanelSlot, ...] = field(default_factory=lambda: tuple(PanelSlot(*s) for s in DEFAULT_SLOTS))

    def __post_init__(self) -> None:
        names = [s.panel for s in self.slots]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"dashboard layout lists {', '.join(twice)} more than once; keep each panel once")

    @property
    def panels(self) -> list[str]:
        """Panel names in display order."""
        return [s.panel for s in self.slots]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"slots": [asdict(s) for s in self.slots]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Layout:
        """The layout a `to_dict` wrote (unknown keys are errors, so typos do not pass silently)."""
        if not isinstance(data, dict) or not isinstance(data.get("slots"), list):
            raise ConfigError(f"a dashboard layout is {{'slots': [{{'panel': ..., 'width': ..., 'height': ...}}]}}, not {data!r}")
        slots = []
        for item in data["slots"]:
            extra = set(item) - {"panel", "width", "height"}
            if extra:
                raise ConfigError(f"unknown layout key(s) {sorted(extra)} in {item!r}; use panel, width and height")
            slots.append(PanelSlot(**item))
        return cls(tuple(slots))


def layout_path() -> Path:
    """Where the layout is saved: QLAB_HOME/dashboard_layout.json."""
    return qlab_home() / "dashboard_layout.json"


def load_layout(path: str | Path | None = None) -> Layout:
    """The saved layout, or the default one when none was saved."""
    target = Path(path) if path is not None else layout_path()
    if not target.exists():
        return Layout()
    try:
        data = json.loads(target.read_text())
    except ValueError as exc:
        raise ConfigError(f"the dashboard layout {str(target)!r} is not valid JSON ({exc}); delete it to get the default") from None
    return Layout.from_dict(data)


def save_layout(layout: Layout, path: str | Path | None = None) -> Path:
    """Write the layout as JSON (atomically, so a crash never leaves half a file)."""
    target = Path(path) if path is not None else layout_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(layout.to_dict(), indent=2))
    tmp.replace(target)
    return target

"""Ready strategies as YAML specs: `qlab.templates["sma_cross"]` is a Strategy; see `template_table()`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pandas as pd

from qlab.errors import ConfigError, did_you_mean
from qlab.strategy.spec import Strategy

FOLDER = Path(__file__).resolve().parent


class _Templates(Mapping[str, Strategy]):
    """The bundled templates by name, each loaded (and validated) on first use."""

    def __init__(self) -> None:
        self._cache: dict[str, Strategy] = {}

    def _names(self) -> list[str]:
        return sorted(p.stem for p in FOLDER.glob("*.yaml"))

    def __getitem__(self, name: str) -> Strategy:
        if name not in self._cache:
            if name not in self._names():
                from qlab.strategy.compile import unknown_template

                raise unknown_template(name, self._names())
            self._cache[name] = Strategy.load(FOLDER / f"{name}.yaml")
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return f"templates({', '.join(self._names())})"


templates = _Templates()


def template_table() -> pd.DataFrame:
    """Name and one-line description of every template."""
    return pd.DataFrame([{"name": n, "description": templates[n].description} for n in templates])


def resolve_strategy(spec: Strategy | str | dict) -> Strategy:
    """A Strategy from a Strategy, a spec dict, a template name or a .json/.yaml spec path."""
    if isinstance(spec, Strategy):
        return spec
    if isinstance(spec, dict):
        return Strategy.from_dict(spec)
    if isinstance(spec, str) and spec in templates:
        return templates[spec]
    if isinstance(spec, str | Path) and Path(spec).suffix in (".json", ".yaml", ".yml"):
        return Strategy.load(spec)
    raise ConfigError(f"strategy {spec!r} is neither a template ({', '.join(templates)}) nor a .json/.yaml spec path."
                      + did_you_mean(str(spec), list(templates)))

"""Search spaces: dotted spec paths (`fast.period`, `orders.stop_loss`, `size.value`) mapped to ranges or choices."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from qlab.errors import ConfigError, did_you_mean
from qlab.execution import ORDER_FIELDS, SIZE_FIELDS
from qlab.strategy.indicators import get_indicator
from qlab.strategy.spec import Strategy


@dataclass(frozen=True)
class Dimension:
    """One searched parameter: an int or float range (optional step, log scale) or a list of choices."""

    name: str
    kind: str  # "int", "float", "choice"
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple = ()

    def values(self) -> list[Any]:
        """Every value of the dimension (for grid search)."""
        if self.kind == "choice":
            return list(self.choices)
        if self.step is None:
            if self.kind == "int":
                return list(range(round(self.low), round(self.high) + 1))
            raise ConfigError(f"space {self.name!r}: a float range needs a step for grid search, e.g. (0.01, 0.05, 0.005)")
        n = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        vals = [self.low + k * self.step for k in range(n)]
        return [round(v) for v in vals] if self.kind == "int" else [float(round(v, 12)) for v in vals]


def _dimension(name: str, spec: Any) -> Dimension:
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"space {name!r}: an empty list of choices")
        return Dimension(name, "choice", choices=tuple(spec))
    if isinstance(spec, dict):
        unknown = [k for k in spec if k not in ("low", "high", "step", "log")]
        if unknown:
            raise ConfigError(f"space {name!r}: unknown key {unknown[0]!r}; use low, high, step, log")
        low, high, step, log = spec.get("low"), spec.get("high"), spec.get("step"), bool(spec.get("log", False))
    elif isinstance(spec, tuple) and len(spec) in (2, 3):
        low, high, step, log = spec[0], spec[1], spec[2] if len(spec) == 3 else None, False
    else:
        raise ConfigError(f"space {name!r}: {spec!r}; give (low, high), (low, high, step), a dict, or a list of choices")
    for label, v in (("low", low), ("high", high)):
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
            raise ConfigError(f"space {name!r}: {label}={v!r} must be a number")
    if not low < high:
        raise ConfigError(f"space {name!r}: low={low!r} must be below high={high!r}")
    if step is not None and not step > 0:
        raise ConfigError(f"space {name!r}: step={step!r} must be positive")
    kind = "int" if all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high, step or 1)) else "float"
    return Dimension(name, kind, float(low), float(high), None if step is None else float(step), log)


def distribution(d: Dimension) -> Any:
    """The optuna distribution of a dimension (what `suggest` would have used)."""
    import optuna

    if d.kind == "choice":
        return optuna.distributions.CategoricalDistribution(list(d.choices))
    if d.kind == "int":
        return optuna.distributions.IntDistribution(int(d.low), int(d.high), step=int(d.step or 1), log=d.log)
    return optuna.distributions.FloatDistribution(d.low, d.high, step=d.step, log=d.log)


@dataclass(frozen=True)
class Space:
    """The searched dimensions, in the order given."""

    dims: tuple[Dimension, ...]

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dims]

    def key(self, name: str) -> str:
        """The optuna parameter name of a dimension (the dotted path itself)."""
        return name

    def grid(self) -> dict[str, list[Any]]:
        return {d.name: d.values() for d in self.dims}

    def grid_size(self) -> int:
        return int(np.prod([len(v) for v in self.grid().values()]))

    def grid_points(self) -> list[dict[str, Any]]:
        names = self.names
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*self.grid().values())]

    def names_subset_of(self, paths: tuple[str, ...]) -> bool:
        return set(self.names) <= set(paths)

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Parameters for an optuna trial."""
        out = {}
        for d in self.dims:
            if d.kind == "choice":
                out[d.name] = trial.suggest_categorical(d.name, list(d.choices))
            elif d.kind == "int":
                out[d.name] = trial.suggest_int(d.name, int(d.low), int(d.high), step=int(d.step or 1), log=d.log)
            else:
                out[d.name] = trial.suggest_float(d.name, d.low, d.high, step=d.step, log=d.log)
        return out


def settable_paths(strategy: Strategy) -> list[str]:
    """Every dotted path a space may name for this strategy."""
    paths = []
    for alias, ind in strategy.indicators.items():
        paths += [f"{alias}.{p.name}" for p in get_indicator(ind.fn).params]
    return paths + [f"orders.{f}" for f in ORDER_FIELDS] + [f"size.{f}" for f in SIZE_FIELDS]


def parse_space(space: dict[str, Any], strategy: Strategy) -> Space:
    """Check every path against the strategy and every range; all problems in one ConfigError."""
    if not isinstance(space, dict) or not space:
        raise ConfigError("space must be a non-empty dict such as {'fast.period': (5, 50), 'orders.stop_loss': (0.01, 0.05)}")
    paths = settable_paths(strategy)
    problems, dims = [], []
    for name, spec in space.items():
        if name not in paths:
            problems.append(f"space {name!r}: not a parameter of strategy {strategy.name!r}." + did_you_mean(str(name), paths))
            continue
        try:
            dims.append(_dimension(name, spec))
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("; ".join(problems))
    return Space(tuple(dims))

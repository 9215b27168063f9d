"""The optimiser's fast path: recognise a moving-average crossover spec and evaluate many parameter sets in
one numba sweep (`qlab.engine.sweep`) instead of one backtest per trial, with the same numbers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from qlab.data.candles import Candles
from qlab.engine.sweep import METRICS, sweep_ma_cross
from qlab.errors import ConfigError, QlabError
from qlab.strategy.expr import Call, Node, Ref, parse
from qlab.strategy.signals import find_signal
from qlab.strategy.spec import Strategy

# sweep column -> compute_metrics name
METRIC_NAMES = {"fees": "cost_fees", "spread": "cost_spread", "slippage": "cost_slippage", "impact": "cost_impact",
                "total_cost": "cost_total"}
FAST_METRICS = {METRIC_NAMES.get(m, m) for m in METRICS}


@dataclass(frozen=True)
class MaCross:
    """A spec that is exactly a moving-average crossover: entries on crosses of `fast` over `slow`."""

    kind: str  # sma | ema
    fast: str  # indicator alias
    slow: str
    direction: str  # long | short | both

    @property
    def param_paths(self) -> tuple[str, ...]:
        return (f"{self.fast}.period", f"{self.slow}.period")


def _resolve(node: Node, strategy: Strategy) -> Node:
    """Replace a reference to a signal by the signal's own expression."""
    while isinstance(node, Ref) and node.name in strategy.signals:
        node = parse(strategy.signals[node.name])
    return node


def _cross(text: str | None, strategy: Strategy) -> tuple[str, str, str] | None:
    """('above'|'below', a, b) when the rule is exactly crosses_above(a, b) or crosses_below(a, b)."""
    if text is None:
        return None
    node = _resolve(parse(text), strategy)
    if not (isinstance(node, Call) and len(node.args) == 2 and not node.kwargs and all(isinstance(a, Ref) for a in node.args)):
        return None
    block = find_signal(node.block)
    if block is None or block.name not in ("crosses_above", "crosses_below"):
        return None
    return block.name.removeprefix("crosses_"), node.args[0].name, node.args[1].name


def as_ma_cross(strategy: Strategy) -> MaCross | None:
    """The MaCross a spec amounts to, or None when the fast path cannot reproduce it exactly."""
    inds = strategy.indicators
    if len(inds) != 2:
        return None
    fns = {i.fn for i in inds.values()}
    if len(fns) != 1 or not fns <= {"sma", "ema"} or any(i.input != "close" or set(i.params) - {"period"} for i in inds.values()):
        return None
    if strategy.data or strategy.timeframe:
        return None
    rules = {r: _cross(strategy.rules.get(r), strategy) for r in ("entry_long", "exit_long", "entry_short", "exit_short")}
    if any(strategy.rules.get(r) is not None and rules[r] is None for r in rules):
        return None
    pairs = {(a, b) for v in rules.values() if v for _, a, b in [v]}
    if len(pairs) != 1:
        return None
    fast, slow = next(iter(pairs))
    if {fast, slow} != set(inds):
        return None
    want = {"entry_long": "above", "exit_long": "below", "entry_short": "below", "exit_short": "above"}
    if any(v and v[0] != want[r] for r, v in rules.items()):
        return None
    longs, shorts = bool(rules["entry_long"]), bool(rules["entry_short"])
    if (longs and not rules["exit_long"]) or (shorts and not rules["exit_short"]):
        return None
    direction = "both" if longs and shorts else "long" if longs else "short"
    try:
        from qlab.engine.sweep import _check_fast_path

        _check_fast_path(strategy.order_spec(), strategy.size_spec())
    except (ConfigError, QlabError):
        return None
    return MaCross(next(iter(fns)), fast, slow, direction)


def _supports(names: list[str], constraints: list[tuple[str, str, float]]) -> bool:
    return all(n in FAST_METRICS for n in names) and all(m in FAST_METRICS for m, _, _ in constraints)


def evaluate_pairs(strategy: Strategy, cross: MaCross, candles: Candles, params: list[dict[str, Any]],
                   cash: float = 10_000.0) -> list[dict[str, Any]]:
    """Metrics for each parameter set, from one sweep over the distinct (fast, slow) windows."""
    aliases = (cross.fast, cross.slow)
    defaults = {p: strategy.indicators[a].params.get("period", 30) for p, a in zip(cross.param_paths, aliases, strict=True)}
    pairs = [(int(p.get(cross.param_paths[0], defaults[cross.param_paths[0]])),
              int(p.get(cross.param_paths[1], defaults[cross.param_paths[1]]))) for p in params]
    swept = {(f, s) for f, s in pairs if f < s}
    table = pd.DataFrame()
    if swept:
        table = sweep_ma_cross(candles, sorted({f for f, _ in swept}), sorted({s for _, s in swept}), kind=cross.kind,
                               direction=cross.direction, costs=strategy.cost_model(), size=strategy.size_spec(),
                               orders=strategy.order_spec(), cash=cash).set_index(["fast", "slow"])
    out = []
    for (f, s), p in zip(pairs, params, strict=True):
        if f < s:
            row = table.loc[(f, s)]
            out.append({METRIC_NAMES.get(m, m): (int(row[m]) if m == "n_trades" else float(row[m])) for m in METRICS})
        else:  # the sweep skips fast >= slow; the one-by-one path still runs such a spec, so do the same
            from qlab.research.optimize import evaluate_params

            out.append(evaluate_params(strategy, candles, p, cash))
    return out


evaluate_pairs.supports = _supports  # type: ignore[attr-defined]

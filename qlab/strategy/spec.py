"""StrategySpec: a declarative strategy (indicators, signals, entry/exit rules, orders, sizing, costs)
as a dict / JSON / YAML, validated as a whole before anything runs.

    {"version": 1, "name": "sma_cross",
     "indicators": {"fast": {"fn": "sma", "params": {"period": 20}},
                    "slow": {"fn": "sma", "params": {"period": 50}},
                    "rsi": {"fn": "rsi"}, "macd": {"fn": "macd"}},      # components: macd.macd, macd.signal, macd.hist
     "signals": {"up": "crossover(fast, slow)", "down": "crossunder(fast, slow)"},
     "entry_long": "up & (rsi < 70)", "exit_long": "down",
     "orders": {"stop_loss": 0.03}, "size": {"mode": "percent", "value": 1.0}, "costs": "default"}

Names an expression may use: the candle columns (open high low close volume, and hl2 hlc3 ohlc4), the
indicators (a multi-output one by component: `bb.upper`), the signals, and extra data series given at
compile time (e.g. `funding_rate`). An indicator with `"input": NAME` reads that series instead of close.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from qlab.costs import CostModel, FeeSchedule, FixedSlippage, FixedSpread, SqrtImpact
from qlab.errors import QlabError, StrategyError, did_you_mean
from qlab.execution import ORDER_FIELDS, SIZE_FIELDS, OrderSpec, SizeSpec, make_order_spec, make_size_spec
from qlab.strategy.expr import Node, check, try_parse
from qlab.strategy.indicators import get_indicator

SPEC_VERSION = 1
RULES = ("entry_long", "exit_long", "entry_short", "exit_short")
CANDLE_NAMES = ("open", "high", "low", "close", "volume", "hl2", "hlc3", "ohlc4")
TOP_KEYS = ("version", "name", "description", "timeframe", "indicators", "signals", *RULES, "orders", "size", "costs", "data")
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class IndicatorSpec:
    """One named indicator: registry function, parameters and (for single-input ones) the input series."""

    fn: str
    params: dict[str, Any] = field(default_factory=dict)
    input: str = "close"


@dataclass(frozen=True)
class Strategy:
    """A validated strategy spec. Build it with `Strategy.from_dict`, `from_json`, `from_yaml` or `load`."""

    name: str
    indicators: dict[str, IndicatorSpec]
    signals: dict[str, str]
    rules: dict[str, str]  # entry_long, exit_long, entry_short, exit_short -> expression text
    orders: dict[str, Any] = field(default_factory=dict)
    size: dict[str, Any] = field(default_factory=dict)
    costs: Any = "default"
    description: str = ""
    timeframe: str | None = None
    data: tuple[str, ...] = ()  # extra series the spec needs at compile time, e.g. ("funding_rate",)
    version: int = SPEC_VERSION

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, spec: dict[str, Any], *, validate: bool = True) -> Strategy:
        """Build from a plain dict; every problem of the spec is reported at once in one StrategyError."""
        problems = spec_problems(spec)
        if problems and validate:
            name = spec.get("name", "?") if isinstance(spec, dict) else "?"
            raise StrategyError(f"strategy {name!r} has {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
        inds = {
            alias: IndicatorSpec(fn=str(d.get("fn", "")).strip().lower(), params=dict(d.get("params") or {}),
                                 input=str(d.get("input", "close")))
            for alias, d in (spec.get("indicators") or {}).items()
        }
        return cls(
            name=str(spec.get("name", "strategy")), indicators=inds, signals=dict(spec.get("signals") or {}),
            rules={r: spec[r] for r in RULES if spec.get(r)}, orders=dict(spec.get("orders") or {}),
            size=dict(spec.get("size") or {}), costs=spec.get("costs", "default"),
            description=str(spec.get("description", "")), timeframe=spec.get("timeframe"),
            data=tuple(spec.get("data") or ()), version=int(spec.get("version", SPEC_VERSION)),
        )

    def to_dict(self) -> dict[str, Any]:
        """The plain dict form; `Strategy.from_dict(s.to_dict()) == s`."""
        out: dict[str, Any] = {"version": self.version, "name": self.name}
        if self.description:
            out["description"] = self.description
        if self.timeframe:
            out["timeframe"] = self.timeframe
        if self.data:
            out["data"] = list(self.data)
        out["indicators"] = {
            alias: {"fn": ind.fn, **({"params": dict(ind.params)} if ind.params else {}),
                    **({"input": ind.input} if ind.input != "close" else {})}
            for alias, ind in self.indicators.items()
        }
        out["signals"] = dict(self.signals)
        out.update(self.rules)
        if self.orders:
            out["orders"] = dict(self.orders)
        if self.size:
            out["size"] = dict(self.size)
        out["costs"] = self.costs
        return out

    @classmethod
    def from_json(cls, text: str) -> Strategy:
        """Parse a JSON spec."""
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise StrategyError(f"the spec is not valid JSON: {exc}") from None

    def to_json(self, indent: int = 2) -> str:
        """The spec as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_yaml(cls, text: str) -> Strategy:
        """Parse a YAML spec (safe loader)."""
        import yaml

        try:
            return cls.from_dict(yaml.safe_load(text))
        except yaml.YAMLError as exc:
            raise StrategyError(f"the spec is not valid YAML: {exc}") from None

    def to_yaml(self) -> str:
        """The spec as YAML text."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def load(cls, path: str | Path) -> Strategy:
        """Read a .json, .yaml or .yml spec file."""
        p = Path(path)
        if not p.is_file():
            raise StrategyError(f"no spec file {str(p)!r}; check the path")
        text = p.read_text()
        return cls.from_json(text) if p.suffix == ".json" else cls.from_yaml(text)

    def save(self, path: str | Path) -> Path:
        """Write the spec as JSON (.json) or YAML (.yaml/.yml)."""
        p = Path(path)
        p.write_text(self.to_json() if p.suffix == ".json" else self.to_yaml())
        return p

    def with_params(self, **overrides: Any) -> Strategy:
        """A copy with parameters replaced by dotted paths: `with_params(**{"fast.period": 10, "orders.stop_loss": 0.02})`."""
        spec = self.to_dict()
        for path, value in overrides.items():
            set_path(spec, path, value)
        return Strategy.from_dict(spec)

    def order_spec(self) -> OrderSpec:
        """The spec's orders as an OrderSpec."""
        return make_order_spec(self.orders)

    def size_spec(self) -> SizeSpec:
        """The spec's sizing as a SizeSpec."""
        return make_size_spec(self.size)

    def cost_model(self) -> CostModel | None:
        """The spec's costs as a CostModel (None when the spec says `costs: null`)."""
        return cost_model_from(self.costs)


def set_path(spec: dict[str, Any], path: str, value: Any) -> None:
    """Set `indicator.param`, `orders.field`, `size.field` or a top-level key of a spec dict."""
    head, _, tail = path.partition(".")
    if head in spec.get("indicators", {}) and tail:
        spec["indicators"][head].setdefault("params", {})[tail] = value
    elif head in ("orders", "size") and tail:
        spec.setdefault(head, {})[tail] = value
    elif not tail and head in TOP_KEYS:
        spec[head] = value
    else:
        known = [f"{a}.<param>" for a in spec.get("indicators", {})] + ["orders.<field>", "size.<field>"]
        raise StrategyError(f"cannot set {path!r}: use one of {', '.join(known)}." + did_you_mean(head, list(spec.get("indicators", {}))))


def cost_model_from(costs: Any) -> CostModel | None:
    """'default' -> CostModel(); None -> None (no costs, spelled out); a dict of parts -> a CostModel."""
    if costs == "default":
        return CostModel()
    if costs is None or costs == "none":
        return None
    if isinstance(costs, dict):
        model = CostModel.for_market(costs["exchange"], costs.get("symbol", "BTC/USDT")) if "exchange" in costs else CostModel()
        parts: dict[str, Any] = {}
        if "maker" in costs or "taker" in costs:
            parts["fees"] = FeeSchedule(maker=float(costs.get("maker", 0.001)), taker=float(costs.get("taker", 0.001)))
        if "spread_bps" in costs:
            parts["spread"] = FixedSpread(float(costs["spread_bps"]))
        if "slippage_bps" in costs:
            parts["slippage"] = FixedSlippage(float(costs["slippage_bps"]))
        if "impact_k" in costs:
            parts["impact"] = None if costs["impact_k"] in (None, 0) else SqrtImpact(k=float(costs["impact_k"]))
        return model.with_(**parts) if parts else model
    raise StrategyError(f"costs={costs!r}; use 'default', null, or a dict such as {{exchange: binance, spread_bps: 2}}")


COST_KEYS = ("exchange", "symbol", "maker", "taker", "spread_bps", "slippage_bps", "impact_k")


# -- validation -------------------------------------------------------------------------------------
def spec_problems(spec: Any) -> list[str]:
    """Every problem of a spec dict, each with its location: names, parameters, types, expressions, cycles."""
    if not isinstance(spec, dict):
        return [f"a strategy spec is a mapping (dict / JSON object / YAML mapping), got {type(spec).__name__}"]
    problems: list[str] = []
    for key in spec:
        if key not in TOP_KEYS:
            problems.append(f"{key}: unknown key; use {', '.join(TOP_KEYS)}." + did_you_mean(str(key), TOP_KEYS))
    version = spec.get("version", SPEC_VERSION)
    if not isinstance(version, int) or version > SPEC_VERSION or version < 1:
        problems.append(f"version: {version!r} is not a spec version this qlab reads (1..{SPEC_VERSION}); upgrade qlab")
    inds = spec.get("indicators") or {}
    sigs = spec.get("signals") or {}
    data = list(spec.get("data") or [])
    if not isinstance(inds, dict):
        return [*problems, "indicators: must be a mapping of name -> {fn: ..., params: {...}}"]
    if not isinstance(sigs, dict):
        return [*problems, "signals: must be a mapping of name -> expression"]
    names: dict[str, str] = {c: "float" for c in CANDLE_NAMES}
    for d in data:
        if not (isinstance(d, str) and IDENT.match(d)):
            problems.append(f"data: {d!r} is not a valid series name")
        names[str(d)] = "float"
    graph: dict[str, set[str]] = {}
    for alias, d in inds.items():
        where = f"indicators.{alias}"
        problems += _name_problems(alias, where, names)
        if not isinstance(d, dict):
            problems.append(f"{where}: must be a mapping such as {{fn: sma, params: {{period: 20}}}}, got {d!r}")
            continue
        for key in d:
            if key not in ("fn", "params", "input"):
                problems.append(f"{where}.{key}: unknown key; use fn, params, input." + did_you_mean(str(key), ("fn", "params", "input")))
        try:
            ind = get_indicator(str(d.get("fn", "")))
        except StrategyError as exc:
            problems.append(f"{where}.fn: {exc}")
            names[alias] = "float"  # keep the name known, so rules using it do not report it again
            continue
        params = d.get("params") or {}
        if not isinstance(params, dict):
            problems.append(f"{where}.params: must be a mapping of parameter -> value, got {params!r}")
        else:
            problems += ind.check_params(params, f"{where}.params")
        source = d.get("input", "close")
        if source != "close":
            if not ind.single_input:
                problems.append(f"{where}.input: {ind.name} reads {', '.join(ind.inputs)}; only single-input indicators take an input")
            graph[alias] = {str(source).split(".")[0]}
        for out in ind.outputs:
            names[alias if ind.outputs == ("value",) else f"{alias}.{out}"] = "float"
    for alias, d in inds.items():  # inputs may name indicators defined later
        if isinstance(d, dict) and d.get("input", "close") != "close" and str(d["input"]) not in names:
            problems.append(f"indicators.{alias}.input: unknown series {d['input']!r}." + did_you_mean(str(d["input"]), names))
    parsed: dict[str, Node] = {}
    for name in sigs:
        problems += _name_problems(name, f"signals.{name}", names)
        names[name] = "bool"
    entries = [(f"signals.{k}", k, v) for k, v in sigs.items()] + [(r, r, spec[r]) for r in RULES if spec.get(r) is not None]
    for where, key, text in entries:
        node, errs = try_parse(text, where)
        problems += errs
        if node is not None:
            parsed[where] = node
            problems += check(node, names, where, kinds=names, expect="bool")
            if where.startswith("signals."):
                graph[key] = {r.split(".")[0] for r in node.refs()}
    if not any(spec.get(r) for r in ("entry_long", "entry_short")):
        problems.append("entry_long / entry_short: the strategy has no entry rule; add at least one")
    problems += _cycle_problems(graph)
    problems += _engine_problems(spec)
    return problems


def _name_problems(name: Any, where: str, taken: dict[str, str]) -> list[str]:
    if not (isinstance(name, str) and IDENT.match(name)):
        return [f"{where}: {name!r} is not a valid name (letters, digits and _ , not starting with a digit)"]
    if name in taken:
        return [f"{where}: the name {name!r} is already used (by a candle column, data series, indicator or signal)"]
    return []


def _cycle_problems(graph: dict[str, set[str]]) -> list[str]:
    """Circular references among indicators (via input) and signals, each cycle named once."""
    problems, seen, state = [], set(), {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt):], nxt] if nxt in path else [node, nxt]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    problems.append(f"circular reference: {' -> '.join(cycle)}; break the loop")
            elif state.get(nxt) is None and nxt in graph:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in graph:
        if state.get(start) is None:
            visit(start, [start])
    return problems


def _engine_problems(spec: dict[str, Any]) -> list[str]:
    problems = []
    for key, allowed, make in (("orders", ORDER_FIELDS, make_order_spec), ("size", SIZE_FIELDS, make_size_spec)):
        d = spec.get(key) or {}
        if not isinstance(d, dict):
            problems.append(f"{key}: must be a mapping, got {d!r}")
            continue
        unknown = [k for k in d if k not in allowed]
        problems += [f"{key}.{k}: unknown field; use {', '.join(allowed)}." + did_you_mean(str(k), allowed) for k in unknown]
        if not unknown:
            try:
                make(d)
            except (QlabError, ValueError, TypeError) as exc:
                problems.append(f"{key}: {exc}")
    costs = spec.get("costs", "default")
    if isinstance(costs, dict):
        problems += [f"costs.{k}: unknown field; use {', '.join(COST_KEYS)}." + did_you_mean(str(k), COST_KEYS)
                     for k in costs if k not in COST_KEYS]
    if not problems:
        try:
            cost_model_from(costs)
        except (StrategyError, ValueError, TypeError, KeyError) as exc:
            problems.append(f"costs: {exc}")
    return problems


def spec_fields() -> dict[str, tuple[str, ...]]:
    """The accepted keys of each section (for editors and the builder widgets)."""
    return {"top": TOP_KEYS, "orders": ORDER_FIELDS, "size": SIZE_FIELDS, "costs": COST_KEYS,
            "strategy": tuple(f.name for f in fields(Strategy))}

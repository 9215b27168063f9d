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
import keyword
import math
import numbers
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from qlab.costs import CostModel, FeeSchedule, FixedSlippage, FixedSpread, SqrtImpact
from qlab.data.candles import TIMEFRAMES
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
        spec = _plain(spec)
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
            name=str(spec.get("name") or "strategy"), indicators=inds, signals=dict(spec.get("signals") or {}),
            rules={r: spec[r] for r in RULES if spec.get(r)}, orders=dict(spec.get("orders") or {}),
            size=dict(spec.get("size") or {}), costs=spec.get("costs", "default"),
            description=str(spec.get("description") or ""), timeframe=spec.get("timeframe"),
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
    if isinstance(version, bool) or not isinstance(version, int) or version > SPEC_VERSION or version < 1:
        problems.append(f"version: {version!r} is not a spec version this qlab reads (1..{SPEC_VERSION}); "
                        + ("upgrade qlab" if isinstance(version, int) and version > SPEC_VERSION else f"write version: {SPEC_VERSION}"))
    for key in ("name", "description"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            problems.append(f"{key}: must be text, got {spec[key]!r} ({type(spec[key]).__name__})")
    timeframe = spec.get("timeframe")
    if timeframe is not None and (not isinstance(timeframe, str) or timeframe not in TIMEFRAMES):
        problems.append(f"timeframe: {timeframe!r} is not a timeframe; use one of {', '.join(TIMEFRAMES)} (or leave it out)."
                        + did_you_mean(str(timeframe), TIMEFRAMES))
    inds, sigs, data = (_section(spec, key, kind) for key, kind in (("indicators", dict), ("signals", dict), ("data", list)))
    if inds is None:
        return [*problems, f"indicators: must be a mapping of name -> {{fn: ..., params: {{...}}}}, got {spec['indicators']!r}"]
    if sigs is None:
        return [*problems, f"signals: must be a mapping of name -> expression, got {spec['signals']!r}"]
    if data is None:
        problems.append(f"data: must be a list of series names such as [funding_rate], got {spec['data']!r}")
        data = []
    names: dict[str, str] = {c: "float" for c in CANDLE_NAMES}
    for d in data:
        problems += _name_problems(d, "data", names)
        names[str(d)] = "float"
    graph: dict[str, set[str]] = {}
    groups: dict[str, tuple[str, ...]] = {}  # multi-output indicators: alias -> outputs
    for alias, d in inds.items():
        where = f"indicators.{alias}"
        problems += _name_problems(alias, where, names)
        if not isinstance(d, dict):
            problems.append(f"{where}: must be a mapping such as {{fn: sma, params: {{period: 20}}}}, got {d!r}")
            names[str(alias)] = "float"  # keep the name known, so rules using it do not report it again
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
        if ind.outputs != ("value",):
            groups[str(alias)] = ind.outputs
    for alias, d in inds.items():  # inputs may name indicators defined later
        source = d.get("input", "close") if isinstance(d, dict) else "close"
        if source == "close" or (isinstance(source, str) and names.get(source) == "float"):
            continue
        if isinstance(source, str) and source in sigs:
            problems.append(f"indicators.{alias}.input: {source!r} is a signal (true/false); an indicator reads a number series")
        elif isinstance(source, str) and source in groups:
            problems.append(f"indicators.{alias}.input: {source!r} has several outputs; name one of "
                            + ", ".join(f"{source}.{o}" for o in groups[source]))
        else:
            problems.append(f"indicators.{alias}.input: unknown series {source!r}." + did_you_mean(str(source), names))
    parsed: dict[str, Node] = {}
    for name in sigs:
        problems += _name_problems(name, f"signals.{name}", {**names, **dict.fromkeys(groups, "group")})
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
    problems += _cycle_problems(graph, set(sigs))
    problems += _engine_problems(spec)
    return problems


def _plain(value: Any, depth: int = 0) -> Any:
    """numpy scalars (e.g. a period from np.arange) as Python numbers, inside dicts and lists too."""
    if isinstance(value, dict | list | tuple) and depth > 20:  # a spec is a few levels deep; YAML `&a [*a]` is endless
        raise StrategyError("the spec is nested more than 20 levels deep (or contains itself, e.g. through a YAML alias); "
                            "write it as plain mappings and lists")
    if isinstance(value, dict):
        return {k: _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v, depth + 1) for v in value)
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def _section(spec: dict[str, Any], key: str, kind: type) -> Any:
    """spec[key] when it is a `kind` (missing or null: empty), else None."""
    value = spec.get(key)
    if value is None:
        return kind()
    return value if isinstance(value, kind) else None


def _name_problems(name: Any, where: str, taken: dict[str, str]) -> list[str]:
    if not (isinstance(name, str) and IDENT.match(name)):
        return [f"{where}: {name!r} is not a valid name (letters, digits and _ , not starting with a digit)"]
    if keyword.iskeyword(name) or name.startswith("__") or name.endswith("__"):
        return [f"{where}: {name!r} is a reserved word that expressions cannot refer to; pick another name"]
    if name in taken or name in RULES:
        return [f"{where}: the name {name!r} is already used (by a candle column, data series, indicator, signal or rule)"]
    return []


def _cycle_problems(graph: dict[str, set[str]], signal_names: set[str]) -> list[str]:
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
                    where = f"signals.{cycle[0]}" if cycle[0] in signal_names else f"indicators.{cycle[0]}.input"
                    problems.append(f"{where}: circular reference {' -> '.join(cycle)}; break the loop")
            elif state.get(nxt) is None and nxt in graph:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in graph:
        if state.get(start) is None:
            visit(start, [start])
    return problems


MAX_BARS = 100_000  # upper bound of the whole-number order / size fields (TA-Lib's longest period)


def _field_problem(where: str, kind: str, value: Any) -> str | None:
    """A value that does not have the type a field declares ('float', 'float | None', 'int', 'str | int', Literal)."""
    if value is None and "None" in kind:
        return None
    if kind.startswith("Literal") or kind == "str":
        return None if isinstance(value, str) else f"{where}: expected one of the words in {kind[7:] or 'text'}, got {value!r}"
    if kind == "str | int" and isinstance(value, str):
        return None
    if "int" in kind:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= MAX_BARS:
            words = "'gtc', 'ioc' or " if "str" in kind else ""
            return f"{where}: expected {words}a whole number of bars from 1 to {MAX_BARS}, got {value!r}"
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return f"{where}: expected a finite number, got {value!r} ({type(value).__name__})"
    return None


def _engine_problems(spec: dict[str, Any]) -> list[str]:
    problems = []
    for key, cls, make in (("orders", OrderSpec, make_order_spec), ("size", SizeSpec, make_size_spec)):
        d = _section(spec, key, dict)
        if d is None:
            problems.append(f"{key}: must be a mapping, got {spec[key]!r}")
            continue
        kinds = {f.name: str(f.type) for f in fields(cls)}
        unknown = [k for k in d if k not in kinds]
        problems += [f"{key}.{k}: unknown field; use {', '.join(kinds)}." + did_you_mean(str(k), kinds) for k in unknown]
        wrong = [p for k, v in d.items() if k in kinds and (p := _field_problem(f"{key}.{k}", kinds[k], v))]
        problems += wrong
        if not unknown and not wrong:
            try:
                make(d)
            except (QlabError, ValueError, TypeError) as exc:
                problems.append(f"{key}: {exc}")
    if not problems:
        orders, size = _section(spec, "orders", dict), _section(spec, "size", dict)
        if size.get("mode") == "risk" and orders.get("stop_loss") is None and orders.get("stop_loss_atr") is None:
            problems.append("size.mode: 'risk' sizes each entry by its stop distance; set orders.stop_loss (a fraction) "
                            "or orders.stop_loss_atr (an ATR multiple)")
    costs = spec.get("costs", "default")
    if isinstance(costs, dict):
        problems += [f"costs.{k}: unknown field; use {', '.join(COST_KEYS)}." + did_you_mean(str(k), COST_KEYS)
                     for k in costs if k not in COST_KEYS]
        for k, v in costs.items():
            if k in ("exchange", "symbol") and not isinstance(v, str):
                problems.append(f"costs.{k}: expected text such as {'binance' if k == 'exchange' else 'BTC/USDT'}, got {v!r}")
            elif k in COST_KEYS[2:] and not (v is None and k == "impact_k"):
                problem = _field_problem(f"costs.{k}", "float", v)
                problems += [problem] if problem else []
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

"""Compile a Strategy on candles: every indicator column, every signal, and the four boolean rule columns,
all on the candles' own index; and a diagnosis of rules that are (almost) never true."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from qlab.data.candles import Candles, infer_timeframe, timeframe_delta, validate_candles
from qlab.errors import NotFoundError, StrategyError, did_you_mean
from qlab.strategy.expr import Call, Node, Not, Op, evaluate, parse
from qlab.strategy.indicators import get_indicator
from qlab.strategy.spec import RULES, Strategy


def _base_namespace(candles: Candles) -> dict[str, pd.Series]:
    o, h, lo, c = (candles[k] for k in ("open", "high", "low", "close"))
    return {"open": o, "high": h, "low": lo, "close": c, "volume": candles["volume"],
            "hl2": (h + lo) / 2, "hlc3": (h + lo + c) / 3, "ohlc4": (o + h + lo + c) / 4}


def align_data(series: pd.Series, index: pd.DatetimeIndex, timeframe: str) -> pd.Series:
    """An event series (e.g. funding rates) as known at each bar's close: the last value stamped before it."""
    if not isinstance(series, pd.Series) or not isinstance(series.index, pd.DatetimeIndex) or series.index.tz is None:
        raise StrategyError("extra data must be a pandas Series with a UTC DatetimeIndex (e.g. qlab.load_sample_funding(...))")
    if not (pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype)) \
            or pd.api.types.is_complex_dtype(series.dtype):
        raise StrategyError(f"extra data {series.name!r} holds {series.dtype} values; give numbers (e.g. pd.to_numeric(series))")
    s = series.sort_index(kind="stable")
    closes = (index + timeframe_delta(timeframe)).as_unit("ns").asi8
    known = np.searchsorted(s.index.as_unit("ns").asi8, closes, side="left")  # events strictly before the close
    values = np.where(known > 0, s.to_numpy(dtype=np.float64)[np.maximum(known - 1, 0)], np.nan)
    return pd.Series(values, index=index, name=series.name)


def _indicator_order(strategy: Strategy) -> list[str]:
    """Indicators ordered so each comes after the indicator it reads (validation rules out cycles)."""
    done: list[str] = []

    def visit(alias: str) -> None:
        if alias in done:
            return
        source = strategy.indicators[alias].input.split(".")[0]
        if source in strategy.indicators:
            visit(source)
        done.append(alias)

    for alias in strategy.indicators:
        visit(alias)
    return done


def _signal_order(strategy: Strategy, nodes: dict[str, Node]) -> list[str]:
    done: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        for ref in sorted(nodes[name].refs()):
            if ref in nodes:
                visit(ref)
        done.append(name)

    for name in strategy.signals:
        visit(name)
    return done


def _timeframe(strategy: Strategy, index: pd.DatetimeIndex) -> str:
    """The candles' timeframe; StrategyError when the spec names another one (extra data would be misaligned)."""
    if strategy.timeframe and len(index) < 2:
        return strategy.timeframe
    found = infer_timeframe(index)
    if strategy.timeframe and strategy.timeframe != found:
        raise StrategyError(f"strategy {strategy.name!r} is written for timeframe {strategy.timeframe!r}, but the candles are "
                            f"{found} bars; load {strategy.timeframe} candles or change the spec's timeframe")
    return found


def warmup_bars(strategy: Strategy) -> int:
    """Bars before every indicator has a value (lookbacks add up along input chains)."""
    total: dict[str, int] = {}
    for alias in _indicator_order(strategy):
        spec = strategy.indicators[alias]
        ind = get_indicator(spec.fn)
        before = total.get(spec.input.split(".")[0], 0)
        total[alias] = before + ind.lookback(**ind.resolve(spec.params))
    return max(total.values(), default=0)


def compile_strategy(strategy: Strategy, candles: Candles, data: dict[str, pd.Series] | None = None) -> pd.DataFrame:
    """Indicator columns, signal columns and bool entry_long/exit_long/entry_short/exit_short on candles.index."""
    return _compile(strategy, candles, data)[0]


def _compile(strategy: Strategy, candles: Candles, data: dict[str, pd.Series] | None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The compiled frame, and the namespace the rules were evaluated in (each series with its own warm-up)."""
    validate_candles(candles, where=f"candles for strategy {strategy.name!r}")
    data = dict(data or {})
    missing = [d for d in strategy.data if d not in data]
    if missing:
        raise StrategyError(f"strategy {strategy.name!r} needs the data series {missing}; pass data={{{missing[0]!r}: series}}")
    need = warmup_bars(strategy)
    if need >= len(candles):
        raise StrategyError(
            f"strategy {strategy.name!r} needs {need} bars of warm-up, but the candles have only {len(candles)}; "
            "load more history or shorten the indicator periods"
        )
    index = candles.index
    ns: dict[str, Any] = _base_namespace(candles)
    timeframe = _timeframe(strategy, index) if strategy.timeframe or strategy.data else None
    for name in strategy.data:
        ns[name] = align_data(data[name], index, timeframe)
    columns: dict[str, pd.Series] = {}
    for alias in _indicator_order(strategy):
        spec = strategy.indicators[alias]
        ind = get_indicator(spec.fn)
        frame = pd.DataFrame({"close": ns[spec.input]}, index=index) if ind.single_input else candles[list(ind.inputs)]
        values = ind.compute(frame, **ind.resolve(spec.params, where=f"indicators.{alias}.params"))
        for out in ind.outputs:
            name = alias if ind.outputs == ("value",) else f"{alias}.{out}"
            ns[name] = columns[name] = values[out]
    nodes = {name: parse(text, f"signals.{name}") for name, text in strategy.signals.items()}
    for name in _signal_order(strategy, nodes):
        ns[name] = columns[name] = evaluate(nodes[name], ns, index, f"signals.{name}")
    warm = need
    for rule in RULES:
        text = strategy.rules.get(rule)
        if text is None:
            columns[rule] = pd.Series(False, index=index)
            continue
        value = evaluate(parse(text, rule), ns, index, rule)
        warm = max(warm, int(value.attrs.get("warmup", 0)))
        if warm >= len(index):
            raise StrategyError(
                f"strategy {strategy.name!r}: {rule} `{text}` has no value on any of the {len(index)} bars (its warm-up "
                "covers them all: a window longer than the data, or an input without values); load more history, "
                "shorten the windows, or check the extra data")
        columns[rule] = value.astype(bool)
    out = pd.DataFrame(columns, index=index)
    out.attrs["warmup"] = warm
    return out, ns


def strategy_signals(strategy: Strategy, candles: Candles, data: dict[str, pd.Series] | None = None) -> pd.DataFrame:
    """Only the four rule columns, as `qlab.backtest` takes them."""
    return compile_strategy(strategy, candles, data)[list(RULES)]


# -- diagnosis ----------------------------------------------------------------------------------------
@dataclass
class Diagnosis:
    """How often each rule and each of its parts was true; which part kept a rule from ever firing."""

    table: pd.DataFrame  # rule, part, true_bars, share
    bars: int
    warmup: int

    @property
    def never(self) -> list[str]:
        """Rules that were never true."""
        rules = self.table[self.table.part == "(whole rule)"]
        return list(rules[rules.true_bars == 0].rule)

    def __str__(self) -> str:
        lines = [f"{self.bars} bars, of which the first {self.warmup} are warm-up"]
        for rule, group in self.table.groupby("rule", sort=False):
            whole = group[group.part == "(whole rule)"].iloc[0]
            verdict = "never true" if whole.true_bars == 0 else f"true on {whole.true_bars} bars ({whole.share:.2%})"
            lines.append(f"{rule}: {verdict}")
            for row in group[group.part != "(whole rule)"].itertuples():
                flag = "  <- never true: this part blocks the rule" if row.true_bars == 0 and whole.true_bars == 0 else ""
                lines.append(f"    `{row.part}`: true on {row.true_bars} bars ({row.share:.2%}){flag}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return self.table.to_html(index=False)


def _parts(node: Node) -> list[Node]:
    """The conjuncts of an `a & b & c` rule (or the disjuncts of `a | b`), else the callable blocks inside."""
    if isinstance(node, Op) and node.op in ("&", "|"):
        return _flatten(node, node.op)
    if isinstance(node, Not):
        return [node.x]
    if isinstance(node, Call):
        return [a for a in node.args if not isinstance(a, Op) or a.op in ("&", "|")]
    return []


def _flatten(node: Node, op: str) -> list[Node]:
    if isinstance(node, Op) and node.op == op:
        return _flatten(node.left, op) + _flatten(node.right, op)
    return [node]


def _signal_parts(strategy: Strategy, node: Node) -> list[Node]:
    """The signals a rule reads (directly or through other signals), each followed by its parts."""
    out: list[Node] = []
    queue, seen = sorted(node.refs()), set()
    while queue:
        name = queue.pop(0)
        if name in strategy.signals and name not in seen:
            seen.add(name)
            signal = parse(strategy.signals[name], f"signals.{name}")
            out += [signal, *_parts(signal)]
            queue += sorted(signal.refs())
    return out


def diagnose(strategy: Strategy, candles: Candles, data: dict[str, pd.Series] | None = None) -> Diagnosis:
    """Count, per rule and per part of it (and per signal it uses), the bars on which it was true."""
    compiled, ns = _compile(strategy, candles, data)  # not the frame's columns: they carry the frame's warm-up in attrs
    rows = []
    for rule in RULES:
        text = strategy.rules.get(rule)
        if text is None:
            continue
        node = parse(text, rule)
        rows.append((rule, "(whole rule)", int(compiled[rule].sum())))
        seen = set()
        for part in _parts(node) + _signal_parts(strategy, node):
            label = part.to_text()
            if label in seen:
                continue
            seen.add(label)
            try:
                value = evaluate(part, ns, candles.index, rule)
            except StrategyError:
                continue
            if value.dtype == bool:
                rows.append((rule, label, int(value.sum())))
    table = pd.DataFrame(rows, columns=["rule", "part", "true_bars"])
    table["share"] = table["true_bars"] / len(candles)
    return Diagnosis(table, len(candles), int(compiled.attrs.get("warmup", 0)))


class UnknownTemplateError(StrategyError, NotFoundError):
    """A template name that does not exist (a KeyError too, so `name in qlab.templates` and `.get` work)."""


def unknown_template(name: str, known: list[str]) -> StrategyError:
    """The error for a template name that does not exist."""
    return UnknownTemplateError(f"no template {name!r}; templates: {', '.join(known)}." + did_you_mean(name, known))

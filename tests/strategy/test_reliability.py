"""Reliability of the strategy builder: 500 random valid specs (drawn from the indicator and signal
registries) compile and run through the backtester; randomly broken specs are refused by validation
with a StrategyError that names the place of each problem, never with a traceback from pandas, numpy
or TA-Lib.

Run with `-s` to see the counts: "N random specs ran, M failed".
"""

from __future__ import annotations

import copy
import json
import random
import re
import traceback
import warnings
from collections import Counter
from functools import cache

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qlab
from qlab.errors import StrategyError
from qlab.execution import ENTRY_TYPES, SIZE_MODES
from qlab.strategy.compile import compile_strategy
from qlab.strategy.indicators import ALIASES, REGISTRY
from qlab.strategy.signals import SIGNALS, signal_names
from qlab.strategy.spec import CANDLE_NAMES, RULES, Strategy

BARS = 1500
PERIOD_CAP = 100  # indicator periods are drawn up to this (the registry allows 1000), so warm-up fits in BARS
N_CAP = 50  # signal-block windows likewise
VALID_EXAMPLES = 500
BROKEN_EXAMPLES = 300

# the built-in registries only: user indicators registered by other tests are not part of the draw
BUILTIN = {k: d for k, d in REGISTRY.items() if d.source in ("ta-lib", "qlab")}
BLOCKS = dict(SIGNALS)
BLOCK_ALIASES = {a: d.name for d in BLOCKS.values() for a in d.aliases}


@cache
def candles() -> pd.DataFrame:
    return qlab.load_sample("BTC/USDT", "1h").iloc[-BARS:]


@cache
def funding() -> pd.Series:
    """Real XRP funding values, restamped every 8 h over the BTC candles with the real millisecond jitter."""
    real = qlab.load_sample_funding("XRP/USDT:USDT")
    c = candles()
    n = len(c) // 8 + 2
    jitter = pd.to_timedelta(np.resize((real.index - real.index.floor("s")).asi8, n), unit="ns")
    stamps = pd.date_range(c.index[0].floor("D"), periods=n, freq="8h") + jitter
    return pd.Series(np.resize(real.to_numpy(), n), index=stamps, name="funding_rate")


# ---------------------------------------------------------------- valid specs
class SpecGen:
    """A random valid spec from the registries; every choice comes from `rng` (so hypothesis drives it)."""

    def __init__(self, rng: random.Random):
        self.r = rng

    def chance(self, p: float) -> bool:
        return self.r.random() < p

    # -- numbers ---------------------------------------------------------------------------------------
    def param_value(self, p, cap: int | None = None):
        lo, hi = p.min, p.max if cap is None else min(p.max, cap)
        if p.kind is int:
            roll = self.r.random()
            if roll < 0.15:
                return int(lo)
            if roll < 0.25:
                return int(hi)
            return self.r.randint(int(lo), int(min(hi, max(lo, 50))))
        roll = self.r.random()
        if roll < 0.12:
            return float(lo)
        if roll < 0.24:
            return float(hi)
        return round(self.r.uniform(lo, hi), 4)

    def number(self) -> str:
        return repr(self.r.choice([0, 1, -1, 2, 2.5, 30, 50, 70, 100, 0.001, 1e-09, 1e6, -0.5, 0.0002,
                                   round(self.r.uniform(-100, 100), 3)]))

    # -- indicators --------------------------------------------------------------------------------------
    def indicator_params(self, d) -> dict:
        for _ in range(20):
            chosen = [p for p in d.params if self.chance(0.7)]
            params = {p.name: self.param_value(p, PERIOD_CAP) for p in chosen}
            if not d.check_params(params, "x"):
                return params
        return {}

    def indicators(self, data: list[str]) -> tuple[dict, list[str]]:
        inds: dict[str, dict] = {}
        floats = list(CANDLE_NAMES) + data
        depth: dict[str, int] = {}
        for i in range(self.r.randint(0, 5)):
            key = self.r.choice([*sorted(BUILTIN), "bb"])  # "bb" is an alias of bbands
            d = BUILTIN[ALIASES.get(key, key)]
            alias = f"{d.name}_{i}"
            if self.chance(0.2):  # short names, some of them the names of signal blocks
                alias = self.r.choice(["fast", "slow", "trend", "rising", "crossover", "x", "near"])
                alias = alias if alias not in inds else f"{alias}{i}"
            spec: dict = {"fn": key.upper() if self.chance(0.1) else key}
            params = self.indicator_params(d)
            if params or self.chance(0.2):
                spec["params"] = params
            level = 0
            if d.single_input and self.chance(0.4):
                source = self.r.choice([f for f in floats if depth.get(f.split(".")[0], 0) < 2])
                level = depth.get(source.split(".")[0], 0) + 1
                if source != "close" or self.chance(0.5):
                    spec["input"] = source
            depth[alias] = level
            inds[alias] = spec
            floats += [alias] if d.outputs == ("value",) else [f"{alias}.{o}" for o in d.outputs]
        keys = list(inds)
        self.r.shuffle(keys)  # an input may name an indicator defined later
        return {k: inds[k] for k in keys}, floats

    # -- expressions -------------------------------------------------------------------------------------
    def fexpr(self, depth: int) -> str:
        roll = self.r.random()
        if depth <= 0 or roll < 0.55:
            return self.r.choice(self.floats)
        if roll < 0.65:
            return self.number()
        if roll < 0.92:
            op = self.r.choice("+-*/")
            right = self.fexpr(depth - 1)
            if op == "/" and re.fullmatch(r"-?[0-9.e+-]+", right) and float(right) == 0:
                right = "2"
            return f"({self.fexpr(depth - 1)} {op} {right})"
        return f"-({self.fexpr(depth - 1)})"

    def bexpr(self, depth: int) -> str:
        roll = self.r.random()
        if depth <= 0:
            roll = self.r.choice([0.1, 0.4]) if not self.bools else self.r.choice([0.1, 0.4, 0.55])
        if roll < 0.3:
            op = self.r.choice(["<", "<=", ">", ">=", "==", "!="])
            if self.chance(0.1):
                return f"({self.fexpr(1)} < {self.fexpr(1)} <= {self.fexpr(1)})"
            return f"({self.fexpr(min(depth, 2))} {op} {self.fexpr(min(depth, 2))})"
        if roll < 0.5:
            return self.call(depth)
        if roll < 0.6 and self.bools:
            return self.r.choice(self.bools)
        if roll < 0.62:
            return self.r.choice(["True", "False"])
        a, b = self.bexpr(depth - 1), self.bexpr(depth - 1)
        # conditions compared with each other: operands without a top-level `&` / `|` (nor a chain `a < b < c`), because
        # expr.check reads `(p & q) == r` as the slip `p & q == r` even with the parentheses, and refuses it
        if self.chance(0.15):
            return f"({self.simple_bool(depth - 1)} {self.r.choice(['==', '!='])} {self.simple_bool(depth - 1)})"
        return self.r.choice([f"({a} & {b})", f"({a} | {b})", f"~({a})", f"(not {a})", f"({a} and {b})", f"({a} or {b})"])

    def simple_bool(self, depth: int) -> str:
        roll = self.r.random()
        if roll < 0.3 and self.bools:
            return self.r.choice(self.bools)
        if roll < 0.6:
            return self.call(max(depth, 1))
        if roll < 0.8:
            return f"~({self.bexpr(depth - 1)})"
        return f"({self.fexpr(1)} {self.r.choice(['<', '>='])} {self.fexpr(1)})"

    def call(self, depth: int) -> str:
        name = self.r.choice(signal_names())
        d = BLOCKS[BLOCK_ALIASES.get(name, name)]
        if d.variadic:
            args = [self.bexpr(depth - 1) for _ in range(self.r.randint(1, 3))]
        else:
            args = []
            for _, kind in d.inputs:
                kind = self.r.choice(["float", "bool"]) if kind == "any" else kind
                args.append(self.bexpr(depth - 1) if kind == "bool" else self.fexpr(min(depth - 1, 2)))
        values = [(p.name, self.block_param(p)) for p in d.params]
        if values and self.chance(0.25):  # all of them, positionally
            args += [repr(v) for _, v in values]
        else:
            args += [f"{k}={v!r}" for k, v in values if self.chance(0.6)]
        return f"{name}({', '.join(args)})"

    def block_param(self, p):
        if p.kind is int:
            return self.r.choice([int(p.min), self.r.randint(int(p.min), N_CAP)])
        return self.r.choice([float(p.min), float(p.max) if p.max <= 100 else 100.0,
                              round(self.r.uniform(max(p.min, -5), min(p.max, 5)), 3)])

    # -- the whole spec ------------------------------------------------------------------------------------
    def orders(self) -> dict:
        o: dict = {}
        if self.chance(0.3):
            o["entry"] = self.r.choice(ENTRY_TYPES)
            if o["entry"] != "market":
                o["entry_offset"] = self.r.choice([0.0, round(self.r.uniform(0, 0.03), 4)])
            if o["entry"] == "stop_limit" and self.chance(0.7):
                o["limit_offset"] = round(self.r.uniform(0, 0.02), 4)
        if self.chance(0.2):
            o["tif"] = self.r.choice(["gtc", "ioc", self.r.randint(1, 20)])
        if self.chance(0.4):
            if self.chance(0.5):
                o["stop_loss"] = self.r.choice([0.0, round(self.r.uniform(0.002, 0.2), 4)])
            else:
                o["stop_loss_atr"] = round(self.r.uniform(0.2, 5), 3)
        if self.chance(0.3):
            o["take_profit"] = round(self.r.uniform(0.002, 0.3), 4)
        if self.chance(0.25):
            if self.chance(0.5):
                o["trailing_stop"] = round(self.r.uniform(0.002, 0.2), 4)
            else:
                o["trailing_atr"] = round(self.r.uniform(0.2, 5), 3)
        if self.chance(0.2):
            o["atr_period"] = self.r.randint(1, 100)
        if self.chance(0.2):
            o["timing"] = self.r.choice(["next_open", "close"])
        if self.chance(0.2):
            o["path"] = self.r.choice(["ohlc", "pessimistic"])
        return o

    def size(self) -> dict:
        mode = self.r.choice(SIZE_MODES)
        value = {"units": round(self.r.uniform(0.001, 2), 4), "amount": round(self.r.uniform(10, 50_000), 2),
                 "percent": round(self.r.uniform(0.01, 1), 3), "risk": round(self.r.uniform(0.001, 1), 3),
                 "vol_target": round(self.r.uniform(0.05, 3), 3)}[mode]
        s: dict = {"mode": mode, "value": value}
        if self.chance(0.3):
            s["leverage"] = self.r.choice([1.0, 2, 5.5, 20, 125])
            if self.chance(0.3):
                s["maintenance_margin"] = round(self.r.uniform(0, 0.99 / s["leverage"]), 5)
        if self.chance(0.1):
            s["min_notional"] = self.r.choice([0.0, 5.0, 100.0])
        if self.chance(0.15):
            s["vol_window"] = self.r.randint(2, 100)
        return s

    def costs(self):
        roll = self.r.random()
        if roll < 0.5:
            return "default"
        if roll < 0.65:
            return self.r.choice([None, "none"])
        parts = {"exchange": self.r.choice(["binance", "bybit", "okx", "kraken", "nowhere"]), "symbol": "BTC/USDT",
                 "maker": round(self.r.uniform(-0.0002, 0.002), 5), "taker": round(self.r.uniform(0, 0.003), 5),
                 "spread_bps": round(self.r.uniform(0, 20), 2), "slippage_bps": round(self.r.uniform(0, 20), 2),
                 "impact_k": self.r.choice([None, 0, 0.5, 1.0, 3])}
        return {k: v for k, v in parts.items() if self.chance(0.5)}

    def spec(self) -> dict:
        data = ["funding_rate"] if self.chance(0.15) else []
        inds, self.floats = self.indicators(data)
        self.bools: list[str] = []
        signals = {}
        for i in range(self.r.randint(0, 4)):
            name = f"sig_{i}" if self.chance(0.9) else self.r.choice(["above", "falling", "hot"]) + f"_{i}" * (i > 0)
            signals[name] = self.bexpr(self.r.randint(0, 3))
            self.bools.append(name)
        spec: dict = {"version": 1, "name": f"random_{self.r.randint(0, 10**6)}"}
        if self.chance(0.3):
            spec["description"] = "a random spec"
        if self.chance(0.2):
            spec["timeframe"] = "1h"
        if data:
            spec["data"] = data
        spec["indicators"] = inds
        if signals or self.chance(0.5):
            spec["signals"] = signals
        rules = [r for r in RULES if self.chance(0.6)]
        if not {"entry_long", "entry_short"} & set(rules):
            rules.append(self.r.choice(["entry_long", "entry_short"]))
        for rule in rules:
            spec[rule] = self.bexpr(self.r.randint(0, 3))
        orders = self.orders()
        if self.chance(0.7):
            spec["size"] = self.size()
            if spec["size"]["mode"] == "risk" and "stop_loss" not in orders and "stop_loss_atr" not in orders:
                orders["stop_loss_atr"] = 2.0  # risk sizing needs a stop distance
        if orders or self.chance(0.2):
            spec["orders"] = orders
        if self.chance(0.8):
            spec["costs"] = self.costs()
        return spec


def random_spec(seed: int) -> dict:
    return SpecGen(random.Random(seed)).spec()


def run_spec(spec: dict) -> str:
    """'ran', 'ran-no-trades' or 'warmup' (a clean StrategyError for warm-up); anything else raises."""
    strategy = Strategy.from_dict(spec)
    data = {"funding_rate": funding()} if strategy.data else None
    c = candles()
    try:
        compiled = compile_strategy(strategy, c, data)
    except StrategyError as exc:
        if "warm-up" not in str(exc):
            raise
        return "warmup"
    assert compiled.index.equals(c.index)
    for rule in RULES:
        assert compiled[rule].dtype == bool and not compiled[rule].isna().any()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = qlab.backtest(c, strategy, data=data)
    assert result.equity.index.equals(c.index) and np.isfinite(result.equity.to_numpy()).all()
    if result.trades.empty:
        assert any("made no trades" in str(w.message) for w in caught), "no trades, yet no diagnosis warning"
        return "ran-no-trades"
    return "ran"


def test_the_generator_draws_valid_specs_from_the_whole_registries():
    """Every built-in indicator and every signal block is drawn within the first few hundred specs."""
    fns, blocks = set(), set()
    for seed in range(300):
        spec = random_spec(seed)
        fns |= {ALIASES.get(d["fn"].lower(), d["fn"].lower()) for d in spec["indicators"].values()}
        text = " ".join([*spec.get("signals", {}).values(), *(spec[r] for r in RULES if r in spec)])
        blocks |= {BLOCK_ALIASES.get(b, b) for b in re.findall(r"([a-z_]+)\(", text) if b in signal_names() or b in BLOCK_ALIASES}
    assert fns == set(BUILTIN)
    assert blocks == set(BLOCKS)


def test_500_random_valid_specs_compile_and_backtest():
    counts: Counter = Counter()
    failures: list[str] = []

    @settings(max_examples=VALID_EXAMPLES + 10, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.randoms(use_true_random=False))
    def run(rng):
        spec = SpecGen(rng).spec()
        counts["drawn"] += 1
        try:
            outcome = run_spec(spec)
        except Exception as exc:
            counts["failed"] += 1
            failures.append(f"{type(exc).__name__}: {exc}\n{json.dumps(spec, indent=1)}\n{traceback.format_exc(limit=-4)}")
            return
        counts[outcome] += 1

    run()
    ran = counts["ran"] + counts["ran-no-trades"]
    print(f"\n{ran} random specs ran, {counts['failed']} failed "
          f"({counts['ran']} with trades, {counts['ran-no-trades']} without, {counts['warmup']} refused for warm-up; "
          f"{counts['drawn']} drawn)")
    assert not failures, f"{len(failures)} of {counts['drawn']} random valid specs failed; first:\n" + "\n\n".join(failures[:3])
    assert ran >= VALID_EXAMPLES and counts["warmup"] <= VALID_EXAMPLES * 0.02
    assert counts["ran"] >= VALID_EXAMPLES * 0.3  # many random specs trade at all


# ---------------------------------------------------------------- broken specs
FORBIDDEN = ["close.shift(-1) > close", "__import__('os')", "open('x')", "eval('1') > 0", "(lambda: 1)()", "close[0] > 1",
             "close ** 2 > 1", "close if True else open", "[close] > 1", "getattr(close, 'x')", "close.__class__",
             "x := 1", "close @ close > 1", "close % 2 > 1", "'up'", "close is None", "close in (1, 2)",
             "sum(close) > 1", "print(1)", "{}", "close >> 1", "yield close", "f'{close}'", "exec('import os')"]
JUNK = [None, "", "junk", "???", 3, -1, 0, 1e308, float("nan"), float("inf"), [], [1, "x"], {}, {"x": 1}, True, ("a",), b"x"]
LOCATION = re.compile(r"^  - (version|name|description|timeframe|data|indicators\.[^:\s]+|signals\.[^:\s,]+|"
                      r"(entry|exit)_(long|short)|entry_long / entry_short|orders(\.\w+)?|size(\.\w+)?|costs(\.\w+)?|"
                      r"[a-z_]+)(, column \d+)?: \S")


def _some(rng: random.Random, items):
    items = list(items)
    return rng.choice(items) if items else None


def _misspell(rng: random.Random, word: str, taken) -> str:
    for _ in range(50):
        i = rng.randrange(len(word) + 1)
        new = rng.choice([word[:i] + rng.choice("xqz") + word[i:], word[:i] + word[i + 1:], word + "_"])
        if new and new not in taken and new.lower() not in taken:
            return new
    return word + "_zz"


def _break(rng: random.Random, spec: dict) -> tuple[str, dict]:
    """A copy of a valid spec with one random problem that validation must find."""
    s = copy.deepcopy(spec)
    inds = s.setdefault("indicators", {})
    rules = [r for r in RULES if r in s]
    with_params = [a for a, d in inds.items() if BUILTIN[ALIASES.get(d["fn"].lower(), d["fn"].lower())].params]
    kinds = ["block", "name", "forbidden", "signal_cycle", "self_cycle", "top_key", "order_field", "block_param",
             "version", "no_entry", "non_dict", "rule_type", "reserved"]
    if inds:
        kinds += ["fn", "input_cycle", "drop_fn", "param_name", "ind_non_dict"]
    if with_params:
        kinds += ["param_range", "param_type"]
    kind = rng.choice(kinds)
    rule = rng.choice(rules)
    if kind == "fn":
        alias = rng.choice(list(inds))
        inds[alias]["fn"] = _misspell(rng, inds[alias]["fn"].lower(), set(REGISTRY) | set(ALIASES))
    elif kind == "param_name":
        alias = rng.choice(list(inds))
        d = BUILTIN[ALIASES.get(inds[alias]["fn"].lower(), inds[alias]["fn"].lower())]
        inds[alias].setdefault("params", {})[_misspell(rng, _some(rng, [p.name for p in d.params]) or "period",
                                                      {p.name for p in d.params})] = 3
    elif kind in ("param_range", "param_type"):
        alias = rng.choice(with_params)
        d = BUILTIN[ALIASES.get(inds[alias]["fn"].lower(), inds[alias]["fn"].lower())]
        p = rng.choice(d.params)
        bad = ([p.max + 1, p.min - 1, p.max * 1000 + 7] if kind == "param_range" else
               ["20", None, [1], {"a": 1}, True, float("nan"), float("inf")] + ([2.5] if p.kind is int else []))
        if not isinstance(inds[alias].get("params", {}), dict):
            inds[alias]["params"] = {}
        inds[alias].setdefault("params", {})[p.name] = rng.choice(bad)
    elif kind == "block":
        s[rule] = f"({s[rule]}) & {_misspell(rng, 'crossover', signal_names())}(close, open)"
    elif kind == "name":
        s[rule] = f"({s[rule]}) & (close > {_misspell(rng, _some(rng, inds) or 'close', set(inds) | set(CANDLE_NAMES))})"
    elif kind == "forbidden":
        s[rule] = rng.choice([f"({s[rule]}) & ({rng.choice(FORBIDDEN)})", rng.choice(FORBIDDEN)])
    elif kind == "signal_cycle":
        sigs = s.setdefault("signals", {})
        sigs["loop_a"], sigs["loop_b"] = "loop_b & (close > open)", "~loop_c"
        sigs["loop_c"] = rng.choice(["loop_a", "loop_b | loop_a"])
        s[rule] = f"({s[rule]}) | loop_a"
    elif kind == "self_cycle":
        s.setdefault("signals", {})["me"] = "me | (close > open)"
    elif kind == "input_cycle":
        a, b = "cyc_a", "cyc_b"
        inds[a], inds[b] = {"fn": "sma", "input": b}, {"fn": rng.choice(["ema", "rsi"]), "input": a}
    elif kind == "drop_fn":
        inds[rng.choice(list(inds))].pop("fn")
    elif kind == "ind_non_dict":
        inds[rng.choice(list(inds))] = rng.choice(["sma", 20, None, [1], True])
    elif kind == "non_dict":
        key = rng.choice(["indicators", "signals", "orders", "size"])
        s[key] = rng.choice(["x", 5, [1, 2], True, 1.5])
    elif kind == "top_key":
        s[_misspell(rng, rng.choice(["entry_long", "indicators", "signals", "orders"]), set(s) | {"version", "name"})] = "x"
    elif kind == "order_field":
        s.setdefault("orders", {})[_misspell(rng, "stop_loss", {"stop_loss", "stop_loss_atr", "take_profit"})] = 0.02
    elif kind == "block_param":
        s[rule] = f"({s[rule]}) & rising(close, n={rng.choice(['0', '-3', '2.5', '100001', 'True', 'close'])})"
    elif kind == "version":
        s["version"] = rng.choice([2, 0, -1, "1", 1.0, None, True, [1]])
    elif kind == "no_entry":
        for r in ("entry_long", "entry_short"):
            s.pop(r, None)
    elif kind == "rule_type":
        s[rule] = rng.choice([5, 1.5, True, None if rule.startswith("entry") and len(rules) == 1 else "", ["up"], {"a": 1}])
    elif kind == "reserved":
        name = rng.choice(["entry_long", "lambda", "None", "True", "close", "__x__", "if"])
        s.setdefault("signals", {})[name] = "close > open"
    return kind, s


def _assert_refused(spec: dict, kind: str) -> str:
    try:
        Strategy.from_dict(spec)
    except Exception as exc:
        assert type(exc) is StrategyError, f"{kind}: {type(exc).__name__}: {exc}\n{spec}"
        message = str(exc)
        lines = message.split("\n")
        assert re.match(r"strategy .* has \d+ problem\(s\):$", lines[0]), message
        assert len(lines) - 1 == int(re.search(r"has (\d+) problem", lines[0]).group(1)), message
        bad = [line for line in lines[1:] if not LOCATION.match(line)]
        assert not bad, f"{kind}: a problem without a location: {bad}"
        return message
    raise AssertionError(f"{kind}: the broken spec was accepted:\n{spec}")


def test_randomly_broken_specs_are_refused_by_validation_with_located_messages():
    counts: Counter = Counter()
    rng = random.Random(7)
    for seed in range(BROKEN_EXAMPLES):
        kind, broken = _break(rng, random_spec(10_000 + seed))
        _assert_refused(broken, kind)
        counts[kind] += 1
    print(f"\n{sum(counts.values())} broken specs refused by validation: {dict(sorted(counts.items()))}")
    assert len(counts) >= 16


def test_junk_anywhere_is_refused_or_runs():
    """Junk at a random place of a valid spec: a StrategyError (at validation or, for warm-up, at compile) or a clean run."""
    counts: Counter = Counter()

    @settings(max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(st.randoms(use_true_random=False), st.integers(0, 10**6), st.sampled_from(JUNK))
    def run(rng, seed, junk):
        spec = random_spec(seed)
        node, path = spec, []
        while isinstance(node, dict) and node and (not path or rng.random() < 0.6):
            key = rng.choice(list(node))
            path.append(key)
            if not isinstance(node[key], dict):
                break
            node = node[key]
        target = spec
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = junk
        try:
            strategy = Strategy.from_dict(spec)
        except Exception as exc:
            assert type(exc) is StrategyError, f"{'.'.join(map(str, path))} = {junk!r}: {type(exc).__name__}: {exc}"
            assert LOCATION.match(str(exc).split("\n")[1]) or "a strategy spec is a mapping" in str(exc), str(exc)
            counts["refused"] += 1
            return
        counts[run_spec(strategy.to_dict())] += 1

    run()
    print(f"\njunk in random places: {dict(counts)}")
    assert counts["refused"] >= 100 and counts["ran"] + counts["ran-no-trades"] >= 3


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(st.one_of(st.text(max_size=120), st.sampled_from(["[", "{a: [", "a: b: c", "- 1\n- 2", "null", "42", "version: 1",
                                                          "{\"version\": 2}", "!!python/object:os.system 'ls'", "[" * 500,
                                                          "&a [*a]", "name: x\nentry_long: close > "])))
def test_junk_text_is_refused_as_json_and_yaml(text):
    for parse in (Strategy.from_json, Strategy.from_yaml):
        try:
            parse(text)
        except Exception as exc:
            assert type(exc) is StrategyError and str(exc), f"{parse.__name__}({text!r}): {type(exc).__name__}: {exc}"
        else:
            raise AssertionError(f"{parse.__name__}({text!r}) was accepted")


EXPR_WORDS = ["close", "sma_0", "rsi_0", "bb.upper", "crossover(", "rising(", "n=", " and ", " not ", "True"]
EXPR_ALPHABET = st.one_of(st.sampled_from([*"()&|~<>=!+-*/.,_ 0123456789enotsarcl", *EXPR_WORDS]), st.characters())


def _edited(rng: random.Random) -> str:
    """A valid expression over the names of the junk spec with up to 3 random one-character edits."""
    gen = SpecGen(rng)
    gen.floats, gen.bools = [*CANDLE_NAMES, "sma_0", "rsi_0", "bb.upper", "bb.middle", "bb.lower"], ["sig"]
    text = gen.bexpr(rng.randint(1, 3))
    for _ in range(rng.randint(0, 3)):
        i = rng.randrange(len(text) + 1)
        text = rng.choice([text[:i] + text[i + 1:], text[:i] + rng.choice("()&|~<>=!+-*/., _0aeznr") + text[i:],
                           text[:i] + text[i + 1: i + 2] + text[i: i + 1] + text[i + 2:]])
    return text


def test_junk_expression_text_is_refused_or_runs():
    """Random expression text (bits of the language and arbitrary characters): StrategyError or a clean run."""
    counts: Counter = Counter()

    @settings(max_examples=400, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(st.lists(EXPR_ALPHABET, max_size=25).map("".join), st.randoms(use_true_random=False).map(_edited)),
           st.sampled_from(["entry_long", "exit_long", "sig"]))
    def run(text, where):
        if where == "sig" and "sig" in text:
            text = text.replace("sig", "close > open")
        spec = {"version": 1, "name": "junk", "signals": {"sig": "close > sma_0"}, "entry_long": "close > sma_0",
                "indicators": {"sma_0": {"fn": "sma"}, "rsi_0": {"fn": "rsi"}, "bb": {"fn": "bbands"}}}
        if where == "sig":
            spec["signals"]["sig"] = text
        else:
            spec[where] = text
        try:
            strategy = Strategy.from_dict(spec)
        except Exception as exc:
            assert type(exc) is StrategyError, f"{text!r}: {type(exc).__name__}: {exc}"
            assert LOCATION.match(str(exc).split("\n")[1]), str(exc)
            counts["refused"] += 1
            return
        counts[run_spec(strategy.to_dict())] += 1

    run()
    print(f"\njunk expressions: {dict(counts)}")
    assert counts["refused"] >= 200 and counts["ran"] + counts["ran-no-trades"] >= 20

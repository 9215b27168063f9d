"""StrategySpec: dict / JSON / YAML / file round trips for every template, versioning, and validation that
reports every problem of a spec at once, each with its place and a "did you mean"."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml

import qlab
from qlab.costs import CostModel
from qlab.errors import QlabError, StrategyError
from qlab.strategy.spec import SPEC_VERSION, Strategy, cost_model_from, spec_fields, spec_problems
from qlab.strategy.templates import templates

SMA_CROSS = {
    "version": 1, "name": "sma_cross",
    "indicators": {"fast": {"fn": "sma", "params": {"period": 20}}, "slow": {"fn": "sma", "params": {"period": 50}}},
    "signals": {"up": "crossover(fast, slow)", "down": "crossunder(fast, slow)"},
    "entry_long": "up", "exit_long": "down",
}


def problems_of(error: StrategyError) -> list[str]:
    """The '  - ...' lines of a validation error."""
    lines = str(error).split("\n")
    assert re.fullmatch(rf"strategy .* has {len(lines) - 1} problem\(s\):", lines[0]), lines[0]
    assert all(line.startswith("  - ") for line in lines[1:])
    return [line[4:] for line in lines[1:]]


def refused(spec) -> list[str]:
    with pytest.raises(StrategyError) as info:
        Strategy.from_dict(spec)
    assert type(info.value) is StrategyError
    return problems_of(info.value)


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize("name", list(templates))
def test_every_template_round_trips_through_dict_json_yaml_and_files(name, tmp_path):
    s = templates[name]
    d = s.to_dict()
    assert Strategy.from_dict(d) == s
    assert Strategy.from_dict(d).to_dict() == d
    assert Strategy.from_json(s.to_json()) == s
    assert json.loads(s.to_json()) == d
    assert Strategy.from_yaml(s.to_yaml()) == s
    assert yaml.safe_load(s.to_yaml()) == d
    for suffix in (".json", ".yaml", ".yml"):
        path = s.save(tmp_path / f"{name}{suffix}")
        assert Strategy.load(path) == s
    assert list(d)[:2] == ["version", "name"] and d["version"] == SPEC_VERSION == 1
    assert spec_problems(d) == []


def test_a_dict_round_trips_and_keeps_everything_it_says():
    spec = {**SMA_CROSS, "description": "two averages", "timeframe": "1h", "data": ["funding_rate"],
            "indicators": {**SMA_CROSS["indicators"], "rsi_vol": {"fn": "rsi", "input": "volume", "params": {"period": 7}},
                           "bb": {"fn": "bb"}},
            "entry_short": "down & (funding_rate > 0.0001)", "exit_short": "up | (close > bb.upper)",
            "orders": {"stop_loss": 0.02, "take_profit": 0.05, "entry": "limit", "entry_offset": 0.001, "tif": 3},
            "size": {"mode": "percent", "value": 0.5, "leverage": 2.0}, "costs": {"exchange": "binance", "spread_bps": 2}}
    s = Strategy.from_dict(spec)
    assert s.to_dict() == spec
    assert (s.name, s.description, s.timeframe, s.data) == ("sma_cross", "two averages", "1h", ("funding_rate",))
    assert s.indicators["rsi_vol"].input == "volume" and s.indicators["fast"].input == "close"
    assert s.rules == {r: spec[r] for r in ("entry_long", "exit_long", "entry_short", "exit_short")}
    assert s.order_spec().take_profit == 0.05 and s.order_spec().tif_bars == 3
    assert s.size_spec().leverage == 2.0
    assert isinstance(s.cost_model(), CostModel)


def test_defaults_and_normalisation():
    s = Strategy.from_dict({"entry_long": "close > open"})
    assert (s.name, s.version, s.costs, s.indicators, s.signals, s.data) == ("strategy", 1, "default", {}, {}, ())
    assert s.to_dict() == {"version": 1, "name": "strategy", "indicators": {}, "signals": {}, "entry_long": "close > open",
                           "costs": "default"}
    nulls = Strategy.from_dict({"name": None, "description": None, "indicators": None, "signals": None, "orders": None,
                                "size": None, "data": None, "entry_long": "close > open"})
    assert (nulls.name, nulls.description, nulls.indicators, nulls.orders, nulls.data) == ("strategy", "", {}, {}, ())
    upper = Strategy.from_dict({**SMA_CROSS, "indicators": {"fast": {"fn": " SMA "}, "slow": {"fn": "sma"}}})
    assert upper.indicators["fast"].fn == "sma"


def test_numpy_numbers_become_plain_numbers_so_json_and_yaml_work():
    s = Strategy.from_dict(SMA_CROSS)
    for period in np.arange(5, 15, 5):  # a parameter grid hands numpy ints
        tuned = s.with_params(**{"fast.period": period, "orders.stop_loss": np.float64(0.02)})
        assert type(tuned.indicators["fast"].params["period"]) is int
        assert Strategy.from_json(tuned.to_json()) == tuned
        assert Strategy.from_yaml(tuned.to_yaml()) == tuned


def test_with_params_replaces_by_dotted_path_and_validates():
    s = templates["macd_trend"]
    t = s.with_params(**{"trend.period": 100, "macd.fast": 8, "orders.stop_loss": 0.02, "size.value": 0.5, "name": "mine"})
    assert t.indicators["trend"].params["period"] == 100 and t.indicators["macd"].params["fast"] == 8
    assert (t.orders, t.size["value"], t.name) == ({"stop_loss": 0.02}, 0.5, "mine")
    assert s.indicators["trend"].params["period"] == 200  # the original is unchanged
    with pytest.raises(StrategyError, match=r"cannot set 'tren\.period'.*did you mean 'trend'"):
        s.with_params(**{"tren.period": 10})
    with pytest.raises(StrategyError, match=r"indicators\.trend\.params\.period: 0 is below the minimum"):
        s.with_params(**{"trend.period": 0})
    with pytest.raises(StrategyError, match=r"fast \(30\) must be less than slow \(26\)"):
        s.with_params(**{"macd.fast": 30})


# ---------------------------------------------------------------- versions
def test_specs_are_versioned_and_a_newer_version_is_refused():
    assert Strategy.from_dict(SMA_CROSS).version == 1
    (problem,) = refused({**SMA_CROSS, "version": 2})
    assert problem.startswith("version: 2 is not a spec version this qlab reads (1..1); upgrade qlab")
    for bad in (0, -1, "1", 1.0, True, None, [1]):
        (problem,) = refused({**SMA_CROSS, "version": bad})
        assert problem.startswith(f"version: {bad!r} is not a spec version"), problem


# ---------------------------------------------------------------- validation
def test_one_broken_spec_reports_every_problem_together_each_with_its_place():
    spec = {
        "version": 1, "name": "broken",
        "indicators": {
            "fast": {"fn": "smaa", "params": {"period": 10}},          # unknown indicator
            "slow": {"fn": "sma", "params": {"perod": 50}},            # unknown parameter
            "rsi": {"fn": "rsi", "params": {"period": 5000}},          # out of range
            "bb": {"fn": "bbands", "params": {"nbdev_up": "two"}},     # wrong type
            "m": {"fn": "macd", "params": {"fast": 30, "slow": 20}},   # relation between parameters
            "loop": {"fn": "ema", "input": "loop2"}, "loop2": {"fn": "sma", "input": "loop"},  # circular inputs
        },
        "signals": {
            "squeeze": "(bb.uper - bb.lower) / bb.middle < 0.02",      # unknown component
            "a": "b & (close > open)", "b": "~a",                      # circular signals
            "up": "crossover(slow, fast)",
        },
        "entry_long": "crossovr(slow, rsi) & upp",                      # unknown block, unknown signal
        "exit_long": "rising(close, n=0) | squeeze",                   # block parameter out of range
        "entry_short": "close.shift(-1) > close",                      # forbidden construct
        "orders": {"stop_los": 0.02},                                  # unknown order field
        "size": {"mode": "percent", "value": 5},                       # out of range
        "costs": {"spread": 2},                                        # unknown cost field
        "entry_lng": "up",                                             # unknown top-level key
    }
    problems = refused(spec)
    expected = [
        r"entry_lng: unknown key; .* did you mean 'entry_long'",
        r"indicators\.fast\.fn: unknown indicator 'smaa'; did you mean 'sma'",
        r"indicators\.slow\.params\.perod: unknown parameter 'perod' of indicator 'sma'; did you mean 'period'",
        r"indicators\.rsi\.params\.period: 5000 is above the maximum; use a whole number from 2 to 1000",
        r"indicators\.bb\.params\.nbdev_up: expected a number from 0 to 10, got 'two' \(str\)",
        r"indicators\.m\.params: fast \(30\) must be less than slow \(20\) for macd",
        r"signals\.squeeze, column 2: unknown name 'bb\.uper'; did you mean 'bb\.upper'",
        r"entry_long, column 1: unknown signal block 'crossovr'; did you mean 'crossover'",
        r"entry_long, column 23: unknown name 'upp'; did you mean 'up'",
        r"exit_long, column 17: rising\(n\): 0 is below the minimum 1",
        r"entry_short, column 1: `close\.shift\(-1\)` is not allowed: method calls",
        r"indicators\.loop\.input: circular reference loop -> loop2 -> loop",
        r"signals\.a: circular reference a -> b -> a",
        r"orders\.stop_los: unknown field; .* did you mean 'stop_loss'",
        r"size: size value=5 is a fraction of equity",
        r"costs\.spread: unknown field; .* did you mean 'spread_bps'",
    ]
    for pattern in expected:
        assert sum(bool(re.match(pattern, p)) for p in problems) == 1, f"{pattern!r} not reported once in:\n" + "\n".join(problems)
    assert len(problems) == len(expected), "\n".join(problems)


def test_each_kind_of_wrong_type_is_named_at_its_place():
    cases = {
        "name": ({"name": 5}, r"name: must be text, got 5"),
        "description": ({"description": ["x"]}, r"description: must be text"),
        "timeframe": ({"timeframe": "1hour"}, r"timeframe: '1hour' is not a timeframe; .* did you mean '1h'"),
        "data": ({"data": "funding_rate"}, r"data: must be a list of series names"),
        "data item": ({"data": ["funding rate"]}, r"data: 'funding rate' is not a valid name"),
        "indicators": ({"indicators": ["sma"]}, r"indicators: must be a mapping"),
        "indicator": ({"indicators": {**SMA_CROSS["indicators"], "fast": "sma"}}, r"indicators\.fast: must be a mapping"),
        "params": ({"indicators": {**SMA_CROSS["indicators"], "fast": {"fn": "sma", "params": [20]}}},
                   r"indicators\.fast\.params: must be a mapping"),
        "signals": ({"signals": "up"}, r"signals: must be a mapping"),
        "signal": ({"signals": {"up": 5, "down": "crossunder(fast, slow)"}}, r"signals\.up: expected an expression as text, got 5"),
        "rule": ({"exit_long": ["down"]}, r"exit_long: expected an expression as text"),
        "orders": ({"orders": "tight"}, r"orders: must be a mapping, got 'tight'"),
        "order field": ({"orders": {"stop_loss": "2%"}}, r"orders\.stop_loss: expected a finite number, got '2%'"),
        "order int": ({"orders": {"atr_period": 14.5, "stop_loss_atr": 2}}, r"orders\.atr_period: expected a whole number"),
        "tif": ({"orders": {"tif": 10**20}}, r"orders\.tif: expected 'gtc', 'ioc' or a whole number of bars"),
        "size": ({"size": [1]}, r"size: must be a mapping"),
        "size field": ({"size": {"value": float("nan")}}, r"size\.value: expected a finite number, got nan"),
        "size mode": ({"size": {"mode": ["percent"]}}, r"size\.mode: expected one of the words"),
        "risk": ({"size": {"mode": "risk", "value": 0.01}}, r"size\.mode: 'risk' sizes each entry by its stop distance"),
        "costs": ({"costs": "cheap"}, r"costs: costs='cheap'; use 'default', null, or a dict"),
        "cost field": ({"costs": {"maker": "0.1%"}}, r"costs\.maker: expected a finite number"),
        "cost text": ({"costs": {"exchange": 5}}, r"costs\.exchange: expected text"),
    }
    for label, (change, pattern) in cases.items():
        problems = refused({**SMA_CROSS, **change})
        assert any(re.match(pattern, p) for p in problems), f"{label}: {pattern!r} not in {problems}"


def test_names_that_cannot_be_used():
    base = {**SMA_CROSS, "data": ["funding_rate"]}
    for where, change in [
        ("signals.entry_long", {"signals": {**SMA_CROSS["signals"], "entry_long": "up"}}),
        ("indicators.lambda", {"indicators": {**SMA_CROSS["indicators"], "lambda": {"fn": "rsi"}}}),
        ("indicators.True", {"indicators": {**SMA_CROSS["indicators"], "True": {"fn": "rsi"}}}),
        ("indicators.close", {"indicators": {**SMA_CROSS["indicators"], "close": {"fn": "rsi"}}}),
        ("indicators.funding_rate", {"indicators": {**SMA_CROSS["indicators"], "funding_rate": {"fn": "rsi"}}}),
        ("signals.fast", {"signals": {**SMA_CROSS["signals"], "fast": "up"}}),
        ("signals.bb", {"indicators": {**SMA_CROSS["indicators"], "bb": {"fn": "bbands"}},
                        "signals": {**SMA_CROSS["signals"], "bb": "close > bb.upper"}}),
        ("data", {"data": ["funding_rate", "funding_rate"]}),
        ("data", {"data": ["volume"]}),
        ("signals.2x", {"signals": {**SMA_CROSS["signals"], "2x": "up"}}),
    ]:
        problems = refused({**base, **change})
        assert any(p.startswith(f"{where}: ") for p in problems), (where, problems)


def test_circular_references_among_signals_and_among_indicator_inputs():
    three = {**SMA_CROSS, "signals": {"a": "b | up", "b": "c & (close > open)", "c": "~a", **SMA_CROSS["signals"]},
             "entry_long": "a"}
    assert refused(three) == ["signals.a: circular reference a -> b -> c -> a; break the loop"]
    assert refused({**SMA_CROSS, "signals": {**SMA_CROSS["signals"], "up": "up & (close > open)"}}) == [
        "signals.up: circular reference up -> up; break the loop"]
    inputs = {**SMA_CROSS, "indicators": {"fast": {"fn": "sma", "input": "slow"}, "slow": {"fn": "ema", "input": "mid"},
                                          "mid": {"fn": "rsi", "input": "fast"}}}
    assert refused(inputs) == ["indicators.fast.input: circular reference fast -> slow -> mid -> fast; break the loop"]
    signal_input = {**SMA_CROSS, "indicators": {**SMA_CROSS["indicators"], "x": {"fn": "sma", "input": "up"}}}
    assert refused(signal_input) == ["indicators.x.input: 'up' is a signal (true/false); an indicator reads a number series"]
    # a chain is not a cycle, in any order of definition
    chain = {**SMA_CROSS, "indicators": {"smooth": {"fn": "sma", "input": "r"}, "r": {"fn": "rsi", "input": "bb.upper"},
                                         "bb": {"fn": "bbands"}, **SMA_CROSS["indicators"]},
             "signals": {"z": "up & y", "y": "smooth > 50", **SMA_CROSS["signals"]}}
    assert spec_problems(chain) == []


def test_inputs_must_name_one_number_series():
    for source, pattern in [("closing", r"unknown series 'closing'\. did you mean 'close'"),
                            ("bb", r"'bb' has several outputs; name one of bb\.upper, bb\.middle, bb\.lower"),
                            (5, r"unknown series 5")]:
        spec = {**SMA_CROSS, "indicators": {**SMA_CROSS["indicators"], "bb": {"fn": "bbands"}, "x": {"fn": "sma", "input": source}}}
        (problem,) = refused(spec)
        assert re.match(rf"indicators\.x\.input: {pattern}", problem), problem
    (problem,) = refused({**SMA_CROSS, "indicators": {**SMA_CROSS["indicators"], "x": {"fn": "atr", "input": "volume"}}})
    assert problem.startswith("indicators.x.input: atr reads high, low, close; only single-input indicators take an input")


def test_a_spec_without_entries_or_that_is_no_mapping():
    assert refused({**SMA_CROSS, "entry_long": None}) == [
        "entry_long / entry_short: the strategy has no entry rule; add at least one"]
    for bad in (None, [], "sma_cross", 5):
        with pytest.raises(StrategyError, match="a strategy spec is a mapping"):
            Strategy.from_dict(bad)


def test_text_and_files_that_are_no_spec():
    with pytest.raises(StrategyError, match="not valid JSON"):
        Strategy.from_json("{'version': 1}")
    with pytest.raises(StrategyError, match="not valid YAML"):
        Strategy.from_yaml("a: b: c")
    with pytest.raises(StrategyError, match="a strategy spec is a mapping"):
        Strategy.from_yaml("- sma\n- rsi\n")
    with pytest.raises(StrategyError, match="contains itself"):
        Strategy.from_yaml("&a [*a]")
    with pytest.raises(StrategyError, match="no spec file"):
        Strategy.load("/nonexistent/spec.yaml")


def test_validation_errors_are_qlab_errors_and_value_errors():
    with pytest.raises(QlabError):
        Strategy.from_dict({})
    with pytest.raises(ValueError):
        Strategy.from_dict({})


def test_costs_from_the_spec():
    assert isinstance(cost_model_from("default"), CostModel)
    assert cost_model_from(None) is None and cost_model_from("none") is None
    model = cost_model_from({"maker": 0.0002, "taker": 0.0004, "spread_bps": 3, "slippage_bps": 1, "impact_k": 0})
    assert (model.fees.maker, model.fees.taker, model.spread.bps, model.slippage.bps, model.impact) == (0.0002, 0.0004, 3, 1, None)
    assert Strategy.from_dict({**SMA_CROSS, "costs": None}).cost_model() is None


def test_spec_fields_lists_each_section():
    f = spec_fields()
    assert "entry_long" in f["top"] and "stop_loss" in f["orders"] and "leverage" in f["size"] and "spread_bps" in f["costs"]


def test_the_public_names():
    assert qlab.Strategy is Strategy and qlab.templates is templates

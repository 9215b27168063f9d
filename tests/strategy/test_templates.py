"""The bundled templates: at least 10, each documented in one line, each trading on the bundled data,
and none peeking into the future (the lookahead guard recomputes them on truncated candles)."""

from __future__ import annotations

import warnings
from functools import cache

import pandas as pd
import pytest

import qlab
from qlab.engine.lookahead import check_lookahead
from qlab.errors import NotFoundError, StrategyError
from qlab.strategy.compile import compile_strategy, warmup_bars
from qlab.strategy.spec import Strategy
from qlab.strategy.templates import FOLDER, template_table, templates

NAMES = list(templates)


@cache
def market(name: str) -> tuple[pd.DataFrame, dict | None]:
    """The bundled data a template runs on: BTC/USDT 1h (the last 8000 bars), or XRP perpetual 8h with its funding."""
    if templates[name].data:
        return qlab.load_sample("XRP/USDT:USDT", "8h"), {"funding_rate": qlab.load_sample_funding("XRP/USDT:USDT")}
    return qlab.load_sample("BTC/USDT", "1h").iloc[-8000:], None


def test_at_least_ten_templates_each_documented_in_one_line():
    assert len(NAMES) >= 10 and len(NAMES) == len(list(FOLDER.glob("*.yaml")))
    for name in NAMES:
        t = templates[name]
        assert isinstance(t, Strategy) and t.name == name
        assert t.description.strip() and "\n" not in t.description and len(t.description) <= 200, name
    table = template_table()
    assert list(table.columns) == ["name", "description"] and table.name.tolist() == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_template_compiles_and_trades_on_the_bundled_data(name):
    t = templates[name]
    candles, data = market(name)
    compiled = compile_strategy(t, candles, data)
    assert compiled.index.equals(candles.index) and warmup_bars(t) < len(candles)
    assert compiled["entry_long"].any() or compiled["entry_short"].any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "made no trades" warning
        result = qlab.backtest(candles, t, data=data)
    closed = result.trades[~result.trades.is_open]
    assert len(closed) >= (3 if name == "funding_carry" else 1), f"{name}: {len(closed)} closed trades"
    assert set(closed.exit_reason) <= {"signal", "stop_loss", "take_profit", "trailing_stop", "liquidation"}


@pytest.mark.parametrize("name", NAMES)
def test_no_template_looks_ahead(name):
    t = templates[name]
    candles, data = market(name)
    report = check_lookahead(lambda c: compile_strategy(t, c, data), candles, min_history=min(200, len(candles) // 2))
    assert report.ok, str(report)
    assert not report.failures


def test_funding_carry_trades_both_sides_of_the_funding_on_xrp():
    candles, data = market("funding_carry")
    result = qlab.backtest(candles, "funding_carry", data=data)
    trades = result.trades
    assert len(trades) >= 3 and not trades.is_open.any()
    assert {-1, 1} == set(trades.direction)  # shorts while longs pay, a long while funding was negative


def test_templates_by_name_and_unknown_names():
    candles, _ = market("sma_cross")
    by_name = qlab.backtest(candles, "sma_cross")
    by_object = qlab.backtest(candles, templates["sma_cross"])
    pd.testing.assert_frame_equal(by_name.trades, by_object.trades)
    with pytest.raises(StrategyError, match=r"no template 'sma_cros'; templates: .* did you mean 'sma_cross'") as info:
        templates["sma_cros"]
    assert isinstance(info.value, NotFoundError) and isinstance(info.value, KeyError)  # so the Mapping protocol works:
    assert "sma_cross" in templates and "nope" not in templates and templates.get("nope") is None
    assert "sma_cross" in repr(templates)

"""The notebooks' shared parameter handling: unknown names and empty date windows are errors."""

from __future__ import annotations

import pytest

import qlab
from qlab.errors import ConfigError, NotFoundError
from qlab.strategy.templates import resolve_strategy
from qlab.ui import data_explorer, optimizer, strategy_builder
from qlab.ui.params import sample_window


@pytest.mark.parametrize("module", [data_explorer, strategy_builder, optimizer])
def test_unknown_parameter_names_suggest_the_right_one(module):
    with pytest.raises(ConfigError, match="did you mean 'timeframe'"):
        module.run({"timeframes": "1h"})


def test_sample_window_is_half_open_and_refuses_an_empty_window():
    c = sample_window("BTC/USDT:USDT", "1h", "2023-01-10", "2023-01-11")
    assert len(c) == 24 and c.index[0] == qlab.load_sample("BTC/USDT:USDT", "1h").loc["2023-01-10"].index[0]
    with pytest.raises(NotFoundError, match="no bars between"):
        sample_window("BTC/USDT:USDT", "1h", "2030-01-01", None)


def test_resolve_strategy_accepts_names_dicts_and_files(tmp_path):
    spec = qlab.templates["sma_cross"]
    assert resolve_strategy("sma_cross") is spec and resolve_strategy(spec) is spec
    assert resolve_strategy(spec.to_dict()) == spec
    assert resolve_strategy(str(spec.save(tmp_path / "s.yaml"))) == spec
    with pytest.raises(ConfigError, match="did you mean 'sma_cross'"):
        resolve_strategy("sma_crosss")


def test_sample_data_serves_funding_and_names_what_it_lacks():
    from qlab.ui.params import sample_data

    assert sample_data((), "BTC/USDT") is None
    assert len(sample_data(("funding_rate",), "XRP/USDT:USDT")["funding_rate"]) == 91
    with pytest.raises(ConfigError, match="'open_interest'"):
        sample_data(("open_interest",), "XRP/USDT:USDT")
    run = strategy_builder.run({"spec": "funding_carry", "symbol": "XRP/USDT:USDT", "timeframe": "8h", "start": None})
    assert (~run.result.trades.is_open).sum() >= 1

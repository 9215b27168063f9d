"""qlab: a quantitative research lab for crypto trading.

The public API is imported lazily, so `import qlab` stays fast: heavy libraries load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> "module:attribute"
_LAZY = {
    "Store": "qlab.data.store:Store",
    "load_sample": "qlab.data.sample:load_sample",
    "load_sample_funding": "qlab.data.sample:load_sample_funding",
    "samples": "qlab.data.sample:samples",
    "quality_report": "qlab.data.quality:quality_report",
    "read_csv": "qlab.data.candles:read_csv",
    "to_candles": "qlab.data.candles:to_candles",
    "validate_candles": "qlab.data.candles:validate_candles",
    "resample_candles": "qlab.data.candles:resample_candles",
    "backtest": "qlab.analytics.result:backtest",
    "Result": "qlab.analytics.result:Result",
    "OrderSpec": "qlab.execution:OrderSpec",
    "SizeSpec": "qlab.execution:SizeSpec",
    "CostModel": "qlab.costs:CostModel",
    "FeeSchedule": "qlab.costs:FeeSchedule",
    "Strategy": "qlab.strategy.spec:Strategy",
    "templates": "qlab.strategy.templates:templates",
    "compile_strategy": "qlab.strategy.compile:compile_strategy",
    "diagnose": "qlab.strategy.compile:diagnose",
    "register_indicator": "qlab.strategy.indicators:register_indicator",
    "check_lookahead": "qlab.engine.lookahead:check_lookahead",
    "optimize": "qlab.research.optimize:optimize",
    "walk_forward": "qlab.research.walkforward:walk_forward",
    "paper_trade": "qlab.paper.trader:paper_trade",
    "PaperTrader": "qlab.paper.trader:PaperTrader",
    "RiskLimits": "qlab.paper.risk:RiskLimits",
    "ExchangeBroker": "qlab.paper.exchange_broker:ExchangeBroker",
    "monte_carlo": "qlab.research.monte_carlo:monte_carlo",
    "stress_test": "qlab.research.stress:stress_test",
    "scenario": "qlab.research.scenarios:scenario",
    "register_scenario": "qlab.research.scenarios:register_scenario",
    "show": "qlab.ui.display:show",
    "publish_metrics": "qlab.ui.reports_index:publish_metrics",
    "errors": "qlab.errors",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # for editors and type checkers only; `as` marks the names as re-exported
    from qlab import errors as errors
    from qlab.analytics.result import Result as Result
    from qlab.analytics.result import backtest as backtest
    from qlab.costs import CostModel as CostModel
    from qlab.costs import FeeSchedule as FeeSchedule
    from qlab.data.candles import read_csv as read_csv
    from qlab.data.candles import resample_candles as resample_candles
    from qlab.data.candles import to_candles as to_candles
    from qlab.data.candles import validate_candles as validate_candles
    from qlab.data.quality import quality_report as quality_report
    from qlab.data.sample import load_sample as load_sample
    from qlab.data.sample import load_sample_funding as load_sample_funding
    from qlab.data.sample import samples as samples
    from qlab.data.store import Store as Store
    from qlab.engine.lookahead import check_lookahead as check_lookahead
    from qlab.execution import OrderSpec as OrderSpec
    from qlab.execution import SizeSpec as SizeSpec
    from qlab.paper.exchange_broker import ExchangeBroker as ExchangeBroker
    from qlab.paper.risk import RiskLimits as RiskLimits
    from qlab.paper.trader import PaperTrader as PaperTrader
    from qlab.paper.trader import paper_trade as paper_trade
    from qlab.research.monte_carlo import monte_carlo as monte_carlo
    from qlab.research.optimize import optimize as optimize
    from qlab.research.scenarios import register_scenario as register_scenario
    from qlab.research.scenarios import scenario as scenario
    from qlab.research.stress import stress_test as stress_test
    from qlab.research.walkforward import walk_forward as walk_forward
    from qlab.strategy.compile import compile_strategy as compile_strategy
    from qlab.strategy.compile import diagnose as diagnose
    from qlab.strategy.indicators import register_indicator as register_indicator
    from qlab.strategy.spec import Strategy as Strategy
    from qlab.strategy.templates import templates as templates
    from qlab.ui.display import show as show
    from qlab.ui.reports_index import publish_metrics as publish_metrics


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        from qlab.errors import did_you_mean

        raise AttributeError(f"module 'qlab' has no attribute {name!r}." + did_you_mean(name, _LAZY))
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    value = getattr(module, attr) if attr else module
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

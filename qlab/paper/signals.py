"""The strategy evaluated bar by bar: at each close the compiled strategy runs on a rolling window of the
last `lookback` bars and its last row is the decision. With a window longer than the strategy's warm-up
(plus the memory of recursive indicators such as EMA), the row equals the vectorised backtest's row at
that bar; tests/paper check it on real data for every template used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from qlab.errors import ConfigError, StrategyError
from qlab.paper.market import MarketHistory
from qlab.strategy.compile import strategy_signals, warmup_bars
from qlab.strategy.spec import RULES, Strategy

SignalFunction = Callable[[pd.DataFrame], pd.DataFrame]


class StrategySignals:
    """Signals of a Strategy (or of a function candles -> frame of the four rule columns) at the latest close."""

    def __init__(self, strategy: Strategy | SignalFunction, *, lookback: int | None = None, data: dict[str, pd.Series] | None = None,
                 warmup: int | None = None) -> None:
        self.strategy, self.data = strategy, data
        if isinstance(strategy, Strategy):
            self.warmup = warmup_bars(strategy) if warmup is None else warmup
        elif callable(strategy):
            self.warmup = int(warmup or 0)
        else:
            raise ConfigError(f"strategy={strategy!r}; give a qlab Strategy, a template name, or a function candles -> signal frame")
        self.lookback = int(lookback) if lookback is not None else max(3 * self.warmup, self.warmup + 300)
        if self.lookback <= self.warmup + 1:
            raise ConfigError(f"lookback={lookback!r} must exceed the strategy's warm-up ({self.warmup} bars) + 1")

    def frame(self, window: pd.DataFrame) -> pd.DataFrame:
        """The four rule columns on a window of candles."""
        if isinstance(self.strategy, Strategy):
            return strategy_signals(self.strategy, window, self.data)
        return self.strategy(window)

    def at_close(self, history: MarketHistory) -> dict[str, bool]:
        """entry_long, exit_long, entry_short, exit_short at the latest bar (all False before the warm-up is covered)."""
        n = len(history)
        if n <= self.warmup + 1:
            return dict.fromkeys(RULES, False)
        window = history.frame(max(0, n - self.lookback))
        try:
            frame = self.frame(window)
        except StrategyError:
            if n < self.lookback:  # a rule whose warm-up the short history does not cover yet
                return dict.fromkeys(RULES, False)
            raise
        row = frame.iloc[-1]
        return {rule: bool(row[rule]) if rule in frame.columns else False for rule in RULES}


def as_strategy(strategy: Any) -> Strategy | SignalFunction:
    """A Strategy from a template name; Strategy objects and signal functions as they are."""
    if isinstance(strategy, str):
        from qlab.strategy.templates import templates

        return templates[strategy]
    return strategy

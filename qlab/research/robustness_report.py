"""Robustness of an optimisation result in one call: regimes, neighbourhood, deflated Sharpe and PBO."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from qlab.analytics.result import backtest
from qlab.data.candles import Candles, bars_per_year, infer_timeframe
from qlab.research.robustness import (
    PBOResult,
    deflated_sharpe_from_returns,
    label_regimes,
    neighbourhood,
    pbo,
    regime_performance,
)


@dataclass
class RobustnessReport:
    """How much to trust the best parameters of an optimisation."""

    regimes: pd.DataFrame  # performance of the best parameters per market regime
    stability: float | None  # mean neighbour / optimum (1 = a plateau, near 0 = an isolated spike); None without a grid
    neighbours: pd.DataFrame | None
    deflated_sharpe: dict[str, float]  # dsr: probability the best Sharpe beats the best of N lucky trials
    pbo: PBOResult | None  # probability of backtest overfitting (CSCV) over the trials' returns

    def summary(self) -> dict[str, Any]:
        """The headline numbers."""
        return {"stability": self.stability, "dsr": self.deflated_sharpe.get("dsr"),
                "psr": self.deflated_sharpe.get("psr"), "pbo": None if self.pbo is None else self.pbo.pbo}


def _returns(strategy: Any, candles: Candles, data: dict | None) -> pd.Series:
    return backtest(candles, strategy, data=data).equity.pct_change().fillna(0.0)


def robustness_report(result: Any, candles: Candles, *, data: dict | None = None, max_trials: int = 60,
                      n_splits: int = 8, regime_window: int = 200, seed: int = 0) -> RobustnessReport:
    """Re-run the best parameters (regimes) and up to `max_trials` trials spread over the table (PBO)."""
    bpy = bars_per_year(result.strategy.timeframe or infer_timeframe(candles.index))
    best = result.best_strategy()
    best_run = backtest(candles, best, data=data)
    regimes = regime_performance(best_run.equity, label_regimes(candles, trend_window=regime_window), bpy)
    metric = result.objectives[0]
    done = result.trials[result.trials.state == "COMPLETE"]
    numeric = [d.name for d in result.space.dims if d.kind != "choice"]
    stability, neighbours = None, None
    if numeric and len(done) > 2:
        frame = done if result.directions[0] == "maximize" else done.assign(**{metric: -done[metric]})
        neighbours = neighbourhood(frame, numeric, metric, best={k: result.best[k] for k in numeric})
        stability = neighbours.attrs.get("stability")
    sharpes = done["sharpe"].to_numpy(dtype=float) if "sharpe" in done else np.array([])
    dsr = deflated_sharpe_from_returns(best_run.equity.pct_change().dropna(), sharpes[np.isfinite(sharpes)], bpy) \
        if len(sharpes) > 1 else {}
    overfit = None
    if len(done) >= 4:
        picks = done.iloc[np.unique(np.linspace(0, len(done) - 1, min(max_trials, len(done))).astype(int))]
        columns = {}
        for _, row in picks.iterrows():
            params = {p: (row[p].item() if isinstance(row[p], np.generic) else row[p]) for p in result.space.names}
            columns[int(row["number"])] = _returns(result.strategy.with_params(**params), candles, data)
        overfit = pbo(pd.DataFrame(columns), n_splits=n_splits, seed=seed)
    return RobustnessReport(regimes, stability, neighbours, dsr, overfit)

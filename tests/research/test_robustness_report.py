"""OptimizationResult.robustness: the report's numbers come from the robustness functions on re-run backtests."""

from __future__ import annotations

import numpy as np
import pytest

import qlab
from qlab.research.optimize import optimize
from qlab.research.robustness import label_regimes, regime_performance


@pytest.fixture(scope="module")
def search():
    candles = qlab.load_sample("BTC/USDT", "1h").iloc[-6000:]
    result = optimize("sma_cross", candles, {"fast.period": (5, 30, 5), "slow.period": (40, 120, 20)}, "sharpe", method="grid")
    return candles, result


def test_report_rebuilds_the_best_run_and_its_regimes(search):
    candles, result = search
    report = result.robustness(candles)
    best_equity = qlab.backtest(candles, result.best_strategy()).equity
    expected = regime_performance(best_equity, label_regimes(candles), 8760.0)
    np.testing.assert_allclose(report.regimes["contribution"].to_numpy(), expected["contribution"].to_numpy(), rtol=1e-12)
    assert 0 < report.summary()["dsr"] <= 1 and 0 <= report.summary()["pbo"] <= 1
    assert len(report.pbo.trials) == min(60, len(result.trials))
    assert report.stability == pytest.approx(report.neighbours.attrs["stability"])

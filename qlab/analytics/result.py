"""`qlab.backtest(...) -> Result`: the engine's tables with metrics, figures and an HTML summary."""

from __future__ import annotations

from typing import Any

import pandas as pd

from qlab.data.candles import Candles
from qlab.engine.backtest import Simulation, simulate
from qlab.engine.orders import OrderSpec, SizeSpec


class Result:
    """A finished backtest: `trades`, `equity`, `cash`, `asset_pnl`, `positions`, plus `metrics()` and figures."""

    def __init__(self, simulation: Simulation) -> None:
        self.simulation = simulation
        self.trades = simulation.trades
        self.orders = simulation.orders
        self.equity = simulation.equity
        self.cash = simulation.cash
        self.asset_pnl = simulation.asset_pnl
        self.positions = simulation.positions
        self.symbols = simulation.symbols
        self.timeframe = simulation.timeframe

    def __repr__(self) -> str:
        m = self.metrics()
        return (f"Result({', '.join(self.symbols)} {self.timeframe}: {m['n_trades']} trades, "
                f"total return {m['total_return']:.2%}, sharpe {m['sharpe']:.2f}, max drawdown {m['max_drawdown']:.2%})")

    def metrics(self, *, benchmark: pd.Series | None = None, risk_free: float = 0.0) -> dict[str, Any]:
        """Return, risk, trade and cost metrics (see qlab.analytics.metrics.compute_metrics)."""
        from qlab.analytics.metrics import compute_metrics

        return compute_metrics(self.equity, self.trades, self.simulation.bars_per_year, positions=self.positions,
                               risk_free=risk_free, benchmark=benchmark)

    def metrics_table(self, **kwargs: Any) -> pd.DataFrame:
        """The metrics as a readable two-column table."""
        from qlab.analytics.metrics import metrics_table

        return metrics_table(self.equity, self.trades, self.simulation.bars_per_year, positions=self.positions, **kwargs)

    def asset_metrics(self) -> pd.DataFrame:
        """Per symbol: net PnL, its share of the total, return contribution, trades, win rate and costs paid."""
        from qlab.analytics.portfolio import asset_contribution
        from qlab.costs import cost_breakdown

        out = asset_contribution(self.asset_pnl, self.simulation.initial_cash)
        closed = self.trades[~self.trades.is_open]
        out["n_trades"] = closed.groupby("asset").size().reindex(out.index, fill_value=0)
        out["win_rate"] = closed.assign(win=closed.net_pnl > 0).groupby("asset")["win"].mean().reindex(out.index)
        out["costs"] = [cost_breakdown(self.trades[self.trades.asset == a])["total"] for a in out.index]
        return out

    def portfolio_report(self, benchmark: pd.Series | None = None, **kwargs: Any):
        """Contribution, correlation and risk decomposition of the symbols (and beta/alpha against `benchmark` closes)."""
        from qlab.analytics.portfolio import portfolio_report

        return portfolio_report(self.equity, self.asset_pnl, self.simulation.bars_per_year,
                                initial_cash=self.simulation.initial_cash, benchmark=benchmark, **kwargs)

    def costs(self) -> pd.Series:
        """Costs paid, by component (fees, spread, slippage, impact, funding, total)."""
        from qlab.costs import cost_breakdown

        return cost_breakdown(self.trades)

    def plot(self, kind: str = "equity", asset: str | None = None):
        """'equity' (with drawdown), 'trades' (on the price chart) or 'costs' (breakdown)."""
        from qlab.analytics import plots
        from qlab.errors import ConfigError, did_you_mean

        if kind == "equity":
            return plots.equity_figure(self.equity)
        if kind == "trades":
            name = asset or self.symbols[0]
            return plots.trades_figure(self.simulation.candles[name], self.trades[self.trades.asset == name], self.timeframe)
        if kind == "costs":
            return plots.cost_breakdown_figure(self.trades)
        raise ConfigError(f"plot kind {kind!r}; use 'equity', 'trades' or 'costs'." + did_you_mean(kind, ("equity", "trades", "costs")))

    def to_html(self) -> str:
        """A self-contained HTML summary: metrics, costs, equity and trades figures (plotly.js embedded once)."""
        parts = ["<h2>Metrics</h2>", self.metrics_table().to_html(), "<h2>Costs</h2>", self.costs().to_frame("paid").to_html()]
        for i, kind in enumerate(("equity", "trades", "costs")):
            parts.append(self.plot(kind).to_html(full_html=False, include_plotlyjs=i == 0))
        parts += ["<h2>Trades</h2>", self.trades.head(200).to_html(index=False)]
        return "<html><head><meta charset='utf-8'></head><body>" + "\n".join(parts) + "</body></html>"


def backtest(
    candles: Candles | dict[str, Candles],
    signals: pd.DataFrame | dict[str, pd.DataFrame],
    *,
    orders: OrderSpec | None = None,
    size: SizeSpec | None = None,
    costs: Any = "default",
    cash: float = 10_000.0,
    timeframe: str | None = None,
) -> Result:
    """Backtest signals on candles with realistic costs (the default); see qlab.engine.orders for the fill model.

    `candles` is one Candles frame or a dict {symbol: Candles} sharing one cash balance; `signals` the
    matching boolean frame(s) with columns entry_long, exit_long, entry_short, exit_short. Costs are the
    default CostModel unless you pass another, or `costs=None` to switch them off explicitly.
    """
    return Result(simulate(candles, signals, orders=orders, size=size, costs=costs, cash=cash, timeframe=timeframe))

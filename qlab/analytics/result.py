"""`qlab.backtest(...) -> Result`: the engine's tables with metrics, figures and an HTML summary."""

from __future__ import annotations

from typing import Any

import pandas as pd

from qlab.data.candles import Candles
from qlab.engine.backtest import Simulation, simulate
from qlab.engine.orders import OrderSpec, SizeSpec
from qlab.strategy.spec import Strategy


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
        self.strategy: Strategy | None = None  # set when the run came from a Strategy
        self.data: dict[str, pd.Series] | None = None

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

    def diagnose(self, asset: str | None = None):
        """For a Strategy run: how often each rule and each of its parts was true (why there were few or no trades)."""
        from qlab.errors import ConfigError
        from qlab.strategy.compile import diagnose

        if self.strategy is None:
            raise ConfigError("diagnose() explains Strategy runs; this backtest was given signal frames")
        name = asset or self.symbols[0]
        return diagnose(self.strategy, self.simulation.candles[name], self.data)

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


_FROM_SPEC = "from the strategy"


def backtest(
    candles: Candles | dict[str, Candles],
    signals: pd.DataFrame | dict[str, pd.DataFrame] | Strategy | str,
    *,
    orders: OrderSpec | None = None,
    size: SizeSpec | None = None,
    costs: Any = _FROM_SPEC,
    cash: float = 10_000.0,
    timeframe: str | None = None,
    data: dict[str, pd.Series] | None = None,
) -> Result:
    """Backtest on candles with realistic costs (the default); see qlab.engine.orders for the fill model.

    `candles` is one Candles frame or a dict {symbol: Candles} sharing one cash balance. `signals` is
    either the matching boolean frame(s) with columns entry_long, exit_long, entry_short, exit_short, or
    a Strategy (or a template name): it is compiled on each symbol's candles (with the extra `data`
    series it declares), and its orders, sizing and costs apply unless given here. Costs are the default
    CostModel unless you pass another, or `costs=None` to switch them off explicitly.
    """
    strategy = None
    if isinstance(signals, str):
        from qlab.strategy.templates import templates

        signals = templates[signals]
    if isinstance(signals, Strategy):
        from qlab.strategy.compile import strategy_signals

        strategy = signals
        frames = candles if isinstance(candles, dict) else {"asset": candles}
        compiled = {k: strategy_signals(strategy, v, data) for k, v in frames.items()}
        signals = compiled if isinstance(candles, dict) else compiled["asset"]
        orders = orders or strategy.order_spec()
        size = size or strategy.size_spec()
        costs = strategy.cost_model() if costs == _FROM_SPEC else costs
        timeframe = timeframe or strategy.timeframe
    elif costs == _FROM_SPEC:
        costs = "default"
    result = Result(simulate(candles, signals, orders=orders, size=size, costs=costs, cash=cash, timeframe=timeframe))
    result.strategy, result.data = strategy, data
    if strategy is not None and result.trades.empty:
        import warnings

        warnings.warn(f"strategy {strategy.name!r} made no trades:\n{result.diagnose()}", stacklevel=2)
    return result

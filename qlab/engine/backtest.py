"""Backtest entry point of the engine layer: checks inputs, prepares costs and runs the numba kernel.

`simulate(...)` returns plain tables (a `Simulation`); `qlab.backtest` wraps it in a `Result` with
metrics and figures (qlab.analytics.result), since analytics is a later layer than the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from qlab.costs import CostArrays, CostModel, resolve_costs
from qlab.data.candles import Candles, bars_per_year, infer_timeframe, validate_candles
from qlab.engine.orders import ENTRY_TYPES, EXIT_REASONS, SIZE_MODES, OrderSpec, SizeSpec, atr
from qlab.engine.simulate import FILL_FIELDS, TRADE_FIELDS, simulate_nb
from qlab.errors import ConfigError, DataError, did_you_mean

SIGNAL_COLUMNS = ("entry_long", "exit_long", "entry_short", "exit_short")
SINGLE = "asset"  # the asset name used when one Candles frame (not a dict) is passed


@dataclass
class Simulation:
    """What the engine produced: trades, equity and per-asset tables, and how it was run."""

    trades: pd.DataFrame
    orders: pd.DataFrame  # every fill: bar, time, asset, side, kind (entry/exit), reason, price, size, fee, maker
    equity: pd.Series
    cash: pd.Series
    asset_pnl: pd.DataFrame
    positions: pd.DataFrame  # signed position value at each close, per asset
    initial_cash: float
    timeframe: str
    bars_per_year: float
    order_spec: OrderSpec
    size_spec: SizeSpec
    costs: dict[str, CostModel | CostArrays]
    symbols: list[str]
    candles: dict[str, Candles] = field(repr=False, default_factory=dict)


def as_frames(candles: Candles | dict[str, Candles]) -> dict[str, Candles]:
    """One Candles frame or a dict of them, as a dict with identical validated indexes."""
    frames = dict(candles) if isinstance(candles, dict) else {SINGLE: candles}
    if not frames:
        raise DataError("no candles given; pass a Candles frame or a dict {symbol: Candles}")
    first_name, first = next(iter(frames.items()))
    for name, frame in frames.items():
        validate_candles(frame, where=f"candles of {name}")
        if not frame.index.equals(first.index):
            raise DataError(
                f"candles of {name!r} do not share the index of {first_name!r} ({len(frame)} vs {len(first)} bars, "
                f"{frame.index[0]} vs {first.index[0]}); align them first, e.g. with .reindex(common_index).dropna() on both"
            )
    return frames


def as_signals(signals: pd.DataFrame | dict[str, pd.DataFrame], frames: dict[str, Candles]) -> dict[str, np.ndarray]:
    """Signal frames as four [T, A] boolean arrays; missing columns are all False."""
    if isinstance(signals, pd.DataFrame):
        if len(frames) > 1:
            raise ConfigError(f"{len(frames)} symbols but one signal frame; pass a dict {{symbol: signals}} with the same keys")
        signals = {next(iter(frames)): signals}
    missing = [s for s in frames if s not in signals]
    if missing:
        raise ConfigError(f"no signals for {missing[0]!r}; signals have {list(signals)}." + did_you_mean(missing[0], list(signals)))
    T, A = len(next(iter(frames.values()))), len(frames)
    out = {col: np.zeros((T, A), dtype=np.bool_) for col in SIGNAL_COLUMNS}
    for a, (name, frame) in enumerate(frames.items()):
        sig = signals[name]
        if not isinstance(sig, pd.DataFrame):
            raise ConfigError(f"signals of {name} must be a DataFrame with columns {', '.join(SIGNAL_COLUMNS)}")
        unknown = [c for c in sig.columns if c not in SIGNAL_COLUMNS]
        if unknown:
            raise ConfigError(
                f"unknown signal column {unknown[0]!r} for {name}; use {', '.join(SIGNAL_COLUMNS)}."
                + did_you_mean(str(unknown[0]), SIGNAL_COLUMNS)
            )
        if not sig.index.equals(frame.index):
            raise DataError(f"signals of {name} are not aligned to its candles' index; reindex them to candles.index")
        if not any(col in sig.columns for col in SIGNAL_COLUMNS):
            raise ConfigError(f"signals of {name} have none of {', '.join(SIGNAL_COLUMNS)}")
        for col in SIGNAL_COLUMNS:
            if col not in sig.columns:
                continue
            values = sig[col]
            if values.isna().any():
                raise DataError(f"signal {col!r} of {name} is NaN at {values.index[values.isna().to_numpy()][0]}; fill it with False")
            if values.dtype != bool and not set(np.unique(values.to_numpy())) <= {0, 1}:
                raise DataError(f"signal {col!r} of {name} must be boolean (True/False), got dtype {values.dtype}")
            out[col][:, a] = values.to_numpy(dtype=bool)
    return out


def _columns(arrays: list[np.ndarray]) -> np.ndarray:
    """[T, A] float64 C-contiguous; one asset is a view of its array, not a copy."""
    if len(arrays) == 1:
        return np.ascontiguousarray(arrays[0], dtype=np.float64).reshape(-1, 1)
    return np.ascontiguousarray(np.column_stack(arrays), dtype=np.float64)


def _stack(frames: dict[str, Candles], column: str) -> np.ndarray:
    return _columns([f[column].to_numpy(dtype=np.float64) for f in frames.values()])


def _cost_models(costs: Any, frames: dict[str, Candles]) -> dict[str, CostModel | CostArrays]:
    """One CostModel (or already prepared CostArrays) per symbol."""
    def one(c: Any) -> CostModel | CostArrays:
        return c if isinstance(c, CostArrays) else resolve_costs(c)

    if isinstance(costs, dict):
        missing = [s for s in frames if s not in costs]
        if missing:
            raise ConfigError(f"no cost model for {missing[0]!r}; give one per symbol or a single CostModel")
        return {s: one(costs[s]) for s in frames}
    if isinstance(costs, CostArrays) and len(frames) > 1:
        raise ConfigError("one set of CostArrays for several symbols; pass a dict {symbol: CostArrays}")
    model = one(costs)
    return {s: model for s in frames}


def _past_vol(close: np.ndarray, window: int) -> np.ndarray:
    """Std of log returns over the `window` bars before each bar; NaN while it does not exist yet."""
    returns = pd.Series(np.log(close)).diff()
    return returns.rolling(window).std(ddof=1).shift(1).to_numpy()  # returns of bars t-window .. t-1


def simulate(
    candles: Candles | dict[str, Candles],
    signals: pd.DataFrame | dict[str, pd.DataFrame],
    *,
    orders: OrderSpec | None = None,
    size: SizeSpec | None = None,
    costs: Any = "default",
    cash: float = 10_000.0,
    timeframe: str | None = None,
) -> Simulation:
    """Run the fill model over candles and signals; `costs=None` (explicitly) means no costs at all."""
    orders = orders or OrderSpec()
    size = size or SizeSpec()
    if not (isinstance(cash, (int, float)) and cash > 0):
        raise ConfigError(f"cash={cash!r} must be a positive amount of quote currency, e.g. 10_000")
    frames = as_frames(candles)
    sig = as_signals(signals, frames)
    index = next(iter(frames.values())).index
    timeframe = timeframe or infer_timeframe(index)
    if size.mode == "risk" and orders.stop_loss is None and orders.stop_loss_atr is None:
        raise ConfigError("size mode 'risk' needs a stop distance: set OrderSpec(stop_loss=...) or stop_loss_atr=...")
    models = _cost_models(costs, frames)
    prepared: list[CostArrays] = [m if isinstance(m, CostArrays) else m.prepare(frames[s], timeframe) for s, m in models.items()]
    for s, p in zip(frames, prepared, strict=True):
        if len(p) != len(frames[s]):
            raise ConfigError(f"cost arrays for {s} have {len(p)} bars, the candles {len(frames[s])}; prepare them on the same candles")

    def stack_costs(name: str) -> np.ndarray:
        return _columns([getattr(p, name) for p in prepared])

    def per_asset(name: str) -> np.ndarray:
        return np.array([float(getattr(p, name)) for p in prepared], dtype=np.float64)

    high, low, close = _stack(frames, "high"), _stack(frames, "low"), _stack(frames, "close")
    nans = np.full_like(close, np.nan)  # ATR and volatility are computed only when the orders or sizing use them
    needs_atr = orders.stop_loss_atr is not None or orders.trailing_atr is not None
    atr_arr = np.column_stack([atr(high[:, a], low[:, a], close[:, a], orders.atr_period)
                               for a in range(len(frames))]) if needs_atr else nans
    vol_arr = np.column_stack([_past_vol(close[:, a], size.vol_window)
                               for a in range(len(frames))]) if size.mode == "vol_target" else nans
    nan = float("nan")

    def opt(value: float | None) -> float:
        return nan if value is None else float(value)

    trades, equity, cash_arr, asset_pnl, position_value, fills = simulate_nb(
        _stack(frames, "open"), high, low, close, sig["entry_long"], sig["exit_long"], sig["entry_short"], sig["exit_short"],
        np.ascontiguousarray(atr_arr), np.ascontiguousarray(vol_arr),
        stack_costs("half_spread"), stack_costs("slippage"), stack_costs("sigma"), stack_costs("adv"), stack_costs("funding"),
        per_asset("maker_fee"), per_asset("taker_fee"), per_asset("impact_k"), per_asset("participation_cap"),
        ENTRY_TYPES.index(orders.entry), float(orders.entry_offset), float(orders.limit_offset), orders.tif_bars,
        opt(orders.stop_loss), opt(orders.stop_loss_atr), opt(orders.take_profit), opt(orders.trailing_stop), opt(orders.trailing_atr),
        orders.timing == "close", orders.path == "pessimistic",
        SIZE_MODES.index(size.mode), float(size.value), float(size.leverage), float(size.maintenance_margin),
        float(size.min_notional), float(bars_per_year(timeframe)), float(cash),
        int(sig["entry_long"].sum() + sig["entry_short"].sum()),
    )
    symbols = list(frames)
    return Simulation(
        trades=trades_frame(trades, symbols, index),
        orders=fills_frame(fills, symbols, index),
        equity=pd.Series(equity, index=index, name="equity"),
        cash=pd.Series(cash_arr, index=index, name="cash"),
        asset_pnl=pd.DataFrame(asset_pnl, index=index, columns=symbols),
        positions=pd.DataFrame(position_value, index=index, columns=symbols),
        initial_cash=float(cash), timeframe=timeframe, bars_per_year=bars_per_year(timeframe),
        order_spec=orders, size_spec=size, costs=models, symbols=symbols, candles=frames,
    )


def trades_frame(records: np.ndarray, symbols: list[str], index: pd.DatetimeIndex) -> pd.DataFrame:
    """The kernel's trade matrix as a tidy table, sorted by entry bar then asset order."""
    raw = pd.DataFrame(records, columns=list(TRADE_FIELDS))
    asset_pos = raw["asset"].to_numpy(dtype=np.int64)
    out = pd.DataFrame({
        "asset": pd.Series([symbols[k] for k in asset_pos], dtype=object),
        "direction": raw["direction"].astype(np.int64),
        "entry_bar": raw["entry_bar"].astype(np.int64),
        "exit_bar": raw["exit_bar"].astype(np.int64),
    })
    out["entry_time"] = index[out["entry_bar"].to_numpy()] if len(out) else pd.DatetimeIndex([], tz="UTC")
    out["exit_time"] = index[out["exit_bar"].to_numpy()] if len(out) else pd.DatetimeIndex([], tz="UTC")
    for col in ("entry_price", "exit_price", "size", "entry_fee", "exit_fee", "spread_cost", "slippage_cost",
                "impact_cost", "funding", "gross_pnl", "net_pnl"):
        out[col] = raw[col].to_numpy(dtype=np.float64)
    out["exit_reason"] = pd.Series([EXIT_REASONS[int(r)] for r in raw["exit_reason"]], dtype=object)
    out["is_open"] = raw["is_open"].to_numpy() > 0
    out["_asset_pos"] = asset_pos
    out = out.sort_values(["entry_bar", "_asset_pos", "exit_bar"], kind="stable").drop(columns="_asset_pos")
    return out.reset_index(drop=True)


def fills_frame(records: np.ndarray, symbols: list[str], index: pd.DatetimeIndex) -> pd.DataFrame:
    """The kernel's fills log as a table: one row per fill, in the order they happened."""
    raw = pd.DataFrame(records, columns=list(FILL_FIELDS))
    bars = raw["bar"].to_numpy(dtype=np.int64)
    kind = raw["kind"].to_numpy(dtype=np.int64)
    reason = raw["reason"].to_numpy(dtype=np.int64)
    return pd.DataFrame({
        "bar": bars,
        "time": index[bars] if len(bars) else pd.DatetimeIndex([], tz="UTC"),
        "asset": pd.Series([symbols[k] for k in raw["asset"].to_numpy(dtype=np.int64)], dtype=object),
        "side": raw["side"].to_numpy(dtype=np.int64),
        "kind": pd.Series(["entry" if k == 0 else "exit" for k in kind], dtype=object),
        "reason": pd.Series([ENTRY_TYPES[r] if k == 0 else EXIT_REASONS[r] for k, r in zip(kind, reason, strict=True)], dtype=object),
        "price": raw["price"].to_numpy(dtype=np.float64),
        "size": raw["size"].to_numpy(dtype=np.float64),
        "fee": raw["fee"].to_numpy(dtype=np.float64),
        "maker": raw["maker"].to_numpy() > 0,
    })

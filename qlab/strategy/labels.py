"""Training labels from forward prices, for the ML indicator: the sign of the forward return over a horizon,
or the triple barrier (take-profit / stop-loss / time limit).

The label of bar t is known only at the close of bar t + horizon: the last `horizon` bars have no label
(NaN, never 0), and a model that predicts at bar s may train only on bars t <= s - 1 - horizon (the
purge that qlab.strategy.ml applies).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from qlab.errors import ConfigError

LABELS = ("sign", "triple_barrier")


def _horizon(horizon: int) -> int:
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 1:
        raise ConfigError(f"horizon={horizon!r} must be a whole number of bars >= 1, e.g. 4")
    return int(horizon)


def sign_labels(close: pd.Series, horizon: int, threshold: float = 0.0) -> pd.Series:
    """1.0 where close[t + horizon] / close[t] - 1 > threshold, else 0.0; NaN on the last `horizon` bars."""
    h = _horizon(horizon)
    forward = close.shift(-h) / close - 1.0
    out = (forward > threshold).astype(np.float64)
    out[forward.isna()] = np.nan
    return out.rename("label")


def triple_barrier_labels(candles: pd.DataFrame, horizon: int, take_profit: float, stop_loss: float) -> pd.Series:
    """1.0 when, after entering at bar t's close, the high reaches close*(1+take_profit) within the next
    `horizon` bars before the low reaches close*(1-stop_loss); 0.0 when the stop comes first (a bar touching
    both counts as the stop: pessimistic, like the engine's intra-bar rule); at the time limit the sign of
    the return decides. NaN on the last `horizon` bars."""
    h = _horizon(horizon)
    for name, value in (("take_profit", take_profit), ("stop_loss", stop_loss)):
        if not (isinstance(value, int | float) and 0 < value < 10):
            raise ConfigError(f"{name}={value!r} must be a fraction of the entry price > 0, e.g. 0.02 for 2 %")
    close, high, low = (candles[k].to_numpy(dtype=np.float64) for k in ("close", "high", "low"))
    n = len(close)
    out = np.full(n, np.nan)
    m = n - h  # bars with a full horizon ahead
    if m <= 0:
        return pd.Series(out, index=candles.index, name="label")
    entry = close[:m, None]
    # windows of bars t+1 .. t+h (numpy has no first-hit search; a vectorised O(n*h) scan of the windows)
    highs, lows = sliding_window_view(high[1:], h)[:m], sliding_window_view(low[1:], h)[:m]
    hit_tp, hit_sl = highs >= entry * (1 + take_profit), lows <= entry * (1 - stop_loss)
    first_tp = np.where(hit_tp.any(axis=1), hit_tp.argmax(axis=1), h)
    first_sl = np.where(hit_sl.any(axis=1), hit_sl.argmax(axis=1), h)
    at_limit = (close[h:h + m] > close[:m]).astype(np.float64)
    out[:m] = np.where(first_tp < first_sl, 1.0, np.where(first_sl < h, 0.0, at_limit))
    return pd.Series(out, index=candles.index, name="label")


def make_labels(candles: pd.DataFrame, kind: str, horizon: int, take_profit: float = 0.02, stop_loss: float = 0.02) -> pd.Series:
    """The labels of `kind` ('sign' or 'triple_barrier') on the candles' index."""
    if kind == "sign":
        return sign_labels(candles["close"], horizon)
    if kind == "triple_barrier":
        return triple_barrier_labels(candles, horizon, take_profit, stop_loss)
    from qlab.errors import did_you_mean

    raise ConfigError(f"label {kind!r} is not a label kind; use one of {', '.join(LABELS)}." + did_you_mean(str(kind), LABELS))

"""Property test: on random signals over real candles, with random order and sizing settings, the fast engine
and the reference loop agree on every trade and every equity value."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qlab
from qlab.costs import CostModel
from qlab.engine.backtest import simulate
from qlab.engine.orders import OrderSpec, SizeSpec
from qlab.engine.reference import reference_backtest

CANDLES = qlab.load_sample("ETH/BTC", "5m").iloc[:600]
COSTS = CostModel().prepare(CANDLES)

orders = st.builds(
    OrderSpec,
    entry=st.sampled_from(["market", "limit", "stop", "stop_limit"]),
    entry_offset=st.sampled_from([0.0, 0.001, 0.003]),
    limit_offset=st.sampled_from([0.0, 0.002]),
    tif=st.sampled_from(["gtc", "ioc", 2, 5]),
    stop_loss=st.sampled_from([None, 0.004, 0.01]),
    take_profit=st.sampled_from([None, 0.006, 0.02]),
    trailing_stop=st.sampled_from([None, 0.005]),
    timing=st.sampled_from(["next_open", "close"]),
    path=st.sampled_from(["ohlc", "pessimistic"]),
)
sizes = st.sampled_from([SizeSpec("percent", 0.9), SizeSpec("units", 20.0), SizeSpec("amount", 0.3),
                         SizeSpec("percent", 0.5, leverage=25.0), SizeSpec("vol_target", 0.5)])


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), density=st.sampled_from([0.02, 0.08, 0.25]), order=orders, size=sizes)
def test_fast_engine_equals_the_reference_on_random_signals(seed, density, order, size):
    rng = np.random.default_rng(seed)
    sig = pd.DataFrame(rng.random((len(CANDLES), 4)) < density, index=CANDLES.index,
                       columns=["entry_long", "exit_long", "entry_short", "exit_short"])
    fast = simulate(CANDLES, sig, orders=order, size=size, costs=COSTS, cash=1.0)
    ref = reference_backtest(CANDLES, sig, orders=order, size=size, costs=COSTS, cash=1.0)
    a, b = fast.trades, ref.trades
    assert len(a) == len(b)
    for col in ("direction", "entry_bar", "exit_bar", "exit_reason", "is_open"):
        assert a[col].tolist() == b[col].tolist(), col
    for col in ("entry_price", "exit_price", "size", "entry_fee", "exit_fee", "net_pnl", "funding"):
        np.testing.assert_allclose(a[col].to_numpy(float), b[col].to_numpy(float), rtol=1e-9, atol=1e-12, err_msg=col)
    np.testing.assert_allclose(fast.equity.to_numpy(), ref.equity.to_numpy(), rtol=1e-9, atol=1e-12)

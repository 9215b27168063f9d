"""The reference loop against hand-computed cases (numbers worked out in the comments) and accounting invariants
on real data. Bars are hourly from 2024-01-01; `bars` rows are (open, high, low, close).

Every test runs twice: on the reference loop and on the fast numba engine (`engine` fixture), so each
hand-computed case pins both implementations of the fill model."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import qlab
from qlab.costs import CostArrays, CostModel
from qlab.engine.orders import EXIT_REASONS, OrderSpec, SizeSpec, atr
from qlab.engine.reference import TRADE_COLUMNS, path_points, reference_backtest
from qlab.errors import ConfigError, DataError

approx = pytest.approx


def _fast_backtest(candles, signals, *, orders=OrderSpec(), size=SizeSpec(), costs, cash=10_000.0, timeframe=None):  # noqa: B008
    """The fast engine behind the reference's call signature."""
    from qlab.engine.backtest import simulate

    return simulate(candles, signals, orders=orders, size=size, costs=costs, cash=cash, timeframe=timeframe)


@pytest.fixture(autouse=True, params=["reference", "fast"])
def engine(request, monkeypatch):
    """Run the test on the reference loop, then on the fast engine."""
    if request.param == "fast":
        monkeypatch.setitem(globals(), "reference_backtest", _fast_backtest)
    return request.param


def bars(*rows: tuple[float, float, float, float]) -> pd.DataFrame:
    index = pd.DatetimeIndex(pd.date_range("2024-01-01", periods=len(rows), freq="1h", tz="UTC"), name="timestamp").as_unit("ns")
    frame = pd.DataFrame(rows, columns=["open", "high", "low", "close"], index=index, dtype="float64")
    frame["volume"] = 1000.0
    return frame


def signals(candles: pd.DataFrame, **at: list[int]) -> pd.DataFrame:
    """Signals true at the given bar positions, e.g. signals(c, entry_long=[0], exit_long=[2])."""
    out = pd.DataFrame(False, index=candles.index, columns=["entry_long", "exit_long", "entry_short", "exit_short"])
    for col, positions in at.items():
        out.iloc[positions, out.columns.get_loc(col)] = True
    return out


def costs(n: int, *, maker: float = 0.0, taker: float = 0.0, half_spread: float = 0.0, slippage: float = 0.0,
          sigma: float = 0.0, adv: float = 1e12, impact_k: float = 0.0, cap: float = math.inf,
          funding: dict[int, float] | None = None) -> CostArrays:
    rates = np.zeros(n)
    for i, rate in (funding or {}).items():
        rates[i] = rate
    return CostArrays(maker_fee=maker, taker_fee=taker, half_spread=np.full(n, half_spread), slippage=np.full(n, slippage),
                      sigma=np.full(n, sigma), adv=np.full(n, adv), impact_k=impact_k, participation_cap=cap, funding=rates)


def run(candles, sig, *, size=SizeSpec("units", 1.0), orders=OrderSpec(), cost=None, **kw):  # noqa: B008
    return reference_backtest(candles, sig, orders=orders, size=size, costs=cost if cost is not None else costs(len(candles)), **kw)


FLAT = (100, 101, 99, 100)


# ------------------------------------------------------------------ market orders, timing
def test_market_entry_at_next_open_with_fee_and_half_spread():
    c = bars(FLAT, (101, 103, 100, 102), (102, 104, 101, 103), (104, 105, 103, 104), (104, 105, 103, 104))
    r = run(c, signals(c, entry_long=[0], exit_long=[2]), size=SizeSpec("units", 2.0),
            cost=costs(5, taker=0.001, maker=0.0002, half_spread=0.0002))
    (t,) = r.trades.itertuples()
    # entry at bar 1's open 101: price 101 * 1.0002 = 101.0202, fee 0.001 * 101.0202 * 2 = 0.2020404, spread 0.0002*101*2
    assert (t.entry_bar, t.exit_bar, t.direction, t.size) == (1, 3, 1, 2.0)
    assert t.entry_price == approx(101.0202) and t.entry_fee == approx(0.2020404)
    # exit at bar 3's open 104: price 104 * 0.9998 = 103.9792, fee 0.001 * 103.9792 * 2 = 0.2079584, spread 0.0002*104*2
    assert t.exit_price == approx(103.9792) and t.exit_fee == approx(0.2079584)
    assert t.spread_cost == approx(0.0404 + 0.0416) and t.slippage_cost == 0 and t.impact_cost == 0
    # gross 2 * (103.9792 - 101.0202) = 5.918; net 5.918 - 0.2020404 - 0.2079584 = 5.5080012
    assert t.gross_pnl == approx(5.918) and t.net_pnl == approx(5.5080012)
    assert t.exit_reason == "signal" and not t.is_open and t.entry_time == c.index[1] and t.exit_time == c.index[3]
    # bar 1: cash 10000 - 202.0404 - 0.2020404 = 9797.7575596; equity adds margin 202.0404 + 2 * (102 - 101.0202)
    assert r.cash.iloc[1] == approx(9797.7575596) and r.equity.iloc[1] == approx(10001.7575596)
    assert r.equity.iloc[0] == 10000 and r.equity.iloc[-1] == approx(10005.5080012)
    assert list(r.trades.columns) == list(TRADE_COLUMNS)
    assert list(r.orders.kind) == ["entry", "exit"] and list(r.orders.side) == [1, -1] and not r.orders.maker.any()


def test_timing_close_fills_at_the_signal_bars_close():
    c = bars(FLAT, (101, 103, 100, 102), (102, 104, 101, 103), (104, 105, 103, 104))
    r = run(c, signals(c, entry_long=[0], exit_long=[2]), orders=OrderSpec(timing="close"), cost=costs(4, taker=0.001))
    (t,) = r.trades.itertuples()
    # in at bar 0's close 100 (fee 0.1), out at bar 2's close 103 (fee 0.103): net 3 - 0.203 = 2.797
    assert (t.entry_bar, t.exit_bar, t.entry_price, t.exit_price) == (0, 2, 100, 103)
    assert t.net_pnl == approx(2.797)
    # equity at bar 0's close includes the fill: 10000 - 0.1
    assert r.cash.iloc[0] == approx(9899.9) and r.equity.iloc[0] == approx(9999.9)


# ------------------------------------------------------------------ limit / stop / stop_limit entries
LIMIT = OrderSpec(entry="limit", entry_offset=0.01)  # long limit at close_t * 0.99


def test_limit_touched_is_not_filled_traded_through_fills_at_limit_as_maker():
    fees = {"maker": 0.0002, "taker": 0.001, "half_spread": 0.0002}
    # signal at bar 0 (close 100) -> limit 99; bar 1's low only touches 99; bar 2's low 98.5 goes through
    c = bars(FLAT, (100, 101, 99, 100), (100, 100.5, 98.5, 99.5), (99.5, 100, 99, 99.8))
    r = run(c, signals(c, entry_long=[0]), orders=LIMIT, cost=costs(4, **fees))
    (t,) = r.trades.itertuples()
    # maker: price = 99 exactly, fee 0.0002 * 99 = 0.0198, no spread; still open at the end
    assert (t.entry_bar, t.entry_price, t.entry_fee, t.spread_cost) == (2, 99, approx(0.0198), 0)
    assert t.is_open and t.exit_reason == "end" and t.exit_price == 99.8 and t.exit_fee == 0
    assert t.net_pnl == approx(0.8 - 0.0198) and r.orders.maker.tolist() == [True]
    only_touch = bars(FLAT, (100, 101, 99, 100), (100, 101, 99, 100.5))
    assert run(only_touch, signals(only_touch, entry_long=[0]), orders=LIMIT, cost=costs(3, **fees)).trades.empty


def test_marketable_limit_fills_at_the_open_as_taker():
    c = bars(FLAT, (98.5, 99, 98, 98.8), (98.8, 99, 98.5, 99))
    r = run(c, signals(c, entry_long=[0]), orders=LIMIT, cost=costs(3, maker=0.0002, taker=0.001, half_spread=0.0002))
    (t,) = r.trades.itertuples()
    # open 98.5 <= limit 99: taker at the open: 98.5 * 1.0002 = 98.5197, fee 0.001 * 98.5197
    assert (t.entry_bar, t.entry_price, t.entry_fee) == (1, approx(98.5197), approx(0.0985197))
    assert r.orders.maker.tolist() == [False]


def test_short_limit_is_placed_above_the_close():
    c = bars(FLAT, (100, 101.5, 99.5, 101), (101, 101.2, 100, 100.5))
    r = run(c, signals(c, entry_short=[0]), orders=LIMIT)
    (t,) = r.trades.itertuples()
    # short limit at 101; path 100 -> 99.5 -> 101.5 (low nearer) trades through 101 on the way up
    assert (t.direction, t.entry_bar, t.entry_price) == (-1, 1, 101)
    assert t.gross_pnl == approx(0.5)  # -1 * (100.5 - 101)


def test_stop_entry_gapped_at_open_and_touched_inside_the_bar():
    spec = OrderSpec(entry="stop", entry_offset=0.01)  # long stop at 101
    gap = bars(FLAT, (102, 103, 101.5, 102.5))
    (t,) = run(gap, signals(gap, entry_long=[0]), orders=spec).trades.itertuples()
    assert (t.entry_bar, t.entry_price) == (1, 102)  # gapped at the open -> the open
    touch = bars(FLAT, (100, 101, 99.8, 100.5))
    (t,) = run(touch, signals(touch, entry_long=[0]), orders=spec, cost=costs(2, taker=0.001)).trades.itertuples()
    assert t.entry_price == 101 and t.entry_fee == approx(0.101)  # high 101 touches the stop: filled at it, taker fee


def test_stop_limit_trigger_gap_within_and_beyond_the_limit():
    spec = OrderSpec(entry="stop_limit", entry_offset=0.01, limit_offset=0.005)  # stop 101, limit 101 * 1.005 = 101.505
    fees = {"maker": 0.0002, "taker": 0.001}
    # a) triggered inside the bar (path 100 -> 99.5 -> 102): fills at the trigger price 101 as a taker
    c = bars(FLAT, (100, 102, 99.5, 101.8))
    r = run(c, signals(c, entry_long=[0]), orders=spec, cost=costs(2, **fees))
    assert r.trades.entry_price.tolist() == [101] and r.orders.maker.tolist() == [False]
    # b) gapped to 102, beyond the limit: rests as a limit; path 102 -> 102.5 -> 101.2 trades through 101.505: maker
    c = bars(FLAT, (102, 102.5, 101.2, 101.8))
    r = run(c, signals(c, entry_long=[0]), orders=spec, cost=costs(2, **fees))
    assert r.trades.entry_price.tolist() == [approx(101.505)] and r.orders.maker.tolist() == [True]
    assert r.trades.entry_fee.tolist() == [approx(0.0002 * 101.505)]
    # c) gapped to 101.3, between stop and limit: fills at the open as a taker
    c = bars(FLAT, (101.3, 101.6, 101, 101.4))
    r = run(c, signals(c, entry_long=[0]), orders=spec, cost=costs(2, **fees))
    assert r.trades.entry_price.tolist() == [101.3] and r.orders.maker.tolist() == [False]
    # d) gapped beyond the limit and never back through it: no fill (the limit keeps resting until the end)
    c = bars(FLAT, (102, 102.5, 101.505, 102))
    assert run(c, signals(c, entry_long=[0]), orders=spec).trades.empty


# ------------------------------------------------------------------ protective exits
def test_stop_loss_vs_take_profit_same_bar_ohlc_and_pessimistic():
    # long at bar 1's open 100: SL 98, TP 103. Bar 2: |open-high| = 3.5 < |open-low| = 4, so the ohlc path visits the high
    # first (trades through 103: take-profit, maker) while the pessimistic path visits the low first (stop-loss at 98)
    c = bars(FLAT, (100, 101, 99.5, 100.5), (100, 103.5, 96, 100), (100, 101, 99, 100))
    sig = signals(c, entry_long=[0])
    ohlc = run(c, sig, orders=OrderSpec(stop_loss=0.02, take_profit=0.03), cost=costs(4, maker=0.0002, taker=0.001))
    (t,) = ohlc.trades.itertuples()
    assert (t.exit_bar, t.exit_reason, t.exit_price, t.exit_fee) == (2, "take_profit", 103, approx(0.0206))
    # entry fee 0.1 (taker), exit fee 0.0002 * 103 (maker): net 3 - 0.1 - 0.0206
    assert t.net_pnl == approx(2.8794) and ohlc.orders.maker.tolist() == [False, True]
    pess = run(c, sig, orders=OrderSpec(stop_loss=0.02, take_profit=0.03, path="pessimistic"))
    (t,) = pess.trades.itertuples()
    assert (t.exit_bar, t.exit_reason, t.exit_price) == (2, "stop_loss", 98)


def test_path_points():
    assert path_points(100, 103.5, 96, 100, "ohlc", 1) == [100, 103.5, 96, 100]  # high nearer
    assert path_points(100, 104, 96, 100, "ohlc", 0) == [100, 104, 96, 100]  # tie -> high first
    assert path_points(100, 103.5, 96, 100, "pessimistic", 1) == [100, 96, 103.5, 100]  # long: low first
    assert path_points(100, 110, 99, 100, "pessimistic", -1) == [100, 110, 99, 100]  # short: high first
    assert path_points(100, 110, 99, 100, "pessimistic", 0) == [100, 99, 110, 100]  # flat: the default rule


def test_trailing_stop_follows_the_peak_at_the_close():
    # long at 100 (bar 1's open), trailing 5 %: bar 1's level 95 (low 99: nothing); at bar 1's close the peak takes its
    # high 110 -> bar 2's level 104.5; bar 2 goes 108 -> 109 -> 104 and meets 104.5 on the way down
    c = bars(FLAT, (100, 110, 99, 108), (108, 109, 104, 105), (105, 106, 104, 105))
    (t,) = run(c, signals(c, entry_long=[0]), orders=OrderSpec(trailing_stop=0.05)).trades.itertuples()
    assert (t.exit_bar, t.exit_reason, t.exit_price) == (2, "trailing_stop", approx(104.5))


def test_trailing_peak_of_an_entry_inside_the_bar_ignores_the_path_before_the_fill():
    # SPEC choice: limit 99 fills on bar 1's path 100 -> 101 -> 98.5 -> 100 (its level 99 * 0.99 = 98.01 is not met);
    # the path after the fill peaks at 100, not at the bar's high 101, so bar 2's trailing level is 100 * 0.99 = 99 and
    # bar 2 (low 99.2) does not stop out (with the peak at 101 the level 99.99 would be gapped at bar 2's open);
    # bar 3 goes 99.5 -> 99.6 -> 98.9 and meets 99
    c = bars(FLAT, (100, 101, 98.5, 100), (99.5, 99.8, 99.2, 99.5), (99.5, 99.6, 98.9, 99.2))
    (t,) = run(c, signals(c, entry_long=[0]), orders=OrderSpec(entry="limit", entry_offset=0.01, trailing_stop=0.01)).trades.itertuples()
    assert (t.entry_bar, t.entry_price, t.exit_bar, t.exit_price, t.exit_reason) == (1, 99, 3, 99, "trailing_stop")


def test_entry_and_its_stop_in_the_same_bar():
    # limit 99 fills on the path 100 -> 100.5 -> 96 (high nearer); the stop 99 * 0.98 = 97.02 is met further down
    c = bars(FLAT, (100, 100.5, 96, 98), FLAT)
    (t,) = run(c, signals(c, entry_long=[0]), orders=OrderSpec(entry="limit", entry_offset=0.01, stop_loss=0.02)).trades.itertuples()
    assert (t.entry_bar, t.exit_bar, t.entry_price, t.exit_price, t.exit_reason) == (1, 1, 99, approx(97.02), "stop_loss")


def test_atr_stop_and_entries_skipped_before_atr_exists():
    # every bar spans 2 with no gaps: true range 2, so ATR(3) is NaN for bars 0-2, then 2
    c = bars(FLAT, FLAT, FLAT, FLAT, FLAT, (100, 100.5, 95.5, 97), FLAT)
    assert np.isnan(atr(c.high.to_numpy(), c.low.to_numpy(), c.close.to_numpy(), 3)[:3]).all()
    assert atr(c.high.to_numpy(), c.low.to_numpy(), c.close.to_numpy(), 3)[3] == 2
    spec = OrderSpec(stop_loss_atr=2.0, atr_period=3)
    r = run(c, signals(c, entry_long=[1, 3]), orders=spec)
    (t,) = r.trades.itertuples()
    # bar 1's signal is skipped (ATR NaN); bar 3's fills at bar 4's open 100 with a stop at 100 - 2 * 2 = 96
    assert (t.entry_bar, t.exit_bar, t.exit_reason, t.exit_price) == (4, 5, "stop_loss", 96)


def test_bracket_oco_take_profit_gapped_at_the_open_cancels_the_stop():
    spec = OrderSpec(stop_loss=0.02, take_profit=0.03)  # SL 98, TP 103 around the entry 100
    c = bars(FLAT, (100, 101, 99.5, 100.5), (105, 106, 104, 105), (100, 100, 90, 91), (91, 92, 90, 91))
    r = run(c, signals(c, entry_long=[0]), orders=spec, cost=costs(5, maker=0.0002, taker=0.001))
    (t,) = r.trades.itertuples()
    # the open 105 is beyond the TP: filled at the open as a taker (fee 0.105); the stop is gone with the position
    assert (t.exit_bar, t.exit_reason, t.exit_price, t.exit_fee) == (2, "take_profit", 105, approx(0.105))
    assert r.cash.iloc[-1] == approx(10000 + 5 - 0.1 - 0.105)


def test_time_in_force_ioc_and_n_bars():
    # limit 99 (signal at bar 0); bar 1 stays above it, bar 2 trades through it
    c = bars(FLAT, (100, 101, 99.5, 100), (100, 100.5, 98, 99), (99, 100, 98, 99))
    sig = signals(c, entry_long=[0])
    assert run(c, sig, orders=OrderSpec(entry="limit", entry_offset=0.01, tif="ioc")).trades.empty
    assert run(c, sig, orders=OrderSpec(entry="limit", entry_offset=0.01, tif=1)).trades.empty
    r = run(c, sig, orders=OrderSpec(entry="limit", entry_offset=0.01, tif=2))
    assert r.trades.entry_bar.tolist() == [2] and r.trades.entry_price.tolist() == [99]
    # gtc: a new entry_long signal while the order is pending is ignored (one order, one trade)
    r = run(c, signals(c, entry_long=[0, 1]), orders=OrderSpec(entry="limit", entry_offset=0.01))
    assert r.trades.entry_bar.tolist() == [2] and r.trades.entry_price.tolist() == [99]


def test_pending_entry_cancelled_by_its_exit_signal():
    c = bars(FLAT, (100, 101, 99.5, 100), (100, 100.5, 98, 99))
    # limit 99 from bar 0; exit_long at bar 1 cancels it before bar 2 trades through
    assert run(c, signals(c, entry_long=[0], exit_long=[1]), orders=LIMIT).trades.empty


# ------------------------------------------------------------------ signal rules
def test_reversal_long_to_short():
    c = bars(FLAT, (101, 102, 100, 101), (101, 102, 100, 102), (103, 104, 102, 103), (103, 104, 101, 102))
    r = run(c, signals(c, entry_long=[0], entry_short=[2]))
    long_, short = r.trades.itertuples()
    # long 101 (bar 1) -> 103 (bar 3's open); short from 103 at the same open, open at the end (close 102)
    assert (long_.direction, long_.entry_price, long_.exit_bar, long_.exit_price, long_.exit_reason) == (1, 101, 3, 103, "signal")
    assert (short.direction, short.entry_bar, short.entry_price, short.is_open, short.gross_pnl) == (-1, 3, 103, True, 1)
    assert r.equity.iloc[-1] == 10000 + 2 + 1
    assert r.orders.kind.tolist() == ["entry", "exit", "entry"]


def test_signal_conflicts():
    c = bars(FLAT, (101, 102, 100, 101), (101, 102, 100, 102), (103, 104, 102, 103), (103, 104, 101, 102))
    # entry_long and exit_long together: both ignored, the long stays
    r = run(c, signals(c, entry_long=[0, 2], exit_long=[2]))
    assert r.trades.is_open.tolist() == [True]
    # flat with entry_long and exit_long together: no entry
    assert run(c, signals(c, entry_long=[0], exit_long=[0])).trades.empty
    # entry_long and entry_short together: no entry at all; while long, the implied exit still closes the long
    assert run(c, signals(c, entry_long=[0], entry_short=[0])).trades.empty
    r = run(c, signals(c, entry_long=[0, 2], entry_short=[2]))
    assert len(r.trades) == 1 and r.trades.exit_bar.tolist() == [3] and r.trades.exit_reason.tolist() == ["signal"]
    # an entry signal while already in that direction is ignored
    assert run(c, signals(c, entry_long=[0, 1, 2])).trades.entry_bar.tolist() == [1]


def test_signals_of_the_last_bar_create_nothing_and_missing_columns_are_false():
    c = bars(FLAT, FLAT)
    assert run(c, signals(c, entry_long=[1])).trades.empty
    r = run(c, pd.DataFrame({"entry_long": [True, False]}, index=c.index))
    assert r.trades.entry_bar.tolist() == [1]


# ------------------------------------------------------------------ funding, leverage, liquidation
def test_funding_on_a_perpetual():
    c = bars(FLAT, (100, 101, 99, 101), (102, 103, 101, 102), (103, 104, 102, 103), (104, 105, 103, 104), FLAT)
    # the long (2 units) pays 2 * 102 * 0.0001 = 0.0204 at bar 2 and receives 2 * 103 * 0.0002 = 0.0412 at bar 3;
    # bar 1's rate is not charged: the position only opens at that open
    cost = costs(6, funding={1: 0.001, 2: 0.0001, 3: -0.0002})
    (t,) = run(c, signals(c, entry_long=[0], exit_long=[3]), size=SizeSpec("units", 2.0), cost=cost).trades.itertuples()
    assert t.funding == approx(0.0204 - 0.0412)
    assert t.net_pnl == approx(2 * (104 - 100) - (0.0204 - 0.0412))  # exit at bar 4's open 104
    (t,) = run(c, signals(c, entry_short=[0], exit_short=[3]), size=SizeSpec("units", 2.0), cost=cost).trades.itertuples()
    assert t.funding == approx(-(0.0204 - 0.0412))  # a short receives a positive rate


def test_leverage_10_liquidation_at_the_computed_price():
    size = SizeSpec("units", 10.0, leverage=10, maintenance_margin=0.005)
    # entry 100, margin 10 * 100 / 10 = 100; liquidation 100 * (1 - 1/10) / (1 - 0.005) = 90 / 0.995 = 90.4522613...
    c = bars(FLAT, FLAT, (95, 96, 90, 92), FLAT)
    r = run(c, signals(c, entry_long=[0]), size=size)
    (t,) = r.trades.itertuples()
    assert (t.exit_bar, t.exit_reason, t.exit_price) == (2, "liquidation", approx(90 / 0.995))
    # returned: 100 + 10 * (90.4522613 - 100) = 4.522613; net = -95.477387
    assert t.net_pnl == approx(10 * (90 / 0.995 - 100)) and r.cash.iloc[-1] == approx(10000 + 10 * (90 / 0.995 - 100))


def test_liquidation_gap_loss_capped_at_margin():
    size = SizeSpec("units", 10.0, leverage=10, maintenance_margin=0.005)
    c = bars(FLAT, FLAT, (85, 86, 80, 82), FLAT)
    r = run(c, signals(c, entry_long=[0]), size=size)
    (t,) = r.trades.itertuples()
    # gapped below 90.45 to the open 85: gross 10 * (85 - 100) = -150, but the loss is capped at the margin 100
    assert (t.exit_price, t.exit_reason, t.gross_pnl, t.net_pnl) == (85, "liquidation", -150, -100)
    assert r.cash.iloc[-1] == 9900 and r.equity.iloc[-1] == 9900


def test_priority_list_breaks_gaps_and_ties():
    # gap: liquidation (90.45) and stop-loss (95) are both crossed by the open 85: the first in the list (liquidation) wins
    size = SizeSpec("units", 10.0, leverage=10, maintenance_margin=0.005)
    c = bars(FLAT, FLAT, (85, 86, 80, 82), FLAT)
    (t,) = run(c, signals(c, entry_long=[0]), size=size, orders=OrderSpec(stop_loss=0.05)).trades.itertuples()
    assert (t.exit_reason, t.exit_price, t.net_pnl) == ("liquidation", 85, -100)
    # tie on the path: stop-loss 100 * 0.95 and trailing 100 * 0.95 (peak still the entry price) are met at the same point
    c = bars(FLAT, (100, 100, 94, 96), FLAT)
    (t,) = run(c, signals(c, entry_long=[0]), orders=OrderSpec(stop_loss=0.05, trailing_stop=0.05)).trades.itertuples()
    assert (t.exit_bar, t.exit_reason, t.exit_price) == (1, "stop_loss", 95)

def test_short_liquidation_price():
    size = SizeSpec("units", 5.0, leverage=5, maintenance_margin=0.01)
    # short 100 at 5x: 100 * (1 + 1/5) / (1 + 0.01) = 118.8118...; margin 100
    c = bars(FLAT, FLAT, (101, 120, 100, 110))
    (t,) = run(c, signals(c, entry_short=[0]), size=size).trades.itertuples()
    assert (t.exit_reason, t.exit_price) == ("liquidation", approx(120 / 1.01))
    assert t.net_pnl == approx(-5 * (120 / 1.01 - 100))


# ------------------------------------------------------------------ sizing
@pytest.mark.parametrize(("size", "orders", "quantity"), [
    (SizeSpec("percent", 0.5, leverage=2), OrderSpec(), 100.0),  # margin 0.5 * 10000, * 2 / 100
    (SizeSpec("amount", 2500), OrderSpec(), 25.0),  # 2500 / 100
    (SizeSpec("units", 3), OrderSpec(), 3.0),
    (SizeSpec("risk", 0.01), OrderSpec(stop_loss=0.02), 50.0),  # 0.01 * 10000 / (0.02 * 100)
])
def test_sizing_modes(size, orders, quantity):
    c = bars(FLAT, FLAT, FLAT)
    r = run(c, signals(c, entry_long=[0]), size=size, orders=orders, cost=costs(3, sigma=0.01))
    assert r.trades["size"].tolist() == [approx(quantity)]


def test_vol_target_sizing_from_past_log_returns():
    # closes 100, 110, 100, 110: with vol_window=2 the fill at bar 3 sees the returns of bars 1 and 2,
    # ln(1.1) and -ln(1.1): sample std = ln(1.1) * sqrt(2) = 0.134789; annualised * sqrt(8760) = 12.6156;
    # notional = 10000 * 0.5 / 12.6156 = 396.34 at the open 110 -> 3.6031 units
    c = bars(FLAT, (110, 110, 110, 110), FLAT, (110, 111, 109, 110), (110, 111, 109, 110))
    size = SizeSpec("vol_target", 0.5, vol_window=2)
    r = run(c, signals(c, entry_long=[2]), size=size)
    expected = 10000 * 0.5 / (math.log(1.1) * math.sqrt(2) * math.sqrt(8760)) / 110
    assert r.trades["size"].tolist() == [approx(expected, rel=1e-9)]
    # an entry before three closes exist (bar 1 fill: no return window yet) is skipped
    assert run(c, signals(c, entry_long=[0]), size=size).trades.empty
    # a flat market (volatility 0) sizes at the cap: equity * leverage / price = 10000 / 100
    flat = bars(FLAT, FLAT, FLAT, FLAT, FLAT)
    assert run(flat, signals(flat, entry_long=[2]), size=size).trades["size"].tolist() == [approx(100.0)]


def test_risk_sizing_needs_a_stop():
    c = bars(FLAT, FLAT)
    with pytest.raises(ConfigError, match="stop"):
        run(c, signals(c, entry_long=[0]), size=SizeSpec("risk", 0.01))


def test_cash_shortage_scales_the_quantity_once():
    c = bars(FLAT, FLAT, FLAT)
    r = run(c, signals(c, entry_long=[0]), size=SizeSpec("percent", 1.0), cost=costs(3, taker=0.001))
    # q = 10000 / 100 = 100 needs 10000 + fee 10 = 10010 > 10000 -> q = 100 * 10000 / 10010 = 99.9000999
    (t,) = r.trades.itertuples()
    assert t.size == approx(100 * 10000 / 10010) and t.entry_fee == approx(0.1 * 100 * 10000 / 10010)
    assert r.cash.iloc[1] == approx(0, abs=1e-9)


def test_participation_cap_and_impact():
    c = bars(FLAT, FLAT, FLAT)
    cost = costs(3, adv=100, cap=0.1, impact_k=0.5, sigma=0.02)
    (t,) = run(c, signals(c, entry_long=[0]), size=SizeSpec("units", 50), cost=cost).trades.itertuples()
    # cut to 0.1 * 100 = 10; impact 0.5 * 0.02 * sqrt(10 / 100) = 0.00316227766 -> price 100.316227766, cost 3.16227766
    assert t.size == 10 and t.entry_price == approx(100.316227766) and t.impact_cost == approx(3.16227766)


def test_min_notional_skips_small_orders():
    c = bars(FLAT, FLAT, FLAT)
    assert run(c, signals(c, entry_long=[0]), size=SizeSpec("units", 0.01, min_notional=5)).trades.empty  # 1 < 5


# ------------------------------------------------------------------ portfolio
def test_two_assets_share_cash_second_entry_scaled_down():
    a = bars(FLAT, (100, 101, 99, 100), FLAT)
    b = bars((50, 51, 49, 50), (50, 51, 49, 50), (50, 51, 49, 51))
    sig = {"A": signals(a, entry_long=[0]), "B": signals(b, entry_long=[0])}
    r = reference_backtest({"A": a, "B": b}, sig, size=SizeSpec("percent", 0.8), costs={"A": costs(3), "B": costs(3)})
    # A: 0.8 * 10000 / 100 = 80 units (margin 8000, cash 2000 left); B wants 0.8 * 10000 / 50 = 160 units (8000) but only
    # 2000 is left: scaled to 160 * 2000 / 8000 = 40
    assert r.trades.asset.tolist() == ["A", "B"] and r.trades["size"].tolist() == [80, 40]
    assert r.cash.iloc[1] == approx(0) and r.equity.iloc[-1] == approx(10000 + 40 * 1)
    assert list(r.asset_pnl.columns) == ["A", "B"] and r.asset_pnl.iloc[-1].tolist() == [0, 40]


def test_portfolio_needs_one_index():
    a, b = bars(FLAT, FLAT, FLAT), bars(FLAT, FLAT)
    with pytest.raises(DataError, match="'B'"):
        reference_backtest({"A": a, "B": b}, {"A": signals(a), "B": signals(b)}, costs={"A": costs(3), "B": costs(2)})


# ------------------------------------------------------------------ real data
@pytest.mark.parametrize("orders", [
    OrderSpec(),
    OrderSpec(stop_loss=0.01, take_profit=0.02, trailing_stop=0.015, path="pessimistic"),
    OrderSpec(entry="limit", entry_offset=0.001, tif=5, stop_loss_atr=2.0),
    OrderSpec(entry="stop_limit", entry_offset=0.001, limit_offset=0.001, trailing_atr=3.0, timing="close"),
])
def test_accounting_invariants_on_real_data(orders):
    c = qlab.load_sample("BTC/USDT:USDT", "5m")
    fast, slow = c.close.rolling(20).mean(), c.close.rolling(50).mean()
    up = (fast > slow) & (fast.shift() <= slow.shift())
    down = (fast < slow) & (fast.shift() >= slow.shift())
    sig = pd.DataFrame({"entry_long": up, "exit_long": down, "entry_short": down, "exit_short": up})
    r = reference_backtest(c, sig, orders=orders, size=SizeSpec("percent", 0.5, leverage=3), costs=CostModel().prepare(c))
    tr = r.trades
    assert len(tr) > 50 and set(tr.exit_reason) <= set(EXIT_REASONS)
    assert (tr.exit_bar >= tr.entry_bar).all() and (tr["size"] > 0).all()
    for col in ("entry_fee", "exit_fee", "spread_cost", "slippage_cost", "impact_cost"):
        assert (tr[col] >= 0).all(), col
    assert tr.is_open.sum() <= 1 and (tr.exit_reason[tr.is_open] == "end").all()
    # final equity = cash + the open position's margin and unrealised PnL at the last close
    open_ = tr[tr.is_open]
    margin = (open_["size"] * open_.entry_price / 3).sum()
    assert r.equity.iloc[-1] == approx(r.cash.iloc[-1] + margin + open_.gross_pnl.sum(), rel=1e-12)
    # realised net PnL + the open trade's (net of its entry fee and funding) = equity change
    assert tr.net_pnl.sum() == approx(r.equity.iloc[-1] - 10_000, abs=1e-6)
    assert r.asset_pnl.iloc[-1].sum() == approx(r.equity.iloc[-1] - 10_000, abs=1e-6)
    assert (r.asset_pnl.sum(axis=1) + 10_000 - r.equity).abs().max() < 1e-6
    closed = tr[~tr.is_open]
    assert (closed.net_pnl - (closed.gross_pnl - closed.entry_fee - closed.exit_fee - closed.funding)).abs().max() < 1e-9
    assert r.trades.sort_values(["entry_bar"], kind="stable").index.tolist() == r.trades.index.tolist()


def test_equal_distance_to_high_and_low_goes_to_the_high_first():
    # long 1 unit at bar 1's open 100 (no costs): stop 98.5, take-profit 101.5 (trade-through, maker).
    # Bar 2 (100, 102, 98, 101): |open - high| = |open - low| = 2, so the path is 100 -> 102 -> 98 -> 101
    # and the take-profit at 101.5 is met before the stop.
    c = bars(FLAT, FLAT, (100, 102, 98, 101), FLAT)
    r = run(c, signals(c, entry_long=[0]), orders=OrderSpec(stop_loss=0.015, take_profit=0.015))
    (t,) = r.trades.itertuples()
    assert (t.exit_bar, t.exit_reason, t.exit_price) == (2, "take_profit", approx(101.5))


def test_entry_signal_on_the_expiry_bar_of_a_pending_entry_is_ignored():
    # bar 0 signal: a buy limit at 100 * (1 - 0.01) = 99, live on bar 1 only (ioc). Bar 1's low 99.5 does not
    # trade through it. The entry signal of bar 1 is read while that order is still pending, so it is ignored;
    # the order then expires. Bar 2 trades down to 98, but there is no order left to fill.
    c = bars(FLAT, (100, 101, 99.5, 100), (100, 101, 98, 100), FLAT)
    r = run(c, signals(c, entry_long=[0, 1]), orders=OrderSpec(entry="limit", entry_offset=0.01, tif="ioc"))
    assert r.trades.empty
    # with tif=2 the same order lives on bars 1 and 2 and fills at its limit 99 on bar 2 (maker)
    r2 = run(c, signals(c, entry_long=[0]), orders=OrderSpec(entry="limit", entry_offset=0.01, tif=2))
    assert r2.trades.entry_price.tolist() == [99.0] and r2.trades.entry_bar.tolist() == [2]

"""Order types, position sizing and THE fill model: one set of rules for the backtester, the
reference loop and the paper broker. The rules below are the specification; every engine follows it.

Timing
------
Signals are computed on bar t's close. By default an order they create becomes active at bar t+1's
open ("next_open"). `timing="close"` (explicit opt-in) fills signal-driven MARKET orders at bar t's
close instead; everything else (limit/stop entries, protective orders) then starts at bar t+1.

One position per asset (long, short or flat); no pyramiding. Per asset and bar, signals are read as
`entry_long, exit_long, entry_short, exit_short` booleans of the signal bar t:
  * `exit_long` closes a long; `exit_short` closes a short (market orders, taker).
  * `entry_short` while long closes the long first (a reversal), and vice versa.
  * if both `entry_long` and `entry_short` are true on one bar, neither entry is taken (conflict);
    the exits they imply are still taken. If an entry and the exit of the SAME direction are both
    true on one bar, both are ignored (conflict).
  * an entry signal while already in that direction, or while an entry order is pending, is ignored.
  * a pending (unfilled) entry order is cancelled by an exit signal of its direction or by an entry
    signal of the opposite direction; its own time in force may also expire it.

Path inside a bar
-----------------
Price moves open -> nearer extreme -> other extreme -> close, as straight segments. "Nearer" compares
|open - high| with |open - low|; a tie goes to the high first. With `path="pessimistic"` the adverse
extreme comes first for an open position (low first for a long, high first for a short; flat: the
default rule). Within a segment, the level met first along the segment's direction fires first. A
level that lies exactly at a segment's end point counts as met. Levels already crossed at the open
(a gap) fire at the open price.

Events of one bar, in order
---------------------------
Several assets (a portfolio sharing one cash balance) are processed one after the other inside each
bar, in column order: all of asset 0's events of the bar, then asset 1's, and so on.

1. At the open:
   a. funding (perpetuals): if a funding time falls in [open_t, open_t+1), the position pays
      size * open_price * rate (a long pays a positive rate, a short receives it).
   b. protective levels (liquidation, stop-loss, trailing stop, take-profit) crossed by a gap fire at
      the open price. If several are crossed, the first in that list wins; the same order breaks
      ties between levels met at the same point of the path.
   c. signal-driven market orders from bar t-1 fill at the open: exits first, then entries.
   d. pending limit/stop entries that are marketable at the open fill at the open (see below).
2. Along the three segments: the open position's protective levels and pending entry levels fire in
   the order the path meets them. After an entry fills inside the bar, its protective orders are live
   for the rest of the path from the fill point on. After an exit inside the bar, nothing re-enters
   in that bar.
3. At the close: equity is marked to the close; trailing-stop peaks take the bar's high (long) or low
   (short); signals of this bar create the orders for the next bar; pending entries whose time in
   force ended are cancelled.

Fine print (both engines follow it; tests pin each point)
---------------------------------------------------------
* Conflicts: the same-direction rule applies first, then the long/short entry rule. Both entries
  true: the implied exits still close the position and cancel a pending entry. An opposite entry
  cancels a pending entry, then places its own.
* Signals of bar t are read at t's close, against the state then (the position, the pending entry):
  an entry signal while in that direction is ignored even if a gap stop closes the position at the
  next open, and an entry signal on the expiry bar of a pending entry is ignored (the order is still
  pending; it then expires). The decided exits, cancellations and entries are carried out at the
  next open, after funding and gap exits (an exit decided for a position a gap already closed is moot).
* Exits at the open (gaps, signals) do not block entries at the open, so a reversal still reverses;
  "nothing re-enters" applies to the path inside the bar. With timing="close" an entry at the close
  after an exit earlier in the bar is allowed.
* A take-profit counts as gapped when the open is at or beyond it.
* A protective level already met at an entry's fill point (a stop tighter than the entry's costs)
  fires there at once, as a taker at that price.
* The pessimistic path is chosen once per bar, after the open's events, from the position then held.
* Trailing peaks take only the part of the bar the position lived through: the whole bar when held
  since the open (entries at the open included), the rest of the path after a fill inside the bar,
  nothing for a fill at the close.
* Funding is paid by the position held at the open; one opened at that open does not pay that bar.
* An entry that needs ATR (stop_loss_atr, trailing_atr) is not created while the signal bar's ATR is
  NaN. The participation cap applies to every entry fill (taker or maker), never to exits; the order
  is size, cap, cash scaling (once), min_notional. An entry skipped as too small uses up its order.
* A stop-limit gapped beyond its limit at the open rests as a limit until its time in force ends.
* With the default timing, signals of the last bar create nothing.

Order types
-----------
* market: fills at the reference price (open, or close with timing="close") as a taker.
* limit (entries; `entry_offset` f >= 0): a long limit is placed at close_t * (1 - f), a short limit
  at close_t * (1 + f). Marketable at the open (long: open <= limit) -> fills at the open as a taker.
  Otherwise it rests and fills only if the price trades THROUGH it (long: the path goes strictly below
  the limit; touching is not enough), at the limit price, as a maker (maker fee; no spread, slippage
  or impact).
* stop (stop-market entries; f >= 0): a long stop at close_t * (1 + f) (a breakout), short at
  close_t * (1 - f). Triggers when the path reaches it (touch is enough); gapped at the open ->
  fills at the open; else at the stop price; as a taker.
* stop_limit: a stop at close_t * (1 +/- f) that, once triggered, becomes a limit at
  stop * (1 +/- `limit_offset`) (long: above the stop). After the trigger the limit is marketable if
  the limit is at or beyond the trigger price: it fills at the trigger price (or the open if gapped,
  but never worse than the limit) as a taker; the limit is then honoured on the rest of the path.
  If the open gaps beyond the limit, it rests as a limit (maker, trade-through rule).
* take_profit (`take_profit` fraction): a resting limit exit at entry_price * (1 + tp) for a long
  (1 - tp for a short). Trade-through rule, maker; gapped at the open -> fills at the open, taker.
* stop_loss (`stop_loss` fraction or `stop_loss_atr` multiple): a stop-market exit at
  entry_price * (1 - sl) or entry_price - m * ATR for a long, entry_price * (1 + sl) or
  entry_price + m * ATR for a short; ATR as of the signal bar (the bar whose signal created the entry).
  Touch triggers; taker; gap -> open.
* trailing stop (`trailing_stop` fraction or `trailing_atr` multiple): level = peak * (1 - ts)
  (long), trough * (1 + ts) (short), or peak - m * ATR; peak starts at the entry price and is updated
  at each bar's close with the bar's high (long) / low (short), so the level is constant within a bar.
  For ATR stops the ATR is the one of the bar before (no intra-bar look at the bar's own range).
* bracket / OCO: an entry with stop-loss and take-profit attached; whichever fires first cancels the
  other (and any trailing stop). Every entry here may carry them.
* time in force of entries: "gtc" (until filled or cancelled), "ioc" (only the first bar it is live:
  marketable at the open or filled during that bar, else cancelled), or an integer N (expires after
  N bars live).
* conditional orders: every order above is created only when its signal is true.

Fill prices and costs (see qlab.costs.CostModel.prepare, arrays per bar)
-----------------------------------------------------------------------
`entry_price` in the rules above is the executed entry price (costs included).
Taker fills at reference price p on bar t, side s (+1 buy, -1 sell), quantity q:
    cost_frac = half_spread[t] + slippage[t] + impact_k * sigma[t] * sqrt(q / adv[t])
    price = p * (1 + s * cost_frac);       fee = taker_fee * price * q
and the cost components are recorded in money: spread = half_spread*p*q, slippage = slippage*p*q,
impact = impact*p*q. Maker fills: price = level, fee = maker_fee * price * q, no other component.
Participation cap: q is cut to `participation_cap * adv[t]`; a cut entry fills only that much.

Sizing (quantity computed at fill time from the reference price p, before costs)
--------------------------------------------------------------------------------
`equity` is the total account equity at the previous bar's close (the initial cash on the first bar).
* units: q = value.       * amount: q = value / p (value in quote currency, e.g. USDT).
* percent: margin = value * equity; q = margin * leverage / p.
* risk: q = value * equity / d where d is the stop distance in price (stop_loss * p or
  stop_loss_atr * ATR); needs a stop-loss.
* vol_target: notional = equity * value / (vol[t] * sqrt(bars_per_year)); capped at
  equity * leverage; q = notional / p. vol[t] is the sample std (ddof=1) of the `vol_window` log
  returns ln(c_j / c_j-1), j = t-vol_window .. t-1; entries before it exists are skipped, and a vol
  of 0 (a flat market) sizes at the cap.
Margin needed = q * price / leverage + fee. If it exceeds the cash, q is scaled once by
cash / needed and price and fee are recomputed for the smaller q (smaller impact, so it fits).
Orders with q * p below `min_notional` are skipped. ATR is Wilder's ATR (TA-Lib) over `atr_period`
bars, see `atr()`; sigma and adv come from the CostModel and use data up to the bar before only.

Leverage and liquidation (isolated margin per position)
------------------------------------------------------
margin = q * entry_price / leverage. Long liquidation price e * (1 - 1/L) / (1 - mmr); short
e * (1 + 1/L) / (1 + mmr); mmr = maintenance margin rate. Liquidation is a protective level like a
stop (touch triggers, gap fills at the open, taker costs). The position's loss is capped at its margin.

Accounting
----------
Opening: cash -= margin + fee. Closing: cash += margin + s_pos * q * (exit - entry) - fee; for a
liquidation the amount returned is floored at 0 (the loss is capped at the margin). Funding:
cash -= s_pos * q * open * rate, recorded on the trade.
Trade net_pnl = (cash returned at exit - margin) - entry_fee - funding, which is
s_pos * q * (exit - entry) - entry_fee - exit_fee - funding unless a liquidation was capped.
Equity = cash + sum over positions of margin + unrealised
PnL at the close. A position still open at the last bar stays open: its trade is reported with
`is_open=True`, exit price = last close, no exit costs.
"""

from __future__ import annotations

import numpy as np

from qlab.execution import (  # the settings live below the strategy layer; re-exported here beside their rules
    ENTRY_TYPES,
    EXIT_REASONS,
    SIZE_MODES,
    OrderSpec,
    SizeSpec,
)

__all__ = ["ENTRY_TYPES", "EXIT_REASONS", "SIZE_MODES", "OrderSpec", "SizeSpec", "atr"]

def atr(high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int) -> np.ndarray:
    """Wilder's average true range (TA-Lib's ATR); NaN for the first `period` bars."""
    import talib

    return talib.ATR(np.ascontiguousarray(high, dtype=np.float64), np.ascontiguousarray(low, dtype=np.float64),
                     np.ascontiguousarray(close, dtype=np.float64), timeperiod=period)

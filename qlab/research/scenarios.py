"""The stress-scenario library: small, documented, composable transforms of a market (`StressCase`).

A scenario function takes a `StressCase` (the candles, the cost models, the bars without fills, the
unstressed baseline run) and keyword parameters, and returns a new StressCase; it never changes its input.
Register your own with `@register_scenario("name")`; build one with `scenario("name", **params)` and
compose with `+`:

    crash_and_outage = scenario("flash_crash", drop=0.4) + scenario("exchange_outage", bars=12)

Price transforms work on each bar's log distances of open, high, low and close from the previous close
(bar 0: from its own open), map them, and rebuild the prices; bars after a transformed window keep their own
returns from the new level, so nothing outside the window changes but the price level. A monotone map keeps
every bar valid (high the highest, low the lowest); a decreasing one (inversion) swaps high and low.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from qlab.analytics.result import Result
from qlab.costs import CostArrays, CostModel, Funding
from qlab.data.candles import Candles
from qlab.errors import ConfigError, NotFoundError, did_you_mean

PRICES = ("open", "high", "low", "close")
CostHook = Callable[[str, CostArrays, Candles], CostArrays]


@dataclass(frozen=True)
class StressCase:
    """A market to run a strategy on: candles per symbol, a CostModel per symbol, bars without fills (`outage`),
    hooks that change the prepared cost arrays, the unstressed `baseline` run (scenarios may aim at its trades)
    and notes of what was done."""

    candles: dict[str, Candles]
    costs: dict[str, CostModel]
    timeframe: str
    outage: np.ndarray  # bool per bar: no fills on these bars
    cost_hooks: tuple[CostHook, ...] = ()
    baseline: Result | None = None
    notes: tuple[str, ...] = ()

    @property
    def index(self) -> pd.DatetimeIndex:
        return next(iter(self.candles.values())).index

    def with_(self, **changes: Any) -> StressCase:
        """A copy with some fields replaced."""
        return replace(self, **changes)

    def note(self, text: str) -> StressCase:
        """A copy with one more note."""
        return replace(self, notes=(*self.notes, text))

    def bar(self, at: Any, what: str) -> int:
        """A bar position from an int position or a time (the first bar at or after it)."""
        n = len(self.index)
        if isinstance(at, int | np.integer) and not isinstance(at, bool):
            pos = int(at) + (n if at < 0 else 0)
        else:
            try:
                pos = int(self.index.searchsorted(pd.Timestamp(at, tz="UTC") if pd.Timestamp(at).tz is None else pd.Timestamp(at)))
            except (ValueError, TypeError):
                raise ConfigError(f"{what}: at={at!r} is neither a bar number nor a time") from None
        if not 1 <= pos < n:
            raise ConfigError(f"{what}: at={at!r} is outside the data's bars 1..{n - 1} ({self.index[0]} .. {self.index[-1]})")
        return pos


@dataclass(frozen=True)
class Scenario:
    """One or more registered transforms with their parameters, applied in order; `a + b` composes."""

    name: str
    steps: tuple[tuple[str, dict[str, Any]], ...] = field(default=())

    def apply(self, case: StressCase) -> StressCase:
        """The case after every step."""
        for fn_name, params in self.steps:
            case = REGISTRY[fn_name](case, **params)
        return case

    def __add__(self, other: Scenario) -> Scenario:
        if not isinstance(other, Scenario):
            return NotImplemented
        return Scenario(f"{self.name} + {other.name}", self.steps + other.steps)

    @property
    def description(self) -> str:
        """The first docstring line of each step."""
        return "; then ".join(_first_line(REGISTRY[n]) for n, _ in self.steps)


REGISTRY: dict[str, Callable[..., StressCase]] = {}


def _first_line(fn: Callable) -> str:
    return (inspect.getdoc(fn) or fn.__name__).split("\n")[0]


def register_scenario(name: str | None = None, *, replace: bool = False) -> Callable[[Callable], Callable]:
    """Decorator: register `fn(case, **params) -> StressCase` as a stress scenario under `name` (default: its name)."""
    def add(fn: Callable[..., StressCase]) -> Callable[..., StressCase]:
        key = name or fn.__name__
        if not callable(fn) or not key.isidentifier():
            raise ConfigError(f"a scenario is a function fn(case, **params) registered under a name like 'my_crash', got {key!r}")
        if key in REGISTRY and not replace and REGISTRY[key] is not fn:
            raise ConfigError(f"a scenario named {key!r} exists already; pick another name or pass replace=True")
        REGISTRY[key] = fn
        return fn

    return add


def scenario(name: str, **params: Any) -> Scenario:
    """A registered scenario with parameters, e.g. `scenario("flash_crash", drop=0.4)`; unknown names and
    parameters raise with the accepted ones."""
    if name not in REGISTRY:
        raise NotFoundError(f"unknown stress scenario {name!r}; scenarios: {', '.join(REGISTRY)}." + did_you_mean(str(name), REGISTRY))
    sig = inspect.signature(REGISTRY[name])
    accepted = [p for p in list(sig.parameters)[1:]]
    try:
        sig.bind(None, **params)
    except TypeError:
        bad = [p for p in params if p not in accepted]
        hint = did_you_mean(bad[0], accepted) if bad else ""
        raise ConfigError(f"scenario {name!r} takes {', '.join(accepted) or 'no parameters'}; got {', '.join(params)}." + hint) from None
    label = name + (f"({', '.join(f'{k}={v!r}' for k, v in params.items())})" if params else "")
    return Scenario(label, ((name, dict(params)),))


def scenario_table() -> pd.DataFrame:
    """Every registered scenario with its parameters and what it does."""
    rows = []
    for key, fn in REGISTRY.items():
        params = [f"{p.name}={p.default!r}" for p in list(inspect.signature(fn).parameters.values())[1:]]
        rows.append({"scenario": key, "parameters": ", ".join(params), "what it does": _first_line(fn)})
    return pd.DataFrame(rows).set_index("scenario")


# ---------------------------------------------------------------- price helpers


def _log_ratios(frame: Candles) -> tuple[np.ndarray, np.ndarray]:
    """(4, T) log distances of open, high, low, close from the previous close (bar 0: from its open); the refs."""
    c = frame["close"].to_numpy(dtype=np.float64)
    ref = np.concatenate(([frame["open"].iloc[0]], c[:-1]))
    return np.log(np.vstack([frame[k].to_numpy(dtype=np.float64) for k in PRICES]) / ref), ref


def _rebuild(frame: Candles, ratios: np.ndarray) -> Candles:
    """Prices from log ratios to the previous (new) close; high/low re-ordered so each bar stays valid."""
    ratios = ratios.copy()
    hi, lo = np.maximum(ratios[1], ratios[2]), np.minimum(ratios[1], ratios[2])
    ratios[1], ratios[2] = np.maximum.reduce([hi, ratios[0], ratios[3]]), np.minimum.reduce([lo, ratios[0], ratios[3]])
    close = float(frame["open"].iloc[0]) * np.exp(np.cumsum(ratios[3]))
    ref = np.concatenate(([frame["open"].iloc[0]], close[:-1]))
    out = frame.copy()
    for k, name in enumerate(PRICES):
        out[name] = ref * np.exp(ratios[k])
    return out


def _window(case: StressCase, start: Any, end: Any, what: str) -> tuple[int, int]:
    """[lo, hi) bar positions of a window given as times or bar numbers (None: the whole data)."""
    n = len(case.index)
    lo = 0 if start is None else case.bar(start, what)
    hi = n if end is None else case.bar(end, what)
    if hi - lo < 2:
        raise ConfigError(f"{what}: the window {start} .. {end} holds {hi - lo} bar(s); give at least 2")
    return lo, hi


def _positive(name: str, value: Any, what: str, upper: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 or (upper is not None and value >= upper):
        span = f"in (0, {upper:g})" if upper is not None else "> 0"
        raise ConfigError(f"{what}: {name}={value!r} must be a number {span}")
    return float(value)


def _exposure(case: StressCase) -> pd.DataFrame | None:
    """The baseline's signed position value over its equity, per symbol and bar (None without a baseline)."""
    if case.baseline is None:
        return None
    equity = case.baseline.equity.to_numpy()
    return case.baseline.positions.div(np.where(equity > 0, equity, np.inf), axis=0)


def _when(t: pd.Timestamp) -> str:
    return f"{t:%Y-%m-%d %H:%M}"


# ---------------------------------------------------------------- the library


@register_scenario("flash_crash")
def flash_crash(case: StressCase, drop: float = 0.3, recovery: float = 0.5, at: Any = None) -> StressCase:
    """Every symbol falls `drop` from the open within one bar and closes having recovered `recovery` of the fall.

    The crash bar: open unchanged, high = open, low = open * (1 - drop), close = open * (1 - drop * (1 - recovery)).
    Later bars keep their returns from that close. `at` (a time or bar number; default: the first bar
    after the baseline's largest long exposure (position / equity) at a close, else the middle bar).
    """
    drop = _positive("drop", drop, "flash_crash", 1.0)
    if isinstance(recovery, bool) or not isinstance(recovery, int | float) or not 0 <= recovery <= 1:
        raise ConfigError(f"flash_crash: recovery={recovery!r} must be a fraction in [0, 1] of the fall won back by the close")
    exposure = _exposure(case)
    long = None if exposure is None else exposure.sum(axis=1).to_numpy()[:-1]
    if at is not None:
        t = case.bar(at, "flash_crash")
    elif long is not None and (long > 0).any():
        t = int(np.argmax(long)) + 1  # the bar after the largest long exposure at a close
    else:
        t = len(case.index) // 2
    out = {}
    for s, frame in case.candles.items():
        ratios, ref = _log_ratios(frame)
        o = float(frame["open"].iloc[t])
        close = o * (1 - drop * (1 - recovery))
        ratios[:, t] = np.log(np.array([o, o, o * (1 - drop), close]) / ref[t])
        out[s] = _rebuild(frame, ratios)
    return case.with_(candles=out).note(f"flash crash at {_when(case.index[t])}: -{drop:.0%} to the low, closing "
                                        f"{-drop * (1 - recovery):.1%} from the open")


@register_scenario("volatility_x3")
def volatility_spike(case: StressCase, factor: float = 3.0, start: Any = None, end: Any = None) -> StressCase:
    """Every bar's moves are `factor` times as large around the mean close return (volatility x factor, same drift).

    In the window [start, end) (default: all bars) each log distance x of open, high, low and close from the
    previous close becomes mu + factor * (x - mu), mu the mean close log return in the window.
    """
    factor = _positive("factor", factor, "volatility_x3")
    lo, hi = _window(case, start, end, "volatility_x3")
    out = {}
    for s, frame in case.candles.items():
        ratios, _ = _log_ratios(frame)
        mu = float(ratios[3, lo:hi].mean())
        ratios[:, lo:hi] = mu + factor * (ratios[:, lo:hi] - mu)
        out[s] = _rebuild(frame, ratios)
    return case.with_(candles=out).note(f"volatility x{factor:g} from {_when(case.index[lo])} to {_when(case.index[hi - 1])}")


@register_scenario("gap_through_stops")
def gap_through_stops(case: StressCase, gap: float = 0.05) -> StressCase:
    """Every stop the baseline hit is gapped through: that bar opens `gap` beyond the baseline's stop fill.

    For each baseline exit by stop-loss or trailing stop (long: the open becomes min(open, fill * (1 - gap));
    short: max(open, fill * (1 + gap))), high and low widened to include the new open. The stop then fills at
    that open (plus costs).
    """
    gap = _positive("gap", gap, "gap_through_stops", 1.0)
    if case.baseline is None:
        raise ConfigError("gap_through_stops aims at the baseline's stop exits; run it through qlab.stress_test")
    trades = case.baseline.trades
    hit = trades[trades["exit_reason"].isin(["stop_loss", "trailing_stop"]) & ~trades["is_open"].astype(bool)]
    if hit.empty:
        return case.note("gap through stops: the baseline hit no stop, nothing changed")
    out = {s: f.copy() for s, f in case.candles.items()}
    names = list(case.candles)
    for tr in hit.itertuples():
        frame = out[tr.asset if tr.asset in out else names[0]]
        i = int(tr.exit_bar)
        o = frame["open"].iat[i]
        new = min(o, tr.exit_price * (1 - gap)) if tr.direction > 0 else max(o, tr.exit_price * (1 + gap))
        frame.iloc[i, frame.columns.get_loc("open")] = new
        frame.iloc[i, frame.columns.get_loc("high")] = max(frame["high"].iat[i], new)
        frame.iloc[i, frame.columns.get_loc("low")] = min(frame["low"].iat[i], new)
    return case.with_(candles=out).note(f"{len(hit)} stop exit(s) gapped {gap:.0%} through")


@register_scenario("liquidity_dryup")
def liquidity_dryup(case: StressCase, spread: float = 10.0, slippage: float = 5.0, impact: float = 5.0) -> StressCase:
    """Spread x10, slippage x5 and market impact x5 on every fill (`CostModel.stressed`), fees unchanged."""
    costs = {s: m.stressed(spread=spread, slippage=slippage, impact=impact) for s, m in case.costs.items()}
    free = all(m == CostModel.none() for m in case.costs.values())
    text = f"spread x{spread:g}, slippage x{slippage:g}, impact x{impact:g}"
    return case.with_(costs=costs).note(text + (" (the strategy runs without costs: nothing to multiply)" if free else ""))


@register_scenario("exchange_outage")
def exchange_outage(case: StressCase, bars: int = 24, at: Any = None) -> StressCase:
    """No fills for `bars` bars: no order, stop or liquidation executes; prices are frozen at the last close
    before, and what the strategy decided meanwhile executes at the first open after (the real price then).

    `at`: the first bar of the outage (default: where it hurts most: the `bars`-bar window over which the
    baseline's positions at the close before it would have lost the most; without positions, the steepest fall
    of the first symbol).
    """
    if isinstance(bars, bool) or not isinstance(bars, int | np.integer) or bars < 1:
        raise ConfigError(f"exchange_outage: bars={bars!r} must be a whole number of bars >= 1, e.g. 24")
    n = len(case.index)
    if bars > n - 2:
        raise ConfigError(f"exchange_outage: bars={bars} leaves no bar before and after it in {n} bars")
    if at is None:
        exposure = _exposure(case)
        held = exposure is not None and bool(exposure.to_numpy().any())
        loss = np.zeros(n - 1 - bars)
        for k, (s, frame) in enumerate(case.candles.items()):
            c = frame["close"].to_numpy()
            change = (c[bars:] / c[:-bars] - 1.0)[: n - 1 - bars]  # close[t + bars - 1] / close[t - 1] - 1, t = 1 ..
            if held:
                loss += exposure[s].to_numpy()[: n - 1 - bars] * change
            elif k == 0:
                loss += change
        t = int(np.argmin(loss)) + 1
    else:
        t = case.bar(at, "exchange_outage")
    stop = min(t + int(bars), n - 1)
    outage = case.outage.copy()
    outage[t:stop] = True
    return case.with_(outage=outage).note(f"exchange outage {_when(case.index[t])} .. {_when(case.index[stop - 1])} ({stop - t} bars)")


@register_scenario("funding_spike")
def funding_spike(case: StressCase, rate: float = 0.003, hours: int = 72, at: Any = None, every: str = "8h",
                  side: str = "adverse") -> StressCase:
    """Funding of `rate` per `every` (0.003 = 0.3 % per 8h) for `hours` on perpetuals, on top of any real funding.

    side "adverse" charges the baseline's position (longs pay, shorts pay the negative rate); "long": +rate
    (longs pay shorts), "short": -rate. `at` default: the bar after the baseline's largest exposure. Spot symbols
    (a '/' without ':') are left alone.
    """
    if side not in ("adverse", "long", "short"):
        sides = ("adverse", "long", "short")
        raise ConfigError(f"funding_spike: side={side!r}; use 'adverse', 'long' or 'short'." + did_you_mean(str(side), sides))
    rate = _positive("rate", rate, "funding_spike", 0.1)
    exposure = _exposure(case)
    gross = None if exposure is None else exposure.abs().sum(axis=1).to_numpy()[:-1]
    if at is not None:
        t = case.bar(at, "funding_spike")
    else:
        t = int(np.argmax(gross)) + 1 if gross is not None and gross.any() else len(case.index) // 2
    begin = case.index[t]
    times = pd.date_range(begin.ceil(every), begin + pd.Timedelta(hours=hours), freq=every, inclusive="left")
    if side == "adverse" and case.baseline is not None:
        held = case.baseline.positions.reindex(times, method="ffill").fillna(0.0)
    perps = [s for s in case.candles if not ("/" in s and ":" not in s)]
    if not perps:
        return case.note("funding spike: every symbol is spot, no funding applies")

    def signed(symbol: str) -> pd.Series:
        if side == "long":
            return pd.Series(rate, index=times)
        if side == "short":
            return pd.Series(-rate, index=times)
        if case.baseline is None:
            return pd.Series(rate, index=times)
        return pd.Series(rate * np.sign(held[symbol].to_numpy() if symbol in held else held.sum(axis=1).to_numpy()), index=times)

    spikes = {s: Funding(signed(s)) for s in perps}

    def hook(symbol: str, arrays: CostArrays, candles: Candles) -> CostArrays:
        if symbol not in spikes:
            return arrays
        return replace(arrays, funding=arrays.funding + spikes[symbol].per_bar(candles.index, case.timeframe))

    return case.with_(cost_hooks=(*case.cost_hooks, hook)).note(
        f"funding {rate:.2%} per {every} ({side}) from {_when(begin)} for {hours} h on {', '.join(perps)}")


@register_scenario("correlation_breakdown")
def correlation_breakdown(case: StressCase, mode: str = "together", start: Any = None, end: Any = None, seed: int = 0) -> StressCase:
    """Portfolios: the symbols' co-movement breaks in [start, end) (default all bars); the first symbol is the anchor.

    mode "together": every other symbol moves like the first, scaled to its own volatility (correlation 1, no
    diversification); "shuffle": each other symbol's bars are put in random order (correlation ~0, same bars);
    "invert": every other symbol's moves are mirrored (correlation of the log returns becomes its negative).
    """
    modes = ("together", "shuffle", "invert")
    if mode not in modes:
        raise ConfigError(f"correlation_breakdown: mode={mode!r}; use {', '.join(modes)}." + did_you_mean(str(mode), modes))
    if len(case.candles) < 2:
        return case.note("correlation breakdown: needs a portfolio (2 or more symbols); one symbol, nothing changed")
    lo, hi = _window(case, start, end, "correlation_breakdown")
    rng = np.random.default_rng(seed)
    names = list(case.candles)
    anchor, _ = _log_ratios(case.candles[names[0]])
    out = {names[0]: case.candles[names[0]]}
    for s in names[1:]:
        ratios, _ = _log_ratios(case.candles[s])
        if mode == "together":
            scale = np.std(ratios[3, lo:hi], ddof=1) / max(np.std(anchor[3, lo:hi], ddof=1), 1e-300)
            ratios[:, lo:hi] = anchor[:, lo:hi] * scale
        elif mode == "shuffle":
            ratios[:, lo:hi] = ratios[:, lo:hi][:, rng.permutation(hi - lo)]
        else:
            ratios[:, lo:hi] = -ratios[:, lo:hi]
        out[s] = _rebuild(case.candles[s], ratios)
    return case.with_(candles=out).note(f"correlation breakdown ({mode}) against {names[0]} from {_when(case.index[lo])} "
                                        f"to {_when(case.index[hi - 1])}")

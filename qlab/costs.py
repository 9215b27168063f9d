"""Trading costs: fee schedules, spread, slippage, square-root market impact and funding, composed into
one frozen `CostModel` that every engine (backtest, reference loop, paper broker) uses the same way.

Costs are on by default: `CostModel()` charges the exchange fee (0.1 % taker/maker when unknown), half a
2 bps spread, 1 bp slippage and square-root impact. No costs must be spelled out: `costs=None` (read by
`resolve_costs`) or `CostModel.none()`. `CostModel.prepare(candles)` turns the model into `CostArrays`,
plain float64 arrays per bar that the numba engines consume with the formulas of `qlab.engine.orders`
("Fill prices and costs"); `CostArrays.fill` is the same formula in plain Python.

Every per-bar estimate at bar t uses bars up to t-1 only (no lookahead). The first few bars, before any
estimate exists, take the first estimate (`CostArrays.warmup` says how many): the only values that depend
on data of their own bar or later. With too few bars for any estimate (1-2 bars) the estimate is 0.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from qlab.data.candles import timeframe_delta, validate_candles
from qlab.errors import ConfigError, DataError, NotFoundError, did_you_mean

if TYPE_CHECKING:
    from qlab.data.store import Store

DEFAULT_FEE = 0.001  # 0.1 %: maker and taker when the exchange's schedule is unknown
ADV_FLOOR = 1e-12  # adv is floored here: a window without volume gives huge impact and a cap near 0, never a division by 0
FEE_SOURCES = ("given", "default", "store", "builtin", "none")

# Public VIP0 (lowest tier) maker/taker fees as published by the exchanges (early 2025), used when the store has none.
# key: (exchange, "spot" | "perp"); ccxt ids of the derivatives venues map onto their exchange.
BUILTIN_FEES: dict[tuple[str, str], tuple[float, float]] = {
    ("binance", "spot"): (0.001, 0.001), ("binance", "perp"): (0.0002, 0.0005),
    ("bybit", "spot"): (0.001, 0.001), ("bybit", "perp"): (0.0002, 0.00055),
    ("kucoin", "spot"): (0.001, 0.001), ("kucoin", "perp"): (0.0002, 0.0006),
}
_EXCHANGE_ALIASES = {"binanceusdm": "binance", "kucoinfutures": "kucoin"}


def _number(owner: str, name: str, value: Any, lo: float, hi: float = math.inf, hint: str = "") -> None:
    """Raise ConfigError unless lo <= value <= hi (a real, finite number)."""
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool) or not lo <= value <= hi:
        span = f"in [{lo}, {hi}]" if hi < math.inf else f">= {lo}"
        raise ConfigError(f"{owner}: {name}={value!r} must be a number {span}" + (f"; {hint}" if hint else ""))


def _window(owner: str, value: Any, lo: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < lo:
        raise ConfigError(f"{owner}: window={value!r} must be a whole number of bars >= {lo}, e.g. 20")


def _past(estimate: np.ndarray) -> tuple[np.ndarray, int]:
    """Bar t gets `estimate[t-1]` (data up to t-1); the leading bars take the first estimate (0 if none); also their count."""
    out = np.concatenate(([np.nan], np.asarray(estimate, dtype=np.float64)[:-1]))
    valid = np.flatnonzero(~np.isnan(estimate))
    lead = int(np.argmax(~np.isnan(out))) if (~np.isnan(out)).any() else len(out)
    out[:lead] = estimate[valid[0]] if len(valid) else 0.0
    return out, lead


def past_sigma(close: np.ndarray, window: int) -> tuple[np.ndarray, int]:
    """Per bar t: the sample std (ddof=1) of the log returns ln(c_j / c_j-1) of bars t-window..t-1 (at least 2 returns).

    Returns (sigma, warmup): the first 3 bars (before 2 returns exist) take the first estimate, sigma[3].
    A gap in the data counts as one bar.
    """
    returns = np.diff(np.log(np.asarray(close, dtype=np.float64)), prepend=np.nan)
    std = pd.Series(returns).rolling(window, min_periods=2).std(ddof=1).to_numpy()
    sigma, warmup = _past(std)
    return np.maximum(sigma, 0.0), warmup


def past_mean_volume(volume: np.ndarray, window: int) -> tuple[np.ndarray, int]:
    """Per bar t: the mean volume of bars t-window..t-1 (fewer at the start), floored at ADV_FLOOR; bar 0 gets volume[0]."""
    mean = pd.Series(np.asarray(volume, dtype=np.float64)).rolling(window, min_periods=1).mean().to_numpy()
    adv, warmup = _past(mean)
    return np.maximum(adv, ADV_FLOOR), warmup


def corwin_schultz(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """Two-bar Corwin-Schultz spread estimates (fractions of price), one per pair (t-1, t), at index t; NaN at 0.

    Corwin, S. A. and Schultz, P. (2012), "A Simple Way to Estimate Bid-Ask Spreads from Daily High and
    Low Prices", Journal of Finance 67(2), 719-760, with the paper's adjustment for
    gaps between bars: when bar t's low is above close t-1 (or its high below it), bar t's high and low
    are shifted by that gap. beta = ln(H_t-1/L_t-1)^2 + ln(H_t/L_t)^2, gamma = ln(max H / min L)^2 over the
    pair, alpha = (sqrt(2 beta) - sqrt(beta)) / (3 - 2 sqrt 2) - sqrt(gamma / (3 - 2 sqrt 2)),
    S = 2 (e^alpha - 1) / (1 + e^alpha); negative estimates are set to 0 (as in the paper).
    """
    h, lo, c = (np.asarray(x, dtype=np.float64) for x in (high, low, close))
    h0, l0, c0, h1, l1 = h[:-1], lo[:-1], c[:-1], h[1:], lo[1:]
    shift = np.where(l1 > c0, l1 - c0, 0.0) - np.where(h1 < c0, c0 - h1, 0.0)  # up-gap > 0, down-gap < 0
    h1, l1 = h1 - shift, l1 - shift
    beta = np.log(h0 / l0) ** 2 + np.log(h1 / l1) ** 2
    gamma = np.log(np.maximum(h0, h1) / np.minimum(l0, l1)) ** 2
    k = 3.0 - 2.0 * math.sqrt(2.0)
    alpha = (np.sqrt(2.0 * beta) - np.sqrt(beta)) / k - np.sqrt(gamma / k)
    spread = np.maximum(2.0 * np.expm1(alpha) / (1.0 + np.exp(alpha)), 0.0)
    return np.concatenate(([np.nan], spread))


def impact_fraction(k: Any, sigma: Any, q: Any, adv: Any) -> Any:
    """Square-root market impact as a fraction of price: k * sigma * sqrt(q / adv) (numpy-vectorised; scalars in, float out)."""
    out = np.asarray(k, dtype=np.float64) * np.asarray(sigma, dtype=np.float64) * np.sqrt(
        np.asarray(q, dtype=np.float64) / np.asarray(adv, dtype=np.float64))
    return float(out) if np.ndim(out) == 0 else out


@dataclass(frozen=True)
class FeeSchedule:
    """Maker and taker fees as fractions (0.001 = 0.1 %); `source` says where they came from.

    source: "store" (the store's fee_schedules), "builtin" (BUILTIN_FEES), "default" (0.1 %/0.1 %, the
    fee when the exchange's is unknown), "given" (set by hand) or "none" (CostModel.none()). Left out,
    it is "default" for the default fees and "given" otherwise. A negative maker fee is a rebate.
    """

    maker: float = DEFAULT_FEE
    taker: float = DEFAULT_FEE
    exchange: str | None = None
    tier: str = "default"
    source: str | None = None

    def __post_init__(self) -> None:
        for name in ("maker", "taker"):
            _number("FeeSchedule", name, getattr(self, name), -0.01, 0.05, "give a fraction such as 0.001 for 0.1 %")
        if self.source is None:
            default = (self.maker, self.taker) == (DEFAULT_FEE, DEFAULT_FEE)
            object.__setattr__(self, "source", "default" if default else "given")
        if self.source not in FEE_SOURCES:
            raise ConfigError(f"FeeSchedule: source={self.source!r} is not one of {', '.join(FEE_SOURCES)}")

    @classmethod
    def from_store(cls, store: Store, exchange: str, symbol: str, tier: str = "default", at: Any = None) -> FeeSchedule:
        """The store's fees for a symbol (its own row, else the exchange's '*' row) in force `at` (default now);
        the 0.1 %/0.1 % default, with source="default", when the store has none."""
        row = store.fee(exchange, symbol, tier=tier, at=at)
        maker, taker = row or (DEFAULT_FEE, DEFAULT_FEE)
        return cls(maker, taker, exchange, tier, "store" if row else "default")

    @classmethod
    def for_market(cls, exchange: str, symbol: str, store: Store | None = None, tier: str = "default", at: Any = None) -> FeeSchedule:
        """Fees for a market: the store's row, else BUILTIN_FEES (perpetual = ':' in the symbol), else 0.1 %/0.1 %."""
        if store is not None:
            fees = cls.from_store(store, exchange, symbol, tier=tier, at=at)
            if fees.source == "store":
                return fees
        name = _EXCHANGE_ALIASES.get(str(exchange).lower(), str(exchange).lower())
        known = BUILTIN_FEES.get((name, "perp" if ":" in symbol else "spot"))
        maker, taker = known or (DEFAULT_FEE, DEFAULT_FEE)
        return cls(maker, taker, exchange, tier, "builtin" if known else "default")


@dataclass(frozen=True)
class FixedSpread:
    """A constant bid-ask spread in bps of price (2.0 = 0.02 %); a taker pays half of it."""

    bps: float = 2.0

    def __post_init__(self) -> None:
        _number("FixedSpread", "bps", self.bps, 0.0, 1000.0, "give basis points, e.g. 2.0 for 0.02 %")

    def half_spread(self, candles: pd.DataFrame) -> tuple[np.ndarray, int]:
        """(half spread per bar as a fraction, warm-up bars = 0)."""
        return np.full(len(candles), self.bps / 2e4), 0


@dataclass(frozen=True)
class HighLowSpread:
    """The spread estimated from high/low prices with Corwin & Schultz (2012), see `corwin_schultz`.

    Bar t's spread is the mean of the two-bar estimates of pairs ending at bars t-window..t-1 (fewer while
    fewer exist), times `multiple`; half of it is charged. The first 2 bars (no complete pair before them)
    take the first estimate, the one of bars 0-1.
    """

    window: int = 20
    multiple: float = 1.0

    def __post_init__(self) -> None:
        _window("HighLowSpread", self.window, 1)
        _number("HighLowSpread", "multiple", self.multiple, 0.0, hint="e.g. 1.0 for the estimate itself")

    def half_spread(self, candles: pd.DataFrame) -> tuple[np.ndarray, int]:
        """(half spread per bar as a fraction, warm-up bars)."""
        raw = corwin_schultz(candles["high"].to_numpy(), candles["low"].to_numpy(), candles["close"].to_numpy())
        mean = pd.Series(raw).rolling(self.window, min_periods=1).mean().to_numpy()
        spread, warmup = _past(mean)
        return spread * (self.multiple / 2.0), warmup


@dataclass(frozen=True)
class FixedSlippage:
    """Constant slippage in bps of price, paid by takers on top of half the spread."""

    bps: float = 1.0

    def __post_init__(self) -> None:
        _number("FixedSlippage", "bps", self.bps, 0.0, 1000.0, "give basis points, e.g. 1.0 for 0.01 %")

    def fraction(self, candles: pd.DataFrame) -> tuple[np.ndarray, int]:
        """(slippage per bar as a fraction, warm-up bars = 0)."""
        return np.full(len(candles), self.bps / 1e4), 0


@dataclass(frozen=True)
class VolatilitySlippage:
    """Slippage proportional to recent volatility: multiple * std of log returns of the `window` bars before (see `past_sigma`)."""

    multiple: float = 0.1
    window: int = 20

    def __post_init__(self) -> None:
        _number("VolatilitySlippage", "multiple", self.multiple, 0.0, hint="e.g. 0.1 for a tenth of a bar's volatility")
        _window("VolatilitySlippage", self.window, 2)

    def fraction(self, candles: pd.DataFrame) -> tuple[np.ndarray, int]:
        """(slippage per bar as a fraction, warm-up bars)."""
        sigma, warmup = past_sigma(candles["close"].to_numpy(), self.window)
        return self.multiple * sigma, warmup


@dataclass(frozen=True)
class SqrtImpact:
    """Square-root market impact: k * sigma[t] * sqrt(q / adv[t]) as a fraction of price (`impact_fraction`).

    sigma: std of log returns of the `window` bars before t (`past_sigma`); adv: mean volume per bar of the
    `window` bars before t (`past_mean_volume`). The engine cuts an order to participation_cap * adv[t]
    (None: no cap).
    """

    k: float = 1.0
    window: int = 20
    participation_cap: float | None = 0.1

    def __post_init__(self) -> None:
        _number("SqrtImpact", "k", self.k, 0.0, hint="e.g. 1.0")
        _window("SqrtImpact", self.window, 2)
        if self.participation_cap is not None:
            _number("SqrtImpact", "participation_cap", self.participation_cap, 1e-9, 1.0,
                    "a fraction of the average bar volume such as 0.1, or None for no cap")


@dataclass(frozen=True, eq=False)
class Funding:
    """Funding rates of a perpetual (fractions, 0.0001 = 0.01 %), indexed by UTC funding time.

    On bars, the rate whose time falls in [open_t, open_t+1) is charged at bar t's open (summed when there
    are several); the last bar spans one usual bar step (or `timeframe`). Rates outside the candles are ignored.
    """

    rates: pd.Series = field(repr=False)

    def __post_init__(self) -> None:
        rates = self.rates
        if not isinstance(rates, pd.Series) or not isinstance(rates.index, pd.DatetimeIndex):
            raise ConfigError(f"Funding: rates must be a pandas Series indexed by funding time, got {type(rates).__name__}; "
                              "use Funding.from_store(store, exchange, symbol) or qlab.load_sample_funding(symbol)")
        if rates.index.tz is None:
            raise ConfigError("Funding: the rates' index has no time zone; use rates.tz_localize('UTC') if the times are UTC")
        values = pd.to_numeric(rates, errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            i = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ConfigError(f"Funding: rate {rates.iloc[i]!r} at {rates.index[i]} is not a finite number; fix or drop it")
        index = pd.DatetimeIndex(rates.index.tz_convert("UTC").as_unit("ns"), name="timestamp")
        if index.has_duplicates:
            raise ConfigError(f"Funding: duplicate funding time {index[index.duplicated()][0]}; keep one rate per time")
        series = pd.Series(values, index=index, name="funding_rate").sort_index()
        object.__setattr__(self, "rates", series)  # a private, sorted, ns-precision copy

    @classmethod
    def from_store(cls, store: Store, exchange: str, symbol: str) -> Funding:
        """The store's funding rates for a perpetual (NotFoundError when it has none)."""
        return cls(store.funding(exchange, symbol))

    def per_bar(self, index: pd.DatetimeIndex, timeframe: str | None = None) -> np.ndarray:
        """The rate charged at each bar's open, 0 where none (see the class docstring)."""
        opens = index.as_unit("ns").asi8
        if timeframe is not None:
            step = timeframe_delta(timeframe).value
        elif len(opens) > 1:
            steps, counts = np.unique(np.diff(opens), return_counts=True)
            step = int(steps[np.argmax(counts)])
        else:
            step = 0  # one bar and no timeframe: its span is unknown, no rate is placed
        times, values = self.rates.index.asi8, self.rates.to_numpy()
        inside = (times >= opens[0]) & (times < opens[-1] + step)
        out = np.zeros(len(opens))
        np.add.at(out, np.searchsorted(opens, times[inside], side="right") - 1, values[inside])
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Funding) and self.rates.equals(other.rates) and self.rates.index.equals(other.rates.index)

    def __hash__(self) -> int:
        return hash((len(self.rates), tuple(self.rates.index.asi8[:1]), float(self.rates.sum())))


@dataclass(frozen=True)
class FillCost:
    """One fill's executed price and its costs in money (quote currency)."""

    price: float
    fee: float
    spread: float
    slippage: float
    impact: float

    @property
    def total(self) -> float:
        """fee + spread + slippage + impact."""
        return self.fee + self.spread + self.slippage + self.impact


@dataclass(frozen=True, eq=False)
class CostArrays:
    """What the engines consume: scalars and read-only float64 arrays of len(candles), no NaN (see the module docstring).

    half_spread, slippage: fractions of price; sigma: std of log returns; adv: mean volume per bar (> 0);
    funding: the rate charged at each bar's open. With no impact model: impact_k = 0, sigma = 0, adv = 1 and
    participation_cap = inf. `warmup`: leading bars filled with the first estimate.
    """

    maker_fee: float
    taker_fee: float
    half_spread: np.ndarray
    slippage: np.ndarray
    sigma: np.ndarray
    adv: np.ndarray
    impact_k: float
    participation_cap: float
    funding: np.ndarray
    warmup: int = 0

    def __post_init__(self) -> None:
        n = len(self.half_spread)
        for name in ("half_spread", "slippage", "sigma", "adv", "funding"):
            arr = np.array(getattr(self, name), dtype=np.float64)
            if arr.shape != (n,) or not np.isfinite(arr).all() or (name == "adv" and not (arr > 0).all()):
                raise ConfigError(f"CostArrays: {name} must be {n} finite float64 values (adv > 0); use CostModel.prepare(candles)")
            arr.flags.writeable = False
            object.__setattr__(self, name, arr)

    def __len__(self) -> int:
        return len(self.half_spread)

    def max_quantity(self, t: int) -> float:
        """The participation cap at bar t: participation_cap * adv[t] (inf without a cap); the engine cuts orders to it."""
        return self.participation_cap * float(self.adv[t])

    def fill(self, p: float, side: int, q: float, t: int, maker: bool = False) -> FillCost:
        """Executed price and costs of a fill of q at reference price p (the level, for a maker) on bar t, side +1 buy / -1 sell.

        Exactly qlab.engine.orders "Fill prices and costs". q is used as given: the participation cap is
        the engine's job (see `max_quantity`).
        """
        if side not in (1, -1):
            raise ConfigError(f"side={side!r} must be +1 (buy) or -1 (sell)")
        if not (p > 0 and q >= 0):
            raise ConfigError(f"price p={p!r} must be > 0 and quantity q={q!r} >= 0")
        if maker:
            return FillCost(price=p, fee=self.maker_fee * p * q, spread=0.0, slippage=0.0, impact=0.0)
        hs, sl = float(self.half_spread[t]), float(self.slippage[t])
        im = impact_fraction(self.impact_k, self.sigma[t], q, self.adv[t])
        price = p * (1 + side * (hs + sl + im))
        return FillCost(price=price, fee=self.taker_fee * price * q, spread=hs * p * q, slippage=sl * p * q, impact=im * p * q)


_SPREADS, _SLIPPAGES = (FixedSpread, HighLowSpread), (FixedSlippage, VolatilitySlippage)
_SCALE = {FixedSpread: "bps", HighLowSpread: "multiple", FixedSlippage: "bps", VolatilitySlippage: "multiple", SqrtImpact: "k"}


def _scaled(part: Any, m: float) -> Any:
    """The part with its size (bps, multiple or k) times m."""
    name = next(v for k, v in _SCALE.items() if isinstance(part, k))
    return replace(part, **{name: getattr(part, name) * m})


@dataclass(frozen=True)
class CostModel:
    """Fees, spread, slippage, market impact and funding; one model for every engine. Compose with `with_`."""

    fees: FeeSchedule = field(default_factory=FeeSchedule)
    spread: FixedSpread | HighLowSpread = field(default_factory=FixedSpread)
    slippage: FixedSlippage | VolatilitySlippage = field(default_factory=FixedSlippage)
    impact: SqrtImpact | None = field(default_factory=SqrtImpact)
    funding: Funding | None = None

    def __post_init__(self) -> None:
        checks = (("fees", (FeeSchedule,), "FeeSchedule(maker=0.0002, taker=0.0005)"),
                  ("spread", _SPREADS, "FixedSpread(bps=0) for no spread"),
                  ("slippage", _SLIPPAGES, "FixedSlippage(bps=0) for no slippage"),
                  ("impact", (SqrtImpact, type(None)), "SqrtImpact(...) or None"),
                  ("funding", (Funding, type(None)), "Funding(rates) or None"))
        for name, types, fix in checks:
            value = getattr(self, name)
            if not isinstance(value, types):
                raise ConfigError(f"CostModel: {name}={value!r} is a {type(value).__name__}; use {fix}")

    def with_(self, **parts: Any) -> CostModel:
        """A copy with some parts replaced, e.g. `model.with_(spread=HighLowSpread())`."""
        names = [f.name for f in fields(self)]
        for name in parts:
            if name not in names:
                raise ConfigError(f"CostModel has no part {name!r}; parts: {', '.join(names)}." + did_you_mean(name, names))
        return replace(self, **parts)

    @classmethod
    def none(cls) -> CostModel:
        """Explicitly no costs: zero fees, spread and slippage, no impact, no funding."""
        return cls(fees=FeeSchedule(0.0, 0.0, source="none"), spread=FixedSpread(0.0), slippage=FixedSlippage(0.0), impact=None)

    @classmethod
    def for_market(cls, exchange: str, symbol: str, store: Store | None = None, *, tier: str = "default", at: Any = None,
                   **overrides: Any) -> CostModel:
        """The default model with the market's fees (`FeeSchedule.for_market`) and, for a perpetual, the store's
        funding rates when it has them (else no funding); `overrides` replace parts, e.g. spread=HighLowSpread()."""
        parts: dict[str, Any] = {"fees": FeeSchedule.for_market(exchange, symbol, store, tier=tier, at=at)}
        if store is not None and ":" in symbol and "funding" not in overrides:
            with contextlib.suppress(NotFoundError):
                parts["funding"] = Funding.from_store(store, exchange, symbol)
        return cls().with_(**{**parts, **overrides})

    def stressed(self, spread: float = 10.0, slippage: float = 5.0, impact: float = 5.0) -> CostModel:
        """A copy with spread, slippage and impact multiplied (fees and funding unchanged)."""
        for name, m in (("spread", spread), ("slippage", slippage), ("impact", impact)):
            _number("CostModel.stressed", name, m, 0.0, hint="a multiplier such as 5")
        return replace(self, spread=_scaled(self.spread, spread), slippage=_scaled(self.slippage, slippage),
                       impact=None if self.impact is None else _scaled(self.impact, impact))

    def prepare(self, candles: pd.DataFrame, timeframe: str | None = None) -> CostArrays:
        """Per-bar cost arrays for these candles (validated; `timeframe` only fixes the last bar's funding span)."""
        validate_candles(candles, timeframe, where="the candles given to CostModel.prepare")
        n = len(candles)
        half_spread, w1 = self.spread.half_spread(candles)
        slippage, w2 = self.slippage.fraction(candles)
        if self.impact is None:
            sigma, adv, w3, k, cap = np.zeros(n), np.ones(n), 0, 0.0, math.inf
        else:
            sigma, w3 = past_sigma(candles["close"].to_numpy(), self.impact.window)
            adv, _ = past_mean_volume(candles["volume"].to_numpy(), self.impact.window)
            k, cap = float(self.impact.k), self.impact.participation_cap
            cap = math.inf if cap is None else float(cap)
        funding = np.zeros(n) if self.funding is None else self.funding.per_bar(candles.index, timeframe)
        return CostArrays(maker_fee=float(self.fees.maker), taker_fee=float(self.fees.taker), half_spread=half_spread,
                          slippage=slippage, sigma=sigma, adv=adv, impact_k=k, participation_cap=cap, funding=funding,
                          warmup=min(max(w1, w2, w3), n))


DEFAULT_COSTS = CostModel()


def resolve_costs(costs: Any) -> CostModel:
    """The CostModel an engine uses: "default" -> CostModel(), a CostModel -> itself, None -> CostModel.none().

    Engines take `costs="default"`, so costs are on unless the caller writes `costs=None` (the explicit opt-out).
    """
    if isinstance(costs, CostModel):
        return costs
    if costs is None:
        return CostModel.none()
    if isinstance(costs, str) and costs == "default":
        return DEFAULT_COSTS
    raise ConfigError(f"costs={costs!r} is not a CostModel; use costs='default', a qlab.costs.CostModel(...), "
                      "or costs=None for no costs at all")


_COST_COLUMNS = ("entry_fee", "exit_fee", "spread_cost", "slippage_cost", "impact_cost", "funding")


def _cost_columns(trades: pd.DataFrame) -> dict[str, np.ndarray]:
    if not isinstance(trades, pd.DataFrame):
        raise DataError(f"expected a trades DataFrame, got {type(trades).__name__}")
    missing = [c for c in (*_COST_COLUMNS, "net_pnl") if c not in trades.columns]
    if missing:
        raise DataError(f"the trades table lacks column(s) {', '.join(map(repr, missing))}; it has {list(trades.columns)}; "
                        "pass Result.trades of a qlab engine")
    return {c: trades[c].fillna(0.0).to_numpy(dtype=np.float64) for c in (*_COST_COLUMNS, "net_pnl")}


def cost_breakdown(trades: pd.DataFrame) -> pd.Series:
    """Costs of a trades table in money: fees (entry + exit), spread, slippage, impact, funding (paid > 0) and total."""
    col = _cost_columns(trades)
    parts = {"fees": col["entry_fee"].sum() + col["exit_fee"].sum(), "spread": col["spread_cost"].sum(),
             "slippage": col["slippage_cost"].sum(), "impact": col["impact_cost"].sum(), "funding": col["funding"].sum()}
    parts["total"] = sum(parts.values())
    return pd.Series({k: float(v) for k, v in parts.items()}, name="costs")


def cost_share(trades: pd.DataFrame) -> float:
    """Total cost / gross profit before costs (how much of the edge costs eat).

    A trade's profit before costs is net_pnl + entry_fee + exit_fee + spread_cost + slippage_cost +
    impact_cost + funding (its PnL at reference prices, without fees or funding); the gross profit is the
    sum of the positive ones. Without any gross profit (no trades, or none profitable before costs) the
    share is inf, never NaN.
    """
    col = _cost_columns(trades)
    costs = sum(col[c] for c in _COST_COLUMNS)
    before = col["net_pnl"] + costs
    gross = float(before[before > 0].sum())
    return float(costs.sum()) / gross if gross > 0 else math.inf

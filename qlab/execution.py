"""What a strategy asks of execution: OrderSpec (order types, exits, timing) and SizeSpec (sizing,
leverage). Plain, validated settings; the fill model that honours them is in qlab.engine.orders."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from qlab.errors import ConfigError, did_you_mean

ENTRY_TYPES = ("market", "limit", "stop", "stop_limit")
SIZE_MODES = ("units", "amount", "percent", "risk", "vol_target")
EXIT_REASONS = ("signal", "stop_loss", "take_profit", "trailing_stop", "liquidation", "end")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}." + did_you_mean(str(value), choices))


def _fraction(name: str, value: float | None, upper: float = 1.0) -> None:
    if value is not None and not (0 <= value < upper):
        raise ConfigError(f"{name}={value!r} must be a fraction in [0, {upper}); e.g. 0.02 for 2 %")


@dataclass(frozen=True)
class OrderSpec:
    """How signals become orders: entry type, protective exits, time in force, timing and intra-bar path."""

    entry: Literal["market", "limit", "stop", "stop_limit"] = "market"
    entry_offset: float = 0.0  # distance of a limit/stop entry from the signal bar's close, as a fraction
    limit_offset: float = 0.0  # stop_limit: distance of the limit beyond the stop, as a fraction
    tif: str | int = "gtc"  # "gtc", "ioc", or N bars
    stop_loss: float | None = None  # fraction of the entry price
    stop_loss_atr: float | None = None  # multiple of ATR
    take_profit: float | None = None  # fraction of the entry price
    trailing_stop: float | None = None  # fraction
    trailing_atr: float | None = None  # multiple of ATR
    atr_period: int = 14
    timing: Literal["next_open", "close"] = "next_open"
    path: Literal["ohlc", "pessimistic"] = "ohlc"

    def __post_init__(self) -> None:
        _choice("entry", self.entry, ENTRY_TYPES)
        _choice("timing", self.timing, ("next_open", "close"))
        _choice("path", self.path, ("ohlc", "pessimistic"))
        if not (self.tif in ("gtc", "ioc") or (isinstance(self.tif, int) and not isinstance(self.tif, bool) and self.tif >= 1)):
            raise ConfigError(f"tif={self.tif!r}; use 'gtc', 'ioc' or a number of bars >= 1")
        for name in ("entry_offset", "limit_offset", "stop_loss", "take_profit", "trailing_stop"):
            _fraction(name, getattr(self, name))
        for name in ("stop_loss_atr", "trailing_atr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name}={value!r} must be a positive multiple of ATR, e.g. 2.0")
        if self.stop_loss is not None and self.stop_loss_atr is not None:
            raise ConfigError("give stop_loss (a fraction) or stop_loss_atr (an ATR multiple), not both")
        if self.trailing_stop is not None and self.trailing_atr is not None:
            raise ConfigError("give trailing_stop (a fraction) or trailing_atr (an ATR multiple), not both")
        if self.atr_period < 1:
            raise ConfigError(f"atr_period={self.atr_period!r} must be >= 1")

    @property
    def tif_bars(self) -> int:
        """Bars an entry order stays live: 0 = until filled or cancelled (gtc), 1 = ioc, else N."""
        return 0 if self.tif == "gtc" else 1 if self.tif == "ioc" else int(self.tif)

    def to_dict(self) -> dict:
        """Plain values, for specs and reports."""
        return asdict(self)


@dataclass(frozen=True)
class SizeSpec:
    """How large an entry is: units, a quote amount, a percent of equity, a fixed risk, or a volatility target."""

    mode: Literal["units", "amount", "percent", "risk", "vol_target"] = "percent"
    value: float = 1.0  # units | quote amount | fraction of equity | fraction of equity at risk | annual vol target
    leverage: float = 1.0
    maintenance_margin: float = 0.005  # maintenance margin rate for liquidation
    min_notional: float = 1e-9  # smaller orders are skipped
    vol_window: int = 20  # bars of returns behind the volatility estimate of vol_target sizing

    def __post_init__(self) -> None:
        _choice("mode", self.mode, SIZE_MODES)
        if not self.value > 0:
            raise ConfigError(f"size value={self.value!r} must be > 0")
        if self.mode in ("percent", "risk") and self.value > 1:
            raise ConfigError(f"size value={self.value!r} is a fraction of equity for mode={self.mode!r}; e.g. 0.5 for 50 %")
        if not 1 <= self.leverage <= 125:
            raise ConfigError(f"leverage={self.leverage!r} must be between 1 and 125")
        _fraction("maintenance_margin", self.maintenance_margin, 1 / self.leverage if self.leverage > 1 else 1.0)
        if not (isinstance(self.vol_window, int) and self.vol_window >= 2):
            raise ConfigError(f"vol_window={self.vol_window!r} must be an integer >= 2")

    def to_dict(self) -> dict:
        """Plain values, for specs and reports."""
        return asdict(self)



ORDER_FIELDS = tuple(f.name for f in fields(OrderSpec))
SIZE_FIELDS = tuple(f.name for f in fields(SizeSpec))


def _from_dict(cls: type, fields_: tuple[str, ...], what: str, values: dict[str, Any]) -> Any:
    unknown = [k for k in values if k not in fields_]
    if unknown:
        hint = did_you_mean(str(unknown[0]), fields_)
        raise ConfigError(f"unknown {what} field {unknown[0]!r}; use {', '.join(fields_)}." + hint)
    return cls(**values)


def make_order_spec(values: dict[str, Any]) -> OrderSpec:
    """An OrderSpec from a dict; unknown fields get "did you mean"."""
    return _from_dict(OrderSpec, ORDER_FIELDS, "order", values)


def make_size_spec(values: dict[str, Any]) -> SizeSpec:
    """A SizeSpec from a dict; unknown fields get "did you mean"."""
    return _from_dict(SizeSpec, SIZE_FIELDS, "size", values)

"""Entry quantity from a SizeSpec, exactly as qlab.engine.orders "Sizing" states it (and the kernel computes
it): from the reference price at fill time and the equity at the previous close."""

from __future__ import annotations

import math

from qlab.execution import SizeSpec


def entry_quantity(size: SizeSpec, p: float, equity: float, *, sl_frac: float = math.nan, sl_atr: float = math.nan,
                   atr_signal: float = math.nan, vol: float = math.nan, bars_per_year: float = math.nan) -> float:
    """The quantity of an entry at reference price p; NaN when it cannot be sized (no stop distance, no volatility yet)."""
    if size.mode == "units":
        return size.value
    if size.mode == "amount":
        return size.value / p
    if size.mode == "percent":
        return size.value * equity * size.leverage / p
    if size.mode == "risk":
        dist = sl_frac * p if not math.isnan(sl_frac) else sl_atr * atr_signal
        return size.value * equity / dist if dist > 0.0 else math.nan
    ann = vol * math.sqrt(bars_per_year)
    if math.isnan(ann):
        return math.nan
    cap = equity * size.leverage
    return (min(equity * size.value / ann, cap) if ann > 0.0 else cap) / p


def vol_target_notional(equity: float, target: float, vol: float, bars_per_year: float) -> float:
    """The notional that runs at an annualised volatility `target` given a per-bar vol (inf when vol is 0 or unknown)."""
    ann = vol * math.sqrt(bars_per_year)
    return equity * target / ann if ann > 0.0 else math.inf

"""qlab benchmarks: seeded synthetic data, side-by-side timings, written to BENCHMARKS.md.

A benchmark is a *section*: a function registered with `@section(...)` that takes a `Config`
and returns a `SectionResult` (a dict of raw numbers plus a markdown body). The runner
(`python -m benchmarks`) imports every module in `SECTION_MODULES`, runs the registered
sections in order and stitches their markdown under one header. Adding a benchmark is
writing a module with one `@section` function and listing it in `SECTION_MODULES`.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# Modules holding @section functions, run in this order.
SECTION_MODULES: tuple[str, ...] = ("benchmarks.store_bench", "benchmarks.engine_bench", "benchmarks.optimize_bench", "benchmarks.ml_bench",
                                     "benchmarks.montecarlo_bench", "benchmarks.paper_bench", "benchmarks.alerts_bench",
                                     "benchmarks.dashboard_bench")


@dataclass(frozen=True)
class Config:
    """What every section gets: quick mode (small data for CI smoke tests), a temp dir, a seed."""

    quick: bool
    tmp_dir: Any  # pathlib.Path, removed by the runner afterwards
    seed: int = 42


@dataclass
class SectionResult:
    """One section's outcome: raw numbers (for JSON / regression tracking) and its markdown body."""

    results: dict[str, Any]
    markdown: str


@dataclass(frozen=True)
class Section:
    name: str  # short key for --only, e.g. "store"
    title: str  # heading in BENCHMARKS.md
    run: Callable[[Config], SectionResult]


SECTIONS: dict[str, Section] = {}


def section(name: str, title: str) -> Callable[[Callable[[Config], SectionResult]], Callable[[Config], SectionResult]]:
    """Register a benchmark section under `name` (used by --only) with a markdown `title`."""

    def register(fn: Callable[[Config], SectionResult]) -> Callable[[Config], SectionResult]:
        if name in SECTIONS:
            raise ValueError(f"benchmark section {name!r} is registered twice")
        SECTIONS[name] = Section(name, title, fn)
        return fn

    return register


# -- timing helpers ------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, return value) of one call, with time.perf_counter."""
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def repeat(fn: Callable[[], Any], times: int) -> list[float]:
    """Seconds of `times` calls of `fn`, each after an (untimed) garbage collection."""
    seconds = []
    for _ in range(times):
        gc.collect()
        seconds.append(timed(fn)[0])
    return seconds


# -- markdown helpers ----------------------------------------------------------------------------


def fmt_seconds(seconds: float) -> str:
    """'812 ms' below 10 s, else '12.3 s'."""
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 10:
        return f"{seconds * 1e3:,.1f} ms" if seconds < 0.1 else f"{seconds * 1e3:,.0f} ms"
    return f"{seconds:,.1f} s"


def fmt_rate(rows: int, seconds: float, unit: str = "rows/s") -> str:
    rate = rows / seconds
    if rate >= 1e6:
        return f"{rate / 1e6:.2f} M {unit}"
    if rate >= 1e3:
        return f"{rate / 1e3:.1f} k {unit}"
    return f"{rate:.0f} {unit}"


def verdict(ok: bool | None) -> str:
    if ok is None:
        return "—"
    return "pass" if ok else "**miss**"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


STANDARD_HEADERS = ("what", "data size", "time", "rate", "target", "result")

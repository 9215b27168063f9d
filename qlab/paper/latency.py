"""Seeded latency model: a fixed delay plus a random one (exponential, or lognormal) per order.

The delay of an order is a pure function of (seed, client order id), so a replay, and a restart that
reprocesses a bar, draw exactly the same delays.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from qlab.errors import ConfigError

DISTRIBUTIONS = ("exponential", "lognormal", "uniform")


@dataclass(frozen=True)
class LatencyModel:
    """Order-to-market delay in milliseconds: `fixed_ms` plus a random part with mean `jitter_ms`."""

    fixed_ms: float = 50.0
    jitter_ms: float = 30.0
    distribution: str = "exponential"

    def __post_init__(self) -> None:
        if not (self.fixed_ms >= 0 and self.jitter_ms >= 0):
            raise ConfigError(f"LatencyModel: fixed_ms={self.fixed_ms!r} and jitter_ms={self.jitter_ms!r} must be >= 0")
        if self.distribution not in DISTRIBUTIONS:
            raise ConfigError(f"LatencyModel: distribution={self.distribution!r}; use one of {', '.join(DISTRIBUTIONS)}")

    def delay(self, seed: int, key: str) -> float:
        """The delay in seconds of the order `key` (its client id) under `seed`."""
        if self.jitter_ms == 0:
            return self.fixed_ms / 1000.0
        digest = hashlib.sha256(f"{seed}|{key}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        if self.distribution == "exponential":
            jitter = rng.exponential(self.jitter_ms)
        elif self.distribution == "lognormal":
            jitter = rng.lognormal(np.log(self.jitter_ms) - 0.5, 1.0)  # mean = jitter_ms
        else:
            jitter = rng.uniform(0.0, 2.0 * self.jitter_ms)
        return (self.fixed_ms + float(jitter)) / 1000.0

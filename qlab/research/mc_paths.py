"""Numba kernels behind `qlab.monte_carlo`: metrics of many equity paths at once, and a fused stationary
bootstrap that draws each path of returns and measures it without ever holding all paths in memory.

Metric conventions are those of `qlab.analytics.metrics.compute_metrics` (tests compare them): per-step
simple returns, Sharpe = mean / std (ddof=1) * sqrt(steps per year) with the zero-std rule, max drawdown a
negative fraction, the longest drawdown from the peak point to the point back at the peak (or to the last
point), ruin (equity <= 0) sticks at 0. Paths may be irregular in time: `positions` gives each point's bar
number, so drawdown lengths are in bars.

Random numbers: each path has its own splitmix64 stream seeded from `numpy.random.SeedSequence(seed)`, so a
result depends on the seed only, never on how `prange` spreads paths over threads.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from qlab.analytics.metrics import TINY

STATS = ("final_equity", "mean_return", "sharpe", "max_drawdown", "longest_drawdown_bars", "worst_loss")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_TO_UNIT = 1.0 / 9007199254740992.0  # 2 ** -53


def path_seeds(seed: int | None, n: int) -> np.ndarray:
    """One 64-bit stream seed per path (the same seed gives the same seeds)."""
    return np.random.SeedSequence(seed).generate_state(n, dtype=np.uint64)


@njit(cache=True, inline="always")
def _next_nb(state: np.ndarray) -> float:
    """splitmix64 step on state[0]; a uniform float in [0, 1) (hand-written: numba's np.random is per thread)."""
    state[0] = state[0] + _GOLDEN
    z = state[0]
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    z = z ^ (z >> _S31)
    return float(z >> _S11) * _TO_UNIT


@njit(cache=True)
def bootstrap_indices_nb(state: np.ndarray, n_obs: int, horizon: int, p_new: float, out: np.ndarray) -> None:
    """Stationary bootstrap (Politis & Romano 1994) indices into n_obs observations: a block starts at a
    uniform index, and each next step starts a new block with probability p_new (1 / mean block length),
    else takes the next observation (wrapping around). p_new = 1 is the iid bootstrap."""
    idx = min(int(_next_nb(state) * n_obs), n_obs - 1)
    out[0] = idx
    for t in range(1, horizon):
        if p_new >= 1.0 or _next_nb(state) < p_new:
            idx = min(int(_next_nb(state) * n_obs), n_obs - 1)
        else:
            idx += 1
            if idx == n_obs:
                idx = 0
        out[t] = idx


@njit(cache=True, inline="always")
def _sharpe_nb(mean: float, std: float, per_year: float) -> float:
    """mean / std * sqrt(per_year) with the zero-std rule (0/0 -> 0.0, x/0 -> +/-inf)."""
    if std <= TINY:
        return 0.0 if abs(mean) <= TINY else math.copysign(math.inf, mean)
    return mean / std * math.sqrt(per_year)


@njit(cache=True)
def path_stats_nb(values: np.ndarray, positions: np.ndarray, per_year: float) -> tuple[float, float, float, float, int, float]:
    """(final, mean return, sharpe, max drawdown, longest drawdown in bars, worst loss vs the start) of one path."""
    k_last = len(values) - 1
    start = values[0]
    peak, peak_at, under, longest = start, 0, False, 0
    max_dd, lowest, ruined = 0.0, start, False
    mean, m2, prev = 0.0, 0.0, start
    for k in range(1, k_last + 1):
        v = 0.0 if ruined else values[k]
        if v <= 0.0:
            v, ruined = 0.0, True
        r = v / prev - 1.0 if prev > 0.0 else 0.0
        delta = r - mean  # Welford
        mean += delta / k
        m2 += delta * (r - mean)
        prev = v
        lowest = min(lowest, v)
        if v >= peak:
            if under:
                longest = max(longest, positions[k] - positions[peak_at])
            peak, peak_at, under = v, k, False
        else:
            under = True
            max_dd = min(max_dd, v / peak - 1.0)
    if under:
        longest = max(longest, positions[k_last] - positions[peak_at])
    sharpe = _sharpe_nb(mean, math.sqrt(m2 / (k_last - 1)), per_year) if k_last >= 2 else math.nan
    return prev, (mean if k_last >= 1 else math.nan), sharpe, max_dd, longest, lowest / start - 1.0


@njit(cache=True, parallel=True)
def path_metrics_nb(paths: np.ndarray, positions: np.ndarray, per_year: float) -> np.ndarray:
    """STATS of every row of a 2-D array of equity paths (n, points); (n, 6) float64."""
    n = paths.shape[0]
    out = np.empty((n, 6))
    for i in prange(n):
        f, m, s, dd, lg, wl = path_stats_nb(paths[i], positions, per_year)
        out[i, 0], out[i, 1], out[i, 2], out[i, 3], out[i, 4], out[i, 5] = f, m, s, dd, lg, wl
    return out


@njit(cache=True, parallel=True)
def bootstrap_metrics_nb(returns: np.ndarray, seeds: np.ndarray, horizon: int, p_new: float, start: float,
                         per_year: float, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stationary-bootstrap `len(seeds)` paths of `horizon` returns and measure each as it is drawn: (STATS (n, 6),
    equity at the `grid` points (n, len(grid)), grid sorted). No path is stored: memory is O(n * len(grid)).

    The same numbers as `path_stats_nb` on the path (tests check it), in one pass: the returns are known, so no
    division per step; the variance uses sums shifted by the returns' mean (no cancellation)."""
    n, n_obs = len(seeds), len(returns)
    stats = np.empty((n, 6))
    at_grid = np.empty((n, len(grid)))
    shift = returns.mean()
    for i in prange(n):
        state = np.empty(1, dtype=np.uint64)
        state[0] = seeds[i]
        idx = min(int(_next_nb(state) * n_obs), n_obs - 1)
        v, peak, peak_at, under, longest = start, start, 0, False, 0
        dd_floor, lowest, s1, s2 = 1.0, start, 0.0, 0.0  # dd_floor: the lowest v / peak so far
        g = 0
        while g < len(grid) and grid[g] == 0:
            at_grid[i, g] = v
            g += 1
        for t in range(horizon):
            if t > 0:
                if p_new >= 1.0 or _next_nb(state) < p_new:  # iid (p_new = 1): no coin to toss
                    idx = min(int(_next_nb(state) * n_obs), n_obs - 1)
                else:
                    idx += 1
                    if idx == n_obs:
                        idx = 0
            r = returns[idx] if v > 0.0 else 0.0  # ruin sticks at 0
            v = v * (1.0 + r)
            if v < 0.0 or (v == 0.0 and r != 0.0):
                v, r = 0.0, -1.0
            s1 += r - shift
            s2 += (r - shift) * (r - shift)
            if v < lowest:
                lowest = v
            if v >= peak:
                if under and t + 1 - peak_at > longest:
                    longest = t + 1 - peak_at
                peak, peak_at, under = v, t + 1, False
            else:
                under = True
                if v < peak * dd_floor:
                    dd_floor = v / peak
            while g < len(grid) and grid[g] == t + 1:
                at_grid[i, g] = v
                g += 1
        if under and horizon - peak_at > longest:
            longest = horizon - peak_at
        mean = s1 / horizon + shift
        sharpe = math.nan
        if horizon >= 2:
            sharpe = _sharpe_nb(mean, math.sqrt(max((s2 - s1 * s1 / horizon) / (horizon - 1), 0.0)), per_year)
        stats[i, 0], stats[i, 1], stats[i, 2] = v, mean, sharpe
        stats[i, 3], stats[i, 4], stats[i, 5] = dd_floor - 1.0, longest, lowest / start - 1.0
    return stats, at_grid


@njit(cache=True, parallel=True)
def bootstrap_paths_nb(returns: np.ndarray, seeds: np.ndarray, horizon: int, p_new: float) -> np.ndarray:
    """The resampled returns themselves, (n, horizon): the same draws as bootstrap_metrics_nb with the same seeds."""
    n = len(seeds)
    out = np.empty((n, horizon))
    for i in prange(n):
        state = np.empty(1, dtype=np.uint64)
        state[0] = seeds[i]
        idx = np.empty(horizon, dtype=np.int64)
        bootstrap_indices_nb(state, len(returns), horizon, p_new, idx)
        for t in range(horizon):
            out[i, t] = returns[idx[t]]
    return out


def stationary_bootstrap(returns: np.ndarray, n: int, mean_block: float, *, seed: int | None = 0,
                         horizon: int | None = None) -> np.ndarray:
    """(n, horizon) stationary-bootstrap resamples of `returns` with mean block length `mean_block` (1 = iid)."""
    r = np.ascontiguousarray(returns, dtype=np.float64)
    return bootstrap_paths_nb(r, path_seeds(seed, n), len(r) if horizon is None else int(horizon), 1.0 / float(mean_block))


def path_metrics(paths: np.ndarray, positions: np.ndarray | None = None, per_year: float = 1.0) -> np.ndarray:
    """STATS of each row of `paths` (n, points); positions default to 0, 1, 2, ... (one bar per point)."""
    p = np.ascontiguousarray(np.atleast_2d(paths), dtype=np.float64)
    pos = np.arange(p.shape[1], dtype=np.int64) if positions is None else np.ascontiguousarray(positions, dtype=np.int64)
    return path_metrics_nb(p, pos, float(per_year))

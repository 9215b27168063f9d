"""Synthetic price paths for Monte Carlo: GBM, GARCH(1,1) fitted with `arch`, and Merton jump diffusion.

Each model is fitted to real per-bar log returns of closes (`fit_gbm`, `fit_garch`, `fit_jumps`) and
simulates `n` paths of log returns at once (`simulate_log_returns`), vectorised over paths. `synthetic_candles`
turns one path into valid Candles on the real timestamps: open = previous close, the real bars' wicks
resampled, the real volume kept (so volume-based costs stay realistic), so a strategy can be re-run on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from qlab.data.candles import Candles, validate_candles
from qlab.errors import ConfigError, DataError, did_you_mean

MODELS = ("gbm", "garch", "jump")
JUMP_THRESHOLD = 4.0  # a return further than this many robust sigmas from the median counts as a jump


def log_returns(close: pd.Series | np.ndarray) -> np.ndarray:
    """ln(c_t / c_t-1) of a close series (T-1 values), checked: positive, finite, at least 30 of them."""
    c = np.asarray(close, dtype=np.float64)
    if len(c) < 31 or not np.isfinite(c).all() or (c <= 0).any():
        raise DataError(f"need at least 31 positive, finite closes to fit a price model, got {len(c)} "
                        f"({int((~np.isfinite(c)).sum())} not finite, {int((c <= 0).sum())} <= 0)")
    return np.diff(np.log(c))


@dataclass(frozen=True)
class GBM:
    """Geometric Brownian motion per bar: log returns ~ N(mu - sigma^2 / 2, sigma) (mu, sigma per bar)."""

    mu: float
    sigma: float

    def simulate(self, n: int, steps: int, rng: np.random.Generator) -> np.ndarray:
        """(n, steps) per-bar log returns."""
        return rng.normal(self.mu - 0.5 * self.sigma**2, self.sigma, size=(n, steps))


@dataclass(frozen=True)
class Garch:
    """GARCH(1,1) on per-bar log returns r_t = mu + e_t, e_t = s_t z_t, s_t^2 = omega + alpha e_t-1^2 + beta s_t-1^2.

    z is standard normal (`nu` None) or a Student t scaled to unit variance (`nu` degrees of freedom).
    `sample_variance`: the fitted returns' variance, where paths start when alpha + beta >= 1 (an integrated
    GARCH, common for hourly crypto returns with t shocks, has no finite unconditional variance).
    """

    mu: float
    omega: float
    alpha: float
    beta: float
    nu: float | None = None
    sample_variance: float | None = None

    @property
    def persistence(self) -> float:
        return self.alpha + self.beta

    def unconditional_variance(self) -> float:
        """omega / (1 - alpha - beta); inf when the process is not stationary."""
        return self.omega / (1.0 - self.persistence) if self.persistence < 1.0 else math.inf

    def simulate(self, n: int, steps: int, rng: np.random.Generator, start_variance: float | None = None) -> np.ndarray:
        """(n, steps) per-bar log returns; the variance starts at `start_variance` (default: the unconditional one,
        or `sample_variance` when there is none).

        Written here, vectorised over paths, because arch's simulate draws one path per call.
        """
        var0 = start_variance if start_variance is not None else self.unconditional_variance()
        if not math.isfinite(var0):
            var0 = self.sample_variance if self.sample_variance is not None else math.inf
        if not (math.isfinite(var0) and var0 >= 0):
            raise ConfigError(f"GARCH alpha + beta = {self.persistence:.4f} >= 1 (not stationary); pass start_variance")
        if self.nu is None:
            z = rng.standard_normal((n, steps))
        else:
            z = rng.standard_t(self.nu, (n, steps)) * math.sqrt((self.nu - 2.0) / self.nu)
        out = np.empty((n, steps))
        var = np.full(n, var0)
        for t in range(steps):
            e = np.sqrt(var) * z[:, t]
            out[:, t] = self.mu + e
            var = self.omega + self.alpha * e * e + self.beta * var
        return out


@dataclass(frozen=True)
class JumpDiffusion:
    """Merton jump diffusion per bar: N(mu, sigma) plus Poisson(lam) jumps, each N(jump_mu, jump_sigma)."""

    mu: float
    sigma: float
    lam: float
    jump_mu: float
    jump_sigma: float

    def simulate(self, n: int, steps: int, rng: np.random.Generator) -> np.ndarray:
        """(n, steps) per-bar log returns: diffusion + the sum of that bar's jumps."""
        k = rng.poisson(self.lam, size=(n, steps))
        jumps = k * self.jump_mu + np.sqrt(k) * self.jump_sigma * rng.standard_normal((n, steps))
        return rng.normal(self.mu, self.sigma, size=(n, steps)) + jumps


def fit_gbm(close: pd.Series | np.ndarray) -> GBM:
    """GBM with the sample mean and std (ddof=1) of the log returns: mu = mean + sigma^2 / 2."""
    r = log_returns(close)
    sigma = float(np.std(r, ddof=1))
    return GBM(mu=float(r.mean()) + 0.5 * sigma**2, sigma=sigma)


def fit_garch(close: pd.Series | np.ndarray | None = None, *, returns: np.ndarray | None = None, dist: str = "t") -> Garch:
    """GARCH(1,1) with a constant mean fitted by maximum likelihood (`arch.arch_model`) to the log returns.

    Returns are scaled to percent for the optimiser (arch's advice) and the parameters scaled back.
    `dist`: "normal" or "t" (Student t, fatter tails, the usual choice for crypto).
    """
    from arch import arch_model

    if dist not in ("normal", "t"):
        raise ConfigError(f"dist={dist!r}; use 'normal' or 't'." + did_you_mean(str(dist), ("normal", "t")))
    r = log_returns(close) if returns is None else np.asarray(returns, dtype=np.float64)
    if len(r) < 100:
        raise DataError(f"a GARCH fit needs at least 100 returns, got {len(r)}; use more data or model='gbm'")
    fit = arch_model(r * 100.0, mean="Constant", vol="GARCH", p=1, q=1, dist=dist, rescale=False).fit(disp="off")
    p = fit.params
    return Garch(mu=float(p["mu"]) / 100.0, omega=float(p["omega"]) / 1e4, alpha=float(p["alpha[1]"]),
                 beta=float(p["beta[1]"]), nu=float(p["nu"]) if dist == "t" else None, sample_variance=float(np.var(r, ddof=1)))


def fit_jumps(close: pd.Series | np.ndarray | None = None, *, returns: np.ndarray | None = None,
              threshold: float = JUMP_THRESHOLD) -> JumpDiffusion:
    """Jump diffusion by thresholding: returns beyond `threshold` robust sigmas (1.4826 * MAD) of the median
    are jumps (lam = their share per bar, jump_mu/jump_sigma their mean and std); the rest is the diffusion."""
    r = log_returns(close) if returns is None else np.asarray(returns, dtype=np.float64)
    med = float(np.median(r))
    robust = 1.4826 * float(np.median(np.abs(r - med)))
    is_jump = np.abs(r - med) > threshold * robust if robust > 0 else np.zeros(len(r), dtype=bool)
    calm, jumps = r[~is_jump], r[is_jump]
    jump_sigma = float(np.std(jumps, ddof=1)) if len(jumps) >= 2 else 0.0
    return JumpDiffusion(mu=float(calm.mean()), sigma=float(np.std(calm, ddof=1)), lam=len(jumps) / len(r),
                         jump_mu=float(jumps.mean()) if len(jumps) else 0.0, jump_sigma=jump_sigma)


def fit_model(model: str, close: pd.Series | np.ndarray) -> GBM | Garch | JumpDiffusion:
    """Fit 'gbm', 'garch' or 'jump' to a close series."""
    if model == "gbm":
        return fit_gbm(close)
    if model == "garch":
        return fit_garch(close)
    if model == "jump":
        return fit_jumps(close)
    raise ConfigError(f"synthetic model {model!r}; use one of {', '.join(MODELS)}." + did_you_mean(str(model), MODELS))


def gbm_paths(s0: float, mu: float, sigma: float, steps: int, n: int, *, dt: float = 1.0, seed: int | None = None) -> np.ndarray:
    """(n, steps + 1) GBM prices from s0 with annual-style drift `mu` and volatility `sigma` per unit time, step `dt`:
    S_t+dt = S_t exp((mu - sigma^2 / 2) dt + sigma sqrt(dt) Z)."""
    if not (s0 > 0 and sigma >= 0 and dt > 0 and steps >= 1 and n >= 1):
        raise ConfigError(f"gbm_paths: need s0 > 0, sigma >= 0, dt > 0, steps >= 1, n >= 1; got s0={s0}, sigma={sigma}, "
                          f"dt={dt}, steps={steps}, n={n}")
    r = GBM(mu * dt, sigma * math.sqrt(dt)).simulate(n, steps, np.random.default_rng(seed))
    return s0 * np.exp(np.concatenate([np.zeros((n, 1)), np.cumsum(r, axis=1)], axis=1))


def synthetic_candles(real: Candles, log_ret: np.ndarray, rng: np.random.Generator) -> Candles:
    """Candles on `real`'s timestamps whose closes follow `log_ret` (len(real) - 1 values) from real's first close.

    open = the previous close (bar 0: the real open); each bar's upper and lower wick (log distance of high above
    max(open, close), of low below min(open, close)) is a real bar's, drawn at random; volume is the real volume.
    """
    o, h, lo, c = (real[k].to_numpy(dtype=np.float64) for k in ("open", "high", "low", "close"))
    if len(log_ret) != len(real) - 1:
        raise DataError(f"{len(log_ret)} log returns for {len(real)} bars; give len(candles) - 1")
    close = c[0] * np.exp(np.concatenate(([0.0], np.cumsum(log_ret))))
    open_ = np.concatenate(([o[0]], close[:-1]))
    upper = np.log(h / np.maximum(o, c))
    lower = np.log(np.minimum(o, c) / lo)
    pick = rng.integers(0, len(real), size=len(real))
    high = np.maximum(open_, close) * np.exp(upper[pick])
    low = np.minimum(open_, close) * np.exp(-lower[pick])
    out = pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": real["volume"].to_numpy(dtype=np.float64)},
                       index=real.index)
    validate_candles(out, where="the synthetic candles")
    return out

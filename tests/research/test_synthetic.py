"""Synthetic price models: simulated paths have the requested statistics, and fits recover known parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest

import qlab
from qlab.data.candles import validate_candles
from qlab.errors import ConfigError, DataError
from qlab.research.synthetic import (
    GBM,
    Garch,
    JumpDiffusion,
    fit_garch,
    fit_gbm,
    fit_jumps,
    fit_model,
    gbm_paths,
    synthetic_candles,
)


def test_gbm_paths_have_the_requested_drift_and_volatility():
    mu, sigma, dt = 0.3, 0.6, 1 / 8760
    prices = gbm_paths(100.0, mu, sigma, 8760, 400, dt=dt, seed=7)
    lr = np.diff(np.log(prices), axis=1)
    vol = lr.std(ddof=1) / math.sqrt(dt)
    drift = lr.mean() / dt + 0.5 * vol**2
    assert vol == pytest.approx(sigma, rel=0.01)
    assert drift == pytest.approx(mu, abs=4 * sigma / math.sqrt(400))  # s.e. of the drift over 400 path-years: 0.03
    growth = prices[:, -1] / 100.0  # E[S_T / S_0] = e^(mu T) with T = 1 year
    assert growth.mean() == pytest.approx(math.exp(mu), abs=4 * growth.std(ddof=1) / math.sqrt(400))
    assert prices[:, 0] == pytest.approx(100.0)


def test_fit_gbm_recovers_the_parameters_of_a_gbm_path():
    prices = gbm_paths(30_000.0, 0.0002, 0.01, 50_000, 1, seed=3)[0]  # per-bar units (dt = 1)
    model = fit_gbm(prices)
    assert model.sigma == pytest.approx(0.01, rel=0.02)
    assert model.mu == pytest.approx(0.0002, abs=4 * 0.01 / math.sqrt(50_000))


def test_garch_fit_recovers_the_parameters_of_a_series_simulated_by_arch():
    from arch.univariate import GARCH, ConstantMean, Normal

    sim = ConstantMean(None, volatility=GARCH(p=1, q=1), distribution=Normal(seed=np.random.default_rng(11)))
    data = sim.simulate([0.01, 0.05, 0.10, 0.85], nobs=6000, burn=500)  # mu, omega (in %^2), alpha, beta
    fitted = fit_garch(returns=data["data"].to_numpy() / 100.0, dist="normal")
    assert fitted.alpha == pytest.approx(0.10, abs=0.04)
    assert fitted.beta == pytest.approx(0.85, abs=0.07)
    assert fitted.unconditional_variance() == pytest.approx(0.05 / 0.05 / 1e4, rel=0.35)


def test_garch_simulation_has_its_unconditional_variance_and_clustered_volatility():
    model = Garch(mu=0.0, omega=2e-6, alpha=0.1, beta=0.85)
    r = model.simulate(200, 3000, np.random.default_rng(1))
    assert r.var() == pytest.approx(model.unconditional_variance(), rel=0.1)
    sq = r**2 - (r**2).mean(axis=1, keepdims=True)
    lag1 = (sq[:, 1:] * sq[:, :-1]).mean() / (sq**2).mean()
    plain = GBM(0.0, math.sqrt(model.unconditional_variance())).simulate(200, 3000, np.random.default_rng(1))
    sq0 = plain**2 - (plain**2).mean(axis=1, keepdims=True)
    assert lag1 > 0.1 and abs((sq0[:, 1:] * sq0[:, :-1]).mean() / (sq0**2).mean()) < 0.02


def test_an_integrated_garch_starts_at_the_sample_variance_and_else_refuses():
    igarch = Garch(mu=0.0, omega=1e-7, alpha=0.1, beta=0.9, sample_variance=1e-4)
    r = igarch.simulate(50, 2, np.random.default_rng(0))
    assert r[:, 0].std() == pytest.approx(0.01, rel=0.3)
    with pytest.raises(ConfigError, match="not stationary"):
        Garch(mu=0.0, omega=1e-7, alpha=0.1, beta=0.9).simulate(1, 5, np.random.default_rng(0))


def test_jump_fit_recovers_intensity_and_size_of_simulated_jumps():
    truth = JumpDiffusion(mu=0.0, sigma=0.004, lam=0.02, jump_mu=-0.03, jump_sigma=0.01)
    r = truth.simulate(1, 60_000, np.random.default_rng(5))[0]
    fitted = fit_jumps(returns=r)
    assert fitted.lam == pytest.approx(0.02, rel=0.15)
    assert fitted.jump_mu == pytest.approx(-0.03, abs=0.006)
    assert fitted.sigma == pytest.approx(0.004, rel=0.05)


def test_synthetic_candles_follow_the_returns_and_stay_valid():
    real = qlab.load_sample("BTC/USDT", "1h").iloc[-500:]
    rng = np.random.default_rng(0)
    lr = fit_model("garch", real["close"]).simulate(1, len(real) - 1, rng)[0]
    fake = synthetic_candles(real, lr, rng)
    validate_candles(fake, "1h")
    np.testing.assert_allclose(np.diff(np.log(fake["close"].to_numpy())), lr, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(fake["volume"].to_numpy(), real["volume"].to_numpy())
    assert fake["close"].iloc[0] == real["close"].iloc[0] and fake["open"].iloc[1] == fake["close"].iloc[0]


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ConfigError, match="did you mean 'garch'"):
        fit_model("garh", np.linspace(1, 2, 200))
    with pytest.raises(DataError, match="at least 31"):
        fit_gbm(np.ones(10))
    with pytest.raises(ConfigError, match="need s0 > 0"):
        gbm_paths(0.0, 0.1, 0.2, 10, 1)

"""qlab.research.robustness: regimes, neighbourhoods, deflated Sharpe and PBO, each checked against an
independent computation (hand arithmetic, scipy, plain-Python loops) or a property that must hold."""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kurtosis, norm, skew

import qlab
from qlab.errors import DataError
from qlab.research.robustness import (
    deflated_sharpe,
    deflated_sharpe_from_returns,
    falloff,
    heatmap_table,
    label_regimes,
    neighbourhood,
    neighbourhood_figure,
    pbo,
    pbo_figure,
    regime_performance,
)

# ---------------------------------------------------------------- regimes on real data


@pytest.fixture(scope="module")
def btc():
    return qlab.load_sample("BTC/USDT", "1h")


@pytest.fixture(scope="module")
def regimes(btc):
    return label_regimes(btc)


def test_labels_are_causal_truncated_data_gives_the_same_labels(btc, regimes):
    monthly = label_regimes(btc, trend_window=720, vol_window=100, vol_lookback=5000)
    for cut in (450, 3_000, 21_017, 40_000):
        pd.testing.assert_frame_equal(label_regimes(btc.iloc[:cut]), regimes.iloc[:cut])
        pd.testing.assert_frame_equal(label_regimes(btc.iloc[:cut], trend_window=720, vol_window=100, vol_lookback=5000),
                                      monthly.iloc[:cut])


def test_changing_the_future_does_not_change_past_labels(btc, regimes):
    shocked = btc.copy()
    shocked.iloc[30_000:, :4] *= 3.0  # a tripling from bar 30 000 on
    pd.testing.assert_frame_equal(label_regimes(shocked).iloc[:30_000], regimes.iloc[:30_000])
    assert not label_regimes(shocked).iloc[30_000:].equals(regimes.iloc[30_000:])


def test_labels_are_complete_after_the_warm_up(regimes):
    assert set(regimes["trend"]) == {"up", "down", "sideways", "unknown"}
    assert set(regimes["volatility"]) == {"high", "low", "unknown"}
    assert set(regimes["regime"]) == {f"{t}/{v}" for t in ("up", "down", "sideways") for v in ("high", "low")} | {"unknown"}
    # trend: MA(200) needs 200 closes and its change over 200 bars 200 more -> first at row 399;
    # volatility: std of 200 returns from row 200, the expanding median needs 200 of them -> row 399
    unknown = np.flatnonzero(regimes["regime"].to_numpy() == "unknown")
    np.testing.assert_array_equal(unknown, np.arange(399))
    known = regimes.iloc[399:]
    assert (known["regime"] == known["trend"] + "/" + known["volatility"]).all()


def test_the_2018_bear_market_is_mostly_down_and_late_2020_mostly_up(btc, regimes):
    monthly = label_regimes(btc, trend_window=720)  # a month of hourly bars
    bear = monthly.loc["2018", "trend"].value_counts(normalize=True)
    assert bear["down"] > 0.35 and bear["down"] > 2 * bear.get("up", 0.0), bear
    for labels in (monthly, regimes):
        bull = labels.loc["2020-10-01":"2021-03-31", "trend"].value_counts(normalize=True)
        assert bull["up"] > 0.5 and bull["up"] > 5 * bull.get("down", 0.0), bull


def test_volatility_labels_follow_the_rule(btc):
    lab = label_regimes(btc, trend_window=100, vol_window=50, details=True).iloc[2000:]
    high = lab["vol"] > lab["vol_ref"]
    assert (lab["volatility"] == np.where(high, "high", "low")).all()
    # the reference is the expanding median of the volatility: check one bar by hand
    vol = np.log(btc["close"]).diff().rolling(50).std()
    assert lab["vol_ref"].iloc[1000] == pytest.approx(np.nanmedian(vol.iloc[: 2000 + 1000 + 1]), rel=1e-12)


def _strategy_equity(btc: pd.DataFrame) -> pd.Series:
    """Long when the previous close was above its 50-bar average, flat otherwise (flat bars exist)."""
    close = btc["close"]
    held = (close > close.rolling(50).mean()).shift(1, fill_value=False)
    return 1000.0 * (1.0 + close.pct_change().fillna(0.0).where(held, 0.0)).cumprod()


def test_regime_performance_against_a_plain_loop(btc, regimes):
    equity = _strategy_equity(btc)
    table = regime_performance(equity, regimes, 8760)
    eq, lab = equity.to_list(), regimes.to_dict("list")
    for by in ("regime", "trend", "volatility"):
        returns: dict[str, list[float]] = {}
        for t in range(1, len(eq)):
            returns.setdefault(lab[by][t - 1], []).append(eq[t] / eq[t - 1] - 1.0)  # bar t -> label of bar t-1
        assert set(table.loc[by].index) == set(returns)
        growth_all = 1.0
        for name, rs in returns.items():
            row = table.loc[(by, name)]
            growth, peak, worst = 1.0, 1.0, 0.0
            for x in rs:
                growth *= 1.0 + x
                peak = max(peak, growth)
                worst = min(worst, growth / peak - 1.0)
            growth_all *= growth
            assert row["bars"] == len(rs)
            assert row["share"] == pytest.approx(len(rs) / (len(eq) - 1), rel=1e-12)
            assert row["contribution"] == pytest.approx(growth - 1.0, rel=1e-9, abs=1e-12)
            assert row["ann_return"] == pytest.approx(growth ** (8760 / len(rs)) - 1.0, rel=1e-9, abs=1e-12)
            assert row["max_drawdown"] == pytest.approx(worst, rel=1e-9, abs=1e-12)
            assert row["sharpe"] == pytest.approx(statistics.mean(rs) / statistics.stdev(rs) * math.sqrt(8760), rel=1e-7)
            active = [x for x in rs if x != 0.0]
            assert row["hit_rate"] == pytest.approx(sum(x > 0 for x in active) / len(active), rel=1e-12)
        total = eq[-1] / eq[0]
        assert growth_all == pytest.approx(total, rel=1e-9)
        # the contributions in the table compound to the total return
        assert np.prod(1.0 + table.loc[by, "contribution"].to_numpy()) == pytest.approx(total, rel=1e-9)
        assert table.loc[by, "bars"].sum() == len(eq) - 1
    assert table.loc[("all", "all"), "contribution"] == pytest.approx(eq[-1] / eq[0] - 1.0, rel=1e-9)


def test_a_return_belongs_to_the_label_of_the_bar_before():
    index = pd.date_range("2024-01-01", periods=4, freq="1h", tz="UTC")
    equity = pd.Series([100.0, 110.0, 99.0, 108.9], index=index)  # +10 %, -10 %, +10 %
    labels = pd.Series(["up/low", "down/low", "up/low", "down/low"], index=index)
    table = regime_performance(equity, labels, 8760)
    assert table.loc[("regime", "up/low"), "bars"] == 2  # the returns of bars 1 and 3
    assert table.loc[("regime", "up/low"), "contribution"] == pytest.approx(0.21)
    assert table.loc[("regime", "down/low"), "contribution"] == pytest.approx(-0.10)
    assert table.loc[("regime", "down/low"), "max_drawdown"] == pytest.approx(-0.10)
    with pytest.raises(DataError, match="share no timestamp"):
        regime_performance(equity, labels.set_axis(index + pd.Timedelta("1D")), 8760)


# ---------------------------------------------------------------- neighbourhoods


@pytest.fixture
def grid():
    fast, slow = np.meshgrid(np.arange(5, 50, 5), np.arange(10, 110, 10), indexing="ij")
    trials = pd.DataFrame({"fast": fast.ravel(), "slow": slow.ravel()})
    trials["smooth"] = 2.0 * np.exp(-(((trials["fast"] - 25) / 15) ** 2) - ((trials["slow"] - 50) / 30) ** 2)
    trials["spiky"] = np.random.default_rng(0).normal(0.0, 0.2, len(trials))
    trials.loc[(trials["fast"] == 25) & (trials["slow"] == 50), "spiky"] = 2.0
    return trials


def test_a_smooth_peak_is_more_stable_than_an_isolated_spike(grid):
    smooth = neighbourhood(grid, ["fast", "slow"], "smooth")
    spiky = neighbourhood(grid, ["fast", "slow"], "spiky")
    assert smooth.attrs["optimum"] == spiky.attrs["optimum"] == {"fast": 25, "slow": 50}
    assert smooth.attrs["n_neighbours"] == 8 and len(smooth) == 9
    # by hand: the mean of the 8 cells around (25, 50) over the optimum's value
    around = grid[(grid["fast"].between(20, 30)) & (grid["slow"].between(40, 60))]
    expected = (around["smooth"].sum() - 2.0) / 8 / 2.0
    assert smooth.attrs["stability"] == pytest.approx(expected, rel=1e-12)
    assert smooth.attrs["stability"] > 0.7 > 0.3 > spiky.attrs["stability"]
    drop = list(smooth.attrs["falloff"].values())
    assert drop[0] == 1.0 and all(a > b for a, b in itertools.pairwise(drop))
    assert len(neighbourhood(grid, ["fast", "slow"], "smooth", radius=2)) == 25
    corner = neighbourhood(grid, ["fast", "slow"], "smooth", best={"fast": 5, "slow": 10})
    assert corner.attrs["n_neighbours"] == 3 and set(corner["distance"]) == {0, 1}


def test_stability_of_a_negative_optimum_keeps_one_meaning_as_good(grid):
    grid["loss"] = grid["smooth"] - 3.0  # the optimum is -1, neighbours are worse (more negative)
    table = neighbourhood(grid, ["fast", "slow"], "loss")
    nb = table.loc[table["distance"] == 1, "loss"].mean()
    assert table.attrs["stability"] == pytest.approx(1.0 - (-1.0 - nb) / 1.0)
    assert table.attrs["stability"] < 1.0
    fo = falloff(grid, ["fast", "slow"], "loss")
    assert fo.loc[0, "n"] == 1 and fo["n"].sum() == len(grid)


def test_heatmap_table_is_a_pandas_pivot_and_the_figure_marks_the_optimum(grid):
    table = heatmap_table(grid, "fast", "slow", "smooth")
    pd.testing.assert_frame_equal(table, grid.pivot(index="slow", columns="fast", values="smooth"), check_dtype=False)
    doubled = pd.concat([grid, grid.assign(smooth=grid["smooth"] - 1.0)])  # a second value per cell: max keeps the first
    pd.testing.assert_frame_equal(heatmap_table(doubled, "fast", "slow", "smooth"), table, check_dtype=False)
    fig = neighbourhood_figure(grid, "fast", "slow", "smooth")
    assert [t.type for t in fig.data].count("heatmap") == 1
    marker = [t for t in fig.data if t.type == "scatter"]
    assert len(marker) == 1 and marker[0].x == ("25",) and marker[0].y == ("50",)
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float), table.to_numpy())


def test_bad_neighbourhood_inputs_say_what_is_wrong(grid):
    with pytest.raises(DataError, match="lacks column"):
        neighbourhood(grid, ["fast", "nope"], "smooth")
    with pytest.raises(DataError, match="not one of the values tried"):
        neighbourhood(grid, ["fast", "slow"], "smooth", best={"fast": 7, "slow": 50})


# ---------------------------------------------------------------- deflated Sharpe


def test_deflated_sharpe_hand_computed_case():
    # SR = 0.1 per bar, N = 100 trials whose Sharpes have std 0.03, T = 1000 returns, skew -0.5, kurtosis 5.
    # E[max] = 0.03 * ((1 - 0.5772157) * Φ^-1(0.99) + 0.5772157 * Φ^-1(1 - 1/(100 e)))
    #        = 0.03 * (0.4227843 * 2.3263479 + 0.5772157 * 2.6802104) = 0.0759181
    # denominator = sqrt(1 - (-0.5)(0.1) + (5 - 1)/4 * 0.1²) = sqrt(1.06) = 1.0295630
    # PSR(0)      = Φ(0.1 * sqrt(999) / 1.0295630)             = Φ(3.0699395) = 0.9989295
    # DSR         = Φ((0.1 - 0.0759181) * sqrt(999) / 1.0295630) = Φ(0.7393002) = 0.7701376
    g = 0.5772156649015329
    e_max = 0.03 * ((1 - g) * norm.ppf(0.99) + g * norm.ppf(1 - 1 / (100 * math.e)))
    den = math.sqrt(1.06)
    out = deflated_sharpe(0.1, 100, 0.03, 1000, -0.5, 5.0)
    assert out["expected_max_sharpe"] == pytest.approx(e_max, rel=1e-12) == pytest.approx(0.0759181, abs=1e-7)
    assert out["psr"] == pytest.approx(norm.cdf(0.1 * math.sqrt(999) / den), rel=1e-12)
    assert out["dsr"] == pytest.approx(norm.cdf((0.1 - e_max) * math.sqrt(999) / den), rel=1e-12)
    assert out["dsr"] == pytest.approx(0.7701376, abs=1e-7)


def test_deflated_sharpe_falls_with_more_trials_and_is_psr0_for_one():
    dsr = [deflated_sharpe(0.05, n, 0.02, 2000, 0.0, 4.0)["dsr"] for n in (1, 2, 5, 10, 100, 1000, 10_000)]
    assert all(a > b for a, b in itertools.pairwise(dsr))
    one = deflated_sharpe(0.05, 1, 0.02, 2000, 0.3, 4.0)
    assert one["expected_max_sharpe"] == 0.0
    psr0 = norm.cdf(0.05 * math.sqrt(1999) / math.sqrt(1 - 0.3 * 0.05 + 0.75 * 0.05**2))
    assert one["dsr"] == one["psr"] == pytest.approx(psr0, rel=1e-12)


def test_annualised_inputs_and_arrays_of_trial_sharpes():
    k = math.sqrt(8760)
    per_bar = deflated_sharpe(0.02, 50, 0.006, 8760, 0.1, 6.0)
    yearly = deflated_sharpe(0.02 * k, 50, 0.006 * k, 8760, 0.1, 6.0, annualised=True, bars_per_year=8760)
    for key in ("sharpe", "expected_max_sharpe", "psr", "dsr"):
        assert yearly[key] == pytest.approx(per_bar[key], rel=1e-12)
    assert yearly["sharpe_annualised"] == pytest.approx(0.02 * k)
    trials = np.random.default_rng(3).normal(1.0, 0.7, 40)  # annualised trial Sharpes
    from_array = deflated_sharpe(2.5, None, trials, 8760, annualised=True, bars_per_year=8760)
    assert from_array["n_trials"] == 40
    assert from_array["sharpe_std"] == pytest.approx(np.std(trials, ddof=1) / k, rel=1e-12)
    with pytest.raises(DataError, match="bars_per_year"):
        deflated_sharpe(2.0, 10, 0.5, 1000, annualised=True)
    with pytest.raises(DataError, match="Pearson"):
        deflated_sharpe(1.0, 10, 0.1, 1000, skew=3.0, kurtosis=1.0)


def test_deflated_sharpe_from_returns_uses_the_sample_moments():
    r = pd.Series(np.random.default_rng(7).standard_t(5, 4000) * 0.01 + 0.0008)
    trials = np.random.default_rng(8).normal(0.5, 0.8, 30)
    out = deflated_sharpe_from_returns(r, trials, 8760)
    sr = r.mean() / r.std(ddof=1)
    expected = deflated_sharpe(sr, 30, trials / math.sqrt(8760), 4000, skew(r), kurtosis(r, fisher=False))
    assert out["dsr"] == pytest.approx(expected["dsr"], rel=1e-12)
    assert out["sharpe_annualised"] == pytest.approx(sr * math.sqrt(8760), rel=1e-12)


# ---------------------------------------------------------------- PBO


def _slow_cscv(x: np.ndarray, s: int, metric: str) -> tuple[list[float], list[int], list[float], list[float]]:
    """CSCV as the paper writes it, one combination and one trial at a time."""
    t, n = x.shape
    size, extra = divmod(t, s)  # the first `extra` blocks hold one row more
    bounds = [0]
    for b in range(s):
        bounds.append(bounds[-1] + size + (b < extra))

    def perf(rows: list[int], j: int) -> float:
        col = [float(x[i, j]) for i in rows]
        if metric == "mean":
            return statistics.mean(col)
        if metric == "total_return":
            return math.prod(1 + v for v in col) - 1
        return statistics.mean(col) / statistics.stdev(col)

    logits, best, ins, outs = [], [], [], []
    for combo in itertools.combinations(range(s), s // 2):
        rows_in = [i for b in combo for i in range(bounds[b], bounds[b + 1])]
        rows_out = [i for b in range(s) if b not in combo for i in range(bounds[b], bounds[b + 1])]
        is_perf = [perf(rows_in, j) for j in range(n)]
        oos_perf = [perf(rows_out, j) for j in range(n)]
        star = max(range(n), key=lambda j: (is_perf[j], -j))  # the first of equals
        rank = sum(v < oos_perf[star] for v in oos_perf) + (sum(v == oos_perf[star] for v in oos_perf) + 1) / 2
        w = rank / (n + 1)
        logits.append(math.log(w / (1 - w)))
        best.append(star)
        ins.append(is_perf[star])
        outs.append(oos_perf[star])
    return logits, best, ins, outs


@pytest.mark.parametrize(("t", "s", "metric", "twins"),
                         [(40, 4, "sharpe", False), (42, 4, "sharpe", False), (40, 4, "mean", False),
                          (46, 6, "total_return", False), (40, 4, "sharpe", True), (48, 8, "mean", True)])
def test_pbo_matches_a_plain_python_cscv_loop(t, s, metric, twins):
    x = np.random.default_rng(t + s).normal(0.001, 0.02, (t, 5))
    if twins:  # identical trials: ties in sample (the first wins) and out of sample (the average rank)
        x[:, 3] = x[:, 0]
        x[:, 4] = x[:, 0]
    result = pbo(x, s, metric)
    logits, best, ins, outs = _slow_cscv(x, s, metric)
    assert result.n_combinations == math.comb(s, s // 2) == len(logits)
    np.testing.assert_allclose(result.logits, logits, rtol=1e-12)
    np.testing.assert_array_equal(result.best_trial, best)
    np.testing.assert_allclose(result.is_performance, ins, rtol=1e-9)
    np.testing.assert_allclose(result.oos_performance, outs, rtol=1e-9)
    assert result.pbo == pytest.approx(np.mean(np.array(logits) <= 0))
    assert result.prob_oos_loss == pytest.approx(np.mean(np.array(outs) < 0))


def test_a_callable_metric_gives_the_same_as_the_named_one():
    x = np.random.default_rng(1).normal(0.0, 0.01, (64, 6))
    by_name = pbo(x, 8, "mean")
    by_function = pbo(x, 8, lambda rows: rows.mean(axis=0))
    np.testing.assert_allclose(by_function.logits, by_name.logits)
    np.testing.assert_array_equal(by_function.best_trial, by_name.best_trial)


def test_pbo_of_pure_noise_is_near_one_half():
    # For iid noise the in-sample and out-of-sample halves use disjoint iid rows, so the OOS rank of the
    # in-sample winner is uniform on 1..N: with N even, P(logit <= 0) = P(rank <= N/2) = 1/2 exactly for
    # every combination. One data set's PBO still varies a lot (its 70 combinations share the data;
    # measured std about 0.23 per seed), so average 200 seeds: standard error about 0.016, and
    # the tolerance 0.07 is over 4 standard errors.
    values = [pbo(np.random.default_rng(seed).normal(0.0, 0.01, (400, 10)), 8).pbo for seed in range(200)]
    assert abs(np.mean(values) - 0.5) < 0.07
    assert np.std(values) > 0.1  # the per-seed spread that the averaging is for


def test_pbo_of_a_genuine_edge_among_noise_is_near_zero():
    x = np.random.default_rng(11).normal(0.0, 0.01, (1600, 12))
    x[:, 4] += 0.004  # a trial with an edge in every block (0.4 std per bar)
    frame = pd.DataFrame(x, columns=[f"trial{j}" for j in range(12)])
    result = pbo(frame, 16)
    assert result.n_combinations == 12_870
    assert result.pbo < 0.02 and result.prob_oos_loss < 0.02
    assert np.mean(result.best_trial == 4) > 0.98
    assert result.table()["trial"].value_counts().index[0] == "trial4"


def test_pbo_random_subset_of_combinations_is_seeded():
    x = np.random.default_rng(2).normal(0.0, 0.01, (320, 6))
    a, b = pbo(x, 16, max_combinations=300, seed=5), pbo(x, 16, max_combinations=300, seed=5)
    assert a.n_combinations == 300 and a.n_combinations_total == 12_870
    np.testing.assert_array_equal(a.in_sample, b.in_sample)
    np.testing.assert_array_equal(a.logits, b.logits)
    assert len({tuple(c) for c in a.in_sample}) == 300
    full = pbo(x, 16)
    lookup = {tuple(c): v for c, v in zip(full.in_sample.tolist(), full.logits, strict=True)}
    np.testing.assert_allclose(a.logits, [lookup[tuple(c)] for c in a.in_sample.tolist()])


def test_pbo_inputs_and_figures():
    x = np.random.default_rng(4).normal(0.0, 0.01, (200, 4))
    x[:, 2] = 0.0  # a trial that never trades: Sharpe 0, no crash
    result = pbo(x, 8)
    assert np.isfinite(result.logits).all()
    assert pbo_figure(result).data[0].type == "histogram"
    assert len(pbo_figure(result, "degradation").data) == 2
    with pytest.raises(DataError, match="even"):
        pbo(x, 7)
    with pytest.raises(DataError, match="NaN"):
        pbo(np.where(x == 0.0, np.nan, x), 8)

"""Tests for qlab.data.quality: real files against the independently counted gaps in SOURCES.md,
tiny hand-made frames for the exact cases."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qlab.data.candles import read_csv, resample_candles
from qlab.data.quality import QualityReport, gap_table, quality_report
from qlab.errors import DataError, NotFoundError

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
T = pd.Timestamp


def utc(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


def load(name: str, timeframe: str) -> pd.DataFrame:
    return read_csv(DATA / name, timeframe)


def build(close, volume=None, *, start="2024-01-01", freq="5min", flat=()) -> pd.DataFrame:
    """Candles around a close path: open = previous close, small deterministic wicks."""
    close = np.asarray(close, dtype=float)
    n = len(close)
    volume = 1000.0 * np.ones(n) if volume is None else np.asarray(volume, dtype=float)
    open_ = np.concatenate([[close[0]], close[:-1]])
    wick = 1.0001 + 0.0005 * np.abs(np.sin(np.arange(n)))
    high, low = np.maximum(open_, close) * wick, np.minimum(open_, close) / wick
    for i in flat:
        high[i] = low[i] = open_[i] = close[i]
    index = pd.date_range(start, periods=n, freq=freq, tz="UTC", name="timestamp")
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=index)


def paths(n=400, seed=1):
    """Log returns ~ N(0, 0.1 %) and volumes ~ 1000 * lognormal(0.1): nothing near 8 robust sigmas."""
    rng = np.random.default_rng(seed)
    return rng.normal(0, 0.001, n), 1000.0 * np.exp(rng.normal(0, 0.1, n))


def from_returns(ret, volume, **kw):
    return build(100.0 * np.exp(np.cumsum(ret)), volume, **kw)


@pytest.fixture
def clean():
    return from_returns(*paths())


# ---------------------------------------------------------------- real data, counts from SOURCES.md

def test_shared_data_is_there():
    assert (DATA / "SOURCES.md").is_file(), f"expected the shared data at {DATA}"


def test_adabtc_gaps_match_sources():
    r = quality_report(load("adabtc_5m.csv", "5m"), "5m")
    expected = [("2018-01-15 10:10", "2018-01-15 10:10", 1), ("2018-01-15 10:30", "2018-01-15 10:30", 1),
                ("2018-01-15 11:10", "2018-01-15 11:25", 4), ("2018-01-15 11:45", "2018-01-15 11:45", 1),
                ("2018-01-15 12:00", "2018-01-15 14:40", 33)]
    got = [(s, e, int(m)) for s, e, m in r.gaps.itertuples(index=False)]
    assert got == [(utc(s), utc(e), m) for s, e, m in expected]
    assert r.gaps["missing_bars"].sum() == 40
    assert r.completeness == pytest.approx(100 * 5720 / 5760)
    assert r.rows == r.bars == 5720
    assert r.ohlc_violations.empty and r.duplicates.empty


def test_trxbtc_six_single_missing_bars():
    r = quality_report(load("trxbtc_5m.csv", "5m"), "5m")
    times = ["2018-01-22 17:20", "2018-01-25 18:35", "2018-01-26 16:45",
             "2018-01-26 19:20", "2018-01-28 16:40", "2018-01-28 21:45"]
    assert list(r.gaps["start"]) == [utc(t) for t in times]
    assert list(r.gaps["end"]) == [utc(t) for t in times]
    assert (r.gaps["missing_bars"] == 1).all()


def test_btcusdt_binance_1h_gaps_match_sources():
    r = quality_report(load("btcusdt_binance_1h.csv", "1h"), "1h")
    g = r.gaps
    assert g["missing_bars"].sum() == 128 and len(g) == 28
    longest = g.loc[g["missing_bars"].idxmax()]
    assert (longest["start"], longest["end"], longest["missing_bars"]) == (utc("2018-02-08 01:00"), utc("2018-02-09 09:00"), 33)
    tens = g[g["missing_bars"] == 10]
    assert list(tens["start"]) == [utc("2018-06-26 02:00"), utc("2019-05-15 03:00")]
    assert list(tens["end"]) == [utc("2018-06-26 11:00"), utc("2019-05-15 12:00")]
    eight = g[g["missing_bars"] == 8]
    assert list(zip(eight["start"], eight["end"], strict=True)) == [(utc("2019-08-15 02:00"), utc("2019-08-15 09:00"))]
    assert (g.loc[~g["missing_bars"].isin([33, 10, 8]), "missing_bars"] <= 7).all()
    late = g[g["start"] >= utc("2021-09-30")]  # "the only gap after 2021-09-29"
    assert list(late["start"]) == [utc("2023-03-24 13:00")] and list(late["missing_bars"]) == [1]
    assert r.completeness == pytest.approx(100 * 58419 / (58419 + 128))
    # SOURCES.md: 4 flat zero-volume bars, each on its own day, so no run of 3
    assert (r.anomalies["kind"] == "zero_volume_run").sum() == 0


def test_btcusdt_binance_1m_and_eth_1h_gaps():
    g = gap_table(load("btcusdt_binance_1m.csv", "1m").index, "1m")
    assert [tuple(row) for row in g.itertuples(index=False)] == [
        (utc("2021-04-20 02:00"), utc("2021-04-20 04:29"), 150), (utc("2021-04-25 04:01"), utc("2021-04-25 08:44"), 284)]
    r = quality_report(load("ethusdt_binance_1h.csv", "1h"), "1h")
    assert r.gaps["missing_bars"].sum() == 127 and len(r.gaps) == 27


def test_btcusdt_5m_is_complete():
    r = quality_report(load("btcusdt_5m.csv", "5m"), "5m")
    assert r.gaps.empty and r.completeness == 100.0
    assert r.components["completeness"] == 100.0 and r.components["validity"] == 100.0


def test_mark_price_file_with_empty_volume_is_described_not_raised():
    raw = pd.read_csv(DATA / "xrpusdt_mark_1h.csv")
    index = pd.DatetimeIndex(pd.to_datetime(raw["timestamp"], utc=True), name="timestamp")
    frame = raw.drop(columns="timestamp").set_index(index)
    r = quality_report(frame, "1h")
    v = r.ohlc_violations
    assert len(v) == 100 and set(v["problem"]) == {"NaN volume"}
    assert r.components["validity"] < 1 and r.score < 100


def test_resampled_5m_agrees_with_the_1h_file():
    hourly = resample_candles(load("btcusdt_5m.csv", "5m"), "1h", complete_only=True)
    r = quality_report(load("btcusdt_1h.csv", "1h"), "1h", reference=hourly)
    a = r.accuracy
    assert a["common_bars"] == 916 and a["only_here"] == 0 and a["only_in_reference"] == 0
    assert a["disagreements"].empty and a["max_close_bps"] == 0 and a["mean_close_bps"] == 0
    assert r.components["accuracy"] == 100.0


def test_fast_on_60k_rows():
    c = load("btcusdt_binance_1h.csv", "1h")
    quality_report(c.iloc[:2000], "1h")  # warm up
    t = time.perf_counter()
    quality_report(c, "1h")
    assert time.perf_counter() - t < 2.0


# ---------------------------------------------------------------- hand-made frames

def test_clean_frame_scores_full_marks(clean):
    r = quality_report(clean, "5m")
    assert r.gaps.empty and r.duplicates.empty and r.ohlc_violations.empty and r.anomalies.empty
    assert r.completeness == 100.0
    assert r.components == {"completeness": 100.0, "validity": 100.0, "anomalies": 100.0}
    assert r.score == 100.0
    assert r.accuracy is None and r.timeliness["lag_bars"] is None


def test_duplicates_unsorted_and_broken_rows_are_reported(clean):
    df = clean.copy()
    df.iloc[50, df.columns.get_loc("high")] = df["low"].iloc[50] * 0.99  # high < low
    df.iloc[60, df.columns.get_loc("close")] = np.nan
    df.iloc[70, df.columns.get_loc("volume")] = -1.0
    changed = df.iloc[[20]].copy()
    changed["volume"] *= 2
    raw = pd.concat([df, df.iloc[[10]], changed]).sample(frac=1.0, random_state=3)  # shuffled
    r = quality_report(raw, "5m")
    ts = clean.index
    d = r.duplicates.sort_values("timestamp").reset_index(drop=True)
    assert list(d["timestamp"]) == [ts[10], ts[20]]
    assert list(d["count"]) == [2, 2] and list(d["identical"]) == [True, False]
    v = r.ohlc_violations
    assert set(v["timestamp"]) == {ts[50], ts[60], ts[70]}
    assert "high < low" in set(v.loc[v["timestamp"] == ts[50], "problem"])
    assert set(v.loc[v["timestamp"] == ts[60], "problem"]) == {"NaN price"}
    assert set(v.loc[v["timestamp"] == ts[70], "problem"]) == {"negative volume"}
    assert r.rows == 402 and r.bars == 400 and r.gaps.empty
    assert r.components["validity"] < 100 and r.components["completeness"] == 100.0


def test_planted_spike_that_reverts():
    ret, vol = paths()
    ret[200], ret[201] = 0.05, -0.05
    r = quality_report(from_returns(ret, vol), "5m")
    a = r.anomalies
    assert list(a["kind"]) == ["spike_reversal"]
    assert a["timestamp"].iloc[0] == pd.date_range("2024-01-01", periods=400, freq="5min", tz="UTC")[200]
    assert a["score"].iloc[0] > 8


def test_one_way_jump_is_a_return_outlier_not_a_spike():
    ret, vol = paths()
    ret[200] = -0.05
    a = quality_report(from_returns(ret, vol), "5m").anomalies
    assert list(a["kind"]) == ["return_outlier"] and a["score"].iloc[0] < -8


def test_zero_volume_run_of_four():
    ret, vol = paths()
    vol[100:104] = 0.0
    df = from_returns(ret, vol)
    a = quality_report(df, "5m").anomalies
    assert list(a["kind"]) == ["zero_volume_run"]
    assert a["timestamp"].iloc[0] == df.index[100] and a["value"].iloc[0] == 4


def test_short_zero_volume_run_is_not_flagged():
    ret, vol = paths()
    vol[100:102] = 0.0
    assert quality_report(from_returns(ret, vol), "5m").anomalies.empty


def test_stale_run_of_six():
    ret, vol = paths()
    ret[300:306] = 0.0
    df = from_returns(ret, vol, flat=range(300, 306))
    assert (df.iloc[300:306][["open", "high", "low", "close"]].to_numpy() == df["close"].iloc[299]).all()
    a = quality_report(df, "5m").anomalies
    assert list(a["kind"]) == ["stale_price"]
    assert a["timestamp"].iloc[0] == df.index[300] and a["value"].iloc[0] == 6


def test_volume_burst():
    ret, vol = paths()
    vol[250] *= 10
    df = from_returns(ret, vol)
    a = quality_report(df, "5m").anomalies
    assert list(a["kind"]) == ["volume_outlier"] and a["timestamp"].iloc[0] == df.index[250]


def test_timeliness_with_now():
    df = build(np.linspace(100, 101, 10), freq="1h")  # last bar opens 2024-01-01 09:00
    r = quality_report(df, "1h", now="2024-01-01T12:30:00Z")
    assert r.timeliness == {"last_bar": utc("2024-01-01 09:00"), "expected_last_bar": utc("2024-01-01 11:00"), "lag_bars": 2}
    assert 0 < r.components["timeliness"] < 100
    fresh = quality_report(df, "1h", now=pd.Timestamp("2024-01-01 10:59:59", tz="UTC"))
    assert fresh.timeliness["lag_bars"] == 0 and fresh.components["timeliness"] == 100.0
    assert r.score < fresh.score
    assert "timeliness" not in quality_report(df, "1h").components


def test_accuracy_flags_exactly_the_moved_closes(clean):
    ref = clean.copy()
    moved = [30, 150, 333]
    ref.iloc[moved, ref.columns.get_loc("close")] *= 1.01
    r = quality_report(clean, "5m", reference=ref)
    a = r.accuracy
    assert list(a["disagreements"]["timestamp"]) == list(clean.index[moved])
    assert a["common_bars"] == 400
    assert a["max_close_bps"] == pytest.approx(1e4 * 0.01 / 1.01)  # deviation relative to the reference
    assert a["mean_close_bps"] == pytest.approx(3 * 1e4 * 0.01 / 1.01 / 400, rel=1e-6)
    assert r.components["accuracy"] < 100
    assert quality_report(clean, "5m", reference=ref, deviation_tolerance_bps=150).accuracy["disagreements"].empty


def test_removing_bars_lowers_the_score(clean):
    full = quality_report(clean, "5m").score
    fewer = quality_report(clean.drop(clean.index[100:105]), "5m").score
    fewest = quality_report(clean.drop(clean.index[100:130]), "5m").score
    assert full > fewer > fewest


def test_more_violations_and_anomalies_never_raise_the_score():
    ret, vol = paths()
    scores = []
    for k in range(4):
        r2 = ret.copy()
        for j in range(k):
            r2[120 + 60 * j], r2[121 + 60 * j] = 0.05, -0.05
        df = from_returns(r2, vol)
        df.iloc[:k, df.columns.get_loc("volume")] = -1.0
        scores.append(quality_report(df, "5m").score)
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]


def test_gap_table_on_raw_index():
    idx = pd.date_range("2024-01-01", periods=20, freq="1h", tz="UTC").delete([3, 4, 10])
    shuffled = idx.append(idx[:5])[::-1]
    g = gap_table(shuffled, "1h")
    assert list(g["start"]) == [utc("2024-01-01 03:00"), utc("2024-01-01 10:00")]
    assert list(g["end"]) == [utc("2024-01-01 04:00"), utc("2024-01-01 10:00")]
    assert list(g["missing_bars"]) == [2, 1]
    assert gap_table(pd.date_range("2024-01-01", periods=5, freq="1h", tz="UTC"), "1h").empty


def test_figure_shades_each_gap_and_marks_anomalies():
    ret, vol = paths()
    ret[200], ret[201] = 0.05, -0.05
    df = from_returns(ret, vol)
    df = df.drop(df.index[[50, 51, 52, 300]])
    r = quality_report(df, "5m")
    fig = r.figure()
    assert len(fig.layout.shapes) == 2
    marks = [t for t in fig.data if t.name == "anomalies"]
    assert len(marks) == 1 and len(marks[0].x) == 1
    assert len(quality_report(df, "5m").figure(df).layout.shapes) == 2


def test_table_summary_and_html(clean):
    r = quality_report(clean.drop(clean.index[10:12]), "5m", now="2024-01-02")
    assert isinstance(r, QualityReport)
    t = r.table()
    assert list(t.columns) == ["name", "value", "detail"]
    assert t.set_index("name").loc["missing_bars", "value"] == 2
    s = r.summary()
    assert json.loads(json.dumps(s)) == s
    assert s["missing_bars"] == 2 and s["gap_runs"] == 1 and s["timeliness"]["lag_bars"] is not None
    assert "<table" in r._repr_html_()


# ---------------------------------------------------------------- unusable input

def test_missing_column_is_named(clean):
    with pytest.raises(DataError, match="'volume'"):
        quality_report(clean.drop(columns="volume"), "5m")


def test_unknown_timeframe():
    with pytest.raises(NotFoundError, match="did you mean"):
        quality_report(build([1.0, 2.0]), "5min")


@pytest.mark.parametrize("bad", [
    [1, 2, 3],
    pd.DataFrame({c: [1.0] for c in ("open", "high", "low", "close", "volume")}),
    build([1.0]).iloc[:0],
    build([1.0, 2.0]).tz_localize(None),
])
def test_unusable_input_raises_data_error(bad):
    with pytest.raises(DataError):
        quality_report(bad, "5m")


def test_return_outlier_uses_only_past_bars():
    ret, vol = paths()
    ret[200] = -0.05
    df = from_returns(ret, vol)
    full = quality_report(df, "5m").anomalies
    cut = quality_report(df.iloc[:201], "5m").anomalies  # the jump is the last bar
    assert list(cut["kind"]) == ["return_outlier"]
    assert cut["score"].iloc[0] == pytest.approx(full["score"].iloc[0], rel=1e-12)


def test_mad_zero_windows_fall_back_and_stay_finite():
    rng = np.random.default_rng(7)
    ticks = rng.choice([-1, 0, 0, 0, 1], size=400) * 0.0005  # mostly unchanged closes: MAD is 0
    ticks[300] = 0.05
    with np.errstate(all="raise"):
        a = quality_report(from_returns(ticks, paths()[1]), "5m").anomalies
    assert np.isfinite(a["score"]).all()
    bar_300 = pd.date_range("2024-01-01", periods=400, freq="5min", tz="UTC")[300]
    assert list(a.loc[a["kind"] == "return_outlier", "timestamp"]) == [bar_300]


def test_return_z_score_matches_a_slow_past_window_oracle():
    ret, vol = paths()
    ret[250] = 0.012  # about 12 sigma: well past the threshold, but not so far that the window details do not matter
    df = from_returns(ret, vol)
    a = quality_report(df, "5m", window=50).anomalies
    r = np.diff(np.log(df["close"].to_numpy()))  # r[i - 1] is the return into bar i
    past = r[249 - 50:249]  # the 50 returns before bar 250's
    med = np.median(past)
    mad = np.median(np.abs(past - med))
    assert list(a["timestamp"]) == [df.index[250]]
    assert a["score"].iloc[0] == pytest.approx((r[249] - med) / (1.4826 * mad), rel=1e-9)


def test_run_lengths_at_the_threshold():
    ret, vol = paths()
    vol[100:103] = 0.0  # 3 zero-volume bars: the minimum run
    ret[300:305] = 0.0  # 5 stale bars: the minimum run
    a = quality_report(from_returns(ret, vol, flat=range(300, 305)), "5m").anomalies
    assert sorted(zip(a["kind"], a["value"], strict=True)) == [("stale_price", 5.0), ("zero_volume_run", 3.0)]
    ret[304] = 0.001  # 4 stale bars, then a flat bar at a new price: no run
    b = quality_report(from_returns(ret, vol, flat=range(300, 305)), "5m").anomalies
    assert list(b["kind"]) == ["zero_volume_run"]


def test_flat_bars_that_move_are_not_stale():
    ret, vol = paths()
    ret[300:306] = 0.002  # each bar o=h=l=c, but a new price every bar
    df = from_returns(ret, vol, flat=range(300, 306))
    df.iloc[300:306, df.columns.get_loc("open")] = df["close"].iloc[300:306]
    assert quality_report(df, "5m").anomalies.empty


def test_a_gap_is_not_a_price_jump():
    ret, vol = paths()
    ret[100:150] = 0.0006  # a steady 3 % climb (about 30 one-bar sigmas) hidden by a gap of 49 bars
    df = from_returns(ret, vol).drop(pd.date_range("2024-01-01", periods=400, freq="5min", tz="UTC")[100:149])
    r = quality_report(df, "5m")
    assert r.gaps["missing_bars"].tolist() == [49]
    assert r.anomalies.empty

"""Candles parsing and validation: every bad input gets a DataError naming the column, row and fix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qlab.data.candles import (
    OHLCV,
    infer_timeframe,
    read_csv,
    resample_candles,
    timeframe_delta,
    to_candles,
    validate_candles,
)
from qlab.errors import DataError, NotFoundError


def _frame(n: int = 6, step: str = "1h") -> pd.DataFrame:
    ts = pd.date_range("2024-01-01", periods=n, freq=step, tz="UTC")
    close = 100 + np.arange(n, dtype=float)
    return pd.DataFrame(
        {"timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "open": close - 0.5, "high": close + 1,
         "low": close - 1, "close": close, "volume": np.full(n, 10.0)}
    )


def test_to_candles_builds_the_documented_shape():
    c = to_candles(_frame(), "1h")
    assert list(c.columns) == list(OHLCV)
    assert c.index.name == "timestamp" and str(c.index.tz) == "UTC"
    assert all(c[col].dtype == np.float64 for col in OHLCV)
    assert c.index[0] == pd.Timestamp("2024-01-01T00:00Z")


def test_epoch_milliseconds_are_accepted():
    raw = _frame()
    raw["timestamp"] = (pd.to_datetime(raw["timestamp"]) - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta("1ms")
    assert to_candles(raw, "1h").index[1] == pd.Timestamp("2024-01-01T01:00Z")


def test_missing_column_is_named():
    with pytest.raises(DataError, match="'volume'"):
        to_candles(_frame().drop(columns="volume"))


def test_unparseable_timestamp_names_the_row():
    raw = _frame()
    raw.loc[3, "timestamp"] = "yesterday-ish"
    with pytest.raises(DataError, match=r"row 4 .*'yesterday-ish'.*ISO-8601"):
        to_candles(raw)


def test_unsorted_timestamps_name_the_first_row_out_of_order():
    raw = _frame()
    raw = raw.iloc[[0, 1, 3, 2, 4, 5]].reset_index(drop=True)
    with pytest.raises(DataError, match=r"not sorted at row 4 \(2024-01-01 02:00 UTC\)"):
        to_candles(raw)


def test_duplicate_timestamp_is_rejected_and_drop_invalid_keeps_the_last():
    raw = pd.concat([_frame(), _frame().iloc[[2]].assign(close=102.5)], ignore_index=True)
    with pytest.raises(DataError, match=r"not sorted|duplicate"):
        to_candles(raw)
    cleaned = to_candles(raw, "1h", drop_invalid=True)
    assert len(cleaned) == 6 and cleaned.attrs["dropped_rows"] == 1
    assert cleaned.close.iloc[2] == 102.5


@pytest.mark.parametrize(
    ("column", "value", "pattern"),
    [
        ("close", np.nan, r"open/high/low/close.*NaN at row 3"),
        ("high", 95.0, r"'high'.*row 3"),
        ("low", 101.8, r"'low'.*101.8 is above.*row 3"),
        ("volume", -1.0, r"'volume'.*-1.0.*row 3"),
        ("open", 0.0, r"zero or negative.*row 3"),
    ],
)
def test_bad_values_name_column_row_and_fix(column, value, pattern):
    raw = _frame()
    raw.loc[2, column] = value
    with pytest.raises(DataError, match=pattern) as info:
        to_candles(raw, "1h")
    assert "drop_invalid" in str(info.value)
    assert len(to_candles(raw, "1h", drop_invalid=True)) == 5


def test_high_below_low_is_reported_as_such():
    raw = _frame()
    raw.loc[1, ["open", "high", "low", "close"]] = [100.0, 99.0, 101.0, 100.0]
    with pytest.raises(DataError, match="high < low"):
        to_candles(raw)


def test_text_in_a_price_column_is_named():
    raw = _frame().astype({"open": object})
    raw.loc[4, "open"] = "n/a"
    with pytest.raises(DataError, match=r"'open' is not a number at row 5.*'n/a'"):
        to_candles(raw)


def test_timeframe_that_does_not_match_the_spacing_suggests_the_right_one():
    with pytest.raises(DataError, match=r"timeframe '5m' does not match.*did you mean timeframe='1h'"):
        to_candles(_frame(), "5m")
    raw = _frame(step="5min")
    raw.loc[3:, "timestamp"] = (pd.to_datetime(raw.loc[3:, "timestamp"]) + pd.Timedelta("1min")).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    with pytest.raises(DataError, match=r"does not match the spacing at row 4.*0 days 00:06:00"):
        to_candles(raw, "5m")


def test_gaps_of_whole_bars_are_valid_spacing():
    raw = _frame(10).drop(index=[3, 4, 7]).reset_index(drop=True)
    assert len(to_candles(raw, "1h")) == 7


def test_unknown_timeframe_suggests_a_name():
    with pytest.raises(NotFoundError, match="did you mean '1h'"):
        timeframe_delta("1hr")


def test_validate_rejects_naive_index_and_non_float():
    c = to_candles(_frame())
    with pytest.raises(DataError, match="UTC DatetimeIndex"):
        validate_candles(c.tz_localize(None))
    with pytest.raises(DataError, match=r"'volume'.*int64"):
        validate_candles(c.astype({"volume": "int64"}))
    with pytest.raises(DataError, match="empty"):
        validate_candles(c.iloc[:0])


def test_read_csv_reports_the_file_name(tmp_path):
    path = tmp_path / "broken.csv"
    raw = _frame()
    raw.loc[5, "volume"] = -3
    raw.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"row 6 .* of broken.csv"):
        read_csv(path, "1h")
    with pytest.raises(NotFoundError, match="no such file"):
        read_csv(tmp_path / "nope.csv")


def test_infer_timeframe():
    assert infer_timeframe(to_candles(_frame(step="5min")).index) == "5m"


def test_resample_matches_the_independently_derived_hourly_file(shared_data):
    """../shared/data/btcusdt_1h.csv was derived from the 5m file outside qlab (complete hours only)."""
    five = read_csv(shared_data / "btcusdt_5m.csv", "5m")
    hourly = read_csv(shared_data / "btcusdt_1h.csv", "1h")
    ours = resample_candles(five, "1h", complete_only=True)
    pd.testing.assert_frame_equal(ours, hourly, check_freq=False, rtol=0, atol=1e-9)


def test_resample_to_8h_matches_the_exchange_bars_where_they_overlap(shared_data):
    """SOURCES.md: the 11 overlapping 8h bars equal the 5m file's 8h resample exactly, volume included."""
    five = read_csv(shared_data / "xrpusdt_perp_5m.csv", "5m")
    eight = read_csv(shared_data / "xrpusdt_perp_8h.csv", "8h")
    ours = resample_candles(five, "8h", complete_only=True)
    shared = ours.index.intersection(eight.index)
    assert len(shared) == 11
    pd.testing.assert_frame_equal(ours.loc[shared], eight.loc[shared], check_freq=False, rtol=1e-12)


def test_resample_partial_buckets_are_dropped_only_when_asked():
    c = to_candles(_frame(10, "5min").iloc[1:].reset_index(drop=True))  # 09 bars: 00:05 .. 00:45
    assert resample_candles(c, "1h").index.size == 1
    assert resample_candles(c, "1h", complete_only=True, source_timeframe="5m").empty
    bucket = resample_candles(c, "1h").iloc[0]
    assert bucket.open == c.open.iloc[0] and bucket.close == c.close.iloc[-1]
    assert bucket.high == c.high.max() and bucket.low == c.low.min() and bucket.volume == c.volume.sum()


def test_validate_accepts_any_index_resolution():
    c = to_candles(_frame(step="5min"))
    c.index = c.index.as_unit("us")
    assert validate_candles(c, "5m") is c
    with pytest.raises(DataError, match="did you mean timeframe='5m'"):
        validate_candles(c, "1m")

"""The DuckDB store: round trips on real data, upserts, transactions, schema versions, Parquet export."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from qlab.data.candles import read_csv
from qlab.data.sample import load_into_store, load_sample
from qlab.data.store import SCHEMA_VERSION, Store
from qlab.errors import DataError, NotFoundError, SchemaVersionError


@pytest.fixture(scope="module")
def btc5m():
    return load_sample("BTC/USDT:USDT", "5m")


def test_round_trip_is_exact(store, btc5m):
    assert store.write_candles(btc5m, "binance", "BTC/USDT:USDT", "5m") == len(btc5m)
    back = store.candles("binance", "BTC/USDT:USDT", "5m")
    pd.testing.assert_frame_equal(back, btc5m, check_freq=False)


def test_start_end_bounds_are_half_open_utc(store, btc5m):
    store.write_candles(btc5m, "binance", "BTC/USDT:USDT", "5m")
    got = store.candles("binance", "BTC/USDT:USDT", "5m", "2023-01-10", "2023-01-11T00:00:00+01:00")
    want = btc5m[(btc5m.index >= "2023-01-10") & (btc5m.index < pd.Timestamp("2023-01-10T23:00Z"))]
    pd.testing.assert_frame_equal(got, want, check_freq=False)


def test_upsert_replaces_overlap_and_keeps_one_row_per_bar(store, btc5m):
    store.write_candles(btc5m.iloc[:600], "binance", "BTC/USDT:USDT", "5m")
    changed = btc5m.iloc[500:1000].copy()
    changed["volume"] = changed["volume"] + 1.0
    store.write_candles(changed, "binance", "BTC/USDT:USDT", "5m")
    back = store.candles("binance", "BTC/USDT:USDT", "5m")
    assert len(back) == 1000 and back.index.is_unique
    np.testing.assert_array_equal(back.volume.iloc[500:].to_numpy(), changed.volume.to_numpy())
    np.testing.assert_array_equal(back.volume.iloc[:500].to_numpy(), btc5m.volume.iloc[:500].to_numpy())


def test_series_are_kept_apart(store, btc5m):
    store.write_candles(btc5m, "binance", "BTC/USDT:USDT", "5m")
    store.write_candles(btc5m.iloc[:10], "bybit", "BTC/USDT:USDT", "5m")
    listing = store.symbols()
    assert list(listing.exchange) == ["binance", "bybit"]
    row = listing.iloc[0]
    assert row.rows == len(btc5m) and row["first"] == btc5m.index[0] and row["last"] == btc5m.index[-1]
    assert len(store.candles("bybit", "BTC/USDT:USDT", "5m")) == 10


def test_failed_write_halfway_leaves_the_store_as_it_was(store, btc5m, monkeypatch):
    store.write_candles(btc5m.iloc[:100], "binance", "BTC/USDT:USDT", "5m")
    before = store.candles("binance", "BTC/USDT:USDT", "5m")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")  # after the DELETE of the overlapping keys, before the INSERT

    monkeypatch.setattr(Store, "_insert_stage", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        store.write_candles(btc5m.iloc[50:300], "binance", "BTC/USDT:USDT", "5m")
    pd.testing.assert_frame_equal(store.candles("binance", "BTC/USDT:USDT", "5m"), before, check_freq=False)


def test_failed_sample_load_halfway_writes_nothing(store, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("funding feed broke")

    monkeypatch.setattr(Store, "write_funding", boom)  # the funding file comes after several candle files
    with pytest.raises(RuntimeError):
        load_into_store(store)
    assert store.symbols().empty


def test_invalid_candles_are_rejected_before_writing(store, btc5m):
    bad = btc5m.iloc[:20].copy()
    bad.iloc[7, bad.columns.get_loc("low")] = bad.high.iloc[7] + 1
    with pytest.raises(DataError, match="row 8"):
        store.write_candles(bad, "binance", "BTC/USDT:USDT", "5m")
    with pytest.raises(DataError, match="timeframe '1h'"):
        store.write_candles(btc5m, "binance", "BTC/USDT:USDT", "1h")
    with pytest.raises(DataError, match="exchange=''"):
        store.write_candles(btc5m, "", "BTC/USDT:USDT", "5m")
    assert store.symbols().empty


def test_missing_series_lists_what_is_stored(store, btc5m):
    store.write_candles(btc5m, "binance", "BTC/USDT:USDT", "5m")
    with pytest.raises(NotFoundError, match=r"stored: binance BTC/USDT:USDT 5m.*did you mean"):
        store.candles("binance", "BTC/USDT", "5m")
    with pytest.raises(NotFoundError, match="the store has 2023-01-02"):
        store.candles("binance", "BTC/USDT:USDT", "5m", start="2030-01-01")


def test_newer_schema_version_fails_clearly(tmp_path):
    path = tmp_path / "future.duckdb"
    with Store(path) as s:
        assert s.schema_version == SCHEMA_VERSION
        s._con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(SchemaVersionError, match="schema version 99, newer than 2"):
        Store(path)


def test_reopening_keeps_data(tmp_path, btc5m):
    path = tmp_path / "s.duckdb"
    with Store(path) as s:
        s.write_candles(btc5m, "binance", "BTC/USDT:USDT", "5m")
    with Store(path, read_only=True) as s:
        assert len(s.candles("binance", "BTC/USDT:USDT", "5m")) == len(btc5m)


def test_store_resample_equals_the_independent_hourly_file(store, btc5m, shared_data):
    store.write_candles(btc5m, "binance", "BTC/USDT:USDT", "5m")
    hourly = store.resample("binance", "BTC/USDT:USDT", "5m", "1h", write=True)
    pd.testing.assert_frame_equal(hourly, read_csv(shared_data / "btcusdt_1h.csv", "1h"), check_freq=False)
    assert len(store.candles("binance", "BTC/USDT:USDT", "1h")) == len(hourly)
    with pytest.raises(DataError, match="higher timeframe"):
        store.resample("binance", "BTC/USDT:USDT", "5m", "1m")


def test_funding_round_trip_keeps_milliseconds(store, shared_data):
    raw = pd.read_csv(shared_data / "xrpusdt_funding_8h.csv")
    assert store.write_funding(raw, "binance", "XRP/USDT:USDT") == 91
    got = store.funding("binance", "XRP/USDT:USDT")
    assert len(got) == 91 and got.index[0] == pd.Timestamp("2021-11-18T00:00:00.017Z")
    assert got.min() == pytest.approx(-0.00219334) and got.idxmin() == pd.Timestamp("2021-12-04T08:00:00.004Z")
    store.write_funding(raw, "binance", "XRP/USDT:USDT")  # idempotent
    assert len(store.funding("binance", "XRP/USDT:USDT")) == 91
    with pytest.raises(NotFoundError, match="did you mean"):
        store.funding("binance", "XRP/USDT")
    with pytest.raises(DataError, match="row 3"):
        store.write_funding(raw.assign(funding_rate=raw.funding_rate.where(raw.index != 2)), "binance", "X/USDT:USDT")


def test_fee_schedule_prefers_the_symbol_row_and_respects_valid_from(store):
    store.write_fee("bybit", 0.0002, 0.00055)
    store.write_fee("bybit", 0.0001, 0.0004, symbol="BTC/USDT:USDT", valid_from="2024-06-01")
    assert store.fee("bybit", "ETH/USDT:USDT") == (0.0002, 0.00055)
    assert store.fee("bybit", "BTC/USDT:USDT", at="2024-07-01") == (0.0001, 0.0004)
    assert store.fee("bybit", "BTC/USDT:USDT", at="2024-01-01") == (0.0002, 0.00055)
    assert store.fee("kucoin", "BTC/USDT") is None
    with pytest.raises(DataError, match=r"taker fee 0\.1"):
        store.write_fee("bybit", 0.001, 0.1)


def test_export_parquet_is_hive_partitioned_and_readable(store, btc5m, tmp_path):
    store.write_candles(btc5m, "binance", "BTC/USDT:USDT", "5m")
    store.write_candles(btc5m.iloc[:50], "bybit", "BTC/USDT:USDT", "5m")
    store.write_fee("bybit", 0.0002, 0.00055)
    files = store.export_parquet(tmp_path / "pq")
    assert any("exchange=binance" in str(f) and "timeframe=5m" in str(f) for f in files)
    dataset = ds.dataset(tmp_path / "pq" / "candles", format="parquet", partitioning="hive")
    table = dataset.to_table().to_pandas()
    assert len(table) == len(btc5m) + 50
    assert set(table["exchange"].astype(str)) == {"binance", "bybit"}
    symbols = {s.replace("%2F", "/").replace("%3A", ":") for s in table["symbol"].astype(str)}
    assert symbols == {"BTC/USDT:USDT"}
    binance = table[table["exchange"].astype(str) == "binance"].sort_values("ts")
    np.testing.assert_array_equal(binance["close"].to_numpy(), btc5m.close.to_numpy())


def test_v1_store_is_migrated_to_v2_and_keeps_its_data(tmp_path):
    path = tmp_path / "old.duckdb"
    with Store(path) as s:
        s.write_fee("bybit", 0.0002, 0.00055)
        s._con.execute("DROP TABLE api_usage")
        s._con.execute("DROP TABLE journal")
        s._con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with Store(path) as s:
        assert s.schema_version == 2
        assert s.fee("bybit", "BTC/USDT") == (0.0002, 0.00055)
        assert s.append_journal("run1", "signal", '{"x": 1}') == 1
        assert s.append_journal("run1", "order", '{"x": 2}') == 2
        assert list(s.journal("run1", after=1)["kind"]) == ["order"]
        s.append_usage([{"key_id": "k", "exchange": "bybit", "endpoint": "GET /v5/market/kline", "weight": 1,
                         "ts": "2024-01-01T00:00Z", "status": "ok"}])
        assert s.usage("k")["weight"].sum() == 1
        assert s.usage("other").empty


def test_journal_rolls_back_with_the_outer_transaction(tmp_path):
    with Store(tmp_path / "j.duckdb") as s:
        with pytest.raises(RuntimeError), s.transaction():
            s.append_journal("r", "fill", "{}")
            raise RuntimeError("crash")
        assert s.journal("r").empty
        assert s.journal_streams() == []

"""The bundled sample: every file loads as valid Candles equal to the shared CSV it came from."""

from __future__ import annotations

import pandas as pd
import pytest

import qlab
from qlab.data.candles import read_csv
from qlab.data.sample import CATALOGUE, load_into_store
from qlab.errors import NotFoundError

CANDLE_SERIES = [s for s in CATALOGUE if s.kind == "candles"]


@pytest.mark.parametrize("series", CANDLE_SERIES, ids=lambda s: f"{s.symbol}-{s.timeframe}")
def test_bundled_candles_equal_the_shared_csv(series, shared_data):
    ours = qlab.load_sample(series.symbol, series.timeframe, series.exchange)
    pd.testing.assert_frame_equal(ours, read_csv(shared_data / series.source_csv, series.timeframe), check_freq=False)


def test_bundled_funding_equals_the_shared_csv(shared_data):
    rates = qlab.load_sample_funding("XRP/USDT:USDT")
    raw = pd.read_csv(shared_data / "xrpusdt_funding_8h.csv")
    assert list(rates.to_numpy()) == list(raw.funding_rate)
    assert list(rates.index) == list(pd.to_datetime(raw.timestamp, utc=True, format="ISO8601"))


def test_required_series_are_bundled():
    have = {(s.symbol, s.timeframe, s.kind) for s in CATALOGUE}
    for need in [("BTC/USDT:USDT", "5m", "candles"), ("BTC/USDT:USDT", "1h", "candles"),
                 ("XRP/USDT:USDT", "1h", "candles"), ("XRP/USDT:USDT", "8h", "funding"),
                 ("ETH/BTC", "5m", "candles"), ("ADA/BTC", "5m", "candles"), ("BTC/USDT", "1h", "candles")]:
        assert need in have


def test_unknown_sample_lists_what_exists():
    with pytest.raises(NotFoundError, match=r"bundled: .*BTC/USDT:USDT 1h.*did you mean 'BTC/USDT:USDT 1h'"):
        qlab.load_sample("BTC/USDT:USDT", "1hr")
    with pytest.raises(NotFoundError, match="DOGE"):
        qlab.load_sample("DOGE/USDT", "1h")


def test_sample_files_stay_small():
    total = sum((qlab.config.sample_dir() / s.file).stat().st_size for s in CATALOGUE)
    assert total < 10_000_000


def test_load_into_store_is_idempotent(store):
    first = load_into_store(store)
    again = load_into_store(store)
    assert first == again
    listing = store.symbols()
    assert len(listing) == len(CANDLE_SERIES)
    btc = listing[(listing.symbol == "BTC/USDT") & (listing.timeframe == "1h")].iloc[0]
    assert btc.rows == 58419  # SOURCES.md: btcusdt_binance_1h.csv has 58419 rows


def test_sources_md_quality_table_matches_what_qlab_computes():
    from qlab.data.sample import QUALITY_END, QUALITY_START, quality_markdown

    text = (qlab.config.sample_dir() / "SOURCES.md").read_text()
    kept = text.split(QUALITY_START)[1].split(QUALITY_END)[0].strip()
    assert kept == quality_markdown(), "run `python -m qlab.data.sample --quality` and commit SOURCES.md"


def test_quality_table_agrees_with_the_independent_gap_counts():
    table = qlab.data.sample.quality_table().set_index("series")
    # ../shared/data/SOURCES.md: ADA 40 bars in 5 runs, TRX 6 single bars, BTC 1h 128 in 28, ETH 1h 127 in 27
    for series, missing, runs in [("bittrex ADA/BTC 5m", 40, 5), ("bittrex TRX/BTC 5m", 6, 6),
                                  ("binance BTC/USDT 1h", 128, 28), ("binance ETH/USDT 1h", 127, 27),
                                  ("binance BTC/USDT 1m", 434, 2), ("bittrex ETH/BTC 5m", 0, 0)]:
        assert (table.loc[series, "missing bars"], table.loc[series, "gap runs"]) == (missing, runs)

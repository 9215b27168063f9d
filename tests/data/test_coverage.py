"""Watch-list coverage on the bundled real data, checked against a plain-Python count of the expected bars."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import yaml

import qlab
from qlab.cli import main
from qlab.data.coverage import coverage, load_watchlist, parse_watchlist
from qlab.data.sample import load_into_store
from qlab.data.store import Store
from qlab.errors import ConfigError

BITTREX = ["ETH/BTC", "LTC/BTC", "ADA/BTC", "TRX/BTC"]  # Jan 2018 spot pairs; ADA and TRX have real gaps
WATCH = {
    "entries": [
        {"exchange": "bittrex", "symbols": BITTREX, "timeframes": ["5m"], "since": "2018-01-12 00:02", "until": "2018-01-31"},
        {"exchange": "binance", "symbols": ["BTC/USDT"], "timeframes": ["1m"], "since": "2021-04-20", "until": "2021-05-01"},
    ]
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("coverage") / "s.duckdb"
    with Store(path) as s:
        load_into_store(s)
    return path


def _reference(symbol: str, timeframe: str, exchange: str, since: str, until: str) -> tuple[int, int, list[tuple]]:
    """Expected bars, present bars and missing runs (first, last, bars) by walking the grid one bar at a time."""
    have = {t.to_pydatetime() for t in qlab.load_sample(symbol, timeframe, exchange).index}
    step = timedelta(minutes={"1m": 1, "5m": 5}[timeframe])
    t = datetime.fromisoformat(since).replace(tzinfo=UTC)
    while t.minute % (step.seconds // 60) or t.second:  # the first grid bar at or after since
        t += timedelta(minutes=1) - timedelta(seconds=t.second)
    end = datetime.fromisoformat(until).replace(tzinfo=UTC)
    expected = present = 0
    runs: list[list] = []
    prev_missing = False
    while t < end:
        expected += 1
        if t in have:
            present += 1
            prev_missing = False
        else:
            if prev_missing:
                runs[-1][1], runs[-1][2] = t, runs[-1][2] + 1
            else:
                runs.append([t, t, 1])
            prev_missing = True
        t += step
    return expected, present, [tuple(r) for r in runs]


def test_coverage_of_the_bundled_spot_pairs_matches_a_bar_by_bar_count(store):
    with Store(store, read_only=True) as s:
        report = coverage(s, parse_watchlist(WATCH), now="2026-01-01")
    assert len(report.series) == 5
    gappy = 0
    for cov in report.series:
        entry = next(e for e in WATCH["entries"] if e["exchange"] == cov.exchange)
        expected, present, runs = _reference(cov.symbol, cov.timeframe, cov.exchange, entry["since"], entry["until"])
        assert (cov.expected, cov.present) == (expected, present), cov.symbol
        assert cov.percent == pytest.approx(100.0 * present / expected)
        got = [(r.start.to_pydatetime(), r.end.to_pydatetime(), r.missing_bars) for r in cov.missing.itertuples()]
        assert got == runs, cov.symbol
        gappy += len(runs) > 1
        # the score is the quality report of exactly the stored bars in the window
        frame = qlab.load_sample(cov.symbol, cov.timeframe, cov.exchange)
        lo = pd.Timestamp(entry["since"], tz="UTC").ceil(cov.timeframe.replace("m", "min"))
        window = frame[(frame.index >= lo) & (frame.index < pd.Timestamp(entry["until"], tz="UTC"))]
        assert cov.score == pytest.approx(qlab.quality_report(window, cov.timeframe).score)
        assert cov.sources == {cov.exchange: present}
    assert gappy >= 2  # ADA/BTC, TRX/BTC and the 1m BTC file have holes inside the window, not only at its ends
    assert not report.complete
    table = report.table()
    assert list(table["missing_bars"]) == [s.expected - s.present for s in report.series]


def test_a_fully_stored_window_is_complete(store):
    wl = parse_watchlist({"entries": [{"exchange": "bittrex", "symbols": ["LTC/BTC"], "timeframes": ["5m"],
                                       "since": "2018-01-15", "until": "2018-01-20"}]})
    with Store(store, read_only=True) as s:
        report = coverage(s, wl, now="2026-01-01")
    assert report.complete and report.percent == 100.0 and report.missing.empty
    assert report.series[0].expected == 5 * 288


def test_a_series_the_store_lacks_is_one_missing_range_and_bars_still_forming_are_not_required(store):
    now = pd.Timestamp("2018-01-12 00:07:30", tz="UTC")  # the 00:05 bar is still forming
    wl = parse_watchlist({"entries": [{"exchange": "kucoin", "symbols": ["ETH/BTC"], "timeframes": ["5m"], "since": "2018-01-11"}]})
    with Store(store, read_only=True) as s:
        cov = coverage(s, wl, now=now).series[0]
    assert cov.present == 0 and cov.expected == 288 + 1 and cov.score is None
    assert cov.missing.to_dict("records") == [{"start": pd.Timestamp("2018-01-11", tz="UTC"),
                                               "end": pd.Timestamp("2018-01-12 00:00", tz="UTC"), "missing_bars": 289}]


@pytest.mark.parametrize(("entry", "needle"), [
    ({"exchange": "bybit", "symbols": ["BTC/USDT"], "timeframes": ["1h"], "sinse": "2024-01-01"}, "did you mean 'since'"),
    ({"exchange": "bybit", "symbols": ["BTC/USDT"], "timeframes": ["1h"]}, "'since' is required"),
    ({"exchange": "bybit", "symbols": [], "timeframes": ["1h"], "since": "2024"}, "'symbols' is required"),
    ({"exchange": "bybit", "symbols": ["BTC/USDT"], "timeframes": ["1h"], "since": "yesterday-ish"}, "not a date"),
    ({"exchange": "bybit", "fallback": ["bybit"], "symbols": ["X/Y"], "timeframes": ["1h"], "since": "2024"}, "both"),
])
def test_bad_watch_lists_are_config_errors_naming_the_problem(entry, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_watchlist({"entries": [entry]})


def test_the_example_watch_list_parses():
    wl = load_watchlist(qlab.config.PACKAGE_ROOT.parent / "data" / "watchlist.example.yaml")
    assert wl.exchanges() == ["bybit", "binance", "kucoin"]
    assert wl.entries[0].sources == ("bybit", "binance", "kucoin") and wl.entries[2].since == pd.Timestamp("2024-09-14", tz="UTC")
    assert wl.accounts() == {"bybit": "bybit-demo"}


def test_cli_coverage_exits_non_zero_when_require_full_and_bars_are_missing(store, tmp_path, capsys):
    path = tmp_path / "watch.yaml"
    path.write_text(yaml.safe_dump(WATCH))
    assert main(["--store", str(store), "data", "coverage", "--watchlist", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ADA/BTC" in out and "missing ranges" in out
    assert main(["--store", str(store), "data", "coverage", "--watchlist", str(path), "--require-full"]) == 1
    full = tmp_path / "full.yaml"
    full.write_text(yaml.safe_dump({"entries": [{"exchange": "bittrex", "symbols": ["LTC/BTC"], "timeframes": ["5m"],
                                                 "since": "2018-01-15", "until": "2018-01-20"}]}))
    assert main(["--store", str(store), "data", "coverage", "--watchlist", str(full), "--require-full"]) == 0
    assert "coverage 100.0000 %" in capsys.readouterr().out

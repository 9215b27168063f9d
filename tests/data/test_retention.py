"""Retention rules on real bundled candles: dry run, exact pruning, all-or-nothing, derived timeframes kept."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

import qlab
from qlab.cli import main
from qlab.data.retention import RetentionRule, load_retention, parse_retention, prune
from qlab.data.store import Store
from qlab.errors import ConfigError

NOW = pd.Timestamp("2021-05-14 10:17", tz="UTC")
RULES = {"rules": {"1m": {"keep": "20 days", "derive": ["1h"]}, "5m": {"keep": "2y", "derive": "1h"}}, "default": "forever"}
CUT_1M = pd.Timestamp("2021-04-24 10:00", tz="UTC")  # NOW - 20 days, floored to the hour (the derived timeframe)
NATIVE_1H_END = pd.Timestamp("2021-04-16", tz="UTC")


def _served():
    btc_1m = qlab.load_sample("BTC/USDT", "1m", "binance")
    native_1h = qlab.load_sample("BTC/USDT", "1h", "binance")
    native_1h = native_1h[(native_1h.index >= btc_1m.index[0].floor("1D")) & (native_1h.index < NATIVE_1H_END)]
    return {
        ("binance", "BTC/USDT", "1m"): btc_1m,
        ("binance", "BTC/USDT", "1h"): native_1h,  # the exchange's own hours for the first two days: kept as they are
        ("bittrex", "ADA/BTC", "5m"): qlab.load_sample("ADA/BTC", "5m", "bittrex"),  # has real gaps: partial hours
        ("binance", "ETH/USDT", "1d"): qlab.load_sample("ETH/USDT", "1d", "binance"),  # no rule: kept for ever
    }


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "s.duckdb") as s:
        for (exchange, symbol, tf), frame in _served().items():
            s.write_candles(frame, exchange, symbol, tf)
        yield s


def _snapshot(store: Store) -> pd.DataFrame:
    return store.sql("SELECT * FROM candles ORDER BY exchange, symbol, timeframe, ts")


def _hourly(frame: pd.DataFrame) -> pd.DataFrame:
    """Plain groupby on the floored hour: the independent reference for derived 1h bars."""
    g = frame.groupby(frame.index.floor("1h"))
    out = pd.DataFrame({"open": g["open"].first(), "high": g["high"].max(), "low": g["low"].min(),
                        "close": g["close"].last(), "volume": g["volume"].sum()})
    out.index.name = "timestamp"
    return out


def test_rule_cutoff_is_now_minus_keep_floored_to_the_coarsest_derived_timeframe():
    policy = parse_retention(RULES)
    assert policy.rule("1m").cutoff(NOW) == CUT_1M
    assert policy.rule("1d").cutoff(NOW) is None and policy.rule("1h") == RetentionRule("1h", None)
    assert policy.rule("5m").cutoff(NOW) == pd.Timestamp("2019-05-15 10:00", tz="UTC")  # 2y = 730 days, 2020 is a leap year


def test_dry_run_reports_rows_and_ranges_and_changes_nothing(store):
    served = _served()
    before = _snapshot(store)
    result = prune(store, parse_retention(RULES), now=NOW, dry_run=True)
    pd.testing.assert_frame_equal(_snapshot(store), before)
    plan = result.plan.set_index(["exchange", "symbol", "timeframe"])
    assert set(plan.index) == {("binance", "BTC/USDT", "1m"), ("bittrex", "ADA/BTC", "5m")}
    for key, cut in ((("binance", "BTC/USDT", "1m"), CUT_1M), (("bittrex", "ADA/BTC", "5m"), pd.Timestamp("2019-05-15 10:00", tz="UTC"))):
        old = served[key].index[served[key].index < cut]
        row = plan.loc[key]
        assert (row["rows"], row["first"], row["last"], row["cutoff"]) == (len(old), old[0], old[-1], cut)
        assert row["keep_rows"] == len(served[key]) - len(old)
    assert result.deleted == 0 and result.derived == {}


def test_prune_removes_exactly_the_rows_before_the_cutoff_and_derives_the_higher_timeframe_first(store):
    served = _served()
    result = prune(store, parse_retention(RULES), now=NOW)
    btc = served[("binance", "BTC/USDT", "1m")]
    kept = store.candles("binance", "BTC/USDT", "1m")
    pd.testing.assert_frame_equal(kept, btc[btc.index >= CUT_1M], check_freq=False)
    assert "ADA/BTC" not in set(store.symbols().query("timeframe == '5m'").symbol)  # all of 2018 is past 2 years
    pd.testing.assert_frame_equal(store.candles("binance", "ETH/USDT", "1d"), served[("binance", "ETH/USDT", "1d")],
                                  check_freq=False)
    assert result.deleted == int((btc.index < CUT_1M).sum()) + len(served[("bittrex", "ADA/BTC", "5m")])

    # 1h of BTC: the native hours where they were stored, resampled 1m bars for every other hour before the cut-off
    hours = store.candles("binance", "BTC/USDT", "1h", with_source=True)
    native = served[("binance", "BTC/USDT", "1h")]
    expected = _hourly(btc[btc.index < CUT_1M])
    expected = pd.concat([native, expected[~expected.index.isin(native.index)]]).sort_index()
    pd.testing.assert_frame_equal(hours.drop(columns="source"), expected, check_freq=False)
    assert (hours.loc[hours.index < NATIVE_1H_END, "source"] == "binance").all()
    assert (hours.loc[hours.index >= NATIVE_1H_END, "source"] == "resample:1m").all()
    # ADA 5m -> 1h, partial hours (real gaps) included, so nothing that was stored is lost
    ada = served[("bittrex", "ADA/BTC", "5m")]
    pd.testing.assert_frame_equal(store.candles("bittrex", "ADA/BTC", "1h"), _hourly(ada), check_freq=False)
    assert (ada.groupby(ada.index.floor("1h")).size() < 12).any()
    assert result.derived == {"binance BTC/USDT 1h": len(expected) - len(native), "bittrex ADA/BTC 1h": len(_hourly(ada))}

    again = prune(store, parse_retention(RULES), now=NOW)  # idempotent
    assert again.plan.empty and again.deleted == 0


def test_a_failure_mid_prune_leaves_the_store_unchanged(store, monkeypatch):
    before = _snapshot(store)
    calls = {"n": 0}
    original = store.delete_candles

    def failing(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return original(*args, **kw)

    monkeypatch.setattr(store, "delete_candles", failing)
    with pytest.raises(OSError, match="disk full"):
        prune(store, parse_retention(RULES), now=NOW)
    assert calls["n"] == 2  # the first series was already deleted (and its hours derived) inside the transaction
    pd.testing.assert_frame_equal(_snapshot(store), before)


@pytest.mark.parametrize(("config", "needle"), [
    ({"rules": {"1m": {"keep": "90"}}}, "has no unit"),
    ({"rules": {"1m": {"keep": "soon"}}}, "not a duration"),
    ({"rules": {"1h": {"keep": "9d", "derive": ["1m"]}}}, "cannot derive 1m from 1h"),
    ({"rules": {"1m": {"kepe": "9d"}}}, "did you mean 'keep'"),
    ({"rule": {}}, "expected a mapping with 'rules:'"),
])
def test_bad_rules_are_config_errors(config, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_retention(config)


def test_the_example_rules_parse():
    policy = load_retention(qlab.config.PACKAGE_ROOT.parent / "data" / "retention.example.yaml")
    assert policy.rule("1m") == RetentionRule("1m", pd.Timedelta(days=90), ("1h", "1d"))
    assert policy.rule("4h").keep is None


def test_cli_prune_dry_run_then_prune(store, tmp_path, capsys):
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"rules": {"1m": {"keep": "30 days", "derive": ["1h"]}}}))
    store_path = str(store.path)
    rows_1m = len(store.candles("binance", "BTC/USDT", "1m"))
    store.close()  # the CLI opens the file itself
    assert main(["--store", store_path, "data", "prune", "--rules", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"dry run: {rows_1m} row(s) in 1 series would go" in out and "BTC/USDT" in out
    with Store(store_path) as s:
        assert len(s.candles("binance", "BTC/USDT", "1m")) == rows_1m
    assert main(["--store", store_path, "data", "prune", "--rules", str(path)]) == 0
    assert f"pruned {rows_1m} row(s)" in capsys.readouterr().out
    with Store(store_path) as s:
        assert "1m" not in set(s.symbols().timeframe)
        assert len(s.candles("binance", "BTC/USDT", "1h")) == len(_hourly(_served()[("binance", "BTC/USDT", "1m")]))

"""The `qlab` command: import (all-or-nothing), list, quality, export, resample, clear errors."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pandas as pd
import pytest

from qlab.cli import main
from qlab.data.store import Store


def _run(*args: str) -> int:
    return main(list(args))


def test_import_list_and_quality(tmp_path, shared_data, capsys):
    db = str(tmp_path / "s.duckdb")
    assert _run("--store", db, "data", "import", str(shared_data / "adabtc_5m.csv"),
                "--exchange", "bittrex", "--symbol", "ADA/BTC", "--timeframe", "5m") == 0
    assert "5720 rows" in capsys.readouterr().out
    assert _run("--store", db, "data", "list") == 0
    out = capsys.readouterr().out
    assert "ADA/BTC" in out and "5720" in out
    html = tmp_path / "q.html"
    assert _run("--store", db, "data", "quality", "--exchange", "bittrex", "--symbol", "ADA/BTC",
                "--timeframe", "5m", "--html", str(html)) == 0
    out = capsys.readouterr().out
    assert "40" in out  # SOURCES.md: 40 missing bars
    assert html.stat().st_size > 100_000 and "Plotly.newPlot" in html.read_text()


def test_import_of_several_files_is_all_or_nothing(tmp_path, shared_data, capsys):
    good = shared_data / "ethbtc_5m.csv"
    bad = tmp_path / "bad.csv"
    raw = pd.read_csv(good).iloc[:100]
    raw.loc[60, "volume"] = -5
    raw.to_csv(bad, index=False)
    db = str(tmp_path / "s.duckdb")
    assert _run("--store", db, "data", "import", str(good), str(bad), "--exchange", "bittrex",
                "--symbol", "ETH/BTC", "--timeframe", "5m") == 2
    err = capsys.readouterr().err
    assert "row 61" in err and "bad.csv" in err and "'volume'" in err
    with Store(db) as s:
        assert s.symbols().empty
    assert _run("--store", db, "data", "import", str(bad), "--exchange", "bittrex", "--symbol", "ETH/BTC",
                "--timeframe", "5m", "--drop-invalid") == 0
    assert "skipped 1 invalid row" in capsys.readouterr().out


def test_write_failure_during_a_multi_file_import_rolls_back(tmp_path, shared_data, monkeypatch):
    db = str(tmp_path / "s.duckdb")
    calls = {"n": 0}
    original = Store._insert_stage

    def fail_second(self, *args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("crash during the second file")
        return original(self, *args)

    monkeypatch.setattr(Store, "_insert_stage", fail_second)
    half = tmp_path / "second.csv"
    pd.read_csv(shared_data / "ethbtc_5m.csv").iloc[3000:].to_csv(half, index=False)
    first = tmp_path / "first.csv"
    pd.read_csv(shared_data / "ethbtc_5m.csv").iloc[:3000].to_csv(first, index=False)
    with pytest.raises(RuntimeError):
        _run("--store", db, "data", "import", str(first), str(half), "--exchange", "bittrex", "--symbol", "ETH/BTC")
    with Store(db) as s:
        assert s.symbols().empty


def test_funding_import_resample_and_export(tmp_path, shared_data):
    db = str(tmp_path / "s.duckdb")
    assert _run("--store", db, "data", "import", str(shared_data / "xrpusdt_funding_8h.csv"), "--funding",
                "--exchange", "binance", "--symbol", "XRP/USDT:USDT") == 0
    assert _run("--store", db, "data", "import", str(shared_data / "btcusdt_5m.csv"), "--exchange", "binance",
                "--symbol", "BTC/USDT:USDT") == 0  # timeframe inferred
    assert _run("--store", db, "data", "resample", "--exchange", "binance", "--symbol", "BTC/USDT:USDT",
                "--timeframe", "5m", "--to", "1h") == 0
    with Store(db) as s:
        assert len(s.funding("binance", "XRP/USDT:USDT")) == 91
        assert len(s.candles("binance", "BTC/USDT:USDT", "1h")) == 916  # SOURCES.md: 916 complete hours
    assert _run("--store", db, "data", "export", str(tmp_path / "pq")) == 0
    assert list((tmp_path / "pq" / "candles" / "exchange=binance").iterdir())


def test_quality_of_a_raw_file_reports_duplicates(tmp_path, shared_data, capsys):
    raw = pd.read_csv(shared_data / "trxbtc_5m.csv").iloc[:200]
    dup = tmp_path / "dup.csv"
    pd.concat([raw, raw.iloc[[10]]]).to_csv(dup, index=False)
    assert _run("data", "quality", "--file", str(dup)) == 0
    assert "duplicate" in capsys.readouterr().out.lower()


def test_quality_against_another_stored_source_lists_exactly_the_bars_beyond_the_tolerance(tmp_path, capsys):
    import numpy as np

    import qlab

    btc = qlab.load_sample("BTC/USDT", "1h").iloc[:500]
    other = btc.copy()
    moved = other.index[[40, 41, 300]]
    other.loc[moved, ["open", "high", "low", "close"]] *= 1.004  # 40 bps apart: beyond 30, within 50
    other = other.drop(other.index[450:])  # the second source stops early: only 450 shared bars
    db = tmp_path / "s.duckdb"
    with Store(db) as store:
        store.write_candles(btc, "binance", "BTC/USDT", "1h")
        store.write_candles(other, "bybit", "BTC/USDT", "1h")
    base = ("--store", str(db), "data", "quality", "--exchange", "bybit", "--symbol", "BTC/USDT", "--timeframe", "1h")
    assert _run(*base, "--against", "binance", "--tolerance-bps", "30") == 0
    out = capsys.readouterr().out
    assert "bybit BTC/USDT 1h against binance" in out
    accuracy = next(line for line in out.splitlines() if line.strip().startswith("accuracy"))
    assert accuracy.split()[1] == "450.00" and "3 bar(s) beyond 30 bps" in accuracy  # only the shared bars compared
    listed = [line.split()[0] + " " + line.split()[1] for line in out.split("differ by more than 30 bps:")[1].splitlines()[2:]]
    assert listed == [f"{t:%Y-%m-%d %H:%M:%S}+00:00" for t in moved]
    assert np.isclose(float(accuracy.split("max ")[1].split(" bps")[0]), 40.0)  # |x - ref| / ref = 0.4 %
    assert _run(*base, "--against", "binance") == 0  # the default 50 bps: none disagree
    assert "0 bar(s) beyond 50 bps" in capsys.readouterr().out
    assert _run(*base, "--against", "binanse") == 2
    assert "binance" in capsys.readouterr().err  # did you mean


def test_errors_are_one_line_with_exit_status_2(tmp_path, capsys):
    assert _run("--store", str(tmp_path / "s.duckdb"), "data", "quality", "--exchange", "x", "--symbol", "Y",
                "--timeframe", "1hour") == 2
    assert "did you mean '1h'" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("qlab") is None and not (sys.prefix and shutil.which("qlab", path=f"{sys.prefix}/bin")),
                    reason="the qlab console script is installed by `pip install -e .`")
def test_console_script_is_installed(tmp_path):
    exe = shutil.which("qlab", path=f"{sys.prefix}/bin") or "qlab"
    out = subprocess.run([exe, "--store", str(tmp_path / "s.duckdb"), "data", "list"], capture_output=True, text=True)
    assert out.returncode == 2 and "no store at" in out.stderr and "make demo" in out.stderr
    assert "data" in subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout


def test_every_command_group_prints_its_help():
    """argparse formats help texts with %: a stray % in one subcommand's help breaks its group's --help."""
    import contextlib
    import io

    from qlab.cli import build_parser

    def walk(parser, path):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            parser.parse_args([*path, "--help"])
        assert "usage:" in out.getvalue(), path
        for action in parser._subparsers._group_actions if parser._subparsers else []:
            for sub in action.choices.values():
                walk(sub, [])  # each subparser on its own

    walk(build_parser(), [])

"""`qlab paper run/status/stop` with real processes: a background replay service, its pid and status files, a clean stop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qlab.errors import NotFoundError
from qlab.paper.service import ServiceFiles, process_alive, status_rows, stop_service


def qlab_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qlab.cli", *args], capture_output=True, text=True, timeout=timeout, env=os.environ)


def test_background_service_shows_in_status_and_stops_cleanly():
    name = "svc-test"
    # one 1h bar every 0.05 s: 2000 bars would take 100 s, so the service is surely still running when we look
    started = qlab_cli("paper", "run", "--strategy", "sma_cross", "--replay", "BTC/USDT", "--timeframe", "1h", "--speed", "72000",
                       "--background", "--name", name)
    assert started.returncode == 0, started.stderr
    files = ServiceFiles(name)
    pid = int(files.pid.read_text())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait for a few bar closes in the status file
        row = next((r for r in status_rows() if r["name"] == name), None)
        if row is not None and row.get("bars", 0) >= 5:
            break
        time.sleep(0.2)
    listed = qlab_cli("paper", "status")
    assert listed.returncode == 0 and name in listed.stdout and "running" in listed.stdout and "equity" in listed.stdout
    assert row["running"] and row["pid"] == pid and row["state"] == "running"

    stopped = qlab_cli("paper", "stop", name)
    assert stopped.returncode == 0, stopped.stderr
    assert not files.pid.exists()
    assert not process_alive(pid)  # gone (or a zombie waiting for a reaper: it has exited)
    final = json.loads(files.status.read_text())
    assert final["state"] == "stopped" and 5 <= final["bars"] < 2000
    # the journal ends at a finished bar: the last event is the bar's mark (the trader finished the event in hand)
    from qlab.data.store import Store

    with Store(Path(os.environ["QLAB_HOME"]) / "paper" / f"{name}.duckdb", read_only=True) as store:
        journal = store.journal(f"paper/{name}")
    assert journal["kind"].iloc[-1] == "mark" and (journal["kind"] == "mark").sum() == final["bars"]
    log = files.log.read_text()
    assert "started" in log and "stopped after" in log


def test_foreground_replay_prints_the_result_and_resumes_from_its_journal():
    first = qlab_cli("paper", "run", "--strategy", "sma_cross", "--replay", "BTC/USDT", "--bars", "300", "--name", "fg")
    assert first.returncode == 0, first.stderr
    assert "300 bars" in first.stdout and "final equity" in first.stdout
    again = qlab_cli("paper", "run", "--strategy", "sma_cross", "--replay", "BTC/USDT", "--bars", "300", "--name", "fg")
    assert again.returncode == 0 and "300 bars" in again.stdout  # resumed: the journal already held every bar
    assert first.stdout.split("final equity")[1] == again.stdout.split("final equity")[1]


def test_stopping_an_unknown_service_names_the_running_ones(tmp_path):
    with pytest.raises(NotFoundError, match="no running paper trader named 'nope'"):
        stop_service("nope")

"""Smoke test of the benchmark runner: `python -m benchmarks --quick` writes a sane BENCHMARKS.md."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
NUMBER = r"[\d,]+(?:\.\d+)?"


def _row(text: str, starts: str) -> str:
    rows = [line for line in text.splitlines() if line.startswith(f"| {starts}")]
    assert rows, f"no table row starting with {starts!r} in:\n{text}"
    return rows[0]


def test_quick_benchmark_writes_markdown(tmp_path: Path) -> None:
    out = tmp_path / "B.md"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    text = out.read_text(encoding="utf-8")

    assert text.startswith("# qlab benchmarks")
    assert "python -m benchmarks" in text and "Quick mode" in text
    assert "## Machine" in text
    for fact in ("- CPU: ", "- Memory: ", "- OS: ", "- Python: ", "- Libraries: "):
        assert fact in text
    assert "## Market-data store" in text
    assert "## Optimiser, end to end" in text
    assert re.search(rf"\| {NUMBER} (?:ms|s) \|", _row(text, "Bayesian (TPE)"))
    assert re.search(rf"\| {NUMBER} (?:ms|s) \|", _row(text, "grid, `sma_cross`"))

    ingest = _row(text, "ingest:")
    assert re.search(rf"\| 500,000 1m rows \| {NUMBER} (?:ms|s)\b", ingest), ingest
    assert re.search(rf"\| {NUMBER} [kM]? ?rows/s \|", ingest), ingest
    assert re.search(r"\| (pass|\*\*miss\*\*) \|$", ingest), ingest

    read = _row(text, "read: `Store.candles`, same year (warm)")
    assert re.search(rf"\| {NUMBER} ms", read), read
    assert re.search(r"\| (pass|\*\*miss\*\*) \|$", read), read
    assert "raw DuckDB" in text  # the baseline rows

    assert "## Backtest engine and parameter sweeps" in text
    single = _row(text, "single backtest: `qlab.backtest`")
    assert re.search(rf"\| 20,000 1m bars, [\d,]+ trades \| {NUMBER} (?:µs|ms|s) \(median of 3\) \|", single), single
    for starts in ("baseline: backtesting.py", "baseline: vectorbt"):
        row = _row(text, starts)
        assert re.search(rf"\| {NUMBER} (?:ms|s) \((?:one run|median of 3)\) \|", row), row
        assert re.search(r"\| (pass|\*\*miss\*\*): [\d,]+× \([≥<] \d+×\) \|$", row), row
    reference = _row(text, "baseline: reference loop")
    assert re.search(r"\| ((pass|\*\*miss\*\*): [\d,]+× \([≥<] 100×\)|—) \|$", reference), reference
    sweep = _row(text, "sweep: `sweep_ma_cross`, 45 SMA pairs")
    assert re.search(rf"\| 10,000 1m bars × 45 pairs \| {NUMBER} (?:µs|ms|s) \(median of 3\) \|", sweep), sweep
    assert "cache load" in _row(text, "↳ numba, fresh process (2,000 bars, 6 pairs)")
    assert "same closed-trade count for all 45 pairs" in text

    assert "## Alert delivery" in text  # real SMTP/HTTP servers on 127.0.0.1; a server that cannot start is reported
    for channel in ("email, plain SMTP", "webhook, Slack", "SMS gateway (Twilio-style)", "dashboard (in memory)"):
        row = _row(text, channel)
        assert re.search(rf"\| 5 \| {NUMBER} (?:µs|ms|s) \| {NUMBER} (?:µs|ms|s) \| {NUMBER} (?:µs|ms|s) \| < 10 s \| (pass|\*\*miss\*\*)",
                         row) or "not run: " in row, row
    assert "## Dashboard in the browser" in text
    dashboard = text.split("## Dashboard in the browser", 1)[1]
    assert dashboard.lstrip().startswith(("skipped: ", "not measured: ")) or re.search(
        rf"\| {NUMBER} ms median, {NUMBER} ms max \| < 100 ms \| (pass|\*\*miss\*\*) \|", _row(dashboard, "widget redraw")), dashboard[:500]

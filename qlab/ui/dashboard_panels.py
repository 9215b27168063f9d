"""Read-only views for the dashboard: data quality, API usage, system status and tables, as plain data then HTML.

Pure functions of the store and the process table, so they are tested without a browser; dashboard.py wires them to widgets.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from qlab.config import qlab_home
from qlab.data.quality import quality_report
from qlab.data.store import Store
from qlab.paper.service import process_alive

CSS = """
<style>
.qlab-dash {display:flex; flex-wrap:wrap; gap:8px; align-items:flex-start}
.qlab-panel {border:1px solid #ddd; border-radius:6px; padding:6px; box-sizing:border-box; min-width:300px; overflow:auto}
.qlab-panel h4 {margin:2px 0 6px 0; font-family:sans-serif}
.qlab-table {border-collapse:collapse; font:12px sans-serif; width:100%}
.qlab-table th, .qlab-table td {border-bottom:1px solid #eee; padding:2px 6px; text-align:left}
.qlab-table td.num {text-align:right}
.qlab-bad {color:#b00020; font-weight:bold} .qlab-ok {color:#1b5e20}
@media (max-width: 700px) { .qlab-panel {flex: 1 1 100% !important; min-width:0 !important; max-width:100% !important} }
</style>
"""


def html_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, empty: str = "nothing yet") -> str:
    """A small escaped HTML table of dict rows (numbers right-aligned and rounded)."""
    if not rows:
        return f"<p style='font:12px sans-serif;color:#777'>{html.escape(empty)}</p>"
    cols = list(columns or rows[0].keys())

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.6g}" if abs(value) < 1e4 else f"{value:,.2f}"
        return html.escape(str(value))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    def td(value: Any) -> str:
        return f"<td class='num'>{cell(value)}</td>" if isinstance(value, int | float) else f"<td>{cell(value)}</td>"

    body = "".join("<tr>" + "".join(td(r.get(c, "")) for c in cols) + "</tr>" for r in rows)
    return f"<table class='qlab-table'><tr>{head}</tr>{body}</table>"


def quality_rows(store: Store, limit: int = 20, threshold: float = 95.0) -> list[dict[str, Any]]:
    """Quality score (0-100) of each stored series (at most `limit`, biggest first), flagged below `threshold`."""
    listing = store.symbols()
    if listing.empty:
        return []
    listing = listing.sort_values("rows", ascending=False).head(limit)
    out = []
    for row in listing.itertuples():
        candles = store.candles(row.exchange, row.symbol, row.timeframe)
        report = quality_report(candles, row.timeframe)
        out.append({"series": f"{row.exchange} {row.symbol} {row.timeframe}", "bars": len(candles),
                    "score": round(float(report.score), 1), "status": "ok" if report.score >= threshold else "LOW"})
    return out


def usage_rows(store: Store, since: Any = None) -> list[dict[str, Any]]:
    """API calls per key and endpoint from the usage ledger: calls, weight, errors, last call."""
    ledger = store.usage(since=since)
    if ledger.empty:
        return []
    ledger = ledger.assign(error=ledger["status"] != "ok")
    grouped = ledger.groupby(["key_id", "exchange", "endpoint"]).agg(
        calls=("weight", "size"), weight=("weight", "sum"), errors=("error", "sum"), cost=("cost", "sum"), last=("ts", "max"))
    return [{"key": k, "exchange": e, "endpoint": ep, "calls": int(r.calls), "weight": float(r.weight),
             "errors": int(r.errors), "cost": float(r.cost), "last": r.last.strftime("%Y-%m-%d %H:%M:%S")}
            for (k, e, ep), r in grouped.iterrows()]


def pid_files(folder: Path | None = None) -> list[Path]:
    """Pid files of running qlab services (paper traders, syncs) under QLAB_HOME/run."""
    root = folder or qlab_home() / "run"
    return sorted(root.glob("*.pid")) if root.is_dir() else []


def system_rows(components: Iterable[tuple[str, str]] = (), folder: Path | None = None) -> list[dict[str, Any]]:
    """CPU, memory and the components running: the dashboard's own tasks plus services found by their pid files."""
    import psutil

    mem = psutil.virtual_memory()
    me = psutil.Process()
    rows: list[dict[str, Any]] = [
        {"component": "machine", "status": f"CPU {psutil.cpu_percent(interval=None):.0f} %, memory {mem.percent:.0f} % "
                                           f"of {mem.total / 2**30:.1f} GiB"},
        {"component": "dashboard", "status": f"pid {me.pid}, {me.memory_info().rss / 2**20:.0f} MiB, "
                                             f"up {time.time() - me.create_time():.0f} s"},
    ]
    rows += [{"component": name, "status": status} for name, status in components]
    for path in pid_files(folder):
        try:
            pid = int(path.read_text().split()[0])
        except (ValueError, IndexError, OSError):
            continue
        state = "running" if process_alive(pid) else "not running (stale pid file)"
        rows.append({"component": path.stem, "status": f"pid {pid} {state}"})
    return rows


def recent_alerts(store: Store, limit: int = 20, stream: str = "alerts") -> list[dict[str, Any]]:
    """The newest alert deliveries from the store journal (stream 'alerts'), newest first."""
    import json

    frame = store.journal(stream)
    rows = []
    for rec in frame.tail(limit).itertuples():
        try:
            payload = json.loads(rec.payload)
        except ValueError:
            payload = {"message": rec.payload}
        message = payload.get("message") or payload.get("title") or payload.get("rule") or ""
        rows.append({"time": pd.Timestamp(rec.ts).strftime("%Y-%m-%d %H:%M:%S"), "kind": rec.kind, "message": str(message)[:200]})
    return rows[::-1]

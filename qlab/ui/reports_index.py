"""Report metadata and reports/index.html: every report with its parameters, date, status and headline metrics.

A notebook publishes headline metrics with `publish_metrics({...})` (a display output of its own MIME type that the
runner reads back from the executed notebook and drops from the HTML); when it publishes none, the runner picks them
from the notebook's `result` / `run` variables (a qlab Result, an optimisation, a quality report). Each run leaves
NAME.meta.json beside NAME.html; the index is rebuilt from those files.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

METRICS_MIME = "application/vnd.qlab.metrics+json"
AUTO_TAG = "qlab-auto-metrics"
META_SUFFIX = ".meta.json"
INDEX_NAME = "index.html"
# what a backtest-like result shows in the index, in this order
HEADLINE = ("total_return", "cagr", "sharpe", "max_drawdown", "n_trades", "win_rate", "final_equity")
PERCENT = {"total_return", "cagr", "max_drawdown", "win_rate", "completeness"}


def _plain(value: Any) -> Any:
    """A JSON-friendly scalar: numpy numbers become Python ones, NaN/inf become None, the rest becomes str."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        with contextlib.suppress(ValueError, TypeError):
            value = value.item()
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


def clean_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Metric names to JSON scalars; a ConfigError for a non-mapping so a notebook learns its mistake at once."""
    from qlab.errors import ConfigError

    if not isinstance(metrics, Mapping):
        raise ConfigError(f"publish_metrics takes a mapping such as {{'sharpe': 1.2}}, not {type(metrics).__name__}")
    return {str(k): _plain(v) for k, v in metrics.items()}


def publish_metrics(metrics: Mapping[str, Any]) -> None:
    """Publish a notebook's headline metrics for reports/index.html (shown nowhere else; a no-op outside a kernel)."""
    clean = clean_metrics(metrics)
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # plain Python without IPython: nothing to publish to
        return
    if get_ipython() is None:
        return
    display({METRICS_MIME: clean}, raw=True)


def headline_metrics(obj: Any) -> dict[str, Any]:
    """Headline metrics of a notebook result, found by shape: Result.metrics(), an optimisation's best, a quality score."""
    for candidate in (obj, getattr(obj, "result", None)):
        metrics = getattr(candidate, "metrics", None)
        if callable(metrics):
            try:
                values = metrics()
            except Exception:  # a result that cannot compute metrics still gets a report, just without metrics
                continue
            if isinstance(values, Mapping):
                return clean_metrics({k: values[k] for k in HEADLINE if k in values})
    for candidate in (obj, getattr(obj, "result", None)):
        best, objectives = getattr(candidate, "best", None), getattr(candidate, "objectives", None)
        if best is not None and objectives:
            try:
                out = {f"best_{name}": best[name] for name in objectives}
                out["trials"] = len(candidate.trials)
            except Exception:  # no feasible trial: report the run without a best
                continue
            return clean_metrics(out)
    report = getattr(obj, "report", None)
    score = getattr(report, "score", None)
    if score is not None:
        summary = report.summary() if hasattr(report, "summary") else {}
        return clean_metrics({"quality_score": round(float(score), 2), "bars": summary.get("bars"),
                              "completeness": summary.get("completeness", 100.0) / 100.0,
                              "missing_bars": summary.get("missing_bars")})
    return {}


def _publish_auto(namespace: Mapping[str, Any]) -> None:
    """The runner's last cell: publish headline metrics of `run` or `result` in the notebook's namespace."""
    for name in ("run", "result"):
        if name in namespace and not callable(namespace[name]):
            metrics = headline_metrics(namespace[name])
            if metrics:
                publish_metrics({**metrics, "_auto": True})
                return


def auto_metrics_cell() -> Any:
    """The code cell the runner appends to a notebook so its metrics are published without editing the notebook."""
    import nbformat

    cell = nbformat.v4.new_code_cell("from qlab.ui.reports_index import _publish_auto\n_publish_auto(globals())")
    cell.metadata["tags"] = [AUTO_TAG]
    cell.metadata["jupyter"] = {"source_hidden": True}
    return cell


def published_metrics(nb: Any) -> dict[str, Any]:
    """The metrics a notebook published: explicit publish_metrics calls win over the runner's automatic pick."""
    explicit: dict[str, Any] = {}
    auto: dict[str, Any] = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if METRICS_MIME in data:
                values = dict(data[METRICS_MIME])
                (auto if values.pop("_auto", False) else explicit).update(values)
    return explicit or auto


def strip_report_internals(nb: Any) -> Any:
    """The notebook without the runner's metrics cell and metrics outputs (nbconvert cannot render them)."""
    nb.cells = [c for c in nb.cells if AUTO_TAG not in c.get("metadata", {}).get("tags", [])]
    for cell in nb.cells:
        if "outputs" in cell:
            cell.outputs = [o for o in cell.outputs if METRICS_MIME not in o.get("data", {})]
    return nb


def run_info(nb: Any, notebook: str | Path, name: str, parameters: Mapping[str, Any], error: str | None = None) -> dict:
    """What the index shows about one run, from papermill's metadata in the executed notebook."""
    from qlab.accounts import scrub

    meta = nb.metadata.get("papermill", {}) if nb is not None else {}
    params = dict(meta.get("parameters") or parameters)
    defaults = {k: v for k, v in notebook_defaults(notebook).items() if k not in params}
    return {
        "name": name,
        "notebook": Path(notebook).name,
        "parameters": {k: _plain(v) if not isinstance(v, list | dict) else v for k, v in params.items()},
        "defaults": {k: _plain(v) if not isinstance(v, list | dict) else v for k, v in defaults.items()},
        "started": meta.get("start_time") or datetime.now(UTC).isoformat(),
        "finished": meta.get("end_time"),
        "duration_s": meta.get("duration"),
        "status": "failed" if error else "ok",
        "error": scrub(error) if error else None,
        "metrics": published_metrics(nb) if nb is not None else {},
        "html": f"{name}.html",
    }


def notebook_defaults(notebook: str | Path) -> dict[str, Any]:
    """The values of the notebook's `parameters` cell (papermill reads them), so the index shows what a run really used."""
    import ast

    import papermill

    try:
        found = papermill.inspect_notebook(str(notebook))
    except Exception:  # a notebook papermill cannot read: the index simply lists no defaults
        return {}
    out: dict[str, Any] = {}
    for key, spec in found.items():
        text = str(spec.get("default", ""))
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key] = text
    return out


def _write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and a rename, so parallel runs never leave a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_run_info(out_dir: str | Path, info: Mapping[str, Any]) -> Path:
    """Save a run's metadata as NAME.meta.json beside its report."""
    path = Path(out_dir) / f"{info['name']}{META_SUFFIX}"
    _write_atomic(path, json.dumps(info, indent=2, default=str))
    return path


def list_reports(reports: str | Path) -> list[dict[str, Any]]:
    """Every report in the folder, newest first: its meta.json, or (for reports made otherwise) its file date."""
    folder = Path(reports)
    rows = []
    for page in folder.glob("*.html"):
        if page.name == INDEX_NAME:
            continue
        meta = page.with_name(page.stem + META_SUFFIX)
        info: dict[str, Any] = {}
        if meta.is_file():
            with contextlib.suppress(json.JSONDecodeError, OSError):
                info = json.loads(meta.read_text(encoding="utf-8"))
        if not info:
            mtime = datetime.fromtimestamp(page.stat().st_mtime, UTC).isoformat()
            info = {"name": page.stem, "notebook": None, "parameters": {}, "started": mtime, "status": "unknown", "metrics": {}}
        info["html"] = page.name
        rows.append(info)
    for meta in folder.glob("*" + META_SUFFIX):  # failed runs whose HTML could not be written are listed too
        stem = meta.name[: -len(META_SUFFIX)]
        if not (folder / f"{stem}.html").exists():
            with contextlib.suppress(json.JSONDecodeError, OSError):
                rows.append({**json.loads(meta.read_text(encoding="utf-8")), "html": None})
    return sorted(rows, key=lambda r: str(r.get("started") or ""), reverse=True)


def format_metric(name: str, value: Any) -> str:
    """A metric as the index shows it: fractions as percentages, floats to 4 significant digits."""
    if isinstance(value, bool) or value is None:
        return "n/a" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.2%}" if name in PERCENT else f"{value:.4g}"
    return str(value)


def _ordered(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Headline metrics first in their usual order (saved notebooks sort keys alphabetically), then the rest."""
    rank = {name: i for i, name in enumerate((*HEADLINE, "quality_score", "bars", "completeness", "missing_bars"))}
    return dict(sorted(metrics.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def _when(text: Any) -> str:
    try:
        return datetime.fromisoformat(str(text)).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return html.escape(str(text or ""))


_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #ddd;padding:.4rem .6rem;text-align:left;vertical-align:top;font-size:.9rem}
th{background:#f4f4f4}.failed{color:#b00020;font-weight:600}.ok{color:#1b7f3b}code{font-size:.85rem}
ul{margin:0;padding-left:1rem}@media(max-width:700px){td,th{font-size:.8rem;padding:.3rem}}"""


def render_index(rows: list[Mapping[str, Any]]) -> str:
    """The index page: one row per report with links, parameters, date, duration, status and metrics."""
    from qlab.accounts import scrub

    def items(mapping: Mapping[str, Any], fmt) -> str:
        if not mapping:
            return ""
        return "<ul>" + "".join(f"<li><code>{html.escape(str(k))}</code> = {html.escape(fmt(k, v))}</li>"
                                for k, v in mapping.items()) + "</ul>"

    body = []
    for r in rows:
        link = (f'<a href="{html.escape(r["html"])}">{html.escape(str(r["name"]))}</a>' if r.get("html")
                else html.escape(str(r["name"])))
        status = html.escape(str(r.get("status", "")))
        error = f"<br><small>{html.escape(str(r['error']))[:300]}</small>" if r.get("error") else ""
        duration = f"{r['duration_s']:.1f} s" if isinstance(r.get("duration_s"), int | float) else ""
        shown = lambda _k, v: scrub(v if isinstance(v, str) else json.dumps(v, default=str))  # noqa: E731
        params = items(r.get("parameters") or {}, shown)
        if r.get("defaults"):
            params += f"<details><summary>defaults</summary>{items(r['defaults'], shown)}</details>"
        metrics = items(_ordered(r.get("metrics") or {}), format_metric)
        body.append(f"<tr><td>{link}</td><td>{html.escape(str(r.get('notebook') or ''))}</td><td>{params}</td>"
                    f"<td>{_when(r.get('started'))}</td><td>{duration}</td><td class=\"{status}\">{status}{error}</td>"
                    f"<td>{metrics}</td></tr>")
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">"
            f"<title>qlab reports</title><style>{_STYLE}</style></head><body><h1>qlab reports</h1>"
            f"<p>{len(rows)} report(s), generated {generated}</p><table><thead><tr><th>Report</th><th>Notebook</th>"
            f"<th>Parameters</th><th>Date</th><th>Duration</th><th>Status</th><th>Headline metrics</th></tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></body></html>")


def build_index(reports: str | Path | None = None) -> Path:
    """Write reports/index.html listing every report in the folder; returns its path."""
    from qlab.config import reports_dir

    folder = Path(reports) if reports is not None else reports_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / INDEX_NAME
    _write_atomic(path, render_index(list_reports(folder)))
    return path

"""Batch notebook runs: a YAML/JSON list of {notebook, parameters, name} run in parallel processes, one report each.

A failing run is reported with its notebook and parameters and never stops the others; reports/index.html is
rebuilt once at the end.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlab.errors import ConfigError, did_you_mean

BATCH_KEYS = ("notebook", "parameters", "name")


@dataclass(frozen=True)
class BatchItem:
    """One notebook run of a batch: which notebook, its parameters and the report name (unique in the batch)."""

    notebook: str
    parameters: dict[str, Any] = field(default_factory=dict)
    name: str = ""


@dataclass(frozen=True)
class BatchOutcome:
    """What became of one run: its report (None when it failed) or the error, and when it ended after the batch began."""

    item: BatchItem
    html: Path | None
    error: str | None
    finished_after_s: float

    @property
    def ok(self) -> bool:
        return self.error is None


def _slug(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return re.sub(r"[^A-Za-z0-9.=_-]+", "-", text).strip("-")[:40]


def report_name(notebook: str | Path, parameters: Mapping[str, Any] | None = None) -> str:
    """A file-safe report name from the notebook and its parameters, e.g. '01_data--symbol=ETH-USDT_timeframe=1h--1a2b3c'.

    The short hash of the exact parameters keeps names unique where slugs collide ('BTC/USDT' and 'BTC-USDT').
    """
    stem = Path(notebook).stem
    if not parameters:
        return stem
    readable = "_".join(f"{_slug(k)}={_slug(parameters[k])}" for k in sorted(parameters))[:80]  # order-free, like the hash
    digest = hashlib.sha1(json.dumps(parameters, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return f"{stem}--{readable}--{digest}"


def batch_items(entries: Any, where: str = "batch") -> list[BatchItem]:
    """Checked batch items from a list of mappings; names are filled in and must be unique."""
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: expected a non-empty list of {{notebook, parameters, name}} entries")
    items, seen = [], {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or "notebook" not in entry:
            raise ConfigError(f"{where}: entry {i} must be a mapping with at least 'notebook', got {entry!r}")
        for key in entry:
            if key not in BATCH_KEYS:
                raise ConfigError(f"{where}: entry {i} has unknown key {key!r}; use {', '.join(BATCH_KEYS)}."
                                  + did_you_mean(str(key), BATCH_KEYS))
        params = entry.get("parameters") or {}
        if not isinstance(params, Mapping):
            raise ConfigError(f"{where}: entry {i}: parameters must be a mapping of name: value, got {params!r}")
        name = str(entry.get("name") or report_name(entry["notebook"], params))
        if not re.fullmatch(r"[A-Za-z0-9._=-]+", name):
            raise ConfigError(f"{where}: entry {i}: report name {name!r} may hold only letters, digits and . _ = -")
        if name in seen:
            raise ConfigError(f"{where}: entries {seen[name]} and {i} would both write report {name!r}; give one a 'name'")
        seen[name] = i
        items.append(BatchItem(str(entry["notebook"]), dict(params), name))
    return items


def load_batch(path: str | Path) -> list[BatchItem]:
    """The runs listed in a YAML or JSON batch file (see README: `qlab run --batch FILE`)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no batch file {str(p)!r}; check the path")
    try:
        entries = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}") from None
    return batch_items(entries, str(p))


def _run_one(item: BatchItem, reports: str | None, timeout: int) -> str:
    """Worker-process body: one notebook run, without rebuilding the shared index."""
    from qlab.ui.runner import run_notebook

    return str(run_notebook(item.notebook, item.parameters, reports=reports, name=item.name, timeout=timeout, index=False))


def run_batch(items: Sequence[BatchItem] | str | Path, *, workers: int | None = None, reports: str | Path | None = None,
              timeout: int = 600, on_done: Any = None) -> list[BatchOutcome]:
    """Run every item in `workers` processes (default: up to 4, at most one per item); outcomes in the items' order.

    `on_done(outcome)` is called as each run finishes (the CLI prints progress with it).
    """
    import multiprocessing
    import os

    from qlab.accounts import scrub
    from qlab.ui.reports_index import build_index

    if isinstance(items, str | Path):
        items = load_batch(items)
    items = list(items)
    if workers is None:
        workers = min(4, os.cpu_count() or 1, len(items))
    if workers < 1:
        raise ConfigError(f"workers={workers}: give 1 or more worker processes")
    folder = None if reports is None else str(reports)
    outcomes: dict[int, BatchOutcome] = {}
    started = time.perf_counter()
    # spawn: a fresh interpreter per worker, so no lock or thread state of the parent is copied into it
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_run_one, item, folder, timeout): i for i, item in enumerate(items)}
        for future in as_completed(futures):
            i = futures[future]
            try:
                html, error = Path(future.result()), None
            except Exception as exc:  # one failing run is reported and the others go on
                html, error = None, scrub(str(exc)) or type(exc).__name__
            outcomes[i] = BatchOutcome(items[i], html, error, time.perf_counter() - started)
            if on_done is not None:
                on_done(outcomes[i])
    build_index(reports)
    return [outcomes[i] for i in range(len(items))]

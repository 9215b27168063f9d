"""Where qlab keeps things: QLAB_HOME (default ./data), the store file, caches."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent


def sample_dir() -> Path:
    """The bundled sample data: $QLAB_SAMPLE_DIR, the copy inside a wheel, or the repo's data/sample."""
    explicit = os.environ.get("QLAB_SAMPLE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    in_wheel = PACKAGE_ROOT / "sample_data"
    return in_wheel if in_wheel.is_dir() else PACKAGE_ROOT.parent / "data" / "sample"


def qlab_home() -> Path:
    """The data folder: $QLAB_HOME when set, else ./data under the current directory."""
    return Path(os.environ.get("QLAB_HOME", "data")).expanduser()


def store_path() -> Path:
    """The default DuckDB store file: $QLAB_STORE, else QLAB_HOME/qlab.duckdb."""
    explicit = os.environ.get("QLAB_STORE")
    return Path(explicit).expanduser() if explicit else qlab_home() / "qlab.duckdb"


def reports_dir() -> Path:
    """Where HTML reports go: $QLAB_REPORTS, else ./reports."""
    return Path(os.environ.get("QLAB_REPORTS", "reports")).expanduser()

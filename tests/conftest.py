"""Shared fixtures: paths to the real data beside the repo, and a fresh store per test."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: the real CSVs the bundled sample was converted from."""
    assert SHARED_DATA.is_dir(), f"{SHARED_DATA} is missing: CI runs with ../shared beside the repo"
    return SHARED_DATA


@pytest.fixture
def store(tmp_path):
    """An empty store in a temporary folder."""
    from qlab.data.store import Store

    with Store(tmp_path / "test.duckdb") as s:
        yield s


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Never touch the user's ./data or ./reports from a test."""
    monkeypatch.setenv("QLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("QLAB_REPORTS", str(tmp_path / "reports"))

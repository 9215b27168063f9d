"""Dashboard pieces without a browser: layout validation and persistence, panel data from a real store."""

from __future__ import annotations

import json

import pytest

from qlab.data.sample import load_into_store
from qlab.data.store import Store
from qlab.errors import ConfigError
from qlab.ui import dashboard_panels as views
from qlab.ui.dashboard_layout import Layout, PanelSlot, load_layout, save_layout


def test_layout_round_trips_through_its_file_and_defaults_when_missing(tmp_path):
    path = tmp_path / "layout.json"
    assert load_layout(path) == Layout()
    layout = Layout((PanelSlot("equity", "full", 500), PanelSlot("system", "third")))
    save_layout(layout, path)
    assert json.loads(path.read_text())["slots"][0] == {"panel": "equity", "width": "full", "height": 500}
    assert load_layout(path) == layout
    assert load_layout(path).panels == ["equity", "system"]


@pytest.mark.parametrize(("slot", "message"), [
    ({"panel": "equty"}, "did you mean 'equity'"),
    ({"panel": "price", "width": "halff"}, "did you mean 'half'"),
    ({"panel": "price", "height": -5}, "height -5"),
    ({"panel": "price", "colour": "red"}, "unknown layout key"),
])
def test_bad_layouts_name_the_value(slot, message, tmp_path):
    path = tmp_path / "layout.json"
    path.write_text(json.dumps({"slots": [slot]}))
    with pytest.raises(ConfigError, match=message):
        load_layout(path)


def test_a_panel_listed_twice_is_refused():
    with pytest.raises(ConfigError, match="price more than once"):
        Layout((PanelSlot("price"), PanelSlot("price")))


def test_panels_read_quality_usage_and_alerts_from_the_store(tmp_path):
    with Store(tmp_path / "s.duckdb") as store:
        load_into_store(store)
        store.append_usage([{"key_id": "k1", "exchange": "bybit", "endpoint": "fetch_ohlcv", "weight": 2.0,
                             "ts": "2024-01-01T00:00Z", "status": "ok"},
                            {"key_id": "k1", "exchange": "bybit", "endpoint": "fetch_ohlcv", "weight": 1.0,
                             "ts": "2024-01-01T00:01Z", "status": "RateLimitError"}])
        store.append_journal("alerts", "delivered", json.dumps({"message": "BTC crossed 50,000 <script>"}))
        quality = views.quality_rows(store, limit=50)
        usage = views.usage_rows(store)
        alerts = views.recent_alerts(store)
        listing = store.symbols()
    assert len(quality) == min(50, len(listing))
    ada = next(r for r in quality if r["series"].endswith("ADA/BTC 5m"))
    assert ada["bars"] == 5720 and 0 < ada["score"] < 100  # 40 missing bars: not perfect
    assert usage == [{"key": "k1", "exchange": "bybit", "endpoint": "fetch_ohlcv", "calls": 2, "weight": 3.0, "errors": 1,
                      "cost": 0.0, "last": "2024-01-01 00:01:00"}]
    assert alerts[0]["message"].startswith("BTC crossed")
    assert "<script>" not in views.html_table(alerts)  # escaped


def test_system_rows_report_live_and_stale_pid_files(tmp_path):
    import os

    (tmp_path / "paper-alive.pid").write_text(str(os.getpid()))
    (tmp_path / "paper-dead.pid").write_text("999999")
    rows = {r["component"]: r["status"] for r in views.system_rows([("replay", "running")], folder=tmp_path)}
    assert rows["replay"] == "running"
    assert rows["paper-alive"].endswith("running") and "stale" in rows["paper-dead"]
    assert "CPU" in rows["machine"]


def test_html_table_formats_and_escapes():
    text = views.html_table([{"a": "<b>", "n": 1234567.891}])
    assert "&lt;b&gt;" in text and "1,234,567.89" in text
    assert "nothing" in views.html_table([], empty="nothing")


def test_usage_rows_empty_store(tmp_path):
    with Store(tmp_path / "e.duckdb") as store:
        assert views.usage_rows(store) == [] and views.quality_rows(store) == []
        assert views.recent_alerts(store) == []


def test_the_dashboard_builds_headless_and_lists_background_paper_services(tmp_path, monkeypatch):
    import os

    from qlab.ui.dashboard import Dashboard

    monkeypatch.setenv("QLAB_HOME", str(tmp_path))
    run = tmp_path / "run"
    run.mkdir()
    (run / "sma-btc.json").write_text(json.dumps({"name": "sma-btc", "state": "running", "bars": 12, "equity": 10012.5,
                                                  "updated": "2026-11-25T03:00:00+00:00"}))
    (run / "sma-btc.pid").write_text(str(os.getpid()))  # a live process stands in for the service
    dash = Dashboard({"store": str(tmp_path / "none.duckdb"), "layout": str(tmp_path / "layout.json")})
    assert "sma-btc" in dash.services_html.value and "10,012.50" in dash.services_html.value
    assert list(dash.service_pick.options) == ["sma-btc"]
    assert [c.children[0].value for c in dash.page.children][:2] == ["<h4>Controls</h4>", "<h4>Price</h4>"]

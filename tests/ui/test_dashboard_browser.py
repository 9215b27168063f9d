"""The dashboard in a real browser: Voila serves it on 127.0.0.1, headless Chromium (Playwright) drives it.

Checks that the page loads, the charts render with data, the Start button starts a paper replay and the equity panel
updates, the layout editor saves a layout; measures click-to-update time and saves screenshots at desktop and phone
sizes under $QLAB_ARTIFACTS (default: reports/screenshots).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from browser import browser  # noqa: F401  (session fixture: Debian chromium driven by Playwright)

from qlab.data.sample import load_into_store
from qlab.data.store import Store
from qlab.ui import dashboard_server

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("QLAB_ARTIFACTS", REPO / "reports" / "screenshots"))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A store with the bundled data and Voila serving the dashboard over it; yields (url, home)."""
    home = tmp_path_factory.mktemp("dash-home")
    with Store(home / "qlab.duckdb") as store:
        load_into_store(store)
        store.append_journal("alerts", "delivered", json.dumps({"message": "BTC/USDT crossed 40,000"}))
    env = {k: v for k, v in os.environ.items() if k != "QLAB_STORE"} | {"QLAB_HOME": str(home)}
    log = open(home / "voila.log", "w")  # noqa: SIM115 - closed in the finally below
    proc, url = dashboard_server.start(0, {"replay_bars": 400, "replay_speed": 0, "refresh_s": 1.0}, wait_s=90, log=log, env=env)
    try:
        yield url, home
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except Exception:
            proc.kill()
        log.close()


def _open(browser, url, width, height):  # noqa: F811
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url, timeout=120_000)
    page.wait_for_selector(".qlab-panel-price .js-plotly-plot", timeout=120_000)
    return page


def test_dashboard_loads_with_charts_data_and_panels(served, browser):  # noqa: F811
    url, _ = served
    page = _open(browser, url, 1280, 900)
    try:
        candles = page.evaluate("document.querySelector('.qlab-panel-price .js-plotly-plot').data[0].x.length")
        assert candles == 300  # the default price_bars of the latest stored BTC/USDT 1h bars
        page.wait_for_selector("text=BTC/USDT crossed 40,000", timeout=30_000)  # alerts panel from the store journal
        body = page.inner_text("body")
        for title in ("Controls", "Price", "Equity", "Positions and orders", "Alerts", "Data quality", "API usage", "System"):
            assert title in body
        assert "ADA/BTC 5m" in body and "CPU" in body
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard_desktop.png"), full_page=True)
    finally:
        page.close()


def test_phone_sized_screen_stacks_panels_full_width(served, browser):  # noqa: F811
    url, _ = served
    page = _open(browser, url, 390, 844)
    try:
        widths = page.evaluate("[...document.querySelectorAll('.qlab-panel')].map(p => p.getBoundingClientRect().width)")
        viewport = page.evaluate("document.documentElement.clientWidth")
        assert len(widths) == 8 and all(w <= viewport and w >= 0.85 * viewport for w in widths), (widths, viewport)
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport + 1  # no sideways scrolling
        page.screenshot(path=str(ARTIFACTS / "dashboard_phone.png"), full_page=True)
    finally:
        page.close()


def test_start_button_runs_a_paper_replay_and_the_equity_panel_updates(served, browser):  # noqa: F811
    import re

    import qlab

    url, home = served
    page = _open(browser, url, 1280, 900)
    try:
        page.wait_for_selector("text=equity: -")
        started = page.evaluate("performance.now()")
        page.click("text=Start replay")
        page.wait_for_function("!document.body.innerText.includes('equity: -')", timeout=60_000)
        first_update_ms = page.evaluate("performance.now()") - started
        page.wait_for_selector("text=replay finished", timeout=180_000)
        status = page.inner_text("body")
        equity_points = page.evaluate("document.querySelector('.qlab-panel-equity .js-plotly-plot').data[0].x.length")
        page.screenshot(path=str(ARTIFACTS / "dashboard_after_replay.png"), full_page=True)
    finally:
        page.close()
    with Store(home / "qlab.duckdb", read_only=True) as store:
        listing = store.symbols()
        row = listing[(listing.symbol == "BTC/USDT") & (listing.timeframe == "1h")].iloc[0]
        candles = store.candles(row.exchange, "BTC/USDT", "1h").tail(400)
    expected = qlab.paper_trade("sma_cross", candles, symbol="BTC/USDT")
    found = re.search(r"final equity ([\d,.]+)", status)
    assert found, status
    shown = float(found.group(1).replace(",", ""))
    assert shown == pytest.approx(expected.final_equity, abs=0.01)
    assert f"{len(expected.trades)} trades" in status
    assert equity_points == len(expected.equity)
    print(f"\nclick to first visible equity update: {first_update_ms:.0f} ms")
    (ARTIFACTS / "dashboard_timings.json").write_text(json.dumps({"click_to_update_ms": round(first_update_ms, 1)}))


def test_an_alert_rule_added_in_the_page_lands_in_the_alerts_file(served, browser):  # noqa: F811
    from qlab.alerts.config import load_config

    url, home = served
    page = _open(browser, url, 1280, 900)
    try:
        page.click("text=Alert rules")
        page.fill("input[placeholder='name']", "btc-100k")
        page.fill("input[placeholder^='symbol:']", "symbol: BTC/USDT, level: 100000, direction: above")
        page.click("text=Add rule")
        page.wait_for_selector("text=added btc-100k", timeout=30_000)
    finally:
        page.close()
    (rule,) = load_config(home / "alerts.yaml").rules
    assert (rule.name, rule.symbol, rule.level, rule.direction) == ("btc-100k", "BTC/USDT", 100000, "above")

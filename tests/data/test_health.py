"""Exchange health checks against the loopback fake: a healthy fake passes, injected faults fail the named check."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import ccxt.async_support as ccxt
import pytest

import qlab
from qlab.cli import main
from qlab.data.health import CHECKS, CRON_LINE, HealthReport, HealthTarget, acheck, check_exchange, rate_limit_headroom, run_every
from qlab.exchange.ccxt_exchange import CcxtExchange
from qlab.exchange.fake import FakeExchange

KEY, SECRET = "fake-key-0001", "very-secret-value-42"
LINEAR = "BTC/USDT:USDT"
TARGET = HealthTarget("bybit", LINEAR, "1h")


async def _sleep(seconds: float) -> None:
    return None


RETRY = {"max_tries": 2, "sleep": _sleep, "rng": random.Random(0)}


def _run(setup=None, *, signed=True, rate_window=None, **kw):
    async def main():
        async with FakeExchange(rate_window=rate_window) as fake:
            fake.add_account(KEY, SECRET, {"USDT": 1000.0})
            fake.add_candles(LINEAR, "1h", qlab.load_sample(LINEAR, "1h"))
            if setup is not None:
                setup(fake)
            config = {"apiKey": KEY, "secret": SECRET} if signed else {}
            client = fake.point(ccxt.bybit({**config, "enableRateLimit": False, "timeout": 3000}))
            async with CcxtExchange(client, retry=RETRY) as ex:
                checks = await check_exchange(ex, TARGET, credentials=signed, retry=RETRY, **kw)
        return {c.name: c for c in checks}

    return asyncio.run(main())


def test_a_healthy_fake_passes_every_check():
    checks = _run()
    assert list(checks) == list(CHECKS)
    assert {n: c.status for n, c in checks.items()} == {**dict.fromkeys(CHECKS, "ok"), "rate_limit": "skip"}
    assert abs(float(checks["time_drift"].detail.split("=")[1].split("ms")[0])) < 1000
    assert HealthReport(tuple(checks.values())).ok


def test_rate_limit_headroom_is_read_from_the_fakes_bybit_headers():
    window = 1_000_000.0  # fixed windows aligned on the epoch: none ends during the test (once in 11 days)
    roomy = _run(rate_window=(1000, window))["rate_limit"]
    assert roomy.status == "ok", roomy.detail
    used = int(roomy.detail.split(" of ")[0])
    assert roomy.detail == f"{used} of 1000 used ({1 - used / 1000:.0%} left)" and 5 <= used < 1000
    # a window the same checks nearly spend: under the 20 % minimum headroom, a warning (not a failure)
    tight = _run(rate_window=(used + 1, window))
    assert tight["rate_limit"].status == "warn" and tight["rate_limit"].detail.startswith(f"{used} of {used + 1} used")
    assert HealthReport(tuple(tight.values())).ok


@pytest.mark.parametrize(("fault", "failed"), [
    (("/v5/market", "503", 50), "reachability"),
    (("/v5/account", "auth", 5), "credentials"),
    (("/v5/market/tickers", "bad_json", 5), "ticker"),
    (("/v5/market/orderbook", "500", 5), "order_book"),
])
def test_an_injected_fault_fails_the_named_check(fault, failed):
    checks = _run(lambda fake: fake.inject(fault[0], fault[1], times=fault[2]))
    report = HealthReport(tuple(checks.values()))
    assert not report.ok and [c.name for c in report.failures] == [failed]
    assert failed in report.text() and "FAILED" in report.text()
    if failed == "reachability":
        assert all(checks[c].status == "skip" for c in CHECKS[1:])
    assert SECRET not in report.text() and KEY not in report.text()


def test_clock_drift_fails_time_drift():
    checks = _run(clock=lambda: time.time() - 5.0)  # the local clock runs 5 s behind the server
    assert checks["time_drift"].status == "fail" and "+5" in checks["time_drift"].detail
    assert [n for n, c in checks.items() if c.status == "fail"] == ["time_drift"]


def test_rate_limit_headroom_from_the_exchanges_headers():
    assert rate_limit_headroom("bybit", {"X-Bapi-Limit-Status": "15", "X-Bapi-Limit": "20"}) == (5.0, 20.0)
    assert rate_limit_headroom("binance", {"X-MBX-USED-WEIGHT-1M": "5700"}) == (5700.0, 6000.0)
    assert rate_limit_headroom("kucoin", {"gw-ratelimit-remaining": "100", "gw-ratelimit-limit": "2000"}) == (1900.0, 2000.0)
    assert rate_limit_headroom("bybit", {}) is None


def test_run_every_repeats_weekly_with_the_given_sleep():
    waits, reports = [], []
    run_every(lambda: reports.append(HealthReport(())) or reports[-1], sleep=waits.append, times=3)
    assert len(reports) == 3 and waits == [7 * 24 * 3600.0] * 2


def _serve_fake(monkeypatch, faults=()):
    from qlab.exchange import ccxt_client

    loop = asyncio.new_event_loop()
    fake = FakeExchange()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(fake.start(), loop).result(10)
    fake.add_candles(LINEAR, "1h", qlab.load_sample(LINEAR, "1h"))
    for fault in faults:
        fake.inject(*fault)

    def make_client(exchange_id, credentials, mode):
        return fake.point(getattr(ccxt, exchange_id)({"enableRateLimit": False, "timeout": 3000}))

    monkeypatch.setattr(ccxt_client, "make_client", make_client)

    def stop():
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

    return stop


@pytest.mark.parametrize(("faults", "code"), [((), 0), ((("/v5/market/recent-trade", "503", 50),), 1)])
def test_cli_exchange_check_prints_a_table_and_exits_non_zero_on_failure(monkeypatch, capsys, tmp_path, faults, code):
    watch = tmp_path / "watch.yaml"
    watch.write_text(f"entries:\n  - {{exchange: bybit, symbols: ['{LINEAR}'], timeframes: [1h], since: 2024-01-01}}\n")
    stop = _serve_fake(monkeypatch, faults)
    try:
        assert main(["exchange", "check", "--watchlist", str(watch)]) == code
    finally:
        stop()
    out = capsys.readouterr().out
    assert "reachability" in out and "order_book" in out
    assert ("all checks passed" in out) == (code == 0)
    if code:
        assert "FAILED: bybit trades" in out


def test_failures_call_the_alert_hook_once_with_the_report(monkeypatch):
    stop = _serve_fake(monkeypatch, [("/v5/market", "503", 100)])
    alerts = []
    try:
        report = asyncio.run(acheck([TARGET], on_failure=alerts.append, retry=RETRY))
    finally:
        stop()
    assert alerts == [report] and [c.name for c in report.failures] == ["reachability"]


def test_cli_cron_prints_the_documented_line(capsys):
    assert main(["exchange", "check", "--cron"]) == 0
    assert CRON_LINE in capsys.readouterr().out

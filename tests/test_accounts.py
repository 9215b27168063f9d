"""Accounts and credentials: 0600 files, env-var accounts, live opt-in, key checks, and secrets that never show."""

from __future__ import annotations

import copy
import logging
import os
import pickle
import stat

import ccxt
import pytest

from qlab import accounts as acc
from qlab.accounts import Account, Secret, add_account, check_account, list_accounts, load_account, remove_account
from qlab.cli import main
from qlab.errors import ConfigError, NotFoundError

KEY = "KEY-9f8e7d6c5b4a"
SECRET = "SECRET-0a1b2c3d4e5f6g7h"
PASSWORD = "PASS-zz11yy22"


@pytest.fixture
def creds(tmp_path, monkeypatch):
    path = tmp_path / "cfg" / "credentials.toml"
    monkeypatch.setenv("QLAB_CREDENTIALS", str(path))
    for var in list(os.environ):
        if var.startswith("QLAB_") and var.endswith(("_API_KEY", "_SECRET", "_PASSWORD", "_EXCHANGE", "_MODE")):
            monkeypatch.delenv(var)
    return path


def _assert_no_secret(*texts: str) -> None:
    for text in texts:
        for value in (KEY, SECRET, PASSWORD):
            assert value not in text


def test_file_is_created_0600_and_round_trips(creds):
    account = add_account("bybit-demo", "bybit", "demo", KEY, SECRET)
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    loaded = load_account("bybit-demo")
    assert loaded == account and loaded.api_key.reveal() == KEY and loaded.secret.reveal() == SECRET
    assert loaded.mode == "demo" and loaded.source == "file"
    add_account("kc", "kucoin", "live", KEY, 'se"c\\ret\n', "p", allow_live=True)  # escaping survives TOML
    assert load_account("kc", allow_live=True).secret.reveal() == 'se"c\\ret\n'
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    remove_account("kc")
    assert [a.name for a in list_accounts()] == ["bybit-demo"]
    with pytest.raises(ConfigError, match="already exists"):
        add_account("bybit-demo", "bybit", "testnet", KEY, SECRET)
    add_account("bybit-demo", "bybit", "testnet", KEY, SECRET, replace=True)
    assert load_account("bybit-demo").mode == "testnet"


def test_a_group_or_world_readable_file_is_refused(creds):
    add_account("a", "binance", "testnet", KEY, SECRET)
    os.chmod(creds, 0o644)
    with pytest.raises(ConfigError, match=r"mode 0644.*chmod 600") as info:
        load_account("a")
    assert str(creds) in str(info.value)
    with pytest.raises(ConfigError, match="chmod 600"):
        list_accounts()


def test_env_var_accounts_and_overrides(creds, monkeypatch):
    monkeypatch.setenv("QLAB_MYBYBIT_EXCHANGE", "bybit")
    monkeypatch.setenv("QLAB_MYBYBIT_MODE", "testnet")
    monkeypatch.setenv("QLAB_MYBYBIT_API_KEY", KEY)
    monkeypatch.setenv("QLAB_MYBYBIT_SECRET", SECRET)
    account = load_account("mybybit")
    assert (account.exchange, account.mode, account.source) == ("bybit", "testnet", "env")
    assert account.secret.reveal() == SECRET and account.password is None
    add_account("file-acc", "binance", "demo", "k" * 8, "s" * 8)
    monkeypatch.setenv("QLAB_FILE_ACC_SECRET", SECRET)  # '-' becomes '_' in variable names
    overridden = load_account("file-acc")
    assert overridden.secret.reveal() == SECRET and overridden.api_key.reveal() == "k" * 8
    assert overridden.source == "file+env"
    rows = {r.name: r for r in list_accounts()}
    assert rows["mybybit"].api_key == "set" and rows["mybybit"].password == "missing"
    monkeypatch.delenv("QLAB_MYBYBIT_MODE")
    with pytest.raises(ConfigError, match="QLAB_MYBYBIT_MODE"):
        load_account("mybybit")


def test_unknown_names_suggest(creds):
    with pytest.raises(ConfigError, match="did you mean 'bybit'"):
        add_account("x", "bybitt", "demo", KEY, SECRET)
    with pytest.raises(ConfigError, match="did you mean 'testnet'"):
        add_account("x", "bybit", "testnt", KEY, SECRET)
    with pytest.raises(ConfigError, match="kucoin has no testnet"):  # ccxt 4.5 has no KuCoin sandbox
        add_account("x", "kucoin", "testnet", KEY, SECRET)
    with pytest.raises(ConfigError, match="account name"):
        add_account("bad name", "bybit", "demo", KEY, SECRET)
    add_account("bybit-demo", "bybit", "demo", KEY, SECRET)
    with pytest.raises(NotFoundError, match="did you mean 'bybit-demo'"):
        load_account("bybit-dmeo")


def test_live_needs_an_explicit_opt_in(creds):
    with pytest.raises(ConfigError, match="allow_live=True"):
        add_account("real", "binance", "live", KEY, SECRET)
    add_account("real", "binance", "live", KEY, SECRET, allow_live=True)
    with pytest.raises(ConfigError, match=r"live account.*--live"):
        load_account("real")
    assert load_account("real", allow_live=True).mode == "live"
    with pytest.raises(ConfigError, match="allow_live"):
        check_account(load_account("real", allow_live=True), lambda a: None)
    assert main(["accounts", "check", "real"]) == 2


def test_secrets_never_show_in_reprs_logs_or_errors(creds, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    account = add_account("a", "kucoin", "live", KEY, SECRET, PASSWORD, allow_live=True)
    texts = [repr(account), str(account), f"{account}", f"{account.secret}", f"{account.secret:>40}",
             repr(account.api_key), str(list_accounts()), repr(copy.deepcopy(account))]
    assert "***" in texts[0] and Secret(KEY) == account.api_key and str(Secret(KEY)) == "***"
    with pytest.raises(TypeError):
        pickle.dumps(account.secret)
    logging.getLogger("qlab.accounts").warning("leaked %s and %s", KEY, SECRET)
    logging.getLogger("some.library").error("url with key=%s", account.api_key.reveal())
    try:
        raise RuntimeError(f"boom {SECRET}")
    except RuntimeError:
        logging.getLogger("qlab").exception("failure")
    print(account, account.password)
    assert acc.scrub(f"x{PASSWORD}y") == "x***y"
    out = capsys.readouterr()
    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    _assert_no_secret(*texts, out.out, out.err, logged)
    assert "leaked *** and ***" in caplog.text and "boom ***" in caplog.text


class FakeClient:
    def __init__(self, outcome):
        self.outcome, self.closed = outcome, False

    async def fetch_balance(self):
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    async def close(self):
        self.closed = True


@pytest.mark.parametrize(("error", "status", "words"), [
    (ccxt.AuthenticationError(f'bybit {{"retCode":10003,"retMsg":"API key is invalid.","key":"{KEY}"}}'), "auth",
     "authentication failed for account 'a'"),
    (ccxt.PermissionDenied(f"bybit permission denied for {KEY} sig {SECRET}"), "permission", "missing permissions"),
    (ccxt.NetworkError("bybit GET https://api-demo.bybit.com timed out"), "network", "unreachable"),
    (ValueError(f"odd {SECRET}"), "error", "checking account 'a'"),
])
def test_check_reports_failures_clearly_without_secrets(creds, caplog, error, status, words):
    add_account("a", "bybit", "demo", KEY, SECRET)
    client = FakeClient(error)
    result = check_account("a", lambda account: client)
    assert (result.ok, result.status) == (False, status) and words in result.message and client.closed
    _assert_no_secret(result.message, repr(result), caplog.text)


def test_check_ok_lists_held_currencies(creds):
    add_account("a", "bybit", "testnet", KEY, SECRET)
    seen = {}

    def factory(account: Account):
        seen["creds"] = account.ccxt_credentials()
        return FakeClient({"total": {"USDT": 1000.0, "BTC": 0.0, "ETH": 1.5}})

    result = check_account("a", factory)
    assert result.ok and result.currencies == ("ETH", "USDT") and seen["creds"]["secret"] == SECRET


def test_make_client_switches_to_demo_and_testnet_without_network():
    from qlab.exchange.ccxt_client import make_client, supported_modes

    creds = {"apiKey": KEY, "secret": SECRET, "password": None}
    assert supported_modes("bybit") == ("demo", "testnet", "live")
    assert "testnet" in supported_modes("binance") and supported_modes("kucoin") == ("live",)
    demo = make_client("bybit", creds, "demo")
    assert "api-demo" in str(demo.urls["api"]) and demo.apiKey == KEY
    testnet = make_client("bybit", creds, "testnet")
    assert "testnet" in str(testnet.urls["api"])
    live = make_client("binance", creds, "live")
    assert "testnet" not in str(live.urls["api"])
    with pytest.raises(ConfigError, match="kucoin has no testnet"):
        make_client("kucoin", creds, "testnet")
    with pytest.raises(ConfigError, match="did you mean 'binance'"):
        make_client("binanse", creds, "live")


def test_cli_add_list_remove_round_trip(creds, monkeypatch, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("QLAB_BYDEMO_API_KEY", KEY)
    monkeypatch.setenv("QLAB_BYDEMO_SECRET", SECRET)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["accounts", "add", "bydemo", "--exchange", "bybit", "--mode", "demo"]) == 0
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    monkeypatch.delenv("QLAB_BYDEMO_API_KEY")
    monkeypatch.delenv("QLAB_BYDEMO_SECRET")
    assert main(["accounts", "list"]) == 0
    listing = capsys.readouterr().out
    assert "bydemo" in listing and "bybit" in listing and "demo" in listing and "set" in listing
    assert main(["accounts", "add", "live1", "--exchange", "binance", "--mode", "live"]) == 2  # no --live
    assert "--live" in capsys.readouterr().err
    assert main(["accounts", "add", "nokey", "--exchange", "bybit", "--mode", "demo"]) == 2  # no env, no TTY
    assert "QLAB_NOKEY_API_KEY" in capsys.readouterr().err
    assert main(["accounts", "add", "x", "--exchange", "bybt", "--mode", "demo"]) == 2
    assert "did you mean 'bybit'" in capsys.readouterr().err
    assert main(["accounts", "remove", "bydemo"]) == 0
    assert main(["accounts", "remove", "bydemo"]) == 2
    assert main(["accounts", "list"]) == 0
    out = capsys.readouterr()
    assert "no accounts" in out.out
    _assert_no_secret(listing, out.out, out.err, caplog.text, creds.read_text())

"""The dashboard's alert-rule editor writes the alerts file the alert engine reads, validated, private and atomic."""

from __future__ import annotations

import os
import stat

import pytest

from qlab.alerts.config import load_config
from qlab.errors import ConfigError, NotFoundError
from qlab.ui import alert_rules


def test_added_rules_are_what_the_engine_loads_and_removing_takes_them_out(tmp_path):
    path = tmp_path / "alerts.yaml"
    path.write_text("channels:\n  hook: {type: webhook, url: 'http://127.0.0.1:9/hook'}\nrules: []\n")
    os.chmod(path, 0o600)
    alert_rules.add_rule({"type": "price_cross", "name": "btc-high", **alert_rules.parse_settings(
        "symbol: BTC/USDT, level: 100000, channels: [hook]")}, path)
    alert_rules.add_rule({"type": "drawdown", "name": "dd", "pct": 5}, path)
    config = load_config(path)
    assert [r.name for r in config.rules] == ["btc-high", "dd"]
    assert config.rules[0].level == 100000 and list(config.rules[0].channels) == ["hook"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    alert_rules.remove_rule("btc-high", path)
    assert [r["name"] for r in alert_rules.list_rules(path)] == ["dd"]


@pytest.mark.parametrize(("spec", "message"), [
    ({"type": "price_crosss", "name": "x", "symbol": "BTC/USDT", "level": 1}, "did you mean 'price_cross'"),
    ({"type": "price_cross", "name": "x", "symbol": "BTC/USDT", "levle": 1}, "levle"),
    ({"type": "price_cross", "name": "x", "symbol": "BTC/USDT", "level": 1, "channels": ["slak"]}, "unknown channel 'slak'"),
])
def test_bad_rules_are_refused_and_nothing_is_written(tmp_path, spec, message):
    path = tmp_path / "alerts.yaml"
    path.write_text("channels:\n  slack: {type: webhook, format: slack, url: '${QLAB_SLACK}'}\nrules: []\n")
    before = path.read_text()
    with pytest.raises(ConfigError, match=message):
        alert_rules.add_rule(spec, path)
    assert path.read_text() == before  # the ${VAR} placeholder was never expanded into the file


def test_duplicate_names_unknown_removals_and_bad_settings_text(tmp_path):
    path = tmp_path / "alerts.yaml"
    alert_rules.add_rule({"type": "drawdown", "name": "dd", "pct": 5}, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # a new file is created private
    with pytest.raises(ConfigError, match="exists already"):
        alert_rules.add_rule({"type": "drawdown", "name": "dd", "pct": 7}, path)
    with pytest.raises(NotFoundError, match="did you mean 'dd'"):
        alert_rules.remove_rule("ddd", path)
    with pytest.raises(ConfigError, match="key: value"):
        alert_rules.parse_settings("symbol BTC/USDT level")

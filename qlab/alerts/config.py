"""The alerts file: channels, rules and engine settings in YAML (or TOML / JSON), with secrets from the environment.

    settings: {dedup_window: 5m, retries: 3, backoff: 1.0}
    channels:
      mail: {type: email, host: smtp.example.com, port: 587, security: starttls, username: me@example.com,
             password: ${QLAB_SMTP_PASSWORD}, sender: me@example.com, to: [me@example.com]}
      slack: {type: webhook, format: slack, url: ${QLAB_SLACK_WEBHOOK}}
    rules:
      - {name: btc-100k, type: price_cross, symbol: BTC/USDT, level: 100000, direction: above, channels: [slack]}

`${VAR}` is replaced by the environment variable VAR (an error when unset). Secret fields (password, token,
auth_token, and the url of Slack/Discord webhooks) written literally are accepted only when the file is private
(mode 0600), as for credentials. The default file is $QLAB_ALERTS, else QLAB_HOME/alerts.yaml.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlab.alerts.channels import CHANNEL_TYPES, SECRET_FIELDS, Channel
from qlab.alerts.rules import Rule, rule_from_dict
from qlab.config import qlab_home
from qlab.errors import ConfigError, did_you_mean

TOP_KEYS = ("settings", "channels", "rules")
SETTING_KEYS = ("dedup_window", "retries", "backoff", "max_backoff", "timeout", "tick")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_RENAMED = {"from": "sender"}  # 'from' reads naturally in a file but is a Python keyword


@dataclass
class AlertConfig:
    """What an alerts file defines: channels, rules and AlertEngine settings."""

    channels: list[Channel] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


def alerts_path() -> Path:
    """The default alerts file: $QLAB_ALERTS, else QLAB_HOME/alerts.yaml."""
    explicit = os.environ.get("QLAB_ALERTS")
    return Path(explicit).expanduser() if explicit else qlab_home() / "alerts.yaml"


def _expand(value: Any, where: str) -> tuple[Any, bool]:
    """`value` with ${VAR} replaced from the environment; the flag says whether it held a ${VAR}."""
    if not isinstance(value, str) or "${" not in value:
        return value, False

    def env(m: re.Match) -> str:
        name = m.group(1)
        if not os.environ.get(name):
            raise ConfigError(f"{where}: environment variable {name} is not set; export it (its value stays out of the file)")
        return os.environ[name]

    return _VAR.sub(env, value), True


def channel_from_dict(name: str, spec: dict[str, Any], where: str, private: bool) -> Channel:
    """A channel from its config mapping; literal secrets need a private file."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{where}: channel {name!r} must be a mapping with a type ({', '.join(CHANNEL_TYPES)})")
    spec = dict(spec)
    kind = spec.pop("type")
    if kind not in CHANNEL_TYPES:
        raise ConfigError(f"{where}: channel {name!r} has type {kind!r}; use {', '.join(CHANNEL_TYPES)}."
                          + did_you_mean(str(kind), CHANNEL_TYPES))
    kwargs: dict[str, Any] = {}
    for key, value in spec.items():
        value, from_env = _expand(value, f"{where}: channel {name!r} {key}")
        # a Slack/Discord webhook URL is itself the credential; a generic or Telegram base URL is not
        secret = key in SECRET_FIELDS and (key != "url" or spec.get("format") in ("slack", "discord"))
        if secret and value and not from_env and not private:
            raise ConfigError(f"{where}: channel {name!r} has a literal {key} but the file can be read by group or others; "
                              f"write {key}: ${{QLAB_{name.upper().replace('-', '_')}_{key.upper()}}} and export that "
                              f"variable, or run `chmod 600 {where}`")
        kwargs[_RENAMED.get(key, key)] = value
    try:
        return CHANNEL_TYPES[kind](name, **kwargs)
    except TypeError as exc:  # an unknown or missing keyword: name it with the accepted ones
        import inspect

        accepted = [p for p in inspect.signature(CHANNEL_TYPES[kind].__init__).parameters if p not in ("self", "name")]
        accepted = ["from" if p == "sender" else p for p in accepted]
        bad = re.findall(r"'(\w+)'", str(exc))
        hint = did_you_mean(bad[0], accepted) if bad else ""
        raise ConfigError(f"{where}: channel {name!r} ({kind}): {exc}; its keys are {', '.join(accepted)}.{hint}") from None


def parse_config(data: Any, where: str = "alerts config", private: bool = True) -> AlertConfig:
    """An AlertConfig from a parsed mapping (the file's contents)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with {', '.join(TOP_KEYS)}")
    for key in data:
        if key not in TOP_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r}; use {', '.join(TOP_KEYS)}." + did_you_mean(str(key), TOP_KEYS))
    settings = dict(data.get("settings") or {})
    for key in settings:
        if key not in SETTING_KEYS:
            raise ConfigError(f"{where}: unknown setting {key!r}; use {', '.join(SETTING_KEYS)}." + did_you_mean(str(key), SETTING_KEYS))
    channels_spec = data.get("channels") or {}
    if not isinstance(channels_spec, dict):
        raise ConfigError(f"{where}: channels must be a mapping of name -> {{type: ..., ...}}")
    channels = [channel_from_dict(str(name), spec, where, private) for name, spec in channels_spec.items()]
    rules_spec = data.get("rules") or []
    if not isinstance(rules_spec, list):
        raise ConfigError(f"{where}: rules must be a list of {{type: ..., name: ..., ...}}")
    rules = [rule_from_dict(spec, f"{where}: rules[{i}]") for i, spec in enumerate(rules_spec)]
    names = [c.name for c in channels]
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise ConfigError(f"{where}: two rules are named {rule.name!r}; rule names must be unique")
        seen.add(rule.name)
        for channel in rule.channels:
            if channel not in names:
                raise ConfigError(f"{where}: rule {rule.name!r} sends to unknown channel {channel!r}; channels: "
                                  f"{', '.join(names) or 'none'}." + did_you_mean(channel, names))
    return AlertConfig(channels, rules, settings)


def load_config(path: str | Path | None = None) -> AlertConfig:
    """Read an alerts file (.yaml/.yml, .toml or .json) into channels, rules and settings."""
    import yaml

    p = Path(path) if path is not None else alerts_path()
    if not p.is_file():
        raise ConfigError(f"no alerts file {str(p)!r}; write one (see the README's alerts section) or set QLAB_ALERTS")
    private = os.name == "nt" or not (p.stat().st_mode & 0o077)
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(text)
        elif p.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None)  # YAML's message quotes the line, which may hold a secret: give the place only
        place = f"line {mark.line + 1}, column {mark.column + 1}" if mark else str(exc)
        raise ConfigError(f"{p}: not valid {p.suffix.lstrip('.').upper() or 'YAML'} ({place}); fix the file") from None
    return parse_config(data, str(p), private)

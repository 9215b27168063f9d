"""Edit the alert rules of the alerts file (QLAB_HOME/alerts.yaml) from the dashboard: list, add, remove.

The file is read raw (`${VAR}` placeholders stay as written, so no secret is ever expanded into it), each new rule is
validated by `qlab.alerts.rules.rule_from_dict` before anything is written, and the file is replaced atomically with
its permissions kept (a private 0600 file stays private). Comments in the file are not kept: YAML dumping drops them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from qlab.alerts.config import alerts_path
from qlab.alerts.rules import RULE_TYPES, rule_from_dict
from qlab.errors import ConfigError, NotFoundError, did_you_mean


def _path(path: str | Path | None) -> Path:
    return Path(path) if path is not None else alerts_path()


def read_raw(path: str | Path | None = None) -> dict[str, Any]:
    """The alerts file as written (an empty config when it does not exist yet)."""
    target = _path(path)
    if not target.exists():
        return {"rules": []}
    try:
        data = yaml.safe_load(target.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"the alerts file {str(target)!r} is not valid YAML ({exc}); fix it or move it away") from None
    if not isinstance(data, dict):
        raise ConfigError(f"the alerts file {str(target)!r} must hold a mapping with settings, channels and rules")
    data.setdefault("rules", [])
    return data


def _write(data: dict[str, Any], path: str | Path | None) -> Path:
    target = _path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o600
    tmp = target.with_name(target.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as out:
        yaml.safe_dump(data, out, sort_keys=False, allow_unicode=True)
    os.chmod(tmp, mode)
    tmp.replace(target)
    return target


def list_rules(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The rules of the file as mappings (type, name and their settings)."""
    return [dict(r) for r in read_raw(path)["rules"]]


def add_rule(spec: dict[str, Any], path: str | Path | None = None) -> dict[str, Any]:
    """Validate a rule mapping ({type, name, ...}) and append it to the file; a name already used is refused."""
    spec = {k: v for k, v in dict(spec).items() if v not in (None, "")}
    rule_from_dict(dict(spec), where="new rule")  # raises a ConfigError naming the bad key or value
    data = read_raw(path)
    names = [r.get("name") for r in data["rules"]]
    if spec.get("name") in names:
        raise ConfigError(f"an alert rule named {spec['name']!r} exists already; pick another name or remove it first")
    known_channels = set((data.get("channels") or {}).keys()) | {"dashboard"}
    for channel in spec.get("channels") or []:
        if channel not in known_channels:
            raise ConfigError(f"rule {spec.get('name')!r} sends to unknown channel {channel!r}; the file defines "
                              f"{', '.join(sorted(known_channels))}." + did_you_mean(channel, known_channels))
    data["rules"].append(spec)
    _write(data, path)
    return spec


def remove_rule(name: str, path: str | Path | None = None) -> None:
    """Remove the rule called `name` from the file."""
    data = read_raw(path)
    names = [r.get("name") for r in data["rules"]]
    if name not in names:
        raise NotFoundError(f"no alert rule named {name!r}; the file has {', '.join(map(str, names)) or 'none'}."
                            + did_you_mean(name, [str(n) for n in names]))
    data["rules"] = [r for r in data["rules"] if r.get("name") != name]
    _write(data, path)


def parse_settings(text: str) -> dict[str, Any]:
    """Rule settings typed in the dashboard as YAML flow text: 'symbol: BTC/USDT, level: 100000' -> a mapping."""
    text = text.strip()
    if not text:
        return {}
    try:
        value = yaml.safe_load("{" + text + "}" if not text.startswith("{") else text)
    except yaml.YAMLError:
        raise ConfigError(f"rule settings {text!r} are not 'key: value, key: value'; e.g. 'symbol: BTC/USDT, level: 100000'") from None
    if not isinstance(value, dict) or any(v is None for v in value.values()):
        raise ConfigError(f"rule settings {text!r} must be 'key: value' pairs; e.g. 'symbol: BTC/USDT, level: 100000'")
    return value


RULE_TYPE_NAMES = tuple(RULE_TYPES)

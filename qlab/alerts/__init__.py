"""Alerts: rules on prices, strategies and the system, delivered by email, webhook, SMS and the dashboard.

    from qlab.alerts import AlertEngine, PriceCross, WebhookChannel, emit
    engine = AlertEngine([PriceCross("btc-70k", symbol="BTC/USDT", level=70_000)],
                         [WebhookChannel("slack", url, format="slack")]).start()
    emit("price", symbol="BTC/USDT", price=70_100.0)   # from anywhere in the process

Names are imported lazily, so `import qlab.alerts` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "AlertEvent": "events", "Alert": "events", "EventBus": "events", "emit": "events", "BUS": "events",
    "EVENT_KINDS": "events", "install_event_bridge": "events",
    "Rule": "rules", "Trigger": "rules", "PriceCross": "rules", "PriceMove": "rules", "SignalFired": "rules",
    "DrawdownBeyond": "rules", "DailyPnlBelow": "rules", "PositionAbove": "rules", "TraderDown": "rules",
    "FeedStale": "rules", "QualityBelow": "rules", "BudgetThreshold": "rules", "HealthFailed": "rules", "RULE_TYPES": "rules",
    "rule_from_dict": "rules",
    "Channel": "channels", "EmailChannel": "channels", "WebhookChannel": "channels", "SmsChannel": "channels",
    "DashboardChannel": "channels", "LogChannel": "channels", "DeliveryError": "channels", "CHANNEL_TYPES": "channels",
    "AlertEngine": "engine", "Delivery": "engine", "delivery_log": "engine",
    "AlertConfig": "config", "load_config": "config", "parse_config": "config", "alerts_path": "config",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        from qlab.errors import did_you_mean

        raise AttributeError(f"module 'qlab.alerts' has no attribute {name!r}." + did_you_mean(name, _LAZY))
    value = getattr(importlib.import_module(f"qlab.alerts.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

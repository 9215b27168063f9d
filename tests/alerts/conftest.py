"""Fixtures of the alert tests: real SMTP and HTTP servers on 127.0.0.1 (see alert_servers.py)."""

from alert_servers import _print_latencies, http_server, smtp_server, smtp_tls_server  # noqa: F401

"""`qlab dashboard`: serve qlab/ui/dashboard.ipynb with Voila on 127.0.0.1 and print its URL."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from qlab.errors import ConfigError

NOTEBOOK = Path(__file__).with_name("dashboard.ipynb")
ENV_PARAMS = "QLAB_DASHBOARD"  # JSON of dashboard parameters handed to the kernel Voila starts


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def voila_command(port: int, notebook: Path = NOTEBOOK) -> list[str]:
    """The Voila command line: loopback only, no browser, a long kernel timeout so replays may run for hours."""
    return [sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
            "--theme=light", "--MappingKernelManager.cull_idle_timeout=0", "--show_tracebacks=False"]


def start(port: int = 0, params: dict[str, Any] | None = None, *, wait_s: float = 60.0, log: Any = None,
          env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start Voila in a subprocess and wait until it answers; returns (process, url). The caller stops the process."""
    port = port or free_port()
    if not 0 < port < 65536:
        raise ConfigError(f"port {port} is not a TCP port; use 1..65535, or 0 for a free one")
    env = {**(os.environ if env is None else env), ENV_PARAMS: json.dumps(params or {})}
    proc = subprocess.Popen(voila_command(port), env=env, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ConfigError(f"voila exited with status {proc.returncode} before serving {url}; is port {port} taken?")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.3)
    proc.terminate()
    raise ConfigError(f"voila did not answer on {url} within {wait_s:.0f} s")


def params_from_env() -> dict[str, Any]:
    """Parameters `qlab dashboard` passed to the kernel (empty when the notebook runs elsewhere)."""
    text = os.environ.get(ENV_PARAMS, "")
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        raise ConfigError(f"{ENV_PARAMS}={text!r} is not JSON; unset it or give a JSON object") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{ENV_PARAMS} must be a JSON object of dashboard parameters, not {text!r}")
    return value

"""Headless Chromium for browser tests: Debian's `chromium` package driven by Playwright (the session fixture `browser`).

When /usr/bin/chromium is missing and we are root, `apt-get install chromium` installs it (`apt-get update` first if
that fails); when that is impossible the browser tests are skipped with the reason. Playwright drives that binary
(no browser download).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_MODE": "a"}
APT_INSTALL = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]


def chromium_path() -> str | None:
    """The Chromium binary, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _apt(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(args, env={**os.environ, **APT_ENV}, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def install_chromium() -> str | None:
    """apt-get install chromium; None when it worked, else why it could not."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "Chromium is missing and installing it needs root and apt-get (apt-get install chromium)"
    started = time.monotonic()
    try:
        done = _apt(APT_INSTALL, 600)
        if done.returncode != 0:
            if _apt(["apt-get", "update", "-q"], 300).returncode != 0:
                return "apt-get update failed (no package mirror?)"
            done = _apt(APT_INSTALL, 600)
    except subprocess.TimeoutExpired as exc:
        return f"apt-get did not finish within {exc.timeout:.0f} s"
    if done.returncode != 0:
        return f"apt-get install chromium failed: {(done.stderr or done.stdout).strip()[-300:]}"
    print(f"installed chromium with apt-get in {time.monotonic() - started:.0f} s")
    return None


@pytest.fixture(scope="session")
def browser():
    """A Playwright Chromium browser (headless, Debian's binary), closed at the end of the session."""
    path = chromium_path()
    if path is None:
        why = install_chromium()
        path = chromium_path()
        if path is None:
            pytest.skip(why or "no chromium after installing it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()

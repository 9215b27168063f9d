"""A throwaway PostgreSQL server on 127.0.0.1 for tests: the session fixture `postgres_url`.

Uses the server binaries of Debian's postgresql package (/usr/lib/postgresql/<version>/bin, or initdb and
pg_ctl on PATH). When they are missing and we are root, `apt-get install postgresql` installs them
(`apt-get update` first if the install fails); when that is impossible the tests that need the server are
skipped with the reason. The server gets a fresh data folder in a temporary directory, a free port on
127.0.0.1, its own socket folder, trust authentication and no fsync; it runs as the `postgres` user when
we are root (the server refuses root), and is stopped and deleted at the end of the session, also when
a test fails. A cluster that apt's post-install script starts on its own is stopped again.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_MODE": "a"}
APT_INSTALL = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "-o", "Dpkg::Options::=--force-confdef",
               "-o", "Dpkg::Options::=--force-confold", "postgresql"]
INSTALL_TIMEOUT_S = 600


def find_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl (the newest Debian version first), or None."""
    def version(path: str) -> tuple[int, ...]:
        parts = Path(path).parent.name.split(".")
        return tuple(int(p) for p in parts if p.isdigit())

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    for folder in candidates:
        if all(os.access(Path(folder) / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    return None


def _apt(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(args, env={**os.environ, **APT_ENV}, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def install_postgres() -> str | None:
    """apt-get install postgresql; None when it worked, else why it could not."""
    if os.geteuid() != 0:
        return "PostgreSQL server binaries are missing and installing them needs root (apt-get install postgresql)"
    if shutil.which("apt-get") is None:
        return "PostgreSQL server binaries are missing and there is no apt-get to install them"
    started = time.monotonic()
    try:
        done = _apt(APT_INSTALL, INSTALL_TIMEOUT_S)
        if done.returncode != 0:  # a fresh machine has no package lists yet
            update = _apt(["apt-get", "update", "-q"], 300)
            if update.returncode != 0:
                return f"apt-get update failed (no network?): {(update.stderr or update.stdout).strip()[-300:]}"
            done = _apt(APT_INSTALL, INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        return f"apt-get did not finish within {exc.timeout:.0f} s: {' '.join(exc.cmd)}"
    if done.returncode != 0:
        return f"apt-get install postgresql failed: {(done.stderr or done.stdout).strip()[-300:]}"
    _stop_packaged_clusters()
    print(f"installed postgresql with apt-get in {time.monotonic() - started:.0f} s")
    return None


def _stop_packaged_clusters() -> None:
    """Stop a 'main' cluster the package's post-install script may have started (we use our own)."""
    if shutil.which("pg_lsclusters") is None:
        return
    listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False).stdout
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[3] == "online":
            subprocess.run(["pg_ctlcluster", fields[0], fields[1], "stop"], capture_output=True, check=False, timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """initdb + pg_ctl start/stop in a temporary folder; `url` once started."""

    def __init__(self, bindir: Path, database: str = "qlab_test") -> None:
        self.bindir, self.database = bindir, database
        self.root = Path(tempfile.mkdtemp(prefix="qlab-pg-"))
        self.data, self.sockets, self.log = self.root / "data", self.root / "sock", self.root / "server.log"
        self.sockets.mkdir()
        self.as_user: dict = {}
        if os.geteuid() == 0:  # the server refuses to run as root: hand the folder to the postgres user
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no 'postgres' user to run the server as") from None
            for path in (self.root, self.sockets):
                os.chown(path, user.pw_uid, user.pw_gid)
            self.as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        self.port: int | None = None

    def _run(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bindir / tool), *args], capture_output=True, text=True, timeout=timeout,
                              cwd=self.root, check=False, **self.as_user)

    def start(self) -> str:
        done = self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale",
                         "--no-sync")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.strip()[-500:]}")
        for _ in range(3):  # another process may take the free port between the probe and the start
            port = free_port()
            opts = (f"-c listen_addresses=127.0.0.1 -p {port} -k {self.sockets} -c fsync=off -c synchronous_commit=off "
                    "-c full_page_writes=off")
            done = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", opts, "start")
            if done.returncode == 0:
                self.port = port
                break
        else:
            tail = self.log.read_text()[-800:] if self.log.exists() else done.stderr
            raise RuntimeError(f"the PostgreSQL server did not start: {tail}")
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{self.database}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.database}"

    def stop(self) -> None:
        try:
            if self.port is not None:
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url():
    """`postgresql+psycopg://postgres@127.0.0.1:PORT/qlab_test` of a server started for this session."""
    bindir = find_bindir()
    if bindir is None:
        reason = install_postgres()
        if reason is not None:
            pytest.skip(reason)
        bindir = find_bindir()
        if bindir is None:
            pytest.skip("apt-get installed postgresql but no initdb/pg_ctl was found under /usr/lib/postgresql/*/bin")
    server = PostgresServer(bindir)
    try:
        yield server.start()
    finally:
        server.stop()

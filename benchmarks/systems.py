"""Start the systems under test as subprocesses, wait for their first answer, stop them and
every process they started (by pid, never by name), and check that their ports are free."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TAG = "FINSERVE_BENCH_TAG"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def http(url: str, body: bytes | None = None, timeout: float = 30.0,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Status and body of a GET (or a POST of JSON, or of ``headers``' type, when ``body``
    is given)."""
    sent = {"content-type": "application/json", **(headers or {})} if body else {}
    request = urllib.request.Request(url, data=body, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


@dataclass
class System:
    """A server subprocess in its own session, with every descendant it was seen with."""

    name: str
    cmd: list[str]
    port: int
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    extra_ports: list[int] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    seen: set[tuple[int, int]] = field(default_factory=set)  # (pid, start time)
    stop_signal: int = signal.SIGINT
    tag: str = field(default_factory=lambda: uuid.uuid4().hex)  # in every descendant's env

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.cmd, cwd=ROOT, env={**os.environ, **self.env, TAG: self.tag}, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        self.started = time.perf_counter()

    def track(self) -> None:
        """Remember the process tree now (Ray's workers leave it when their raylet dies)."""
        if self.proc is None:
            return
        self.seen |= _tree(self.proc.pid) | _tagged(self.tag)

    def wait_until(self, path: str, body: bytes | None = None, timeout: float = 300.0) -> float:
        """Seconds from start until ``path`` answers 200; raises if the process dies."""
        assert self.proc is not None
        while time.perf_counter() - self.started < timeout:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{tail}")
            if http(self.base + path, body, timeout=10)[0] == 200:
                self.track()
                return time.perf_counter() - self.started
            time.sleep(0.2)
        raise TimeoutError(f"{self.name}: {path} not answering after {timeout:.0f}s")

    def stop(self, grace: float = 45.0) -> dict[str, object]:
        """``stop_signal`` (SIGINT: Ctrl-C), then SIGKILL for anything of the tree still alive after
        ``grace``; report what was left and whether the ports are free again."""
        if self.proc is None:
            return {}
        self.track()
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        deadline = time.perf_counter() + 15
        self.track()  # processes started late (mid-start-up) left the tree but keep the tag
        while (alive := _alive(self.seen)) and time.perf_counter() < deadline:
            time.sleep(0.5)  # Ray's workers exit on their own once their raylet is gone
            self.track()
        left = [f"{pid} {_comm(pid)}" for pid, _ in alive]
        for pid, _ in alive:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5 if alive else 0)
        ports = {p: port_free(p) for p in [self.port, *self.extra_ports]}
        return {"exit_code": self.proc.returncode, "killed_leftovers": left,
                "ports_free": ports}


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields after the command name (state, ppid, ..., start time)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return "?"


def _tree(root: int) -> set[tuple[int, int]]:
    """(pid, start time) of ``root`` and all its descendants now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))):
            children.setdefault(int(stat[1]), []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if (stat := _stat(pid)) is not None:
            found.add((pid, int(stat[19])))
            todo.extend(children.get(pid, []))
    return found


def _tagged(tag: str) -> set[tuple[int, int]]:
    """(pid, start time) of every process whose environment carries ``tag``."""
    needle = f"{TAG}={tag}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if (entry.name.isdigit() and needle in (entry / "environ").read_bytes()
                    and (stat := _stat(int(entry.name))) is not None):
                found.add((int(entry.name), int(stat[19])))
        except OSError:
            continue
    return found


def _alive(seen: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """The processes of ``seen`` still running (same pid and start time, not a zombie)."""
    alive = []
    for pid, start in sorted(seen):
        stat = _stat(pid)
        if stat is not None and int(stat[19]) == start and stat[0] != "Z":
            alive.append((pid, start))
    return alive


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]

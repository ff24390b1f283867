"""Load generation for the reliability tier: valid bodies for every served model, a ledger of
request ids, and a pool of client threads that runs until told to stop."""

from __future__ import annotations

import json
import random
import re
import statistics
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from serving.audit import read_records
from serving.protocol.examples import protocol_bodies
from serving.tasks import get_task
from tests.integration.conftest import ALL_MODELS

REQUEST_ID = "x-request-id"


def bodies(model: str) -> dict[str, dict[str, Any]]:
    """The request example of ``model``'s task on the task route, V2 and V1."""
    return protocol_bodies(model)


def task_path(model: str) -> str:
    return f"/v1/{model}/{get_task(model).route}"


def valid_calls() -> list[tuple[str, bytes]]:
    """(path, body) of a valid prediction on the task, V2 and V1 routes of every default model,
    and on the V2 route pinned to each served version of fraud."""
    calls = []
    for model in ALL_MODELS:
        b = bodies(model)
        calls += [(task_path(model), b["task"]), (f"/v2/models/{model}/infer", b["v2"]),
                  (f"/v1/models/{model}:predict", b["v1"])]
    fraud = bodies("fraud")["v2"]
    calls += [(f"/v2/models/fraud/versions/{v}/infer", fraud) for v in ("1", "2")]
    return [(path, json.dumps(body).encode()) for path, body in calls]


class Ledger:
    """Request ids sent to prediction routes (one prefix per session) and the status each got
    (None: no answer); ``baseline`` is the number of decision records before the first."""

    def __init__(self, trail: Path | None = None) -> None:
        self.prefix = f"rel-{uuid.uuid4().hex[:8]}-"
        self.baseline = sum(1 for _ in read_records(str(trail))) if trail else 0
        self.status: dict[str, int | None] = {}
        self._lock = threading.Lock()

    def new_id(self) -> str:
        return self.prefix + uuid.uuid4().hex

    def note(self, rid: str, status: int | None) -> None:
        with self._lock:
            self.status[rid] = status

    def answered(self) -> set[str]:
        with self._lock:
            return {rid for rid, s in self.status.items() if s is not None and 200 <= s < 300}


@dataclass
class Tally:
    """What a load run saw: statuses, client-side exceptions, sample errors, latencies."""

    statuses: Counter[int] = field(default_factory=Counter)
    exceptions: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    failed_ids: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + sum(self.exceptions.values())

    @property
    def failed(self) -> int:
        return self.sent - self.statuses[200]

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500)

    def add(self, status: int | None, latency: float, detail: str = "", rid: str = "") -> None:
        with self._lock:
            if status != 200:
                self.failed_ids.append(rid)
            if status is None:
                self.exceptions[detail] += 1
            else:
                self.statuses[status] += 1
                self.latencies.append(latency)
                if status != 200:
                    self.errors[f"{status} {detail[:160]}"] += 1

    def summary(self, name: str, **extra: Any) -> str:
        ms = sorted(self.latencies) or [0.0]
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        parts = [
            f"sent={self.sent}", f"failed={self.failed}", f"5xx={self.server_errors}",
            f"rps={self.sent / max(self.elapsed, 1e-9):.1f}",
            f"p50_ms={statistics.median(ms) * 1000:.0f}", f"p99_ms={p99 * 1000:.0f}",
            *(f"{k}={v}" for k, v in extra.items()),
        ]
        lines = [f"[reliability] {name}: " + " ".join(parts)]
        lines += [f"    {n}x {e}" for e, n in (self.errors + self.exceptions).most_common(5)]
        return "\n".join(lines)


class Load:
    """``clients`` threads posting a random mix of ``calls`` until ``stop()``."""

    def __init__(self, base_url: str, calls: list[tuple[str, bytes]], ledger: Ledger,
                 clients: int = 16, timeout: float = 60,
                 headers: dict[str, str] | None = None) -> None:
        self.base_url, self.calls, self.ledger = base_url, calls, ledger
        self.timeout, self.headers = timeout, headers or {}
        self.tally = Tally()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                         for i in range(clients)]
        self._started = 0.0

    def __enter__(self) -> Load:
        self._started = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> Tally:
        self._stop.set()
        for t in self._threads:
            t.join()
        if not self.tally.elapsed:
            self.tally.elapsed = time.monotonic() - self._started
        return self.tally

    def _client(self, seed: int) -> None:
        rng = random.Random(seed)
        headers = {"content-type": "application/json", **self.headers}
        with httpx.Client(base_url=self.base_url, timeout=self.timeout) as http:
            while not self._stop.is_set():
                path, body = rng.choice(self.calls)
                rid = self.ledger.new_id()
                started = time.perf_counter()
                try:
                    r = http.post(path, content=body, headers={**headers, REQUEST_ID: rid})
                except httpx.HTTPError as exc:
                    self.ledger.note(rid, None)
                    self.tally.add(None, 0.0, f"{type(exc).__name__} on {path}", rid)
                    continue
                self.ledger.note(rid, r.status_code)
                self.tally.add(r.status_code, time.perf_counter() - started,
                               "" if r.status_code == 200 else f"{path} {r.text}", rid)


EXCEPTION = re.compile(r"^((?:\w+\.)*\w+(?:Error|Exception)(?:\([\w.]+\))?):")
SERVE_LOG = re.compile(r"^(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+ \S+ \S+ \S+ (\S+) -- (.*)")


def _ray_logs() -> Path | None:
    import ray._private.worker as worker

    node = worker._global_node
    return Path(node.get_session_dir_path()) / "logs" if node is not None else None


def gateway_failures() -> dict[str, str]:
    """Request id → the exception that ended it (the last of a chain), from Serve's "Request
    failed." entries in the gateway replicas' logs of this Ray session."""
    failures: dict[str, str] = {}
    logs = _ray_logs()
    for path in sorted(logs.glob("serve/replica_*_gateway_*.log")) if logs else []:
        rid, fresh = None, False
        with path.open(errors="replace") as f:
            for line in f:
                if entry := SERVE_LOG.match(line):
                    rid = entry.group(1) if entry.group(2).startswith("Request failed") else None
                elif line.startswith("Traceback"):
                    fresh = True
                elif rid and fresh and (error := EXCEPTION.match(line)):
                    failures[rid], fresh = error.group(1), False
    return failures


def gateway_retries() -> int:
    """How often the gateway retried a pipeline after a lost replica (its warnings go to the
    replica's stderr log)."""
    logs = _ray_logs()
    return sum(
        line.count("after a lost replica")
        for path in (logs.glob("worker-*.err") if logs else [])
        for line in path.open(errors="replace")
    )

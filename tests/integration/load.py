"""A bounded background load for integration tests: threads posting one body in a loop."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import httpx


class Load:
    """``threads`` clients posting ``body`` to ``url`` until ``stop()``; counts answers."""

    def __init__(self, url: str, body: Any, threads: int = 8, max_seconds: float = 120,
                 headers: dict[str, str] | None = None) -> None:
        self.url, self.body, self.headers = url, body, headers or {}
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self.deadline = time.monotonic() + max_seconds
        self._stop = threading.Event()
        self.lock = threading.Lock()
        self.statuses: Counter[int] = Counter()
        self.versions: list[str] = []  # in answer order
        self.errors: list[str] = []

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set() and time.monotonic() < self.deadline:
                try:
                    r = client.post(self.url, json=self.body, headers=self.headers)
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.errors.append(repr(exc))
                    continue
                with self.lock:
                    self.statuses[r.status_code] += 1
                    if r.status_code == 200:
                        self.versions.append(r.headers.get("x-model-version", ""))
                    else:
                        self.errors.append(f"{r.status_code} {r.text[:200]}")

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(timeout=60)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + len([e for e in self.errors if "Error" in e])

    @property
    def failed(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200) + len(
            [e for e in self.errors if not e[:3].isdigit()])

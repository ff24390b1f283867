"""API key revocation without a restart: under load from two keys, the key file is rewritten
without one of them. Every gateway replica refuses the revoked key within seconds, and not
one request of the other key fails."""

from __future__ import annotations

import json
import statistics
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest

from serving.security import write_keys
from tests.reliability.load import bodies, task_path

pytestmark = pytest.mark.reliability

#: the gateway checks the key file at most every second (serving.security.KeyFile); a
#: replica must refuse the revoked key within this of the rewrite
REFUSED_WITHIN_S = 5.0
CLIENTS_PER_KEY = 3


@dataclass
class Calls:
    """(key id, started, finished, status) of every call, from several client threads."""

    url: str
    keys: dict[str, str]
    calls: list[tuple[str, float, float, int | None]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def client(self, key_id: str) -> None:
        body = json.dumps(bodies("fraud")["task"]).encode()
        headers = {"authorization": f"Bearer {self.keys[key_id]}",
                   "content-type": "application/json"}
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    status: int | None = http.post(task_path("fraud"), content=body,
                                                   headers=headers).status_code
                except httpx.HTTPError:
                    status = None
                self.calls.append((key_id, started, time.monotonic(), status))

    def of(self, key_id: str) -> list[tuple[float, float, int | None]]:
        return [(s, f, status) for k, s, f, status in self.calls if k == key_id]


def test_a_removed_key_is_refused_within_seconds_and_the_other_never_fails(finserve_served):
    served = finserve_served
    calls = Calls(served.url, served.plain)
    threads = [threading.Thread(target=calls.client, args=(key_id,), daemon=True)
               for key_id in ("steady", "revoked") for _ in range(CLIENTS_PER_KEY)]
    for t in threads:
        t.start()
    try:
        time.sleep(3)  # both keys answered under load
        revoked_at = time.monotonic()
        write_keys(served.keys_file, [served.entries["steady"]])
        time.sleep(REFUSED_WITHIN_S + 5)
    finally:
        calls.stop.set()
        for t in threads:
            t.join(60)
        write_keys(served.keys_file, list(served.entries.values()))  # as it was
    steady, revoked = calls.of("steady"), calls.of("revoked")
    before = [status for started, _, status in revoked if started < revoked_at]
    after = [(started - revoked_at, finished - revoked_at, status)
             for started, finished, status in revoked if started >= revoked_at]
    first_401 = min((f for _, f, status in after if status == 401), default=None)
    last_200 = max((f for _, f, status in after if status == 200), default=0.0)
    steady_failed = [status for _, _, status in steady if status != 200]
    latencies = [(f - s) * 1000 for s, f, _ in steady]
    print(f"\n[reliability] key revocation, 2 keys x {CLIENTS_PER_KEY} clients, 2 gateway "
          f"replicas via finserve serve: sent={len(calls.calls)} steady_sent={len(steady)} "
          f"steady_failed={len(steady_failed)} revoked_sent={len(revoked)} "
          f"revoked_200_before={before.count(200)} first_401_s={first_401 or -1:.2f} "
          f"last_200_after_s={last_200:.2f} "
          f"revoked_401_after={sum(1 for *_, s in after if s == 401)} "
          f"steady_p50_ms={statistics.median(latencies):.0f}")
    assert before and set(before) == {200}, before
    assert first_401 is not None and first_401 <= REFUSED_WITHIN_S, after[:20]
    assert last_200 <= REFUSED_WITHIN_S, "a replica still took the revoked key"
    assert all(status == 401 for started, _, status in after if started > REFUSED_WITHIN_S)
    assert steady and not steady_failed, steady_failed[:10]

"""Slow clients against the ingress users get (`finserve serve`: HAProxy): sockets that send
their headers or body a byte every two seconds, or nothing at all, are closed within the
ingress limits (deployments.deploy.IngressTimeouts) plus a margin, while normal requests
keep getting 200."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass

import pytest

from deployments.deploy import IngressTimeouts
from tests.reliability.load import Ledger, Load, bodies, task_path

pytestmark = pytest.mark.reliability

#: seconds between the bytes a slow client sends; above any per-read idle timeout that
#: would stop it anyway, far below Ray's own `timeout client 3600s`
TRICKLE_S = 2.0
#: HAProxy's timers fire on time; the gateway's body deadline starts when the request
#: reaches it and its 408 then passes back through HAProxy
MARGIN_S = 5.0
PER_KIND = 4


@dataclass
class Slow:
    """One slow client: what it sends first, then a byte every ``TRICKLE_S``."""

    kind: str
    first: bytes
    trickle: bytes
    limit_s: float
    closed_after: float | None = None
    answer: bytes = b""

    def run(self, port: int, give_up_s: float) -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(0.2)
            started = time.monotonic()
            if self.first:
                s.sendall(self.first)
            rest, next_byte = list(self.trickle), started + TRICKLE_S
            while time.monotonic() - started < give_up_s:
                try:
                    if rest and time.monotonic() >= next_byte:
                        s.sendall(bytes([rest.pop(0)]))
                        next_byte += TRICKLE_S
                    data = s.recv(4096)
                except TimeoutError:
                    continue
                except OSError:  # reset by the server: closed too
                    data = b""
                if not data:
                    self.closed_after = time.monotonic() - started
                    return
                self.answer += data

    @property
    def status(self) -> str:
        return self.answer.split(b" ", 2)[1].decode() if self.answer else "-"


def slow_clients(key: str, limits: IngressTimeouts) -> list[Slow]:
    head = (f"POST {task_path('fraud')} HTTP/1.1\r\nHost: finserve\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n").encode()
    body = b'{"records": [' + b" " * 200
    request_s, keep_alive_s = float(limits.request_s), float(limits.keep_alive_s)
    kinds = [
        Slow("headers", b"", head + b"Content-Length: 2\r\n\r\n{}", request_s),
        # fits HAProxy's 16 kB buffer: HAProxy waits for it (option http-buffer-request)
        Slow("small_body", head + b"Content-Length: 300\r\n\r\n", body, request_s),
        # past the buffer: forwarded to the gateway, whose body deadline refuses it
        Slow("large_body", head + b"Content-Length: 100000\r\n\r\n" + body * 150, body,
             request_s),
        Slow("silent", b"", b"", request_s),
        Slow("idle_keep_alive", b"GET /v2/health/live HTTP/1.1\r\nHost: finserve\r\n\r\n",
             b"", keep_alive_s),
    ]
    return [Slow(k.kind, k.first, k.trickle, k.limit_s) for k in kinds for _ in range(PER_KIND)]


def test_slow_clients_are_closed_within_the_limits_while_others_get_200(finserve_served):
    limits = IngressTimeouts()
    clients = slow_clients(finserve_served.plain["steady"], limits)
    give_up_s = max(c.limit_s for c in clients) + 60  # Ray's defaults: open for an hour
    port = finserve_served.server.port
    b = bodies("fraud")
    calls = [(task_path("fraud"), json.dumps(b["task"]).encode()),
             ("/v2/models/fraud/infer", json.dumps(b["v2"]).encode())]
    threads = [threading.Thread(target=c.run, args=(port, give_up_s), daemon=True)
               for c in clients]
    headers = {"authorization": f"Bearer {finserve_served.plain['steady']}"}
    with Load(finserve_served.url, calls, Ledger(), clients=2, headers=headers) as load:
        for t in threads:
            t.start()
        for t in threads:
            t.join(give_up_s + 10)
    tally = load.stop()
    worst = {}
    for c in clients:
        worst[c.kind] = max(worst.get(c.kind, 0.0), c.closed_after or float("inf"))
    statuses = sorted({f"{c.kind}:{c.status}" for c in clients})
    figures = {f"{kind}_closed_max_s": f"{s:.1f}" for kind, s in worst.items()}
    print("\n" + tally.summary(
        f"slow loris, {len(clients)} slow sockets + 2 clients via finserve serve (HAProxy)",
        **figures, request_limit_s=limits.request_s, keep_alive_limit_s=limits.keep_alive_s,
        margin_s=f"{MARGIN_S:g}", answers=",".join(statuses)))
    late = [(c.kind, c.closed_after) for c in clients
            if c.closed_after is None or c.closed_after > c.limit_s + MARGIN_S]
    early = [(c.kind, c.closed_after) for c in clients
             if c.closed_after is not None and c.closed_after < c.limit_s - 1]
    assert not late, f"open past the limit + {MARGIN_S:g}s: {late}"
    assert not early, f"closed before the limit: {early}"
    assert all(c.status == "408" for c in clients if c.kind in ("headers", "small_body",
                                                                "large_body")), statuses
    assert tally.sent > 0 and tally.failed == 0, tally.summary("normal requests")

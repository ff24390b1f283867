"""`finserve serve` as a user runs it: its own local Ray behind the HAProxy ingress,
answering, then stopped by SIGTERM with the port released and no HAProxy left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from deployments.deploy import free_port, haproxy_tuning
from tests.conftest import golden
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration


def _haproxies() -> set[int]:
    """Pids of HAProxy processes that `finserve serve` started (config under /tmp/fsh-)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"/tmp/fsh-" in (entry / "cmdline").read_bytes():
                pids.add(int(entry.name))
        except OSError:
            continue
    return pids


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _assert_haproxy_set_up_as_measured(pids: set[int]) -> None:
    """No per-request syslog datagram to Ray's metrics socket (benchmarks/levers.md, row
    27): HAProxy's own Prometheus exporter counts the requests instead; one thread per 8
    CPUs (row 32)."""
    cmdline = (Path("/proc") / str(min(pids)) / "cmdline").read_bytes().split(b"\0")
    config = Path(cmdline[cmdline.index(b"-f") + 1].decode()).read_text()
    assert re.search(r"^\s*nbthread (\d+)$", config, re.M).group(1) == haproxy_tuning()[
        "RAY_SERVE_HAPROXY_NBTHREAD"]
    assert "metrics.sock" not in config
    exporter = config.split("frontend prometheus", 1)[1]
    metrics_port = int(re.search(r"bind \S*:(\d+)", exporter).group(1))
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    answered = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("haproxy_frontend_http_requests_total{")
                and 'proxy="http_frontend"' in line]
    assert answered and answered[0] >= 1, text[:2000]


def test_finserve_serve_answers_behind_haproxy_and_releases_the_port_on_sigterm(
        tiny_store, tmp_path):
    port = free_port()
    config = {
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{
            "name": "finserve", "route_prefix": "/", "import_path": "deployments.app:build_app",
            "args": {"store_uri": tiny_store.root, "audit": {"location": str(tmp_path / "a")},
                     "models": [{"name": "fraud"}]},
        }],
    }
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    before = _haproxies()
    log = (tmp_path / "serve.log").open("w")
    cli = Path(sys.executable).with_name("finserve")
    proc = subprocess.Popen([str(cli), "serve", "--config", str(path), "--no-train"],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        def answer() -> httpx.Response | None:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/v1/fraud/score",
                               json=golden("fraud_task_request.json"), timeout=10)
            except httpx.HTTPError:
                return None
            return r if r.status_code == 200 else None

        r = wait_for(answer, timeout=240, interval=1)
        assert r.json()["model"] == "fraud"
        assert _haproxies() - before, "no HAProxy serves the port"
        assert httpx.get(f"http://127.0.0.1:{port}/-/healthz", timeout=10).status_code == 200
        _assert_haproxy_set_up_as_measured(_haproxies() - before)
    finally:
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = proc.wait(timeout=120)
        log.close()
    output = (tmp_path / "serve.log").read_text()
    assert code == 0, output[-3000:]
    assert "stopped; port released" in output
    assert _port_free(port)
    assert not (_haproxies() - before), "an HAProxy outlived finserve serve"
    print(f"\nfinserve serve stopped {time.monotonic() - started:.1f} s after SIGTERM")

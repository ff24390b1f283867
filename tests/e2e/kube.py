"""What the e2e tests do to a real cluster: kubectl and helm (from .venv/bin, `make tools`),
polling, the Services' addresses, and request traffic counted to the last failure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "finserve"
T = TypeVar("T")


def tool(name: str) -> str:
    """helm or kubectl: the project's own (`make tools`) before any on PATH."""
    own = Path(sys.executable).parent / name
    found = str(own) if own.is_file() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: run `make tools`")
    return found


def finserve() -> str:
    """The project's CLI in the running virtual environment."""
    return str(Path(sys.executable).parent / "finserve")


def run(*args: str, input: str | None = None, timeout: float = 300, check: bool = True
        ) -> subprocess.CompletedProcess[str]:
    """A command with its output captured; a failure says what ran and what it printed."""
    done = subprocess.run(list(args), input=input, capture_output=True, text=True,
                          timeout=timeout, env=os.environ.copy())
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def kubectl(*args: str, **kwargs: Any) -> str:
    return run(tool("kubectl"), *args, **kwargs).stdout


def kubectl_json(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json"))


def helm(*args: str, **kwargs: Any) -> str:
    return run(tool("helm"), *args, **kwargs).stdout


def wait_until(what: str, probe: Callable[[], T | None], timeout: float,
               interval: float = 2.0) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` and the last
    exception it raised when ``timeout`` passes."""
    deadline, last = time.monotonic() + timeout, None
    while True:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:  # the probe's own failure is what the message reports
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:.0f}s (last error: {last})")
        time.sleep(interval)


def service_url(namespace: str, name: str, port: int = 8000) -> str:
    """http://<ClusterIP>:<port>: this machine reaches Services through kube-proxy's rules,
    as any client inside the cluster does (no port-forward, which pins a single pod)."""
    ip = kubectl("-n", namespace, "get", "svc", name, "-o", "jsonpath={.spec.clusterIP}")
    return f"http://{ip}:{port}"


def rayservice(namespace: str, name: str = "finserve") -> dict[str, Any]:
    return kubectl_json("-n", namespace, "get", "rayservice", name)


def ray_pods(namespace: str, selector: str = "ray.io/is-ray-node=yes") -> list[dict[str, Any]]:
    return kubectl_json("-n", namespace, "get", "pods", "-l", selector)["items"]


def running(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in pods if p["status"].get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")]


def head_pod(namespace: str, cluster: str) -> str:
    pods = running(ray_pods(namespace, f"ray.io/cluster={cluster},ray.io/node-type=head"))
    assert pods, f"no running head pod of {cluster}"
    return pods[0]["metadata"]["name"]


def active_cluster(namespace: str, name: str = "finserve") -> str:
    return rayservice(namespace, name)["status"]["activeServiceStatus"]["rayClusterName"]


def serve_config(namespace: str, name: str = "finserve") -> dict[str, Any]:
    return yaml.safe_load(rayservice(namespace, name)["spec"]["serveConfigV2"])


def ray_peer_labels(namespace: str, name: str = "finserve") -> str:
    """The labels the chart's NetworkPolicy admits to Ray's ports, as `kubectl run` takes
    them."""
    labels = kubectl_json("-n", namespace, "get", "networkpolicy", name)[
        "spec"]["podSelector"]["matchLabels"]
    return ",".join(f"{k}={v}" for k, v in labels.items())

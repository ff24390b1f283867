"""A real cluster: install the chart, wait until rolled out, infer, roll a model version
under traffic with zero failed requests, roll back.

Runs where a kubeconfig reaches a cluster with the KubeRay operator (>= 1.7.0) and the
FinServe image (FINSERVE_E2E_IMAGE=repo:tag, default the chart's; FINSERVE_E2E_VALUES adds a
values file); skipped otherwise. helm and kubectl come from PATH or .venv/bin (`make tools`).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "finserve"
FRAUD_REQUEST = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 9],
                             "data": [129.5, 2, 0.7, 850, 4, 0, 1, 30, 6.5]}]}


def _cluster_or_skip() -> None:
    """Skip with the reason unless a kubeconfig reaches an API server."""
    config_path = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    if not any(Path(p).is_file() for p in config_path.split(os.pathsep) if p):
        pytest.skip(f"no kubeconfig ({config_path}): e2e tests need a Kubernetes cluster")
    from kubernetes import client, config

    try:
        config.load_kube_config()
        client.VersionApi().get_code(_request_timeout=5)
    except Exception as exc:  # any failure to reach the API means: no cluster here
        pytest.skip(f"Kubernetes API not reachable with {config_path}: {exc}")


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail(f"{name} not found: run `make tools`", pytrace=False)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A fresh namespace with the chart installed and rolled out; removed afterwards."""
    _cluster_or_skip()
    from kubernetes import client
    from rich.console import Console

    from serving.rollout import Helm, KubeRayServiceWatcher, Rollout, SystemClock

    namespace = f"finserve-e2e-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api().create_namespace({"metadata": {"name": namespace}})
    helm = Helm(_tool("helm"), namespace=namespace)
    rollout = Rollout(helm=helm, make_watcher=lambda n: KubeRayServiceWatcher(n, namespace),
                      console=Console(), clock=SystemClock(), release="finserve")
    sets: list[str] = []
    if image := os.environ.get("FINSERVE_E2E_IMAGE"):
        repo, _, tag = image.rpartition(":")
        sets += [f"image.repository={repo}", f"image.tag={tag}"]
    # an unlimited key of our own (the chart's helm-test key is rate limited)
    secret = secrets.token_hex(24)
    keys = tmp_path_factory.mktemp("e2e") / "keys.yaml"
    keys.write_text(yaml.safe_dump({"apiKeys": {"keys": [
        {"id": "e2e", "sha256": hashlib.sha256(secret.encode()).hexdigest(), "models": ["*"]}]}}))
    files = [str(keys)]
    if os.environ.get("FINSERVE_E2E_VALUES"):
        files.append(os.environ["FINSERVE_E2E_VALUES"])
    try:
        assert rollout.start(str(CHART), files, sets, timeout_s=1800) == 0, "install failed"
        yield {"namespace": namespace, "rollout": rollout, "helm": helm,
               "api_key": f"fsk_e2e_{secret}"}
    finally:
        subprocess.run([_tool("helm"), "uninstall", "finserve", "-n", namespace, "--wait"],
                       check=False)
        client.CoreV1Api().delete_namespace(namespace)


@pytest.fixture(scope="module")
def endpoint(release: dict[str, Any]) -> Iterator[tuple[str, dict[str, str]]]:
    """Base URL through kubectl port-forward to the serve Service, and the auth header."""
    namespace, key = release["namespace"], release["api_key"]
    port = _free_port()
    forward = subprocess.Popen(
        [_tool("kubectl"), "-n", namespace, "port-forward", "svc/finserve-serve-svc",
         f"{port}:8000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        yield base, {"Authorization": f"Bearer {key}"}
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def test_the_installed_release_answers_an_inference(endpoint: tuple[str, dict]) -> None:
    import httpx

    base, headers = endpoint
    response = httpx.post(f"{base}/v2/models/fraud/infer", json=FRAUD_REQUEST, headers=headers,
                          timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["model_name"] == "fraud"


def test_a_model_version_rollout_under_traffic_fails_no_request(
    release: dict[str, Any], endpoint: tuple[str, dict]
) -> None:
    import httpx

    base, headers = endpoint
    counts = {"ok": 0, "failed": 0}
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(headers=headers, timeout=30) as http:
            while not stop.is_set():
                try:
                    r = http.post(f"{base}/v2/models/fraud/infer", json=FRAUD_REQUEST)
                    counts["ok" if r.status_code == 200 else "failed"] += 1
                except httpx.HTTPError:
                    counts["failed"] += 1

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        # "latest" -> "1": the same artifact, so the change is the Serve config alone (in place).
        assert release["rollout"].start(str(CHART), model_versions=["fraud=1"],
                                        timeout_s=900) == 0
        assert release["rollout"].undo(timeout_s=900) == 0
    finally:
        stop.set()
        worker.join(timeout=60)
    assert counts["ok"] > 0
    assert counts["failed"] == 0, counts

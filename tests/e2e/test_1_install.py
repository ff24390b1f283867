"""Installed as a user would (docs/kubernetes.md): the RayService is Ready with every
application RUNNING, `helm test` passes, every model answers its task route and V2 through
the Serve Service, over HTTP and over gRPC (tritonclient.grpc, unchanged), bad input gets its
4xx, and Ray's object store is in shared memory."""

from __future__ import annotations

import re

import httpx
import pytest
import tritonclient.grpc as triton
import yaml

from tests.chart.chartlib import quantity_bytes
from tests.e2e.conftest import Release
from tests.e2e.kube import CHART, helm, kubectl, ray_pods, rayservice, running, service_url
from tests.grpc_client import as_inputs, assert_same_outputs, refusal
from tests.integration.conftest import ALL_MODELS
from tests.reliability.load import bodies, task_path


def test_the_rayservice_is_ready_with_every_application_running(release: Release) -> None:
    rs = rayservice(release.namespace)
    status = rs["status"]
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Ready"] == "True", status
    assert conditions.get("UpgradeInProgress", "False") == "False", status
    assert status["observedGeneration"] == rs["metadata"]["generation"]
    apps = status["activeServiceStatus"]["applicationStatuses"]
    assert apps and {a["status"] for a in apps.values()} == {"RUNNING"}, apps
    deployments = apps["finserve"]["serveDeploymentStatuses"]
    assert "gateway" in deployments and all(d["status"] == "HEALTHY"
                                            for d in deployments.values()), deployments


def test_helm_test_passes(release: Release) -> None:
    out = helm("test", release.name, "-n", release.namespace, "--logs", timeout=600)
    assert "Phase:          Succeeded" in out or "Succeeded" in out, out


@pytest.mark.parametrize("model", ALL_MODELS)
def test_every_model_answers_its_task_route_and_v2(release: Release, model: str) -> None:
    calls = bodies(model)
    with httpx.Client(base_url=release.url, headers=release.headers, timeout=60) as http:
        task = http.post(task_path(model), json=calls["task"])
        assert task.status_code == 200, task.text
        assert task.headers["x-model-version"], task.headers
        v2 = http.post(f"/v2/models/{model}/infer", json=calls["v2"])
        assert v2.status_code == 200, v2.text
        assert v2.json()["model_name"] == model


def test_every_model_answers_over_grpc_through_the_serve_service(release: Release) -> None:
    """KubeRay's `<name>-serve-svc` carries the chart's `serve-grpc` port beside `serve`;
    a tritonclient.grpc client with the caller's key gets each model's HTTP V2 answer, and
    UNAUTHENTICATED without the key."""
    port = yaml.safe_load((CHART / "values.yaml").read_text())["serve"]["grpc"]["port"]
    service = kubectl("-n", release.namespace, "get", "svc", f"{release.name}-serve-svc",
                      "-o", "jsonpath={.spec.ports[*].name}")
    assert "serve-grpc" in service.split(), service
    host = service_url(release.namespace, f"{release.name}-serve-svc", port)
    auth = {"authorization": release.headers["Authorization"]}
    client = triton.InferenceServerClient(host.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready(headers=auth)
        for model in ALL_MODELS:
            body = bodies(model)["v2"]
            http = httpx.post(f"{release.url}/v2/models/{model}/infer", json=body,
                              headers=release.headers, timeout=60)
            assert http.status_code == 200, http.text
            assert client.is_model_ready(model, headers=auth), model
            result = client.infer(model, as_inputs(body), parameters=body.get("parameters"),
                                  headers=auth, client_timeout=60)
            assert result.get_response().model_version == http.json()["model_version"]
            assert_same_outputs(result, http.json()["outputs"])
        code, _ = refusal(lambda: client.infer("fraud", as_inputs(bodies("fraud")["v2"]),
                                               client_timeout=60))
        assert code == "UNAUTHENTICATED"
    finally:
        client.close()


@pytest.mark.parametrize(("what", "path", "content", "auth", "status"), [
    ("malformed JSON", "/v2/models/fraud/infer", b'{"inputs": [', True, 400),
    ("a wrong shape", "/v2/models/fraud/infer",
     b'{"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 3], '
     b'"data": [1, 2, 3]}]}', True, 422),
    ("an unknown model", "/v2/models/no-such-model/infer",
     b'{"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 1], "data": [1]}]}',
     True, 404),
    ("no API key", "/v2/models/fraud/infer", b'{"inputs": []}', False, 401),
])
def test_bad_input_gets_its_4xx_as_json(release: Release, what: str, path: str,
                                         content: bytes, auth: bool, status: int) -> None:
    headers = {"content-type": "application/json", **(release.headers if auth else {})}
    r = httpx.post(release.url + path, content=content, headers=headers, timeout=30)
    assert r.status_code == status, f"{what}: {r.status_code} {r.text}"
    assert r.json()["error"], r.text


def test_rays_object_store_is_in_shared_memory_at_the_size_ray_wants(release: Release) -> None:
    """Every Ray node's raylet put its object store in /dev/shm (not the /tmp fallback), at
    the size Ray chose (30 % of the memory limit), and /dev/shm is the memory-backed volume
    KubeRay sized to the container's memory limit."""
    for pod in running(ray_pods(release.namespace)):
        name = pod["metadata"]["name"]
        container = next(c for c in pod["spec"]["containers"] if c["name"].startswith("ray-"))
        limit = container["resources"]["limits"]["memory"]
        out = kubectl("-n", release.namespace, "exec", name, "-c", container["name"], "--",
                      "bash", "-c", "df -B1 --output=size /dev/shm | tail -1; "
                      "grep -h -E 'Plasma store to use|Starting object store' "
                      "/tmp/ray/session_latest/logs/raylet.out")
        shm = int(out.splitlines()[0])
        directory = re.search(r"Starting object store with directory (\S+),", out)
        store = re.search(r"Plasma store to use up to ([\d.]+)GB", out)
        assert directory and store, f"{name}: raylet did not log its object store:\n{out}"
        assert directory.group(1) == "/dev/shm", f"{name}: object store in {directory.group(1)}"
        assert float(store.group(1)) * 1e9 <= shm, f"{name}: store {store.group(1)} GB > {shm}"
        assert shm == quantity_bytes(limit), f"{name}: /dev/shm {shm} B, memory limit {limit}"

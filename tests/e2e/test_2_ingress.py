"""The chart's Ingress behind a real ingress controller (Traefik, built by `make cluster` as the
default IngressClass): turned on with `helm upgrade`, requests through the controller reach
the Serve Service and answer, and the Ray cluster is left as it was."""

from __future__ import annotations

import httpx

from tests.e2e.conftest import Release
from tests.e2e.kube import CHART, active_cluster, helm, kubectl_json, service_url, wait_until
from tests.reliability.load import bodies

HOST = "finserve.e2e.local"


def test_requests_through_the_ingress_controller_answer(release: Release) -> None:
    cluster = active_cluster(release.namespace)
    helm("upgrade", release.name, str(CHART), "-n", release.namespace, "--reuse-values",
         "--set", "ingress.enabled=true", "--set", f"ingress.hosts[0].host={HOST}",
         "--set", "ingress.hosts[0].paths[0].path=/",
         "--set", "ingress.hosts[0].paths[0].pathType=Prefix", timeout=600)
    ingress = kubectl_json("-n", release.namespace, "get", "ingress", release.name)
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{release.name}-serve-svc", "port": {"number": 8000}}
    controller = service_url("traefik", "traefik", 80)
    headers = {"Host": HOST, **release.headers}

    def ready() -> bool:
        return httpx.get(f"{controller}/v2/health/ready", headers=headers,
                         timeout=5).status_code == 200

    wait_until("the Ingress routed by Traefik", ready, timeout=120)
    answer = httpx.post(f"{controller}/v2/models/fraud/infer", json=bodies("fraud")["v2"],
                        headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_name"] == "fraud"
    other_host = httpx.get(f"{controller}/v2/health/ready", headers={"Host": "other.local"},
                           timeout=5)
    assert other_host.status_code == 404, "a host the Ingress does not name must not route"
    # Traefik wrote the Ingress status (the address callers use)
    wait_until("the Ingress status names the controller's address", lambda: kubectl_json(
        "-n", release.namespace, "get", "ingress", release.name)["status"]["loadBalancer"]
        .get("ingress"), timeout=60)
    assert active_cluster(release.namespace) == cluster, "an Ingress change replaced Ray"

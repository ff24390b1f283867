"""Security on the cluster: Ray's dashboard and job API refuse a request without Ray's token
(KubeRay `authOptions`), from this machine and from a pod in the namespace; the chart's own
API key may not call every model; the Secrets the chart generated survive `helm upgrade`."""

from __future__ import annotations

import base64
import json

import httpx
import yaml

from tests.e2e.conftest import Release
from tests.e2e.kube import (
    CHART,
    active_cluster,
    head_pod,
    helm,
    kubectl,
    kubectl_json,
    ray_peer_labels,
)

# what a pod in the namespace runs: GET the job API without and with the token
PROBE = """
import json, sys, time, urllib.error, urllib.request
url = sys.argv[1]
out = {}
for name, headers in (("none", {}), ("token", {"Authorization": "Bearer " + sys.argv[2]})):
    for attempt in range(20):  # until the policy controller has admitted this new pod
        try:
            out[name] = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                               timeout=10).status
        except urllib.error.HTTPError as exc:
            out[name] = exc.code
        except urllib.error.URLError:
            time.sleep(1)
            continue
        break
print(json.dumps(out))
"""


def ray_token(release: Release) -> str:
    secret = kubectl_json("-n", release.namespace, "get", "secret",
                          active_cluster(release.namespace))
    return base64.b64decode(secret["data"]["auth_token"]).decode()


def test_rays_job_api_refuses_a_request_without_the_token(release: Release) -> None:
    token = ray_token(release)
    pod = kubectl_json("-n", release.namespace, "get", "pod",
                       head_pod(release.namespace, active_cluster(release.namespace)))
    url = f"http://{pod['status']['podIP']}:8265/api/jobs/"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.post(url, json={"entrypoint": "echo pwned"}, timeout=10).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {token}"},
                     timeout=10).status_code == 200


def test_rays_job_api_refuses_a_pod_in_the_namespace_without_the_token(
        release: Release) -> None:
    """The probe carries the labels the NetworkPolicy admits to Ray's ports (as a Ray pod of
    the release would): past the policy, Ray's token is what refuses it."""
    url = f"http://{release.name}-head-svc.{release.namespace}.svc.cluster.local:8265/api/jobs/"
    out = kubectl("-n", release.namespace, "run", "ray-auth-probe", "--rm", "-i", "--quiet",
                  "--restart=Never", f"--labels={ray_peer_labels(release.namespace)}",
                  f"--image={release.image_repository}:{release.image_tag}",
                  "--image-pull-policy=Never", "--command", "--", "python", "-c", PROBE,
                  url, ray_token(release), timeout=300)
    assert json.loads(out.strip().splitlines()[-1]) == {"none": 401, "token": 200}, out


def test_the_chart_ships_no_key_that_may_call_every_model(release: Release) -> None:
    secret = kubectl_json("-n", release.namespace, "get", "secret", f"{release.name}-api-keys")
    keys = yaml.safe_load(base64.b64decode(secret["data"]["keys.yaml"]))
    generated = [k for k in keys["keys"] if k["id"] != "e2e"]  # e2e: the test's own key
    assert generated, keys
    for key in generated:
        assert "*" not in key["models"], f"the chart made an all-models key: {key}"
        assert key.get("rate_per_s"), f"the chart made an unlimited key: {key}"


def test_the_secrets_the_chart_generated_survive_helm_upgrade(release: Release) -> None:
    def generated() -> dict[str, dict[str, str]]:
        secrets = kubectl_json("-n", release.namespace, "get", "secrets", "-l",
                               f"app.kubernetes.io/instance={release.name}")["items"]
        return {s["metadata"]["name"]: s["data"] for s in secrets
                if s["metadata"]["name"].startswith(release.name)}

    before = generated()
    assert {f"{release.name}-api-keys", f"{release.name}-audit"} <= before.keys(), before.keys()
    token_before = ray_token(release)
    helm("upgrade", release.name, str(CHART), "-n", release.namespace, "--reuse-values",
         timeout=600)
    assert generated() == before
    assert ray_token(release) == token_before

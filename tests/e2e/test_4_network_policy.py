"""The chart's NetworkPolicy, enforced (`make cluster` runs kube-router's policy controller
beside the bridge CNI plugin): Ray's own ports (dashboard and job API 8265, GCS 6379, Ray
client 10001) are closed to pods that are not this release's Ray pods, in another namespace
and in the release's own; Serve's port 8000 stays open (`networkPolicy.allowExternal`); and
the KubeRay operator still reaches the head (the release keeps rolling out: every other test
in this tier runs with the policy on)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Release
from tests.e2e.kube import active_cluster, kubectl, ray_peer_labels, ray_pods, running

OTHER_NAMESPACE = "finserve-e2e-outsider"
RAY_PORTS = (8265, 6379, 10001)

# what a probe pod runs: a TCP connect to each (host, port), tried for 20 s, since policy is
# enforced eventually: a new pod's first packets can come before the policy controller has
# put its address in the sets the rules match (seen: a labelled peer refused at its start)
PROBE = """
import json, socket, sys, time
out = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=3).close()
            out[target] = "open"
            break
        except OSError as exc:
            out[target] = type(exc).__name__
        if time.monotonic() > deadline:
            break
        time.sleep(1)
print(json.dumps(out))
"""


def probe(release: Release, namespace: str, targets: list[str], name: str) -> dict[str, str]:
    out = kubectl("-n", namespace, "run", name, "--rm", "-i", "--quiet", "--restart=Never",
                  f"--image={release.image_repository}:{release.image_tag}",
                  "--image-pull-policy=Never", "--command", "--", "python", "-c", PROBE,
                  *targets, timeout=300)
    return json.loads(out.strip().splitlines()[-1])


def pod_ip(release: Release, node_type: str) -> str:
    pods = running(ray_pods(release.namespace, f"ray.io/cluster="
                                               f"{active_cluster(release.namespace)},"
                                               f"ray.io/node-type={node_type}"))
    return pods[0]["status"]["podIP"]


@pytest.fixture(scope="module")
def outsider(release: Release) -> Iterator[str]:
    kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OTHER_NAMESPACE}}))
    yield OTHER_NAMESPACE
    kubectl("delete", "namespace", OTHER_NAMESPACE, "--wait=false")


@pytest.mark.parametrize("where", ["another namespace", "the release's namespace"])
def test_rays_ports_are_closed_to_other_pods_and_serve_is_open(
        release: Release, outsider: str, where: str) -> None:
    namespace = outsider if where == "another namespace" else release.namespace
    head, worker = pod_ip(release, "head"), pod_ip(release, "worker")
    targets = [f"{head}:{p}" for p in RAY_PORTS] + [f"{worker}:8000"]
    seen = probe(release, namespace, targets, "netpol-probe")
    assert seen[f"{worker}:8000"] == "open", seen
    for port in RAY_PORTS:
        assert seen[f"{head}:{port}"] != "open", f"Ray port {port} open from {where}: {seen}"


def test_the_policy_is_what_closes_them(release: Release) -> None:
    """The same probe, as a pod carrying this release's Ray pod labels, reaches the head's
    ports: the policy, not the network, is what closed them above."""
    head = pod_ip(release, "head")
    out = kubectl("-n", release.namespace, "run", "netpol-peer", "--rm", "-i", "--quiet",
                  "--restart=Never", f"--labels={ray_peer_labels(release.namespace)}",
                  f"--image={release.image_repository}:{release.image_tag}",
                  "--image-pull-policy=Never", "--command", "--", "python", "-c", PROBE,
                  f"{head}:8265", timeout=300)
    assert json.loads(out.strip().splitlines()[-1]) == {f"{head}:8265": "open"}, out

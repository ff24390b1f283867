"""The decision trail on the cluster (the chart's default: segment files on a claim every
Ray pod mounts): records outlive a deleted pod and a blue/green switch, and the whole trail
verifies afterwards with nothing but the public key."""

from __future__ import annotations

import base64
import json
import time

import httpx

from tests.e2e.conftest import TRAIL_HOST_PATH, Release
from tests.e2e.kube import active_cluster, finserve, kubectl, ray_pods, run, wait_until
from tests.e2e.test_5_rollout import rollout
from tests.reliability.load import bodies, task_path

#: a model the earlier tests leave at one replica at least (test_7 scales fraud from zero)
MODEL = "credit"


def decide(release: Release, count: int) -> list[str]:
    """``count`` credit decisions; their decision ids (x-decision-id)."""
    body = json.dumps(bodies(MODEL)["task"]).encode()
    ids = []
    with httpx.Client(base_url=release.url, headers=release.headers, timeout=60) as client:
        for _ in range(count):
            r = client.post(task_path(MODEL), content=body)
            assert r.status_code == 200, r.text
            ids.append(r.headers["x-decision-id"])
    return ids


def answering(release: Release) -> bool:
    try:
        return httpx.post(f"{release.url}{task_path(MODEL)}", json=bodies(MODEL)["task"],
                          headers=release.headers, timeout=40).status_code == 200
    except httpx.HTTPError:
        return False


def public_key(release: Release) -> str:
    secret = kubectl("-n", release.namespace, "get", "secret", f"{release.name}-audit",
                     "-o", "jsonpath={.data.trail-key}")
    done = run(finserve(), "audit", "public-key", "-",
               input=base64.b64decode(secret).decode())
    return done.stdout.strip()


def test_records_survive_a_deleted_pod_and_a_blue_green_switch_and_verify(
        release: Release) -> None:
    ids = decide(release, 20)
    workers = [p["metadata"]["name"] for p in ray_pods(
        release.namespace, f"ray.io/cluster={active_cluster(release.namespace)},"
        "ray.io/node-type=worker")]
    assert workers, "no worker pod runs the gateway replicas"
    kubectl("-n", release.namespace, "delete", "pod", *workers, "--wait=false")
    started = time.monotonic()
    time.sleep(5)
    wait_until("the gateway answers again after its pods were deleted",
               lambda: answering(release), timeout=600, interval=5)
    print(f"\n[e2e] answering again {time.monotonic() - started:.0f}s after deleting "
          f"{len(workers)} worker pods")
    ids += decide(release, 20)
    before = active_cluster(release.namespace)
    tag = f"{release.image_tag}-trail"
    source = f"docker.io/library/{release.image_repository}:{release.image_tag}"
    run("ctr", "--address", "/run/finserve-containerd/containerd.sock", "-n", "k8s.io",
        "images", "tag", "--force", source, source.rsplit(":", 1)[0] + f":{tag}")
    rollout(release, "--image-tag", tag)
    assert active_cluster(release.namespace) != before, "no blue/green switch happened"
    wait_until("the new cluster answers", lambda: answering(release), timeout=600, interval=5)
    ids += decide(release, 20)
    time.sleep(3)  # a checkpoint interval: the last records get their signed checkpoint

    trail = TRAIL_HOST_PATH / "trail"
    done = run(finserve(), "audit", "verify", "--trail", str(trail), "--public-key",
               public_key(release), check=False, timeout=600)
    print(f"\n[e2e] finserve audit verify:\n{done.stdout[-3000:]}")
    assert done.returncode == 0 and "intact" in done.stdout, done.stdout + done.stderr
    from serving.audit import decision_id, read_records

    recorded = {decision_id(r) for r in read_records(str(trail))}
    assert set(ids) <= recorded, sorted(set(ids) - recorded)[:5]
    chains = {i.split(":")[0] for i in ids}
    assert len(chains) >= 2, f"one chain across a pod loss and a new cluster? {chains}"

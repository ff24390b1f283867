"""Autoscaling on the cluster, both layers: a load step makes Ray Serve add Model replicas and
KubeRay's in-tree autoscaler add a CPU worker pod; a model placed on a GPU makes the GPU worker
group go from 0 to 1 pod, its replica runs there and answers, and after idle the group goes
back to 0. Runs last: it changes the release's models and worker groups.

The node advertises one `nvidia.com/gpu` (an extended resource, `make cluster`) and there is
no CUDA here: the GPU group runs the CPU image (TensorFlow falls back to the CPU) and Ray on it
holds a logical GPU. This proves scheduling and autoscaling of GPU workers, not CUDA."""

from __future__ import annotations

import copy
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.e2e.conftest import Release
from tests.e2e.kube import (
    CHART,
    active_cluster,
    finserve,
    kubectl,
    ray_pods,
    run,
    running,
    wait_until,
)
from tests.reliability.load import bodies, task_path

FAST = {"upscale_delay_s": 0, "downscale_delay_s": 20, "look_back_period_s": 2,
        "target_ongoing_requests": 1}


def autoscaling_values(tmp: Path, release: Release) -> Path:
    """The chart's own models list with sentiment's Model stage in replicas of its own that
    scale on load (one CPU each: a third does not fit the first worker) and fraud's Model stage
    on a quarter GPU, scaling from zero; GPU workers on, idle ones removed after 30 s."""
    models = copy.deepcopy(yaml.safe_load((CHART / "values.yaml").read_text())
                           ["serve"]["app"]["models"])
    for m in models:
        if m["name"] == "sentiment":
            m["placement"] = "model-replicas"
            m.setdefault("model", {}).update(
                num_cpus=1, autoscaling={"min_replicas": 1, "max_replicas": 3, **FAST})
        if m["name"] == "fraud":
            m["placement"] = "model-replicas"
            m.setdefault("model", {}).update(
                num_cpus=0.1, num_gpus=0.25,
                autoscaling={"min_replicas": 0, "max_replicas": 1, **FAST})
    values = {
        "serve": {"app": {"models": models}},
        "cpuWorker": {"maxReplicas": 2},
        "autoscaler": {"idleTimeoutSeconds": 30},
        "gpuWorker": {"enabled": True, "minReplicas": 0, "replicas": 0, "maxReplicas": 1,
                      # no CUDA here: the CPU image stands in for the -gpu one
                      "image": {"tag": release.image_tag},
                      "resources": {"requests": {"cpu": "200m", "memory": "2Gi"},
                                    "limits": {"cpu": "1", "memory": "4Gi"}}},
    }
    path = tmp / "autoscaling.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def group_pods(release: Release, group: str) -> list[dict]:
    return running(ray_pods(release.namespace, f"ray.io/cluster="
                                              f"{active_cluster(release.namespace)},"
                                              f"ray.io/group={group}"))


def serve_replicas(release: Release, deployment: str) -> int:
    """RUNNING replicas of a Serve deployment, as `serve status` on the head reports."""
    head = running(ray_pods(release.namespace, f"ray.io/cluster="
                                               f"{active_cluster(release.namespace)},"
                                               "ray.io/node-type=head"))[0]
    out = kubectl("-n", release.namespace, "exec", head["metadata"]["name"], "-c", "ray-head",
                  "--", "serve", "status")
    apps = yaml.safe_load(out)["applications"]
    for app in apps.values():
        for name, dep in (app.get("deployments") or {}).items():
            if name == deployment:
                return int((dep.get("replica_states") or {}).get("RUNNING", 0))
    return 0


@pytest.fixture(scope="module")
def autoscaling(release: Release, tmp_path_factory: pytest.TempPathFactory) -> Release:
    values = autoscaling_values(tmp_path_factory.mktemp("autoscaling"), release)
    done = run(finserve(), "rollout", "-n", release.namespace, "--release", release.name,
               "--chart", str(CHART), "-f", str(values), "--timeout", "1200", check=False,
               timeout=1500)
    print(f"\n[e2e] autoscaling values rolled out: exit {done.returncode}\n{done.stdout[-2000:]}")
    assert done.returncode == 0, done.stdout + done.stderr
    return release


def test_a_load_step_adds_serve_replicas_and_a_cpu_worker_pod(autoscaling: Release) -> None:
    release = autoscaling
    assert len(group_pods(release, "cpu")) == 1
    body = json.dumps(bodies("sentiment")["task"]).encode()
    stop, counts = threading.Event(), {"ok": 0, "failed": 0}

    def client() -> None:
        with httpx.Client(base_url=release.url, headers=release.headers, timeout=120) as http:
            while not stop.is_set():
                r = http.post(task_path("sentiment"), content=body,
                              headers={"content-type": "application/json"})
                counts["ok" if r.status_code == 200 else "failed"] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
    started = time.monotonic()
    for t in threads:
        t.start()
    try:
        wait_until("a second sentiment Model replica",
                   lambda: serve_replicas(release, "sentiment-model") >= 2, timeout=180)
        replica_s = time.monotonic() - started
        wait_until("a second CPU worker pod running",
                   lambda: len(group_pods(release, "cpu")) >= 2, timeout=420, interval=5)
        pod_s = time.monotonic() - started
        wait_until("a third sentiment Model replica (placed on the new worker)",
                   lambda: serve_replicas(release, "sentiment-model") >= 3, timeout=420)
        third_s = time.monotonic() - started
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=150)
    print(f"\n[e2e] load step: 2nd replica after {replica_s:.0f}s, 2nd CPU worker pod "
          f"running after {pod_s:.0f}s, 3rd replica after {third_s:.0f}s; "
          f"{counts['ok']} answered, {counts['failed']} failed")
    assert counts["failed"] == 0, counts


def test_a_gpu_model_brings_the_gpu_group_from_zero_and_back(autoscaling: Release) -> None:
    release = autoscaling
    assert group_pods(release, "gpu") == [], "the GPU group starts at zero"
    started = time.monotonic()

    def answered() -> bool:
        """The first request starts the scale-up; the gateway's own deadline (30 s: 504)
        can pass before a GPU pod is up, so ask again until the replica answers."""
        r = httpx.post(f"{release.url}/v2/models/fraud/infer", json=bodies("fraud")["v2"],
                       headers=release.headers, timeout=120)
        assert r.status_code in (200, 503, 504), r.text
        return r.status_code == 200

    wait_until("fraud answered from a GPU replica", answered, timeout=600, interval=1)
    answered_s = time.monotonic() - started
    pods = group_pods(release, "gpu")
    assert len(pods) == 1, "one GPU worker pod, placed on the node's nvidia.com/gpu"
    limits = pods[0]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1", limits
    assert serve_replicas(release, "fraud-model") == 1
    wait_until("the GPU group back to 0 pods after idle",
               lambda: group_pods(release, "gpu") == [], timeout=600, interval=5)
    print(f"\n[e2e] GPU: first fraud answer (scale from zero, pod start, model load) after "
          f"{answered_s:.0f}s; the group back to 0 after {time.monotonic() - started:.0f}s")

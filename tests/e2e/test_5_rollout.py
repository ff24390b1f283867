"""Rollouts under load through the Serve Service: a model version change (applied in place),
an image change (KubeRay builds a new RayCluster and switches: blue/green) and `finserve
rollout undo` back, each with zero failed requests; the old cluster is gone after."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.e2e.conftest import Release
from tests.e2e.kube import (
    CHART,
    active_cluster,
    finserve,
    kubectl_json,
    run,
    serve_config,
    wait_until,
)
from tests.integration.conftest import ALL_MODELS
from tests.reliability.load import Ledger, Load, Tally, bodies, task_path

CLIENTS = 6


def calls() -> list[tuple[str, bytes]]:
    """A valid task-route and V2 prediction of every model."""
    out = []
    for model in ALL_MODELS:
        b = bodies(model)
        out += [(task_path(model), json.dumps(b["task"]).encode()),
                (f"/v2/models/{model}/infer", json.dumps(b["v2"]).encode())]
    return out


@contextmanager
def load(release: Release) -> Iterator[Load]:
    with Load(release.url, calls(), Ledger(), clients=CLIENTS, timeout=60,
              headers=release.headers) as running:
        time.sleep(5)  # traffic flowing before the change starts
        yield running


def assert_no_failure(tally: Tally, what: str) -> None:
    print("\n" + tally.summary(what))
    assert tally.sent > 100, f"{what}: too little traffic to tell ({tally.sent})"
    assert tally.failed == 0, tally.summary(what)


def rollout(release: Release, *args: str) -> None:
    started = time.monotonic()
    done = run(finserve(), "rollout", "-n", release.namespace, "--release", release.name,
               "--chart", str(CHART), *args, check=False, timeout=2400)
    print(f"\n[e2e] finserve rollout {' '.join(args)}: exit {done.returncode} in "
          f"{time.monotonic() - started:.0f}s\n{done.stdout[-2500:]}")
    assert done.returncode == 0, done.stdout + done.stderr


def raycluster_names(release: Release) -> set[str]:
    return {c["metadata"]["name"] for c in kubectl_json(
        "-n", release.namespace, "get", "rayclusters")["items"]}


def test_a_model_version_rollout_under_load_fails_no_request(release: Release) -> None:
    cluster = active_cluster(release.namespace)
    with load(release) as running:
        rollout(release, "--model-version", "fraud=1")
        time.sleep(5)
    assert_no_failure(running.tally, "model version rollout")
    assert active_cluster(release.namespace) == cluster, "a Serve config change replaced Ray"
    app = serve_config(release.namespace)["applications"][0]
    gateway = next(d for d in app["deployments"] if d["name"] == "gateway")
    assert gateway["user_config"]["models"]["fraud"]["versions"] == ["1"], gateway


@pytest.fixture(scope="module")
def second_tag(release: Release) -> str:
    """The same image under a second tag: a new image name for KubeRay (a new cluster), the
    same content (this machine builds one image; the tag is what a rollout changes)."""
    tag = f"{release.image_tag}-e2e2"
    source = f"docker.io/library/{release.image_repository}:{release.image_tag}"
    if "/" in release.image_repository:
        source = f"{release.image_repository}:{release.image_tag}"
    target = source.rsplit(":", 1)[0] + f":{tag}"
    run("ctr", "--address", "/run/finserve-containerd/containerd.sock", "-n", "k8s.io",
        "images", "tag", "--force", source, target)
    return tag


def test_an_image_change_rolls_a_new_ray_cluster_under_load_and_the_old_one_goes(
        release: Release, second_tag: str) -> None:
    old = active_cluster(release.namespace)
    with load(release) as running:
        rollout(release, "--image-tag", second_tag)
        time.sleep(5)
    assert_no_failure(running.tally, "blue/green image rollout")
    new = active_cluster(release.namespace)
    assert new != old, "an image change must bring up a new RayCluster"
    wait_until(f"the old RayCluster {old} deleted", lambda: old not in raycluster_names(release),
               timeout=300, interval=5)
    images = {c["image"] for p in kubectl_json("-n", release.namespace, "get", "pods", "-l",
                                              f"ray.io/cluster={new}")["items"]
              for c in p["spec"]["containers"]}
    assert any(i.endswith(f":{second_tag}") for i in images), images


def test_undo_goes_back_under_load(release: Release) -> None:
    before = active_cluster(release.namespace)
    with load(release) as running:
        done = run(finserve(), "rollout", "undo", "-n", release.namespace, "--release",
                   release.name, check=False, timeout=2400)
        print(f"\n[e2e] finserve rollout undo: exit {done.returncode}\n{done.stdout[-2500:]}")
        time.sleep(5)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_no_failure(running.tally, "undo")
    after = active_cluster(release.namespace)
    assert after != before, "undoing an image change brings up a cluster of the old image"
    images = {c["image"] for p in kubectl_json("-n", release.namespace, "get", "pods", "-l",
                                              f"ray.io/cluster={after}")["items"]
              for c in p["spec"]["containers"]}
    assert images == {f"{release.image_repository}:{release.image_tag}"}, images

"""What KubeRay makes of the chart's pod templates: shared memory for Ray's object store, a
cluster spec that chart upgrades leave alone, disruption budgets over the pods it labels, and
a model store claim seeded before Ray starts.

KubeRay behaviour is from the v1.6.2 operator (controllers/ray/common/pod.go: addEmptyDir,
makeEmptyDirVolume, labelPod; controllers/ray/utils/util.go:
GenerateHashWithoutReplicasAndWorkersToDelete), Ray's from the installed Ray
(ray._private.utils.resolve_object_store_memory, ray._private.services).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.store import ModelStore
from tests.chart.chartlib import (
    CHART,
    CI_VALUES,
    kuberay_pod_labels,
    named,
    one,
    pod_specs,
    quantity_bytes,
    render,
    selects,
    write_values,
)

pytestmark = pytest.mark.chart

def ray_groups(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(name, group spec) of the head and every worker group."""
    cluster = one(objects, "RayService")["spec"]["rayClusterConfig"]
    return [("head", cluster["headGroupSpec"]),
            *((g["groupName"], g) for g in cluster.get("workerGroupSpecs", []))]


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]["containers"][0]


# --- /dev/shm and the object store --------------------------------------------------------

def object_store_bytes(monkeypatch: pytest.MonkeyPatch, memory: int, shm: int) -> int:
    """The object store Ray sizes on a node with ``memory`` bytes and ``shm`` bytes of /dev/shm
    (Ray's own function: 30 % of the memory, capped by /dev/shm only above 10 GB)."""
    import ray._private.utils as ray_utils

    monkeypatch.setattr(ray_utils, "get_shared_memory_bytes", lambda: shm)
    return ray_utils.resolve_object_store_memory(memory)


@pytest.mark.parametrize("values", list(CI_VALUES))
def test_ray_pods_leave_dev_shm_to_kuberay_and_write_only_to_tmp(values: str) -> None:
    """KubeRay adds its memory-backed /dev/shm (sized to the memory limit) only when the Ray
    container mounts nothing there and rayStartParams set no plasma-directory."""
    for name, group in ray_groups(render(values)):
        container, spec = ray_container(group), group["template"]["spec"]
        assert "/dev/shm" not in {m["mountPath"] for m in container["volumeMounts"]}, name
        assert not any(v.get("emptyDir", {}).get("medium") == "Memory" for v in spec["volumes"])
        assert "plasma-directory" not in group["rayStartParams"], name
        assert "memory" in container["resources"]["limits"], name  # what KubeRay sizes it by
        tmp = next(v for v in spec["volumes"] if v["name"] == "tmp")
        assert "emptyDir" in tmp and {"name": "tmp", "mountPath": "/tmp"} in \
            container["volumeMounts"], name


@pytest.mark.parametrize("values", list(CI_VALUES))
def test_rays_object_store_fits_the_dev_shm_kuberay_sizes_to_the_memory_limit(
        values: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray puts the object store in /dev/shm when /dev/shm holds it, else in /tmp with a
    "will harm performance" warning (ray._private.services); KubeRay's /dev/shm is the
    container's memory limit."""
    for name, group in ray_groups(render(values)):
        limit = quantity_bytes(ray_container(group)["resources"]["limits"]["memory"])
        wanted = group["rayStartParams"].get("object-store-memory")
        store = int(wanted) if wanted else object_store_bytes(monkeypatch, limit, shm=limit)
        assert 0 < store <= limit, f"{name}: object store {store} > /dev/shm {limit}"


def test_the_old_2gib_dev_shm_sent_an_8gib_workers_object_store_to_tmp(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The defect this replaces: the chart's own 2 GiB /dev/shm was smaller than the 2.4 GiB
    object store Ray sizes for an 8 GiB worker, so Ray fell back to /tmp."""
    limit = quantity_bytes(one(render(sets=["cpuWorker.resources.limits.memory=8Gi"]),
                               "RayService")["spec"]["rayClusterConfig"][
        "workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "memory"])
    assert object_store_bytes(monkeypatch, limit, shm=2 * 2**30) > 2 * 2**30


# --- the cluster spec KubeRay hashes ------------------------------------------------------

def bumped_chart(tmp_path: Path, version: str) -> Path:
    copy = tmp_path / "finserve"
    shutil.copytree(CHART, copy)
    chart = yaml.safe_load((copy / "Chart.yaml").read_text())
    chart.update(version=version, appVersion=version)
    (copy / "Chart.yaml").write_text(yaml.safe_dump(chart, sort_keys=False))
    return copy


def test_a_chart_and_app_version_bump_leaves_the_ray_cluster_spec_alone(tmp_path: Path) -> None:
    """KubeRay hashes all of rayClusterConfig, pod template labels included, and replaces the
    Ray cluster when the hash changes: a new chart version with the same image must not."""
    sets = ["image.tag=0.1.0"]  # the image stays; only the chart and app versions move
    before = one(render(sets=sets), "RayService")
    after = one(render(sets=sets, chart=bumped_chart(tmp_path, "9.9.9")), "RayService")
    assert after["spec"]["rayClusterConfig"] == before["spec"]["rayClusterConfig"]
    # the version labels stay on the top-level objects
    assert after["metadata"]["labels"]["helm.sh/chart"] == "finserve-9.9.9"
    assert after["metadata"]["labels"]["app.kubernetes.io/version"] == "9.9.9"


@pytest.mark.parametrize("values", list(CI_VALUES))
def test_ray_pod_templates_carry_no_version_labels(values: str) -> None:
    for name, group in ray_groups(render(values)):
        labels = group["template"]["metadata"]["labels"]
        assert not {"helm.sh/chart", "app.kubernetes.io/version"} & set(labels), name
        assert labels["app.kubernetes.io/component"] == "ray", name


# --- disruption budgets -------------------------------------------------------------------

def kuberay_pods(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Labels of a pod of each group as KubeRay labels it (head: group "headgroup")."""
    return {name: kuberay_pod_labels(group["template"]["metadata"]["labels"],
                                     "head" if name == "head" else "worker",
                                     "headgroup" if name == "head" else name)
            for name, group in ray_groups(objects)}


def budget(objects: list[dict[str, Any]], suffix: str) -> dict[str, Any]:
    return named(objects, "PodDisruptionBudget", f"finserve-{suffix}")["spec"]


def test_disruption_budgets_cover_the_head_and_the_cpu_workers_each_alone() -> None:
    objects = render()
    pods = kuberay_pods(objects)
    head, cpu = budget(objects, "head"), budget(objects, "cpu")
    assert head["minAvailable"] == 1 and cpu["minAvailable"] == 1
    assert selects(head["selector"], pods["head"]) and not selects(head["selector"], pods["cpu"])
    assert selects(cpu["selector"], pods["cpu"]) and not selects(cpu["selector"], pods["head"])
    # another release's Ray pods are not counted
    other = {**pods["cpu"], "app.kubernetes.io/instance": "other"}
    assert not selects(cpu["selector"], other)


@pytest.mark.parametrize(("min_replicas", "kept"), [(1, 1), (2, 1), (3, 2), (6, 5)])
def test_a_drain_takes_one_worker_at_a_time_at_the_floor_and_never_the_last(
        min_replicas: int, kept: int) -> None:
    """minAvailable, an integer: for maxUnavailable or a percentage the disruption controller
    needs the owner's scale subresource, which RayCluster lacks, and would allow nothing."""
    sets = [f"cpuWorker.minReplicas={min_replicas}", f"cpuWorker.maxReplicas={min_replicas + 2}"]
    spec = budget(render(sets=sets), "cpu")
    assert spec["minAvailable"] == kept and "maxUnavailable" not in spec


def test_gpu_workers_get_a_budget_of_their_own() -> None:
    objects = render("gpu")
    pods = kuberay_pods(objects)
    gpu, cpu = budget(objects, "gpu"), budget(objects, "cpu")
    assert selects(gpu["selector"], pods["gpu"]) and not selects(gpu["selector"], pods["cpu"])
    assert selects(cpu["selector"], pods["cpu"]) and not selects(cpu["selector"], pods["gpu"])
    assert gpu["minAvailable"] == 1


def test_production_keeps_two_cpu_workers_and_lets_a_drain_take_one() -> None:
    objects = render("production")
    (cpu_group,) = [g for n, g in ray_groups(objects) if n == "cpu"]
    assert cpu_group["minReplicas"] == 2 and budget(objects, "cpu")["minAvailable"] == 1


def test_without_budgets_none_is_rendered() -> None:
    objects = render(sets=["podDisruptionBudget.enabled=false"])
    assert "PodDisruptionBudget" not in {o["kind"] for o in objects}


# --- the model store claim ----------------------------------------------------------------

def pvc_objects(tmp_path: Path, **pvc: Any) -> list[dict[str, Any]]:
    return render(write_values(tmp_path, {"modelStore": {"type": "pvc", "pvc": pvc}},
                               f"pvc-{len(pvc)}.yaml"))


def test_a_chart_made_claim_is_kept_and_seeded_by_the_head_before_ray_starts(
        tmp_path: Path) -> None:
    objects = pvc_objects(tmp_path)
    claim = next(o for o in objects if o["kind"] == "PersistentVolumeClaim"
                 and o["metadata"]["name"] != "finserve-audit")
    assert claim["metadata"]["name"] == "finserve-model-store"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for name, group in ray_groups(objects):
        spec = group["template"]["spec"]
        volume = next(v for v in spec["volumes"] if v["name"] == "model-store")
        assert volume["persistentVolumeClaim"] == {"claimName": "finserve-model-store"}
        mount = next(m for m in ray_container(group)["volumeMounts"] if m["name"] ==
                     "model-store")
        assert mount == {"name": "model-store", "mountPath": "/models", "readOnly": True}, name
        inits = spec.get("initContainers", [])
        if name == "head":  # before Ray starts there, so before any worker joins
            (seed,) = inits
            assert seed["image"] == ray_container(group)["image"]
            assert seed["securityContext"] == ray_container(group)["securityContext"]
            assert seed["resources"] == ray_container(group)["resources"]  # adds no request
            assert seed["volumeMounts"] == [{"name": "model-store", "mountPath": "/models"}]
            assert "/home/ray/finserve/model_store" in seed["args"][0]
        else:
            assert not inits, name


def test_an_existing_claim_or_seed_off_is_never_written(tmp_path: Path) -> None:
    for pvc in ({"existingClaim": "models-nfs"}, {"seedFromImage": False}):
        for name, spec in pod_specs(pvc_objects(tmp_path, **pvc)):
            assert not spec.get("initContainers"), (pvc, name)


def manifest(root: Path, model: str, version: str) -> None:
    (root / model / version).mkdir(parents=True)
    (root / model / version / "manifest.json").write_text("{}")


def test_the_seed_copies_only_models_the_claim_lacks_and_never_a_half_copy(
        tmp_path: Path) -> None:
    image, claim = tmp_path / "image", tmp_path / "claim"
    for model in ("fraud", "sentiment", "credit"):
        manifest(image, model, "1")
    manifest(claim, "fraud", "3")  # published into the claim: never touched
    (claim / ".seed-sentiment").mkdir()  # a copy cut short last time
    (claim / "lost+found").mkdir(mode=0o700)
    values = {"modelStore": {"type": "pvc", "image": {"path": str(image)},
                             "pvc": {"mountPath": str(claim)}}}
    head = one(render(write_values(tmp_path, values)), "RayService")["spec"][
        "rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    (seed,) = head["initContainers"]

    def run() -> str:
        proc = subprocess.run([*seed["command"], seed["args"][0]], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    out = run()
    assert "fraud is in the claim, kept" in out and "seeded sentiment" in out
    assert ModelStore(claim).models() == ["credit", "fraud", "sentiment"]
    assert ModelStore(claim).versions("fraud") == ["3"]
    assert not list(claim.glob(".seed-*"))
    assert "seeded" not in run()  # a second start changes nothing


def test_ray_pod_templates_leave_the_app_name_label_to_kuberay() -> None:
    """KubeRay labels every Ray pod app.kubernetes.io/name=kuberay and selects on it for the
    RayService's `<name>-head-svc`; a template that sets it leaves that Service empty."""
    for name, group in ray_groups(render(sets=["gpuWorker.enabled=true"])):
        labels = group["template"]["metadata"]["labels"]
        assert "app.kubernetes.io/name" not in labels, name
        assert labels["app.kubernetes.io/instance"] == "finserve", name


def test_worker_groups_carry_the_defaults_kuberay_writes_back() -> None:
    """KubeRay's one Update of the RayService writes numOfHosts, scaleStrategy and port
    protocols into the worker group list and so co-owns it; rendering the same values keeps
    Helm 4's server-side apply of an unrelated change free of conflicts."""
    for name, group in ray_groups(render(sets=["gpuWorker.enabled=true"])):
        if name != "head":
            assert group["numOfHosts"] == 1 and group["scaleStrategy"] == {}, name
        for container in group["template"]["spec"]["containers"]:
            for port in container.get("ports", []):
                assert port["protocol"] == "TCP", (name, port)

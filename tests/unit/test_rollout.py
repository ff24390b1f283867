"""``finserve rollout`` against scripted helm and Kubernetes stand-ins (no cluster, no Ray).

The RayService statuses, events, pods and RayClusters below have the shapes KubeRay's
controller writes (ray-operator v1.6.2 and v1.7.0, ``controllers/ray/rayservice_controller.go``;
each builder names the function it follows); the helm histories have helm v4.1.4's
(``pkg/action/rollback.go``, ``upgrade.go``, ``pkg/cmd/history.go``). Scenarios run on a
fake clock.
"""

from __future__ import annotations

import copy
import io
import json
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
import urllib3
import yaml
from kubernetes.client.exceptions import ApiException
from rich.console import Console
from typer.testing import CliRunner

from rollout import cli
from rollout.decision import rollout_state
from rollout.drift import cluster_drift
from rollout.events import event_fingerprint, new_events
from rollout.helm import Helm, HelmError
from rollout.history import current_revision, undo_target
from rollout.kube import (
    REQUEST_TIMEOUT,
    ApiDenied,
    ApiUnavailable,
    KubeAccessError,
    KubeApiError,
    KubeRayServiceWatcher,
    classify_api_error,
)
from rollout.kuberay import (
    DASHBOARD_TIMEOUT_S,
    KUBERAY_REQUEUE_S,
    MIN_SETTLE_S,
    PROXY_CHECK_TIMEOUT_S,
)
from rollout.options import RolloutOptions
from rollout.pods import starting_cluster
from rollout.release import Rollout
from rollout.states import (
    EXIT_NOT_APPLIED,
    EXIT_NOT_ROLLED_BACK,
    EXIT_ROLLED_BACK,
    EXIT_UNOBSERVABLE,
    Done,
    Failed,
    NotApplied,
    Progress,
)
from rollout.values import model_version_values
from rollout.wait import MAX_BACKOFF_S

CHART_VALUES = Path(__file__).resolve().parents[2] / "charts" / "finserve" / "values.yaml"
NS = "banking"
RS_UID = "0b6f3c1e-3f0c-4c59-9a47-2d1f6e0c5a11"
T0 = datetime(2026, 12, 2, 10, 0, 0, tzinfo=UTC)


def ts(seconds: float = 0) -> str:
    """metav1.Time as the API serializes it (RFC 3339, whole seconds)."""
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro(seconds: float = 0) -> str:
    """metav1.MicroTime (events.k8s.io eventTime, series.lastObservedTime)."""
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------- KubeRay shapes


def cluster_config(image: str = "finserve:0.1.0", max_replicas: int = 4,
                   autoscaling: bool = True) -> dict[str, Any]:
    """spec.rayClusterConfig as the chart renders it (charts/finserve, trimmed)."""

    def template(container: str, cpu: str, memory: str) -> dict[str, Any]:
        return {"metadata": {"labels": {"app.kubernetes.io/name": "finserve"}},
                "spec": {"containers": [{
                    "name": container, "image": image, "imagePullPolicy": "IfNotPresent",
                    "ports": [{"name": "serve", "containerPort": 8000}],
                    "resources": {"limits": {"cpu": cpu, "memory": memory},
                                  "requests": {"cpu": cpu, "memory": memory}},
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "10Gi"}}]}}

    return {"rayVersion": "2.60.0", "enableInTreeAutoscaling": autoscaling,
            "headGroupSpec": {"serviceType": "ClusterIP",
                              "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                              "template": template("ray-head", "2", "4Gi")},
            "workerGroupSpecs": [{"groupName": "cpu", "replicas": 1, "minReplicas": 1,
                                  "maxReplicas": max_replicas, "numOfHosts": 1,
                                  "rayStartParams": {},
                                  "template": template("ray-worker", "2", "8Gi")}]}


def go_round_trip(spec: dict[str, Any]) -> dict[str, Any]:
    """A rayClusterConfig as KubeRay writes it into a RayCluster: decoded into the Go struct
    and encoded again (constructRayClusterForRayService): empty maps dropped (omitempty),
    pod template metadata gains ``creationTimestamp: null``, quantities canonical."""

    def walk(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            out = {k: walk(v, k) for k, v in value.items() if v != {}}
            if key == "template":
                out.setdefault("metadata", {})["creationTimestamp"] = None
            return out
        if isinstance(value, list):
            return [walk(v) for v in value]
        if key == "cpu" and value == "0.5":
            return "500m"
        return value

    return walk(copy.deepcopy(spec))


def raycluster(spec: dict[str, Any], name: str = "finserve-abcde",
               autoscaled_replicas: int | None = 3) -> dict[str, Any]:
    """A RayCluster as constructRayClusterForRayService creates it, after the autoscaler set
    the worker replicas."""
    cluster_spec = go_round_trip(spec)
    if autoscaled_replicas is not None:
        for group in cluster_spec["workerGroupSpecs"]:
            group["replicas"] = autoscaled_replicas
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster",
            "metadata": {"name": name, "namespace": NS,
                         "labels": {"ray.io/originated-from-cr-name": "finserve",
                                    "ray.io/originated-from-crd": "RayService"},
                         "annotations": {
                             "ray.io/hash-without-replicas-and-workers-to-delete":
                                 "4JMGPN3PCDNHEIUMBPBN0TB8N9IOSK4T",
                             "ray.io/num-worker-groups": str(len(spec["workerGroupSpecs"])),
                             "ray.io/kuberay-version": "v1.6.2"}},
            "spec": cluster_spec, "status": {"state": "ready"}}


def rayservice(
    generation: int = 2,
    observed: int | None = 2,
    ready: str = "True",
    upgrading: str = "False",
    active: str = "finserve-abcde",
    apps: dict[str, str] | None = None,
    pending: str = "",
    pending_apps: dict[str, str] | None = None,
    ready_reason: str | None = None,
    message: str = "",
    updated: float = 0,
    config: dict[str, Any] | None = None,
    upgrade_type: str | None = "NewCluster",
) -> dict[str, Any]:
    """A RayService with the status calculateStatus/calculateConditions write: conditions
    carry status.observedGeneration (setCondition), lastUpdateTime changes on every write."""

    def statuses(values: dict[str, str] | None) -> dict[str, Any]:
        return {name: {"status": s, **({"message": message} if s != "RUNNING" else {}),
                       "serveDeploymentStatuses": {"gateway": {
                           "status": "HEALTHY" if s == "RUNNING" else "UPDATING"}}}
                for name, s in (values or {}).items()}

    ready_reason = ready_reason or ("NonZeroServeEndpoints" if ready == "True"
                                    else "Initializing")
    ready_message = message or {"NonZeroServeEndpoints": "Number of serve endpoints is "
                                "greater than 0", "Initializing": "RayService is initializing"
                                }.get(ready_reason, "")
    both = upgrading == "True"
    status: dict[str, Any] = {
        "conditions": [
            {"type": "Ready", "status": ready, "reason": ready_reason, "message": ready_message,
             "observedGeneration": observed or 0, "lastTransitionTime": ts(0)},
            {"type": "UpgradeInProgress", "status": upgrading,
             "reason": "BothActivePendingClustersExist" if both else "NoPendingCluster",
             "message": "Both active and pending Ray clusters exist" if both else
             "Active Ray cluster exists and no pending Ray cluster",
             "observedGeneration": observed or 0, "lastTransitionTime": ts(0)},
        ],
        "lastUpdateTime": ts(updated),
        "numServeEndpoints": 1 if ready == "True" else 0,
        "activeServiceStatus": {"rayClusterName": active, "applicationStatuses": statuses(
            {"finserve": "RUNNING"} if apps is None else apps)},
        "pendingServiceStatus": {"rayClusterName": pending,
                                 "applicationStatuses": statuses(pending_apps)} if pending else {},
    }
    if ready == "True":
        status["serviceStatus"] = "Running"
    if observed is not None:
        status["observedGeneration"] = observed
    spec: dict[str, Any] = {"serveConfigV2": "applications: []\n",
                            "rayClusterConfig": config or cluster_config()}
    if upgrade_type:
        spec["upgradeStrategy"] = {"type": upgrade_type}
    return {"apiVersion": "ray.io/v1", "kind": "RayService",
            "metadata": {"name": "finserve", "namespace": NS, "uid": RS_UID,
                         "generation": generation},
            "spec": spec, "status": status}


def rejected(before: dict[str, Any], generation: int, message: str,
             at: float = 3) -> dict[str, Any]:
    """The RayService after KubeRay refused generation ``generation``: validateRayService's
    branch of Reconcile sets Ready=False/ValidationFailed with the old observedGeneration
    (setCondition copies status.observedGeneration) and a new lastUpdateTime, and nothing
    else (calculateStatus does not run)."""
    obj = copy.deepcopy(before)
    obj["metadata"]["generation"] = generation
    status = obj["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    if ready["status"] != "False":
        ready["lastTransitionTime"] = ts(at)
    ready.update(status="False", reason="ValidationFailed", message=message,
                 observedGeneration=status.get("observedGeneration", 0))
    status["lastUpdateTime"] = ts(at)
    return obj


def core_event(reason: str, message: str, *, uid: str = "ev-1", kind: str = "Warning",
               count: int = 1, at: float = 3, rs_uid: str = RS_UID) -> dict[str, Any]:
    """A core/v1 Event as KubeRay v1.6.2's record.EventRecorder writes it (repeats raise
    count and lastTimestamp)."""
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"finserve.{uid}", "namespace": NS, "uid": uid,
                         "creationTimestamp": ts(at)},
            "involvedObject": {"apiVersion": "ray.io/v1", "kind": "RayService",
                               "name": "finserve", "namespace": NS, "uid": rs_uid},
            "reason": reason, "message": message, "type": kind, "count": count,
            "firstTimestamp": ts(at), "lastTimestamp": ts(at + count - 1),
            "source": {"component": "rayservice-controller"}, "eventTime": None,
            "reportingComponent": "rayservice-controller", "reportingInstance": ""}


def series_event(reason: str, message: str, *, uid: str = "ev-2", kind: str = "Warning",
                 at: float = 3, repeats: int = 0, action: str = "Validate") -> dict[str, Any]:
    """An events.k8s.io/v1 Event as KubeRay v1.7.0's events.EventRecorder writes it
    (Eventf(obj, nil, type, reason, action, note)), read through core/v1 as the watcher does:
    eventTime set, count and lastTimestamp empty, repeats in series."""
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"finserve.{uid}", "namespace": NS, "uid": uid,
                         "creationTimestamp": ts(at)},
            "involvedObject": {"apiVersion": "ray.io/v1", "kind": "RayService",
                               "name": "finserve", "namespace": NS, "uid": RS_UID},
            "reason": reason, "message": message, "type": kind, "eventTime": micro(at),
            "action": action, "reportingComponent": "rayservice-controller",
            "reportingInstance": "rayservice-controller-kuberay-operator-6d9f8c7b5-q2x8k",
            "series": {"count": repeats + 1, "lastObservedTime": micro(at + repeats)}
            if repeats else None,
            "source": {}, "firstTimestamp": None, "lastTimestamp": None}


INVALID = ("banking/finserve: The RayService spec is invalid: worker group cpu has "
           "minReplicas 5 greater than maxReplicas 4")


def pod(cluster: str, node_type: str = "head", *, waiting: str | None = None,
        message: str = "", init_waiting: str | None = None, restarts: int = 0,
        unschedulable_at: float | None = None) -> dict[str, Any]:
    """A Ray pod as the kubelet and the scheduler report it (labels from KubeRay's
    common/pod.go: ray.io/cluster, ray.io/node-type, ray.io/group)."""
    group = "headgroup" if node_type == "head" else "cpu"
    name = f"{cluster}-head-x7k2p" if node_type == "head" else f"{cluster}-cpu-worker-9fz4d"
    container = "ray-head" if node_type == "head" else "ray-worker"
    status: dict[str, Any] = {"phase": "Pending", "qosClass": "Guaranteed", "conditions": [
        {"type": "PodScheduled", "status": "True", "lastProbeTime": None,
         "lastTransitionTime": ts(0)}]}
    if unschedulable_at is not None:
        status["conditions"] = [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are "
                       "available: 1 No preemption victims found for incoming pod.",
            "lastProbeTime": None, "lastTransitionTime": ts(unschedulable_at)}]
    if waiting:
        last = {"terminated": {"exitCode": 1, "reason": "Error", "startedAt": ts(0),
                               "finishedAt": ts(1), "containerID": "containerd://4f2a"}}
        status["containerStatuses"] = [{
            "name": container, "image": "finserve:0.2.0", "imageID": "", "ready": False,
            "restartCount": restarts, "started": False,
            "state": {"waiting": {"reason": waiting, "message": message}},
            "lastState": last if waiting == "CrashLoopBackOff" else {}}]
    if init_waiting:
        status["initContainerStatuses"] = [{
            "name": "wait-gcs-ready", "image": "finserve:0.2.0", "imageID": "", "ready": False,
            "restartCount": 0, "started": False,
            "state": {"waiting": {"reason": init_waiting, "message": message}},
            "lastState": {}}]
        status["containerStatuses"] = [{
            "name": container, "image": "finserve:0.2.0", "imageID": "", "ready": False,
            "restartCount": 0, "started": False,
            "state": {"waiting": {"reason": "PodInitializing"}}, "lastState": {}}]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": {
                "ray.io/cluster": cluster, "ray.io/node-type": node_type, "ray.io/group": group,
                "ray.io/is-ray-node": "yes"}},
            "status": status}


PULL_FAILED = ('Back-off pulling image "finserve:0.2.0": ErrImagePull: failed to pull and '
               'unpack image "docker.io/library/finserve:0.2.0": failed to resolve reference '
               '"docker.io/library/finserve:0.2.0": not found')


# --------------------------------------------------------------------------- stand-ins


class FakeClock:
    """Time moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


class ScriptedKube:
    """The Kubernetes API for one RayService. Before helm applies anything, ``get`` answers
    ``before``; afterwards it plays ``script``, one step per ``get`` (the last step repeats).
    A step is a RayService dict, ``(rayservice, [events recorded now])``, or an exception
    to raise. ``pods`` and ``clusters`` answer the pod list and RayCluster reads."""

    name = "finserve"

    def __init__(self, script: Sequence[Any], events: Sequence[dict] = (),
                 before: Any = "previous", clock: FakeClock | None = None,
                 pods: Sequence[dict] = (), clusters: dict[str, dict] | None = None) -> None:
        self.events_now = list(events)
        self.seen: list[dict[str, Any] | None] = []
        self.applied = False
        self.on_apply: list[dict] = []
        self.pods_now = list(pods)
        self.clusters = clusters or {}
        self.clock = clock
        self.play(script)
        first = script[0][0] if isinstance(script[0], tuple) else script[0]
        if before == "previous":  # the settled previous generation
            gen = first["metadata"]["generation"] - 1 if isinstance(first, dict) else 1
            before = rayservice(generation=gen, observed=gen)
        self.before = before

    def play(self, script: Sequence[Any]) -> None:
        self.script = list(script)

    def helm_applied(self) -> None:
        """helm changed the RayService: KubeRay reacts at once."""
        self.applied = True
        self.events_now += self.on_apply

    def get(self) -> dict[str, Any] | None:
        if not self.applied:
            return self.before
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, BaseException):
            raise step
        obj, new_events = step if isinstance(step, tuple) else (step, [])
        self.events_now += [e for e in new_events if e not in self.events_now]
        self.seen.append(obj)
        return obj

    def events(self) -> list[dict[str, Any]]:
        return list(self.events_now)

    def pods(self, cluster: str) -> list[dict[str, Any]]:
        return [p for p in self.pods_now if p["metadata"]["labels"]["ray.io/cluster"] == cluster]

    def raycluster(self, name: str) -> dict[str, Any] | None:
        return self.clusters.get(name)

    def server_now(self) -> datetime | None:
        return T0 + timedelta(seconds=self.clock.t) if self.clock else None


def history_row(revision: int, status: str, description: str,
                chart: str = "finserve-0.1.0") -> dict[str, Any]:
    """One entry of ``helm history -o json`` (helm v4 pkg/cmd/history.go releaseInfo)."""
    return {"revision": revision, "updated": f"2026-12-02T10:{revision:02d}:00.000000+00:00",
            "status": status, "chart": chart, "app_version": "0.1.0",
            "description": description}


class FakeHelm:
    """helm v4 over a release history: upgrade supersedes the deployed revision ("Upgrade
    complete"), rollback records "Rollback to N" (pkg/action/rollback.go); both tell the
    ScriptedKube that helm applied. ``on_rollback`` replays the cluster's reaction."""

    def __init__(self, revisions: int = 2, on_rollback: Callable[[], None] | None = None,
                 upgrade_error: str | None = None, kube: ScriptedKube | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.history_rows = [history_row(r, "superseded", "Install complete" if r == 1
                                         else "Upgrade complete") for r in range(1, revisions)]
        if revisions:
            self.history_rows.append(history_row(revisions, "deployed", "Install complete"
                                                 if revisions == 1 else "Upgrade complete"))
        self.on_rollback = on_rollback
        self.upgrade_error = upgrade_error
        self.upgrade_files: list[dict[str, Any]] = []
        self.kube = kube
        self.history_errors: list[str] = []

    def _new_revision(self, description: str, status: str = "deployed") -> int:
        for row in self.history_rows:
            if row["status"] == "deployed":
                row["status"] = "superseded"
        revision = len(self.history_rows) + 1
        self.history_rows.append(history_row(revision, status, description))
        return revision

    def history(self, release: str) -> list[dict[str, Any]]:
        self.calls.append(("history", release))
        if self.history_errors:
            raise HelmError(self.history_errors.pop(0))
        return [dict(r) for r in self.history_rows]

    def upgrade(self, release: str, chart: str, values_files: Sequence[str] = (),
                set_values: Sequence[str] = ()) -> None:
        self.calls.append(("upgrade", release, chart, tuple(values_files), tuple(set_values)))
        self.upgrade_files = [yaml.safe_load(Path(f).read_text()) for f in values_files]
        if self.upgrade_error:
            raise HelmError(self.upgrade_error)
        self._new_revision("Upgrade complete" if self.history_rows else "Install complete")
        if self.kube:
            self.kube.helm_applied()

    def rollback(self, release: str, revision: int) -> None:
        self.calls.append(("rollback", release, revision))
        self._new_revision(f"Rollback to {revision}")
        if self.kube:
            self.kube.helm_applied()
        if self.on_rollback:
            self.on_rollback()

    def values(self, release: str) -> dict[str, Any]:
        self.calls.append(("values", release))
        return yaml.safe_load(CHART_VALUES.read_text())

    def rayservice_name(self, release: str) -> str:
        return "finserve"

    def called(self, name: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == name]


def make_rollout(helm: FakeHelm, kube: ScriptedKube, clock: FakeClock,
                 **options: Any) -> tuple[Rollout, io.StringIO]:
    """A Rollout over the stand-ins, with ``options`` (RolloutOptions fields) over a 5 s poll
    and a 10 s settle."""
    helm.kube = kube
    kube.clock = clock
    out = io.StringIO()
    console = Console(file=out, width=400, color_system=None)
    rollout = Rollout(helm=helm, make_watcher=lambda name: kube,  # type: ignore[arg-type]
                      console=console, clock=clock,
                      options=RolloutOptions(**{"poll": 5.0, "settle": 10.0, **options}))
    return rollout, out


# --------------------------------------------------------------------------- rollout_state


def test_a_settled_rayservice_is_done() -> None:
    state = rollout_state(rayservice())
    assert isinstance(state, Done) and "finserve-abcde" in state.detail


def test_status_of_an_older_generation_is_not_done_even_if_everything_runs() -> None:
    state = rollout_state(rayservice(generation=3, observed=2))
    assert isinstance(state, Progress) and "generation 3" in state.detail


def test_ready_during_a_blue_green_switch_is_not_done() -> None:
    obj = rayservice(upgrading="True", pending="finserve-new12",
                     pending_apps={"finserve": "RUNNING"})
    state = rollout_state(obj)
    assert isinstance(state, Progress) and "finserve-new12" in state.detail


def test_upgrade_in_progress_without_a_pending_name_is_not_done() -> None:
    assert isinstance(rollout_state(rayservice(upgrading="True")), Progress)


def test_an_application_that_is_not_running_yet_is_not_done() -> None:
    assert isinstance(rollout_state(rayservice(apps={"finserve": "DEPLOYING"})), Progress)
    assert isinstance(rollout_state(rayservice(apps={})), Progress)
    assert isinstance(rollout_state(rayservice(ready="False")), Progress)
    assert isinstance(rollout_state(None), Progress)


@pytest.mark.parametrize("status", ["DEPLOY_FAILED", "UNHEALTHY"])
def test_a_failed_or_unhealthy_application_fails_the_rollout(status: str) -> None:
    state = rollout_state(rayservice(apps={"finserve": status}, message="ImportError: nope"))
    assert isinstance(state, Failed)
    assert status in state.reason and "ImportError: nope" in state.reason


def test_a_failed_application_on_the_pending_cluster_fails_the_rollout() -> None:
    obj = rayservice(upgrading="True", pending="finserve-new12",
                     pending_apps={"finserve": "DEPLOY_FAILED"}, message="no model v9")
    state = rollout_state(obj)
    assert isinstance(state, Failed) and "pending cluster finserve-new12" in state.reason


def test_a_stale_failure_of_an_older_generation_is_not_this_rollouts_failure() -> None:
    assert isinstance(rollout_state(rayservice(generation=3, observed=2,
                                               apps={"finserve": "DEPLOY_FAILED"})), Progress)


# --------------------------------------------------------------------------- 1. rejection


@pytest.mark.parametrize("event", [
    core_event("InvalidRayServiceSpec", INVALID),  # v1.6.2
    series_event("InvalidRayServiceSpec", INVALID),  # v1.7.0
    core_event("InvalidRayServiceMetadata", "banking/finserve: The RayService metadata is "
               "invalid: RayService name should be no more than 47 characters"),
])
def test_a_rejection_event_recorded_since_the_rollout_began_fails_it(event: dict) -> None:
    """validateRayService records the event and returns without requeue (Reconcile)."""
    before = rayservice()
    obj = rejected(before, generation=3, message=INVALID)
    events = new_events([event], frozenset(), RS_UID)
    state = rollout_state(obj, events, before=before)
    assert isinstance(state, Failed) and "KubeRay rejected the spec" in state.reason
    assert event["reason"] in state.reason


def test_a_ready_false_validation_condition_written_after_the_start_fails_the_rollout() -> None:
    """Events are best effort (the recorder's spam filter may drop one); the condition,
    with its old observedGeneration, is rewritten by each validation failure."""
    before = rayservice()
    obj = rejected(before, generation=3, message=INVALID)
    assert obj["status"]["conditions"][0]["observedGeneration"] == 2  # as KubeRay writes it
    state = rollout_state(obj, before=before)
    assert isinstance(state, Failed) and "minReplicas 5 greater than maxReplicas 4" in state.reason


def test_an_earlier_rejection_still_showing_is_not_this_rollouts_until_rewritten() -> None:
    earlier = rejected(rayservice(), generation=3, message=INVALID)  # before helm ran
    now = copy.deepcopy(earlier)
    now["metadata"]["generation"] = 4  # helm applied; KubeRay has not reconciled yet
    assert isinstance(rollout_state(now, before=earlier), Progress)
    again = rejected(now, generation=4, message=INVALID, at=9)  # KubeRay rejected 4 too
    assert isinstance(rollout_state(again, before=earlier), Failed)


def test_a_validation_condition_is_stale_once_kuberay_observed_the_generation() -> None:
    """calculateConditions leaves Ready=False/ValidationFailed while there are no serve
    endpoints, but status.observedGeneration advances: the new spec was accepted."""
    obj = rayservice(generation=3, observed=3, ready="False", ready_reason="ValidationFailed",
                     message="an earlier mistake")
    assert isinstance(rollout_state(obj), Progress)


def test_events_before_the_rollout_or_of_a_deleted_namesake_do_not_count() -> None:
    old = core_event("InvalidRayServiceSpec", INVALID, uid="old")
    other = core_event("InvalidRayServiceSpec", INVALID, uid="gone", rs_uid="another-uid")
    seen = frozenset({event_fingerprint(old)})
    assert new_events([old, other], seen, RS_UID) == []
    repeated = core_event("InvalidRayServiceSpec", INVALID, uid="old", count=2, at=40)
    assert new_events([repeated], seen, RS_UID) == [repeated]  # v1.6.2 repeat: count 2
    first = series_event("InvalidRayServiceSpec", INVALID, uid="s")
    again = series_event("InvalidRayServiceSpec", INVALID, uid="s", repeats=1)
    assert new_events([again], frozenset({event_fingerprint(first)}), RS_UID) == [again]


def test_a_rejected_upgrade_is_reported_at_once_with_kuberays_reason() -> None:
    """helm returns after the apply; KubeRay has already rejected the spec and recorded its
    event before the watcher's first look. The rollout fails in its first poll."""
    before = rayservice()
    kube = ScriptedKube([rejected(before, generation=3, message=INVALID)], before=before)
    kube.on_apply = [core_event("InvalidRayServiceSpec", INVALID, uid="new")]
    helm = FakeHelm(on_rollback=lambda: kube.play([rayservice(generation=4, observed=4)]))
    clock = FakeClock()
    rollout, out = make_rollout(helm, kube, clock, set_values=["cpuWorker.minReplicas=5"],
                                timeout=600)
    assert rollout.start() == EXIT_ROLLED_BACK
    text = out.getvalue()
    assert "rollout failed: KubeRay rejected the spec (InvalidRayServiceSpec" in text
    assert "minReplicas 5 greater than maxReplicas 4" in text
    assert helm.called("rollback") == [("rollback", "finserve", 2)]
    assert "     0s  KubeRay rejected the spec" in text  # the first look, not the deadline
    assert "not rolled out after" not in text


def test_an_older_rejection_event_does_not_fail_a_good_rollout() -> None:
    old = core_event("InvalidRayServiceSpec", "an earlier mistake", uid="old")
    kube = ScriptedKube([rayservice(generation=3, observed=2),
                         rayservice(generation=3, observed=3)], events=[old])
    rollout, _ = make_rollout(FakeHelm(), kube, FakeClock())
    assert rollout.start() == 0


# --------------------------------------------------------------------------- 2. undo


def test_undo_after_an_automatic_rollback_skips_the_bad_revision() -> None:
    history = [history_row(1, "superseded", "Install complete"),
               history_row(2, "superseded", "Upgrade complete"),
               history_row(3, "superseded", "Upgrade complete"),  # bad: rolled back by us
               history_row(4, "deployed", "Rollback to 2")]
    assert undo_target(history)[0] == 1


def test_undo_after_a_failed_helm_upgrade_goes_to_the_one_before_the_deployed() -> None:
    history = [history_row(1, "superseded", "Install complete"),
               history_row(2, "deployed", "Upgrade complete"),
               history_row(3, "failed", 'Upgrade "finserve" failed: context deadline exceeded')]
    assert undo_target(history)[0] == 1


def test_undo_follows_chains_of_rollbacks_to_the_first_deployment_of_the_content() -> None:
    history = [history_row(1, "superseded", "Install complete"),
               history_row(2, "superseded", "Upgrade complete"),
               history_row(3, "superseded", "Upgrade complete"),
               history_row(4, "superseded", "Rollback to 2"),
               history_row(5, "superseded", "Upgrade complete"),
               history_row(6, "deployed", "Rollback to 4")]
    target, why = undo_target(history)
    assert target == 1 and "content of revision 2" in why


def test_undo_after_a_failed_rollback_reads_the_newest_superseded_revision() -> None:
    """performRollback marks the current release superseded and the new one failed: no
    revision is deployed."""
    history = [history_row(1, "superseded", "Install complete"),
               history_row(2, "superseded", "Upgrade complete"),
               history_row(3, "failed", 'Rollback "finserve" failed: timed out')]
    assert current_revision(history) == 2
    assert undo_target(history)[0] == 1


def test_undo_has_nothing_to_go_to_after_a_first_install_or_a_pruned_history() -> None:
    assert undo_target([history_row(1, "deployed", "Install complete")])[0] is None
    pruned = [history_row(8, "superseded", "Upgrade complete"),
              history_row(9, "deployed", "Rollback to 7")]  # helm --history-max dropped 7
    target, why = undo_target(pruned)
    assert target is None and "history-max" in why


def test_undo_after_an_automatic_rollback_goes_back_to_the_release_before_it() -> None:
    kube = ScriptedKube([rayservice(generation=3, observed=3, apps={"finserve":
                                                                    "DEPLOY_FAILED"})])
    helm = FakeHelm(revisions=2, on_rollback=lambda: kube.play([
        rayservice(generation=4, observed=4)]))
    rollout, out = make_rollout(helm, kube, FakeClock(), image_tag="0.3.0")
    assert rollout.start() == EXIT_ROLLED_BACK
    assert [r["description"] for r in helm.history_rows] == [
        "Install complete", "Upgrade complete", "Upgrade complete", "Rollback to 2"]
    kube.play([rayservice(generation=5, observed=4), rayservice(generation=5, observed=5)])
    rollout.options = replace(rollout.options, timeout=120)
    assert rollout.undo() == 0
    assert helm.called("rollback")[-1] == ("rollback", "finserve", 1)
    assert "revision 1 ran before it" in out.getvalue()


# --------------------------------------------------------------------------- 3. not applied


def test_a_max_replicas_change_alone_is_not_applied_to_the_running_cluster() -> None:
    """GenerateHashWithoutReplicasAndWorkersToDelete mutes maxReplicas: shouldUpdateCluster
    and shouldPrepareNewCluster both see an equal hash and leave the cluster alone."""
    obj = rayservice(config=cluster_config(max_replicas=6))
    state = rollout_state(obj, active_cluster=raycluster(cluster_config(max_replicas=4)))
    assert isinstance(state, NotApplied)
    assert "workerGroupSpecs[cpu].maxReplicas 4 -> 6" in state.reason
    assert ('kubectl -n banking patch raycluster finserve-abcde --type json -p '
            '\'[{"op":"add","path":"/spec/workerGroupSpecs/0/maxReplicas","value":6}]\''
            in state.reason)


def test_a_cluster_written_back_by_kuberay_and_scaled_by_the_autoscaler_has_no_drift() -> None:
    config = cluster_config()
    config["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"] = {
        "limits": {"cpu": "0.5", "memory": "1024Mi"}, "requests": {"cpu": 0.5,
                                                                   "memory": "1Gi"}}
    assert cluster_drift(rayservice(config=config), raycluster(config)) is None


def test_replicas_count_only_without_in_tree_autoscaling() -> None:
    config = cluster_config(autoscaling=False)
    drift = cluster_drift(rayservice(config=config), raycluster(config,
                                                                   autoscaled_replicas=3))
    assert isinstance(drift, NotApplied) and "workerGroupSpecs[cpu].replicas 3 -> 1" in drift.reason


def test_an_image_change_with_upgrade_strategy_none_is_not_applied() -> None:
    """isZeroDowntimeUpgradeEnabled is false for type None: no pending cluster, no update."""
    obj = rayservice(config=cluster_config(image="finserve:0.2.0"), upgrade_type="None")
    state = rollout_state(obj, active_cluster=raycluster(cluster_config()))
    assert isinstance(state, NotApplied)
    assert "headGroupSpec.template.spec.containers[ray-head].image" in state.reason
    assert "upgradeStrategy.type is None" in state.reason
    assert "kubectl -n banking delete raycluster finserve-abcde" in state.reason


def test_incremental_upgrade_without_the_feature_gate_is_named() -> None:
    obj = rayservice(config=cluster_config(image="finserve:0.2.0"),
                     upgrade_type="NewClusterWithIncrementalUpgrade")
    drift = cluster_drift(obj, raycluster(cluster_config()))
    assert isinstance(drift, NotApplied) and "RayServiceIncrementalUpgrade" in drift.reason


def test_with_new_cluster_a_hashed_difference_is_kuberays_business() -> None:
    """With NewCluster KubeRay names a pending cluster in the same status write that
    advances observedGeneration, so a settled status never has a real hashed difference."""
    obj = rayservice(config=cluster_config(image="finserve:0.2.0"))
    assert cluster_drift(obj, raycluster(cluster_config())) is None


def test_an_appended_worker_group_is_applied_in_place() -> None:
    """isClusterSpecHashEqual(partial): KubeRay updates the RayCluster with the whole spec."""
    config = cluster_config(max_replicas=6)
    gpu = copy.deepcopy(config["workerGroupSpecs"][0]) | {"groupName": "gpu"}
    config["workerGroupSpecs"].append(gpu)
    assert cluster_drift(rayservice(config=config), raycluster(config)) is None


def test_tolerations_added_by_another_controller_are_not_drift_but_missing_ones_are() -> None:
    config = cluster_config()
    cluster = raycluster(config)
    kueue = {"key": "kueue.x-k8s.io/flavor", "operator": "Exists", "effect": "NoSchedule"}
    cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["tolerations"] = [kueue]
    assert cluster_drift(rayservice(config=config), cluster) is None
    wanted = copy.deepcopy(config)
    wanted["workerGroupSpecs"][0]["template"]["spec"]["tolerations"] = [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    drift = cluster_drift(rayservice(config=wanted), cluster)
    assert isinstance(drift, NotApplied) and "tolerations" in drift.reason


def test_a_suspend_change_is_not_carried_to_a_running_cluster_by_v1_7() -> None:
    """v1.7.0 rayClusterSpecForHashing drops Suspend and modifyRayCluster keeps the cluster's."""
    config = cluster_config() | {"suspend": True}
    drift = cluster_drift(rayservice(config=config), raycluster(cluster_config()))
    assert isinstance(drift, NotApplied) and "spec.suspend" in drift.reason


def test_a_rollout_kuberay_does_not_apply_exits_3_without_rolling_back() -> None:
    live = raycluster(cluster_config(max_replicas=4))
    obj = rayservice(generation=3, observed=3, config=cluster_config(max_replicas=6))
    kube = ScriptedKube([rayservice(generation=3, observed=2), obj],
                        clusters={"finserve-abcde": live})
    helm = FakeHelm()
    rollout, out = make_rollout(helm, kube, FakeClock(), set_values=["cpuWorker.maxReplicas=6"])
    assert rollout.start() == EXIT_NOT_APPLIED
    assert not helm.called("rollback")
    text = out.getvalue()
    assert "rolled out only in part" in text and "not applied to the live cluster" in text
    assert "rolled out finserve" not in text


# --------------------------------------------------------------------------- 4. in place


def test_a_stale_running_status_does_not_pass_even_with_no_settle() -> None:
    """reconcileServe reads statuses before updateServeDeployment submits the new config, so
    the first new-generation status shows the old RUNNING; the next Reconcile (2 s later)
    reports DEPLOYING. A settle below MIN_SETTLE_S is raised to it."""
    kube = ScriptedKube([
        rayservice(generation=4, observed=3),
        rayservice(generation=4, observed=4, updated=1),  # stale RUNNING of the old config
        rayservice(generation=4, observed=4, updated=1),
        rayservice(generation=4, observed=4, updated=3, apps={"finserve": "DEPLOYING"}),
        rayservice(generation=4, observed=4, updated=3, apps={"finserve": "DEPLOYING"}),
        rayservice(generation=4, observed=4, updated=6),
    ], events=[core_event("UpdatedServeApplications", "Updated serve applications to the "
                          "RayCluster banking/finserve-abcde", kind="Normal", uid="sub")])
    helm, clock = FakeHelm(revisions=3), FakeClock()
    rollout, out = make_rollout(helm, kube, clock, poll=1.0, settle=0.0,
                                model_version=["fraud=2,1"])
    assert rollout.start() == 0
    assert "finserve DEPLOYING" in out.getvalue()
    assert clock.t >= 5 + MIN_SETTLE_S  # held from the last RUNNING, not the stale one
    (values,) = helm.upgrade_files
    models = {m["name"]: m for m in values["serve"]["app"]["models"]}
    assert models["fraud"]["versions"] == ["2", "1"]
    assert models["sentiment"]["versions"] == ["latest"]
    assert models["fraud"]["options"] == {"review_threshold": 0.2, "block_threshold": 0.6}


def test_the_minimum_settle_covers_one_kuberay_reconcile_and_its_status_read() -> None:
    assert MIN_SETTLE_S > (KUBERAY_REQUEUE_S + PROXY_CHECK_TIMEOUT_S
                              + DASHBOARD_TIMEOUT_S)
    result = CliRunner().invoke(cli.rollout_app, ["--settle", "0"])
    assert result.exit_code == 2 and "--settle" in result.output


def test_a_rollout_succeeds_when_kuberay_reports_it_done() -> None:
    kube = ScriptedKube([
        rayservice(generation=3, observed=2),
        rayservice(generation=3, observed=3, apps={"finserve": "DEPLOYING"}),
        rayservice(generation=3, observed=3),
    ])
    helm, clock = FakeHelm(), FakeClock()
    rollout, out = make_rollout(helm, kube, clock, set_values=["serve.app.gateway.replicas=3"])
    assert rollout.start() == 0
    (upgrade,) = helm.called("upgrade")
    assert upgrade[1:3] == ("finserve", "charts/finserve")
    assert upgrade[4] == ("serve.app.gateway.replicas=3",)
    assert not helm.called("rollback")
    text = out.getvalue()
    assert "has not observed generation 3" in text and "finserve DEPLOYING" in text
    assert "rolled out finserve" in text
    assert clock.t >= 10  # held Done for the settle time


def test_a_blue_green_switch_is_done_only_after_the_new_cluster_serves() -> None:
    kube = ScriptedKube([
        rayservice(generation=5, observed=4),
        rayservice(generation=5, observed=5, upgrading="True", pending="finserve-new12",
                   pending_apps={}),
        rayservice(generation=5, observed=5, upgrading="True", pending="finserve-new12",
                   pending_apps={"finserve": "DEPLOYING"}),
        rayservice(generation=5, observed=5, upgrading="True", pending="finserve-new12",
                   pending_apps={"finserve": "RUNNING"}),
        rayservice(generation=5, observed=5, active="finserve-new12"),
    ], pods=[pod("finserve-new12", waiting="ContainerCreating")])
    helm, clock = FakeHelm(), FakeClock()
    rollout, out = make_rollout(helm, kube, clock, image_tag="0.2.0")
    assert rollout.start() == 0
    assert helm.called("upgrade")[0][4] == ("image.tag=0.2.0",)
    text = out.getvalue()
    assert "new cluster finserve-new12 coming up (no apps); finserve-abcde still serving" in text
    assert "new cluster finserve-new12 coming up (finserve DEPLOYING)" in text
    assert "rolled out finserve: cluster finserve-new12: finserve RUNNING" in text


# --------------------------------------------------------------------------- 5. pods


def coming_up(generation: int = 6) -> dict[str, Any]:
    return rayservice(generation=generation, observed=generation, upgrading="True",
                      pending="finserve-new12", pending_apps={})


@pytest.mark.parametrize(("bad", "expected"), [
    (pod("finserve-new12", waiting="ImagePullBackOff", message=PULL_FAILED), "ImagePullBackOff"),
    (pod("finserve-new12", "worker", init_waiting="ErrImagePull", message=PULL_FAILED),
     "container wait-gcs-ready: ErrImagePull"),
    (pod("finserve-new12", waiting="InvalidImageName",
         message='failed to apply default image tag "finserve:0.2.0:": couldn\'t parse image '
                 'name "finserve:0.2.0:": invalid reference format'), "InvalidImageName"),
    (pod("finserve-new12", waiting="CreateContainerConfigError",
         message='secret "finserve-audit" not found'), 'secret "finserve-audit" not found'),
    (pod("finserve-new12", waiting="CrashLoopBackOff", restarts=4,
         message="back-off 1m20s restarting failed container=ray-head"), "last exit 1 Error"),
])
def test_a_new_cluster_whose_pods_cannot_start_fails_at_once(bad: dict, expected: str) -> None:
    state = rollout_state(coming_up(), pods=[bad])
    assert isinstance(state, Failed)
    assert "the new cluster finserve-new12 cannot start" in state.reason
    assert expected in state.reason


def test_a_crash_looping_worker_or_the_old_clusters_pods_do_not_fail_the_rollout() -> None:
    worker = pod("finserve-new12", "worker", waiting="CrashLoopBackOff", restarts=2)
    assert isinstance(rollout_state(coming_up(), pods=[worker]), Progress)
    once = pod("finserve-new12", waiting="CrashLoopBackOff", restarts=1)  # may be a race
    assert isinstance(rollout_state(coming_up(), pods=[once]), Progress)
    old = pod("finserve-abcde", "worker", waiting="ImagePullBackOff", message=PULL_FAILED)
    assert isinstance(rollout_state(coming_up(), pods=[old]), Progress)


def test_an_unschedulable_head_fails_after_the_grace_an_unschedulable_worker_waits() -> None:
    head = pod("finserve-new12", unschedulable_at=0)
    soon, late = T0 + timedelta(seconds=60), T0 + timedelta(seconds=181)
    assert isinstance(rollout_state(coming_up(), pods=[head], now=soon), Progress)
    state = rollout_state(coming_up(), pods=[head], now=late)
    assert isinstance(state, Failed) and "unschedulable for 181s: 0/1 nodes" in state.reason
    worker = pod("finserve-new12", "worker", unschedulable_at=0)  # the autoscaler's to place
    assert isinstance(rollout_state(coming_up(), pods=[worker], now=late + timedelta(hours=1)),
                      Progress)


def test_a_first_install_looks_at_the_active_cluster_until_it_is_ready() -> None:
    obj = rayservice(generation=1, observed=1, ready="False", apps={})
    bad = pod("finserve-abcde", waiting="ErrImagePull", message=PULL_FAILED)
    assert starting_cluster(obj) == "finserve-abcde"
    assert isinstance(rollout_state(obj, pods=[bad]), Failed)
    assert starting_cluster(rayservice()) is None


def test_a_new_image_that_cannot_be_pulled_rolls_back_without_waiting_for_the_deadline() -> None:
    kube = ScriptedKube([rayservice(generation=6, observed=5), coming_up()],
                        pods=[pod("finserve-new12", waiting="ImagePullBackOff",
                                  message=PULL_FAILED)])
    helm = FakeHelm(revisions=5, on_rollback=lambda: kube.play([
        rayservice(generation=7, observed=7)]))
    clock = FakeClock()
    rollout, out = make_rollout(helm, kube, clock, image_tag="0.2.0", timeout=1200)
    code = rollout.start()
    assert code == EXIT_ROLLED_BACK
    assert "ImagePullBackOff" in out.getvalue() and "not rolled out after" not in out.getvalue()
    assert clock.t < 60


# --------------------------------------------------------------------------- 6. API errors


def api_status(code: int, reason: str, message: str) -> ApiException:
    """An ApiException as the kubernetes client raises it for a non-2xx answer."""
    exc = ApiException(status=code, reason=reason)
    exc.body = json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {},
                           "status": "Failure", "message": message, "reason": reason,
                           "code": code})
    return exc


REFUSED = urllib3.exceptions.MaxRetryError(
    None, "/apis/ray.io/v1/namespaces/banking/rayservices/finserve",  # type: ignore[arg-type]
    urllib3.exceptions.NewConnectionError(
        None, "Failed to establish a new connection: [Errno 111] Connection refused"))  # type: ignore[arg-type]
FORBIDDEN = ('rayservices.ray.io "finserve" is forbidden: User "system:serviceaccount:ci:'
             'deployer" cannot get resource "rayservices" in API group "ray.io" in the '
             'namespace "banking"')


def down(exc: BaseException = REFUSED) -> KubeApiError:
    """What KubeRayServiceWatcher raises for a client error (see the next two tests)."""
    error = classify_api_error(exc, "get rayservices banking/finserve")
    assert error is not None
    return error


def test_api_errors_are_sorted_into_transient_and_not() -> None:
    what = "get rayservices banking/finserve"
    assert isinstance(classify_api_error(REFUSED, what), ApiUnavailable)
    unavailable = api_status(503, "ServiceUnavailable",
                             "the server is currently unable to handle the request")
    assert isinstance(classify_api_error(unavailable, what), ApiUnavailable)
    timeout = urllib3.exceptions.ReadTimeoutError(None, "/apis", "Read timed out.")  # type: ignore[arg-type]
    assert isinstance(classify_api_error(timeout, what), ApiUnavailable)
    denied = classify_api_error(api_status(403, "Forbidden", FORBIDDEN), what)
    assert isinstance(denied, ApiDenied) and "cannot get resource" in str(denied)
    assert isinstance(classify_api_error(api_status(401, "Unauthorized", "Unauthorized"),
                                            what), ApiDenied)
    tls = ApiException(status=0, reason="SSLError\n[SSL: CERTIFICATE_VERIFY_FAILED]")
    assert isinstance(classify_api_error(tls, what), ApiDenied)
    assert classify_api_error(KeyError("bug"), what) is None


def test_the_watcher_reads_json_and_turns_client_errors_into_api_errors() -> None:
    """KubeRayServiceWatcher over a stand-in for the kubernetes client's API objects."""

    class Answer:
        headers = {"Date": "Wed, 02 Dec 2026 10:00:07 GMT"}
        data = json.dumps({"items": [core_event("UpdatedServeApplications", "x",
                                                kind="Normal")]}).encode()

    class Custom:
        def get_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> Any:
            assert kwargs["_request_timeout"] == REQUEST_TIMEOUT
            raise {"rayservices": REFUSED, "rayclusters": api_status(
                404, "NotFound", 'rayclusters.ray.io "finserve-abcde" not found')}[args[3]]

    class Core:
        def list_namespaced_event(self, *args: Any, **kwargs: Any) -> Answer:
            assert kwargs["_preload_content"] is False
            return Answer()

    watcher = KubeRayServiceWatcher.__new__(KubeRayServiceWatcher)
    watcher.name, watcher.namespace, watcher._date = "finserve", NS, None
    watcher._custom, watcher._core = Custom(), Core()
    with pytest.raises(ApiUnavailable, match="Connection refused"):
        watcher.get()
    assert watcher.raycluster("finserve-abcde") is None
    assert watcher.events()[0]["reason"] == "UpdatedServeApplications"
    assert watcher.server_now() == T0 + timedelta(seconds=7)


def test_an_api_outage_mid_rollout_is_retried_with_backoff() -> None:
    kube = ScriptedKube([rayservice(generation=3, observed=2), down(), down(),
                         down(api_status(503, "ServiceUnavailable",
                                         "etcdserver: request timed out")),
                         rayservice(generation=3, observed=3)])
    clock = FakeClock()
    rollout, out = make_rollout(FakeHelm(), kube, clock)
    assert rollout.start() == 0
    text = out.getvalue()
    assert "Kubernetes API unreachable (get rayservices banking/finserve: Failed to establish " \
        "a new connection: [Errno 111] Connection refused)" in text
    assert "Kubernetes API answers again" in text
    assert clock.sleeps[1:4] == [1.0, 2.0, 4.0]


def test_an_api_that_stays_down_ends_with_exit_4_and_no_rollback() -> None:
    kube = ScriptedKube([rayservice(generation=3, observed=2), down()])
    helm, clock = FakeHelm(), FakeClock()
    rollout, out = make_rollout(helm, kube, clock, timeout=120)
    assert rollout.start() == EXIT_UNOBSERVABLE
    assert not helm.called("rollback")
    text = out.getvalue()
    assert "still unreachable at the deadline (120s)" in text
    assert "finserve rollout status -r finserve" in text
    assert 120 <= clock.t <= 120 + MAX_BACKOFF_S and max(clock.sleeps) <= MAX_BACKOFF_S


def test_access_refused_or_a_missing_rayservice_mid_rollout_is_said_at_once() -> None:
    kube = ScriptedKube([rayservice(generation=3, observed=2),
                         down(api_status(403, "Forbidden", FORBIDDEN))])
    rollout, out = make_rollout(FakeHelm(), kube, FakeClock())
    assert rollout.start() == EXIT_UNOBSERVABLE
    assert "cannot get resource" in out.getvalue()
    kube = ScriptedKube([rayservice(generation=3, observed=2), None])
    rollout, out = make_rollout(FakeHelm(), kube, FakeClock())
    assert rollout.start() == EXIT_UNOBSERVABLE
    assert "RayService finserve not found" in out.getvalue()


def test_helm_reads_are_retried_while_the_api_server_restarts() -> None:
    kube = ScriptedKube([rayservice(generation=3, observed=3)])
    helm = FakeHelm()
    helm.history_errors = ['Error: kubernetes cluster unreachable: Get "https://127.0.0.1:6443/'
                           'version": dial tcp 127.0.0.1:6443: connect: connection refused'] * 2
    rollout, out = make_rollout(helm, kube, FakeClock())
    assert rollout.start() == 0
    assert "helm history: Kubernetes API unreachable" in out.getvalue()
    assert HelmError("Error: UPGRADE FAILED: values don't meet the schema").transient is False


# --------------------------------------------------------------------------- rollbacks


def test_a_failed_upgrade_rolls_back_to_the_previous_revision_and_exits_non_zero() -> None:
    kube = ScriptedKube([
        rayservice(generation=3, observed=2),
        rayservice(generation=3, observed=3, apps={"finserve": "DEPLOYING"}),
        rayservice(generation=3, observed=3, apps={"finserve": "DEPLOY_FAILED"},
                   message="model 'fraud' cannot be served: [Errno 2] version 9 not found [/]"),
    ])
    helm = FakeHelm(revisions=2, on_rollback=lambda: kube.play([
        rayservice(generation=4, observed=4, apps={"finserve": "DEPLOYING"}),
        rayservice(generation=4, observed=4),
    ]))
    rollout, out = make_rollout(helm, kube, FakeClock(), model_version=["fraud=9"])
    code = rollout.start()
    assert code == EXIT_ROLLED_BACK != 0
    assert helm.called("rollback") == [("rollback", "finserve", 2)]
    text = out.getvalue()
    assert "rollout failed: application finserve is DEPLOY_FAILED" in text
    assert "[Errno 2] version 9 not found [/]" in text  # printed as text, not rich markup
    assert "rolled back to revision 2" in text


def test_a_stuck_upgrade_hits_the_deadline_and_rolls_back() -> None:
    kube = ScriptedKube([coming_up()])
    helm = FakeHelm(revisions=5, on_rollback=lambda: kube.play([
        rayservice(generation=7, observed=7, upgrading="True", pending="finserve-new12"),
        rayservice(generation=7, observed=7),
    ]))
    clock = FakeClock()
    rollout, out = make_rollout(helm, kube, clock, image_tag="broken", timeout=60)
    code = rollout.start()
    assert code == EXIT_ROLLED_BACK
    assert helm.called("rollback") == [("rollback", "finserve", 5)]
    assert "not rolled out after 60s: new cluster finserve-new12 coming up" in out.getvalue()
    assert 60 <= clock.t <= 60 + 5 + 10 + 5  # the deadline, then the rollback settling
    assert max(clock.sleeps) <= 5


def test_a_rejected_helm_upgrade_changes_nothing_and_is_not_rolled_back() -> None:
    helm = FakeHelm(upgrade_error="values don't meet the specifications of the schema")
    rollout, out = make_rollout(helm, ScriptedKube([rayservice()]), FakeClock())
    assert rollout.start() == EXIT_NOT_ROLLED_BACK
    assert not helm.called("rollback")
    assert "helm upgrade failed: values don't meet" in out.getvalue()


def test_a_first_install_that_fails_has_nothing_to_roll_back_to() -> None:
    kube = ScriptedKube([rayservice(generation=1, observed=1, apps={"finserve":
                                                                    "DEPLOY_FAILED"})],
                        before=None)
    helm = FakeHelm(revisions=0)
    rollout, out = make_rollout(helm, kube, FakeClock())
    assert rollout.start() == EXIT_NOT_ROLLED_BACK
    assert "no earlier revision to roll back to" in out.getvalue()
    assert not helm.called("rollback")


def test_undo_rolls_back_to_the_previous_good_revision_and_waits() -> None:
    kube = ScriptedKube([rayservice(generation=8, observed=7),
                         rayservice(generation=8, observed=8)])
    helm = FakeHelm(revisions=4)
    helm.history_rows[3]["status"] = "failed"  # revision 4 never deployed
    helm.history_rows[2]["status"] = "deployed"
    rollout, out = make_rollout(helm, kube, FakeClock(), timeout=120)
    assert rollout.undo() == 0
    assert helm.called("rollback") == [("rollback", "finserve", 2)]
    assert "rolled back to revision 2" in out.getvalue()


def test_a_model_version_for_an_unknown_model_is_refused() -> None:
    values = yaml.safe_load(CHART_VALUES.read_text())
    with pytest.raises(typer.BadParameter) as refused:
        model_version_values(values, ["loans=2"])
    assert "no model 'loans' in the release" in str(refused.value)
    assert "fraud" in str(refused.value)
    with pytest.raises(typer.BadParameter, match="MODEL=VERSION"):
        model_version_values(values, ["fraud"])


def test_a_traffic_split_is_held_to_the_cores_routing_rule() -> None:
    """--traffic weights are checked by serving.config.ModelRouting, the gateway's own rule."""
    values = yaml.safe_load(CHART_VALUES.read_text())
    with pytest.raises(typer.BadParameter, match="add up to 100") as refused:
        model_version_values(values, [], ["fraud=1:90,2:20"])
    assert "'fraud=1:90,2:20'" in str(refused.value) and "110" in str(refused.value)
    with pytest.raises(typer.BadParameter, match="whole numbers >= 0"):
        model_version_values(values, [], ["fraud=1:110,2:-10"])
    split = model_version_values(values, [], ["fraud=1:90,2:10"])["serve"]["app"]["models"]
    assert next(m for m in split if m["name"] == "fraud")["traffic"] == {"1": 90, "2": 10}


# --------------------------------------------------------------------------- helm, CLI


def test_helm_runner_builds_the_commands_a_rollout_needs() -> None:
    argv: list[list[str]] = []

    def run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        argv.append(cmd)
        if cmd[1] == "history" and cmd[2] == "missing":
            return subprocess.CompletedProcess(cmd, 1, "", "Error: release: not found")
        out = json.dumps([history_row(1, "deployed", "Install complete")]) if (
            cmd[1] == "history") else ""
        return subprocess.CompletedProcess(cmd, 0, out, "")

    helm = Helm("helm", namespace="banking", kube_context="prod", run=run)
    helm.upgrade("finserve", "charts/finserve", ["a.yaml"], ["image.tag=2"])
    assert argv[-1] == ["helm", "upgrade", "--install", "finserve", "charts/finserve",
                        "--reset-then-reuse-values", "--force-conflicts", "--values", "a.yaml",
                        "--set", "image.tag=2", "--namespace", "banking", "--kube-context", "prod"]
    assert helm.history("finserve")[0]["description"] == "Install complete"
    assert helm.history("missing") == []
    helm.rollback("finserve", 4)
    assert argv[-1][:5] == ["helm", "rollback", "finserve", "4", "--force-conflicts"]


def test_status_command_exit_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    objects: dict[str, Any] = {"finserve": rayservice()}
    clusters = {"finserve-abcde": raycluster(cluster_config())}
    monkeypatch.setattr(cli, "make_helm", lambda *a: FakeHelm())
    monkeypatch.setattr(cli, "make_watcher", lambda name, *a: ScriptedKube(
        [objects[name]], before=objects[name], clusters=clusters))
    runner = CliRunner()
    done = runner.invoke(cli.rollout_app, ["status", "-n", "banking"])
    assert done.exit_code == 0 and "rolled out" in done.output
    objects["finserve"] = rayservice(upgrading="True", pending="finserve-new12")
    moving = runner.invoke(cli.rollout_app, ["status"])
    assert moving.exit_code == 1 and "rolling out" in moving.output
    assert "finserve-new12" in moving.output
    objects["finserve"] = rayservice(config=cluster_config(max_replicas=8))
    partial = runner.invoke(cli.rollout_app, ["status"])
    assert partial.exit_code == EXIT_NOT_APPLIED and "not applied" in partial.output
    objects["finserve"] = None
    missing = runner.invoke(cli.rollout_app, ["status"])
    assert missing.exit_code == EXIT_UNOBSERVABLE and "not found" in missing.output


def test_rollout_command_without_a_subcommand_starts_and_fails_non_zero(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube = ScriptedKube([rayservice(generation=3, observed=3, apps={"finserve": "UNHEALTHY"})])
    helm = FakeHelm(kube=kube,
                    on_rollback=lambda: kube.play([rayservice(generation=4, observed=4)]))
    monkeypatch.setattr(cli, "make_helm", lambda *a: helm)
    monkeypatch.setattr(cli, "make_watcher", lambda *a: kube)
    monkeypatch.setattr(cli, "SystemClock", FakeClock)
    result = CliRunner().invoke(cli.rollout_app, ["--image-tag", "0.3.0", "--poll", "0.1",
                                                 "--settle", "7", "--timeout", "5"])
    assert result.exit_code == EXIT_ROLLED_BACK, result.output
    assert helm.called("upgrade")[0][4] == ("image.tag=0.3.0",)
    assert helm.called("rollback") == [("rollback", "finserve", 2)]


def test_cli_errors_end_with_their_message_and_exit_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class NoRelease(FakeHelm):
        def rayservice_name(self, release: str) -> str:
            raise HelmError("Error: release: not found")

    monkeypatch.setattr(cli, "make_helm", lambda *a: NoRelease())
    result = CliRunner().invoke(cli.rollout_app, ["status", "--release", "nope"])
    assert result.exit_code == EXIT_NOT_ROLLED_BACK
    assert "release: not found" in result.output

    def no_kubeconfig(*_: Any) -> Any:
        raise KubeAccessError("cannot reach Kubernetes: Invalid kube-config file. "
                                 "Set KUBECONFIG or --kube-context")

    monkeypatch.setattr(cli, "make_helm", lambda *a: FakeHelm())
    monkeypatch.setattr(cli, "make_watcher", no_kubeconfig)
    result = CliRunner().invoke(cli.rollout_app, ["status"])
    assert result.exit_code == EXIT_UNOBSERVABLE and "KUBECONFIG" in result.output
    assert "Exit codes: 0 rolled out" in CliRunner().invoke(cli.rollout_app, ["--help"]).output

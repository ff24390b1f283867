"""``finserve rollout``: helm upgrade a release, then wait on its RayService until KubeRay has
really rolled it out; roll back to the previous helm revision when it fails.

"Rolled out" follows what KubeRay's RayService controller does (ray-operator v1.6.2, which
our clusters run, and v1.7.0: ``controllers/ray/rayservice_controller.go``): the status
observed the current generation, ``Ready`` is True, ``UpgradeInProgress`` is False, no
pending cluster is named, every active application is RUNNING, for at least
:data:`MIN_SETTLE_S`, and the active RayCluster runs the spec's ``rayClusterConfig``
(KubeRay leaves some changes unapplied: :func:`cluster_drift`). ``Ready`` alone stays True
during a blue/green switch, and a stuck pending cluster never fails in KubeRay, so the
rollout fails fast on what cannot recover (a rejected spec, a failed application, pods that
cannot start: :func:`pod_failure`) and keeps its own deadline for the rest.

The decision is the pure function :func:`rollout_state`; helm goes through :class:`Helm`
and the Kubernetes API through a :class:`RayServiceWatcher`, so tests give scripted
stand-ins. No Ray imports; the kubernetes client is imported lazily.

Exit codes of ``finserve rollout`` (``start``) and ``finserve rollout undo``:

- 0: rolled out (``undo``: back on the earlier revision, settled);
- 1: the rollout failed and was rolled back to the previous revision, which settled;
- 2: failed and not rolled back: helm refused the change, there is no earlier revision, or
  the rollback failed or did not settle;
- 3: not applied to the live cluster: helm and KubeRay took the release, but KubeRay will
  not apply part of its ``rayClusterConfig`` to the running RayCluster; nothing is rolled
  back and the message says what to do;
- 4: the Kubernetes API stayed unreachable until the deadline, refused access (401/403), or
  the RayService is missing: the outcome is unknown and nothing was rolled back.

``finserve rollout status`` exits 0 when rolled out, 1 while rolling out or failed, 3 when
not applied, 4 on an API problem.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Protocol

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

EXIT_ROLLED_BACK = 1
EXIT_NOT_ROLLED_BACK = 2
EXIT_NOT_APPLIED = 3
EXIT_UNOBSERVABLE = 4

# --- KubeRay facts (ray-operator v1.6.2 and v1.7.0, controllers/ray/) -----------------------
# Every RayService Reconcile ends with RequeueAfter ServiceDefaultRequeueDuration (2 s).
KUBERAY_REQUEUE_S = 2.0
# Its Ray HTTP clients time out after 2 s: the head's proxy health check
# (utils.RayHttpProxyClient, skipped with excludeHeadPodFromServeSvc) and the Serve status read
# (utils.GetRayDashboardClientFunc; v1.7.0 rayHTTPClientTimeout, 10 s through the API server
# proxy).
PROXY_CHECK_TIMEOUT_S = 2.0
DASHBOARD_TIMEOUT_S = 2.0
# reconcileServe reads the application statuses (getAndCheckServeStatus) *before* it submits a
# changed serveConfigV2 (updateServeDeployment, which then caches it), and calculateStatus
# writes the new observedGeneration with those pre-submit statuses: the first status of an
# in-place update can show the old config's RUNNING. Ray Serve marks the application
# DEPLOYING as soon as it accepts the config (ApplicationState._set_target_state), and the
# next Reconcile (2 s later, then the proxy check and the status read) writes that if it
# still holds. A Done held this long has been through that Reconcile; a shorter hold proves
# nothing, so it is the minimum settle. (An operator busy with many RayServices may start
# the Reconcile later: raise --settle there.)
MIN_SETTLE_S = KUBERAY_REQUEUE_S + PROXY_CHECK_TIMEOUT_S + DASHBOARD_TIMEOUT_S + 1.0
# validateRayService: a Warning event InvalidRayServiceMetadata/InvalidRayServiceSpec and
# Ready=False reason ValidationFailed, written with the OLD observedGeneration (setCondition
# copies status.observedGeneration, which only calculateStatus advances); no requeue.
REJECTED_EVENT_REASONS = frozenset({"InvalidRayServiceSpec", "InvalidRayServiceMetadata"})
VALIDATION_FAILED = "ValidationFailed"
# markFailedOnInitializingTimeout: terminal; KubeRay deletes the clusters and stops.
INITIALIZING_TIMEOUT = "InitializingTimeout"
FAILED_APP_STATUSES = frozenset({"DEPLOY_FAILED", "UNHEALTHY"})
# Pod labels KubeRay sets (utils.RayClusterLabelKey, utils.RayNodeTypeLabelKey).
CLUSTER_LABEL = "ray.io/cluster"
NODE_TYPE_LABEL = "ray.io/node-type"
# Container waiting reasons the kubelet does not get past without a change to the spec, the
# image, the registry or a Secret.
POD_START_FAILURES = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                                "ErrImageNeverPull", "CreateContainerConfigError"})
# The kubelet backs off after the first crash already; a head that crashed twice is looping.
CRASH_LOOP_RESTARTS = 2
UNSCHEDULABLE_GRACE_S = 180.0
MAX_BACKOFF_S = 30.0
HELM_RETRY_S = 120.0


# --------------------------------------------------------------------------- decision


@dataclass(frozen=True)
class Done:
    """Rolled out: the new spec serves every application."""

    detail: str


@dataclass(frozen=True)
class Progress:
    """Still rolling out; ``detail`` says what is being waited for."""

    detail: str


@dataclass(frozen=True)
class Failed:
    """The rollout cannot succeed without a change; ``reason`` says why."""

    reason: str

    @property
    def detail(self) -> str:
        return self.reason


@dataclass(frozen=True)
class NotApplied:
    """Serving settled, but KubeRay will not apply part of ``rayClusterConfig`` to the
    running RayCluster; ``reason`` names the fields, why, and what to do."""

    reason: str

    @property
    def detail(self) -> str:
        return self.reason


@dataclass(frozen=True)
class Unobservable:
    """The rollout cannot be watched: the API is unreachable, access is refused, or the
    RayService is missing."""

    reason: str

    @property
    def detail(self) -> str:
        return self.reason


RolloutState = Done | Progress | Failed | NotApplied | Unobservable


def _status(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (obj or {}).get("status") or {}


def _conditions(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {c.get("type", ""): c for c in status.get("conditions") or []}


def _app_statuses(service_status: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    return dict((service_status or {}).get("applicationStatuses") or {})


def _apps_summary(apps: Mapping[str, Mapping[str, Any]]) -> str:
    return ", ".join(f"{n} {a.get('status', '?')}" for n, a in sorted(apps.items())) or "no apps"


def _parse_time(text: Any) -> datetime | None:
    """An RFC 3339 time from the API (``Z``, micro- or nanoseconds), or None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


# --------------------------------------------------------------------------- events


def event_fingerprint(event: Mapping[str, Any]) -> tuple[Any, ...]:
    """What changes when an event is recorded again. KubeRay v1.6.2 records core/v1 events
    (record.EventRecorder: ``count`` and ``lastTimestamp`` grow on repeats); v1.7.0 records
    events.k8s.io/v1 ones (events.EventRecorder: ``eventTime``, repeats in ``series``), read
    here through core/v1 where ``count`` and ``lastTimestamp`` stay empty."""
    series = event.get("series") or {}
    return ((event.get("metadata") or {}).get("uid"), event.get("count"),
            event.get("lastTimestamp"), event.get("eventTime"), series.get("count"),
            series.get("lastObservedTime"))


def _event_time(event: Mapping[str, Any]) -> str:
    series = event.get("series") or {}
    return str(series.get("lastObservedTime") or event.get("lastTimestamp")
               or event.get("eventTime") or (event.get("metadata") or {}).get(
                   "creationTimestamp") or "")


def new_events(events: Iterable[Mapping[str, Any]], seen: frozenset[tuple[Any, ...]] | None,
               rayservice_uid: str | None) -> list[Mapping[str, Any]]:
    """The events about this RayService object (by uid: a deleted namesake's do not count)
    recorded or repeated since ``seen`` was taken, oldest first. ``seen=None``: none."""
    if seen is None:
        return []
    fresh = [e for e in events
             if event_fingerprint(e) not in seen
             and not (rayservice_uid and (e.get("involvedObject") or {}).get("uid")
                      not in (None, rayservice_uid))]
    return sorted(fresh, key=_event_time)


def _event_text(event: Mapping[str, Any]) -> str:
    return f"{event.get('reason')}: {event.get('message') or event.get('note') or ''}".strip()


def _last_warning(events: Sequence[Mapping[str, Any]]) -> str:
    warnings = [e for e in events if e.get("type") == "Warning"]
    return f"; last warning {_event_text(warnings[-1])}" if warnings else ""


# --------------------------------------------------------------------------- rejection


def _fresh(rayservice: Mapping[str, Any], before: Mapping[str, Any] | None) -> bool:
    """Whether the Ready condition or the status was rewritten since ``before`` was read
    (no ``before``: the RayService did not exist, so everything is fresh). Each validation
    failure rewrites the status with a new ``lastUpdateTime``."""
    if before is None:
        return True
    old, new = _status(before), _status(rayservice)
    was, now = _conditions(old).get("Ready") or {}, _conditions(new).get("Ready") or {}
    keys = ("status", "reason", "message", "lastTransitionTime", "observedGeneration")
    return (any(was.get(k) != now.get(k) for k in keys)
            or old.get("lastUpdateTime") != new.get("lastUpdateTime"))


def _rejection(rayservice: Mapping[str, Any], events: Sequence[Mapping[str, Any]],
               before: Mapping[str, Any] | None) -> Failed | None:
    """KubeRay's verdict on the spec, from validateRayService's event or condition.

    The condition keeps the old observedGeneration, so it is this rollout's when it was
    written after ``before`` and KubeRay has not accepted the current generation since."""
    for event in events:
        if event.get("reason") in REJECTED_EVENT_REASONS:
            return Failed(f"KubeRay rejected the spec ({_event_text(event)})")
    status = _status(rayservice)
    ready = _conditions(status).get("Ready") or {}
    if ready.get("status") != "False":
        return None
    message = ready.get("message") or ""
    if ready.get("reason") == INITIALIZING_TIMEOUT:
        return Failed(f"KubeRay gave up on the RayService (InitializingTimeout): {message}. It "
                      "deletes its clusters and never retries: uninstall and install again")
    generation = (rayservice.get("metadata") or {}).get("generation")
    if (ready.get("reason") == VALIDATION_FAILED
            and status.get("observedGeneration") != generation and _fresh(rayservice, before)):
        return Failed(f"KubeRay rejected the spec ({VALIDATION_FAILED}): {message}")
    return None


# --------------------------------------------------------------------------- pods


def starting_cluster(rayservice: Mapping[str, Any] | None) -> str | None:
    """The RayCluster this rollout waits to come up: the pending one, else the active one
    while the RayService is not Ready (just promoted on a first install, or lost its pods)."""
    status = _status(rayservice)
    pending = (status.get("pendingServiceStatus") or {}).get("rayClusterName")
    if pending:
        return pending
    if (_conditions(status).get("Ready") or {}).get("status") == "True":
        return None
    return (status.get("activeServiceStatus") or {}).get("rayClusterName") or None


def _container_problem(pod: Mapping[str, Any], head: bool) -> str | None:
    status = pod.get("status") or {}
    for container in [*(status.get("initContainerStatuses") or []),
                      *(status.get("containerStatuses") or [])]:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason, message = waiting.get("reason"), waiting.get("message") or ""
        where = f"pod {pod['metadata']['name']} container {container.get('name')}"
        if reason in POD_START_FAILURES:
            hint = ("a Secret or ConfigMap it reads is missing"
                    if reason == "CreateContainerConfigError"
                    else "check the image name and tag, that it was pushed, and pull access")
            return f"{where}: {reason}: {message} ({hint})"
        if (head and reason == "CrashLoopBackOff"
                and container.get("restartCount", 0) >= CRASH_LOOP_RESTARTS):
            last = (container.get("lastState") or {}).get("terminated") or {}
            return (f"{where} keeps crashing (CrashLoopBackOff, restarts "
                    f"{container.get('restartCount', '?')}, last exit {last.get('exitCode', '?')}"
                    f" {last.get('reason', '')}): kubectl logs {pod['metadata']['name']} -c "
                    f"{container.get('name')} --previous")
    return None


def _unschedulable_problem(pod: Mapping[str, Any], now: datetime | None,
                           grace_s: float) -> str | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if (cond.get("type"), cond.get("status"), cond.get("reason")) != (
                "PodScheduled", "False", "Unschedulable"):
            continue
        since = _parse_time(cond.get("lastTransitionTime"))
        if now is None or since is None or (now - since).total_seconds() < grace_s:
            return None
        return (f"head pod {pod['metadata']['name']} unschedulable for "
                f"{(now - since).total_seconds():.0f}s: {cond.get('message', '')} (free or add "
                "capacity, or lower the head's resource requests)")
    return None


def pod_failure(pods: Iterable[Mapping[str, Any]], cluster: str | None, now: datetime | None,
                grace_s: float = UNSCHEDULABLE_GRACE_S) -> str | None:
    """Why ``cluster``'s pods cannot start, or None: an image or configuration error in any
    pod, the head in CrashLoopBackOff, the head unschedulable for ``grace_s`` (``now`` and the
    condition's lastTransitionTime both from the cluster's clock). Worker pods may wait
    unscheduled: the Ray autoscaler creates them on demand and a node autoscaler may still
    be adding nodes; the applications' status says whether they are needed."""
    if not cluster:
        return None
    for pod in pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if labels.get(CLUSTER_LABEL) != cluster:
            continue
        head = labels.get(NODE_TYPE_LABEL) == "head"
        problem = _container_problem(pod, head) or (
            _unschedulable_problem(pod, now, grace_s) if head else None)
        if problem:
            return problem
    return None


# --------------------------------------------------------------------------- cluster drift

_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))([eE][+-]?\d+|[KMGTPE]i|[numkMGTPE]?)$")
_SUFFIX = {"": Fraction(1), "n": Fraction(1, 10**9), "u": Fraction(1, 10**6),
           "m": Fraction(1, 1000), "k": Fraction(10**3), "M": Fraction(10**6),
           "G": Fraction(10**9), "T": Fraction(10**12), "P": Fraction(10**15),
           "E": Fraction(10**18), "Ki": Fraction(2**10), "Mi": Fraction(2**20),
           "Gi": Fraction(2**30), "Ti": Fraction(2**40), "Pi": Fraction(2**50),
           "Ei": Fraction(2**60)}


def _quantity(value: Any) -> Any:
    """A resource quantity as an exact amount ("0.5", 0.5 and "500m" are equal), else as is."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return Fraction(str(value))
    match = _QUANTITY.match(value.strip()) if isinstance(value, str) else None
    if not match:
        return value
    number, suffix = match.groups()
    scale = (Fraction(10) ** int(suffix[1:]) if suffix[:1] in ("e", "E")
             else _SUFFIX[suffix])
    return Fraction(number) * scale


def _empty(value: Any) -> bool:
    return value is None or value is False or (
        isinstance(value, str | list | dict) and not value)


def _normalized(value: Any, key: str = "") -> Any:
    """A spec as KubeRay's typed round trip leaves it (RayService -> Go struct -> RayCluster):
    empty values and false dropped (omitempty), quantities compared by amount."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            v = _quantity(v) if key in ("limits", "requests") or k == "sizeLimit" else (
                _normalized(v, str(k)))
            if not _empty(v):
                out[str(k)] = v
        return out
    if isinstance(value, list):
        return [_normalized(v, key) for v in value]
    return value


def _pod_spec(group: Mapping[str, Any]) -> Any:
    return (group.get("template") or {}).get("spec") or {}


def _hashed_part(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """The part of a rayClusterConfig KubeRay's cluster hash covers: it leaves out worker
    replicas/minReplicas/maxReplicas/workersToDelete, every pod template's tolerations and
    schedulingGates, and upgradeStrategy (GenerateHashWithoutReplicasAndWorkersToDelete,
    v1.6.2 and v1.7.0); v1.7.0 also suspend (rayClusterSpecForHashing)."""
    spec = copy.deepcopy(dict(spec or {}))
    spec.pop("upgradeStrategy", None)
    spec.pop("suspend", None)
    workers = spec.get("workerGroupSpecs") or []
    for group in workers:
        for key in ("replicas", "minReplicas", "maxReplicas"):
            group.pop(key, None)
        (group.get("scaleStrategy") or {}).pop("workersToDelete", None)
    for group in [spec.get("headGroupSpec") or {}, *workers]:
        for key in ("tolerations", "schedulingGates"):
            _pod_spec(group).pop(key, None)
    return _normalized(spec)


def _label(item: Any, index: int) -> str:
    if isinstance(item, Mapping):
        return str(item.get("groupName") or item.get("name") or index)
    return str(index)


def _diff_paths(want: Any, have: Any, path: str = "") -> list[str]:
    """Where two normalized specs differ, as readable paths (list items by name)."""
    if isinstance(want, Mapping) and isinstance(have, Mapping):
        paths: list[str] = []
        for key in sorted(set(want) | set(have)):
            paths += _diff_paths(want.get(key), have.get(key), f"{path}.{key}".lstrip("."))
        return paths
    if isinstance(want, list) and isinstance(have, list) and len(want) == len(have):
        paths = []
        for i, (w, h) in enumerate(zip(want, have, strict=True)):
            paths += _diff_paths(w, h, f"{path}[{_label(w, i)}]")
        return paths
    return [] if want == have else [path or "(all)"]


@dataclass(frozen=True)
class _Unhashed:
    """One difference in a field the cluster hash leaves out."""

    path: str
    want: Any
    have: Any
    patch_path: str | None = None


def _unhashed_drift(want: Mapping[str, Any], have: Mapping[str, Any]) -> list[_Unhashed]:
    """Differences KubeRay never carries to a running RayCluster by itself. ``replicas`` only
    counts without in-tree autoscaling (with it, the autoscaler owns it); tolerations and
    scheduling gates only when the cluster lacks one the spec has (Kueue-like controllers
    add their own to the RayCluster)."""
    found: list[_Unhashed] = []
    counts = ("minReplicas", "maxReplicas") + (
        () if want.get("enableInTreeAutoscaling") else ("replicas",))
    groups = zip(want.get("workerGroupSpecs") or [], have.get("workerGroupSpecs") or [],
                 strict=False)
    pairs = [("headGroupSpec", want.get("headGroupSpec") or {},
              have.get("headGroupSpec") or {})]
    for i, (w, h) in enumerate(groups):
        name = f"workerGroupSpecs[{w.get('groupName') or i}]"
        pairs.append((name, w, h))
        found += [_Unhashed(f"{name}.{key}", w.get(key), h.get(key),
                            f"/spec/workerGroupSpecs/{i}/{key}")
                  for key in counts if w.get(key) is not None and w.get(key) != h.get(key)]
    for name, w, h in pairs:
        for key in ("tolerations", "schedulingGates"):
            wanted, running = _pod_spec(w).get(key) or [], _pod_spec(h).get(key) or []
            if any(item not in running for item in wanted):
                found.append(_Unhashed(f"{name}.template.spec.{key}", wanted, running))
    if _normalized(want.get("upgradeStrategy")) != _normalized(have.get("upgradeStrategy")):
        found.append(_Unhashed("upgradeStrategy", want.get("upgradeStrategy"),
                               have.get("upgradeStrategy")))
    return found


def _no_new_cluster_reason(upgrade_type: str | None) -> str | None:
    """Why KubeRay brings up no new cluster for a hashed change (isZeroDowntimeUpgradeEnabled,
    v1.6.2 and v1.7.0), or None when it always does (a difference seen then is this
    comparison's, not KubeRay's: KubeRay names the pending cluster in the same status write
    that advances observedGeneration)."""
    if upgrade_type == "NewCluster":
        return None
    if upgrade_type == "None":
        return "spec.upgradeStrategy.type is None"
    if upgrade_type == "NewClusterWithIncrementalUpgrade":
        return ("upgradeStrategy NewClusterWithIncrementalUpgrade needs the operator's "
                "RayServiceIncrementalUpgrade feature gate (alpha, off by default in KubeRay "
                "v1.6; beta, on in v1.7), and this operator has it off")
    return ("spec.upgradeStrategy is unset and the operator runs with "
            "ENABLE_ZERO_DOWNTIME=false")


def _shown(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def _hashed_not_applied(cluster: str, ns: str, paths: list[str], why: str) -> NotApplied:
    listed = ", ".join(paths[:6]) + (f" and {len(paths) - 6} more" if len(paths) > 6 else "")
    return NotApplied(
        f"not applied to the live cluster {cluster}: {listed} differ from the RayService "
        f"spec. KubeRay applies such a change only by bringing up a new RayCluster, and {why}. "
        "To apply it: set upgradeStrategy.type NewCluster (a second cluster must fit) and roll "
        f"out again; or `kubectl -n {ns} delete raycluster {cluster}` (KubeRay creates one "
        "from the spec; no service until it is ready); or `finserve rollout undo` to put the "
        "release back to what runs")


def _unhashed_not_applied(cluster: str, ns: str, drift: list[_Unhashed]) -> NotApplied:
    listed = ", ".join(f"{d.path} {_shown(d.have)} -> {_shown(d.want)}" for d in drift)
    patch = [{"op": "add", "path": d.patch_path, "value": d.want}
             for d in drift if d.patch_path]
    how = (f"`kubectl -n {ns} patch raycluster {cluster} --type json -p '{_shown(patch)}'` "
           "(KubeRay leaves these fields of a running cluster alone)" if patch
           else f"`kubectl -n {ns} edit raycluster {cluster}`")
    return NotApplied(
        f"not applied to the live cluster {cluster}: {listed}. KubeRay's cluster hash leaves "
        "out worker replicas, minReplicas and maxReplicas, tolerations and scheduling gates, "
        "so a change to only these neither updates the running RayCluster nor brings up a "
        "new one; they take effect with the next change that does (a new cluster, an added "
        f"worker group). To apply now: {how}; or roll out together with a change that brings "
        "up a new cluster; `finserve rollout undo` puts the release back to what runs")


def cluster_drift(rayservice: Mapping[str, Any],
                  cluster: Mapping[str, Any] | None) -> NotApplied | None:
    """What of the RayService's ``rayClusterConfig`` the active RayCluster does not run and
    KubeRay will not apply, from KubeRay's rules (v1.6.2 and v1.7.0, reconcileRayCluster,
    shouldUpdateCluster, isClusterSpecHashEqual, shouldPrepareNewCluster): a change in the
    hashed part brings up a new cluster when zero-downtime upgrades are on, an appended
    worker group updates the cluster in place (its whole spec), anything else leaves it
    as it is. Compared field by field (the hash itself, sha1 over Go's JSON, is KubeRay's)."""
    if not cluster:
        return None
    spec = rayservice.get("spec") or {}
    want, have = spec.get("rayClusterConfig") or {}, cluster.get("spec") or {}
    meta = cluster.get("metadata") or {}
    name, ns = meta.get("name", "?"), meta.get("namespace", "default")
    paths = _diff_paths(_hashed_part(want), _hashed_part(have))
    if paths:
        why = _no_new_cluster_reason((spec.get("upgradeStrategy") or {}).get("type"))
        return _hashed_not_applied(name, ns, paths, why) if why else None
    if drift := _unhashed_drift(want, have):
        return _unhashed_not_applied(name, ns, drift)
    if bool(want.get("suspend")) != bool(have.get("suspend")):
        return NotApplied(
            f"not applied to the live cluster {name}: rayClusterConfig.suspend "
            f"{bool(have.get('suspend'))} -> {bool(want.get('suspend'))}. KubeRay v1.7 sets a "
            "RayCluster's suspend only when it creates it (then Kueue owns it; v1.6 applied "
            "it in place): suspend the whole RayService with spec.suspend instead")
    return None


# --------------------------------------------------------------------------- rollout_state


def _app_failure(status: Mapping[str, Any]) -> Failed | None:
    for where in ("active", "pending"):
        service = status.get(f"{where}ServiceStatus") or {}
        for name, app in sorted(_app_statuses(service).items()):
            if app.get("status") in FAILED_APP_STATUSES:
                return Failed(
                    f"application {name} is {app['status']} on the {where} cluster "
                    f"{service.get('rayClusterName', '?')}: {app.get('message') or 'no message'}")
    return None


def _serving_progress(status: Mapping[str, Any], generation: Any) -> Progress | None:
    """What a settled-looking status still lacks, or None when it serves the generation."""
    ready, upgrading = (_conditions(status).get(c) or {} for c in ("Ready", "UpgradeInProgress"))
    active = status.get("activeServiceStatus") or {}
    pending = status.get("pendingServiceStatus") or {}
    if status.get("observedGeneration") != generation:
        return Progress(f"KubeRay has not observed generation {generation} yet "
                        f"(at {status.get('observedGeneration')})")
    if pending.get("rayClusterName"):
        return Progress(
            f"new cluster {pending['rayClusterName']} coming up "
            f"({_apps_summary(_app_statuses(pending))}); "
            f"{active.get('rayClusterName') or 'no cluster'} still serving")
    if upgrading.get("status") == "True":
        why = upgrading.get("message") or upgrading.get("reason")
        return Progress(f"upgrade in progress: {why}")
    if ready.get("status") != "True":
        why = ready.get("message") or ready.get("reason") or "no Ready condition yet"
        return Progress(f"not ready: {why}")
    apps = _app_statuses(active)
    if not apps:
        return Progress("no application status reported yet")
    waiting = {n: a for n, a in apps.items() if a.get("status") != "RUNNING"}
    if waiting:
        return Progress(f"cluster {active.get('rayClusterName')}: {_apps_summary(waiting)}")
    return None


def rollout_state(
    rayservice: Mapping[str, Any] | None,
    events: Sequence[Mapping[str, Any]] = (),
    pods: Sequence[Mapping[str, Any]] = (),
    *,
    before: Mapping[str, Any] | None = None,
    active_cluster: Mapping[str, Any] | None = None,
    now: datetime | None = None,
    unschedulable_grace_s: float = UNSCHEDULABLE_GRACE_S,
) -> RolloutState:
    """Where a RayService rollout stands.

    ``events``: the RayService's events recorded since the rollout began (:func:`new_events`);
    ``pods``: the pods of :func:`starting_cluster`; ``before``: the RayService as it was
    before helm ran (None: it did not exist); ``active_cluster``: the RayCluster named by
    ``status.activeServiceStatus``; ``now``: the cluster's time, for the unschedulable grace."""
    if rayservice is None:
        return Progress("RayService not created yet")
    if rejected := _rejection(rayservice, events, before):
        return rejected
    status = _status(rayservice)
    generation = (rayservice.get("metadata") or {}).get("generation")
    waiting = _serving_progress(status, generation)
    if waiting and status.get("observedGeneration") != generation:
        return Progress(waiting.detail + _last_warning(events))
    if failure := _app_failure(status):
        return failure
    cluster = starting_cluster(rayservice)
    if problem := pod_failure(pods, cluster, now, unschedulable_grace_s):
        return Failed(f"the new cluster {cluster} cannot start: {problem}")
    if waiting:
        return Progress(waiting.detail + _last_warning(events))
    if drift := cluster_drift(rayservice, active_cluster):
        return drift
    apps = _app_statuses(status.get("activeServiceStatus"))
    return Done(f"cluster {(status.get('activeServiceStatus') or {}).get('rayClusterName')}: "
                f"{_apps_summary(apps)}")


# --------------------------------------------------------------------------- helm history

# helm v4 (pkg/action/rollback.go) records a rollback as a new revision with the target's
# chart, values and manifest, described "Rollback to N", and marks the release it replaced
# superseded; a failed upgrade, install or rollback is recorded with status failed
# (descriptions 'Upgrade "x" failed: ...', 'Release "x" failed: ...', 'Rollback "x" failed:
# ...'), and a failed rollback leaves no revision deployed. Only deployed and superseded
# revisions ever ran.
_ROLLBACK_TO = re.compile(r"^Rollback to (\d+)$")
RAN_STATUSES = frozenset({"deployed", "superseded"})


def _rows(history: Iterable[Mapping[str, Any]]) -> dict[int, Mapping[str, Any]]:
    return {int(h["revision"]): h for h in history}


def current_revision(history: Sequence[Mapping[str, Any]]) -> int | None:
    """The revision whose content runs: helm's deployed one; with none (after a failed
    rollback), the newest superseded one."""
    rows = _rows(history)
    for status in ("deployed", "superseded"):
        found = [r for r, h in rows.items() if h.get("status") == status]
        if found:
            return max(found)
    return None


def deployed_revision(history: Sequence[Mapping[str, Any]]) -> int | None:
    """The revision helm currently deploys."""
    deployed = [int(h["revision"]) for h in history if h.get("status") == "deployed"]
    return max(deployed) if deployed else None


def content_origin(history: Sequence[Mapping[str, Any]], revision: int) -> int:
    """The revision that first deployed ``revision``'s content: a "Rollback to N" revision
    runs N's content (followed through chains of rollbacks, even to a pruned N)."""
    rows = _rows(history)
    while (row := rows.get(revision)) is not None and (
            match := _ROLLBACK_TO.match(str(row.get("description") or ""))):
        revision = int(match.group(1))
    return revision


def undo_target(history: Sequence[Mapping[str, Any]]) -> tuple[int | None, str]:
    """The revision ``undo`` goes back to, and why: the newest revision that ran before the
    content running now was first deployed, with other content (so an automatic rollback's
    "Rollback to N" and the failed release before it are both stepped over)."""
    current = current_revision(history)
    if current is None:
        return None, "no revision of the release is deployed"
    origin = content_origin(history, current)
    older = [r for r, h in _rows(history).items() if r < origin and h.get("status") in
             RAN_STATUSES and content_origin(history, r) != origin]
    runs = f"revision {current}" + (f" (the content of revision {origin})"
                                    if origin != current else "")
    if not older:
        kept = min(_rows(history), default=current)
        return None, (f"{runs} runs now and no earlier revision that ran is in helm's history "
                      f"(it keeps revisions from {kept}; helm upgrade --history-max)")
    target = max(older)
    return target, f"{runs} runs now; revision {target} ran before it"


# --------------------------------------------------------------------------- helm

# How helm and client-go word an API server that is down or restarting.
_TRANSIENT_HELM = ("connection refused", "kubernetes cluster unreachable", "i/o timeout",
                   "tls handshake timeout", "connection reset by peer", "no route to host",
                   "the server is currently unable to handle the request", "unexpected eof",
                   "http2: client connection lost", "context deadline exceeded",
                   "etcdserver: request timed out", "too many requests")


# Helm 4 applies server-side. KubeRay updates the RayService once (adding its finalizer) and
# so co-owns fields Helm renders, the whole worker group list among them (an atomic list):
# any change to a worker group (a new image, resources) conflicts unless Helm takes the
# fields back. Helm is the spec's owner; KubeRay writes only defaults there.
FORCE_CONFLICTS = ("--force-conflicts",)


class HelmError(RuntimeError):
    """helm exited non-zero; the message is its output."""

    @property
    def transient(self) -> bool:
        """Whether helm failed because the API server did not answer (worth retrying)."""
        text = str(self).lower()
        return any(marker in text for marker in _TRANSIENT_HELM)


class Helm:
    """The helm commands a rollout needs, run as subprocesses."""

    def __init__(
        self,
        binary: str | None = None,
        namespace: str | None = None,
        kube_context: str | None = None,
        run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
    ) -> None:
        self.binary = binary or default_helm()
        self.scope = [*(["--namespace", namespace] if namespace else []),
                      *(["--kube-context", kube_context] if kube_context else [])]
        self._run_process = run

    def run(self, *args: str) -> str:
        proc = self._run_process([self.binary, *args, *self.scope], capture_output=True,
                                 text=True)
        if proc.returncode:
            raise HelmError((proc.stderr or proc.stdout or "").strip() or f"helm {args[0]} failed")
        return proc.stdout

    def upgrade(self, release: str, chart: str, values_files: Sequence[str] = (),
                set_values: Sequence[str] = ()) -> None:
        """Install or upgrade, keeping the release's values under the new overrides."""
        args = ["upgrade", "--install", release, chart, "--reset-then-reuse-values",
                *FORCE_CONFLICTS]
        for file in values_files:
            args += ["--values", file]
        for item in set_values:
            args += ["--set", item]
        self.run(*args)

    def history(self, release: str) -> list[dict[str, Any]]:
        """Revisions (revision, updated, status, chart, app_version, description); empty
        when the release does not exist."""
        try:
            return json.loads(self.run("history", release, "--output", "json") or "[]")
        except HelmError as exc:
            if "not found" in str(exc):
                return []
            raise

    def rollback(self, release: str, revision: int) -> None:
        self.run("rollback", release, str(revision), *FORCE_CONFLICTS)

    def values(self, release: str) -> dict[str, Any]:
        """The release's computed values (chart defaults included)."""
        return json.loads(self.run("get", "values", release, "--all", "--output", "json"))

    def rayservice_name(self, release: str) -> str:
        """Name of the RayService in the release's manifest."""
        for doc in yaml.safe_load_all(self.run("get", "manifest", release)):
            if doc and doc.get("kind") == "RayService":
                return doc["metadata"]["name"]
        raise HelmError(f"release {release} has no RayService")


# --------------------------------------------------------------------------- Kubernetes API


class KubeAccessError(RuntimeError):
    """No kubeconfig or in-cluster credentials."""


class KubeApiError(RuntimeError):
    """A Kubernetes API call failed; ``transient`` says whether retrying can help."""

    transient = False

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ApiUnavailable(KubeApiError):
    """The API server did not answer or answered 5xx/429/408: retry with backoff."""

    transient = True


class ApiDenied(KubeApiError):
    """401/403 or a TLS failure: the credentials or the cluster address need a change."""


def _api_detail(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    try:
        message = json.loads(body).get("message") if body else None
    except (ValueError, AttributeError):
        message = None
    text = message or getattr(exc, "reason", None) or str(exc)
    return str(text).splitlines()[0][:300]


def classify_api_error(exc: BaseException, what: str) -> KubeApiError | None:
    """A kubernetes-client or urllib3 error as a :class:`KubeApiError`, or None when it is
    neither (a bug: let it raise). The client raises ``ApiException`` with the HTTP status
    (status 0 for a TLS error) and lets urllib3's connection errors through."""
    import urllib3

    status = getattr(exc, "status", None)
    if isinstance(status, int) and not isinstance(exc, urllib3.exceptions.HTTPError):
        detail = _api_detail(exc)
        if status in (401, 403) or (status == 0 and "ssl" in detail.lower()):
            return ApiDenied(f"{what}: {status or 'TLS'} {detail}", status)
        if status >= 500 or status in (0, 408, 429):
            return ApiUnavailable(f"{what}: {status} {detail}", status)
        return KubeApiError(f"{what}: {status} {detail}", status)
    if isinstance(getattr(exc, "reason", None), urllib3.exceptions.SSLError):
        return ApiDenied(f"{what}: TLS {getattr(exc, 'reason', exc)}")
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        reason = str(getattr(exc, "reason", None) or exc).splitlines()[0]
        # urllib3 prefixes the connection object: "<...HTTPSConnection object at 0x..>: "
        return ApiUnavailable(f"{what}: {re.sub(r'^(<[^>]*>|None): ', '', reason)[:300]}")
    return None


class RayServiceWatcher(Protocol):
    """Reads one RayService and what a rollout judges it by. Methods raise
    :class:`KubeApiError`."""

    name: str

    def get(self) -> dict[str, Any] | None:
        """The RayService object, or None if it does not exist."""
        ...

    def events(self) -> list[dict[str, Any]]:
        """Events whose involvedObject is the RayService, as the core/v1 API returns them."""
        ...

    def pods(self, cluster: str) -> list[dict[str, Any]]:
        """The pods labelled ``ray.io/cluster=<cluster>``, as the API returns them."""
        ...

    def raycluster(self, name: str) -> dict[str, Any] | None:
        """The RayCluster ``name``, or None if it does not exist."""
        ...

    def server_now(self) -> datetime | None:
        """The API server's time at the last answer (its Date header), if known."""
        ...


REQUEST_TIMEOUT = (5.0, 20.0)  # connect, read: a hung API server must not hang the rollout


class KubeRayServiceWatcher:
    """RayServiceWatcher over the kubernetes Python client (kubeconfig or in-cluster)."""

    def __init__(self, name: str, namespace: str | None = None,
                 kube_context: str | None = None) -> None:
        from kubernetes import client, config

        try:
            config.load_kube_config(context=kube_context)
            contexts, current = config.list_kube_config_contexts()
            if kube_context:
                current = next(c for c in contexts if c["name"] == kube_context)
            namespace = namespace or current["context"].get("namespace", "default")
        except config.ConfigException as exc:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                raise KubeAccessError(
                    f"cannot reach Kubernetes: {exc}. Set KUBECONFIG or --kube-context") from exc
            namespace = namespace or Path(
                "/var/run/secrets/kubernetes.io/serviceaccount/namespace").read_text().strip()
        self.name, self.namespace = name, namespace
        self._custom = client.CustomObjectsApi()
        self._core = client.CoreV1Api()
        self._date: str | None = None

    def _json(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One API call's JSON body, with a timeout and errors as KubeApiError."""
        try:
            response = call(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT,
                            **kwargs)
            self._date = response.headers.get("Date") or self._date
            return json.loads(response.data)
        except ValueError as exc:
            raise KubeApiError(f"{what}: the answer is not JSON ({exc})") from exc
        except Exception as exc:
            error = classify_api_error(exc, what)
            if error is None:
                raise
            raise error from exc

    def _custom_object(self, plural: str, name: str) -> dict[str, Any] | None:
        try:
            return self._json(f"get {plural} {self.namespace}/{name}",
                              self._custom.get_namespaced_custom_object, "ray.io", "v1",
                              self.namespace, plural, name)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    def get(self) -> dict[str, Any] | None:
        return self._custom_object("rayservices", self.name)

    def raycluster(self, name: str) -> dict[str, Any] | None:
        return self._custom_object("rayclusters", name)

    def events(self) -> list[dict[str, Any]]:
        selector = f"involvedObject.kind=RayService,involvedObject.name={self.name}"
        return self._json(f"list events in {self.namespace}", self._core.list_namespaced_event,
                          self.namespace, field_selector=selector)["items"]

    def pods(self, cluster: str) -> list[dict[str, Any]]:
        return self._json(f"list pods in {self.namespace}", self._core.list_namespaced_pod,
                          self.namespace, label_selector=f"{CLUSTER_LABEL}={cluster}")["items"]

    def server_now(self) -> datetime | None:
        try:
            return parsedate_to_datetime(self._date) if self._date else None
        except (TypeError, ValueError):
            return None


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Monotonic time and real sleeps."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


# --------------------------------------------------------------------------- watching


@dataclass(frozen=True)
class Baseline:
    """What was there before helm ran: the RayService (None: it did not exist) and the
    fingerprints of the events already recorded (None: judge no events)."""

    rayservice: dict[str, Any] | None = None
    seen: frozenset[tuple[Any, ...]] | None = frozenset()


@dataclass
class _Outage:
    """Backoff while the Kubernetes API does not answer: 1, 2, 4 ... 30 s."""

    console: Console
    since: float | None = None
    delay: float = 1.0

    def failed(self, now: float, error: KubeApiError) -> float:
        if self.since is None:
            self.since = now
            self.console.print(f"[yellow]Kubernetes API unreachable ({escape(str(error))}); "
                               "retrying until the deadline[/]", soft_wrap=True)
        delay, self.delay = self.delay, min(self.delay * 2, MAX_BACKOFF_S)
        return delay

    def answered(self, now: float) -> None:
        if self.since is not None:
            self.console.print(f"[green]Kubernetes API answers again "
                               f"(after {now - self.since:.0f}s)[/]")
        self.since, self.delay = None, 1.0


@dataclass
class Waiter:
    """Polls a RayService until :func:`rollout_state` is Done or NotApplied for ``settle``
    seconds (at least :data:`MIN_SETTLE_S`), Failed, or the deadline passes; retries an
    unreachable API with backoff inside the deadline."""

    watcher: RayServiceWatcher
    console: Console
    clock: Clock
    poll_s: float = 5.0
    settle_s: float = 10.0
    unschedulable_grace_s: float = UNSCHEDULABLE_GRACE_S
    _printed: set[tuple[Any, ...]] = field(default_factory=set, init=False, repr=False)

    def baseline(self, budget_s: float) -> Baseline | Unobservable:
        """The RayService and its events now, before helm changes anything."""
        outage, deadline = _Outage(self.console), self.clock.now() + budget_s
        while True:
            now = self.clock.now()
            try:
                found = Baseline(self.watcher.get(),
                                 frozenset(map(event_fingerprint, self.watcher.events())))
                outage.answered(now)
                return found
            except KubeApiError as exc:
                if not exc.transient or now >= deadline:
                    return Unobservable(str(exc))
                self.clock.sleep(min(outage.failed(now, exc), max(0.0, deadline - now)))

    def check(self, baseline: Baseline) -> RolloutState:
        """One look at the RayService, its new events, the starting cluster's pods and the
        active RayCluster, judged by :func:`rollout_state`."""
        obj = self.watcher.get()
        if obj is None:
            return Unobservable(f"RayService {self.watcher.name} not found: check --rayservice "
                                "and --namespace, or whether it was deleted")
        uid = (obj.get("metadata") or {}).get("uid")
        events = new_events(self.watcher.events(), baseline.seen, uid)
        self._print_events(events)
        status = _status(obj)
        starting = starting_cluster(obj)
        pods = self.watcher.pods(starting) if starting else []
        active = (status.get("activeServiceStatus") or {}).get("rayClusterName")
        pending = (status.get("pendingServiceStatus") or {}).get("rayClusterName")
        cluster = self.watcher.raycluster(active) if active and not pending else None
        return rollout_state(obj, events, pods, before=baseline.rayservice,
                             active_cluster=cluster,
                             now=self.watcher.server_now() or datetime.now(UTC),
                             unschedulable_grace_s=self.unschedulable_grace_s)

    def _print_events(self, events: Sequence[Mapping[str, Any]]) -> None:
        for event in events:
            if (key := event_fingerprint(event)) not in self._printed:
                self._printed.add(key)
                style = "red" if event.get("type") == "Warning" else "dim"
                self.console.print(f"[{style}]  event {escape(_event_text(event))}[/]",
                                   soft_wrap=True)

    def _report(self, state: RolloutState, elapsed: float, last: str) -> str:
        if state.detail != last:
            color = {Done: "green", Progress: "yellow", NotApplied: "yellow"}.get(
                type(state), "red")
            text = state.detail  # a verdict's whole text is the caller's to print
            if not isinstance(state, Done | Progress) and len(text) > 120:
                text = text[:119] + "…"
            self.console.print(f"[{color}]{elapsed:6.0f}s  {escape(text)}[/]", soft_wrap=True)
        return state.detail

    def wait(self, timeout_s: float, baseline: Baseline | None = None) -> RolloutState:
        """Poll until settled, failed or the deadline. Without ``baseline``, one is taken
        now (events already recorded then do not count)."""
        start = self.clock.now()
        deadline, settle = start + timeout_s, max(self.settle_s, MIN_SETTLE_S)
        if baseline is None:
            taken = self.baseline(timeout_s)
            if isinstance(taken, Unobservable):
                return taken
            baseline = taken
        outage, done_since, last = _Outage(self.console), None, ""
        while True:
            now = self.clock.now()
            try:
                state = self.check(baseline)
            except KubeApiError as exc:
                done_since = None
                if not exc.transient:
                    return Unobservable(str(exc))
                if now >= deadline:
                    return Unobservable(f"the Kubernetes API was still unreachable at the "
                                        f"deadline ({timeout_s:.0f}s): {exc}")
                self.clock.sleep(min(outage.failed(now, exc), max(0.0, deadline - now)))
                continue
            outage.answered(now)
            last = self._report(state, now - start, last)
            if isinstance(state, Failed | Unobservable):
                return state
            if isinstance(state, Done | NotApplied):
                done_since = now if done_since is None else done_since
                if now - done_since >= settle:
                    return state
            else:
                done_since = None
                if now >= deadline:
                    return Failed(f"not rolled out after {timeout_s:.0f}s: {state.detail}")
            self.clock.sleep(max(0.0, min(self.poll_s, deadline - now)) or self.poll_s)


# --------------------------------------------------------------------------- routing values


def _model_spec(spec: str, usage: str, by_name: Mapping[Any, Any]) -> tuple[str, str]:
    name, sep, rest = spec.partition("=")
    if not sep:
        raise typer.BadParameter(f"{spec!r}: use {usage}")
    if name not in by_name:
        raise typer.BadParameter(f"no model {name!r} in the release; models: "
                                 f"{', '.join(sorted(map(str, by_name))) or 'none'}")
    return name, rest.strip()


def _weights(spec: str, text: str) -> dict[str, int]:
    weights: dict[str, int] = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        version, _, weight = (part.strip() for part in item.partition(":"))
        if not version or not weight.isdigit():
            raise typer.BadParameter(f"{spec!r}: use MODEL=VERSION:WEIGHT,..., e.g. "
                                     "fraud=1:90,2:10 (weights are whole numbers >= 0)")
        weights[version] = int(weight)
    if weights and sum(weights.values()) != 100:
        raise typer.BadParameter(f"{spec!r}: the weights add up to {sum(weights.values())}, "
                                 "not 100")
    return weights


def model_version_values(values: Mapping[str, Any], specs: Iterable[str],
                         traffic: Iterable[str] = (), shadow: Iterable[str] = ()
                         ) -> dict[str, Any]:
    """Values that change the routing of the named models: ``versions`` (``fraud=2`` or
    ``fraud=2,1``), ``traffic`` (``fraud=1:90,2:10``; ``fraud=`` ends the split) and
    ``shadow`` (``fraud=3``; ``fraud=`` stops it). New versions without a new split end the
    model's split, so the first version answers every unpinned request.

    The chart renders these into the gateway's ``user_config``, which Ray Serve applies in
    place. The whole models list is returned: helm replaces a list, never merges it."""
    models = copy.deepcopy(((values.get("serve") or {}).get("app") or {}).get("models") or [])
    by_name = {m.get("name"): m for m in models}
    for spec in specs:
        name, versions = _model_spec(spec, "MODEL=VERSION[,VERSION...], e.g. fraud=2", by_name)
        wanted = [v.strip() for v in versions.split(",") if v.strip()]
        if not wanted:
            raise typer.BadParameter(f"{spec!r}: use MODEL=VERSION[,VERSION...], e.g. fraud=2")
        by_name[name]["versions"] = wanted
        by_name[name].pop("traffic", None)
    for spec in traffic:
        name, weights = _model_spec(spec, "MODEL=VERSION:WEIGHT,..., e.g. fraud=1:90,2:10",
                                    by_name)
        by_name[name].pop("traffic", None)
        if split := _weights(spec, weights):
            by_name[name]["traffic"] = split
    for spec in shadow:
        name, version = _model_spec(spec, "MODEL=VERSION (MODEL= to stop), e.g. fraud=3",
                                    by_name)
        by_name[name].pop("shadow", None)
        if version:
            by_name[name]["shadow"] = version
    return {"serve": {"app": {"models": models}}}


# --------------------------------------------------------------------------- the rollout


@dataclass
class Rollout:
    """One release's rollout: upgrade, wait, and roll back when it does not complete."""

    helm: Helm
    make_watcher: Callable[[str], RayServiceWatcher]
    console: Console
    clock: Clock
    release: str = "finserve"
    rayservice: str | None = None
    poll_s: float = 5.0
    settle_s: float = 10.0
    unschedulable_grace_s: float = UNSCHEDULABLE_GRACE_S

    def _waiter(self, name: str) -> Waiter:
        return Waiter(self.make_watcher(name), self.console, self.clock, self.poll_s,
                      self.settle_s, self.unschedulable_grace_s)

    def _helm(self, what: str, call: Callable[[], Any], budget_s: float = HELM_RETRY_S) -> Any:
        """A helm call, retried with backoff while the API server does not answer."""
        deadline, delay, told = self.clock.now() + budget_s, 1.0, False
        while True:
            try:
                return call()
            except HelmError as exc:
                now = self.clock.now()
                if not exc.transient or now >= deadline:
                    raise
                if not told:
                    self.console.print(f"[yellow]{what}: Kubernetes API unreachable "
                                       f"({escape(str(exc).splitlines()[0])}); retrying[/]",
                                       soft_wrap=True)
                    told = True
                self.clock.sleep(min(delay, deadline - now))
                delay = min(delay * 2, MAX_BACKOFF_S)

    def _name(self) -> str:
        return self.rayservice or self._helm(
            "helm get manifest", lambda: self.helm.rayservice_name(self.release))

    def _model_values(self, tmp: str, files: list[str], model_versions: Sequence[str],
                      traffic: Sequence[str], shadow: Sequence[str]) -> None:
        """Add a values file with the routing changes, based on the release's models."""
        base = self._helm("helm get values", lambda: self.helm.values(self.release))
        for file in files:  # a models list in a -f file is the newer base
            serve = (yaml.safe_load(Path(file).read_text()) or {}).get("serve") or {}
            if (serve.get("app") or {}).get("models"):
                base = {"serve": serve}
        path = Path(tmp, "model-versions.yaml")
        path.write_text(yaml.safe_dump(model_version_values(base, model_versions, traffic,
                                                            shadow)))
        files.append(str(path))

    def _upgrade(self, chart: str, files: list[str], sets: list[str], previous: int | None,
                 latest: int, timeout_s: float) -> int | None:
        """helm upgrade; an exit code when it failed (rolled back if helm recorded it)."""
        self.console.print(f"[bold]helm upgrade {self.release}[/] {chart} "
                           f"(from revision {previous or 'none'})")
        try:
            self.helm.upgrade(self.release, chart, files, sets)
            return None
        except HelmError as exc:
            self.console.print(f"[red]helm upgrade failed:[/] {escape(str(exc))}", soft_wrap=True)
            history = self._helm("helm history", lambda: self.helm.history(self.release))
            if max((int(h["revision"]) for h in history), default=0) > latest:
                return self._roll_back(previous, "helm upgrade failed", timeout_s)
            return EXIT_NOT_ROLLED_BACK

    def start(self, chart: str, values_files: Sequence[str] = (), set_values: Sequence[str] = (),
              model_versions: Sequence[str] = (), image_tag: str | None = None,
              timeout_s: float = 1200.0, traffic: Sequence[str] = (),
              shadow: Sequence[str] = ()) -> int:
        """Upgrade and wait; roll back to the previous revision on failure. Exit code."""
        history = self._helm("helm history", lambda: self.helm.history(self.release))
        previous = current_revision(history)
        latest = max((int(h["revision"]) for h in history), default=0)
        files, sets = list(values_files), list(set_values) + (
            [f"image.tag={image_tag}"] if image_tag else [])
        if (model_versions or traffic or shadow) and previous is None:
            raise typer.BadParameter(
                "--model-version, --traffic and --shadow need an installed release")
        before = self._name() if previous is not None else None
        waiter = self._waiter(before) if before else None
        baseline = waiter.baseline(min(timeout_s, HELM_RETRY_S)) if waiter else Baseline()
        if isinstance(baseline, Unobservable):
            self.console.print(f"[red]cannot watch the rollout, nothing changed:[/] "
                               f"{escape(baseline.reason)}", soft_wrap=True)
            return EXIT_UNOBSERVABLE
        with tempfile.TemporaryDirectory(prefix="finserve-rollout-") as tmp:
            if model_versions or traffic or shadow:
                self._model_values(tmp, files, model_versions, traffic, shadow)
            if (code := self._upgrade(chart, files, sets, previous, latest, timeout_s)) is not None:
                return code
        name = self._name()
        if name != before or waiter is None:
            waiter, baseline = self._waiter(name), Baseline()
        self.console.print(f"waiting for RayService {name} (deadline {timeout_s:.0f}s)")
        return self._conclude(waiter.wait(timeout_s, baseline), previous, timeout_s, name)

    def _conclude(self, state: RolloutState, previous: int | None, timeout_s: float,
                  name: str) -> int:
        if isinstance(state, Done):
            self.console.print(f"[bold green]rolled out[/] {self.release}: {escape(state.detail)}")
            return 0
        if isinstance(state, NotApplied):
            self.console.print(f"[bold yellow]rolled out only in part[/] {self.release}: "
                               f"{escape(state.detail)}", soft_wrap=True)
            return EXIT_NOT_APPLIED
        if isinstance(state, Unobservable):
            self.console.print(
                f"[bold red]cannot tell whether {self.release} rolled out:[/] "
                f"{escape(state.detail)}. Nothing was rolled back; when the API answers, "
                f"`finserve rollout status -r {self.release}` tells, and `finserve rollout undo "
                f"-r {self.release}` goes back", soft_wrap=True)
            return EXIT_UNOBSERVABLE
        return self._roll_back(previous, state.detail, timeout_s, name)

    def _rollback_and_wait(self, revision: int, timeout_s: float,
                           name: str | None = None) -> RolloutState:
        """helm rollback to ``revision`` and wait for it (HelmError when helm refuses)."""
        waiter = self._waiter(name or self._name())
        baseline = waiter.baseline(min(timeout_s, HELM_RETRY_S))
        if isinstance(baseline, Unobservable):
            return baseline
        self.console.print(f"[bold]helm rollback {self.release} {revision}[/]")
        self._helm("helm rollback", lambda: self.helm.rollback(self.release, revision))
        return waiter.wait(timeout_s, baseline)

    def _roll_back(self, revision: int | None, reason: str, timeout_s: float,
                   name: str | None = None) -> int:
        self.console.print(f"[bold red]rollout failed:[/] {escape(reason)}", soft_wrap=True)
        if revision is None:
            self.console.print("[red]no earlier revision to roll back to[/]")
            return EXIT_NOT_ROLLED_BACK
        try:
            state = self._rollback_and_wait(revision, timeout_s, name)
        except HelmError as exc:
            self.console.print(f"[red]helm rollback failed:[/] {escape(str(exc))}", soft_wrap=True)
            return EXIT_NOT_ROLLED_BACK
        if isinstance(state, Done | NotApplied):
            self.console.print(f"[yellow]rolled back to revision {revision}[/]: "
                               f"{escape(state.detail)}", soft_wrap=True)
            return EXIT_ROLLED_BACK
        self.console.print(f"[red]rollback to revision {revision} did not settle:[/] "
                           f"{escape(state.detail)}", soft_wrap=True)
        return EXIT_NOT_ROLLED_BACK

    def undo(self, timeout_s: float = 1200.0) -> int:
        """Roll back to the revision that ran before the running content was deployed, and
        wait. Exit code: 0 settled, 2 nothing to go back to or it failed, 3 not applied to
        the live cluster, 4 the API could not be watched."""
        history = self._helm("helm history", lambda: self.helm.history(self.release))
        target, why = undo_target(history)
        if target is None:
            self.console.print(f"[red]{self.release} has no earlier revision to go back to:[/] "
                               f"{escape(why)}", soft_wrap=True)
            return EXIT_NOT_ROLLED_BACK
        self.console.print(f"{escape(why)}")
        try:
            state = self._rollback_and_wait(target, timeout_s)
        except HelmError as exc:
            self.console.print(f"[red]helm rollback failed:[/] {escape(str(exc))}", soft_wrap=True)
            return EXIT_NOT_ROLLED_BACK
        if isinstance(state, Done):
            self.console.print(f"[bold green]rolled back[/] to revision {target}: "
                               f"{escape(state.detail)}")
            return 0
        codes = {NotApplied: EXIT_NOT_APPLIED, Unobservable: EXIT_UNOBSERVABLE}
        self.console.print(f"[red]undo did not settle:[/] {escape(state.detail)}", soft_wrap=True)
        return codes.get(type(state), EXIT_NOT_ROLLED_BACK)


def describe(rayservice: Mapping[str, Any]) -> Table:
    """A table of what matters in a RayService's status."""
    status = rayservice.get("status") or {}
    table = Table("field", "value", title=f"RayService {rayservice['metadata']['name']}",
                  show_header=False)
    table.add_row("generation / observed", f"{rayservice['metadata'].get('generation')} / "
                  f"{status.get('observedGeneration')}")
    for ctype, cond in _conditions(status).items():
        text = f"{cond.get('status')} {cond.get('reason', '')} {cond.get('message', '')}"
        table.add_row(f"condition {ctype}", escape(text.strip()))
    for which in ("activeServiceStatus", "pendingServiceStatus"):
        svc = status.get(which) or {}
        text = f"{svc.get('rayClusterName') or '-'}: {_apps_summary(_app_statuses(svc))}"
        table.add_row(which.removesuffix("ServiceStatus"), escape(text))
    return table


# --------------------------------------------------------------------------- CLI


def default_helm() -> str:
    """helm on PATH, else the one ``make tools`` put beside this interpreter."""
    found = shutil.which("helm") or shutil.which("helm", path=str(Path(sys.executable).parent))
    return found or "helm"


def make_helm(namespace: str | None, kube_context: str | None, binary: str | None) -> Helm:
    return Helm(binary, namespace, kube_context)


def make_watcher(name: str, namespace: str | None,
                 kube_context: str | None) -> RayServiceWatcher:
    return KubeRayServiceWatcher(name, namespace, kube_context)


EXIT_CODES_HELP = (
    "Exit codes: 0 rolled out; 1 failed and rolled back; 2 failed and not rolled back; "
    "3 not applied to the live cluster (KubeRay leaves part of the cluster spec as it runs; "
    "the message says what to do); 4 Kubernetes API unreachable or access refused, outcome "
    "unknown.")
console = Console()
rollout_app = typer.Typer(
    help="Roll out a FinServe Helm release and wait until KubeRay has really switched; "
         "without a command, `start`. " + EXIT_CODES_HELP,
    no_args_is_help=False,
)

ReleaseOpt = Annotated[str, typer.Option("--release", "-r", help="Helm release name.")]
NamespaceOpt = Annotated[
    str | None, typer.Option("--namespace", "-n", help="Namespace (default: kubeconfig's).")
]
ContextOpt = Annotated[str | None, typer.Option("--kube-context", help="kubeconfig context.")]
NameOpt = Annotated[str | None, typer.Option(
    "--rayservice", help="RayService name (default: read from the release manifest).")]
TimeoutOpt = Annotated[float, typer.Option(
    "--timeout", min=1, help="Seconds to wait for the rollout before rolling back.")]
PollOpt = Annotated[float, typer.Option("--poll", min=0.1, help="Seconds between checks.")]
SettleOpt = Annotated[float, typer.Option(
    "--settle", min=MIN_SETTLE_S,
    help=f"Seconds the rolled-out state must hold before it counts; at least {MIN_SETTLE_S:g}: "
         "KubeRay writes the new generation with the application statuses it read before "
         "submitting the new Serve config, and only its next reconcile "
         f"({KUBERAY_REQUEUE_S:g} s later, then up to {PROXY_CHECK_TIMEOUT_S:g} s of proxy "
         f"check and {DASHBOARD_TIMEOUT_S:g} s of status read) reports what Serve did with "
         "it.")]
GraceOpt = Annotated[float, typer.Option(
    "--unschedulable-grace", min=0,
    help="Seconds the new cluster's head pod may stay unschedulable (a node autoscaler may be "
         "adding a node) before the rollout fails.")]
HelmOpt = Annotated[str | None, typer.Option("--helm", help="helm binary (default: PATH).")]
ChartOpt = Annotated[str, typer.Option("--chart", help="Chart path or reference.")]
ValuesOpt = Annotated[list[str] | None, typer.Option(
    "--values", "-f", help="Values file (repeatable).")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="helm --set KEY=VALUE (repeatable).")]
ModelVersionOpt = Annotated[list[str] | None, typer.Option(
    "--model-version", help="MODEL=VERSION[,VERSION...]: serve these versions, the first by "
                            "default; ends the model's traffic split unless --traffic sets one "
                            "(the gateway's routing: applied in place, no restart). "
                            "Repeatable.")]
TrafficOpt = Annotated[list[str] | None, typer.Option(
    "--traffic", help="MODEL=VERSION:WEIGHT,...: split unpinned requests (a canary, e.g. "
                      "fraud=1:90,2:10; weights add up to 100); MODEL= ends the split. "
                      "Applied in place. Repeatable.")]
ShadowOpt = Annotated[list[str] | None, typer.Option(
    "--shadow", help="MODEL=VERSION: copy live traffic to VERSION and record its answers "
                     "(never returned); MODEL= stops it. Applied in place. Repeatable.")]
ImageTagOpt = Annotated[str | None, typer.Option(
    "--image-tag", help="New image tag (KubeRay brings up a new cluster, then switches).")]


@contextmanager
def _cli_errors() -> Iterator[None]:
    """helm errors end the command with their message (exit 2; 4 when the API server did
    not answer); Kubernetes access and API errors with theirs (exit 4)."""
    try:
        yield
    except HelmError as exc:
        console.print(f"[red]{escape(str(exc))}[/]", soft_wrap=True)
        raise typer.Exit(EXIT_UNOBSERVABLE if exc.transient else EXIT_NOT_ROLLED_BACK) from None
    except (KubeAccessError, KubeApiError) as exc:
        console.print(f"[red]{escape(str(exc))}[/]", soft_wrap=True)
        raise typer.Exit(EXIT_UNOBSERVABLE) from None


def _rollout(release: str, namespace: str | None, kube_context: str | None,
             rayservice: str | None, poll: float, settle: float, helm: str | None,
             unschedulable_grace: float = UNSCHEDULABLE_GRACE_S) -> Rollout:
    return Rollout(
        helm=make_helm(namespace, kube_context, helm),
        make_watcher=lambda name: make_watcher(name, namespace, kube_context),
        console=console, clock=SystemClock(), release=release, rayservice=rayservice,
        poll_s=poll, settle_s=settle, unschedulable_grace_s=unschedulable_grace,
    )


@rollout_app.callback(invoke_without_command=True)
def rollout_main(
    ctx: typer.Context,
    release: ReleaseOpt = "finserve",
    namespace: NamespaceOpt = None,
    kube_context: ContextOpt = None,
    chart: ChartOpt = "charts/finserve",
    values: ValuesOpt = None,
    set_values: SetOpt = None,
    model_version: ModelVersionOpt = None,
    image_tag: ImageTagOpt = None,
    rayservice: NameOpt = None,
    timeout: TimeoutOpt = 1200.0,
    poll: PollOpt = 5.0,
    settle: SettleOpt = 10.0,
    unschedulable_grace: GraceOpt = UNSCHEDULABLE_GRACE_S,
    helm: HelmOpt = None,
    traffic: TrafficOpt = None,
    shadow: ShadowOpt = None,
) -> None:
    """Without a command: `start` with these options."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(start, **ctx.params)


@rollout_app.command("start", help="helm upgrade with new values, wait until rolled out; on "
                     "failure or timeout roll back to the previous revision. " + EXIT_CODES_HELP)
def start(
    release: ReleaseOpt = "finserve",
    namespace: NamespaceOpt = None,
    kube_context: ContextOpt = None,
    chart: ChartOpt = "charts/finserve",
    values: ValuesOpt = None,
    set_values: SetOpt = None,
    model_version: ModelVersionOpt = None,
    image_tag: ImageTagOpt = None,
    rayservice: NameOpt = None,
    timeout: TimeoutOpt = 1200.0,
    poll: PollOpt = 5.0,
    settle: SettleOpt = 10.0,
    unschedulable_grace: GraceOpt = UNSCHEDULABLE_GRACE_S,
    helm: HelmOpt = None,
    traffic: TrafficOpt = None,
    shadow: ShadowOpt = None,
) -> None:
    rollout = _rollout(release, namespace, kube_context, rayservice, poll, settle, helm,
                       unschedulable_grace)
    with _cli_errors():
        code = rollout.start(chart, values or [], set_values or [], model_version or [],
                             image_tag, timeout, traffic or [], shadow or [])
    raise typer.Exit(code)


@rollout_app.command("status")
def status(
    release: ReleaseOpt = "finserve",
    namespace: NamespaceOpt = None,
    kube_context: ContextOpt = None,
    rayservice: NameOpt = None,
    helm: HelmOpt = None,
) -> None:
    """Print the RayService's state and whether it is rolled out: exit 0 rolled out,
    1 rolling out or failed, 3 not applied to the live cluster, 4 API problem."""
    with _cli_errors():
        name = rayservice or make_helm(namespace, kube_context, helm).rayservice_name(release)
        watcher = make_watcher(name, namespace, kube_context)
        obj = watcher.get()
        if obj is None:
            console.print(f"[red]RayService {name} not found[/] (check --rayservice and "
                          "--namespace)")
            raise typer.Exit(EXIT_UNOBSERVABLE)
        console.print(describe(obj))
        state = Waiter(watcher, console, SystemClock()).check(Baseline(seen=None))
    color = {Done: "green", Progress: "yellow", NotApplied: "yellow"}.get(type(state), "red")
    verdict = {Done: "rolled out", Progress: "rolling out", NotApplied: "not applied",
               Unobservable: "cannot tell"}.get(type(state), "failed")
    console.print(f"[bold {color}]{verdict}[/]: {escape(state.detail)}", soft_wrap=True)
    raise typer.Exit({Done: 0, NotApplied: EXIT_NOT_APPLIED, Unobservable: EXIT_UNOBSERVABLE}
                     .get(type(state), 1))


@rollout_app.command("undo", help="helm rollback to the revision that ran before the running "
                     "one was first deployed (stepping over an automatic rollback and the "
                     "release it undid), and wait until it is rolled out. Exit codes: 0 rolled "
                     "back; 2 nothing to go back to, or it failed; 3 not applied to the live "
                     "cluster; 4 Kubernetes API unreachable.")
def undo(
    release: ReleaseOpt = "finserve",
    namespace: NamespaceOpt = None,
    kube_context: ContextOpt = None,
    rayservice: NameOpt = None,
    timeout: TimeoutOpt = 1200.0,
    poll: PollOpt = 5.0,
    settle: SettleOpt = 10.0,
    helm: HelmOpt = None,
) -> None:
    rollout = _rollout(release, namespace, kube_context, rayservice, poll, settle, helm)
    with _cli_errors():
        code = rollout.undo(timeout)
    raise typer.Exit(code)


__all__ = [
    "MIN_SETTLE_S",
    "ApiDenied",
    "ApiUnavailable",
    "Baseline",
    "Done",
    "Failed",
    "Helm",
    "HelmError",
    "KubeAccessError",
    "KubeApiError",
    "KubeRayServiceWatcher",
    "NotApplied",
    "Progress",
    "RayServiceWatcher",
    "Rollout",
    "RolloutState",
    "SystemClock",
    "Unobservable",
    "Waiter",
    "classify_api_error",
    "cluster_drift",
    "pod_failure",
    "rollout_app",
    "rollout_state",
    "undo_target",
]

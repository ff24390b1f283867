"""The decision: where a RayService rollout stands, from its status, its new events, the
starting cluster's pods and the running RayCluster (:func:`rollout_state`, pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from rollout.drift import cluster_drift
from rollout.events import event_text, last_warning
from rollout.kuberay import (
    FAILED_APP_STATUSES,
    INITIALIZING_TIMEOUT,
    REJECTED_EVENT_REASONS,
    VALIDATION_FAILED,
    app_statuses,
    apps_summary,
    conditions,
    status_of,
)
from rollout.pods import UNSCHEDULABLE_GRACE_S, pod_failure, starting_cluster
from rollout.states import Done, Failed, Progress, RolloutState


def _fresh(rayservice: Mapping[str, Any], before: Mapping[str, Any] | None) -> bool:
    """Whether the Ready condition or the status was rewritten since ``before`` was read
    (no ``before``: the RayService did not exist, so everything is fresh). Each validation
    failure rewrites the status with a new ``lastUpdateTime``."""
    if before is None:
        return True
    old, new = status_of(before), status_of(rayservice)
    was, now = conditions(old).get("Ready") or {}, conditions(new).get("Ready") or {}
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
            return Failed(f"KubeRay rejected the spec ({event_text(event)})")
    status = status_of(rayservice)
    ready = conditions(status).get("Ready") or {}
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


def _app_failure(status: Mapping[str, Any]) -> Failed | None:
    for where in ("active", "pending"):
        service = status.get(f"{where}ServiceStatus") or {}
        for name, app in sorted(app_statuses(service).items()):
            if app.get("status") in FAILED_APP_STATUSES:
                return Failed(
                    f"application {name} is {app['status']} on the {where} cluster "
                    f"{service.get('rayClusterName', '?')}: {app.get('message') or 'no message'}")
    return None


def _serving_progress(status: Mapping[str, Any], generation: Any) -> Progress | None:
    """What a settled-looking status still lacks, or None when it serves the generation."""
    ready, upgrading = (conditions(status).get(c) or {} for c in ("Ready", "UpgradeInProgress"))
    active = status.get("activeServiceStatus") or {}
    pending = status.get("pendingServiceStatus") or {}
    if status.get("observedGeneration") != generation:
        return Progress(f"KubeRay has not observed generation {generation} yet "
                        f"(at {status.get('observedGeneration')})")
    if pending.get("rayClusterName"):
        return Progress(
            f"new cluster {pending['rayClusterName']} coming up "
            f"({apps_summary(app_statuses(pending))}); "
            f"{active.get('rayClusterName') or 'no cluster'} still serving")
    if upgrading.get("status") == "True":
        why = upgrading.get("message") or upgrading.get("reason")
        return Progress(f"upgrade in progress: {why}")
    if ready.get("status") != "True":
        why = ready.get("message") or ready.get("reason") or "no Ready condition yet"
        return Progress(f"not ready: {why}")
    apps = app_statuses(active)
    if not apps:
        return Progress("no application status reported yet")
    waiting = {n: a for n, a in apps.items() if a.get("status") != "RUNNING"}
    if waiting:
        return Progress(f"cluster {active.get('rayClusterName')}: {apps_summary(waiting)}")
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
    status = status_of(rayservice)
    generation = (rayservice.get("metadata") or {}).get("generation")
    waiting = _serving_progress(status, generation)
    if waiting and status.get("observedGeneration") != generation:
        return Progress(waiting.detail + last_warning(events))
    if failure := _app_failure(status):
        return failure
    cluster = starting_cluster(rayservice)
    if problem := pod_failure(pods, cluster, now, unschedulable_grace_s):
        return Failed(f"the new cluster {cluster} cannot start: {problem}")
    if waiting:
        return Progress(waiting.detail + last_warning(events))
    if drift := cluster_drift(rayservice, active_cluster):
        return drift
    apps = app_statuses(status.get("activeServiceStatus"))
    return Done(f"cluster {(status.get('activeServiceStatus') or {}).get('rayClusterName')}: "
                f"{apps_summary(apps)}")

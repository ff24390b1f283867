"""Why the starting RayCluster's pods cannot start (image, configuration, crash loop, no
room for the head)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from rollout.kuberay import CLUSTER_LABEL, NODE_TYPE_LABEL, conditions, parse_time, status_of

# Container waiting reasons the kubelet does not get past without a change to the spec, the
# image, the registry or a Secret.
POD_START_FAILURES = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                                "ErrImageNeverPull", "CreateContainerConfigError"})
# The kubelet backs off after the first crash already; a head that crashed twice is looping.
CRASH_LOOP_RESTARTS = 2
UNSCHEDULABLE_GRACE_S = 180.0


def starting_cluster(rayservice: Mapping[str, Any] | None) -> str | None:
    """The RayCluster this rollout waits to come up: the pending one, else the active one
    while the RayService is not Ready (just promoted on a first install, or lost its pods)."""
    status = status_of(rayservice)
    pending = (status.get("pendingServiceStatus") or {}).get("rayClusterName")
    if pending:
        return pending
    if (conditions(status).get("Ready") or {}).get("status") == "True":
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
        since = parse_time(cond.get("lastTransitionTime"))
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

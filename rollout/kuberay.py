"""Facts of KubeRay's RayService controller (ray-operator v1.6.2 and v1.7.0,
``controllers/ray/``) and readers of the status it writes."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

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


def status_of(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """An object's ``status`` (empty when it has none)."""
    return (obj or {}).get("status") or {}


def conditions(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """A status's conditions by type."""
    return {c.get("type", ""): c for c in status.get("conditions") or []}


def app_statuses(service_status: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    """The application statuses of an active or pending service status."""
    return dict((service_status or {}).get("applicationStatuses") or {})


def apps_summary(apps: Mapping[str, Mapping[str, Any]]) -> str:
    """``name STATUS, ...`` of applications."""
    return ", ".join(f"{n} {a.get('status', '?')}" for n, a in sorted(apps.items())) or "no apps"


def parse_time(text: Any) -> datetime | None:
    """An RFC 3339 time from the API (``Z``, micro- or nanoseconds), or None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None

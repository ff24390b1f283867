"""What of a RayService's ``rayClusterConfig`` the running RayCluster does not run and KubeRay
will not apply (:func:`cluster_drift`), with what to do about it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rollout.spec_diff import diff_paths, hashed_part, normalized, pod_spec
from rollout.states import NotApplied


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
            wanted, running = pod_spec(w).get(key) or [], pod_spec(h).get(key) or []
            if any(item not in running for item in wanted):
                found.append(_Unhashed(f"{name}.template.spec.{key}", wanted, running))
    if normalized(want.get("upgradeStrategy")) != normalized(have.get("upgradeStrategy")):
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
    paths = diff_paths(hashed_part(want), hashed_part(have))
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

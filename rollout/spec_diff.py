"""RayCluster specs compared as KubeRay's typed round trip leaves them: quantities by amount,
empty values dropped, the part its cluster hash covers, and where two specs differ."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

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


def normalized(value: Any, key: str = "") -> Any:
    """A spec as KubeRay's typed round trip leaves it (RayService -> Go struct -> RayCluster):
    empty values and false dropped (omitempty), quantities compared by amount."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            v = _quantity(v) if key in ("limits", "requests") or k == "sizeLimit" else (
                normalized(v, str(k)))
            if not _empty(v):
                out[str(k)] = v
        return out
    if isinstance(value, list):
        return [normalized(v, key) for v in value]
    return value


def pod_spec(group: Mapping[str, Any]) -> Any:
    """A head or worker group's pod spec (empty when it has none)."""
    return (group.get("template") or {}).get("spec") or {}


def hashed_part(spec: Mapping[str, Any] | None) -> dict[str, Any]:
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
            pod_spec(group).pop(key, None)
    return normalized(spec)


def _label(item: Any, index: int) -> str:
    if isinstance(item, Mapping):
        return str(item.get("groupName") or item.get("name") or index)
    return str(index)


def diff_paths(want: Any, have: Any, path: str = "") -> list[str]:
    """Where two normalized specs differ, as readable paths (list items by name)."""
    if isinstance(want, Mapping) and isinstance(have, Mapping):
        paths: list[str] = []
        for key in sorted(set(want) | set(have)):
            paths += diff_paths(want.get(key), have.get(key), f"{path}.{key}".lstrip("."))
        return paths
    if isinstance(want, list) and isinstance(have, list) and len(want) == len(have):
        paths = []
        for i, (w, h) in enumerate(zip(want, have, strict=True)):
            paths += diff_paths(w, h, f"{path}[{_label(w, i)}]")
        return paths
    return [] if want == have else [path or "(all)"]

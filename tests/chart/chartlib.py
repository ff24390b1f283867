"""Helm rendering and schema helpers for the chart tests (no cluster needed).

helm comes from PATH or .venv/bin (``make tools`` installs it); the KubeRay v1.7.0 CRD
from ``tests/chart/kuberay-crds`` (its SOURCE.txt says where from), or from
``FINSERVE_KUBERAY_CRDS``;
the CRDs of the oldest KubeRay the chart supports (Chart.yaml) from
``FINSERVE_KUBERAY_MIN_CRDS``, else the operator's Go module (`go mod download`: the module
cache, or the Go module proxy once; `make cluster` builds that module).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft202012Validator

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "finserve"
CI_VALUES = {
    "default": None,
    "gpu": CHART / "ci" / "gpu-values.yaml",
    "production": CHART / "ci" / "production-values.yaml",
}
RAY_API = "ray.io/v1/RayService"
MONITORING_API = "monitoring.coreos.com/v1"
K8S_VERSION = os.environ.get("FINSERVE_K8S_VERSION", "1.35")  # kubectl v1.35 from `make tools`


def crds_dir() -> Path:
    """KubeRay v1.7.0 CRDs: FINSERVE_KUBERAY_CRDS, else the copy in the repository."""
    env = os.environ.get("FINSERVE_KUBERAY_CRDS")
    return Path(env) if env else Path(__file__).parent / "kuberay-crds"


def chart_annotation(key: str) -> str:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())["annotations"][key]


#: the oldest KubeRay operator the chart supports and is tested on (Chart.yaml)
KUBERAY_MIN = chart_annotation("finserve.io/kuberay-min-version")


def min_crds_dir() -> Path | None:
    """The CRDs of KubeRay ``KUBERAY_MIN``: FINSERVE_KUBERAY_MIN_CRDS, else
    ``config/crd/bases`` of the operator's Go module at that version, as `go mod download`
    finds it (from the module cache, or the Go module proxy); None without Go."""
    env = os.environ.get("FINSERVE_KUBERAY_MIN_CRDS")
    if env:
        return Path(env)
    go = shutil.which("go")
    if not go:
        return None
    done = subprocess.run(
        [go, "mod", "download", "-json", f"{KUBERAY_MODULE}@v{KUBERAY_MIN}"],
        capture_output=True, text=True, timeout=300, cwd=REPO / "tools" / "cluster" / "kuberay")
    if done.returncode != 0:
        pytest.fail(f"go mod download {KUBERAY_MODULE}@v{KUBERAY_MIN} failed: "
                    f"{done.stdout[-500:]} {done.stderr[-500:]}", pytrace=False)
    return Path(json.loads(done.stdout)["Dir"]) / "config" / "crd" / "bases"


#: the KubeRay operator's Go module; `make cluster` builds the version its go.mod pins
KUBERAY_MODULE = "github.com/ray-project/kuberay/ray-operator"


def cluster_kuberay_version() -> str:
    """The operator version `make cluster` builds and the e2e tier tests
    (tools/cluster/kuberay/go.mod)."""
    go_mod = (REPO / "tools" / "cluster" / "kuberay" / "go.mod").read_text()
    return re.search(rf"^\s*(?:require\s+)?{re.escape(KUBERAY_MODULE)}\s+v(\S+)", go_mod,
                     re.M).group(1)


@cache
def helm_binary() -> str:
    """helm from the virtual environment (`make tools`: the pinned v4), else PATH; fails
    (never skips) when absent."""
    venv_helm = Path(sys.executable).parent / "helm"
    for candidate in (venv_helm, REPO / ".venv" / "bin" / "helm", shutil.which("helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail(
        "helm not found on PATH or in .venv/bin: run `make tools` "
        "(python tools/install_k8s_tools.py) to install helm and kubectl",
        pytrace=False,
    )


class HelmError(Exception):
    """helm exited non-zero; the message is its stderr."""


@cache
def _helm(args: tuple[str, ...]) -> str:
    proc = subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, "KUBECONFIG": os.devnull, "HELM_NAMESPACE": "finserve-test"},
    )
    if proc.returncode:
        raise HelmError(proc.stderr.strip() or proc.stdout.strip())
    return proc.stdout


def helm(*args: str) -> str:
    """Run helm without a cluster (cached per argument list); return stdout."""
    return _helm(tuple(args))


def template_args(
    values: str | Path | None = None,
    *,
    extra_files: Iterable[Path] = (),
    sets: Iterable[str] = (),
    api_versions: Iterable[str] = (RAY_API,),
    release: str = "finserve",
    chart: Path = CHART,
    flags: Iterable[str] = (),
) -> list[str]:
    """``helm template`` arguments; ``flags`` are passed as they are (e.g. --is-upgrade)."""
    args = ["template", release, str(chart), "--kube-version", f"{K8S_VERSION}.0", *flags]
    path = CI_VALUES.get(values, values) if isinstance(values, str) else values
    for file in [path, *extra_files]:
        if file:
            args += ["-f", str(file)]
    for item in sets:
        args += ["--set", item]
    for api in api_versions:
        args += ["--api-versions", api]
    return args


def render(values: str | Path | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Rendered objects of ``helm template`` (values: a CI_VALUES name or a file)."""
    out = helm(*template_args(values, **kwargs))
    return [doc for doc in yaml.safe_load_all(out) if doc]


def render_error(values: str | Path | None = None, **kwargs: Any) -> str:
    """The error of a ``helm template`` that must fail."""
    try:
        helm(*template_args(values, **kwargs))
    except HelmError as exc:
        return str(exc)
    raise AssertionError("helm template succeeded but was expected to fail")


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The single object of ``kind``."""
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
    return found[0]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The object of ``kind`` called ``name``."""
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, rendered {len(found)}"
    return found[0]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels, matchExpressions) selects
    ``labels``; {} selects everything."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": labels.get(key) not in values,
              "Exists": key in labels,
              "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def kuberay_pod_labels(template_labels: dict[str, str], node_type: str, group: str,
                       cluster: str = "finserve-x7k2p") -> dict[str, str]:
    """The labels KubeRay gives a Ray pod (v1.6.2 controllers/ray/common/pod.go, labelPod):
    its own ray.io/* and app.kubernetes.io labels, overridden by the pod template's, except
    ray.io/node-type, ray.io/group and ray.io/cluster, which it always sets."""
    fixed = {"ray.io/node-type": node_type, "ray.io/group": group, "ray.io/cluster": cluster}
    own = {"ray.io/is-ray-node": "yes", "ray.io/identifier": f"{cluster}-{node_type}",
           "app.kubernetes.io/name": "kuberay", "app.kubernetes.io/created-by": "kuberay-operator"}
    return {**own, **template_labels, **fixed}


def kinds(objects: list[dict[str, Any]]) -> set[str]:
    return {o["kind"] for o in objects}


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, pod spec) of every pod the chart defines: Ray head, worker groups, test pod."""
    for obj in objects:
        if obj["kind"] == "RayService":
            cluster = obj["spec"]["rayClusterConfig"]
            yield "head", cluster["headGroupSpec"]["template"]["spec"]
            for group in cluster.get("workerGroupSpecs", []):
                yield f"worker {group['groupName']}", group["template"]["spec"]
        elif obj["kind"] == "Pod":
            yield f"pod {obj['metadata']['name']}", obj["spec"]


def containers(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, container) of every container, the autoscaler sidecar's options included."""
    for label, spec in pod_specs(objects):
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            yield f"{label}/{c['name']}", c
    for obj in objects:
        if obj["kind"] == "RayService":
            options = obj["spec"]["rayClusterConfig"].get("autoscalerOptions")
            if options is not None:
                yield "autoscaler sidecar", options


def strict_crd_schema(node: Any) -> Any:
    """The CRD schema with unknown fields rejected, as `kubectl apply` (strict field
    validation) does: objects that list properties get ``additionalProperties: false``
    unless they preserve unknown fields."""
    if isinstance(node, dict):
        node = {k: strict_crd_schema(v) for k, v in node.items()}
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [strict_crd_schema(v) for v in node]
    return node


@cache
def load_crd(crds: Path, kind_plural: str = "rayservices") -> dict[str, Any]:
    """KubeRay's CRD of ``kind_plural`` in the folder ``crds``: ``ray.io_<kind>.yaml``, or
    the same gzip-compressed (``.yaml.gz``)."""
    path = crds / f"ray.io_{kind_plural}.yaml"
    for candidate, read in ((path, Path.read_text),
                            (path.with_name(path.name + ".gz"),
                             lambda p: gzip.decompress(p.read_bytes()).decode())):
        if candidate.is_file():
            return yaml.load(read(candidate), Loader=getattr(yaml, "CSafeLoader",
                                                             yaml.SafeLoader))
    pytest.fail(f"KubeRay CRD {path} (or .gz) not found: set FINSERVE_KUBERAY_CRDS to the "
                "folder of ray.io_*.yaml", pytrace=False)


@cache
def crd_validator(kind_plural: str = "rayservices", version: str = "v1",
                  crds: Path | None = None) -> Draft202012Validator:
    """The strict schema of a KubeRay CRD from ``crds`` (default: ``crds_dir()``)."""
    crd = load_crd(crds or crds_dir(), kind_plural)
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    return Draft202012Validator(strict_crd_schema(schema["schema"]["openAPIV3Schema"]))


def validate_kubernetes(obj: dict[str, Any]) -> None:
    """Validate a core Kubernetes object against the Kubernetes schema, strictly."""
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def write_values(tmp_path: Path, values: dict[str, Any], name: str = "values.yaml") -> Path:
    """Write a values dict to a file under ``tmp_path``."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
         "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity ("8Gi", "512Mi", "1G", "1073741824") in bytes."""
    number, unit = re.fullmatch(r"([0-9.]+)([kMGT]i?)?", str(quantity)).groups()
    return int(float(number) * UNITS[unit or ""])


def install_notes(*args: str) -> str:
    """The NOTES helm install prints, rendered without a cluster (namespace banking)."""
    proc = subprocess.run(
        [helm_binary(), "install", "finserve", str(CHART), "--dry-run=client", "-n", "banking",
         "--set", "kuberay.skipCRDCheck=true", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, "KUBECONFIG": os.devnull},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("NOTES:", 1)[1]

"""Helm rendering and schema helpers for the chart tests (no cluster needed).

helm comes from PATH or .venv/bin (``make tools`` installs it); the KubeRay CRDs from
``../shared/third_party/kuberay/crds`` beside the repository, or ``FINSERVE_KUBERAY_CRDS``.
"""

from __future__ import annotations

import os
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
    """KubeRay v1.7.0 CRDs: FINSERVE_KUBERAY_CRDS, else shared/ beside the repository."""
    env = os.environ.get("FINSERVE_KUBERAY_CRDS")
    return Path(env) if env else REPO.parent / "shared" / "third_party" / "kuberay" / "crds"


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
) -> list[str]:
    args = ["template", release, str(CHART), "--kube-version", f"{K8S_VERSION}.0"]
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
def crd_validator(kind_plural: str = "rayservices", version: str = "v1") -> Draft202012Validator:
    path = crds_dir() / f"ray.io_{kind_plural}.yaml"
    if not path.is_file():
        pytest.fail(
            f"KubeRay CRD {path} not found: clone the repository with shared/ beside it or "
            "set FINSERVE_KUBERAY_CRDS to the folder of ray.io_*.yaml",
            pytrace=False,
        )
    crd = yaml.safe_load(path.read_text())
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

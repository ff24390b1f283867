"""The chart lints strictly and every rendered object passes its schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft202012Validator

from serving.config import ModelRouting, ModelSettings
from tests.chart.chartlib import (
    CHART,
    CI_VALUES,
    KUBERAY_MIN,
    MONITORING_API,
    RAY_API,
    REPO,
    cluster_kuberay_version,
    containers,
    crd_validator,
    crds_dir,
    helm,
    load_crd,
    min_crds_dir,
    named,
    one,
    render,
    render_error,
    validate_kubernetes,
    write_values,
)

pytestmark = pytest.mark.chart

CORE_KINDS = {
    "Secret", "Ingress", "NetworkPolicy", "PodDisruptionBudget", "Pod", "ServiceAccount",
    "PersistentVolumeClaim", "ConfigMap",
}

#: Values that switch on the RayService's optional parts: with them and the CI values files,
#: every field the chart can render is rendered.
OPTIONAL_PARTS = {
    "pvc-seeded": ["modelStore.type=pvc"],
    "ray-auth-secret": ["rayAuth.existingSecret=ray-token"],
    "ray-auth-off": ["rayAuth.enabled=false"],
}
ALL_RENDERS = [(name, path, []) for name, path in CI_VALUES.items()] + [
    (name, None, sets) for name, sets in OPTIONAL_PARTS.items()]


@pytest.mark.parametrize("values", list(CI_VALUES))
def test_chart_lints_strictly_with_each_values_file(values: str) -> None:
    args = ["lint", "--strict", str(CHART), "--set", "kuberay.skipCRDCheck=true"]
    if CI_VALUES[values]:
        args += ["-f", str(CI_VALUES[values])]
    out = helm(*args)
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out


@pytest.mark.parametrize("values", list(CI_VALUES))
def test_every_core_object_validates_against_the_kubernetes_schema(values: str) -> None:
    objects = render(values, api_versions=(RAY_API, MONITORING_API))
    core = [o for o in objects if o["kind"] in CORE_KINDS]
    assert {"NetworkPolicy", "PodDisruptionBudget", "Pod"} <= {o["kind"] for o in core}
    # the Prometheus Operator's kinds: their structure is asserted in test_drift_alerts.py
    unknown = {o["kind"] for o in objects} - CORE_KINDS - {"RayService", "PodMonitor",
                                                          "PrometheusRule"}
    assert not unknown, f"kinds without a schema check: {unknown}"
    for obj in core:
        validate_kubernetes(obj)


@pytest.mark.parametrize(("name", "values", "sets"), ALL_RENDERS, ids=[r[0] for r in ALL_RENDERS])
def test_rayservice_validates_against_the_kuberay_crd(
        name: str, values: Path | None, sets: list[str]) -> None:
    rayservice = one(render(values, sets=sets), "RayService")
    errors = sorted(crd_validator().iter_errors(rayservice), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


#: RayService fields KubeRay v1.7.0's CRD has and v1.6.2's lacks (the tops of the new
#: subtrees in a diff of the two CRDs' property paths; status left out). The chart supports
#: KubeRay >= 1.6.2, so it renders none of them. Checked against both CRDs where the v1.6.2
#: one is at hand (test_the_newer_field_list_is_the_difference_of_the_two_crds).
NEWER_THAN_MIN = {
    ".spec.suspend",
    ".spec.rayClusterConfig.autoscalerOptions.args",
    ".spec.rayClusterConfig.autoscalerOptions.command",
    ".spec.rayClusterConfig.gcsFaultToleranceOptions.backend",
    ".spec.rayClusterConfig.gcsFaultToleranceOptions.storage",
    ".spec.rayClusterConfig.headGroupSpec.ingressOptions",
    ".spec.rayClusterConfig.headGroupSpec.template.spec.schedulingGroup",
    ".spec.rayClusterConfig.historyServerOptions",
    ".spec.rayClusterConfig.networkPolicy",
    ".spec.rayClusterConfig.tlsOptions",
    ".spec.rayClusterConfig.workerGroupSpecs[].priority",
    ".spec.rayClusterConfig.workerGroupSpecs[].template.spec.schedulingGroup",
}


def object_paths(node: object, prefix: str = "") -> set[str]:
    """Field paths of a rendered object (list items as ``[]``)."""
    if isinstance(node, dict):
        return {p for k, v in node.items() for p in {f"{prefix}.{k}"} | object_paths(
            v, f"{prefix}.{k}")}
    if isinstance(node, list):
        return {p for v in node for p in object_paths(v, prefix + "[]")}
    return set()


def crd_paths(crds: Path) -> set[str]:
    """Property paths of the v1 schema of the RayService CRD in the folder ``crds``."""
    def walk(node: dict, prefix: str) -> set[str]:
        out = set()
        for key, sub in (node.get("properties") or {}).items():
            out |= {f"{prefix}.{key}"} | walk(sub, f"{prefix}.{key}")
        if isinstance(node.get("items"), dict):
            out |= walk(node["items"], prefix + "[]")
        return out
    crd = load_crd(crds)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return walk(version["schema"]["openAPIV3Schema"], "")


@pytest.mark.parametrize(("name", "values", "sets"), ALL_RENDERS, ids=[r[0] for r in ALL_RENDERS])
def test_the_rayservice_uses_no_field_newer_than_the_oldest_supported_kuberay(
        name: str, values: Path | None, sets: list[str]) -> None:
    used = object_paths(one(render(values, sets=sets), "RayService"))
    newer = {p for p in used if any(p == n or p.startswith((n + ".", n + "[]"))
                                    for n in NEWER_THAN_MIN)}
    assert not newer, f"fields KubeRay {KUBERAY_MIN} lacks: {sorted(newer)}"


def need_min_crds() -> Path:
    found = min_crds_dir()
    if found is None:
        pytest.skip(f"no KubeRay v{KUBERAY_MIN} CRDs here: set FINSERVE_KUBERAY_MIN_CRDS to "
                    f"its config/crd/bases, or `go mod download github.com/ray-project/kuberay/"
                    f"ray-operator@v{KUBERAY_MIN}` (the NEWER_THAN_MIN check still runs)")
    return found


@pytest.mark.parametrize(("name", "values", "sets"), ALL_RENDERS, ids=[r[0] for r in ALL_RENDERS])
def test_rayservice_validates_against_the_oldest_supported_kuberay_crd(
        name: str, values: Path | None, sets: list[str]) -> None:
    validator = crd_validator(crds=need_min_crds())
    rayservice = one(render(values, sets=sets), "RayService")
    errors = sorted(validator.iter_errors(rayservice), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_newer_field_list_is_the_difference_of_the_two_crds() -> None:
    old = crd_paths(need_min_crds())
    new = crd_paths(crds_dir())
    added = {p for p in new - old if p.startswith(".spec.")}
    tops = {p for p in added if not any(p.startswith((q + ".", q + "[]")) for q in added)}
    assert tops == NEWER_THAN_MIN


def test_the_strict_crd_schema_rejects_an_unknown_field() -> None:
    rayservice = one(render(), "RayService")
    rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParamz"] = {}
    assert not crd_validator().is_valid(rayservice)


def test_the_kubernetes_validation_rejects_an_unknown_field() -> None:
    pdb = named(render(), "PodDisruptionBudget", "finserve-head")
    pdb["spec"]["selectr"] = pdb["spec"].pop("selector")
    with pytest.raises(kubernetes_validate.ValidationError, match="'selectr' was unexpected"):
        validate_kubernetes(pdb)


def test_ray_pod_templates_validate_as_kubernetes_pod_specs() -> None:
    rayservice = one(render("gpu"), "RayService")
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    assert len(groups) == 3
    for group in groups:
        template = group["template"]
        validate_kubernetes(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ray", **template["metadata"]},
             "spec": template["spec"]}
        )


def test_podmonitor_scrapes_the_ray_metrics_port_when_prometheus_operator_exists() -> None:
    objects = render("production", api_versions=(RAY_API, MONITORING_API))
    monitor = one(objects, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    ray_labels = one(objects, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"][
        "template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= ray_labels.items()
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    # Ray's metrics, and HAProxy's own exporter for the ingress (production keeps HAProxy on)
    assert [e["port"] for e in endpoints] == ["metrics", "haproxy-metrics"]
    assert {(e["path"], e["interval"]) for e in endpoints} == {("/metrics", "15s")}
    for label, container in containers(objects):
        if label.startswith(("head", "worker")):
            ports = container["ports"]
            assert {"name": "metrics", "containerPort": 8080, "protocol": "TCP"} in ports, label
            assert {"name": "haproxy-metrics", "containerPort": 9101, "protocol": "TCP"} in ports


def test_podmonitor_is_skipped_without_the_monitoring_api() -> None:
    objects = render("production", api_versions=(RAY_API,))
    assert "PodMonitor" not in {o["kind"] for o in objects}


def test_values_schema_definitions_are_generated_from_the_models() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "gen_chart_schema.py"), "--check"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_generated_schema_keeps_routing_out_of_the_args_definitions() -> None:
    """app_* mirror AppArgs (the rendered args: no routing); routing_* mirror Routing (the
    gateway's user_config); a model in the values is app_ModelSettings plus ModelRouting."""
    defs = json.loads((CHART / "values.schema.json").read_text())["$defs"]
    routing_fields = set(ModelRouting.model_fields)
    assert set(defs["app_ModelSettings"]["properties"]) == set(ModelSettings.model_fields)
    assert not routing_fields & set(defs["app_ModelSettings"]["properties"])
    assert set(defs["routing_ModelRouting"]["properties"]) == routing_fields
    assert set(defs["values_Model"]["properties"]) == set(ModelSettings.model_fields) | \
        routing_fields
    for field in routing_fields:
        assert defs["values_Model"]["properties"][field] == {
            "$ref": f"#/$defs/routing_ModelRouting/properties/{field}"}
    assert defs["values_App"]["properties"]["models"]["items"] == {
        "$ref": "#/$defs/values_Model"}


@pytest.mark.parametrize("values", list(CI_VALUES))
def test_rendered_routing_validates_against_the_generated_routing_schema(values: str) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    validator = Draft202012Validator({"$defs": schema["$defs"],
                                      "$ref": "#/$defs/routing_Routing"})
    config = yaml.safe_load(one(render(values), "RayService")["spec"]["serveConfigV2"])
    (gateway,) = config["applications"][0]["deployments"]
    validator.validate(gateway["user_config"])
    assert not validator.is_valid({"models": {"fraud": {"versions": ["1"], "weights": {}}}})


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"ingress": {"enabeld": True}}, "'enabeld' not allowed"),
        ({"cpuWorker": {"maxReplica": 3}}, "'maxReplica' not allowed"),
        ({"cpuWorker": {"gpusPerPod": 1}}, "'gpusPerPod' not allowed"),
        ({"serve": {"app": {"models": [{"name": "fraud", "model": {"max_batch_sise": 8}}]}}},
         "'max_batch_sise' not allowed"),
        ({"serve": {"app": {"models": [{"name": "fraud", "versions": [2]}]}}}, "want string"),
        ({"serve": {"app": {"models": [{"name": "fraud", "traffic": {"1": "90"}}]}}},
         "want integer"),
        ({"serve": {"app": {"models": [{"name": "fraud", "shadows": "2"}]}}},
         "'shadows' not allowed"),
        ({"serve": {"app": {"versions": ["2"]}}}, "'versions' not allowed"),
        ({"serve": {"app": {"models": []}}}, "minItems"),
        ({"head": {"resources": {"limits": None}}}, "missing property 'limits'"),
        ({"modelStore": {"type": "nfs"}}, "/modelStore/type"),
    ],
    ids=["top-level", "worker", "gpu-only-key", "stage", "int-version", "string-weight",
         "routing-typo", "app-level-versions", "no-models", "no-limits", "store-type"],
)
def test_values_schema_rejects_typos_and_wrong_types(
    tmp_path: Path, values: dict, complaint: str
) -> None:
    error = render_error(write_values(tmp_path, values))
    assert "values don't meet the specifications of the schema" in error
    assert complaint in error


def test_the_oldest_supported_kuberay_is_the_one_the_cluster_tests_run() -> None:
    """Chart.yaml's stated minimum is what `make cluster` builds and `make e2e` proves."""
    assert cluster_kuberay_version() == KUBERAY_MIN

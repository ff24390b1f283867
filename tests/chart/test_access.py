"""Who may reach what: Ray's token auth, the scoped helm-test key and the helm test that uses
it, the NetworkPolicy's operator and Prometheus peers, and generated Secrets that an upgrade
keeps or refuses to replace."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.config import default_model_names
from serving.protocol.examples import protocol_bodies
from serving.security import ApiKey, KeyRing, Unauthenticated
from tests.chart.chartlib import (
    CHART,
    CI_VALUES,
    MONITORING_API,
    RAY_API,
    helm,
    helm_binary,
    install_notes,
    kuberay_pod_labels,
    named,
    one,
    render,
    render_error,
    selects,
    template_args,
    write_values,
)

pytestmark = pytest.mark.chart


def secret_data(objects: list[dict[str, Any]], name: str) -> dict[str, str]:
    return {k: base64.b64decode(v).decode()
            for k, v in named(objects, "Secret", name)["data"].items()}


def key_ring(objects: list[dict[str, Any]]) -> KeyRing:
    parsed = yaml.safe_load(secret_data(objects, "finserve-api-keys")["keys.yaml"])
    return KeyRing([ApiKey.model_validate(k) for k in parsed["keys"]])


#: a model of a task the chart has no request example for (a bank's own task in its image)
HOUSE_MODEL = {"name": "house", "task": "house-rules"}


def with_house_model(tmp_path: Path, *models: dict[str, Any]) -> Path:
    """Values serving ``models`` (default: the chart's own) and the house model."""
    chart_models = yaml.safe_load((CHART / "values.yaml").read_text())["serve"]["app"]["models"]
    listed = [*(models or chart_models), HOUSE_MODEL]
    return write_values(tmp_path, {"serve": {"app": {"models": listed}}}, "house.yaml")


# --- Ray's own auth -----------------------------------------------------------------------

def test_rays_dashboard_and_job_api_need_rays_token_by_default() -> None:
    """KubeRay (v1.6.2) makes a token Secret per RayCluster for authOptions.mode token and
    sets RAY_AUTH_MODE and RAY_AUTH_TOKEN in the Ray, autoscaler and wait-gcs-ready
    containers; Ray's dashboard (and its job API) then refuse a request without it."""
    cluster = one(render(), "RayService")["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token"}
    major, minor, _ = (int(x) for x in cluster["rayVersion"].split("."))
    assert (major, minor) >= (2, 52)  # KubeRay refuses token auth below Ray 2.52


def test_ray_auth_takes_a_given_token_secret_or_can_be_switched_off() -> None:
    given = one(render(sets=["rayAuth.existingSecret=ray-token"]), "RayService")
    assert given["spec"]["rayClusterConfig"]["authOptions"] == {
        "mode": "token", "secretName": "ray-token"}
    off = one(render(sets=["rayAuth.enabled=false"]), "RayService")
    assert off["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "disabled"}


def test_the_chart_itself_never_renders_rays_token() -> None:
    """KubeRay generates and keeps the token (a Secret it owns per RayCluster): no Helm
    render, lookup or GitOps sync can change it."""
    for values in CI_VALUES:
        for obj in render(values):
            if obj["kind"] == "Secret":
                assert "auth_token" not in obj.get("data", {}), obj["metadata"]["name"]


# --- the helm-test key --------------------------------------------------------------------

def test_the_generated_test_key_may_call_only_the_models_the_helm_test_infers() -> None:
    objects = render()
    plaintext = secret_data(objects, "finserve-api-keys")["test-api-key"]
    assert plaintext.startswith("fsk_helm-test_")
    ring = key_ring(objects)
    assert list(ring.keys) == ["helm-test"]
    key = ring.authenticate(f"Bearer {plaintext}")
    plan = helm_test_plan(objects)
    assert key.models == [c["model"] for c in plan["infer"]] == list(default_model_names())
    assert "*" not in key.models and not key.may_call("house")
    assert key.rate_per_s == 1 and key.burst == len(plan["infer"])  # one burst of inferences
    wrong = plaintext[:-1] + ("y" if plaintext[-1] == "x" else "x")  # one character off
    with pytest.raises(Unauthenticated):
        ring.authenticate(f"Bearer {wrong}")
    assert plaintext not in secret_data(objects, "finserve-api-keys")["keys.yaml"]


@pytest.mark.parametrize("values", list(CI_VALUES))
def test_no_rendered_key_may_call_every_model(values: str) -> None:
    objects = render(values)
    if any(o["kind"] == "Secret" and o["metadata"]["name"] == "finserve-api-keys"
           for o in objects):
        for key in key_ring(objects).keys.values():
            assert "*" not in key.models, key.id


def test_no_test_key_is_made_when_no_served_model_has_a_sample_request(tmp_path: Path) -> None:
    objects = render(with_house_model(tmp_path, {"name": "other", "task": "other-rules"}))
    data = secret_data(objects, "finserve-api-keys")
    assert "test-api-key" not in data
    assert yaml.safe_load(data["keys.yaml"]) == {"keys": []}
    plan = helm_test_plan(objects)
    assert plan["keyFile"] == "" and plan["infer"] == []
    assert "volumes" not in one(objects, "Pod")["spec"]


# --- the helm test ------------------------------------------------------------------------

def helm_test_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(objects, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    return pod


def helm_test_plan(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = helm_test_pod(objects)["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    return json.loads(env["FINSERVE_TEST_PLAN"])


def test_the_helm_test_runs_on_the_finserve_image_and_plans_its_checks() -> None:
    objects = render()
    pod = helm_test_pod(objects)
    (container,) = pod["spec"]["containers"]
    ray_image = one(objects, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"][
        "template"]["spec"]["containers"][0]["image"]
    assert container["image"] == ray_image  # no other image to pull
    assert container["command"] == ["python", "-c"]
    assert container["args"][0] == (CHART / "files" / "helm_test.py").read_text()
    plan = helm_test_plan(objects)
    assert plan["base"] == "http://finserve-serve-svc.finserve-test.svc:8000"
    assert plan["refused"] == "fraud" and plan["outOfScope"] == ""
    assert plan["keyFile"] == "/etc/finserve/test-key/api-key"
    # every default model is inferred, with its task's request example as a V2 body
    assert [c["model"] for c in plan["infer"]] == list(default_model_names())
    fraud = protocol_bodies("fraud")["v2"]["inputs"][0]
    assert json.loads(plan["infer"][0]["body"])["inputs"][0]["shape"] == fraud["shape"]
    (volume,) = pod["spec"]["volumes"]
    assert volume["secret"]["secretName"] == "finserve-api-keys"
    assert volume["secret"]["items"] == [{"key": "test-api-key", "path": "api-key"}]


def test_the_helm_test_key_may_not_call_a_model_it_cannot_infer(tmp_path: Path) -> None:
    """A model of a task the chart has no request example for is not inferred, and the
    generated key must be refused on it (403)."""
    plan = helm_test_plan(render(with_house_model(tmp_path)))
    assert plan["outOfScope"] == "house"
    assert [c["model"] for c in plan["infer"]] == list(default_model_names())


def test_helm_test_uses_the_given_test_key_secret_with_an_existing_key_file() -> None:
    objects = render("production")
    (volume,) = helm_test_pod(objects)["spec"]["volumes"]
    assert volume["secret"]["secretName"] == "finserve-helm-test-key"
    assert volume["secret"]["items"] == [{"key": "api-key", "path": "api-key"}]
    assert helm_test_plan(objects)["outOfScope"] == ""  # the given key's scope is the user's


def test_helm_test_without_a_test_key_checks_readiness_and_refusal_only(tmp_path: Path) -> None:
    values = {"apiKeys": {"existingSecret": "keys", "testKey": {"existingSecret": ""}}}
    objects = render(write_values(tmp_path, values))
    plan = helm_test_plan(objects)
    assert plan["keyFile"] == "" and plan["refused"] == "fraud"
    assert "volumes" not in helm_test_pod(objects)["spec"]


class FakeGateway(BaseHTTPRequestHandler):
    """Answers as FinServe's gateway does: open health, 401 without a key, 403 outside the
    key's models."""

    key: ApiKey
    plaintext: str
    open_door = False  # a broken gateway that answers without a key

    def log_message(self, *args: Any) -> None:
        pass

    def answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        if self.path == "/v2/health/ready":
            status = 200
        else:
            model = self.path.split("/")[3]
            auth = self.headers.get("authorization")
            if auth is None:
                status = 200 if self.open_door else 401
            elif auth != f"Bearer {self.plaintext}":
                status = 401
            else:
                status = 200 if self.key.may_call(model) else 403
        body = json.dumps({"status": status}).encode()
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = answer


@contextmanager
def fake_gateway(key: ApiKey, plaintext: str, open_door: bool) -> Iterator[str]:
    handler = type("Gateway", (FakeGateway,), {"key": key, "plaintext": plaintext,
                                               "open_door": open_door})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def run_helm_test(tmp_path: Path, open_door: bool = False) -> subprocess.CompletedProcess[str]:
    """The rendered test pod's command and plan, against a fake gateway that knows the
    rendered key file; the chart's models and the house model (403 for the test key)."""
    objects = render(with_house_model(tmp_path))
    plaintext = secret_data(objects, "finserve-api-keys")["test-api-key"]
    key = key_ring(objects).authenticate(f"Bearer {plaintext}")
    (tmp_path / "api-key").write_text(plaintext)
    (container,) = helm_test_pod(objects)["spec"]["containers"]
    with fake_gateway(key, plaintext, open_door) as base:
        plan = {**helm_test_plan(objects), "base": base, "keyFile": str(tmp_path / "api-key"),
                "patienceS": 2}
        return subprocess.run(
            [sys.executable, *container["command"][1:], container["args"][0]],
            env={**os.environ, "FINSERVE_TEST_PLAN": json.dumps(plan)},
            capture_output=True, text=True, timeout=60)


def test_the_helm_test_passes_against_a_gateway_that_knows_the_rendered_keys(
        tmp_path: Path) -> None:
    proc = run_helm_test(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "POST /v2/models/fraud/infer: 401" in out
    for model in default_model_names():
        assert f"POST /v2/models/{model}/infer: 200" in out
    assert "GET /v2/models/house/ready: 403" in out and "helm test: passed" in out


def test_the_helm_test_fails_when_a_call_without_a_key_is_answered(tmp_path: Path) -> None:
    proc = run_helm_test(tmp_path, open_door=True)
    assert proc.returncode == 1
    assert "FAIL POST /v2/models/fraud/infer: expected 401, got 200" in proc.stderr


# --- the NetworkPolicy's peers ------------------------------------------------------------

#: The KubeRay operator pod's labels per install method, v1.6.2 and v1.7.0 alike: the Helm
#: chart (helm-chart/kuberay-operator/templates/deployment.yaml with its default nameOverride
#: and componentOverride, release "kuberay-operator") and kustomize (ray-operator/config/
#: manager, the labels its kustomization.yaml sets).
OPERATOR_PODS = {
    "helm": {"app.kubernetes.io/name": "kuberay-operator",
             "app.kubernetes.io/instance": "kuberay-operator",
             "app.kubernetes.io/component": "kuberay-operator"},
    "kustomize": {"app.kubernetes.io/name": "kuberay",
                  "app.kubernetes.io/component": "kuberay-operator"},
}


def operator_rule(policy: dict[str, Any]) -> dict[str, Any]:
    (rule,) = [r for r in policy["ingress"] if {"port": 8265, "protocol": "TCP"} in
               r.get("ports", [])]
    return rule


def test_the_kuberay_operator_reaches_the_dashboard_however_it_was_installed() -> None:
    objects = render()
    (peer,) = operator_rule(one(objects, "NetworkPolicy")["spec"])["from"]
    assert peer["namespaceSelector"] == {}
    for method, labels in OPERATOR_PODS.items():
        assert selects(peer["podSelector"], labels), method
    # not a Ray pod (KubeRay names those app.kubernetes.io/name kuberay too) nor another app
    template = one(objects, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"][
        "template"]["metadata"]["labels"]
    assert not selects(peer["podSelector"], kuberay_pod_labels(template, "head", "headgroup"))
    assert not selects(peer["podSelector"], kuberay_pod_labels({}, "worker", "cpu"))
    assert not selects(peer["podSelector"], {"app.kubernetes.io/name": "kuberay-operator"})


def test_the_operators_namespace_can_be_narrowed(tmp_path: Path) -> None:
    narrowed = {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}}
    values = write_values(tmp_path, {"networkPolicy": {"operatorNamespaceSelector": narrowed}})
    (peer,) = operator_rule(one(render(values), "NetworkPolicy")["spec"])["from"]
    assert peer["namespaceSelector"] == narrowed


def test_prometheus_may_scrape_exactly_the_ports_the_podmonitor_scrapes() -> None:
    objects = render("production", api_versions=(RAY_API, MONITORING_API))
    policy = one(objects, "NetworkPolicy")["spec"]
    head = one(objects, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]
    ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0][
        "ports"]}
    scraped = {ports[e["port"]] for e in one(objects, "PodMonitor")["spec"][
        "podMetricsEndpoints"]}
    (rule,) = [r for r in policy["ingress"] if {"port": 8080, "protocol": "TCP"} in
               r.get("ports", [])]
    assert {p["port"] for p in rule["ports"]} == scraped == {8080, 9101}
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}]


def test_a_podmonitor_without_metrics_peers_is_refused_with_the_fix() -> None:
    error = render_error(sets=["metrics.podMonitor.enabled=true"],
                         api_versions=(RAY_API, MONITORING_API))
    assert "networkPolicy.metricsPeers is empty" in error
    assert "--set networkPolicy.metricsPeers[0].namespaceSelector.matchLabels." in error
    ok = render(sets=["metrics.podMonitor.enabled=true", "networkPolicy.enabled=false"],
                api_versions=(RAY_API, MONITORING_API))
    assert one(ok, "PodMonitor")["kind"] == "PodMonitor"


# --- generated Secrets --------------------------------------------------------------------

def test_an_upgrade_rendered_without_the_cluster_refuses_to_replace_generated_secrets() -> None:
    """helm template --is-upgrade (like helm upgrade --dry-run=client, helm diff, Argo CD)
    has no lookup: rather than a new random key, the render stops with the fix."""
    audit = render_error(sets=["apiKeys.testKey.enabled=false"], flags=["--is-upgrade"])
    assert "cannot read the Secret finserve-audit in namespace finserve-test" in audit
    assert "set audit.tokenKeySecret" in audit
    keys = render_error(sets=["audit.tokenKeySecret=audit-key", "audit.trailKeySecret=trail-key"],
                        flags=["--is-upgrade"])
    assert "cannot read the Secret finserve-api-keys" in keys
    assert "apiKeys.existingSecret and apiKeys.testKey.existingSecret" in keys


def test_the_production_path_depends_on_no_lookup_and_no_random_value() -> None:
    """With existing Secrets every render is the same, install or upgrade, with or without a
    cluster: what GitOps needs."""
    install = helm(*template_args("production"))
    upgrade = helm(*template_args("production", flags=["--is-upgrade"]))
    assert install == upgrade
    assert "Secret" not in {o["kind"] for o in render("production")}


def test_a_generated_key_file_is_new_on_each_render_without_the_cluster() -> None:
    """The hazard the notes and docs warn about (and the reason for existing Secrets)."""
    def render_once() -> str:
        proc = subprocess.run(
            [helm_binary(), *template_args(), "-s", "templates/secret-audit.yaml"],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "KUBECONFIG": os.devnull})
        assert proc.returncode == 0, proc.stderr
        assert "Generated by this render" in proc.stdout
        return yaml.safe_load(proc.stdout)["data"]["token-key"]

    assert render_once() != render_once()


def test_the_notes_say_what_was_generated_and_how_to_reach_rays_dashboard() -> None:
    text = install_notes()
    assert ("this render generated the helm-test key and the audit token key and the audit "
            "trail key") in text
    assert "audit.tokenKeySecret" in text
    assert "(the helm-test key: it may call only fraud, sentiment, credit" in text
    assert "port-forward svc/finserve-head-svc 8265:8265" in text
    assert "{.status.activeServiceStatus.rayClusterName}" in text and \
        "{.data.auth_token}" in text
    production = install_notes("-f", str(CI_VALUES["production"]))
    assert "generated" not in production

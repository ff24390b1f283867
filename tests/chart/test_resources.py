"""Pods are locked down and sized; Ingress, Secrets, model store, policies, helm test, NOTES."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.config import AppArgs
from serving.security import ApiKey, KeyRing, hash_secret
from tests.chart.chartlib import (
    CI_VALUES,
    containers,
    install_notes,
    named,
    one,
    pod_specs,
    render,
    render_error,
    write_values,
)

pytestmark = pytest.mark.chart

ALL_VALUES = list(CI_VALUES)


def ray_containers(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(label, c) for label, c in containers(objects) if label.startswith(("head", "worker"))]


def serve_args(values: str | None = None) -> AppArgs:
    config = yaml.safe_load(one(render(values), "RayService")["spec"]["serveConfigV2"])
    return AppArgs.model_validate(config["applications"][0]["args"])


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("values", ALL_VALUES)
def test_every_container_runs_non_root_without_privileges(values: str) -> None:
    found = list(containers(render(values)))
    assert len(found) >= 4  # head, cpu worker, autoscaler, test pod
    for label, container in found:
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 1000, label
        assert sc["allowPrivilegeEscalation"] is False, label
        assert sc["capabilities"]["drop"] == ["ALL"], label
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, label
        assert sc["readOnlyRootFilesystem"] is True, label
    for label, spec in pod_specs(render(values)):
        assert spec["securityContext"]["runAsNonRoot"] is True, label
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", label


@pytest.mark.parametrize("values", ALL_VALUES)
def test_every_container_has_cpu_and_memory_requests_and_limits(values: str) -> None:
    for label, container in containers(render(values)):
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), f"{label} {kind}"


def test_ingress_routes_to_the_kuberay_serve_service_on_port_8000() -> None:
    ingress = named(render("production"), "Ingress", "finserve")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert paths and all(
        p["backend"]["service"] == {"name": "finserve-serve-svc", "port": {"number": 8000}}
        for p in paths
    )
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt"


def test_production_values_render_tls_for_the_ingress_host() -> None:
    spec = named(render("production"), "Ingress", "finserve")["spec"]
    assert spec["tls"] == [{"hosts": ["finserve.bank.example.com"], "secretName": "finserve-tls"}]
    assert spec["rules"][0]["host"] == "finserve.bank.example.com"


def test_default_values_render_no_ingress() -> None:
    assert "Ingress" not in {o["kind"] for o in render()}


def secret_named(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == name)


def key_file(objects: list[dict[str, Any]]) -> KeyRing:
    data = secret_named(objects, "finserve-api-keys")["data"]
    parsed = yaml.safe_load(base64.b64decode(data["keys.yaml"]))
    return KeyRing([ApiKey.model_validate(k) for k in parsed["keys"]])


def test_ray_pods_mount_only_the_hashed_key_file_and_require_auth() -> None:
    objects = render()
    for label, spec in pod_specs(objects):
        if label.startswith("pod "):
            continue
        volumes = {v["name"]: v for v in spec["volumes"]}
        secret = volumes["api-keys"]["secret"]
        assert secret["secretName"] == "finserve-api-keys", label
        assert secret["items"] == [{"key": "keys.yaml", "path": "keys.yaml"}], label
    for label, container in ray_containers(objects):
        env = env_of(container)
        assert env["FINSERVE_REQUIRE_AUTH"] == "true", label
        assert env["FINSERVE_API_KEYS_FILE"] == "/etc/finserve/api-keys/keys.yaml", label
        mount = next(m for m in container["volumeMounts"] if m["name"] == "api-keys")
        assert mount == {"name": "api-keys", "mountPath": "/etc/finserve/api-keys",
                         "readOnly": True}


def test_api_key_entries_from_values_join_the_key_file(tmp_path: Path) -> None:
    secret = "Zq8vT3mW9pL2xR7cK4nB6yH1dF5gJ0sA"
    entry = ApiKey(id="teller-app", sha256=hash_secret(secret), models=["fraud"], rate_per_s=50)
    plaintext = f"fsk_teller-app_{secret}"
    values = {"apiKeys": {"keys": [entry.model_dump(exclude_none=True)]}}
    ring = key_file(render(write_values(tmp_path, values)))
    assert set(ring.keys) == {"teller-app", "helm-test"}
    key = ring.authenticate(f"Bearer {plaintext}")
    assert key.id == "teller-app" and key.may_call("fraud") and not key.may_call("credit")


def test_the_values_schema_refuses_plaintext_or_malformed_key_entries(tmp_path: Path) -> None:
    bad = {"apiKeys": {"keys": [{"id": "teller-app", "sha256": "not-a-hash", "key": "fsk_x"}]}}
    error = render_error(write_values(tmp_path, bad))
    assert "/apiKeys/keys/0" in error and "'key' not allowed" in error
    assert "'not-a-hash' does not match pattern '^[0-9a-f]{64}$'" in error


def test_an_existing_key_file_secret_is_used_and_none_is_created() -> None:
    objects = render("production")
    assert "finserve-api-keys" not in {o["metadata"]["name"] for o in objects
                                       if o["kind"] == "Secret"}
    for label, spec in pod_specs(objects):
        if label.startswith("pod "):
            continue
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["api-keys"]["secret"]["secretName"] == "finserve-api-keys", label


def test_every_ray_container_shares_the_audit_keys() -> None:
    objects = render()
    secret = secret_named(objects, "finserve-audit")["data"]
    for name, var in (("token-key", "FINSERVE_TOKEN_KEY"), ("trail-key", "FINSERVE_TRAIL_KEY")):
        assert len(base64.b64decode(secret[name])) == 48
        for label, container in ray_containers(objects):
            ref = env_of(container)[var]["secretKeyRef"]
            assert ref == {"name": "finserve-audit", "key": name}, label
    for _, container in ray_containers(render("production")):
        env = env_of(container)
        assert env["FINSERVE_TOKEN_KEY"]["secretKeyRef"]["name"] == "finserve-audit-token-key"
        assert env["FINSERVE_TRAIL_KEY"]["secretKeyRef"]["name"] == "finserve-audit-trail-key"


def test_the_decision_trail_is_durable_by_default_on_a_claim_every_ray_pod_mounts() -> None:
    objects = render()
    audit = serve_args().audit
    assert audit.location == "/var/lib/finserve/audit/trail" and audit.keys_dir is None
    claim = next(o for o in objects if o["kind"] == "PersistentVolumeClaim"
                 and o["metadata"]["name"] == "finserve-audit")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for label, spec in pod_specs(objects):
        if label.startswith("pod "):
            continue
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["audit"]["persistentVolumeClaim"]["claimName"] == "finserve-audit"
    for label, container in ray_containers(objects):
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["audit"]["mountPath"] == "/var/lib/finserve/audit", label
        assert not mounts["audit"].get("readOnly"), label


def test_a_database_trail_takes_its_url_from_a_secret_never_from_the_config() -> None:
    objects = render("production")
    audit = serve_args("production").audit
    assert audit.location == "env:FINSERVE_AUDIT_URL" and audit.keys_dir is None
    assert audit.checkpoint_location == "s3://bank-audit-checkpoints/finserve"
    assert "PersistentVolumeClaim" not in {o["kind"] for o in objects
                                           if o["metadata"]["name"] == "finserve-audit"}
    for label, container in ray_containers(objects):
        ref = env_of(container)["FINSERVE_AUDIT_URL"]["secretKeyRef"]
        assert ref == {"name": "finserve-audit-db", "key": "url"}, label


def test_s3_credentials_come_from_the_credentials_secret() -> None:
    for label, container in ray_containers(render("production")):
        env = env_of(container)
        assert env["FINSERVE_STORE"] == "s3://bank-models/finserve", label
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
            ref = env[var]["secretKeyRef"]
            assert ref["name"] == "finserve-model-store" and ref["key"] == var, label
        assert env["AWS_ENDPOINT_URL"]["secretKeyRef"]["optional"] is True


def test_an_existing_claim_is_mounted_and_none_is_created(tmp_path: Path) -> None:
    values = {"modelStore": {"type": "pvc", "pvc": {"existingClaim": "models-nfs"}},
              "audit": {"pvc": {"existingClaim": "trail-nfs"}}}
    objects = render(write_values(tmp_path, values))
    assert "PersistentVolumeClaim" not in {o["kind"] for o in objects}
    for label, spec in pod_specs(objects):
        if label.startswith("pod "):
            continue
        claims = [v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]
                  if "persistentVolumeClaim" in v]
        assert claims == ["trail-nfs", "models-nfs"], label


def test_network_policy_opens_serve_only_to_listed_peers_and_the_helm_test() -> None:
    policy = one(render("production"), "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "ray"
    serve_rules = [r for r in policy["ingress"] if r.get("ports") == [
        {"port": 8000, "protocol": "TCP"}, {"port": 9000, "protocol": "TCP"}]]
    (serve,) = serve_rules
    peers = serve["from"]
    assert {"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "ingress-nginx"}}} in peers
    assert any(p.get("podSelector", {}).get("matchLabels", {}).get(
        "app.kubernetes.io/component") == "test" for p in peers)


def test_default_network_policy_leaves_serve_open_to_all() -> None:
    policy = one(render(), "NetworkPolicy")["spec"]
    serve = next(r for r in policy["ingress"] if r.get("ports") == [
        {"port": 8000, "protocol": "TCP"}, {"port": 9000, "protocol": "TCP"}])
    assert "from" not in serve


def test_notes_show_the_port_forward_and_a_first_request() -> None:
    text = install_notes()
    assert "kubectl -n banking port-forward svc/finserve-serve-svc 8000:8000" in text
    assert "curl -s $FINSERVE_URL/v2/health/ready" in text
    assert "$FINSERVE_URL/v2/models/fraud/infer" in text
    assert "kubectl -n banking get secret finserve-api-keys -o jsonpath='{.data.test-api-key}'" \
        in text
    assert "helm test finserve --namespace banking" in text


def test_notes_use_the_ingress_host_over_https_in_production() -> None:
    text = install_notes("-f", str(CI_VALUES["production"]))
    assert "export FINSERVE_URL=https://finserve.bank.example.com" in text
    assert "port-forward svc/finserve-serve-svc" not in text



def test_the_grafana_dashboard_ships_as_a_configmap_over_finserve_metrics():
    import json

    from tests.chart.chartlib import render

    # the one ConfigMap for Grafana's sidecar (the HAProxy launcher is another ConfigMap)
    (dashboard,) = [o for o in render() if o["kind"] == "ConfigMap"
                    and "finserve.json" in o.get("data", {})]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(dashboard["data"]["finserve.json"])
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p["targets"])
    for metric in ("finserve_requests", "finserve_stage_latency_ms", "finserve_batch_size",
                   "finserve_decisions", "finserve_shadow_answers", "finserve_psi"):
        assert metric in exprs
    drift = [p for p in board["panels"] if "ray_finserve_psi" in p["targets"][0]["expr"]]
    assert {p["type"] for p in drift} == {"timeseries", "bargauge"}
    for panel in drift:  # coloured by band: watch above 0.1, act above 0.25
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert [s["value"] for s in steps] == [None, 0.1, 0.25]
        assert "feature" in panel["targets"][0]["legendFormat"]

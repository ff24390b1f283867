"""The Open Inference Protocol over gRPC on the chart: the Serve config's grpc_options as
`finserve serve` has them, the port on every Ray container and in KubeRay's Serve Service,
the NetworkPolicy, and an Ingress of its own for ingress-nginx's gRPC backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments.deploy import grpc_options
from tests.chart.chartlib import (
    CI_VALUES,
    RAY_API,
    containers,
    install_notes,
    named,
    one,
    render,
    render_error,
    validate_kubernetes,
    write_values,
)

pytestmark = pytest.mark.chart


def serve_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(one(objects, "RayService")["spec"]["serveConfigV2"])


def ray_ports(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return {label: c["ports"] for label, c in containers(objects)
            if label.startswith(("head", "worker"))}


@pytest.mark.parametrize("values", list(CI_VALUES))
def test_grpc_is_served_on_9000_with_finserves_servicer_by_default(values: str) -> None:
    objects = render(values)
    assert serve_config(objects)["grpc_options"] == grpc_options(9000)
    for label, ports in ray_ports(objects).items():
        # a `serve-*` name: KubeRay's <name>-serve-svc carries it beside `serve`
        assert {"name": "serve-grpc", "containerPort": 9000, "protocol": "TCP"} in ports, label


def test_grpc_can_move_or_be_switched_off(tmp_path: Path) -> None:
    moved = render(sets=["serve.grpc.port=9443"])
    assert serve_config(moved)["grpc_options"] == grpc_options(9443)
    assert all({"name": "serve-grpc", "containerPort": 9443, "protocol": "TCP"} in ports
               for ports in ray_ports(moved).values())
    off = render(sets=["serve.grpc.enabled=false"])
    assert "grpc_options" not in serve_config(off)
    assert not any(p["name"] == "serve-grpc" for ports in ray_ports(off).values()
                   for p in ports)
    rule = serve_rule(off)
    assert rule["ports"] == [{"port": 8000, "protocol": "TCP"}]


def serve_rule(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The NetworkPolicy rule that lets clients reach Serve (port 8000, no operator)."""
    policy = one(objects, "NetworkPolicy")["spec"]
    return next(r for r in policy["ingress"] if {"port": 8000, "protocol": "TCP"} in r.get(
        "ports", []) and {"port": 8265, "protocol": "TCP"} not in r["ports"])


def test_the_network_policy_opens_grpc_to_whom_it_opens_http() -> None:
    for values in (None, "production"):
        rule = serve_rule(render(values))
        assert rule["ports"] == [{"port": 8000, "protocol": "TCP"},
                                 {"port": 9000, "protocol": "TCP"}]
    peers = serve_rule(render("production"))["from"]
    assert {"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "ingress-nginx"}}} in peers


def test_production_puts_a_grpc_ingress_with_tls_before_the_grpc_port() -> None:
    objects = render("production")
    http, grpc = named(objects, "Ingress", "finserve"), named(objects, "Ingress", "finserve-grpc")
    assert "backend-protocol" not in str(http["metadata"]["annotations"])
    assert grpc["metadata"]["annotations"][
        "nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    spec = grpc["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [{"hosts": ["grpc.finserve.bank.example.com"],
                            "secretName": "finserve-grpc-tls"}]
    (rule,) = spec["rules"]
    assert rule["host"] == "grpc.finserve.bank.example.com"
    assert [p["backend"]["service"] for p in rule["http"]["paths"]] == [
        {"name": "finserve-serve-svc", "port": {"number": 9000}}]
    validate_kubernetes(grpc)


def test_the_grpc_ingress_is_off_by_default_and_its_annotation_is_ingress_nginxs() -> None:
    assert "finserve-grpc" not in {o["metadata"]["name"] for o in render()
                                   if o["kind"] == "Ingress"}
    grpc = named(render(sets=["ingress.grpc.enabled=true"]), "Ingress", "finserve-grpc")
    assert grpc["metadata"]["annotations"] == {
        "nginx.ingress.kubernetes.io/backend-protocol": "GRPC"}
    validate_kubernetes(grpc)


@pytest.mark.parametrize(("values", "message"), [
    ({"ingress": {"grpc": {"enabled": True}}, "serve": {"grpc": {"enabled": False}}},
     "ingress.grpc.enabled is true but serve.grpc.enabled is false"),
    ({"ingress": {"grpc": {"enabled": True, "hosts": []}}},
     "ingress.grpc.enabled is true but ingress.grpc.hosts is empty"),
    ({"ingress": {"grpc": {"enabled": True, "tls": [
        {"secretName": "t", "hosts": ["other.example.com"]}]}}},
     'ingress.grpc.tls host "other.example.com" is not one of ingress.grpc.hosts'),
])
def test_grpc_ingress_mistakes_fail_with_a_fix(tmp_path: Path, values: dict[str, Any],
                                              message: str) -> None:
    error = render_error(write_values(tmp_path, values), api_versions=(RAY_API,))
    assert message in error


def test_the_values_schema_refuses_a_grpc_typo() -> None:
    error = render_error(sets=["serve.grpc.prot=9001"])
    assert "prot" in error


def test_the_notes_show_where_grpc_answers() -> None:
    text = install_notes()
    assert "port-forward svc/finserve-serve-svc 8000:8000 9000:9000" in text
    assert "export FINSERVE_GRPC=127.0.0.1:9000" in text
    production = install_notes("-f", str(CI_VALUES["production"]))
    assert "export FINSERVE_GRPC=grpc.finserve.bank.example.com:443" in production
    assert "ssl=True" in production

"""The chart refuses values it cannot serve, and says how to fix them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from serving.config import ModelRouting
from tests.chart.chartlib import KUBERAY_MIN, RAY_API, one, render, render_error, write_values

pytestmark = pytest.mark.chart


def test_missing_kuberay_crds_fail_with_the_operator_install_command() -> None:
    error = render_error(api_versions=())
    assert "KubeRay CRDs are missing" in error
    assert f"helm install kuberay-operator kuberay/kuberay-operator --version {KUBERAY_MIN}" in \
        error
    assert f"(KubeRay operator >= {KUBERAY_MIN} " in error
    assert "--api-versions ray.io/v1/RayService" in error


def test_skip_crd_check_renders_without_the_ray_api() -> None:
    objects = render(sets=["kuberay.skipCRDCheck=true"], api_versions=())
    assert one(objects, "RayService")["apiVersion"] == "ray.io/v1"


CROSS_FIELD = {
    "gpu-serving-without-gpu-workers": (
        {"serve": {"gpu": {"enabled": True}}},
        "Set gpuWorker.enabled=true",
    ),
    "model-gpus-without-gpu-workers": (
        {"serve": {"app": {"models": [{"name": "fraud", "model": {"num_gpus": 0.5}}]}}},
        "serve.app.models[fraud].model.num_gpus is 0.5 but gpuWorker.enabled is false",
    ),
    "traffic-not-100": (
        {"serve": {"app": {"models": [{"name": "fraud", "traffic": {"1": 90, "2": 5}}]}}},
        "serve.app.models[fraud].traffic weights add up to 95, not 100",
    ),
    "negative-traffic-weight": (
        {"serve": {"app": {"models": [{"name": "fraud", "traffic": {"1": 110, "2": -10}}]}}},
        "serve.app.models[fraud].traffic[2] is -10: weights must be 0 or more",
    ),
    "no-versions": (
        {"serve": {"app": {"models": [{"name": "fraud", "versions": []}]}}},
        "serve.app.models[fraud].versions is empty",
    ),
    "repeated-version": (
        {"serve": {"app": {"models": [{"name": "fraud", "versions": ["2", "1", "2"]}]}}},
        "serve.app.models[fraud].versions [2 1 2] lists a version twice",
    ),
    "ingress-without-hosts": (
        {"ingress": {"enabled": True, "hosts": []}},
        "ingress.hosts is empty: list at least one host",
    ),
    "tls-without-hosts": (
        {"ingress": {"enabled": True, "tls": [{"secretName": "finserve-tls"}]}},
        'ingress.tls entry with secretName "finserve-tls" has no hosts',
    ),
    "tls-host-not-routed": (
        {"ingress": {"enabled": True, "tls": [{"secretName": "t", "hosts": ["other.example"]}]}},
        'ingress.tls host "other.example" is not one of ingress.hosts',
    ),
    "s3-without-uri": (
        {"modelStore": {"type": "s3"}},
        "set it to the store root, e.g. s3://",
    ),
    "keys-and-existing-secret": (
        {"apiKeys": {"keys": [{"id": "a", "sha256": "0" * 64}], "existingSecret": "keys"}},
        "keep the entries in the existing Secret's key file and remove apiKeys.keys",
    ),
    "key-id-of-the-test-key": (
        {"apiKeys": {"keys": [{"id": "helm-test", "sha256": "0" * 64}]}},
        "apiKeys.keys has an entry with id helm-test",
    ),
    "cpu-min-above-max": (
        {"cpuWorker": {"minReplicas": 5, "maxReplicas": 2}},
        "cpuWorker.minReplicas (5) exceeds cpuWorker.maxReplicas (2)",
    ),
    "gpu-min-above-max": (
        {"gpuWorker": {"enabled": True, "minReplicas": 3, "maxReplicas": 1}},
        "gpuWorker.minReplicas (3) exceeds gpuWorker.maxReplicas (1)",
    ),
    "ray-auth-on-an-old-ray": (
        {"rayVersion": "2.51.1"},
        "rayAuth.enabled needs Ray 2.52.0 or newer",
    ),
    "podmonitor-behind-the-policy-without-peers": (
        {"metrics": {"podMonitor": {"enabled": True}}},
        "networkPolicy.metricsPeers is empty: the NetworkPolicy would block Prometheus",
    ),
    "name-starting-with-a-digit": (
        {"fullnameOverride": "1finserve"},
        "must start with a letter",
    ),
}


@pytest.mark.parametrize("case", list(CROSS_FIELD))
def test_cross_field_rules_fail_with_a_fix(tmp_path: Path, case: str) -> None:
    values, message = CROSS_FIELD[case]
    error = render_error(write_values(tmp_path, values), api_versions=(RAY_API,))
    assert "execution error" in error
    assert message in error


@pytest.mark.parametrize("case", ["gpu-serving-without-gpu-workers", "tls-without-hosts"])
def test_the_fixed_values_render(tmp_path: Path, case: str) -> None:
    fixes: dict[str, dict[str, Any]] = {
        "gpu-serving-without-gpu-workers": {"serve": {"gpu": {"enabled": True}},
                                            "gpuWorker": {"enabled": True}},
        "tls-without-hosts": {"ingress": {"enabled": True, "tls": [
            {"secretName": "finserve-tls", "hosts": ["finserve.local"]}]}},
    }
    objects = render(write_values(tmp_path, fixes[case]))
    assert one(objects, "RayService")["kind"] == "RayService"


@pytest.mark.parametrize(
    "case", ["traffic-not-100", "negative-traffic-weight", "no-versions", "repeated-version"])
def test_routing_the_chart_refuses_is_routing_the_gateway_would_refuse(case: str) -> None:
    (model,) = CROSS_FIELD[case][0]["serve"]["app"]["models"]
    routing = {k: v for k, v in model.items() if k in ModelRouting.model_fields}
    with pytest.raises(ValidationError):
        ModelRouting.model_validate(routing)


def test_the_chart_refuses_to_run_without_api_keys():
    from tests.chart.chartlib import render_error

    assert "always requires API keys" in render_error(sets=["apiKeys.requireAuth=false"])

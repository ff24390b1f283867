"""The Ray pods' ingress: the slow-client limits `finserve serve` sets (one source,
deployments.deploy.IngressTimeouts), the HAProxy launcher that applies them, and the API
key file mounted so that a Secret update reaches the running gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments.deploy import IngressTimeouts, haproxy_launcher_script
from tests.chart.chartlib import CHART, containers, named, pod_specs, render, write_values

pytestmark = pytest.mark.chart

RAY = ("head", "worker")


def ray_containers(values: Path | None = None) -> list[dict[str, Any]]:
    return [c for label, c in containers(render(values)) if label.startswith(RAY)
            and c["name"].startswith("ray-")]


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_the_charts_default_limits_are_finserve_serves() -> None:
    chart = yaml.safe_load((CHART / "values.yaml").read_text())["serve"]["ingressTimeouts"]
    limits = IngressTimeouts()
    assert chart == {"requestS": limits.request_s, "clientS": limits.client_s,
                     "keepAliveS": limits.keep_alive_s}
    for container in ray_containers():
        assert limits.env().items() <= env(container).items()


def test_haproxy_is_started_through_the_launcher_from_the_charts_configmap() -> None:
    objects = render()
    config_map = named(objects, "ConfigMap", "finserve-haproxy")
    assert config_map["data"]["haproxy"] == haproxy_launcher_script("python")
    for label, spec in pod_specs(objects):
        if not label.startswith(RAY):
            continue
        (volume,) = [v for v in spec["volumes"] if v["name"] == "haproxy-launcher"]
        assert volume["configMap"] == {"name": "finserve-haproxy", "defaultMode": 0o555}
        for container in spec["containers"]:
            binary = env(container)["RAY_SERVE_HAPROXY_BINARY_PATH"]
            (mount,) = [m for m in container["volumeMounts"] if m["name"] == "haproxy-launcher"]
            assert binary == f"{mount['mountPath']}/haproxy" and mount["readOnly"] is True


def test_values_override_the_limits_and_the_python_proxy_keeps_the_body_deadline(
        tmp_path: Path) -> None:
    limits = {"requestS": 5, "clientS": 20, "keepAliveS": 8}
    custom = ray_containers(write_values(tmp_path, {"serve": {"ingressTimeouts": limits}}))
    assert IngressTimeouts.from_env(env(custom[0])) == IngressTimeouts(5, 20, 8)
    python = write_values(tmp_path, {"serve": {"haproxy": False}}, "python.yaml")
    for container in ray_containers(python):
        assert env(container)["FINSERVE_INGRESS_REQUEST_TIMEOUT_S"] == "10"
        assert "RAY_SERVE_HAPROXY_BINARY_PATH" not in env(container)
    assert not [o for o in render(python) if o["kind"] == "ConfigMap"
                and o["metadata"]["name"].endswith("-haproxy")]


def test_the_key_file_is_mounted_as_a_folder_so_secret_updates_reach_the_gateway() -> None:
    """A subPath mount never sees a Secret update; a folder mount does (kubelet swaps its
    ``..data`` link), and the gateway re-reads the file when it changes."""
    for label, spec in pod_specs(render()):
        if not label.startswith(RAY):
            continue
        (volume,) = [v for v in spec["volumes"] if v["name"] == "api-keys"]
        for container in spec["containers"]:
            (mount,) = [m for m in container["volumeMounts"] if m["name"] == "api-keys"]
            assert "subPath" not in mount and "subPathExpr" not in mount
            key_file = env(container)["FINSERVE_API_KEYS_FILE"]
            assert key_file == f"{mount['mountPath']}/{volume['secret']['items'][0]['path']}"

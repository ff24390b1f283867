"""The RayService: Ray cluster shape, autoscaling, GPUs and the Serve config it carries."""

from __future__ import annotations

import copy
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments.config import AppArgs
from tests.chart.chartlib import CHART, CI_VALUES, REPO, containers, one, render, write_values

pytestmark = pytest.mark.chart

DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())


def rayservice(values: str | Path | None = None, **kwargs: Any) -> dict[str, Any]:
    return one(render(values, **kwargs), "RayService")


def cluster(values: str | Path | None = None, **kwargs: Any) -> dict[str, Any]:
    return rayservice(values, **kwargs)["spec"]["rayClusterConfig"]


def groups(values: str | Path | None = None) -> dict[str, dict[str, Any]]:
    return {g["groupName"]: g for g in cluster(values)["workerGroupSpecs"]}


def serve_config(values: str | Path | None = None, **kwargs: Any) -> dict[str, Any]:
    return yaml.safe_load(rayservice(values, **kwargs)["spec"]["serveConfigV2"])


def app_args(values: str | Path | None = None, **kwargs: Any) -> AppArgs:
    return AppArgs.model_validate(serve_config(values, **kwargs)["applications"][0]["args"])


def test_head_runs_no_model_replicas_even_if_values_ask_for_cpus(tmp_path: Path) -> None:
    assert cluster()["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    override = write_values(tmp_path, {"head": {"rayStartParams": {"num-cpus": "8"}}})
    assert cluster(override)["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_in_tree_autoscaling_is_on_with_options_from_values() -> None:
    spec = cluster("production")
    assert spec["enableInTreeAutoscaling"] is True
    options = spec["autoscalerOptions"]
    assert options["idleTimeoutSeconds"] == 300
    assert options["upscalingMode"] == "Default"
    assert options["resources"]["limits"]["memory"] == "512Mi"


def test_production_values_bound_the_cpu_worker_group() -> None:
    cpu = groups("production")["cpu"]
    assert (cpu["minReplicas"], cpu["replicas"], cpu["maxReplicas"]) == (2, 2, 10)


def test_gpu_values_add_a_gpu_group_that_scales_from_zero_on_gpu_nodes() -> None:
    gpu = groups("gpu")["gpu"]
    assert gpu["minReplicas"] == 0
    assert gpu["maxReplicas"] >= 1
    pod = gpu["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"]
    assert {"name": "TF_FORCE_GPU_ALLOW_GROWTH", "value": "true"} in container["env"]
    assert container["image"].endswith(":0.1.0-gpu")


def test_default_values_render_no_gpu_group_and_no_gpus() -> None:
    assert set(groups()) == {"cpu"}
    for model in app_args().models:
        assert model.model.num_gpus == 0


def test_gpu_serving_gives_the_model_stage_a_fractional_gpu() -> None:
    for model in app_args("gpu").models:
        assert model.model.num_gpus == 0.25, model.name
        assert model.preprocess.num_gpus == 0 and model.postprocess.num_gpus == 0
        options = model.model.deployment_options(f"{model.name}-model")
        assert options["ray_actor_options"]["num_gpus"] == 0.25


def test_a_model_that_sets_its_own_gpus_keeps_them_under_gpu_serving(tmp_path: Path) -> None:
    values = yaml.safe_load(CI_VALUES["gpu"].read_text())
    values["serve"]["app"]["models"][1]["model"]["num_gpus"] = 0.5
    args = app_args(CI_VALUES["gpu"], extra_files=[write_values(tmp_path, values)])
    assert [m.model.num_gpus for m in args.models] == [0.25, 0.5]


def test_every_ray_container_exposes_the_serve_port_8000() -> None:
    for label, container in containers(render("gpu")):
        if label.startswith(("head", "worker")):
            assert {"name": "serve", "containerPort": 8000} in container["ports"], label


def test_blue_green_upgrades_and_a_ray_version_that_matches_the_installed_ray() -> None:
    spec = rayservice()["spec"]
    assert spec["upgradeStrategy"] == {"type": "NewCluster"}
    assert spec["rayClusterConfig"]["rayVersion"] == metadata.version("ray")


@pytest.mark.parametrize("values", list(CI_VALUES))
def test_serve_config_is_the_finserve_application_and_its_args_validate(values: str) -> None:
    config = serve_config(values)
    (app,) = config["applications"]
    assert (app["name"], app["route_prefix"], app["import_path"]) == (
        "finserve", "/", "deployments.app:build_app")
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    args = AppArgs.model_validate(app["args"])
    values_file = CI_VALUES[values] or CHART / "values.yaml"
    listed = yaml.safe_load(values_file.read_text())["serve"]["app"]["models"]
    assert [m.name for m in args.models] == [m["name"] for m in listed]


def test_store_uri_follows_the_model_store(tmp_path: Path) -> None:
    assert app_args().store_uri == DEFAULTS["modelStore"]["image"]["path"]
    assert app_args("production").store_uri == "s3://bank-models/finserve"
    pvc = write_values(tmp_path, {"modelStore": {"type": "pvc", "pvc": {"mountPath": "/srv/m"}}})
    assert app_args(pvc).store_uri == "/srv/m"


def test_chart_default_app_agrees_with_serve_yaml() -> None:
    serve_yaml = yaml.safe_load((REPO / "deployments" / "serve.yaml").read_text())
    (local_app,) = serve_yaml["applications"]
    local = AppArgs.model_validate(local_app["args"])
    # The serving shape must agree; where and how the cluster keeps state may differ
    # (store_uri from modelStore, the audit trail on stdout, auth from apiKeys).
    shape = {"models", "limits", "gateway"}
    assert app_args().model_dump(include=shape) == local.model_dump(include=shape)
    assert AppArgs.model_validate(DEFAULTS["serve"]["app"]).model_dump(include=shape) == \
        local.model_dump(include=shape)
    rendered_app = serve_config()["applications"][0]
    for key in ("name", "route_prefix", "import_path"):
        assert rendered_app[key] == local_app[key], key


def test_the_chart_serves_whatever_models_the_values_list(tmp_path: Path) -> None:
    models = copy.deepcopy(DEFAULTS["serve"]["app"]["models"])
    models.append({"name": "fraud-eu", "task": "fraud", "versions": ["3", "2"],
                   "model": {"autoscaling": {"min_replicas": 1, "max_replicas": 6}}})
    objects = render(write_values(tmp_path, {"serve": {"app": {"models": models}}}))
    args = AppArgs.model_validate(yaml.safe_load(one(objects, "RayService")["spec"][
        "serveConfigV2"])["applications"][0]["args"])
    assert [m.name for m in args.models] == [m["name"] for m in models]
    assert args.models[-1].name == "fraud-eu" and args.models[-1].task_name == "fraud"
    assert args.model("fraud-eu").versions == ["3", "2"]
    assert args.model("fraud-eu").model.autoscaling.max_replicas == 6
    script = one(objects, "Pod")["spec"]["containers"][0]["args"][0]
    assert "/v2/models/fraud-eu/infer" in script


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where two JSON-like values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k in a.keys() | b.keys() for p in _diff(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b, strict=True)) for p in _diff(x, y,
                f"{path}[{i}]")]
    return [] if a == b else [path]


def test_a_model_version_change_changes_only_the_serve_config(tmp_path: Path) -> None:
    models = copy.deepcopy(DEFAULTS["serve"]["app"]["models"])
    models[0]["versions"] = ["2", "1"]
    before = rayservice()
    after = rayservice(write_values(tmp_path, {"serve": {"app": {"models": models}}}))
    assert _diff(before, after) == [".spec.serveConfigV2"]
    new_args = AppArgs.model_validate(yaml.safe_load(after["spec"]["serveConfigV2"])[
        "applications"][0]["args"])
    assert new_args.model("fraud").versions == ["2", "1"]


def test_an_image_change_changes_the_cluster_spec_not_the_serve_config() -> None:
    before = rayservice()
    after = rayservice(sets=["image.tag=0.2.0"])
    changed = _diff(before, after)
    assert changed and all(p.startswith(".spec.rayClusterConfig.") for p in changed)
    assert all(p.endswith(".image") for p in changed)


def test_the_rayservice_name_fits_kuberay_limits_for_long_release_names() -> None:
    release = "bank-eu-west-1-payments-platform-production-blue-01"  # 52 characters
    objects = render("production", release=release)
    name = one(objects, "RayService")["metadata"]["name"]
    assert len(name) <= 47 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name)
    backend = one(objects, "Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]
    assert backend["service"]["name"] == f"{name}-serve-svc"
    assert len(backend["service"]["name"]) <= 63

"""The RayService: Ray cluster shape, autoscaling, GPUs and the Serve config it carries."""

from __future__ import annotations

import copy
import json
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout.values import model_version_values
from serving.config import GATEWAY, AppArgs, ModelRouting, Routing, load_serve_config
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


def gateway_user_config(app: dict[str, Any]) -> dict[str, Any]:
    """The user_config of the application's one deployment override: the gateway's."""
    (deployment,) = app["deployments"]
    assert deployment == {"name": GATEWAY, "user_config": deployment["user_config"]}
    return deployment["user_config"]


def routing(values: str | Path | None = None, **kwargs: Any) -> Routing:
    app = serve_config(values, **kwargs)["applications"][0]
    return Routing.model_validate(gateway_user_config(app))


def with_models(tmp_path: Path, models: list[dict[str, Any]], name: str = "models.yaml") -> Path:
    return write_values(tmp_path, {"serve": {"app": {"models": models}}}, name)


def serve_code_version(config: dict[str, Any]) -> str:
    """Ray Serve's code version of the application, from Ray's own parse of the config: the
    same version means a config update is applied to the running replicas (user_config via
    reconfigure), a new one means every replica is replaced."""
    from ray.serve._private.deploy_utils import get_app_code_version
    from ray.serve.schema import ServeDeploySchema

    return get_app_code_version(ServeDeploySchema.model_validate(config).applications[0])


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
        assert model.placement == "model-replicas", model.name  # its own deployment
        assert model.preprocess.num_gpus == 0 and model.postprocess.num_gpus == 0
        options = model.model.deployment_options(f"{model.name}-model")
        assert options["ray_actor_options"]["num_gpus"] == 0.25


def test_a_model_that_sets_its_own_gpus_keeps_them_under_gpu_serving(tmp_path: Path) -> None:
    values = yaml.safe_load(CI_VALUES["gpu"].read_text())
    values["serve"]["app"]["models"][1]["model"]["num_gpus"] = 0.5
    args = app_args(CI_VALUES["gpu"], extra_files=[write_values(tmp_path, values)])
    assert [m.model.num_gpus for m in args.models] == [0.25, 0.5]


def test_models_run_in_the_gateway_by_default_and_where_values_place_them() -> None:
    assert {m.placement for m in app_args().models} == {"gateway"}
    placed = {m.name: m.placement for m in app_args("production").models}
    assert placed == {"fraud": "stage-replicas", "sentiment": "model-replicas"}


def test_haproxy_ingress_is_on_by_default_and_can_be_switched_off(tmp_path: Path) -> None:
    def flags(values: str | Path | None = None) -> set[str | None]:
        return {next((e.get("value") for e in c.get("env", [])
                      if e["name"] == "RAY_SERVE_ENABLE_HA_PROXY"), None)
                for label, c in containers(render(values)) if label.startswith(("head", "worker"))}

    assert flags() == {"1"}
    assert flags(write_values(tmp_path, {"serve": {"haproxy": False}})) == {None}


def test_haproxy_metrics_off_one_thread_and_its_exporter_exposed_by_default(
        tmp_path: Path) -> None:
    def ray_containers(values: Path | None = None) -> list[dict[str, Any]]:
        return [c for label, c in containers(render(values))
                if label.startswith(("head", "worker"))]

    def env(container: dict[str, Any], name: str) -> str | None:
        return next((e["value"] for e in container["env"] if e["name"] == name), None)

    def exporter(container: dict[str, Any]) -> bool:
        port = {"name": "haproxy-metrics", "containerPort": 9101, "protocol": "TCP"}
        return port in container["ports"]

    default = ray_containers()
    assert {env(c, "RAY_SERVE_HAPROXY_METRICS_ENABLED") for c in default} == {"0"}
    assert {env(c, "RAY_SERVE_HAPROXY_METRICS_PORT") for c in default} == {"9101"}
    assert {env(c, "RAY_SERVE_HAPROXY_NBTHREAD") for c in default} == {"1"}
    assert all(exporter(c) for c in default)
    on = ray_containers(write_values(tmp_path, {"serve": {"haproxyRequestMetrics": True}},
                                     "on.yaml"))
    assert {env(c, "RAY_SERVE_HAPROXY_METRICS_ENABLED") for c in on} == {"1"}
    threads = ray_containers(write_values(tmp_path, {"serve": {"haproxyThreads": 4}}, "t.yaml"))
    assert {env(c, "RAY_SERVE_HAPROXY_NBTHREAD") for c in threads} == {"4"}
    python_proxy = ray_containers(write_values(tmp_path, {"serve": {"haproxy": False}},
                                               "python.yaml"))
    assert not any(exporter(c) for c in python_proxy)
    assert {env(c, "RAY_SERVE_HAPROXY_METRICS_ENABLED") for c in python_proxy} == {None}


def test_throughput_optimized_serve_is_on_by_default(tmp_path: Path) -> None:
    def values(path: Path | None = None) -> set[str | None]:
        return {next((e.get("value") for e in c.get("env", [])
                      if e["name"] == "RAY_SERVE_THROUGHPUT_OPTIMIZED"), None)
                for label, c in containers(render(path)) if label.startswith(("head", "worker"))}

    assert values() == {"1"}
    off = write_values(tmp_path, {"serve": {"throughputOptimized": False}})
    assert values(off) == {None}
    buffers = {next(e["value"] for e in c["env"]
                    if e["name"] == "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE")
               for label, c in containers(render()) if label.startswith(("head", "worker"))}
    assert buffers == {"1"}  # request logs are written at once unless values say otherwise


def test_every_ray_container_exposes_the_serve_port_8000() -> None:
    for label, container in containers(render("gpu")):
        if label.startswith(("head", "worker")):
            serve = {"name": "serve", "containerPort": 8000, "protocol": "TCP"}
            assert serve in container["ports"], label


def test_blue_green_upgrades_and_a_ray_version_that_matches_the_installed_ray() -> None:
    spec = rayservice()["spec"]
    assert spec["upgradeStrategy"] == {"type": "NewCluster"}
    assert spec["rayClusterConfig"]["rayVersion"] == metadata.version("ray")


@pytest.mark.parametrize("values", list(CI_VALUES))
def test_serve_config_is_the_finserve_application_and_its_args_validate(
    values: str, tmp_path: Path
) -> None:
    text = rayservice(values)["spec"]["serveConfigV2"]
    config = yaml.safe_load(text)
    (app,) = config["applications"]
    assert (app["name"], app["route_prefix"], app["import_path"]) == (
        "finserve", "/", "deployments.app:build_app")
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    args = AppArgs.model_validate(app["args"])
    values_file = CI_VALUES[values] or CHART / "values.yaml"
    listed = yaml.safe_load(values_file.read_text())["serve"]["app"]["models"]
    assert [m.name for m in args.models] == [m["name"] for m in listed]
    # the routing is the gateway's user_config, one entry per listed model
    routes = Routing.model_validate(gateway_user_config(app))
    assert list(routes.models) == sorted(m["name"] for m in listed)
    for model in listed:
        assert routes.of(model["name"]).versions == model.get("versions", ["latest"])
    # Ray Serve's schema takes it, with the routing as the gateway's user_config
    from ray.serve.schema import ServeDeploySchema

    (gateway,) = ServeDeploySchema.model_validate(config).applications[0].deployments
    assert gateway.name == GATEWAY and Routing.model_validate(gateway.user_config) == routes
    # and the file as a whole is what `finserve serve` / the project loader accepts
    (tmp_path / "serve.yaml").write_text(text)
    _, loaded = load_serve_config(tmp_path / "serve.yaml")
    assert loaded == args


@pytest.mark.parametrize("values", list(CI_VALUES))
def test_routing_never_reaches_the_app_args(values: str, tmp_path: Path) -> None:
    base = yaml.safe_load((CI_VALUES[values] or CHART / "values.yaml").read_text())
    models = copy.deepcopy(base["serve"]["app"]["models"])
    models[0].update(versions=["1"], traffic={"1": 90, "2": 10}, shadow="3")
    app = serve_config(values, extra_files=[with_models(tmp_path, models)])["applications"][0]
    for model in app["args"]["models"]:
        assert not set(model) & set(ModelRouting.model_fields), model["name"]
    assert Routing.model_validate(gateway_user_config(app)).of(models[0]["name"]) == \
        ModelRouting(versions=["1"], traffic={"1": 90, "2": 10}, shadow="3")


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
    rendered_app = serve_config()["applications"][0]
    for key in ("name", "route_prefix", "import_path"):
        assert rendered_app[key] == local_app[key], key
    # the same routing: the gateway's user_config, model by model
    local_routing = Routing.model_validate(gateway_user_config(local_app))
    assert routing() == local_routing
    assert routing().model_dump() == local_routing.model_dump()
    # and the values themselves: args fields and routing fields of each model
    values_models = DEFAULTS["serve"]["app"]["models"]
    args_part = [{k: v for k, v in m.items() if k not in ModelRouting.model_fields}
                 for m in values_models]
    app_values = {**DEFAULTS["serve"]["app"], "models": args_part}
    assert AppArgs.model_validate(app_values).model_dump(include=shape) == \
        local.model_dump(include=shape)
    assert Routing(models={m["name"]: ModelRouting.model_validate(
        {k: v for k, v in m.items() if k in ModelRouting.model_fields})
        for m in values_models}) == local_routing


def test_the_chart_serves_whatever_models_the_values_list(tmp_path: Path) -> None:
    models = copy.deepcopy(DEFAULTS["serve"]["app"]["models"])
    models.append({"name": "fraud-eu", "task": "fraud", "versions": ["3", "2"],
                   "model": {"autoscaling": {"min_replicas": 1, "max_replicas": 6}}})
    objects = render(with_models(tmp_path, models))
    app = yaml.safe_load(one(objects, "RayService")["spec"]["serveConfigV2"])[
        "applications"][0]
    args = AppArgs.model_validate(app["args"])
    assert [m.name for m in args.models] == [m["name"] for m in models]
    assert args.models[-1].name == "fraud-eu" and args.models[-1].task_name == "fraud"
    assert Routing.model_validate(gateway_user_config(app)).of("fraud-eu").versions == [
        "3", "2"]
    assert args.model("fraud-eu").model.autoscaling.max_replicas == 6
    (container,) = one(objects, "Pod")["spec"]["containers"]
    plan = json.loads(next(e["value"] for e in container["env"]
                           if e["name"] == "FINSERVE_TEST_PLAN"))
    assert "fraud-eu" in [c["model"] for c in plan["infer"]]  # a fraud task: it has a sample


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where two JSON-like values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for k in a.keys() | b.keys() for p in _diff(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b, strict=True)) for p in _diff(x, y,
                f"{path}[{i}]")]
    return [] if a == b else [path]


# Routing changes users make: a new default, a canary split, a shadow, and back.
ROUTING_CHANGES = {
    "new-default": {"versions": ["2", "1"]},
    "canary": {"versions": ["1"], "traffic": {"1": 90, "2": 10}},
    "shadow": {"shadow": "2"},
    "canary-and-shadow": {"traffic": {"1": 50, "2": 50}, "shadow": "3"},
}


@pytest.mark.parametrize("values", list(CI_VALUES))
@pytest.mark.parametrize("change", list(ROUTING_CHANGES))
def test_a_routing_change_changes_only_the_gateways_user_config(
    tmp_path: Path, values: str, change: str
) -> None:
    """The in-place property: KubeRay updates a RayService whose serveConfigV2 alone changed
    without a new cluster, and Ray Serve applies a change to a deployment's user_config alone
    with reconfigure, without a restart (a change to the args would replace every replica)."""
    base = yaml.safe_load((CI_VALUES[values] or CHART / "values.yaml").read_text())
    models = copy.deepcopy(base["serve"]["app"]["models"])
    models[0].update(ROUTING_CHANGES[change])
    before = rayservice(values)
    after = rayservice(values, extra_files=[with_models(tmp_path, models)])
    assert _diff(before, after) == [".spec.serveConfigV2"]
    old, new = (yaml.safe_load(r["spec"]["serveConfigV2"]) for r in (before, after))
    name = models[0]["name"]
    changed = _diff(old, new)
    assert changed and all(p.startswith(
        f".applications[0].deployments[0].user_config.models.{name}.") for p in changed)
    assert new["applications"][0]["args"] == old["applications"][0]["args"]
    assert new["applications"][0]["deployments"][0]["name"] == GATEWAY
    assert serve_code_version(new) == serve_code_version(old)
    wanted = ModelRouting.model_validate({**{"versions": base["serve"]["app"]["models"][0].get(
        "versions", ["latest"])}, **ROUTING_CHANGES[change]})
    assert routing(values, extra_files=[with_models(tmp_path, models)]).of(name) == wanted


def test_rollout_shortcuts_change_only_the_gateways_user_config(tmp_path: Path) -> None:
    """`finserve rollout --model-version/--traffic/--shadow` write values with that property,
    and ending a split with new versions leaves no stale traffic behind."""
    canary = model_version_values(DEFAULTS, ["fraud=1"], ["fraud=1:90,2:10"], ["fraud=3"])
    promoted = model_version_values(canary, ["fraud=2,1"], [], ["fraud="])
    before = rayservice()
    steps = []
    for i, step in enumerate((canary, promoted)):
        after = rayservice(extra_files=[write_values(tmp_path, step, f"step{i}.yaml")])
        assert _diff(before, after) == [".spec.serveConfigV2"]
        config = yaml.safe_load(after["spec"]["serveConfigV2"])
        assert config["applications"][0]["args"] == serve_config()["applications"][0]["args"]
        steps.append(Routing.model_validate(gateway_user_config(config["applications"][0])))
    assert steps[0].of("fraud") == ModelRouting(versions=["1"], traffic={"1": 90, "2": 10},
                                                shadow="3")
    assert steps[1].of("fraud") == ModelRouting(versions=["2", "1"])
    assert steps[1].of("sentiment") == ModelRouting(versions=["latest"])


def test_any_other_app_setting_changes_the_args() -> None:
    """The contrast: a stage setting is in the args, so Ray Serve redeploys the app."""
    before = serve_config()
    after = serve_config(sets=["serve.app.limits.max_instances=64"])
    changed = _diff(before, after)
    assert changed == [".applications[0].args.limits.max_instances"]
    assert serve_code_version(after) != serve_code_version(before)


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
    for ingress in (o for o in objects if o["kind"] == "Ingress"):  # HTTP and gRPC
        assert len(ingress["metadata"]["name"]) <= 63
        backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]
        assert backend["service"]["name"] == f"{name}-serve-svc"
        assert len(backend["service"]["name"]) <= 63


def test_serve_logs_are_json_lines_with_the_request_id():
    import yaml

    from tests.chart.chartlib import one, render

    config = yaml.safe_load(one(render(), "RayService")["spec"]["serveConfigV2"])
    logging = config["applications"][0]["logging_config"]
    assert logging["encoding"] == "JSON" and logging["enable_access_log"] is True

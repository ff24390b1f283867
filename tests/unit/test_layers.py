"""The platform core never imports Ray; the config schema catches mistakes early."""

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.config import AppArgs, load_serve_config

ROOT = Path(__file__).parents[2]


def test_serving_package_imports_without_ray():
    code = (
        "import sys, serving.cli, serving.runtime, serving.dataplane, serving.training;"
        "assert 'ray' not in sys.modules, 'serving imported ray'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_local_serve_config_is_valid():
    config, args = load_serve_config(ROOT / "deployments" / "serve.yaml")
    assert config["applications"][0]["import_path"] == "deployments.app:build_app"
    assert {m.name for m in args.models} >= {"fraud", "sentiment"}


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ([{"name": "fraud"}, {"name": "fraud"}], "unique"),
        ([{"name": "Fraud!"}], "lower-case"),
        ([{"name": "models", "task": "fraud"}], "lower-case"),
        ([{"name": "x", "task": "nope"}], "unknown task"),
        ([{"name": "fraud", "model": {"autoscaling": {"min_replicas": 5, "max_replicas": 2}}}],
         "min_replicas"),
        ([{"name": "fraud", "model": {"max_batch_sise": 5}}], "Extra inputs"),
        ([{"name": "fraud", "model": {"num_gpus": 0.5}}], "placement: model-replicas"),
        ([{"name": "fraud", "placement": "inline"}], "placement"),
    ],
)
def test_config_mistakes_fail_with_a_message(models, message):
    with pytest.raises(ValidationError, match=message):
        AppArgs.model_validate({"models": models})


def test_stage_settings_become_deployment_options():
    args = AppArgs.model_validate(
        {"models": [{"name": "fraud", "placement": "model-replicas", "model": {
            "num_gpus": 0.25, "autoscaling": {"min_replicas": 1, "max_replicas": 3}}}]}
    )
    options = args.model("fraud").model.deployment_options("fraud-model")
    assert options["ray_actor_options"]["num_gpus"] == 0.25
    assert options["autoscaling_config"]["max_replicas"] == 3
    assert "num_replicas" not in options


@pytest.mark.parametrize(
    ("routing", "message"),
    [
        ({"versions": []}, "non-empty"),
        ({"versions": ["1", "1"]}, "repeats"),
        ({"traffic": {"1": 90, "2": 20}}, "add up to 100"),
        ({"versions": ["1"], "canary": 5}, "Extra inputs"),
    ],
)
def test_routing_mistakes_fail_with_a_message(routing, message):
    from serving.config import Routing

    with pytest.raises(ValidationError, match=message):
        Routing.model_validate({"models": {"fraud": routing}})


def test_routing_lists_every_version_to_serve():
    from serving.config import Routing

    routing = Routing.model_validate(
        {"models": {"fraud": {"versions": ["2", "1"], "traffic": {"2": 90, "3": 10},
                              "shadow": "4"}}}
    )
    assert routing.of("fraud").all_versions == ["2", "1", "3", "4"]
    assert routing.of("credit").versions == ["latest"]


def test_serve_config_routing_must_name_served_models(tmp_path):
    import yaml

    config, _ = load_serve_config(ROOT / "deployments" / "serve.yaml")
    config["applications"][0]["deployments"][0]["user_config"]["models"]["nope"] = {}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="not served"):
        load_serve_config(tmp_path / "serve.yaml")


def test_a_lost_replica_is_recognised_through_serve_wrapping():
    from ray.exceptions import ActorDiedError
    from ray.serve.exceptions import RayServeException

    from deployments.placements import replica_lost

    try:
        try:
            raise ActorDiedError()
        except ActorDiedError as died:
            raise RayServeException("upstream actor died") from died
    except RayServeException as wrapped:
        assert replica_lost(wrapped)
    assert not replica_lost(ValueError("bad input"))


@pytest.mark.parametrize(
    ("placement", "deployments"),
    [
        ("gateway", set()),
        ("model-replicas", {"fraud-model"}),
        ("stage-replicas", {"fraud-preprocess", "fraud-model", "fraud-postprocess"}),
    ],
)
def test_placement_decides_which_stages_are_deployments_of_their_own(
        placement, deployments, tiny_store, tmp_path):
    from deployments.app import build_app

    app = build_app({"store_uri": tiny_store.root, "audit": {"location": str(tmp_path)},
                     "models": [{"name": "fraud", "placement": placement}]})
    handles = app._bound_deployment.init_args[1]["fraud"]
    assert {h._bound_deployment.name for h in handles.values()} == deployments
